"""Identifiability on nonlinear-ICA data: VAE vs identifiable VAE vs conditional-prior PC, MCC over seeds.

For each seed ``s`` of ``seeds`` a fresh data set is drawn
(:func:`pcsim.generative.data.nonlinear_ica`: segment-wise nonstationary sources mixed by a
random invertible MLP; the segment is the auxiliary label) and every model is fitted on its
training split with seed ``s``: the VAE (Kingma & Welling 2014; its prior ignores the
segment), the iVAE (Khemakhem, Kingma, Monti & Hyvärinen 2020; prior and encoder conditioned
on the segment) and :class:`~pcsim.generative.pc.ConditionalPC` (a PC network whose top
prior's mean and precision are tables indexed by the segment). Each model's latent has the
sources' width (for PC: the top layer ``x_0`` of its posterior mean). The score is the mean
correlation coefficient (MCC, :func:`pcsim.generative.metrics.mean_correlation`) between the
posterior means of the test split and the true sources: 1 = recovered up to permutation, sign
and scale. The iVAE paper's claim is iVAE's MCC clearly above the VAE's. ``"observations"``
(``x`` itself) and ``"linear_ica"`` (FastICA) are reference rows: what a nonlinear method must beat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import xarray as xr

from ..config import ExperimentConfig
from ..registry import ExperimentResult, RunContext

ModelName = Literal["vae", "ivae", "conditional_pc", "observations", "linear_ica"]
Activation = Literal["tanh", "relu", "sigmoid", "linear"]


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """:func:`~pcsim.generative.data.nonlinear_ica`'s settings (the seed is each run's)."""

    n_sources: int = field(default=2, metadata={"ge": 1})
    n_segments: int = field(default=10, metadata={"ge": 2})
    n_per_segment: int = field(default=200, metadata={"ge": 2})
    n_layers: int = field(default=3, metadata={"ge": 1})
    distribution: Literal["gaussian", "laplace"] = "gaussian"
    slope: float = field(default=0.2, metadata={"gt": 0, "le": 1})
    test_fraction: float = field(default=0.2, metadata={"gt": 0, "lt": 1})


@dataclass(frozen=True, kw_only=True)
class ModelSection:
    """``models`` to compare over ``seeds``; every decoder is ``(n_sources, *hidden, n_sources)``
    with ``activation``; ``epochs``, ``batch_size``, ``lr`` (Adam) for all; PC's relaxation
    ``inference_steps`` of ``dt/tau`` (ms) scaled by ``precondition`` (``"curvature"``: stable for
    ``dt/tau < 1`` whatever the prior precisions grow to) with learned precisions when ``learn_precision``;
    ``precision_update``: conditional PC's per-segment prior precisions learned at the relaxed mode
    (``"mode"``, which shrinks ``x_0`` onto the segment mean and lets the precisions run away) or by
    the variational-Laplace M-step (``"laplace"``: the posterior's spread of ``x_0`` counted);
    ``pc_precision``: conditional PC's (initial) precision of every layer's prediction error (the
    iVAE's hidden layers are deterministic: a large value makes PC's nearly so, and leaves ``x_0``
    the only cause with room to vary);
    ``ivae_prior_mean``: the iVAE's per-segment prior means learned, or fixed at 0 (the paper's
    setting: only the variances carry the segment)."""

    models: tuple[ModelName, ...] = field(default=("vae", "ivae", "conditional_pc"), metadata={"nonempty": True})
    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"ge": 0, "nonempty": True})
    hidden: tuple[int, ...] = field(default=(32, 32), metadata={"ge": 1})
    activation: Activation = "tanh"
    epochs: int = field(default=60, metadata={"ge": 1})
    batch_size: int = field(default=64, metadata={"ge": 1})
    lr: float = field(default=1e-3, metadata={"gt": 0})
    inference_steps: int = field(default=20, metadata={"ge": 0})
    dt: float = field(default=1.0, metadata={"gt": 0, "units": "ms"})
    tau: float = field(default=10.0, metadata={"gt": 0, "units": "ms"})
    precondition: Literal["none", "precision", "curvature"] = "curvature"
    precision_update: Literal["mode", "laplace"] = "laplace"
    pc_precision: float = field(default=1.0, metadata={"gt": 0})
    learn_precision: bool = False
    ivae_prior_mean: Literal["learned", "zero"] = "zero"
    n_plot: int = field(default=400, metadata={"ge": 3})


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``identifiability`` experiment (``configs/identifiability.toml``); ``seed`` is unused: ``[models] seeds`` are the runs."""

    data: DataSection = field(default_factory=DataSection)
    models: ModelSection = field(default_factory=ModelSection)


class _Reference:
    """A reference row with the models' ``fit`` / ``encode`` surface: ``"observations"`` scores
    ``x`` itself, ``"linear_ica"`` the sources of scikit-learn's FastICA fitted on the training
    split (what any nonlinear method must beat: the mixing's linear part undone)."""

    def __init__(self, name: str, d: int, seed: int):
        self.name, self.d, self.seed = name, d, seed

    def fit(self, x, aux=None) -> "_Reference":
        if self.name == "linear_ica":
            from sklearn.decomposition import FastICA
            self.ica_ = FastICA(self.d, whiten="unit-variance", max_iter=2000, random_state=self.seed).fit(x.numpy())
        return self

    def encode(self, x, aux=None):
        from ..generative.base import Posterior
        m = x if self.name == "observations" else torch.as_tensor(self.ica_.transform(x.numpy()))
        return Posterior(m, torch.zeros_like(m))


def build_model(name: str, ms: ModelSection, d: int, seed: int, device: str):
    """The unfitted model ``name`` for ``d`` sources and observations."""
    from ..generative.pc import ConditionalPC
    from ..generative.vae import IVAE, VAE

    if name in ("observations", "linear_ica"):
        return _Reference(name, d, seed)

    common = dict(epochs=ms.epochs, batch_size=ms.batch_size, lr=ms.lr, seed=seed, device=device)
    if name == "conditional_pc":
        return ConditionalPC((d, *ms.hidden, d), ms.activation, inference_steps=ms.inference_steps, dt=ms.dt,
                             tau=ms.tau, precondition=ms.precondition,
                             precision_update=ms.precision_update, precision=ms.pc_precision, learn_precision=ms.learn_precision, **common)
    if name == "ivae":
        return IVAE(d, ms.hidden, ms.activation, prior_mean=ms.ivae_prior_mean, **common)
    return VAE(d, ms.hidden, ms.activation, **common)


def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """MCC ``(model, seed)`` and per source, and the matched recovered/true sources of each model's best seed."""
    from tqdm.auto import tqdm

    from ..generative import data as gd
    from ..generative.metrics import mean_correlation

    dc, ms = config.data, config.models
    names, seeds, d = list(dict.fromkeys(ms.models)), list(dict.fromkeys(ms.seeds)), dc.n_sources
    mcc = np.zeros((len(names), len(seeds)))
    per_source = np.zeros((len(names), len(seeds), d))
    fit_s = np.zeros((len(names), len(seeds)))
    best: dict[str, tuple[float, np.ndarray, np.ndarray]] = {}
    t_run = time.perf_counter()
    bar = tqdm(total=len(names) * len(seeds), desc="identifiability", disable=not ctx.progress)
    for j, seed in enumerate(seeds):
        data = gd.nonlinear_ica(dc.n_sources, dc.n_segments, dc.n_per_segment, dc.n_layers, dc.distribution,
                                dc.slope, dc.test_fraction, seed)
        sources = data.extra["sources_test"]
        for i, name in enumerate(names):
            model = build_model(name, ms, data.n_features, seed, ctx.device)
            t0 = time.perf_counter()
            model.fit(data.x_train, data.aux_train)
            fit_s[i, j] = time.perf_counter() - t0
            with torch.no_grad():
                z = model.encode(data.x_test, data.aux_test).mean[:, :d]  # PC: the top cause x_0
            match = mean_correlation(z, sources)
            mcc[i, j], per_source[i, j] = match.mcc, match.correlation
            if name not in best or match.mcc > best[name][0]:
                n = min(ms.n_plot, sources.shape[0])
                zm = z.numpy()[:n, match.component]  # recovered latent matched to each true source
                s = sources.numpy()[:n]
                # sign and scale of each matched latent onto its source (least squares), for the scatter
                zc, sc = zm - zm.mean(0), s - s.mean(0)
                zm = zc * ((zc * sc).sum(0) / (zc * zc).sum(0)) + s.mean(0)
                best[name] = (match.mcc, zm, s)
            bar.update()
    bar.close()
    n = min(ms.n_plot, min(b[1].shape[0] for b in best.values()))
    ds = xr.Dataset(
        {
            "mcc": (("model", "seed"), mcc, {"units": "1", "long_name": "mean correlation coefficient with the true sources"}),
            "source_correlation": (("model", "seed", "source"), per_source,
                                   {"units": "1", "long_name": "absolute correlation of each source with its matched latent"}),
            "fit_seconds": (("model", "seed"), fit_s, {"units": "s", "long_name": "training wall time"}),
            "recovered": (("model", "example", "source"), np.stack([best[m][1][:n] for m in names]),
                          {"units": "1", "long_name": "matched latent, affinely aligned to its source (best seed)"}),
            "true_sources": (("model", "example", "source"), np.stack([best[m][2][:n] for m in names]),
                             {"units": "1", "long_name": "true sources of the best seed's test split"}),
            "best_seed": ("model", np.array([seeds[int(np.argmax(mcc[i]))] for i in range(len(names))]),
                          {"units": "1", "long_name": "seed of the highest MCC"}),
        },
        coords={
            "model": ("model", names, {"units": "", "long_name": "model"}),
            "seed": ("seed", seeds, {"units": "1", "long_name": "data and model seed"}),
            "source": ("source", np.arange(d), {"units": "1", "long_name": "true source index"}),
            "example": ("example", np.arange(n), {"units": "1", "long_name": "test example index"}),
        },
        attrs={"dataset": "nonlinear_ica", "n_segments": dc.n_segments, "n_per_segment": dc.n_per_segment,
               "n_layers": dc.n_layers},
    )
    summary = {
        "models": {m: {"mcc_mean": float(mcc[i].mean()),
                       "mcc_sd": float(mcc[i].std(ddof=1)) if len(seeds) > 1 else 0.0,
                       "mcc_per_seed": mcc[i].tolist(), "fit_seconds": float(fit_s[i].mean())}
                   for i, m in enumerate(names)},
        "seeds": seeds,
        "wall_seconds": time.perf_counter() - t_run,
    }
    return ExperimentResult(ds, summary)


def plot(results: xr.Dataset) -> dict:
    """Two figures: recovered vs true source for each model's best seed; MCC per model with every seed."""
    from matplotlib.figure import Figure  # no pyplot: no backend or global figure state

    models = [str(m) for m in results.model.values]
    d = results.sizes["source"]
    fig = Figure(figsize=(2.8 * d, 2.6 * len(models)))
    ax = fig.subplots(len(models), d, squeeze=False)
    for i, m in enumerate(models):
        for j in range(d):
            s = results.true_sources.sel(model=m, source=j)
            ax[i, j].scatter(s, results.recovered.sel(model=m, source=j), s=3, alpha=0.5)
            r = float(results.source_correlation.sel(model=m, seed=results.best_seed.sel(model=m), source=j))
            ax[i, j].set_title(f"{m} s{j}: |r| = {r:.2f}", fontsize=9)
            ax[i, j].set_xlabel("true source")
        ax[i, 0].set_ylabel("matched latent (aligned)")
    fig.tight_layout()
    figs = {"sources": fig}

    fig = Figure(figsize=(1.5 + 1.2 * len(models), 3.5))
    ax = fig.subplots()
    for i, m in enumerate(models):
        v = results.mcc.sel(model=m).values
        ax.scatter(np.full(v.size, i) + np.linspace(-0.1, 0.1, v.size), v, s=18, color="C0")
        ax.errorbar(i + 0.25, v.mean(), yerr=v.std(ddof=1) if v.size > 1 else 0, fmt="s", color="k", capsize=4)
    ax.set_xticks(range(len(models)), models)
    ax.set(ylabel="MCC (test split)", ylim=(0, 1.02), title=f"MCC over {results.sizes['seed']} seeds (mean +- sd)")
    fig.tight_layout()
    figs["mcc"] = fig
    return figs
