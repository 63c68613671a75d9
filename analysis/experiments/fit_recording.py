"""Latent models fitted to a user's recording (NWB): ``pcsim fit RECORDING.nwb --config CFG``.

The NWB file's spikes are binned around an alignment column, held-in/held-out neurons and
train/test trials come from the file (NLB layout: a ``heldout`` Units column and a ``split``
trials column) or, where the file has none, from the config (random, seeded). The same
models and metrics as ``lorenz_latents`` follow; true rates and latents are unknown, so the
summary has co-bps, PSTH R2 (when the trials have a condition column) and fit time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from pcsim.config import ExperimentConfig
from pcsim.errors import DataError
from pcsim.registry import ExperimentResult, RunContext

from .models import ModelsSection, fit_and_score, plot_results


@dataclass(frozen=True, kw_only=True)
class RecordingSection:
    """``path`` of the NWB file (``pcsim fit`` sets it); ``bin_ms``; ``window_ms`` around the
    trials column ``align``; ``heldout``: neuron ids held out (empty: the file's ``heldout``
    column, else a random ``heldout_fraction``); ``condition``: trials column used for PSTHs
    (empty: none); ``test_fraction`` of trials for testing when the file has no ``split``."""

    path: str = field(default="", metadata={"nonempty": True})
    bin_ms: float = field(default=10.0, metadata={"gt": 0})
    window_ms: tuple[float, ...] = (0.0, 1000.0)
    align: str = "start_time"
    heldout: tuple[int, ...] = ()
    heldout_fraction: float = field(default=0.25, metadata={"gt": 0, "lt": 1})
    condition: str = ""
    test_fraction: float = field(default=0.2, metadata={"gt": 0, "lt": 1})


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``fit_recording`` experiment."""

    recording: RecordingSection = field(default_factory=RecordingSection)
    models: ModelsSection = field(default_factory=lambda: ModelsSection(fit=("smoothing", "fa", "gpfa", "pc")))


def load_recording(rc: RecordingSection, seed: int) -> xr.Dataset:
    """Read and bin the NWB file, then settle held-out neurons, splits and conditions (seeded where random)."""
    from analysis.nwb import read_nwb

    if len(rc.window_ms) != 2 or rc.window_ms[1] <= rc.window_ms[0]:
        raise DataError(f"recording.window_ms must be [start, stop] with stop > start, got {list(rc.window_ms)}")
    rec = read_nwb(rc.path, bin_width=rc.bin_ms / 1000.0, window=(rc.window_ms[0] / 1000.0, rc.window_ms[1] / 1000.0),
                   align=rc.align, heldout=list(rc.heldout) if rc.heldout else None)
    rng = np.random.default_rng(seed)
    if "split" in rec.coords:
        rec = rec.isel(trial=(rec.split != "none").values)  # NLB: trials in no split are not used
    if not rec.heldout.values.any():
        n = rec.sizes["neuron"]
        mask = np.zeros(n, bool)
        mask[rng.choice(n, max(1, int(round(rc.heldout_fraction * n))), replace=False)] = True
        rec = rec.assign_coords(heldout=("neuron", mask))
    split = rec.split.values.astype(str) if "split" in rec.coords else np.full(rec.sizes["trial"], "train")
    if not (split == "test").any():
        split = np.where(split == "val", "test", split)  # NLB's public files hold out 'val' for local scoring
    if not (split == "test").any():
        split = split.copy()
        split[rng.choice(split.size, max(1, int(round(rc.test_fraction * split.size))), replace=False)] = "test"
    rec = rec.assign_coords(split=("trial", split))
    if rc.condition:
        if rc.condition not in rec.coords:
            raise DataError(f"{rc.path}: recording.condition names trials column {rc.condition!r}, which the file lacks")
        rec = rec.assign_coords(condition=("trial", rec[rc.condition].values))
    elif "condition" in rec.coords:
        rec = rec.drop_vars("condition")
    return rec


def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """Bin the recording, fit and score every model on its test trials."""
    rec = load_recording(config.recording, config.seed)
    ds, summary = fit_and_score(rec, config.models, config.seed, ctx.device, ctx.progress)
    ds.attrs["recording"] = str(config.recording.path)
    summary["n_trials"] = int(rec.sizes["trial"])
    summary["n_neurons"] = int(rec.sizes["neuron"])
    summary["n_heldout"] = int(rec.heldout.sum())
    return ExperimentResult(ds, summary)


def plot(results: xr.Dataset) -> dict:
    """Raster of a test trial and held-out rates per model."""
    return plot_results(results)
