"""Repetition suppression: error responses fall over repeated presentations, predictions do not.

A tonotopic laminar circuit hears roving-standard trains (:class:`~circuits.paradigms.Repetition`):
a tone repeated ``n_repeats`` times, then another tone, and so on. The first tone of a
train is unexpected (the top-level expectation still holds the previous tone); with every
repetition the expectation, learned online by the local prior rule, moves to the current
tone, so the prediction-error populations respond less and less. The representation
(prediction) populations in L5/6 keep encoding the tone (measured as their activity
projected on the tone's input pattern): their response does not fall, it grows as the
expectation agrees with the input, which separates predictive suppression from fatigue.

Summary: error and prediction responses per repetition (area ``measure_area``), the
repetition-suppression slope (change of the error response per e-fold of repetitions,
:func:`~circuits.measures.log_slope`), and the relative fall ``1 - last/first`` of both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from pcsim.config import ExperimentConfig
from pcsim.registry import ExperimentResult, RunContext
from pcsim.errors import ConfigError

from ..measures import log_slope, population_activity, window_mean
from ..paradigms import Repetition
from ..coordinates import label
from .sections import CircuitSection, engine_object


@dataclass(frozen=True, kw_only=True)
class RepetitionSection(Repetition):
    """Roving-standard trains: every field of :class:`~circuits.paradigms.Repetition`
    (``n_trains`` trains of ``n_repeats`` tones, each train's tone drawn from
    ``frequencies`` (channels; never twice in a row), tones of ``duration_ms`` every
    ``soa_ms``; one block per seed), declared there once, on the circuit's tonotopic map
    (``circuit.n_channels``). Experiment settings: ``skip_trains`` first trains are not
    analysed (the expectation forms); ``window`` (ms after onset) of the response measure;
    ``record_every_ms``; ``measure_area``."""

    n_channels: int = field(default=0, init=False, repr=False)  # the circuit's
    skip_trains: int = field(default=1, metadata={"ge": 0})
    window: tuple[float, ...] = field(default=(50.0, 250.0))
    record_every_ms: float = field(default=2.0, metadata={"gt": 0})
    measure_area: str = "area1"

    def __post_init__(self):
        if len(self.window) != 2 or not self.window[0] < self.window[1]:
            raise ConfigError(f"window must be [start_ms, stop_ms] with start < stop, got {list(self.window)}")
        if self.window[1] > self.soa_ms - 50:
            raise ConfigError(f"window must end at least 50 ms before the next tone (soa_ms - 50 = {self.soa_ms - 50})")
        if self.n_repeats < 2 or self.n_trains < 2:
            raise ConfigError("n_repeats and n_trains must be >= 2 (a repetition needs a first tone and a repeat)")
        if self.skip_trains >= self.n_trains:
            raise ConfigError(f"skip_trains ({self.skip_trains}) must be < n_trains ({self.n_trains})")
        if len(set(self.frequencies)) < 2:
            raise ConfigError("frequencies needs at least two different tones")


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``repetition_suppression`` experiment."""

    circuit: CircuitSection = field(default_factory=lambda: CircuitSection(tau_deep=10.0, prior_rate=0.01))
    repetition: RepetitionSection = field(default_factory=lambda: RepetitionSection(
        frequencies=(4.0, 9.0, 14.0, 19.0), duration_ms=100.0, soa_ms=500.0, seeds=(0, 1, 2, 3)))

    def __post_init__(self):
        c, r = self.circuit, self.repetition
        c.check_area(r.measure_area, "repetition.measure_area")
        c.check_record_every(r.record_every_ms, "repetition.record_every_ms")
        if max(r.frequencies) >= c.n_channels:
            raise ConfigError(f"key 'repetition.frequencies': tone at channel {max(r.frequencies)} is off the "
                             f"{c.n_channels}-channel map (circuit.n_channels)")


def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """Simulate every block at once, cut epochs per tone and measure responses per repetition."""
    c, r = config.circuit, config.repetition
    circ = c.build(ctx.device)
    stim = engine_object(r, Repetition, n_channels=c.n_channels).build()
    keep = np.broadcast_to(np.arange(stim.slots)[None, :] >= r.skip_trains * r.n_repeats, stim.schedule.shape)
    ds = circ.run(stim, record_every_ms=r.record_every_ms, epochs=(50.0, min(r.soa_ms - 50.0, r.window[1] + 150.0)),
                  keep=keep, seed=config.seed, progress=ctx.progress)
    ds["kind"] = ds["kind"].astype(str)
    ds["paradigm"] = ds["paradigm"].astype(str)
    err = population_activity(ds)
    # the representation of the tone being played: L5/6 activity projected on the tone's
    # (unit-norm) input pattern; summing over units would hide a shift between tones
    tones = stim.patterns[ds.pattern.values]
    tones = tones / np.linalg.norm(tones, axis=1, keepdims=True)
    tone_da = xr.DataArray(np.pad(tones, ((0, 0), (0, ds.sizes["unit"] - tones.shape[1]))), dims=("trial", "unit"))
    pred = (ds.rate.sel(population="l56").fillna(0.0) * tone_da).sum("unit")
    ds["error_activity"] = err.assign_attrs(units="rate units", long_name="summed L2/3 error activity")
    ds["prediction_activity"] = pred.assign_attrs(units="rate units", long_name="L5/6 representation of the played tone")
    w = tuple(r.window)
    by_rep = xr.Dataset({"error": window_mean(err, w), "prediction": window_mean(pred, w)}).groupby("repetition").mean()
    win = f"{w[0]:g}-{w[1]:g} ms"
    ds["error_by_repetition"] = by_rep["error"].rename(repetition="repetition_number").assign_attrs(
        units="rate units", long_name=f"mean L2/3 error response {win} after onset, by repetition")
    ds["prediction_by_repetition"] = by_rep["prediction"].rename(repetition="repetition_number").assign_attrs(
        units="rate units", long_name=f"mean L5/6 representation of the tone {win} after onset, by repetition")
    a = r.measure_area
    reps = ds.repetition_number.values
    e = ds.error_by_repetition.sel(area=a).values
    p = ds.prediction_by_repetition.sel(area=a).values
    summary = {
        "measure_area": a,
        "error_by_repetition": e.tolist(),
        "prediction_by_repetition": p.tolist(),
        "rs_slope_error": log_slope(reps, e),
        "rs_slope_prediction": log_slope(reps, p),
        "error_relative_fall": float(1 - e[-1] / e[0]),
        "prediction_relative_fall": float(1 - p[-1] / p[0]) if p[0] != 0 else None,
        "error_monotone_fall": bool((np.diff(e) <= 1e-6).all()),
        "units": "slopes in rate units per e-fold of repetitions",
    }
    ds.attrs["measure_area"] = a
    ds.attrs["window_ms"] = list(w)
    return ExperimentResult(label(ds), summary)


def plot(ds: xr.Dataset) -> dict:
    """Error and prediction time courses for repetitions 1, 2, 4 and the last, and both
    responses against repetition number (normalised to the first)."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    a = str(ds.attrs.get("measure_area", ds.area.values[1]))
    reps = ds.repetition_number.values
    show = sorted({1, 2, 4, int(reps[-1])} & set(int(x) for x in reps))
    cmap = colormaps.get_cmap("viridis")
    fig = Figure(figsize=(13, 3.2))
    ax = fig.subplots(1, 3)
    for i, n in enumerate(show):
        col = cmap(i / max(1, len(show) - 1))
        sel = ds.repetition == n
        ax[0].plot(ds.time * 1000, ds.error_activity.sel(area=a).where(sel, drop=True).mean("trial"), color=col, label=f"rep {n}")
        ax[1].plot(ds.time * 1000, ds.prediction_activity.sel(area=a).where(sel, drop=True).mean("trial"), color=col, label=f"rep {n}")
    ax[0].set(title=f"{a}: L2/3 error populations", xlabel="time from onset (ms)", ylabel="summed activity")
    ax[1].set(title=f"{a}: L5/6 representation of the tone", xlabel="time from onset (ms)", ylabel="projection on the tone")
    ax[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)  # the same repetitions colour both time courses
    e = ds.error_by_repetition.sel(area=a)
    p = ds.prediction_by_repetition.sel(area=a)
    ax[2].plot(reps, e / e[0], "o-", color="C3", label="error (L2/3)")
    ax[2].plot(reps, p / p[0], "s-", color="C0", label="prediction (L5/6)")
    ax[2].axhline(1, color="k", lw=0.5)
    ax[2].set(xlabel="repetition", ylabel="response / first response", title="repetition suppression")
    ax[2].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    return {"repetition": fig}
