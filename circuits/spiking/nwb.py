"""Spike trains of a spiking run in the form NWB export takes."""

from __future__ import annotations

import numpy as np
import xarray as xr

from pcsim.errors import ConfigError, DataError

__all__ = ["spike_trains"]


def spike_trains(ds: xr.Dataset, *, trial_offsets_s=None) -> tuple[list[np.ndarray], xr.Dataset]:
    """Spike times of a :meth:`SpikingCircuit.run` result as one array per recorded neuron,
    the form ``analysis.nwb.write_nwb(spike_times=...)`` takes.

    Trials (blocks) are laid end to end in one session: block ``b`` starts at
    ``trial_offsets_s[b]`` seconds (default ``b * total_ms / 1000``). Returns the list of
    float64 arrays (s, sorted) and a Dataset over dim ``unit_id`` naming each train's
    ``group``, ``area``, ``population``, ``polarity``, ``unit`` and ``neuron``, plus ``trial_start``
    and ``trial_stop`` (s) over dim ``trial`` for the trials table."""
    for name in ("spike_time", "spike_trial", "spike_group", "spike_neuron"):
        if name not in ds:
            raise DataError(f"spike_trains needs the variable '{name}': run the SpikingCircuit with spike_neurons != 0")
    B = ds.sizes["trial"]
    dur = float(ds.attrs["total_ms"]) / 1000.0
    off = np.arange(B) * dur if trial_offsets_s is None else np.asarray(trial_offsets_s, dtype=np.float64)
    if off.shape != (B,):
        raise ConfigError(f"trial_offsets_s must have one entry per trial ({B}), got shape {off.shape}")
    if B > 1 and np.any(np.diff(off) < dur - 1e-12):
        raise ConfigError("trial_offsets_s must be increasing and at least one block length apart")
    keep = int(ds.attrs["spike_neurons_per_unit"])
    N = int(ds.attrs["neurons_per_unit"])
    units = ds.group_units.values
    ids = [(g, u * N + k) for g in range(ds.sizes["group"]) for u in range(int(units[g])) for k in range(keep)]
    key = ds.spike_group.values.astype(np.int64) * ds.sizes["neuron"] + ds.spike_neuron.values
    t_sess = ds.spike_time.values + off[ds.spike_trial.values]
    order = np.lexsort((t_sess, key))
    key_s, t_s = key[order], t_sess[order]
    wanted = np.array([g * ds.sizes["neuron"] + n for g, n in ids], dtype=np.int64)
    lo, hi = np.searchsorted(key_s, wanted, "left"), np.searchsorted(key_s, wanted, "right")
    trains = [t_s[a:b].copy() for a, b in zip(lo, hi)]
    g_of = np.array([g for g, _ in ids], dtype=np.int64)
    n_of = np.array([n for _, n in ids], dtype=np.int64)
    table = xr.Dataset(
        {"group": ("unit_id", ds.group.values[g_of]), "area": ("unit_id", ds.group_area.values[g_of]),
         "population": ("unit_id", ds.group_population.values[g_of]),
         "polarity": ("unit_id", ds.group_polarity.values[g_of]), "unit": ("unit_id", n_of // N),
         "neuron": ("unit_id", n_of), "trial_start": ("trial", off), "trial_stop": ("trial", off + dur)},
        coords={"unit_id": np.arange(len(ids))})
    return trains, table
