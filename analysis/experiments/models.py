"""Config sections for the latent models, and fitting and scoring them on a recording.

Shared by the ``lorenz_latents`` (synthetic ground truth) and ``fit_recording`` (a user's
NWB file) experiments: the same models, the same metrics, the same result layout. A model's
config section is derived from its constructor (:func:`analysis.models.config_section`), so
every hyper-parameter a model takes can be set from the config, with the model's defaults
and ranges; ``seed`` and ``device`` come from the experiment.
"""

from __future__ import annotations

import inspect
from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
import xarray as xr

from analysis.models import (GPFA, LFADS, FactorAnalysisModel, PCLatentModel, PiVAE, PoissonVAE, SmoothingModel,
                             config_section)

MODELS = {"smoothing": SmoothingModel, "fa": FactorAnalysisModel, "gpfa": GPFA, "pc": PCLatentModel, "lfads": LFADS,
          "pivae": PiVAE, "vae": PoissonVAE}
"""The latent models a config's ``models.fit`` may name, by config name."""

ModelName = Literal["smoothing", "fa", "gpfa", "pc", "lfads", "pivae", "vae"]
assert set(ModelName.__args__) == set(MODELS)

SmoothingSection = config_section(SmoothingModel)
FASection = config_section(FactorAnalysisModel)
GPFASection = config_section(GPFA)
PCSection = config_section(PCLatentModel)
LFADSSection = config_section(LFADS)
PiVAESection = config_section(PiVAE)
VAESection = config_section(PoissonVAE)


@dataclass(frozen=True, kw_only=True)
class ModelsSection:
    """Which models to fit (``fit``) and their settings, one table each (the model's constructor parameters)."""

    fit: tuple[ModelName, ...] = field(default=("smoothing", "fa", "gpfa", "pc", "lfads"), metadata={"nonempty": True})
    smoothing: SmoothingSection = field(default_factory=SmoothingSection)
    fa: FASection = field(default_factory=FASection)
    gpfa: GPFASection = field(default_factory=GPFASection)
    pc: PCSection = field(default_factory=PCSection)
    lfads: LFADSSection = field(default_factory=LFADSSection)
    pivae: PiVAESection = field(default_factory=PiVAESection)
    vae: VAESection = field(default_factory=VAESection)


def size_problems(models: ModelsSection, n_neurons: int, n_heldin: int, n_bins: int) -> list[str]:
    """Settings in ``models`` a recording of ``n_neurons`` neurons (``n_heldin`` held in) and
    ``n_bins`` bins per trial cannot support, one sentence each naming the key (empty: none).

    The one statement of these limits for both experiments: ``lorenz_latents`` checks them when
    its config is read (the sizes are settings there), ``fit_and_score`` once the recording is
    read, before any model is fitted.
    """
    problems = []
    if "fa" in models.fit and models.fa.n_latents > n_heldin:
        problems.append(f"key 'models.fa.n_latents' = {models.fa.n_latents} exceeds the {n_heldin} held-in neurons "
                        f"({n_neurons} neurons in all)")
    if "gpfa" in models.fit and models.gpfa.n_latents > n_neurons:
        problems.append(f"key 'models.gpfa.n_latents' = {models.gpfa.n_latents} exceeds the {n_neurons} neurons")
    if "gpfa" in models.fit and (models.gpfa.segment_bins or 0) > n_bins:
        problems.append(f"key 'models.gpfa.segment_bins' = {models.gpfa.segment_bins} exceeds the {n_bins} bins "
                        "per trial")
    return problems


def build_model(name: str, models: ModelsSection, seed: int, device: str, progress: bool = False):
    """The latent model called ``name`` (a key of :data:`MODELS`) with its section's settings, and the
    experiment's ``seed``, ``device`` and ``progress`` flag where the model takes them."""
    cls = MODELS[name]
    params = asdict(getattr(models, name))
    accepted = inspect.signature(cls).parameters
    params.update({k: v for k, v in (("seed", seed), ("device", device), ("progress", progress)) if k in accepted})
    return cls(**params)


def fit_and_score(recording: xr.Dataset, models: ModelsSection, seed: int, device: str, progress: bool = True,
                  forward: xr.Dataset | None = None):
    """Fit every model in ``models.fit`` on the training trials and score it on the test trials.

    The recording (and ``forward``) is validated once (:func:`analysis.recording.as_recording`),
    its sizes checked against the models' settings (:func:`size_problems`, a ConfigError naming
    the key) before anything is fitted, and every model infers its latents once
    (:meth:`~analysis.models.LatentModel.infer`), on the test trials, or on every trial when
    true latents exist (the affine map of latent R2 is fitted on the training trials).
    ``progress`` shows a bar over the models, naming the one being fitted, and the models' own
    bars of their EM iterations. Returns ``(dataset, summary)``: the dataset holds, for the test
    trials (coordinate ``trial``; the training trials' ids are the coordinate ``train_trial``),
    the held-out spike counts (``heldout_counts``, trial x time x neuron; NaN in unobserved
    bins), each model's predicted held-out rates (``pred_rates``, model x trial x time x neuron,
    counts per bin) and, when the recording has them, the true rates and latents, each model's
    latents aligned to the truth (``aligned_latents``) and each test trial's own latent R2
    (``trial_latent_r2``, model x trial). Every variable and coordinate has ``units`` and
    ``long_name``, times in s (:func:`pcsim.results.convention_problems`). ``summary[model]``
    has ``co_bps``, ``psth_r2`` (when conditions exist), ``latent_r2`` (when true latents
    exist), ``fp_bps`` (given ``forward``, the same trials' next bins, and a model that can
    forecast; every neuron is scored there, as in NLB), ``behaviour_r2`` (when the recording has a
    ``behaviour`` variable: ridge decoding from the model's rates, fitted on the training trials,
    R2 on the test trials, variance-weighted over dimensions, angles as cos/sin; the dataset then
    holds ``behaviour`` and ``decoded_behaviour``), ``fit_seconds`` and, for a model with
    posterior-collapse diagnostics (LFADS), ``active_units`` and ``kl_nats`` (KL of ``q(g0)`` summed
    over its dimensions, mean over training trials). Unobserved bins
    count in no score.
    """
    from tqdm.auto import tqdm

    from analysis import metrics
    from analysis.recording import HELDOUT_ATTRS, as_recording
    from pcsim.errors import ConfigError

    rec = as_recording(recording)
    problems = size_problems(models, rec.counts.shape[2], int(rec.heldin.sum()), rec.counts.shape[1])
    if problems:
        raise ConfigError("; ".join(problems))
    split = rec.split
    test = split == "test" if split is not None else np.ones(rec.counts.shape[0], bool)
    train = split == "train" if split is not None else test
    heldout = rec.heldout
    rec_test = rec.trials(test)
    ds_test = rec_test.dataset
    ho_counts = rec_test.masked_counts[..., heldout]
    has_truth = "latents" in rec.dataset
    has_rates = "rates" in rec.dataset
    has_conditions = "condition" in rec.dataset.coords and np.unique(rec.dataset.condition.values).size > 1
    has_behaviour = "behaviour" in rec.dataset
    infer_all = has_truth or has_behaviour   # the latent R2 map and the behaviour decoder are fitted on training trials
    fwd = None if forward is None else as_recording(forward, name="forward").trials(test)
    pred, aligned, trial_r2, decoded, summary = [], [], [], [], {}
    bar = tqdm(models.fit, desc="models", unit="model", disable=not progress, leave=False)
    for name in bar:
        bar.set_description(f"models (fitting {name})")
        model = build_model(name, models, seed, device, progress).fit(rec)
        inferred = model.infer(rec if infer_all else rec_test)       # the one inference of this model
        on_test = (lambda da: da.isel(trial=np.flatnonzero(test))) if infer_all else (lambda da: da)
        rates = on_test(inferred.rates).isel(neuron=np.flatnonzero(heldout))
        entry = {"co_bps": metrics.co_bps(rates.values, ho_counts), "fit_seconds": float(model.fit_seconds_)}
        if hasattr(model, "active_units_"):   # posterior-collapse diagnostics of a VAE's initial condition
            entry["active_units"] = model.active_units_
            entry["kl_nats"] = float(np.sum(model.kl_per_latent_))
        if has_conditions:
            truth = ds_test.rates.values[..., heldout] if has_rates else ho_counts
            entry["psth_r2"] = metrics.psth_r2(rates.values, truth, ds_test.condition.values)
        if has_truth:
            lat = inferred.latents
            true = rec.dataset.latents
            lat_train, true_train = lat.isel(trial=np.flatnonzero(train)), true.isel(trial=np.flatnonzero(train))
            entry["latent_r2"] = metrics.latent_r2(lat_train, true_train, lat.isel(trial=np.flatnonzero(test)),
                                                   true.isel(trial=np.flatnonzero(test)))
            aligned.append(metrics.align_latents(lat_train, true_train, lat.isel(trial=np.flatnonzero(test))))
            trial_r2.append(metrics.trial_latent_r2(aligned[-1], ds_test.latents.values))
        if has_behaviour:
            decoding = _behaviour_decoding(inferred.rates, rec.dataset.behaviour, train, test)
            entry["behaviour_r2"] = float(decoding.r2)
            labels = decoding.behaviour_dim.values
            if labels.size > 1 and labels.dtype.kind in "US":   # named variables of a file: each one's R2 too
                entry.update({f"behaviour_r2_{label}": float(v) for label, v in zip(labels, decoding.r2_per_dim.values)})
            decoded.append(decoding.decoded.values)
        if fwd is not None and model.can_forecast:
            predicted = on_test(inferred.forecast(fwd.counts.shape[1]))
            entry["fp_bps"] = metrics.fp_bps(predicted.values, fwd.counts, observed=fwd.observed)
        summary[name] = {k: float(v) for k, v in entry.items()}
        pred.append(rates.values)
    bar.close()
    counts_test = rec_test.counts if rec_test.observed.all() else rec_test.masked_counts
    label = {"units": "", "long_name": ""}
    ds = xr.Dataset(coords={
        "model": ("model", list(models.fit), {**label, "long_name": "latent model"}),
        "trial": ("trial", ds_test.trial.values, {**label, "long_name": "test trial id (trials the models were scored on)"}),
        "train_trial": ("train_trial", rec.dataset.trial.values[train],
                        {**label, "long_name": "training trial id (trials the models were fitted on)"}),
        "time": ("time", ds_test.time.values, {"units": "s", "long_name": "bin centre (from the alignment event)"}),
        "neuron": ("neuron", ds_test.neuron.values[heldout], {**label, "long_name": "held-out neuron id"})})
    ds["heldout_counts"] = (("trial", "time", "neuron"), counts_test[..., heldout].astype(
        np.int64 if rec_test.observed.all() else np.float64),
        {"units": "counts/bin", "long_name": "held-out spike counts (test trials; NaN: unobserved)"})
    ds["pred_rates"] = (("model", "trial", "time", "neuron"), np.stack(pred), {"units": "counts/bin", "long_name": "predicted held-out rate"})
    ds["counts"] = (("trial", "time", "all_neuron"), counts_test.astype(np.int64 if rec_test.observed.all() else np.float64),
                    {"units": "counts/bin", "long_name": "spike counts of every neuron (test trials; NaN: unobserved)"})
    ds = ds.assign_coords(all_neuron=("all_neuron", ds_test.neuron.values, {**label, "long_name": "neuron id"}),
                          heldout=("all_neuron", heldout, dict(HELDOUT_ATTRS)))
    if has_rates:
        ds["true_rates"] = (("trial", "time", "neuron"), ds_test.rates.values[..., heldout], {"units": "counts/bin", "long_name": "true held-out rate"})
        summary["true_rates"] = {"co_bps": float(metrics.co_bps(ds.true_rates.values, ho_counts))}
        if fwd is not None and "rates" in fwd.dataset:
            summary["true_rates"]["fp_bps"] = float(metrics.fp_bps(fwd.dataset.rates.values, fwd.counts, observed=fwd.observed))
    if has_truth:
        ds["true_latents"] = (("trial", "time", "latent"), ds_test.latents.values, {"long_name": "true latents", "units": "1"})
        ds["aligned_latents"] = (("model", "trial", "time", "latent"), np.stack(aligned),
                                 {"long_name": "inferred latents, affinely aligned to the truth on training trials", "units": "1"})
        ds["trial_latent_r2"] = (("model", "trial"), np.stack(trial_r2),
                                 {"long_name": "latent R2 of each test trial (aligned vs true, the trial's own mean as baseline)",
                                  "units": "1"})
        ds = ds.assign_coords(latent=("latent", rec.dataset.latent.values, {**label, "long_name": "true latent dimension"}))
    if has_behaviour:
        beh = ds_test.behaviour
        ds["behaviour"] = (("trial", "time", "behaviour_dim"), beh.values,
                           {"units": beh.attrs.get("units", ""), "long_name": "behaviour (test trials)"})
        ds["decoded_behaviour"] = (("model", "trial", "time", "behaviour_dim"), np.stack(decoded),
                                   {"units": beh.attrs.get("units", ""), "long_name": "behaviour decoded from the "
                                    "model's rates by ridge regression fitted on the training trials (angles: "
                                    "atan2 of the decoded sin and cos)"})
        ds = ds.assign_coords({name: ("behaviour_dim", beh[name].values, dict(beh[name].attrs) or
                                      {"units": "", "long_name": name})
                               for name in ("behaviour_dim", "circular", "behaviour_units") if name in beh.coords})
        for name in ("behaviour_dim", "circular", "behaviour_units"):
            if name in ds.coords and not ds[name].attrs.get("long_name"):
                ds[name].attrs.update(units="", long_name=f"behaviour {name}")
    if "condition" in ds_test.coords:
        ds = ds.assign_coords(condition=("trial", ds_test.condition.values, {**label, "long_name": "trial condition"}))
    ds.attrs["bin_width"] = rec.bin_width
    return ds, summary


def _behaviour_decoding(rates: xr.DataArray, behaviour: xr.DataArray, train: np.ndarray, test: np.ndarray) -> xr.Dataset:
    """Behaviour R2 (NLB: ridge from the rates of every neuron, fitted on the training trials,
    scored on the test trials), pooled over behaviour dimensions weighted by their variance;
    circular dimensions (the ``circular`` coordinate) as cos/sin (:func:`analysis.metrics.behaviour_r2`)."""
    from analysis import metrics

    tr, te = np.flatnonzero(train), np.flatnonzero(test)
    return metrics.behaviour_r2(rates.isel(trial=tr), behaviour.isel(trial=tr), rates.isel(trial=te),
                                behaviour.isel(trial=te), multioutput="variance_weighted", per_dim=True)


def _behaviour_figure(results: xr.Dataset, n_trials: int = 3):
    """True vs decoded behaviour over the first ``n_trials`` test trials, one row per behaviour
    variable (angles as points, so that a wrap from pi to -pi draws no vertical line)."""
    from matplotlib.figure import Figure

    dims = list(results.behaviour_dim.values)
    circular = results.circular.values if "circular" in results.coords else np.zeros(len(dims), bool)
    shown = min(n_trials, results.sizes["trial"])
    bw = float(results.bin_width)
    n_bins = results.sizes["time"]
    t = np.arange(shown * n_bins) * bw   # test trials side by side
    fig = Figure(figsize=(8, 1.9 * len(dims) + 0.6), layout="constrained")
    axes = fig.subplots(len(dims), 1, squeeze=False, sharex=True)[:, 0]
    for j, (ax, name) in enumerate(zip(axes, dims)):
        true = results.behaviour.isel(trial=slice(0, shown), behaviour_dim=j).values.ravel()
        style = dict(ls="none", marker=".", ms=2) if circular[j] else dict(lw=1)
        ax.plot(t, true, color="k", label="true", **({**style, "lw": 2} if not circular[j] else style))
        for m in results.model.values:
            ax.plot(t, results.decoded_behaviour.sel(model=m).isel(trial=slice(0, shown), behaviour_dim=j).values.ravel(),
                    label=str(m), alpha=0.8, **style)
        for k in range(1, shown):
            ax.axvline(k * n_bins * bw, color="0.8", lw=0.8)
        units = results.behaviour_units.values[j] if "behaviour_units" in results.coords else ""
        ax.set_ylabel(f"{name} ({units})" if units else str(name), fontsize=8)
    axes[-1].set_xlabel(f"time (s), test trials {', '.join(str(v) for v in results.trial.values[:shown])} side by side")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside right upper", fontsize=7, frameon=False, markerscale=4)
    fig.suptitle("behaviour decoded from each model's rates (ridge fitted on training trials)", fontsize=9)
    return fig


def representative_trials(r2: np.ndarray, n: int = 2) -> np.ndarray:
    """Positions of the ``n`` trials whose per-trial R2 ``(trial,)`` lies closest to its median
    (NaN last): trials that show what a typical fit looks like, neither the best nor the worst."""
    r2 = np.asarray(r2, float)
    distance = np.abs(r2 - np.nanmedian(r2)) if np.isfinite(r2).any() else np.zeros_like(r2)
    return np.argsort(np.where(np.isfinite(distance), distance, np.inf), kind="stable")[:n]


def plot_results(results: xr.Dataset) -> dict:
    """Figures from a fit result: spike raster of one test trial; true vs inferred latent
    trajectories of the test trials at the median per-trial latent R2 (3-D, one panel per model,
    each trial one colour, truth dashed, inferred solid); held-out rates vs truth."""
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    figs = {}
    t_ms = results.time.values * 1e3
    counts = np.nan_to_num(results.counts.isel(trial=0).values)  # (time, neuron); unobserved bins blank
    fig = Figure(figsize=(6, 3.5))
    ax = fig.subplots()
    tt, nn = np.nonzero(counts)
    ax.scatter(t_ms[tt], nn, s=4, c=np.where(results.heldout.values[nn], "tab:red", "k"), marker="|")
    ax.set(xlabel="time (ms)", ylabel="neuron", title=f"test trial {results.trial.values[0]} (red: held-out neurons)")
    fig.tight_layout()
    figs["raster"] = fig

    if "aligned_latents" in results:
        models = list(results.model.values)
        names = [str(v) for v in results.latent.values]
        fig = Figure(figsize=(3.8 * len(models), 4.4))
        fig.subplots_adjust(left=0.01, right=0.97, bottom=0.1, top=0.84, wspace=0.12)
        colours = ["tab:blue", "tab:orange"]
        for i, m in enumerate(models):
            ax = fig.add_subplot(1, len(models), i + 1, projection="3d")
            r2 = results.trial_latent_r2.sel(model=m).values
            chosen = representative_trials(r2, len(colours))
            for colour, tr in zip(colours, chosen):
                true = results.true_latents.isel(trial=tr).values
                inf = results.aligned_latents.sel(model=m).isel(trial=tr).values
                ax.plot(*true.T, color=colour, ls="--", lw=1.2)
                ax.plot(*inf.T, color=colour, ls="-", lw=1.2)
            shown = ", ".join(f"{results.trial.values[tr]} ({colour[4:]}, R2 {r2[tr]:.2f})"
                              for colour, tr in zip(colours, chosen))
            ax.set_title(f"{m}: trials {shown}\nmedian trial R2 {np.nanmedian(r2):.2f}", fontsize=8)
            ax.set_xlabel(f"{names[0]} (z-scored)", fontsize=7)
            ax.set_ylabel(f"{names[1]} (z-scored)", fontsize=7)
            ax.set_zlabel(f"{names[2]} (z-scored)", fontsize=7)
            ax.tick_params(labelsize=6)
            ax.set_box_aspect(None, zoom=0.82)   # room for the z label inside the panel
        handles = [Line2D([], [], color="0.3", ls="--", label="true trajectory"),
                   Line2D([], [], color="0.3", ls="-", label="inferred trajectory (colour: trial, as in the title)")]
        fig.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=7, frameon=False)
        fig.suptitle("test trials at the median per-trial latent R2: true (dashed) vs inferred (solid), "
                     "aligned on training trials", fontsize=9)
        figs["latents"] = fig

    if "decoded_behaviour" in results:
        figs["behaviour"] = _behaviour_figure(results)

    neurons = results.neuron.values[:3]
    fig = Figure(figsize=(3.3 * len(neurons) + 1.2, 3), layout="constrained")
    ax = fig.subplots(1, len(neurons), squeeze=False, sharey=True)
    for j, n in enumerate(neurons):
        a = ax[0, j]
        if "true_rates" in results:
            a.plot(t_ms, results.true_rates.sel(neuron=n).isel(trial=0) / results.bin_width, "k", lw=2, label="truth")
        for m in results.model.values:
            a.plot(t_ms, results.pred_rates.sel(model=m, neuron=n).isel(trial=0) / results.bin_width, lw=1, label=str(m))
        a.set(title=f"held-out neuron {n}, test trial {results.trial.values[0]}", xlabel="time (ms)")
        a.title.set_fontsize(8)
    ax[0, 0].set_ylabel("rate (Hz)")
    fig.legend(*ax[0, 0].get_legend_handles_labels(), loc="outside right upper", fontsize=7, frameon=False)
    figs["heldout_rates"] = fig
    return figs
