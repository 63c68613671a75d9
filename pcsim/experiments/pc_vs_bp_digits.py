"""PC vs backprop on scikit-learn's 8x8 digits: accuracy, time and gradient alignment per epoch.

One initial MLP (one seed) is trained with standard PC, incremental PC and its backprop
twin (and, if listed, the fixed-prediction rule) on the same batches with the same
optimiser. Per epoch: training loss, test accuracy, wall time and per-layer alignment of the
standard-PC update with the backprop gradient. Afterwards, alignment as a function of the
number of inference steps T and the output nudge is measured on the initial network.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import xarray as xr

from ..alignment import alignment_sweep
from ..config import ExperimentConfig
from ..data import load_digits
from ..registry import ExperimentResult, RunContext
from ..training import TrainConfig, compare_rules
from ..inference import InferenceConfig
from ..network import PCNetwork
from .sections import NetworkSection

Rule = Literal["pc", "ipc", "fpa", "bp"]


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """``test_fraction`` of the 1797 digits held out (stratified, fixed by ``split_seed``)."""

    test_fraction: float = field(default=0.2, metadata={"gt": 0, "lt": 1})
    split_seed: int = field(default=0, metadata={"ge": 0})


@dataclass(frozen=True, kw_only=True)
class TrainingSection(TrainConfig):
    """The engine's :class:`~pcsim.training.TrainConfig` plus the ``rules`` to compare."""

    rules: tuple[Rule, ...] = field(default=("pc", "ipc", "bp"), metadata={"nonempty": True})


@dataclass(frozen=True, kw_only=True)
class AlignmentSection:
    """``probe_size`` training samples for the per-epoch alignment (at ``nudge``); the sweep
    over inference ``steps`` and ``nudges`` runs on the initial network."""

    probe_size: int = field(default=256, metadata={"ge": 1})
    nudge: float = field(default=1.0, metadata={"gt": 0})
    steps: tuple[int, ...] = field(default=(1, 2, 5, 10, 20, 50, 100, 200), metadata={"ge": 1, "nonempty": True})
    nudges: tuple[float, ...] = field(default=(1.0, 0.1, 0.01), metadata={"gt": 0, "nonempty": True})


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``pc_vs_bp_digits`` experiment."""

    data: DataSection = field(default_factory=DataSection)
    network: NetworkSection = field(default_factory=NetworkSection)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    training: TrainingSection = field(default_factory=TrainingSection)
    alignment: AlignmentSection = field(default_factory=AlignmentSection)


#: the keys whose points :func:`run_batched` runs as one ensemble (``pcsim sweep`` groups them)
BATCHED = ("seed", "training.lr", "network.precision")


def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """Train every rule from the same initial network; return curves ``(rule, epoch, ...)`` and the T/nudge sweep."""
    return run_batched([config], ctx)[0]


def run_batched(configs: Sequence[Config], ctx: RunContext) -> list[ExperimentResult]:
    """:func:`run` of several configs that differ only in :data:`BATCHED` keys (``seed``,
    ``training.lr``, ``network.precision``), as one ensemble: the networks of all of them (each
    config's own, ``network.ensemble`` members seeded ``seed ..``, joined by
    :meth:`PCNetwork.concat <pcsim.network.PCNetwork.concat>`) train together, each config's
    members on its own batch order and learning rate, so each result equals that config run
    alone (to float rounding) and keeps its own ``ensemble`` coordinate ``0 .. network.ensemble-1``.
    ``epoch_time`` and ``seconds_per_epoch`` are then the wall time of the shared epochs
    (``attrs["batched_with"]``: how many configs shared them). One result per config, in order."""
    first = configs[0]
    data = load_digits(first.data.test_fraction, first.data.split_seed, device=ctx.device)
    per = first.network.ensemble
    net = PCNetwork.concat([c.network.build(data.n_features, data.n_classes, c.seed, ctx.device) for c in configs])
    inf = first.inference
    tr = first.training
    n_probe = min(first.alignment.probe_size, data.x_train.shape[0])
    sweep = alignment_sweep(net, data.x_train[:n_probe], data.y_train[:n_probe],
                            steps=first.alignment.steps, nudges=first.alignment.nudges, inference=inf)
    ds = compare_rules(net, data, tr.rules, tr, inf, probe_size=first.alignment.probe_size,
                       alignment_nudge=first.alignment.nudge, progress=ctx.progress,
                       seed=[c.seed for c in configs for _ in range(per)],
                       lr=[c.training.lr for c in configs for _ in range(per)])
    ds["sweep_cosine"] = sweep["cosine"]
    ds["sweep_rel_error"] = sweep["rel_error"]
    ds["sweep_cosine"].attrs = {"long_name": "cosine(PC update, BP gradient) on the initial network", "units": "1"}
    ds["sweep_rel_error"].attrs = {"long_name": "relative error of PC update vs BP gradient on the initial network", "units": "1"}
    ds.attrs.update(dataset="sklearn digits 8x8", n_train=int(data.x_train.shape[0]), n_test=int(data.x_test.shape[0]),
                    sizes=list(net.sizes), dt_ms=inf.dt, tau_ms=inf.tau)
    if len(configs) > 1:
        ds.attrs["batched_with"] = len(configs)
    results = []
    for i in range(len(configs)):
        own = ds.isel(ensemble=slice(i * per, (i + 1) * per))
        own = own.assign_coords(ensemble=("ensemble", np.arange(per), ds.ensemble.attrs))
        results.append(ExperimentResult(own, _summary(own)))
    return results


def _summary(ds: xr.Dataset) -> dict:
    """The headline numbers of one config's results: final accuracy and alignment per rule
    (mean over its ensemble members), seconds per epoch, the split's sizes."""
    final = ds.isel(epoch=-1).mean("ensemble")
    rules = list(ds.rule.values)
    return {
        "test_accuracy": {r: float(final.test_accuracy.sel(rule=r)) for r in rules},
        "alignment_cosine": {r: [float(v) for v in final.cosine.sel(rule=r).values] for r in rules},
        "alignment_rel_error": {r: [float(v) for v in final.rel_error.sel(rule=r).values] for r in rules},
        "seconds_per_epoch": {r: float(ds.epoch_time.sel(rule=r).isel(epoch=slice(1, None)).mean()) for r in rules},
        "n_train": int(ds.attrs["n_train"]),
        "n_test": int(ds.attrs["n_test"]),
    }


def plot(results: xr.Dataset) -> dict:
    """Three figures: test accuracy vs epoch per rule; alignment vs epoch per layer; alignment vs T per nudge."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    figs = {}
    fig = Figure(figsize=(9, 3.5))
    ax = fig.subplots(1, 2)
    for r in results.rule.values:
        acc = results.test_accuracy.sel(rule=r).mean("ensemble")
        ax[0].plot(results.epoch, acc, marker="o", ms=3, label=str(r))
        ax[1].plot(results.epoch, results.train_loss.sel(rule=r).mean("ensemble"), marker="o", ms=3, label=str(r))
    ax[0].set(xlabel="epoch", ylabel="test accuracy", title="digits 8x8: test accuracy")
    ax[1].set(xlabel="epoch", ylabel="train loss", yscale="log", title="training loss (feed-forward)")
    ax[0].legend()
    fig.tight_layout()
    figs["accuracy"] = fig

    L = results.sizes["layer"]
    fig = Figure(figsize=(3.2 * L, 3.2))
    ax = fig.subplots(1, L, sharey=True, squeeze=False)
    for j, layer in enumerate(results.layer.values):
        for r in results.rule.values:
            ax[0, j].plot(results.epoch, results.cosine.sel(rule=r, layer=layer).mean("ensemble"), marker="o", ms=3, label=str(r))
        ax[0, j].set(title=f"layer {layer} (W_{layer})", xlabel="epoch")
    ax[0, 0].set_ylabel("cos(PC update, BP gradient)")
    ax[0, 0].legend(title="weights from")
    fig.tight_layout()
    figs["alignment_epochs"] = fig

    nudges = results.nudge.values
    fig = Figure(figsize=(3.2 * len(nudges), 5.6))
    ax = fig.subplots(2, len(nudges), sharey="row", sharex=True, squeeze=False)
    for j, beta in enumerate(nudges):
        for layer in results.layer.values:
            sel = dict(nudge=beta, layer=layer)
            ax[0, j].plot(results.steps, results.sweep_cosine.sel(sel).mean("ensemble"), marker="o", ms=3, label=f"layer {layer}")
            ax[1, j].plot(results.steps, results.sweep_rel_error.sel(sel).mean("ensemble"), marker="o", ms=3)
        ax[0, j].set(xscale="log", title=f"nudge beta = {beta:g}")
        ax[1, j].set(xscale="log", yscale="log", xlabel="inference steps T")
    ax[0, 0].set_ylabel("cos(PC update, BP gradient)")
    ax[1, 0].set_ylabel("|g_pc/beta - g_bp| / |g_bp|")
    ax[0, 0].legend()
    fig.tight_layout()
    figs["alignment_steps"] = fig
    return figs
