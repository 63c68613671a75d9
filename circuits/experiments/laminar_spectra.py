"""Spectral asymmetry of the laminar circuit: fast superficial errors, slow deep predictions.

A three-area circuit with inhibitory interneurons is driven by a noisy tone (white noise on
the input and private noise in every population) for several seconds per trial. Welch
spectra of the summed activity of each population type, and of the LFP proxy of each
layer, show the canonical-microcircuit asymmetry reported in laminar recordings (Bastos et
al. 2012, 2015; van Kerkoerle et al. 2014): the superficial (L2/3, feed-forward, error)
populations carry relatively more high-frequency power and the deep (L5/6, feedback,
prediction) populations relatively more low-frequency power. The mechanism here is the
one the account proposes: errors follow the input's fast fluctuations, representations
integrate them.

Headline (summary.json): ``spectral_ratio`` = (high/low band power of the superficial error
activity) / (the same for the deep prediction activity) in ``measure_area`` (> 1 is the
asymmetry), the same ratio for the LFP proxy (L2/3 over L5/6), and the per-area values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import xarray as xr

from pcsim.config import ExperimentConfig
from pcsim.registry import ExperimentResult, RunContext
from pcsim.errors import ConfigError

from ..measures import population_activity, power_spectrum, spectral_ratio
from ..paradigms import Stimulus, tone
from ..coordinates import label
from .sections import CircuitSection


@dataclass(frozen=True, kw_only=True)
class DriveSection:
    """The drive: tone at channel ``frequency`` (``width`` channels) of ``amplitude`` held on
    for ``trial_ms`` in each of ``trials`` trials, plus white input noise ``input_noise``
    (rate units per step); the first ``transient_ms`` of each trial are discarded. Spectra:
    Welch segments of ``segment_ms``, bands ``high_band``/``low_band`` (Hz); activity is
    recorded every ``record_every_ms``."""

    trials: int = field(default=16, metadata={"ge": 1})
    trial_ms: float = field(default=3000.0, metadata={"gt": 0})
    transient_ms: float = field(default=500.0, metadata={"ge": 0})
    frequency: float = field(default=10.0, metadata={"ge": 0})
    width: float = field(default=2.0, metadata={"gt": 0})
    amplitude: float = field(default=1.0, metadata={"gt": 0})
    input_noise: float = field(default=0.5, metadata={"ge": 0})
    record_every_ms: float = field(default=1.0, metadata={"gt": 0})
    segment_ms: float = field(default=500.0, metadata={"gt": 0})
    high_band: tuple[float, ...] = field(default=(30.0, 80.0), metadata={"ge": 0})
    low_band: tuple[float, ...] = field(default=(4.0, 20.0), metadata={"ge": 0})
    measure_area: str = "area1"

    def __post_init__(self):
        for name in ("high_band", "low_band"):
            b = getattr(self, name)
            if len(b) != 2 or not b[0] < b[1]:
                raise ConfigError(f"{name} must be [low_hz, high_hz] with low < high, got {list(b)}")
        if self.transient_ms + self.segment_ms > self.trial_ms:
            raise ConfigError("trial_ms must exceed transient_ms + segment_ms")
        nyquist = 500.0 / self.record_every_ms
        if self.high_band[1] > nyquist:
            raise ConfigError(f"high_band reaches {self.high_band[1]} Hz, above the Nyquist frequency {nyquist} Hz "
                             "of record_every_ms")


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``laminar_spectra`` experiment."""

    circuit: CircuitSection = field(default_factory=lambda: CircuitSection(tau_deep=10.0, interneurons=True, noise=0.05))
    drive: DriveSection = field(default_factory=DriveSection)

    def __post_init__(self):
        self.circuit.check_area(self.drive.measure_area, "drive.measure_area")
        self.circuit.check_record_every(self.drive.record_every_ms, "drive.record_every_ms")


def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """Drive every trial, record continuously, and compute spectra and band ratios."""
    c, d = config.circuit, config.drive
    circ = c.build(ctx.device)
    pattern = tone(d.frequency, c.n_channels, width=d.width, amplitude=d.amplitude)[None, :]
    stim = Stimulus(pattern, np.zeros((d.trials, 1), np.int64), np.array([0.0]), d.trial_ms, d.trial_ms,
                    conditions={"trial_index": np.arange(d.trials)}, cue=False, noise_std=d.input_noise)
    ds = circ.run(stim, record_every_ms=d.record_every_ms, seed=config.seed, progress=ctx.progress, record_stimulus=False)
    steady = ds.isel(time=np.flatnonzero(ds.time.values >= d.transient_ms / 1000.0 - 1e-9))
    acts = xr.concat([population_activity(steady, ("l23_pos", "l23_neg")), population_activity(steady, ("l56",)),
                      population_activity(steady, ("l4",))], dim=xr.DataArray(["superficial", "deep", "granular"], dims="stream"))
    psd = power_spectrum(acts, segment_ms=d.segment_ms).mean("trial")
    lfp_psd = power_spectrum(steady.lfp, segment_ms=d.segment_ms).mean("trial")
    ds["activity_psd"] = psd.assign_attrs(units="(rate units)^2/Hz", long_name="Welch PSD of summed population activity")
    ds["lfp_psd"] = lfp_psd.assign_attrs(units="(rate units)^2/Hz", long_name="Welch PSD of the LFP proxy")
    hi, lo = tuple(d.high_band), tuple(d.low_band)
    rel = spectral_ratio(psd, hi, lo)
    lrel = spectral_ratio(lfp_psd, hi, lo)
    bands = f"band power {hi[0]:g}-{hi[1]:g} Hz / {lo[0]:g}-{lo[1]:g} Hz"
    ds["relative_high_power"] = rel.assign_attrs(units="1", long_name=f"{bands} of summed population activity")
    ds["lfp_relative_high_power"] = lrel.assign_attrs(units="1", long_name=f"{bands} of the LFP proxy")
    a = d.measure_area
    ratio = {ar: float(rel.sel(area=ar, stream="superficial") / rel.sel(area=ar, stream="deep")) for ar in circ.area_names[1:]}
    lfp_ratio = {ar: float(lrel.sel(area=ar, lfp_layer="L2/3") / lrel.sel(area=ar, lfp_layer="L5/6")) for ar in circ.area_names[1:]}
    summary = {
        "measure_area": a,
        "spectral_ratio": ratio[a],
        "spectral_ratio_per_area": ratio,
        "lfp_spectral_ratio": lfp_ratio[a],
        "lfp_spectral_ratio_per_area": lfp_ratio,
        "high_band_hz": list(hi), "low_band_hz": list(lo),
        "superficial_relative_high_power": float(rel.sel(area=a, stream="superficial")),
        "deep_relative_high_power": float(rel.sel(area=a, stream="deep")),
        "definition": "spectral_ratio = [P_high/P_low](L2/3 error activity) / [P_high/P_low](L5/6 prediction activity)",
    }
    ds = ds.drop_vars(["rate", "lfp", "prior", "cue"]).assign(
        rate=steady.rate.isel(trial=slice(0, 2)).rename(trial="example_trial", time="example_time"),
        lfp=steady.lfp.isel(trial=slice(0, 2)).rename(trial="example_trial", time="example_time"),
    )
    ds.attrs["measure_area"] = a
    ds.attrs["high_band_hz"], ds.attrs["low_band_hz"] = list(hi), list(lo)
    ds["example_time"].attrs["long_name"] = "time from trial start (example trials)"
    ds["example_trial"].attrs.update(units="", long_name="example trial")
    return ExperimentResult(label(ds), summary)


def plot(ds: xr.Dataset) -> dict:
    """Spectra of superficial, granular and deep activity per area (log-log, the two bands of
    the ratio shaded and keyed), the LFP-proxy spectra per layer (with a note on why the
    proxy's asymmetry can be the reverse of the populations'), and 500 ms of raw activity."""
    from matplotlib.figure import Figure

    areas = [a for a in ds.area.values if a in ds.relative_high_power.area.values][1:]
    hi = tuple(ds.attrs.get("high_band_hz", (30.0, 80.0)))
    lo = tuple(ds.attrs.get("low_band_hz", (4.0, 20.0)))
    fig = Figure(figsize=(4.2 * len(areas) + 2.2, 7.2))
    axes = fig.subplots(2, len(areas), squeeze=False)
    cols = {"superficial": "C3", "granular": "C2", "deep": "C0"}
    names = {"superficial": "superficial L2/3 (errors)", "granular": "granular L4", "deep": "deep L5/6 (predictions)"}
    f = ds.frequency.values
    keep = f > 0

    def shade(ax):
        ax.axvspan(*lo, color="0.85", zorder=0, label=f"low band {lo[0]:g}-{lo[1]:g} Hz")
        ax.axvspan(*hi, color="#fde0c5", zorder=0, label=f"high band {hi[0]:g}-{hi[1]:g} Hz")

    for j, a in enumerate(areas):
        ax = axes[0, j]
        shade(ax)
        for s in ("superficial", "granular", "deep"):
            p = ds.activity_psd.sel(area=a, stream=s).values
            ax.loglog(f[keep], p[keep] / p[keep].sum(), color=cols[s], label=names[s])
        r = float(ds.relative_high_power.sel(area=a, stream="superficial") / ds.relative_high_power.sel(area=a, stream="deep"))
        ax.set(title=f"{a}: population activity\nratio (high/low) superficial / deep = {r:.2f}",
               xlabel="frequency (Hz)", ylabel="normalised power")
        ax = axes[1, j]
        shade(ax)
        for lay, col in (("L2/3", "C3"), ("L4", "C2"), ("L5/6", "C0")):
            p = ds.lfp_psd.sel(area=a, lfp_layer=lay).values
            if np.isfinite(p).all() and p[keep].sum() > 0:
                ax.loglog(f[keep], p[keep] / p[keep].sum(), color=col, label=f"LFP proxy {lay}")
        lr = float(ds.lfp_relative_high_power.sel(area=a, lfp_layer="L2/3") /
                   ds.lfp_relative_high_power.sel(area=a, lfp_layer="L5/6"))
        ax.set(title=f"{a}: LFP proxy\nratio (high/low) L2/3 / L5/6 = {lr:.2f}", xlabel="frequency (Hz)",
               ylabel="normalised power")
        if lr < 1 < r:
            ax.text(0.03, 0.03, "reversed vs. the top row: see the note below", transform=ax.transAxes, fontsize=8,
                    color="0.25")
    for row in (0, 1):
        axes[row, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.03, 1), borderaxespad=0)
    fig.text(0.5, 0.005,
             "LFP proxy: summed |synaptic input| to a layer's excitatory cells, not their activity. L2/3 cells "
             "receive the slow L5/6 predictions and L5/6 cells the fast L2/3 errors,\nso the proxy can show the "
             "opposite asymmetry to the populations' own activity (top row, the headline spectral_ratio).",
             ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    figs = {"spectra": fig}

    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    a = str(ds.attrs.get("measure_area", areas[0]))
    r = ds.rate.isel(example_trial=0).sel(area=a)
    t = ds.example_time.values * 1000.0  # s -> ms for display
    stretch = t < t[0] + 500
    sup = r.sel(population=["l23_pos", "l23_neg"]).sum(("population", "unit"))
    deep = r.sel(population="l56").sum("unit")
    ax.plot(t[stretch], (sup - sup.mean())[stretch], color="C3", lw=0.8, label="L2/3 errors")
    ax.plot(t[stretch], (deep - deep.mean())[stretch], color="C0", lw=0.8, label="L5/6 predictions")
    ax.set(xlabel="time from trial start (ms)", ylabel="activity - mean", title=f"{a}: 500 ms of activity")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    figs["activity"] = fig
    return figs
