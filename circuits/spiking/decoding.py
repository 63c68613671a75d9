"""Decoding a spiking run: spikes to population rates in rate units, the prior rebuilt from
the spikes it integrates, spike counts and spike times, as an xarray Dataset."""

from __future__ import annotations

import math

import numpy as np
import xarray as xr

from pcsim.errors import ConfigError

from ..coordinates import label, seconds
from ..laminar import LAYER_OF
from ..paradigms import Stimulus

__all__ = ["decode", "prior_trace", "SPIKE_COUNT_DTYPE"]

SPIKE_COUNT_DTYPE = np.int16  # spikes per neuron and bin: small files (-1 marks padding neurons)


def decode(spk, stimulus: Stimulus, sim: dict, every: float, smooth_ms: float, count_bin_ms,
             spike_neurons) -> xr.Dataset:
    """The labelled result of one Brian2 run (``sim`` from :func:`~circuits.spiking.runner.simulate`:
    spike ``trial``, ``neuron``, ``t`` in s) of the translated circuit ``spk`` on ``stimulus``:
    ``rate`` (trial, time, area, population, unit; rate units) decoded from the firing rates of
    each push-pull group in bins of ``every`` ms, Gaussian-smoothed by ``smooth_ms``;
    ``firing_rate`` (Hz); the prior rebuilt from its spikes; with ``count_bin_ms`` the
    ``spike_count`` (trial, count_time, group, neuron) in :data:`SPIKE_COUNT_DTYPE` (a
    :class:`~pcsim.errors.ConfigError` naming ``count_bin_ms`` if a bin holds more); with
    ``spike_neurons`` the spike times (s) of that many neurons per unit. Every time in s."""
    from scipy.ndimage import gaussian_filter1d

    trial, nrn, ts = sim["trial"], sim["neuron"], sim["t"]
    L, N, c, gp = spk.layout, spk.layout.N, spk.code, spk.graph.populations
    B, U = stimulus.blocks, L.units_per_trial
    total_ms = float(stimulus.total_ms)
    T = int(math.floor(total_ms / every + 1e-9))
    t_ms = ts * 1000.0
    tb = np.floor(t_ms / every + 1e-9).astype(np.int64)
    ok = tb < T
    unit_global = trial * U + nrn // N
    counts = np.bincount((unit_global[ok] * T + tb[ok]), minlength=B * U * T).reshape(B, U, T).astype(np.float64)
    hz = counts / (N * every * 1e-3)
    if smooth_ms > 0:
        hz = gaussian_filter1d(hz, smooth_ms / every, axis=-1, mode="nearest")
    areas, pops = spk.area_names, spk.population_names
    Umax = max(p.size for p in gp)
    A, P = len(areas), len(pops)
    rate = np.full((B, T, A, P, Umax), np.nan)
    fr = np.full((B, T, A, P, 2, Umax), np.nan)
    for g in L.groups:
        pp = gp[g.population]
        a, q = areas.index(pp.area), pops.index(pp.population)
        r = hz[:, g.unit_offset:g.unit_offset + g.size, :].transpose(0, 2, 1)  # (B, T, n)
        fr[:, :, a, q, 0 if g.polarity > 0 else 1, :g.size] = r
        dec = g.polarity * (r - c.floor_hz) / c.gain_hz
        cur = rate[:, :, a, q, :g.size]
        rate[:, :, a, q, :g.size] = np.where(np.isnan(cur), dec, cur + dec)
    time = np.arange(T) * every
    x, cue = stimulus.render(time)
    # the prior m(t) is not recorded by the network; rebuild c(t) m(t) from the top error spikes
    m_t = prior_trace(spk, stimulus, sim, time)
    coords = {
        "time": ("time", seconds(time), {"units": "s", "long_name": "time from block start (bin start)"}),
        "area": ("area", areas),
        "population": ("population", pops),
        "layer": ("population", [LAYER_OF.get(q, "") for q in pops]),
        "polarity": ("polarity", ["on", "off"]),
        "unit": ("unit", np.arange(Umax)),
        "block": ("trial", np.arange(B)),
    }
    for name, v in stimulus.conditions.items():
        coords[name] = ("trial", np.asarray(v))
    data = {
        "rate": (("trial", "time", "area", "population", "unit"), rate,
                 {"units": "rate units", "long_name": "population activity decoded from spikes"}),
        "firing_rate": (("trial", "time", "area", "population", "polarity", "unit"), fr,
                        {"units": "Hz", "long_name": "population firing rate per neuron group"}),
        "prior": (("trial", "time", "top_unit"), cue[:, :, None] * m_t,
                  {"units": "rate units", "long_name": "top-level prior (cue-gated)"}),
        "prior_mean": (("trial", "time", "top_unit"), m_t,
                       {"units": "rate units", "long_name": "top-level prior mean m (spikes before each time)"}),
        "cue": (("trial", "time"), cue, {"units": "1", "long_name": "temporal expectation cue"}),
        "stimulus": (("trial", "time", "input_unit"), x, {"units": "rate units", "long_name": "input drive"}),
    }
    data["final_prior"] = (("trial", "top_unit"), sim["final_prior"],
                           {"units": "rate units", "long_name": "top-level prior mean m at the end of the run (Brian2)"})
    ds = xr.Dataset(data, coords=coords)
    grp = spk.groups()
    Gn = len(L.groups)
    nmax = Umax * N
    neuron_unit = np.arange(nmax) // N
    if count_bin_ms is not None:
        Tc = int(math.floor(total_ms / count_bin_ms + 1e-9))
        cb = np.floor(t_ms / count_bin_ms + 1e-9).astype(np.int64)
        gidx, within = spk._group_of(nrn)
        okc = cb < Tc
        flat = ((trial[okc] * Tc + cb[okc]) * Gn + gidx[okc]) * nmax + within[okc]
        sc = np.bincount(flat, minlength=B * Tc * Gn * nmax).reshape(B, Tc, Gn, nmax)
        cap = np.iinfo(SPIKE_COUNT_DTYPE).max
        if sc.max(initial=0) > cap:
            most = int(sc.max())
            raise ConfigError(f"count_bin_ms = {count_bin_ms} ms: a neuron fires up to {most} spikes in one bin, more than "
                              f"the {np.dtype(SPIKE_COUNT_DTYPE).name} spike_count holds ({cap}); use count_bin_ms <= "
                              f"{count_bin_ms * cap / most:.3g} ms")
        sc = sc.astype(SPIKE_COUNT_DTYPE)
        for gi, g in enumerate(L.groups):
            sc[:, :, gi, g.size * N:] = -1
        ds["spike_count"] = (("trial", "count_time", "group", "neuron"), sc,
                             {"units": "spikes",
                              "long_name": f"spikes per neuron in {count_bin_ms} ms bins (-1: no such neuron)"})
        ds = ds.assign_coords(count_time=("count_time", seconds(np.arange(Tc) * count_bin_ms),
                                          {"units": "s", "long_name": "count bin start from block start"}))
    ds = ds.assign_coords(group=("group", grp.group.values), group_area=("group", grp.area.values),
                          group_population=("group", grp.population.values),
                          group_polarity=("group", grp.polarity.values), group_units=("group", grp.n_units.values),
                          neuron=("neuron", np.arange(nmax)), neuron_unit=("neuron", neuron_unit))
    if spike_neurons is None or spike_neurons > 0:
        gidx, within = spk._group_of(nrn)
        keep = np.ones(trial.size, bool) if spike_neurons is None else (within % N) < spike_neurons
        order = np.lexsort((ts[keep], within[keep], gidx[keep], trial[keep]))
        ds["spike_time"] = ("spike", ts[keep][order], {"units": "s", "long_name": "spike time from block start"})
        ds["spike_trial"] = ("spike", trial[keep][order].astype(np.int32),
                             {"units": "", "long_name": "block (index along dim trial) of the spike"})
        ds["spike_group"] = ("spike", gidx[keep][order].astype(np.int32),
                             {"units": "", "long_name": "neuron group (index along dim group) of the spike"})
        ds["spike_neuron"] = ("spike", within[keep][order].astype(np.int32),
                              {"units": "", "long_name": "neuron (index along dim neuron) that fired"})
        ds.attrs["spike_neurons_per_unit"] = N if spike_neurons is None else int(min(spike_neurons, N))
    cp = spk.graph.params
    ds.attrs.update(
        neurons_per_unit=N, dt_ms=spk.params.dt_ms, tau_m_ms=spk.params.tau_m_ms,
        refractory_ms=spk.params.refractory_ms, membrane_noise=spk.params.noise, floor_hz=c.floor_hz,
        gain_hz=c.gain_hz, mu0=c.mu0, input_gain=c.k, smooth_ms=smooth_ms, record_every_ms=every,
        tau_l4_ms=cp.tau_l4, tau_error_ms=cp.tau_error, tau_deep_ms=cp.tau_deep, deep_leak=cp.deep_leak,
        prior_rate_per_ms=spk.graph.prior_rate, n_neurons=B * L.neurons_per_trial,
        stimulus_duration_ms=stimulus.duration_ms, total_ms=total_ms,
    )
    return label(ds)


def prior_trace(spk, stimulus: Stimulus, sim: dict, time: np.ndarray) -> np.ndarray:
    """The prior mean ``m(t)`` (B, T, n_top) rebuilt from the top error spikes exactly as the prior
    Synapses integrate them (each spike adds ``±prior_rate * 1000 / (gain N) * c(t_spike)``,
    with the cue read from the same grid as the network's TimedArray); ``m(t)`` holds the
    spikes before ``t``, the last sample all of them (it equals Brian2's final ``m``)."""
    trial, nrn, ts = sim["trial"], sim["neuron"], sim["t"]
    g, L, N, c = spk.graph, spk.layout, spk.layout.N, spk.code
    B, n_top = stimulus.blocks, g.prior_mean.numel()
    _, m0 = spk._initial_s(B)
    T = time.size
    every = time[1] - time[0] if T > 1 else float(stimulus.total_ms)
    inc = np.zeros((B, T + 1, n_top))
    if g.prior_rate > 0 and g.prior_errors:
        t_ms = ts * 1000.0
        grid = sim["cue_grid"]
        cue_at = grid[np.minimum(np.floor(t_ms / sim["cue_dt_ms"] + 1e-6).astype(np.int64), grid.size - 1)]
        for sign, name in zip((1.0, -1.0), g.prior_errors):
            q = spk._index[name]
            for grp in (x for x in L.groups if x.population == q):
                lo = grp.unit_offset * N
                sel = (nrn >= lo) & (nrn < lo + grp.size * N)
                tb = np.minimum(np.floor(t_ms[sel] / every + 1e-9).astype(np.int64) + 1, T)
                w = sign * grp.polarity * g.prior_rate * 1000.0 / (c.gain_hz * N) * cue_at[sel]
                np.add.at(inc, (trial[sel], tb, (nrn[sel] - lo) // N), w)
    return m0[:, None, :] + np.cumsum(inc, axis=1)[:, 1:, :]
