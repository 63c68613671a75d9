"""Mismatch negativity: deviant minus standard responses of the prediction-error populations.

A tonotopic laminar circuit (:class:`~circuits.experiments.sections.CircuitSection`) hears
oddball sequences, one block per (deviant probability, deviance, seed), a many-standards
control block per seed (the deviant's tone as one of equiprobable tones) and an omission
block (a regular sequence with occasional missing tones). The only memory is the top-level
expectation, learned online by the local rule for a prior mean, so every effect below is
the circuit inferring under a learned prediction, not adaptation.

Measured on the summed L2/3 error activity of each area in a post-stimulus window: the MMN
(deviant minus the standard just before it), its growth with deviance and fall with deviant
probability, deviant minus many-standards control (genuine deviance detection beyond
stimulus-specific effects), and the omission response (error activity when an expected
tone does not come, against the same window before the sequence's first tone).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np
import xarray as xr

from pcsim.config import ExperimentConfig
from pcsim.registry import ExperimentResult, RunContext
from pcsim.errors import ConfigError

from ..measures import condition_contrast, log_slope, population_activity, window_mean
from ..paradigms import ManyStandards, Oddball, Omission, ToneSequence
from ..coordinates import label
from .sections import CircuitSection, engine_object


@dataclass(frozen=True, kw_only=True)
class OddballSection(Oddball):
    """The protocol: every field of :class:`~circuits.paradigms.Oddball` (tones of
    ``duration_ms`` every ``soa_ms``, ``width`` channels wide; ``standard`` channel, deviants
    ``deviances`` channels above it with probabilities ``p_deviants``; ``n_tones`` per block,
    one block per seed and condition), declared there once, on the circuit's tonotopic map
    (``circuit.n_channels``). Experiment settings: ``skip_tones``: the first tones, while
    the expectation forms, are not analysed; ``window``: post-onset window (ms) of the MMN
    measure; ``record_every_ms``; ``control``: add many-standards control blocks;
    ``omission``: add omission blocks with omission probability ``p_omission``;
    ``measure_area``: the area whose numbers head the summary."""

    n_channels: int = field(default=0, init=False, repr=False)  # the circuit's
    skip_tones: int = field(default=20, metadata={"ge": 0})
    window: tuple[float, ...] = field(default=(50.0, 250.0))
    record_every_ms: float = field(default=2.0, metadata={"gt": 0})
    control: bool = True
    omission: bool = True
    p_omission: float = field(default=0.1, metadata={"gt": 0, "le": 0.5})
    measure_area: str = "area1"

    def __post_init__(self):
        if len(self.window) != 2 or not self.window[0] < self.window[1]:
            raise ConfigError(f"window must be [start_ms, stop_ms] with start < stop, got {list(self.window)}")
        if self.soa_ms < self.duration_ms:
            raise ConfigError(f"soa_ms ({self.soa_ms}) must be >= duration_ms ({self.duration_ms})")
        if self.window[1] > self.soa_ms - 50:
            raise ConfigError(f"window must end at least 50 ms before the next tone (soa_ms - 50 = {self.soa_ms - 50})")
        if self.skip_tones >= self.n_tones:
            raise ConfigError(f"skip_tones ({self.skip_tones}) must be < n_tones ({self.n_tones})")


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``oddball_mmn`` experiment."""

    circuit: CircuitSection = field(default_factory=lambda: CircuitSection(tau_deep=10.0, prior_rate=0.01))
    oddball: OddballSection = field(default_factory=lambda: OddballSection(
        n_tones=150, standard=8.0, deviances=(2.0, 4.0, 8.0), p_deviants=(0.05, 0.1, 0.25), duration_ms=100.0,
        soa_ms=500.0))

    def __post_init__(self):
        c, o = self.circuit, self.oddball
        c.check_area(o.measure_area, "oddball.measure_area")
        c.check_record_every(o.record_every_ms, "oddball.record_every_ms")
        c.check_oddball(o.standard, o.deviances, "oddball")


def build_stimulus(c: CircuitSection, o: OddballSection):
    """The oddball blocks followed by the control and omission blocks (a :class:`Stimulus`)."""
    oddball = engine_object(o, Oddball, n_channels=c.n_channels)
    # the control and omission blocks share the oddball's tones, timing and seeds
    common = {f.name: getattr(oddball, f.name) for f in fields(ToneSequence)} | {"n_tones": o.n_tones}
    stim = oddball.build()
    if o.control:
        # equiprobable tones `spacing` apart, the deviant's tone among them, as many as the
        # median deviant probability implies (1/p), fewer if the map is too small
        target = o.standard + sorted(o.deviances)[len(o.deviances) // 2]
        spacing = max(2.0, min(o.deviances))
        below, above = int(np.floor(target / spacing)), int(np.floor((c.n_channels - 1 - target) / spacing))
        n_types = max(2, min(int(round(1 / np.median(o.p_deviants))), below + above + 1))
        lowest = target - spacing * min(below, n_types - 1)
        stim = stim.concat(ManyStandards(target=target, lowest=lowest, spacing=spacing, n_tone_types=n_types,
                                         **common).build())
    if o.omission:
        stim = stim.concat(Omission(frequency=o.standard, p_omission=o.p_omission, lead_standards=o.lead_standards, **common).build())
    return stim


def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """Simulate every block in one batched run, cut epochs and measure MMN, control and omission."""
    c, o = config.circuit, config.oddball
    circ = c.build(ctx.device)
    stim = build_stimulus(c, o)
    kind = stim.labels["kind"]
    nxt = np.concatenate([kind[:, 1:], np.full((stim.blocks, 1), "", dtype=object)], axis=1)
    interesting = np.isin(kind, ["deviant", "control", "omission"]) | (
        (kind == "standard") & np.isin(nxt, ["deviant", "omission"]))
    keep = interesting & (np.arange(stim.slots)[None, :] >= o.skip_tones)
    keep[:, 0] = True  # the first tone of every block: the naive response and the omission baseline
    ds = circ.run(stim, record_every_ms=o.record_every_ms, epochs=(50.0, min(o.soa_ms - 50.0, o.window[1] + 150.0)), keep=keep,
                  seed=config.seed, progress=ctx.progress)
    ds["kind"] = ds["kind"].astype(str)
    ds["paradigm"] = ds["paradigm"].astype(str)
    err = population_activity(ds)
    ds["error_activity"] = err.assign_attrs(units="rate units", long_name="summed L2/3 error activity")
    resp = window_mean(err, tuple(o.window))
    ds["error_response"] = resp.assign_attrs(units="rate units", long_name=f"mean error activity {o.window[0]:g}-{o.window[1]:g} ms")
    late = ds.slot >= o.skip_tones
    odd = late & (ds.paradigm == "oddball")
    mmn = condition_contrast(resp, "kind", "deviant", "standard", by=("p_deviant", "deviance"), where=odd)
    # condition axes get their own names: p_deviant and deviance are already trial coordinates
    mmn = mmn.rename(p_deviant="deviant_probability", deviance="deviance_channels")
    ds["mmn"] = mmn["difference"].assign_attrs(units="rate units", long_name="deviant minus standard error response")
    ds["mmn_deviant"] = mmn["deviant"].assign_attrs(units="rate units", long_name="mean error response to deviants")
    ds["mmn_standard"] = mmn["standard"].assign_attrs(units="rate units",
                                                      long_name="mean error response to the standard before a deviant")
    area = o.measure_area
    m = mmn["difference"].sel(area=area).rename(deviant_probability="p_deviant", deviance_channels="deviance")
    summary: dict = {
        "measure_area": area, "window_ms": list(o.window),
        "mmn": {f"p={p:g}": {f"deviance={d:g}": float(m.sel(p_deviant=p, deviance=d)) for d in m.deviance.values}
                for p in m.p_deviant.values},
    }
    devs, ps = m.deviance.values, m.p_deviant.values
    summary["mmn_amplitude"] = float(m.max())
    summary["mmn_all_positive"] = bool((m > 0).all())
    summary["mmn_slope_per_deviance"] = {f"p={p:g}": float(np.polyfit(devs, m.sel(p_deviant=p).values, 1)[0]) if len(devs) > 1 else None
                                         for p in ps}
    summary["mmn_slope_per_log_p"] = {f"deviance={d:g}": log_slope(ps, m.sel(deviance=d).values) if len(ps) > 1 else None
                                      for d in devs}
    summary["grows_with_deviance"] = bool(len(devs) > 1 and (np.diff(m.transpose("p_deviant", "deviance").values, axis=1) > 0).all())
    summary["shrinks_with_probability"] = bool(len(ps) > 1 and (np.diff(m.transpose("deviance", "p_deviant").values, axis=1) < 0).all())
    if o.control:
        ctl = resp.sel(area=area).where(late & (ds.kind == "control"), drop=True).mean().item()
        d_mid = sorted(o.deviances)[len(o.deviances) // 2]
        dev = mmn["deviant"].sel(area=area, deviance_channels=d_mid).rename(deviant_probability="p_deviant")
        summary["control_response"] = ctl
        summary["deviant_minus_control"] = {f"p={p:g}": float(dev.sel(p_deviant=p)) - ctl for p in dev.p_deviant.values}
    if o.omission:
        om = late & (ds.kind == "omission")
        first = (ds.slot == 0) & (ds.paradigm == "omission")
        neg = ds.rate.sel(population="l23_neg").sum("unit")
        base = window_mean(neg.where(first, drop=True), tuple(o.window)).sel(area=area).mean().item()
        summary["omission_response"] = window_mean(neg.where(om, drop=True), tuple(o.window)).sel(area=area).mean().item() - base
        summary["omission_response_units"] = "negative-error (l23_neg) activity minus the pre-sequence baseline"
    ds.attrs["measure_area"] = area
    ds.attrs["window_ms"] = list(o.window)
    return ExperimentResult(label(ds), summary)


def plot(ds: xr.Dataset) -> dict:
    """ERPs of the error populations (deviant, standard, control, omission), MMN difference
    waves per area, and MMN amplitude against deviance for each deviant probability."""
    from matplotlib.figure import Figure

    area = str(ds.attrs.get("measure_area", ds.area.values[1]))
    err = ds.error_activity
    late = ds.slot >= 1
    figs = {}
    mmn = ds.mmn.rename(deviant_probability="p_deviant", deviance_channels="deviance")
    ps, devs = mmn.p_deviant.values, mmn.deviance.values
    p0, d0 = ps[len(ps) // 2], devs[len(devs) // 2]
    cond = late & (ds.paradigm == "oddball") & (ds.p_deviant == p0) & (ds.deviance == d0)
    areas = [a for a in ds.area.values]
    fig = Figure(figsize=(3.6 * len(areas), 3.2))
    axes = fig.subplots(1, len(areas), sharey=True, squeeze=False)
    for ax, a in zip(axes[0], areas):
        for kind, col in (("standard", "C0"), ("deviant", "C3")):
            sel = err.sel(area=a).where(cond & (ds.kind == kind), drop=True)
            if sel.sizes["trial"]:
                ax.plot(ds.time * 1000, sel.mean("trial"), color=col, label=f"{kind} (n={sel.sizes['trial']})")
        for kind, col in (("control", "C2"), ("omission", "C7")):
            sel = err.sel(area=a).where(late & (ds.kind == kind), drop=True)
            if sel.sizes["trial"]:
                ax.plot(ds.time * 1000, sel.mean("trial"), color=col, ls="--", label=kind)
        ax.axvspan(0, float(ds.attrs.get("stimulus_duration_ms", 0)), color="0.9", zorder=0, label="tone on")
        ax.set(title=f"{a}: error populations", xlabel="time from onset (ms)")
    axes[0, 0].set_ylabel("summed L2/3 error activity")
    axes[0, -1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.suptitle(f"oddball, p(deviant) = {p0:g}, deviance = {d0:g} channels", fontsize=9)
    fig.tight_layout()
    figs["erp"] = fig

    fig = Figure(figsize=(10, 3.2))
    ax = fig.subplots(1, 2)
    for p in ps:
        ax[0].plot(devs, mmn.sel(area=area, p_deviant=p), "o-", label=f"p = {p:g}")
    ax[0].axhline(0, color="k", lw=0.5)
    ax[0].set(xlabel="deviance (channels)", ylabel="MMN (deviant - standard)", title=f"{area}: MMN grows with deviance")
    ax[0].legend(fontsize=7, title="p(deviant)", title_fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    for d in devs:
        ax[1].plot(ps, mmn.sel(area=area, deviance=d), "o-", label=f"deviance {d:g}")
    ax[1].set(xscale="log", xlabel="deviant probability", ylabel="MMN", title="... and shrinks with probability")
    ax[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    figs["mmn"] = fig
    return figs
