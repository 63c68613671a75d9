"""One network's relaxation, recorded at every inference step.

A digits MLP (optionally pre-trained for a few epochs with standard PC) relaxes on a batch
of test images with the label clamped at the output. Every value node, every prediction
error and the energy of every layer are recorded at every Euler step, saved with time in
ms, and plotted: energy per layer against time, and node trajectories of one trial.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import xarray as xr

from ..config import ExperimentConfig
from ..data import epoch_batches, load_digits
from ..inference import init_state, relax
from ..optim import make_optimizer
from ..registry import ExperimentResult, RunContext
from ..rules import StandardPC
from ..training import train, training_energy
from ..inference import InferenceConfig
from .sections import NetworkSection


@dataclass(frozen=True, kw_only=True)
class DynamicsSection:
    """``trials``: test images relaxed together; ``pretrain_epochs`` of standard PC (Adam,
    ``lr``) before recording (0: the untrained network); ``clamp_target``: clamp the label at
    the output (else the output is free and only the hidden layers settle)."""

    trials: int = field(default=32, metadata={"ge": 1})
    pretrain_epochs: int = field(default=2, metadata={"ge": 0})
    lr: float = field(default=1e-3, metadata={"gt": 0})
    clamp_target: bool = True


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``inference_dynamics`` experiment."""

    network: NetworkSection = field(default_factory=NetworkSection)
    inference: InferenceConfig = field(default_factory=lambda: InferenceConfig(steps=100))
    dynamics: DynamicsSection = field(default_factory=DynamicsSection)


def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """Relax once with recording; the Dataset has dims (step, ensemble, trial, layer, unit_l{l})."""
    import torch

    data = load_digits(device=ctx.device)
    net = config.network.build(data.n_features, data.n_classes, config.seed, ctx.device)
    dyn = config.dynamics
    if dyn.pretrain_epochs:
        rule = StandardPC(config.inference)
        opt = make_optimizer("adam", dyn.lr)
        gen = torch.Generator().manual_seed(config.seed)
        train(lambda idx: rule.step(net, opt, data.x_train[idx], data.y_train[idx]),
              lambda epoch: epoch_batches(data.x_train.shape[0], 64, gen), dyn.pretrain_epochs,
              progress=ctx.progress, desc="pretrain", parameters=net.parameters, energy=training_energy, lr=dyn.lr,
              state={"parameters": net.parameters(), "optimizer": opt, "order": gen})
    n = min(dyn.trials, data.x_test.shape[0])
    x, y = data.x_test[:n], data.y_test[:n]
    state = init_state(net, x, y if dyn.clamp_target else None)
    r = relax(net, state, replace(config.inference, record=True))
    ds = r.to_dataset(net)
    ds = ds.assign_coords(label=("trial", data.labels_test[:n].cpu().numpy(), {"long_name": "digit class", "units": ""}))
    ds.attrs.update(dt_ms=config.inference.dt, tau_ms=config.inference.tau, clamp_target=int(dyn.clamp_target),
                    pretrain_epochs=dyn.pretrain_epochs)
    total = ds.energy.sum("layer").mean(("ensemble", "trial"))
    summary = {
        "initial_energy": float(total[0]),
        "final_energy": float(total[-1]),
        "steps": int(r.steps),
        "energy_ratio": float(total[-1] / total[0]) if float(total[0]) > 0 else float("nan"),
        "monotone": bool((np.diff(ds.energy.sum("layer").values, axis=0) <= 1e-5).all()),
    }
    return ExperimentResult(ds, summary)


def plot(results: xr.Dataset) -> dict:
    """Energy per layer vs relaxation time, and the trajectories of a few nodes per layer in trial 0.

    Clamped layers (the input; the label when ``clamp_target``) do not relax: their panel draws
    them flat, grey and dashed, titled "clamped", and the figure's title says which layers are
    clamped. Legends sit outside the axes so that they cover no curve.
    """
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    t = results.time.values * 1e3  # stored in s, shown in ms (the units of dt and tau)
    clamped = {int(l): bool(c) for l, c in zip(results.layer.values, results.clamped.values)}
    fig = Figure(figsize=(6.2, 3.5))
    ax = fig.subplots()
    en = results.energy.mean(("ensemble", "trial"))
    for layer in results.layer.values:
        if float(abs(en.sel(layer=layer)).max()) > 0:
            ax.plot(t, en.sel(layer=layer), label=f"layer {layer}")
    ax.plot(t, en.sum("layer"), "k--", label="total")
    ax.set(xlabel="time (ms)", ylabel="energy (mean over trials)", yscale="log", title="relaxation: energy per layer")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small", frameon=False)
    fig.tight_layout()
    figs = {"energy": fig}

    shown = [int(l) for l in results.layer.values if f"x{l}" in results and 0 < l]
    fig = Figure(figsize=(3.3 * len(shown), 3.5))
    ax = fig.subplots(1, len(shown), squeeze=False)
    for j, l in enumerate(shown):
        xs = results[f"x{l}"].isel(ensemble=0, trial=0)
        style = dict(color="0.5", ls="--", lw=1) if clamped[l] else dict(lw=1)
        for u in range(min(8, xs.shape[-1])):
            ax[0, j].plot(t, xs[:, u], **style)
        what = "clamped" if clamped[l] else "free"
        ax[0, j].set(title=f"x{l} (trial 0): {what}", xlabel="time (ms)")
    ax[0, 0].set_ylabel("activity")
    fixed = [str(l) for l, c in clamped.items() if c]
    fig.suptitle(f"value-node trajectories; clamped layers: {', '.join(fixed) or 'none'} "
                 "(layer 0 is the input, not drawn)", fontsize="medium")
    fig.tight_layout()
    figs["trajectories"] = fig
    return figs
