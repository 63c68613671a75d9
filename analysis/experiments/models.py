"""Config sections for the latent models, and fitting and scoring them on a recording.

Shared by the ``lorenz_latents`` (synthetic ground truth) and ``fit_recording`` (a user's
NWB file) experiments: the same models, the same metrics, the same result layout.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import xarray as xr

ModelName = Literal["smoothing", "fa", "gpfa", "pc"]


@dataclass(frozen=True, kw_only=True)
class SmoothingSection:
    """Gaussian-kernel smoothing of held-in spikes (``sigma_ms``), Poisson GLM to held-out neurons."""

    sigma_ms: float = field(default=40.0, metadata={"gt": 0})


@dataclass(frozen=True, kw_only=True)
class FASection:
    """Factor analysis with ``n_latents`` factors on counts smoothed with ``sigma_ms``."""

    n_latents: int = field(default=8, metadata={"ge": 1})
    sigma_ms: float = field(default=40.0, metadata={"gt": 0})


@dataclass(frozen=True, kw_only=True)
class GPFASection:
    """GPFA (Yu et al. 2009) fitted by EM: ``n_latents``, ``max_iter``, relative LL ``tol``;
    ``segment_bins``: train on segments of this many bins as elephant does (0: whole trials)."""

    n_latents: int = field(default=8, metadata={"ge": 1})
    max_iter: int = field(default=500, metadata={"ge": 1})
    tol: float = field(default=1e-6, metadata={"gt": 0})
    tau_init_ms: float = field(default=100.0, metadata={"gt": 0})
    segment_bins: int = field(default=20, metadata={"ge": 0})


@dataclass(frozen=True, kw_only=True)
class PCSection:
    """Dynamical predictive-coding latent model: ``n_latents``, training ``epochs`` and ``lr``,
    ``inference_steps`` per epoch and ``transform_steps`` at test, ``dynamics_precision``."""

    n_latents: int = field(default=8, metadata={"ge": 1})
    epochs: int = field(default=100, metadata={"ge": 1})
    lr: float = field(default=0.02, metadata={"gt": 0})
    inference_steps: int = field(default=3, metadata={"ge": 1})
    transform_steps: int = field(default=30, metadata={"ge": 1})
    dynamics_precision: float = field(default=300.0, metadata={"gt": 0})


@dataclass(frozen=True, kw_only=True)
class ModelsSection:
    """Which models to fit (``fit``) and their settings, one table each."""

    fit: tuple[ModelName, ...] = field(default=("smoothing", "fa", "gpfa", "pc"), metadata={"nonempty": True})
    smoothing: SmoothingSection = field(default_factory=SmoothingSection)
    fa: FASection = field(default_factory=FASection)
    gpfa: GPFASection = field(default_factory=GPFASection)
    pc: PCSection = field(default_factory=PCSection)


def build_model(name: str, models: ModelsSection, seed: int, device: str):
    """The latent model called ``name`` with its section's settings (see :mod:`analysis.models`)."""
    from analysis.models.fa import FactorAnalysisModel
    from analysis.models.gpfa import GPFA
    from analysis.models.pc_latent import PCLatentModel
    from analysis.models.smoothing import SmoothingModel

    if name == "smoothing":
        return SmoothingModel(sigma_ms=models.smoothing.sigma_ms)
    if name == "fa":
        return FactorAnalysisModel(n_latents=models.fa.n_latents, sigma_ms=models.fa.sigma_ms)
    if name == "gpfa":
        g = models.gpfa
        return GPFA(g.n_latents, tau_init_ms=g.tau_init_ms, max_iter=g.max_iter, tol=g.tol,
                    segment_bins=g.segment_bins or None, device=device)
    p = models.pc
    return PCLatentModel(p.n_latents, epochs=p.epochs, lr=p.lr, inference_steps=p.inference_steps,
                         transform_steps=p.transform_steps, dynamics_precision=p.dynamics_precision,
                         seed=seed, device=device)


def fit_and_score(recording: xr.Dataset, models: ModelsSection, seed: int, device: str, progress: bool = True,
                  forward: xr.Dataset | None = None):
    """Fit every model in ``models.fit`` on the training trials and score it on the test trials.

    Returns ``(dataset, summary)``: the dataset holds, for the test trials, the held-out
    spike counts (``heldout_counts``, trial x time x neuron), each model's predicted held-out
    rates (``pred_rates``, model x trial x time x neuron, counts per bin) and, when the
    recording has them, the true rates and latents and each model's latents aligned to the
    truth (affine map fitted on training trials). ``summary[model]`` has ``co_bps``,
    ``psth_r2`` (when conditions exist), ``latent_r2`` (when true latents exist),
    ``fp_bps`` (given ``forward``, the same trials' next bins, and a model that can
    ``forecast``; every neuron is scored there, as in NLB) and ``fit_seconds``.
    """
    from tqdm.auto import tqdm

    from analysis import metrics

    test = (recording.split == "test").values if "split" in recording.coords else np.ones(recording.sizes["trial"], bool)
    train = (recording.split == "train").values if "split" in recording.coords else test
    heldout = recording.heldout.values
    rec_test = recording.isel(trial=test)
    ho_counts = rec_test.counts.isel(neuron=heldout)
    has_truth = "latents" in recording
    has_rates = "rates" in recording
    has_conditions = "condition" in recording.coords and np.unique(recording.condition.values).size > 1
    pred, aligned, summary = [], [], {}
    for name in tqdm(models.fit, desc="models", disable=not progress, leave=False):
        model = build_model(name, models, seed, device).fit(recording)
        rates = model.predict(rec_test).isel(neuron=heldout)
        entry = {"co_bps": metrics.co_bps(rates, ho_counts), "fit_seconds": float(model.fit_seconds_)}
        if has_conditions:
            truth = rec_test.rates.isel(neuron=heldout) if has_rates else ho_counts
            entry["psth_r2"] = metrics.psth_r2(rates, truth, rec_test.condition.values)
        if has_truth:
            lat = model.transform(recording)
            entry["latent_r2"] = metrics.latent_r2(lat.isel(trial=train), recording.latents.isel(trial=train),
                                                   lat.isel(trial=test), recording.latents.isel(trial=test))
            aligned.append(metrics.align_latents(lat.isel(trial=train), recording.latents.isel(trial=train),
                                                 lat.isel(trial=test)))
        if forward is not None and hasattr(model, "forecast"):
            fwd = model.forecast(rec_test, forward.sizes["time"])
            entry["fp_bps"] = metrics.fp_bps(fwd.values, forward.counts.isel(trial=test).values)
        summary[name] = {k: float(v) for k, v in entry.items()}
        pred.append(rates.values)
    ds = xr.Dataset(coords={"model": ("model", list(models.fit)), "trial": rec_test.trial.values,
                            "time": rec_test.time, "neuron": rec_test.neuron.values[heldout]})
    ds["heldout_counts"] = (("trial", "time", "neuron"), ho_counts.values, {"units": "counts/bin", "long_name": "held-out spike counts (test trials)"})
    ds["pred_rates"] = (("model", "trial", "time", "neuron"), np.stack(pred), {"units": "counts/bin", "long_name": "predicted held-out rate"})
    ds["counts"] = (("trial", "time", "all_neuron"), rec_test.counts.values, {"units": "counts/bin", "long_name": "spike counts of every neuron (test trials)"})
    ds = ds.assign_coords(all_neuron=("all_neuron", rec_test.neuron.values), heldout=("all_neuron", heldout))
    if has_rates:
        ds["true_rates"] = (("trial", "time", "neuron"), rec_test.rates.isel(neuron=heldout).values, {"units": "counts/bin", "long_name": "true held-out rate"})
        summary["true_rates"] = {"co_bps": float(metrics.co_bps(ds.true_rates, ds.heldout_counts))}
        if forward is not None:
            summary["true_rates"]["fp_bps"] = float(metrics.fp_bps(forward.rates.isel(trial=test).values,
                                                                   forward.counts.isel(trial=test).values))
    if has_truth:
        ds["true_latents"] = (("trial", "time", "latent"), rec_test.latents.values, {"long_name": "true latents", "units": "1"})
        ds["aligned_latents"] = (("model", "trial", "time", "latent"), np.stack(aligned),
                                 {"long_name": "inferred latents, affinely aligned to the truth on training trials", "units": "1"})
        ds = ds.assign_coords(latent=recording.latent.values)
    if "condition" in rec_test.coords:
        ds = ds.assign_coords(condition=("trial", rec_test.condition.values))
    ds.attrs["bin_width"] = float(recording.attrs["bin_width"])
    return ds, summary


def plot_results(results: xr.Dataset) -> dict:
    """Figures from a fit result: spike raster of one test trial, true vs inferred latent
    trajectories (3-D projection, one panel per model), held-out rates vs truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figs = {}
    t_ms = results.time.values * 1e3
    counts = results.counts.isel(trial=0).values  # (time, neuron)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    tt, nn = np.nonzero(counts)
    ax.scatter(t_ms[tt], nn, s=4, c=np.where(results.heldout.values[nn], "tab:red", "k"), marker="|")
    ax.set(xlabel="time (ms)", ylabel="neuron", title=f"test trial {int(results.trial[0])} (red: held-out neurons)")
    fig.tight_layout()
    figs["raster"] = fig

    if "aligned_latents" in results:
        models = list(results.model.values)
        fig = plt.figure(figsize=(3.3 * len(models), 3.3))
        for i, m in enumerate(models):
            ax = fig.add_subplot(1, len(models), i + 1, projection="3d")
            for tr in range(min(3, results.sizes["trial"])):
                true = results.true_latents.isel(trial=tr).values
                inf = results.aligned_latents.sel(model=m).isel(trial=tr).values
                ax.plot(*true.T, color="0.6", lw=1.5)
                ax.plot(*inf.T, lw=1)
            ax.set_title(str(m))
            ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
        fig.suptitle("true (grey) vs inferred latents, aligned on training trials")
        fig.tight_layout()
        figs["latents"] = fig

    neurons = results.neuron.values[:3]
    fig, ax = plt.subplots(1, len(neurons), figsize=(3.3 * len(neurons), 3), squeeze=False, sharey=True)
    for j, n in enumerate(neurons):
        a = ax[0, j]
        if "true_rates" in results:
            a.plot(t_ms, results.true_rates.sel(neuron=n).isel(trial=0) / results.bin_width, "k", lw=2, label="truth")
        for m in results.model.values:
            a.plot(t_ms, results.pred_rates.sel(model=m, neuron=n).isel(trial=0) / results.bin_width, lw=1, label=str(m))
        a.set(title=f"held-out neuron {n}", xlabel="time (ms)")
    ax[0, 0].set_ylabel("rate (Hz)")
    ax[0, 0].legend(fontsize=7)
    fig.tight_layout()
    figs["heldout_rates"] = fig
    return figs
