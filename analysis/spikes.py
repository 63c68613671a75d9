"""Spike times and spike-count arrays in, the binned recording of :mod:`analysis` out.

:func:`bin_spike_times` cuts each unit's spike train into trials of equal-width bins around an
alignment event (trial start, movement onset, ...) and counts the spikes per bin;
:func:`counts_to_dataarray` labels counts a user already binned the same way; both return the
``counts`` DataArray ``(trial, time, neuron)`` that :func:`to_recording` turns into the recording
Dataset every model and metric in :mod:`analysis` reads.

Bins are half-open, ``[lo, hi)``. Bin ``k`` of a trial aligned at ``a`` spans
``a + t0 + k * bin_width`` to ``a + t0 + (k + 1) * bin_width`` (absolute session seconds) and is
labelled by its centre relative to ``a``, ``t0 + (k + 1/2) * bin_width``. Spike times are
session times in seconds (NWB's convention): finite, sorted, and not before the session start
(``t = 0``).

Where units were not recorded for the whole session (NWB ``obs_intervals``; electrodes drift,
units appear and vanish), counts stay integer and a boolean ``observed`` array
``(trial, time, neuron)`` says which bins lie entirely inside one of the unit's observation
intervals. A zero count in an unobserved bin is missing data, not silence; every model and
metric of :mod:`analysis` leaves such bins out (:class:`analysis.recording.Recording`).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
import warnings
from typing import Any

import numpy as np
import xarray as xr

from analysis.recording import HELDOUT_ATTRS, SPLIT_ATTRS, _show, check_counts
from analysis.recording import check_bin_width as _check_bin_width
from pcsim.errors import DataError

__all__ = ["SPLITS", "bin_spike_times", "counts_to_dataarray", "to_recording"]

SPLITS = ("train", "val", "test", "none")
"""Allowed ``split`` labels: the conventions' three plus NLB's ``"none"`` (trials in no split)."""

_DIMS = ("trial", "time", "neuron")
_TIME_ATTRS = {"units": "s", "long_name": "bin centre"}
_COUNT_ATTRS = {"long_name": "spike count", "units": "counts/bin"}
_OBSERVED_ATTRS = {"units": "", "long_name": "bin lies inside the unit's observation intervals"}
# A window is a whole number of bins when (t1 - t0) / bin_width is this close to an integer;
# decimal bin widths are not exact in binary, so e.g. 0.7 / 0.02 = 34.99999999999999.
_WHOLE_BINS_ATOL = 1e-6


# ----------------------------------------------------------------------------- public API


def bin_spike_times(
    spike_times: Sequence[Any],
    trial_starts: Any,
    trial_stops: Any | None = None,
    *,
    bin_width: float,
    window: tuple[float, float] | None = None,
    align_times: Any | str | None = None,
    neuron_ids: Any | None = None,
    trial_ids: Any | None = None,
    trial_coords: Mapping[str, Any] | None = None,
    obs_intervals: Sequence[Any] | None = None,
    session_stop: float | None = None,
) -> xr.DataArray:
    """Count each unit's spikes in equal bins around an event per trial: ``(trial, time, neuron)`` int64 counts.

    ``spike_times`` holds one sorted 1-D array of session times (s) per unit; ``trial_starts``
    and ``trial_stops`` are ``(trials,)`` session times (s). ``window=(t0, t1)`` (s, relative to
    the alignment time) must be a whole number of ``bin_width`` (s) bins; it defaults to the
    whole trial, ``(0, stop - start)``, which needs trial stops, start alignment and trials of
    equal length. ``align_times`` is ``(trials,)`` session times, or the name of a column
    (``"start_time"``, ``"stop_time"`` or a key of ``trial_coords``); the default aligns to trial
    starts. ``trial_coords`` maps column names to ``(trials,)`` arrays that become
    coordinates along ``trial``; ``start_time`` (and ``stop_time``, and ``align_time`` for
    an alignment array) are always added, so the absolute times stay recoverable.
    ``obs_intervals`` gives per unit a ``(n, 2)`` array of ``[start, stop]`` session times (s)
    in which it was recorded; it adds the bool coordinate ``observed`` ``(trial, time, neuron)``,
    True where the whole bin lies inside one interval. ``session_stop`` (s), when given, bounds
    spike times and windows from above as ``t = 0`` bounds them from below. Coordinates:
    ``trial`` (``trial_ids``, default ``0..trials-1``), ``time`` (bin centres, s, relative to the
    alignment), ``neuron`` (``neuron_ids``, default ``0..units-1``); attrs ``bin_width`` (s) and
    ``align`` (the alignment column's name). With ``trial_stops``, every trial's window must end
    by its stop (it may begin before its start, a pre-event baseline): a longer one would count
    the next trial's spikes. Spike times that all miss the trials' windows, as times stored in
    ms would, are refused too (nearly all: a warning). Bad input raises :class:`~pcsim.errors.DataError`
    naming the unit, spike, trial or column at fault.
    """
    bin_width = _check_bin_width(bin_width)
    starts = _trial_times(trial_starts, "trial_starts")
    n_trials = starts.size
    trial_ids = _ids(trial_ids, n_trials, "trial_ids", "trials")
    columns: dict[str, np.ndarray] = {"start_time": starts}
    if trial_stops is not None:
        stops = _trial_times(trial_stops, "trial_stops", n_trials, trial_ids)
        empty = np.flatnonzero(stops <= starts)
        if empty.size:
            i = empty[0]
            raise DataError(
                f"trial {_trial_label(trial_ids, i)} is empty: its stop_time {_show(stops[i])} s is not after "
                f"its start_time {_show(starts[i])} s ({empty.size} empty trial(s) in all)"
            )
        columns["stop_time"] = stops
    for name, values in _trial_columns(trial_coords, n_trials).items():
        if name in columns:
            given = "trial_starts" if name == "start_time" else "trial_stops"
            raise DataError(f"trial_coords[{name!r}] duplicates {given}; leave it out of trial_coords")
        columns[name] = values

    if align_times is None:
        align_name, align = "start_time", starts
    elif isinstance(align_times, str):
        align_name = align_times
        if align_name not in columns:
            raise DataError(
                f"alignment column {align_name!r} not found; available trial columns: {sorted(columns)}"
            )
        align = _align_values(columns[align_name], align_name, trial_ids)
    else:
        align_name = "align_time"
        if align_name in columns:
            raise DataError("trial_coords must not contain 'align_time' when align_times is an array "
                            "(the alignment times are stored under that name)")
        align = _align_values(_trial_times(align_times, "align_times", n_trials, trial_ids), "align_times", trial_ids)
        columns[align_name] = align

    if window is None:
        window = _whole_trial_window(columns, align_name, trial_ids)
    t0, n_bins = _window_bins(window, bin_width)
    edges = align[:, None] + (t0 + bin_width * np.arange(n_bins + 1))[None, :]  # (trial, bins+1), session s
    _check_windows_in_session(edges, trial_ids, session_stop)
    if trial_stops is not None:
        _check_windows_in_trials(edges, (t0, t0 + n_bins * bin_width), columns["stop_time"], trial_ids)

    trains = _check_spike_trains(spike_times, session_stop=session_stop, neuron_ids=neuron_ids)
    neuron_ids = _ids(neuron_ids, len(trains), "neuron_ids", "units")
    counts = np.empty((n_trials, n_bins, len(trains)), np.int64)
    for u, train in enumerate(trains):
        # Spikes before each edge; the difference between neighbouring edges is the bin's count.
        below = np.searchsorted(train, edges, side="left")
        counts[:, :, u] = np.diff(below, axis=1)

    _check_spikes_hit_trials(trains, counts, starts, columns.get("stop_time"))

    observed = None
    if obs_intervals is not None:
        intervals = _check_obs_intervals(obs_intervals, len(trains), neuron_ids)
        observed = np.stack([_covered(iv, edges[:, :-1], edges[:, 1:]) for iv in intervals], axis=-1)

    return _counts_dataarray(counts, bin_width, t0, trial_ids, neuron_ids, columns, align_name, observed)


def counts_to_dataarray(
    counts: Any,
    bin_width: float,
    *,
    window: tuple[float, float] | None = None,
    align: str = "start_time",
    neuron_ids: Any | None = None,
    trial_ids: Any | None = None,
    trial_coords: Mapping[str, Any] | None = None,
    observed: Any | None = None,
) -> xr.DataArray:
    """Label spike counts binned elsewhere: ``(trials, bins, neurons)`` counts in, the :func:`bin_spike_times` DataArray out.

    ``counts`` is a ``(trials, bins, neurons)`` array of non-negative integer counts per bin (a
    float array holding whole numbers is accepted), or a sequence of ``(bins, neurons)`` arrays,
    one per trial, all of the same length. ``bin_width`` is in seconds; ``window=(t0, t1)``
    (s, relative to the alignment event named ``align``) places the bins and must hold exactly
    ``bins`` of them (default ``(0, bins * bin_width)``). ``trial_coords`` maps column names to
    ``(trials,)`` arrays (coordinates along ``trial``); ``observed`` is an
    optional ``(trials, bins, neurons)`` bool array kept as the ``observed`` coordinate. The
    result (int64, coordinates ``trial``, ``time`` in s, ``neuron``; attrs ``bin_width``,
    ``align``) equals what :func:`bin_spike_times` returns for the same bins. Raises
    :class:`~pcsim.errors.DataError` naming the trial, bin and neuron of a NaN, negative or
    fractional count, or the trial whose length differs.
    """
    bin_width = _check_bin_width(bin_width)
    counts = check_counts(_stack_trials(counts), "counts")
    n_trials, n_bins, n_neurons = counts.shape
    if window is None:
        window = (0.0, n_bins * bin_width)
    t0, n_window = _window_bins(window, bin_width)
    if n_window != n_bins:
        raise DataError(f"window {tuple(window)} s holds {n_window} bins of {bin_width} s, "
                        f"but counts has {n_bins} bins per trial")
    trial_ids = _ids(trial_ids, n_trials, "trial_ids", "trials")
    neuron_ids = _ids(neuron_ids, n_neurons, "neuron_ids", "neurons")
    columns = _trial_columns(trial_coords, n_trials)
    if observed is not None:
        observed = np.asarray(observed)
        if observed.shape != counts.shape or observed.dtype != bool:
            raise DataError(f"observed must be a bool array of the counts' shape {counts.shape}, "
                            f"got {observed.dtype} {observed.shape}")
    return _counts_dataarray(counts, bin_width, t0, trial_ids, neuron_ids, columns, str(align), observed)


def to_recording(
    counts: xr.DataArray,
    heldout: Any | None = None,
    split: Any | None = None,
    **extras: Any,
) -> xr.Dataset:
    """Build the recording Dataset of :mod:`analysis` from a ``counts`` DataArray ``(trial, time, neuron)``.

    ``counts`` is what :func:`bin_spike_times` or :func:`counts_to_dataarray` return (integer
    counts per bin, ``time`` in s, attrs ``bin_width`` in s and ``align``); its ``bin_width`` and
    ``align`` move to the Dataset's attrs and an ``observed`` coordinate becomes the bool
    variable ``observed`` ``(trial, time, neuron)``. ``heldout`` is a ``(neurons,)`` bool mask or
    a collection of neuron ids (default: the DataArray's ``heldout`` coordinate, else none held
    out); ``split`` is a ``(trials,)`` sequence of labels from :data:`SPLITS`, or one label for
    every trial (default: the existing ``split`` coordinate, else ``"train"``). ``extras`` are
    further variables (``rates`` in counts per bin, ``latents``, ``behaviour``): DataArrays whose
    dims start with ``(trial, time)`` and whose shared coordinates equal the counts', or bare
    arrays of the counts' shape, taken as ``(trial, time, neuron)``.
    """
    if not isinstance(counts, xr.DataArray):
        raise DataError(f"counts must be an xarray.DataArray with dims {_DIMS}, got {type(counts).__name__}")
    if set(counts.dims) != set(_DIMS):
        raise DataError(f"counts must have dims {_DIMS}, got {counts.dims}")
    counts = counts.transpose(*_DIMS)
    bin_width = _check_bin_width(counts.attrs.get("bin_width"), "counts.attrs['bin_width']")
    if "time" not in counts.coords:
        raise DataError("counts has no 'time' coordinate (bin centres in s relative to the alignment event)")
    observed = counts.coords.get("observed")
    if observed is not None and (observed.dims != _DIMS or observed.dtype != bool):
        raise DataError(f"the observed coordinate must be bool with dims {_DIMS}, got {observed.dtype} {observed.dims}")
    values = check_counts(counts.values, "counts", labels=counts,
                          observed=None if observed is None else np.asarray(observed.values, bool))

    da = counts.drop_vars(["observed"], errors="ignore").copy(data=values)
    da.attrs = {k: v for k, v in counts.attrs.items() if k in _COUNT_ATTRS}
    attrs = {k: v for k, v in counts.attrs.items() if k not in _COUNT_ATTRS}
    attrs["bin_width"] = bin_width
    attrs.setdefault("align", "start_time")
    ds = xr.Dataset({"counts": da}, attrs=attrs)
    if observed is not None:
        ds["observed"] = observed.variable.copy()
        ds["observed"].attrs = dict(_OBSERVED_ATTRS)

    ds = ds.assign_coords(heldout=("neuron", _heldout_mask(heldout, ds), HELDOUT_ATTRS),
                          split=("trial", _split_labels(split, ds), SPLIT_ATTRS))
    for name, value in extras.items():
        ds[name] = _extra_variable(name, value, ds)
    return ds


# ----------------------------------------------------------------------------- validation


def _window_bins(window: Any, bin_width: float) -> tuple[float, int]:
    """Return ``(t0, n_bins)`` for a ``(t0, t1)`` window (s) that holds a whole number of bins."""
    try:
        t0, t1 = (float(t) for t in window)
    except (TypeError, ValueError):
        raise DataError(f"window must be a pair (t0, t1) of seconds, got {window!r}") from None
    if not (np.isfinite(t0) and np.isfinite(t1)):
        raise DataError(f"window {window!r} must be finite")
    if t1 <= t0:
        raise DataError(f"window ({t0}, {t1}) s is empty: t1 must be after t0, so every trial has at least one bin")
    n = (t1 - t0) / bin_width
    n_bins = int(round(n))
    if n_bins < 1 or abs(n - n_bins) > _WHOLE_BINS_ATOL:
        raise DataError(
            f"window ({t0}, {t1}) s does not divide into whole bins of bin_width {bin_width} s "
            f"({n:.6g} bins); make t1 - t0 a whole multiple of bin_width"
        )
    return t0, n_bins


def _trial_label(trial_ids: np.ndarray, i: int) -> str:
    """``'3'`` when trial ids are positions, else ``'17 (index 3)'``."""
    tid = trial_ids[i]
    return f"{i}" if isinstance(tid, (int, np.integer)) and tid == i else f"{_show(tid)} (index {i})"


def _unit_label(u: int, neuron_ids: Any | None) -> str:
    if neuron_ids is None:
        return f"unit {u}"
    nid = np.asarray(neuron_ids)[u] if u < len(neuron_ids) else None
    return f"unit {u}" if nid is None or (isinstance(nid, (int, np.integer)) and nid == u) else f"unit {u} (id {_show(nid)})"


def _trial_times(values: Any, name: str, n_trials: int | None = None, trial_ids: np.ndarray | None = None) -> np.ndarray:
    a = np.asarray(values)
    if a.ndim != 1:
        raise DataError(f"{name} must be one time per trial, shape (trials,), got shape {a.shape}")
    if n_trials is None and a.size == 0:
        raise DataError(f"{name} is empty: there are no trials to bin")
    if n_trials is not None and a.size != n_trials:
        raise DataError(f"{name} has {a.size} entries but there are {n_trials} trials")
    if not (np.issubdtype(a.dtype, np.number) and not np.issubdtype(a.dtype, np.complexfloating)):
        raise DataError(f"{name} must be numeric times in seconds, got dtype {a.dtype}")
    a = a.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(a))
    if bad.size:
        i = bad[0]
        which = f"trial {_trial_label(trial_ids, i)}" if trial_ids is not None else f"trial index {i}"
        raise DataError(f"{name} is {a[i]} for {which} ({bad.size} non-finite in all)")
    return a


def _align_values(values: np.ndarray, name: str, trial_ids: np.ndarray) -> np.ndarray:
    if values.ndim != 1 or not np.issubdtype(values.dtype, np.number):
        raise DataError(f"alignment column {name!r} must hold one time (s) per trial, got {values.dtype} {values.shape}")
    values = values.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(values))
    if bad.size:
        shown = [trial_ids[i].item() if hasattr(trial_ids[i], "item") else trial_ids[i] for i in bad[:10]]
        raise DataError(f"alignment column {name!r} is NaN/Inf for {bad.size} trial(s), ids {shown}"
                        f"{' ...' if bad.size > 10 else ''}; select the trials that have the event first")
    return values


def _ids(ids: Any | None, n: int, name: str, what: str) -> np.ndarray:
    if ids is None:
        return np.arange(n)
    a = _coord_values(np.asarray(ids))
    if a.ndim != 1 or a.size != n:
        raise DataError(f"{name} must hold one id per {what[:-1]} ({n}), got shape {a.shape}")
    uniq, count = np.unique(a, return_counts=True)
    if (count > 1).any():
        raise DataError(f"{name} must be unique; {uniq[count > 1][:5].tolist()} occur more than once")
    return a


def _coord_values(a: np.ndarray) -> np.ndarray:
    """Object arrays of str (as NWB/HDF5 returns them) become fixed-width str arrays, as xarray/netCDF prefer."""
    if a.dtype == object and a.size and all(isinstance(v, str) for v in a.ravel()):
        return a.astype(str)
    if a.dtype == object and a.size and all(isinstance(v, bytes) for v in a.ravel()):
        return np.char.decode(a.astype(bytes), "utf-8")
    return a


def _trial_columns(trial_coords: Mapping[str, Any] | None, n_trials: int) -> dict[str, np.ndarray]:
    if trial_coords is None:
        return {}
    if not isinstance(trial_coords, Mapping):
        raise DataError(f"trial_coords must be a mapping of column name to (trials,) array, got {type(trial_coords).__name__}")
    columns = {}
    for name, values in trial_coords.items():
        if not isinstance(name, str) or name in _DIMS or name in ("observed", "heldout"):
            raise DataError(f"trial_coords key {name!r} is not allowed (reserved: {_DIMS + ('observed', 'heldout')})")
        a = _coord_values(np.asarray(values))
        if a.shape != (n_trials,):
            raise DataError(f"trial_coords[{name!r}] must have shape (trials,) with {n_trials} trials, got shape {a.shape}")
        columns[name] = a
    return columns


def _whole_trial_window(columns: Mapping[str, np.ndarray], align_name: str, trial_ids: np.ndarray) -> tuple[float, float]:
    if align_name != "start_time":
        raise DataError(f"window=(t0, t1) is required when aligning to {align_name!r}; the default window "
                        "(the whole trial) needs alignment to the trial starts")
    if "stop_time" not in columns:
        raise DataError("window=(t0, t1) is required when trial_stops is not given")
    durations = columns["stop_time"] - columns["start_time"]
    differ = np.flatnonzero(~np.isclose(durations, durations[0], rtol=0, atol=1e-9))
    if differ.size:
        i = differ[0]
        raise DataError(
            f"trials are of unequal length, but the default window (the whole trial) needs equal ones: "
            f"trial {_trial_label(trial_ids, 0)} lasts {durations[0]:.9g} s, trial {_trial_label(trial_ids, i)} "
            f"lasts {durations[i]:.9g} s ({differ.size} trial(s) differ); pass window=(t0, t1) to cut equal windows"
        )
    return 0.0, float(durations[0])


def _check_windows_in_session(edges: np.ndarray, trial_ids: np.ndarray, session_stop: float | None) -> None:
    early = np.flatnonzero(edges[:, 0] < 0)
    if early.size:
        i = early[0]
        raise DataError(f"the window of trial {_trial_label(trial_ids, i)} starts at {edges[i, 0]:.9g} s, before the "
                        f"session start (t = 0); shift or shorten the window ({early.size} trial(s) affected)")
    if session_stop is not None:
        late = np.flatnonzero(edges[:, -1] > session_stop)
        if late.size:
            i = late[0]
            raise DataError(f"the window of trial {_trial_label(trial_ids, i)} ends at {edges[i, -1]:.9g} s, after the "
                            f"session stop ({session_stop} s) ({late.size} trial(s) affected)")


def _trial_list(trial_ids: np.ndarray, index: np.ndarray, shown: int = 5) -> str:
    """``'0, 3, 7, ...'``: the first ``shown`` of the trials at positions ``index``."""
    labels = [_trial_label(trial_ids, int(i)) for i in index[:shown]]
    return ", ".join(labels) + (", ..." if index.size > shown else "")


def _check_windows_in_trials(edges: np.ndarray, window: tuple[float, float], stops: np.ndarray,
                             trial_ids: np.ndarray) -> None:
    """Every trial's window must end by its ``stop_time``: ``edges[:, -1]`` (session s) past it would
    count the inter-trial interval's and the next trial's spikes as this trial's. (A window may
    begin before the trial start: a pre-event baseline is the usual peri-event window.)"""
    late = np.flatnonzero(edges[:, -1] > stops + 1e-9)
    if late.size:
        lasts = float(np.min(stops - (edges[:, 0] - window[0]))) * 1e3
        raise DataError(
            f"window [{window[0] * 1e3:.6g}, {window[1] * 1e3:.6g}] ms runs past the end of trials "
            f"{_trial_list(trial_ids, late)} ({late.size} of {stops.size} trials; the shortest trial lasts {lasts:.6g} "
            "ms from its alignment to its stop_time): it would count spikes from between or after the trials; "
            "shorten the window, or select the trials it fits")


_MISS_MIN_SPIKES = 200
"""Below this many spikes, missing every window can be chance."""


def _check_spikes_hit_trials(trains: list[np.ndarray], counts: np.ndarray, starts: np.ndarray,
                             stops: np.ndarray | None) -> None:
    """Refuse spike times that all miss the trials' windows, the mark of times in ms read as s.

    ``counts`` ``(trial, time, neuron)`` are the binned spikes. None of at least
    :data:`_MISS_MIN_SPIKES` spikes inside the windows, or none while the spikes run on past 100
    times the last trial's end (``stops``, else the last start), raises DataError with the
    numbers and the likely cause. Under 1 % inside with that ms signature only warns: a long
    session with a few short trials can look the same, and must stay readable.
    """
    total = int(sum(t.size for t in trains))
    if total == 0:
        return
    inside = int(counts.sum())
    end = float(np.max(stops if stops is not None else starts))
    first = min(float(t[0]) for t in trains if t.size)
    last = max(float(t[-1]) for t in trains if t.size)
    ms_like = last > 100 * max(end, 1e-9)
    message = (f"only {inside} of the {total} spikes fall in the trials' windows: the trials run from "
               f"{float(np.min(starts)):.6g} s to {end:.6g} s, the spike times from {first:.6g} s to {last:.6g} s; "
               "spike times must be session times in seconds: were they stored in milliseconds (divide them by 1000)?")
    if inside == 0 and (total >= _MISS_MIN_SPIKES or ms_like):
        raise DataError(message)
    if ms_like and inside < 0.01 * total:
        warnings.warn(message, UserWarning, stacklevel=3)


def _check_spike_trains(spike_times: Sequence[Any], *, session_stop: float | None = None,
                        neuron_ids: Any | None = None) -> list[np.ndarray]:
    """Return the spike trains as float64 arrays after checking they are 1-D, finite, sorted and inside the session."""
    if isinstance(spike_times, np.ndarray) and spike_times.dtype != object:
        raise DataError("spike_times must be a sequence of 1-D arrays, one per unit, not a single array")
    if isinstance(spike_times, (str, bytes)) or not isinstance(spike_times, (Sequence, np.ndarray)):
        raise DataError(f"spike_times must be a sequence of 1-D arrays, one per unit, got {type(spike_times).__name__}")
    if len(spike_times) == 0:
        raise DataError("spike_times is empty: there are no units to bin")
    if neuron_ids is not None and len(neuron_ids) != len(spike_times):
        raise DataError(f"neuron_ids has {len(neuron_ids)} entries but spike_times has {len(spike_times)} units")
    trains = []
    for u, train in enumerate(spike_times):
        unit = _unit_label(u, neuron_ids)
        s = np.asarray(train)
        if s.ndim != 1:
            raise DataError(f"{unit}: spike_times must be 1-D, got shape {s.shape}")
        if s.size and not (np.issubdtype(s.dtype, np.number) and not np.issubdtype(s.dtype, np.complexfloating)):
            raise DataError(f"{unit}: spike_times must be numeric seconds, got dtype {s.dtype}")
        s = s.astype(np.float64)
        bad = np.flatnonzero(~np.isfinite(s))
        if bad.size:
            raise DataError(f"{unit}: spike {bad[0]} is {s[bad[0]]} (spike times must be finite)")
        back = np.flatnonzero(np.diff(s) < 0)
        if back.size:
            j = back[0] + 1
            raise DataError(f"{unit}: spike times are not sorted: spike {j} at {_show(s[j])} s comes after "
                            f"spike {j - 1} at {_show(s[j - 1])} s")
        if s.size and s[0] < 0:
            raise DataError(f"{unit}: spike 0 at {_show(s[0])} s is outside the session (before its start, t = 0)")
        if s.size and session_stop is not None and s[-1] > session_stop:
            j = int(np.searchsorted(s, session_stop, side="right"))
            raise DataError(f"{unit}: spike {j} at {_show(s[j])} s is outside the session (after its stop, {session_stop} s)")
        trains.append(s)
    return trains


def _check_obs_intervals(obs_intervals: Sequence[Any], n_units: int, neuron_ids: Any | None) -> list[np.ndarray]:
    if len(obs_intervals) != n_units:
        raise DataError(f"obs_intervals has {len(obs_intervals)} entries but there are {n_units} units")
    out = []
    for u, iv in enumerate(obs_intervals):
        unit = _unit_label(u, neuron_ids)
        a = np.asarray(iv, dtype=np.float64) if len(iv) else np.empty((0, 2))
        if a.ndim != 2 or a.shape[1] != 2:
            raise DataError(f"{unit}: obs_intervals must be an (n, 2) array of [start, stop] s, got shape {a.shape}")
        bad = np.flatnonzero(~np.isfinite(a).all(axis=1) | (a[:, 1] < a[:, 0]))
        if bad.size:
            raise DataError(f"{unit}: obs_intervals[{bad[0]}] = {a[bad[0]].tolist()} is not a finite [start, stop] "
                            "interval with stop >= start")
        out.append(a)
    return out


def _merged_intervals(intervals: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, disjoint ``(starts, stops)`` covering the union of closed ``(n, 2)`` intervals (overlapping or touching ones merged)."""
    order = np.argsort(intervals[:, 0], kind="stable")
    a, b = intervals[order, 0], intervals[order, 1]
    # A new interval begins where a start lies past every stop seen so far.
    reach = np.maximum.accumulate(b)
    first = np.flatnonzero(np.r_[True, a[1:] > reach[:-1]])
    return a[first], np.maximum.reduceat(b, first)


def _covered(intervals: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """True where ``[lo, hi]`` (a bin, or a spike time with ``lo = hi``) lies inside one of the ``(n, 2)`` intervals."""
    if intervals.shape[0] == 0:
        return np.zeros(np.shape(lo), bool)
    starts, stops = _merged_intervals(intervals)
    k = np.searchsorted(starts, lo, side="right") - 1
    return (k >= 0) & (hi <= stops[np.clip(k, 0, None)])


def _stack_trials(counts: Any) -> np.ndarray:
    if isinstance(counts, np.ndarray) or not isinstance(counts, Sequence):
        return np.asarray(counts)
    trials = [np.asarray(c) for c in counts]
    if not trials:
        raise DataError("counts is empty: there are no trials")
    for i, c in enumerate(trials):
        if c.ndim != 2:
            raise DataError(f"counts of trial {i} must be (bins, neurons), got shape {c.shape}")
        if c.shape != trials[0].shape:
            raise DataError(f"trials are of unequal length: trial {i} has shape {c.shape} (bins, neurons) but "
                            f"trial 0 has {trials[0].shape}; every trial must have the same bins and neurons")
    return np.stack(trials)


def _heldout_mask(heldout: Any | None, ds: xr.Dataset) -> np.ndarray:
    neurons = ds["neuron"].values
    if heldout is None:
        if "heldout" in ds.coords:
            return ds["heldout"].values.astype(bool)
        return np.zeros(neurons.size, bool)
    if isinstance(heldout, xr.DataArray):
        heldout = heldout.values
    if isinstance(heldout, np.ndarray) and heldout.dtype == bool or (
            isinstance(heldout, Sequence) and len(heldout) and all(isinstance(h, (bool, np.bool_)) for h in heldout)):
        mask = np.asarray(heldout, bool)
        if mask.shape != neurons.shape:
            raise DataError(f"heldout mask has shape {mask.shape} but there are {neurons.size} neurons")
        return mask
    ids = np.asarray(list(heldout) if isinstance(heldout, Collection) else [heldout])
    unknown = ids[~np.isin(ids, neurons)]
    if unknown.size:
        raise DataError(f"heldout names neuron ids {unknown[:10].tolist()} that are not among the recording's neurons "
                        f"({neurons[:10].tolist()}{' ...' if neurons.size > 10 else ''})")
    return np.isin(neurons, ids)


def _split_labels(split: Any | None, ds: xr.Dataset) -> np.ndarray:
    n_trials = ds.sizes["trial"]
    if split is None:
        if "split" in ds.coords:
            labels = ds["split"].values
        else:
            return np.full(n_trials, "train")
    elif isinstance(split, str):
        labels = np.full(n_trials, split)
    else:
        labels = _coord_values(np.asarray(split.values if isinstance(split, xr.DataArray) else split, dtype=object))
    if labels.shape != (n_trials,):
        raise DataError(f"split must hold one label per trial ({n_trials}), got shape {labels.shape}")
    labels = labels.astype(str)
    bad = np.flatnonzero(~np.isin(labels, SPLITS))
    if bad.size:
        i = bad[0]
        raise DataError(f"split label {_show(labels[i])} of trial {_show(ds['trial'].values[i])} is not one of {SPLITS}")
    return labels


def _extra_variable(name: str, value: Any, ds: xr.Dataset) -> xr.DataArray:
    if name in ds.variables:
        raise DataError(f"extra variable {name!r} clashes with the recording's {name!r}")
    if not isinstance(value, xr.DataArray):
        a = np.asarray(value)
        if a.shape != ds["counts"].shape:
            raise DataError(f"{name} is a bare array of shape {a.shape}; pass an xarray.DataArray with named dims "
                            f"(trial, time, ...) unless it has the counts' shape {ds['counts'].shape}")
        return xr.DataArray(a, dims=_DIMS, coords={d: ds[d] for d in _DIMS})
    if value.dims[:2] != ("trial", "time"):
        raise DataError(f"{name} must have dims starting with ('trial', 'time'), got {value.dims}")
    for dim in value.dims:
        if dim in ds.sizes and value.sizes[dim] != ds.sizes[dim]:
            raise DataError(f"{name} has {value.sizes[dim]} entries along {dim!r} but the counts have {ds.sizes[dim]}")
        if dim in ds.indexes and dim in value.indexes and not np.array_equal(value[dim].values, ds[dim].values):
            raise DataError(f"{name}'s {dim!r} coordinate differs from the counts'")
    return value.assign_coords({d: ds[d] for d in value.dims if d in ds.indexes})


# ----------------------------------------------------------------------------- construction


def _counts_dataarray(counts: np.ndarray, bin_width: float, t0: float, trial_ids: np.ndarray, neuron_ids: np.ndarray,
                      columns: Mapping[str, np.ndarray], align: str, observed: np.ndarray | None) -> xr.DataArray:
    n_bins = counts.shape[1]
    coords: dict[str, Any] = {
        "trial": ("trial", trial_ids, {"units": "", "long_name": "trial id"}),
        "time": ("time", t0 + (np.arange(n_bins) + 0.5) * bin_width, dict(_TIME_ATTRS)),
        "neuron": ("neuron", neuron_ids, {"units": "", "long_name": "neuron id"}),
    }
    for name, values in columns.items():
        # event columns (NWB: *_time) are session times in s; others are labels or conditions
        timed = name == "time" or name.endswith("_time")
        coords[name] = ("trial", values, {"units": "s" if timed else "", "long_name": f"trial column {name!r}"})
    if observed is not None:
        coords["observed"] = (_DIMS, observed, dict(_OBSERVED_ATTRS))
    return xr.DataArray(counts, dims=_DIMS, coords=coords, name="counts",
                        attrs={**_COUNT_ATTRS, "bin_width": bin_width, "align": align})
