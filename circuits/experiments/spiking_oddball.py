"""The oddball circuit as a Brian2 spiking network, checked against the rate circuit it translates.

A small tonotopic laminar circuit (:class:`~circuits.experiments.sections.CircuitSection`)
hears oddball sequences, one block per seed; the same blocks run through the rate circuit
and through its spiking translation (:class:`~circuits.spiking.SpikingCircuit`: every rate
unit a group of LIF neurons, signed weights split into excitatory and inhibitory synapses,
the learned prior integrated from spikes). Two claims are measured:

- **Fidelity.** For every population, the Pearson correlation over a block (all times and
  units) between the spiking population activity and the rate circuit's activity, both
  smoothed with the same Gaussian (``spiking.smooth_ms``). It is validated against
  ``analysis.min_correlation`` on the populations whose rate-circuit activity varies by at
  least ``analysis.min_sd`` rate units: a population that barely moves (in the oddball circuit,
  the L2/3 negative errors of area 1 vary by ~0.01) sits below the resolution of ``N``
  neurons' spike counts and its correlation measures spike noise, not the translation.
- **Mismatch negativity.** Summed L2/3 error activity in a post-onset window, deviants minus
  standards (after the first ``analysis.skip_tones`` tones, while the prior learns), per area,
  for the spiking and the rate circuit.

The spiking config uses ``tau_deep = 20`` ms (the rate oddball experiment uses 10): with
``tau_deep = 10`` the rate circuit has a lightly damped ~30 Hz mode (damping ratio ~0.25)
that any extra delay (a LIF population's response lag, ~1 ms) turns into an oscillation;
at 20 ms the same circuit keeps its MMN and tolerates a few ms of lag. The rate reference
always uses the very same circuit, so the comparison is like for like.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal

import numpy as np
import xarray as xr

from pcsim.config import ExperimentConfig
from pcsim.registry import ExperimentResult, RunContext
from pcsim.errors import ConfigError, DataError

from ..coordinates import label
from ..measures import population_activity, window_mean
from ..epochs import cut_epochs
from ..paradigms import Oddball
from ..spiking import SpikingCircuit, SpikingParams
from .sections import CircuitSection, engine_object


@dataclass(frozen=True, kw_only=True)
class StimulusSection(Oddball):
    """Oddball blocks (one per seed): every field of :class:`~circuits.paradigms.Oddball`
    (tones ``width`` channels wide, peak ``amplitude``, of ``duration_ms`` every ``soa_ms``,
    the first at ``lead_ms``; tone ``standard``, deviants ``deviances`` channels above it with
    probability ``p_deviants``, never in the first ``lead_standards`` slots; ``n_tones`` per
    block), declared there once, on the circuit's tonotopic map (``circuit.n_channels``).
    This experiment compares one condition: one deviance and one deviant probability."""

    n_channels: int = field(default=0, init=False, repr=False)  # the circuit's

    def __post_init__(self):
        if self.soa_ms < self.duration_ms:
            raise ConfigError(f"soa_ms ({self.soa_ms}) must be >= duration_ms ({self.duration_ms})")
        if len(self.deviances) != 1 or len(self.p_deviants) != 1:
            raise ConfigError("deviances and p_deviants take one value each here (one oddball condition), got "
                             f"{list(self.deviances)} and {list(self.p_deviants)}")

    @property
    def deviant(self) -> float:
        """The deviant's channel."""
        return self.standard + self.deviances[0]


@dataclass(frozen=True, kw_only=True)
class SpikingSection(SpikingParams):
    """The translation and how it runs: every field of :class:`~circuits.spiking.SpikingParams`
    (``neurons_per_unit``, ``dt_ms``, ``update_ms``, ``tau_m_ms``, ``refractory_ms``, membrane
    ``noise``, ``floor_hz``, ``gain_hz``, ``lag_ms``, and ``smooth_ms``, the Gaussian applied
    to both circuits' rates before they are compared), declared there once, plus the Brian2
    ``target`` ('cython': compiled once, ~30 s, then cached; 'numpy': no compiler, ~2x
    slower on this network; 'cpp_standalone': a C++ build per run) and ``spike_neurons``:
    neurons per unit whose spike times are saved."""

    target: Literal["numpy", "cython", "cpp_standalone"] = "cython"
    spike_neurons: int = field(default=4, metadata={"ge": 0})

    def params(self) -> SpikingParams:
        """The :class:`SpikingParams` fields of this section."""
        return SpikingParams(**{f.name: getattr(self, f.name) for f in fields(SpikingParams)})


@dataclass(frozen=True, kw_only=True)
class AnalysisSection:
    """``record_every_ms``: sampling of the saved rates (the saved ``rate`` holds both
    circuits, smoothed by ``spiking.smooth_ms``; group firing rates in Hz are left out to keep
    the file small, the saved spike times and ``SpikingCircuit.run`` give them); ``min_sd``: rate
    circuit activity standard deviation (rate units) a population needs to be validated;
    ``min_correlation``: the fidelity claim; ``window``: post-onset window (ms) of the MMN;
    ``skip_tones``: first tones left out of the MMN (the prior is still learning)."""

    record_every_ms: float = field(default=2.0, metadata={"gt": 0})
    min_sd: float = field(default=0.02, metadata={"ge": 0})
    min_correlation: float = field(default=0.9, metadata={"ge": -1, "le": 1})
    window: tuple[float, ...] = field(default=(50.0, 250.0))
    skip_tones: int = field(default=15, metadata={"ge": 0})

    def __post_init__(self):
        if len(self.window) != 2 or not 0 <= self.window[0] < self.window[1]:
            raise ConfigError(f"window must be [start_ms, stop_ms] with 0 <= start < stop, got {list(self.window)}")


def _default_circuit() -> CircuitSection:
    return CircuitSection(n_channels=8, areas=3, precisions=(1.0, 1.0, 1.0), dt=0.5, tau_deep=20.0, deep_leak=0.05,
                          prior_rate=0.01)


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    """The ``spiking_oddball`` experiment."""

    circuit: CircuitSection = field(default_factory=_default_circuit)
    stimulus: StimulusSection = field(default_factory=lambda: StimulusSection(
        standard=2.0, deviances=(4.0,), p_deviants=(0.2,), n_tones=40, duration_ms=100.0, soa_ms=300.0, seeds=(0, 1, 2)))
    spiking: SpikingSection = field(default_factory=lambda: SpikingSection(smooth_ms=10.0))
    analysis: AnalysisSection = field(default_factory=AnalysisSection)

    def __post_init__(self):
        c, s, a, sp = self.circuit, self.stimulus, self.analysis, self.spiking
        c.check_record_every(a.record_every_ms, "analysis.record_every_ms")
        fastest = min(c.tau_l4, c.tau_error, c.tau_inh if c.interneurons else c.tau_error)
        if sp.lag_ms > fastest / 2:
            raise ConfigError(f"key 'spiking.lag_ms': {sp.lag_ms} ms must be at most half the fastest circuit time "
                             f"constant ({fastest} ms)")
        if c.noise > 0:
            raise ConfigError("table 'circuit': noise must be 0 (the spiking network has its own noise; a noisy rate "
                             "reference would not be comparable)")
        c.check_oddball(s.standard, s.deviances, "stimulus")
        if a.window[1] > s.soa_ms:
            raise ConfigError(f"table 'analysis': window must end before the next tone ({s.soa_ms} ms)")
        if a.skip_tones >= s.n_tones:
            raise ConfigError(f"table 'analysis': skip_tones ({a.skip_tones}) must be < stimulus.n_tones ({s.n_tones})")


def build_stimulus(s: StimulusSection, n_channels: int):
    """The oddball :class:`~circuits.paradigms.Stimulus` of ``s`` on ``n_channels`` channels."""
    return engine_object(s, Oddball, n_channels=n_channels).build()


def fidelity(spiking: xr.DataArray, reference: xr.DataArray, min_sd: float) -> xr.Dataset:
    """Per (area, population): Pearson correlation between two activity arrays (trial, time,
    area, population, unit), computed over time and units within each trial and averaged over
    trials (``correlation``), the reference's standard deviation (``reference_sd``, rate
    units) and whether it reaches ``min_sd`` (``validated``). Populations absent from the
    circuit (all NaN) get NaN and ``validated = False``."""
    x = spiking.transpose("trial", "time", "area", "population", "unit").values
    y = reference.transpose("trial", "time", "area", "population", "unit").values
    if x.shape != y.shape:
        raise DataError(f"spiking {x.shape} and reference {y.shape} activities differ in shape")
    A, P = x.shape[2], x.shape[3]
    corr, sd = np.full((A, P), np.nan), np.full((A, P), np.nan)
    for a in range(A):
        for q in range(P):
            xs, ys = x[:, :, a, q], y[:, :, a, q]
            ok = ~np.isnan(ys[0, 0])
            if not ok.any():
                continue
            xs, ys = xs[..., ok], ys[..., ok]
            sd[a, q] = float(ys.std())
            rs = [np.corrcoef(xs[b].ravel(), ys[b].ravel())[0, 1] for b in range(xs.shape[0]) if ys[b].std() > 0]
            corr[a, q] = float(np.mean(rs)) if rs else np.nan
    coords = {"area": spiking.area.values, "population": spiking.population.values}
    return xr.Dataset({
        "correlation": (("area", "population"), corr,
                        {"units": "1", "long_name": "spiking vs rate activity, Pearson r over a block"}),
        "reference_sd": (("area", "population"), sd,
                         {"units": "rate units", "long_name": "standard deviation of the rate circuit's activity"}),
        "validated": (("area", "population"), np.isfinite(sd) & (np.nan_to_num(sd) >= min_sd),
                      {"units": "", "long_name": f"population varies enough to validate (reference sd >= {min_sd:g})"}),
    }, coords=coords)


def run(config: Config, ctx: RunContext) -> ExperimentResult:
    """Run the oddball blocks through the rate circuit and the spiking network; compare them
    (correlation per population) and measure both MMNs."""
    from scipy.ndimage import gaussian_filter1d
    from tqdm.auto import tqdm

    c, s, sp, an = config.circuit, config.stimulus, config.spiking, config.analysis
    circ = c.build("cpu")
    stim = build_stimulus(s, c.n_channels)
    steps = tqdm(total=3, desc="spiking_oddball", disable=not ctx.progress, leave=False)
    steps.set_postfix_str("rate circuit")
    ref = circ.run(stim, record_every_ms=an.record_every_ms, seed=config.seed, progress=ctx.progress)
    steps.update()
    steps.set_postfix_str(f"spiking circuit ({sp.target})")
    spk_circ = SpikingCircuit(circ, sp.params())
    spk = spk_circ.run(stim, target=sp.target, seed=config.seed, record_every_ms=an.record_every_ms,
                       count_bin_ms=None, spike_neurons=sp.spike_neurons, progress=ctx.progress)
    steps.update()
    steps.set_postfix_str("analysis")
    sigma = sp.smooth_ms / an.record_every_ms
    T = spk.sizes["time"]
    ref = ref.isel(time=slice(0, T))
    if ref.sizes["time"] != T or not np.allclose(ref.time.values, spk.time.values):
        raise ConfigError("rate and spiking recordings are not on the same time grid: choose analysis.record_every_ms "
                         "dividing the block length")
    ref_rate = ref.rate.copy(data=gaussian_filter1d(ref.rate.values, sigma, axis=1, mode="nearest"))
    fid = fidelity(spk.rate, ref_rate, an.min_sd)

    model = xr.DataArray(["rate", "spiking"], dims="model", name="model")
    bare = lambda da: da.drop_vars([k for k in da.coords if k not in da.dims])  # noqa: E731
    rate = xr.concat([bare(ref_rate), bare(spk.rate)], dim=model)

    # epochs after the first skip_tones tones: summed L2/3 error activity, mean in the window
    keep = np.zeros((stim.blocks, stim.slots), bool)
    keep[:, an.skip_tones:] = True
    pre, post = 50.0, float(min(s.soa_ms, an.window[1] + 50.0))
    err = xr.concat([population_activity(cut_epochs(d, stim, pre, post, keep=keep))
                     for d in (ref.assign(rate=ref_rate), spk)], dim=model)
    resp = window_mean(err, tuple(an.window))
    kind = np.asarray(err.kind.values).astype(str)
    dev, std = np.flatnonzero(kind == "deviant"), np.flatnonzero(kind == "standard")
    if dev.size == 0 or std.size == 0:
        raise ConfigError(f"no deviant or no standard after analysis.skip_tones = {an.skip_tones}: lengthen "
                         "stimulus.n_tones or raise stimulus.p_deviants")
    erp = xr.concat([err.isel(trial=std).mean("trial"), err.isel(trial=dev).mean("trial")],
                    dim=xr.DataArray(["standard", "deviant"], dims="kind", name="kind")).rename(time="epoch_time")
    erp = bare(erp).assign_coords(epoch_time=("epoch_time", err.time.values,
                                              {"units": "s", "long_name": "time from onset"}))
    r_std, r_dev = bare(resp.isel(trial=std).mean("trial")), bare(resp.isel(trial=dev).mean("trial"))
    mmn = r_dev - r_std

    ds = xr.Dataset({
        "rate": rate.astype(np.float32).assign_attrs(
            units="rate units", long_name=f"population activity, Gaussian-smoothed ({sp.smooth_ms:g} ms)"),
        "stimulus": bare(spk.stimulus).astype(np.float32).assign_attrs(spk.stimulus.attrs),
        "cue": bare(spk.cue).astype(np.float32).assign_attrs(spk.cue.attrs),
        "correlation": fid.correlation, "reference_sd": fid.reference_sd, "validated": fid.validated,
        "erp": erp.assign_attrs(units="rate units", long_name="summed L2/3 error activity, mean over epochs"),
        "error_response_standard": r_std.assign_attrs(units="rate units", long_name="mean over standards"),
        "error_response_deviant": r_dev.assign_attrs(units="rate units", long_name="mean over deviants"),
        "mmn": mmn.assign_attrs(units="rate units", long_name="deviant minus standard error response"),
    })
    for name in ("spike_time", "spike_trial", "spike_group", "spike_neuron"):
        if name in spk:
            ds[name] = spk[name]
    extra = {k: v.variable for k, v in spk.coords.items()
             if k not in ds.coords and (set(v.dims) <= {"trial", "group", "population", "time", "polarity"})}
    ds = ds.assign_coords(extra)
    for k in list(ds.coords):
        if ds[k].dtype == object:
            ds = ds.assign_coords({k: ds[k].astype(str)})
    ds.attrs.update({k: v for k, v in spk.attrs.items() if isinstance(v, (int, float, str))})
    ds.attrs.update(smooth_ms=sp.smooth_ms, min_sd=an.min_sd, min_correlation=an.min_correlation,
                    window_ms=list(an.window), skip_tones=an.skip_tones, stimulus_duration_ms=s.duration_ms,
                    soa_ms=s.soa_ms, standard_channel=s.standard, deviant_channel=s.deviant,
                    n_deviants=int(dev.size), n_standards=int(std.size))
    steps.update()
    steps.close()

    corr, val = fid.correlation, fid.validated.values
    ia, iq = np.nonzero(val)
    validated = [f"{a}.{q}" for a, q in zip(corr.area.values[ia], corr.population.values[iq])]
    worst = float(np.nanmin(np.where(val, corr.values, np.nan))) if val.any() else float("nan")
    cortical = [a for a in mmn.area.values if a != mmn.area.values[0]]
    summary = {
        "target": sp.target,
        "n_neurons": int(spk.attrs["n_neurons"]),
        "spiking_wall_seconds": float(spk.attrs["wall_seconds"]),
        "simulated_seconds": float(stim.total_ms / 1000.0 * stim.blocks),
        "correlation": {str(a): {str(q): float(corr.sel(area=a, population=q)) for q in corr.population.values
                                 if np.isfinite(float(corr.sel(area=a, population=q)))} for a in corr.area.values},
        "validated_populations": validated,
        "min_validated_correlation": worst,
        "fidelity_holds": bool(val.any() and worst >= an.min_correlation),
        "mmn_spiking": {str(a): float(mmn.sel(model="spiking", area=a)) for a in mmn.area.values},
        "mmn_rate": {str(a): float(mmn.sel(model="rate", area=a)) for a in mmn.area.values},
        "deviant_standard_spiking": {str(a): [float(r_dev.sel(model="spiking", area=a)),
                                              float(r_std.sel(model="spiking", area=a))] for a in mmn.area.values},
        "deviant_standard_rate": {str(a): [float(r_dev.sel(model="rate", area=a)),
                                           float(r_std.sel(model="rate", area=a))] for a in mmn.area.values},
        "n_deviants": int(dev.size),
        "n_standards": int(std.size),
        "spiking_mmn_positive": bool((mmn.sel(model="spiking", area=cortical) > 0).all()),
    }
    return ExperimentResult(label(ds), summary)


def plot(ds: xr.Dataset) -> dict:
    """Rate vs spiking traces around a deviant, correlation per population, error ERPs of both
    circuits (standard vs deviant), and a spike raster."""
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    figs = {}
    # --- traces: block 0, the standard's channel, around the first deviant after the skipped tones
    soa = float(ds.attrs.get("soa_ms", 300.0))
    t = ds.time.values * 1000.0  # s -> ms, the unit of the protocol and of the axes
    stim = ds.stimulus.isel(trial=0)
    std_ch = int(round(float(ds.attrs.get("standard_channel", 0))))
    dev_ch = int(round(float(ds.attrs.get("deviant_channel", std_ch))))
    dev_ch = min(dev_ch, ds.sizes["input_unit"] - 1)
    on_dev = np.flatnonzero((stim.isel(input_unit=dev_ch).values > stim.isel(input_unit=std_ch).values) &
                            (t > soa * int(ds.attrs.get("skip_tones", 0))))
    centre = float(t[on_dev[0]]) if on_dev.size else float(t[len(t) // 2])
    lo, hi = centre - 2.5 * soa, centre + 1.5 * soa
    sel = (t >= lo) & (t <= hi)
    panels = [(a, q) for a in ds.area.values for q in ds.population.values
              if bool(np.isfinite(ds.correlation.sel(area=a, population=q)))]
    ncol = 4
    nrow = int(np.ceil(len(panels) / ncol))
    fig = Figure(figsize=(3.4 * ncol, 2.2 * nrow))
    axes = fig.subplots(nrow, ncol, sharex=True, squeeze=False)
    for ax, (a, q) in zip(axes.ravel(), panels):
        for model, col, lw in (("rate", "k", 1.4), ("spiking", "C3", 0.9)):
            y = ds.rate.sel(model=model, area=a, population=q).isel(trial=0, unit=std_ch).values[sel]
            ax.plot(t[sel], y, color=col, lw=lw, label=model)
        r = float(ds.correlation.sel(area=a, population=q))
        ax.set_title(f"{a} {q}: r = {r:.2f}", fontsize=10)
        ax.tick_params(labelsize=9)
    for k, ax in enumerate(axes.ravel()[len(panels):], start=len(panels)):
        ax.axis("off")
        if k >= ncol:  # the panel above an empty one is the last of its column: give it the time axis
            above = axes.ravel()[k - ncol]
            above.tick_params(labelbottom=True)
            above.set_xlabel("time from block start (ms)", fontsize=9)
    axes[0, -1].legend(fontsize=9, loc="lower left", bbox_to_anchor=(0, 1.15), ncol=2, borderaxespad=0)
    for ax in axes[-1]:
        ax.set_xlabel("time from block start (ms)", fontsize=9)
    fig.suptitle(f"unit {std_ch} (standard channel), block 0: rate circuit vs spiking population activity", fontsize=10)
    fig.tight_layout()
    figs["traces"] = fig

    # --- correlation per population
    fig = Figure(figsize=(max(6, 0.6 * len(panels) + 1.5), 4.6))
    ax = fig.subplots()
    names = [f"{a} {q}" for a, q in panels]
    vals = [float(ds.correlation.sel(area=a, population=q)) for a, q in panels]
    cols = ["C0" if bool(ds.validated.sel(area=a, population=q)) else "0.7" for a, q in panels]
    ax.bar(range(len(panels)), vals, color=cols)
    ax.axhline(float(ds.attrs.get("min_correlation", 0.9)), color="k", ls="--", lw=0.8)
    ax.set_xticks(range(len(panels)), names, fontsize=9, rotation=90)
    ax.tick_params(axis="y", labelsize=9)
    ax.set(ylabel="Pearson r (spiking vs rate)", ylim=(min(0.0, min(vals) - 0.05), 1.0),
           title=f"fidelity per population (grey: reference sd < {float(ds.attrs.get('min_sd', 0)):g})")
    fig.tight_layout()
    figs["correlation"] = fig

    # --- ERPs
    areas = list(ds.area.values)
    fig = Figure(figsize=(3.4 * len(areas), 5.0))
    axes = fig.subplots(2, len(areas), sharex=True, squeeze=False)
    for i, model in enumerate(("rate", "spiking")):
        for j, a in enumerate(areas):
            ax = axes[i, j]
            for kind, col in (("standard", "C0"), ("deviant", "C3")):
                ax.plot(ds.epoch_time * 1000.0, ds.erp.sel(model=model, area=a, kind=kind), color=col, label=kind)
            ax.axvspan(0, float(ds.attrs.get("stimulus_duration_ms", 0)), color="0.9", zorder=0, label="tone on")
            w = ds.attrs.get("window_ms", [50, 250])
            ax.axvspan(w[0], w[1], color="C1", alpha=0.08, zorder=0, label="MMN window")
            ax.set_title(f"{model}: {a}, MMN = {float(ds.mmn.sel(model=model, area=a)):+.3f}", fontsize=8)
        axes[i, 0].set_ylabel("summed L2/3 error activity")
    for ax in axes[-1]:
        ax.set_xlabel("time from onset (ms)")
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    fig.tight_layout()
    figs["mmn"] = fig

    # --- raster of the saved spikes, block 0, around the same deviant
    if "spike_time" in ds and ds.sizes.get("spike", 0):
        fig = Figure(figsize=(9, max(5.0, 0.17 * ds.sizes["group"] + 1.5)))  # >= 12 px per group row at dpi 120
        ax = fig.subplots()
        keep = ds.spike_trial.values == 0
        ts = ds.spike_time.values[keep] * 1000.0
        g = ds.spike_group.values[keep]
        nrn = ds.spike_neuron.values[keep]
        win = (ts >= lo) & (ts <= hi)
        per_unit = int(ds.attrs.get("spike_neurons_per_unit", 1))
        N = int(ds.attrs.get("neurons_per_unit", 1))
        units = ds.group_units.values
        offsets = np.concatenate([[0], np.cumsum(units * per_unit)])
        row = offsets[g] + (nrn // N) * per_unit + (nrn % N)
        cmap = colormaps.get_cmap("tab20")
        ax.scatter(ts[win], row[win], s=0.6, c=[cmap(int(x) % 20) for x in g[win]], marker="|")
        ax.set_yticks((offsets[:-1] + offsets[1:]) / 2, ds.group.values, fontsize=8)
        ax.tick_params(axis="x", labelsize=9)
        ax.set(xlabel="time from block start (ms)", xlim=(lo, hi), ylim=(offsets[-1], 0),
               title=f"spikes of {per_unit} neurons per unit, block 0")
        fig.tight_layout()
        figs["raster"] = fig
    return figs
