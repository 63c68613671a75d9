"""pi-VAE's synthetic benchmark: latent recovery with and without the label.

A 2-D latent tied to a continuous label and mixed non-linearly into Poisson spikes
(:func:`analysis.synthetic.pivae_recording`, after Zhou & Wei 2020) is generated once per seed;
pi-VAE (label-conditioned prior), its unconditioned ablation (a Poisson VAE), GPFA and the PC
latent model are fitted on the training trials with that seed and scored on the test trials
(:func:`analysis.experiments.models.fit_and_score`: latent R2 of an affine map fitted on the
training trials, co-bps). The summary gives each model's latent R2 and co-bps per seed and
their mean and standard deviation over the seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from pcsim.config import ExperimentConfig
from pcsim.errors import ConfigError
from pcsim.registry import ExperimentResult, RunContext

from .models import ModelsSection, fit_and_score, size_problems

METRICS = ("latent_r2", "co_bps", "fit_seconds")


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """Size of the synthetic recording (:func:`analysis.synthetic.pivae_recording`) and its split."""

    n_trials: int = field(default=100, metadata={"ge": 4})
    n_neurons: int = field(default=50, metadata={"ge": 2})
    n_bins: int = field(default=50, metadata={"ge": 2})
    bin_ms: float = field(default=50.0, metadata={"gt": 0})
    mean_rate_hz: float = field(default=20.0, metadata={"gt": 0})
    noise_correlation: float = field(default=0.8, metadata={"ge": 0, "lt": 1})
    heldout_fraction: float = field(default=0.25, metadata={"gt": 0, "lt": 1})
    test_fraction: float = field(default=0.2, metadata={"gt": 0, "lt": 1})


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``pivae_synthetic`` experiment: ``seeds`` (data and model seeds, one fit of every model each)."""

    seeds: tuple[int, ...] = field(default=(0, 1, 2), metadata={"nonempty": True})
    data: DataSection = field(default_factory=DataSection)
    models: ModelsSection = field(default_factory=lambda: ModelsSection(fit=("pivae", "vae", "gpfa", "pc")))

    def __post_init__(self):
        d = self.data
        n_in = d.n_neurons - int(round(d.heldout_fraction * d.n_neurons))
        problems = size_problems(self.models, d.n_neurons, n_in, d.n_bins)
        if any(s < 0 for s in self.seeds):
            problems.append(f"key 'seeds' = {list(self.seeds)} holds a negative seed")
        if problems:
            raise ConfigError("; ".join(problems))


def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """Generate one recording per seed, fit and score every model on it; summary per model: each
    metric per seed (``<metric>_per_seed``), its mean and its standard deviation over the seeds."""
    from tqdm.auto import tqdm

    from analysis.synthetic import pivae_recording

    d, models = config.data, config.models
    values = {m: np.full((len(config.seeds), len(models.fit)), np.nan) for m in METRICS}
    first = None
    for i, seed in enumerate(tqdm(config.seeds, desc="seeds", disable=not ctx.progress, leave=False)):
        rec = pivae_recording(d.n_trials, d.n_neurons, d.n_bins, bin_width=d.bin_ms / 1000.0,
                              mean_rate_hz=d.mean_rate_hz, noise_correlation=d.noise_correlation,
                              heldout_fraction=d.heldout_fraction, test_fraction=d.test_fraction, seed=seed)
        ds, summary = fit_and_score(rec, models, seed, ctx.device, ctx.progress)
        for j, name in enumerate(models.fit):
            for m in METRICS:
                values[m][i, j] = summary[name].get(m, np.nan)
        if first is None:
            labels = rec.behaviour.isel(behaviour_dim=0, trial=np.flatnonzero(rec.split.values == "test"))
            first = ds.assign(label=(("trial", "time"), labels.values, {"units": "rad", "long_name": "label u"}))
    summary = {}
    for j, name in enumerate(models.fit):
        entry = {}
        for m in METRICS:
            v = values[m][:, j]
            entry[m] = float(np.mean(v))
            entry[f"{m}_std"] = float(np.std(v, ddof=1)) if len(v) > 1 else 0.0
            entry[f"{m}_per_seed"] = [float(x) for x in v]
        summary[name] = entry
    attrs = {"units": "1", "long_name": ""}
    out = first.rename({"trial": "first_seed_trial"}) if first is not None else xr.Dataset()
    out = out.assign_coords(seed=("seed", list(config.seeds), {"units": "", "long_name": "data and model seed"}))
    out["latent_r2_by_seed"] = (("seed", "model"), values["latent_r2"],
                                {**attrs, "long_name": "latent R2 on test trials (affine map fitted on training trials)"})
    out["co_bps_by_seed"] = (("seed", "model"), values["co_bps"],
                             {"units": "bits/spike", "long_name": "co-smoothing bits per spike on test trials"})
    out["fit_seconds_by_seed"] = (("seed", "model"), values["fit_seconds"], {"units": "s", "long_name": "fit time"})
    out.first_seed_trial.attrs.update(units="", long_name="test trial id (first seed's recording)")
    return ExperimentResult(out, summary)


def plot(results: xr.Dataset) -> dict:
    """Latent R2 per model (mean and every seed), and each model's aligned latents of the first
    seed's test trials against the truth, coloured by the label."""
    from matplotlib.figure import Figure

    figs = {}
    models = [str(m) for m in results.model.values]
    r2 = results.latent_r2_by_seed.values
    fig = Figure(figsize=(1.2 * len(models) + 2, 3.2), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(models))
    ax.bar(x, np.nanmean(r2, 0), color="0.8", label="mean over seeds")
    for k in range(r2.shape[0]):
        ax.plot(x, r2[k], "o", ms=4, label=f"seed {int(results.seed.values[k])}")
    ax.set(xticks=x, xticklabels=models, ylabel="latent R2 (test trials)", ylim=(min(0, np.nanmin(r2)), 1),
           title="pi-VAE synthetic benchmark: latent recovery")
    ax.legend(fontsize=7, frameon=False, loc="lower left")
    figs["latent_r2"] = fig
    if "aligned_latents" in results:
        fig = Figure(figsize=(3 * (len(models) + 1), 3), layout="constrained")
        ax = fig.subplots(1, len(models) + 1, sharex=True, sharey=True)
        u = results.label.values.ravel()
        true = results.true_latents.values.reshape(-1, 2)
        ax[0].scatter(*true.T, c=u, s=2, cmap="twilight")
        ax[0].set(title="true latents", xlabel="z1", ylabel="z2")
        for a, m in zip(ax[1:], models):
            z = results.aligned_latents.sel(model=m).values.reshape(-1, 2)
            a.scatter(*z.T, c=u, s=2, cmap="twilight")
            a.set(title=f"{m} (aligned)", xlabel="z1")
        fig.suptitle("first seed's test trials, colour: label u", fontsize=9)
        figs["latents"] = fig
    return figs
