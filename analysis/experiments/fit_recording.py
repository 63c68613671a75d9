"""Latent models fitted to a user's recording (NWB): ``pcsim fit RECORDING.nwb --config CFG``.

The NWB file's spikes are binned around an alignment column, held-in/held-out neurons and
train/test trials come from the file (NLB layout: a ``heldout`` Units column and a ``split``
trials column) or, where the file has none, from the config (random, seeded). The same
models and metrics as ``lorenz_latents`` follow; true rates and latents are unknown, so the
summary has co-bps, PSTH R2 (when the trials have a condition column), behaviour R2 (when the
config names behaviour series) and fit time. Sessions without trials (``[recording.windows]``)
are cut into fixed windows, each a trial; ``[recording.neurons] where`` selects units.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import xarray as xr

from analysis.recording import split_recording

from pcsim.config import ExperimentConfig
from pcsim.errors import ConfigError, DataError
from pcsim.registry import ExperimentResult, RunContext

from .models import ModelsSection, fit_and_score, plot_results


def _default(function, name: str):
    """The default of parameter ``name`` of ``function`` (one declaration of a policy's defaults)."""
    return inspect.signature(function).parameters[name].default


@dataclass(frozen=True, kw_only=True)
class WindowsSection:
    """Which stretches of the session become trials. ``intervals``: ``"trials"`` (the trials
    table, each trial aligned at ``recording.align`` and cut to ``recording.window_ms``), a
    ``TimeIntervals`` table of the file (``"epochs"``, or any under ``/intervals``) or
    ``"session"`` (the whole recording); ``length_ms``: cut the intervals into consecutive windows
    of this length (needed unless ``intervals = "trials"``; 0: do not cut); ``where``: the rows of
    the table to use, ``{column = value or [values]}`` (e.g. ``{tags = "wake"}``)."""

    intervals: str = field(default="trials", metadata={"nonempty": True})
    length_ms: float = field(default=0.0, metadata={"ge": 0})
    where: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.intervals != "trials" and self.length_ms == 0:
            raise ConfigError(f"key 'length_ms' must be > 0 to cut the intervals {self.intervals!r} into windows")


@dataclass(frozen=True, kw_only=True)
class NeuronsSection:
    """``where``: the units to keep, by their Units-table columns, ``{column = value or [values]}``
    (e.g. ``{quality = "good"}``; empty: every unit)."""

    where: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class BehaviourSection:
    """``series``: behaviour time series of the file resampled onto the bins and decoded from every
    model (names in the ``behavior`` processing module, e.g. ``["position", "head_direction"]``;
    empty: none); ``circular``: further series names to treat as angles in radians (series in a
    ``CompassDirection`` or in radians or degrees are angles already)."""

    series: tuple[str, ...] = ()
    circular: tuple[str, ...] = ()

    def __post_init__(self):
        unknown = [name for name in self.circular if name not in self.series]
        if unknown:
            raise ConfigError(f"key 'circular' names {unknown}, which are not in 'series' {list(self.series)}")


@dataclass(frozen=True, kw_only=True)
class RecordingSection:
    """``path`` of the NWB file (``pcsim fit`` sets it; the experiment's config checks it exists);
    ``bin_ms``; ``window_ms`` = [start, stop] around the trials column ``align`` (empty: the
    whole trial, for equal-length trials aligned at ``start_time``, or every bin of a binned
    file); ``heldout``: neuron ids held out (empty: the file's
    ``heldout`` column, else a random ``heldout_fraction``); ``condition``: trials column used
    for PSTHs (empty: none); ``test_fraction`` of trials for testing when the file has no
    ``split`` (the split policy and its defaults are :func:`analysis.recording.split_recording`'s,
    the same as :func:`analysis.nwb.read_nwb`'s); the sections ``windows`` (sessions without
    trials), ``neurons`` (which units) and ``behaviour`` (series to decode) follow."""

    path: str = field(default="", metadata={"nonempty": True})
    bin_ms: float = field(default=10.0, metadata={"gt": 0})
    window_ms: tuple[float, ...] = (0.0, 1000.0)
    align: str = "start_time"
    heldout: tuple[int, ...] = ()
    heldout_fraction: float = field(default=_default(split_recording, "heldout_fraction"), metadata={"gt": 0, "lt": 1})
    condition: str = ""
    test_fraction: float = field(default=_default(split_recording, "test_fraction"), metadata={"gt": 0, "lt": 1})
    windows: WindowsSection = field(default_factory=WindowsSection)
    neurons: NeuronsSection = field(default_factory=NeuronsSection)
    behaviour: BehaviourSection = field(default_factory=BehaviourSection)

    def __post_init__(self):
        # pcsim.config adds the config file and the table to the message
        if self.window_ms and (len(self.window_ms) != 2 or self.window_ms[1] <= self.window_ms[0]):
            raise ConfigError(f"key 'window_ms' must be [start, stop] (ms) with stop > start, or [] for the whole "
                             f"trial, got {list(self.window_ms)}")
        if self.windows.length_ms and (self.window_ms or self.align != "start_time"):
            raise ConfigError("keys 'window_ms' and 'align' place bins around trial events, and windows cut from "
                              f"'windows.intervals' = {self.windows.intervals!r} start at their own start: set "
                              "window_ms = [] and leave align unset")


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``fit_recording`` experiment."""

    recording: RecordingSection = field(default_factory=RecordingSection)
    models: ModelsSection = field(default_factory=lambda: ModelsSection(fit=("smoothing", "fa", "gpfa", "pc")))

    def check_inputs(self) -> None:
        """The recording file must exist (checked by ``pcsim run`` before anything is written;
        ``pcsim show`` lists the keys without it)."""
        if not Path(self.recording.path).is_file():
            raise ConfigError(f"key 'recording.path' = {self.recording.path!r} is not a recording file: run "
                             "`pcsim fit FILE.nwb --config CONFIG`, or give one with --set recording.path=FILE")


def load_recording(rc: RecordingSection, seed: int) -> xr.Dataset:
    """Read and bin the NWB file with the split policy of :func:`analysis.nwb.read_nwb` (seeded
    where random; trials, or windows of a session without trials; the selected units; the
    behaviour series resampled onto the bins), and keep the trials column ``rc.condition`` as the ``condition`` coordinate."""
    from analysis.nwb import read_nwb

    window = (rc.window_ms[0] / 1000.0, rc.window_ms[1] / 1000.0) if rc.window_ms else None
    windows = rc.windows
    rec = read_nwb(rc.path, bin_width=rc.bin_ms / 1000.0, window=window, align=rc.align,
                   intervals=windows.intervals, window_length=windows.length_ms / 1000.0 if windows.length_ms else None,
                   intervals_where=windows.where, neurons=rc.neurons.where, behaviour=rc.behaviour.series,
                   circular=rc.behaviour.circular, heldout=list(rc.heldout) if rc.heldout else None,
                   heldout_fraction=rc.heldout_fraction, test_fraction=rc.test_fraction, seed=seed)
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
