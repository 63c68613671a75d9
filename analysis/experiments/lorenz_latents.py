"""Latent models on the Lorenz ground truth: co-bps, PSTH R2, latent R2 and fit time per model.

A Lorenz-driven Poisson population (:func:`analysis.synthetic.lorenz_recording`) is split
into training and test trials and held-in/held-out neurons; smoothing, factor analysis,
GPFA, the dynamical predictive-coding model and the LFADS-style sequential VAE are fitted on the training trials and scored
on the test trials, next to the ceiling given by the true rates.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import xarray as xr

from pcsim.config import ExperimentConfig
from pcsim.errors import ConfigError
from pcsim.registry import ExperimentResult, RunContext

from .models import ModelsSection, fit_and_score, plot_results, size_problems


@dataclass(frozen=True, kw_only=True)
class DataSection:
    """Size of the synthetic recording and how it is split (see :func:`analysis.synthetic.lorenz_recording`);
    ``forward_bins`` more bins follow each trial's ``n_bins``, unseen by the models, for fp-bps;
    ``condition_jitter``: trials start this close to one of ``n_conditions`` points (absent:
    random starts, labelled by the nearest point, the field's usual Lorenz benchmark)."""

    n_trials: int = field(default=400, metadata={"ge": 4})
    n_neurons: int = field(default=60, metadata={"ge": 2})
    n_bins: int = field(default=100, metadata={"ge": 2})
    bin_ms: float = field(default=10.0, metadata={"gt": 0})
    mean_rate_hz: float = field(default=8.0, metadata={"gt": 0})
    n_conditions: int = field(default=8, metadata={"ge": 0})
    condition_jitter: float | None = None
    heldout_fraction: float = field(default=0.25, metadata={"gt": 0, "lt": 1})
    test_fraction: float = field(default=0.2, metadata={"gt": 0, "lt": 1})
    forward_bins: int = field(default=10, metadata={"ge": 0})


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``lorenz_latents`` experiment."""

    data: DataSection = field(default_factory=DataSection)
    models: ModelsSection = field(default_factory=ModelsSection)

    def __post_init__(self):
        # Cross-section checks, reported by pcsim.config as a ConfigError naming the file and key.
        d = self.data
        n_in = d.n_neurons - int(round(d.heldout_fraction * d.n_neurons))
        if n_in < 1:
            raise ConfigError(f"key 'data.heldout_fraction' = {d.heldout_fraction} holds out all {d.n_neurons} neurons")
        problems = size_problems(self.models, d.n_neurons, n_in, d.n_bins)
        if problems:
            raise ConfigError(f"{'; '.join(problems)} (data.n_neurons = {d.n_neurons}, "
                             f"data.heldout_fraction = {d.heldout_fraction}, data.n_bins = {d.n_bins})")


def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """Generate the recording, fit and score every model; the summary has one entry per model."""
    from analysis.synthetic import lorenz_recording

    d = config.data
    full = lorenz_recording(d.n_trials, d.n_neurons, d.n_bins + d.forward_bins, bin_width=d.bin_ms / 1000.0,
                            mean_rate_hz=d.mean_rate_hz, n_conditions=d.n_conditions, condition_jitter=d.condition_jitter,
                            heldout_fraction=d.heldout_fraction, test_fraction=d.test_fraction, seed=config.seed)
    rec = full.isel(time=slice(0, d.n_bins))
    forward = full.isel(time=slice(d.n_bins, None)) if d.forward_bins else None
    ds, summary = fit_and_score(rec, config.models, config.seed, ctx.device, ctx.progress, forward=forward)
    return ExperimentResult(ds, summary)


def plot(results: xr.Dataset) -> dict:
    """Raster of a test trial, true vs inferred latents, held-out rates vs truth."""
    return plot_results(results)
