"""Continuous sessions: fixed windows cut from intervals, row selection, behaviour resampled onto bins.

A session without a trials table (sleep and wake epochs, a freely moving animal, a
continuous recording written by another tool) becomes a trial-structured recording by
cutting intervals (rows of a ``TimeIntervals`` table, or the whole session) into
consecutive windows of one length: :func:`cut_windows`. The rows of a table (intervals, or
units by their columns such as ``quality`` and ``location``) are chosen by one selection
statement, :func:`where_mask` (``{column: value}`` or ``{column: [values]}``; every key must
hold). A behavioural time series (position, head direction, speed) is resampled onto the
recording's bins by linear interpolation at the bin centres, angles on their unwrapped
(continuous) trajectory so that a step from 359 to 1 degree passes 0, not 180:
:func:`resample_series`. These are pure functions of arrays; :func:`analysis.nwb.read_nwb`
reads the file and calls them. Times are session seconds (NWB's convention). Bad input
raises :class:`~pcsim.errors.DataError` naming the table, column, row, series or sample.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pcsim.errors import DataError

__all__ = ["ANGLE_UNITS", "cut_windows", "drop_overlapping", "resample_series", "where_mask"]

ANGLE_UNITS = {"radian": 1.0, "radians": 1.0, "rad": 1.0, "degree": np.pi / 180, "degrees": np.pi / 180,
               "deg": np.pi / 180}
"""Units that mark a series as an angle (circular), with the factor to radians."""

_WHOLE_WINDOWS_ATOL = 1e-9


def _show(value: Any) -> str:
    return repr(value.item() if isinstance(value, np.generic) else value)


def where_mask(columns: Mapping[str, Any], where: Mapping[str, Any] | None, what: str) -> np.ndarray:
    """The rows of a table that a selection ``where`` keeps: ``(rows,)`` bool.

    ``columns`` maps a column name to its values, one per row (a ``(rows,)`` array), or to a
    list of arrays, one per row (a ragged column such as an epochs table's ``tags``).
    ``where`` maps column names to a value or a sequence of values; a row is kept when, for
    every key, its value is one of them (for a ragged column: one of its elements is). An
    empty or None ``where`` keeps every row. Raises DataError, naming ``what`` (e.g. ``"the
    Units table"``), for a column the table lacks (listing those it has) and for a selection
    that keeps no row (listing the values the column holds).
    """
    n = len(next(iter(columns.values()))) if columns else 0
    keep = np.ones(n, bool)
    for name, wanted in (where or {}).items():
        if name not in columns:
            raise DataError(f"{what} has no column {name!r} to select rows by; its columns: {sorted(columns)}")
        values = columns[name]
        allowed = list(wanted) if isinstance(wanted, (list, tuple, set, np.ndarray)) else [wanted]
        if isinstance(values, list):  # ragged: one array per row
            match = np.array([np.isin(np.asarray(v), allowed).any() for v in values], bool)
            present = sorted({_show(x) for v in values for x in np.asarray(v).ravel()})
        else:
            values = np.asarray(values)
            match = np.isin(values.astype(object), np.asarray(allowed, dtype=object))
            present = sorted({_show(x) for x in values.ravel()})
        if not (keep & match).any():
            raise DataError(f"{what}: no row is left once column {name!r} must be one of {allowed!r}"
                            f"{' (with the keys before it)' if not keep.all() else ''}; the column holds "
                            f"{', '.join(present[:12])}{' ...' if len(present) > 12 else ''}")
        keep &= match
    return keep


def cut_windows(starts: Any, stops: Any, length: float, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Cut each interval ``[start, stop)`` (session s) into consecutive windows of ``length`` s.

    Interval ``i`` gives ``floor((stop_i - start_i) / length)`` windows starting at
    ``start_i + k * length``; the remainder at its end is left out. Returns ``(window_starts,
    interval)``: ``(windows,)`` session times (s) and the row position of each window's
    interval. Raises DataError naming ``what`` (the table) and the row for an interval that is
    not finite or whose stop is not after its start, and when ``length`` is longer than every
    interval (no window would be cut; the longest interval's length is given).
    """
    starts, stops = np.asarray(starts, np.float64), np.asarray(stops, np.float64)
    bad = np.flatnonzero(~(np.isfinite(starts) & np.isfinite(stops)) | (stops <= starts))
    if bad.size:
        i = bad[0]
        raise DataError(f"{what}: row {i} runs from {_show(starts[i])} s to {_show(stops[i])} s, not a finite interval "
                        f"with stop_time after start_time ({bad.size} row(s) in all)")
    n = np.floor((stops - starts) / length + _WHOLE_WINDOWS_ATOL).astype(np.int64)
    if n.sum() == 0:
        longest = float(np.max(stops - starts))
        raise DataError(f"window length {length * 1e3:.6g} ms is longer than every interval of {what} (the longest "
                        f"lasts {longest * 1e3:.6g} ms over {starts.size} interval(s)): shorten the window length or "
                        "choose other intervals")
    interval = np.repeat(np.arange(starts.size), n)
    within = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
    return starts[interval] + within * length, interval


def drop_overlapping(window_starts: np.ndarray, length: float, bad_starts: Any, bad_stops: Any) -> np.ndarray:
    """``(windows,)`` bool: True for the windows ``[s, s + length)`` that overlap none of the
    intervals ``[bad_start, bad_stop)`` (session s; e.g. NWB's ``invalid_times``)."""
    bad_starts, bad_stops = np.asarray(bad_starts, np.float64), np.asarray(bad_stops, np.float64)
    if bad_starts.size == 0:
        return np.ones(window_starts.shape, bool)
    lo, hi = window_starts[:, None], window_starts[:, None] + length
    return ~((lo < bad_stops[None, :]) & (hi > bad_starts[None, :])).any(axis=1)


def check_timestamps(timestamps: Any, what: str) -> np.ndarray:
    """``(samples,)`` float64 timestamps (s) after checking they are 1-D, finite and strictly
    increasing; DataError naming ``what`` and the first sample out of order."""
    t = np.asarray(timestamps, np.float64)
    if t.ndim != 1 or t.size < 2:
        raise DataError(f"{what}: timestamps must be a 1-D array of at least 2 times, got shape {t.shape}")
    bad = np.flatnonzero(~np.isfinite(t))
    if bad.size:
        raise DataError(f"{what}: timestamp {bad[0]} is {t[bad[0]]} (timestamps must be finite seconds)")
    back = np.flatnonzero(np.diff(t) <= 0)
    if back.size:
        j = back[0] + 1
        raise DataError(f"{what}: timestamps are not increasing: sample {j} at {_show(t[j])} s does not come after "
                        f"sample {j - 1} at {_show(t[j - 1])} s ({back.size} sample(s) out of order)")
    return t


def resample_series(timestamps: Any, values: Any, centres: np.ndarray, *, circular: bool, what: str) -> np.ndarray:
    """A time series resampled at bin centres: ``(trial, time, k)`` values.

    ``timestamps``: ``(samples,)`` strictly increasing session times (s); ``values``:
    ``(samples,)`` or ``(samples, k)``; ``centres``: ``(trial, time)`` session times (s) of the
    bin centres. Linear interpolation between the two samples around each centre; a NaN sample
    (tracking lost) makes the bins beside it NaN. ``circular`` values are angles in radians:
    they are interpolated along their unwrapped trajectory (each step between samples taken
    the short way round) and returned in ``[-pi, pi)``. Every centre must lie within the
    series' span: DataError naming ``what`` and the first window (trial position) the series
    does not cover, as for timestamps that are not increasing or values of the wrong length.
    """
    t = check_timestamps(timestamps, what)
    v = np.asarray(values, np.float64)
    if v.ndim == 1:
        v = v[:, None]
    if v.ndim != 2 or v.shape[0] != t.size:
        raise DataError(f"{what}: data has shape {np.shape(values)}, not one row per timestamp ({t.size})")
    centres = np.asarray(centres, np.float64)
    outside = (centres < t[0]) | (centres > t[-1])
    if outside.any():
        w = int(np.flatnonzero(outside.any(axis=1))[0])
        raise DataError(f"{what} does not cover the windows: it runs from {t[0]:.6g} s to {t[-1]:.6g} s, but window "
                        f"{w} has bins centred from {centres[w, 0]:.6g} s to {centres[w, -1]:.6g} s "
                        f"({int(outside.any(axis=1).sum())} of {centres.shape[0]} windows uncovered): choose intervals "
                        "inside the behaviour's span")
    if circular:
        unwrapped = np.full_like(v, np.nan)
        for j in range(v.shape[1]):
            finite = np.isfinite(v[:, j])
            unwrapped[finite, j] = np.unwrap(v[finite, j])
        v = unwrapped
    flat = centres.ravel()
    out = np.stack([np.interp(flat, t, v[:, j]) for j in range(v.shape[1])], axis=-1)
    if circular:
        out = np.mod(out + np.pi, 2 * np.pi) - np.pi
    return out.reshape(centres.shape + (v.shape[1],))


def column_labels(name: str, k: int, spatial: bool) -> list[str]:
    """Labels of a series' ``k`` columns along ``behaviour_dim``: ``name`` for one column,
    ``name_x``/``_y``/``_z`` for a spatial series of up to three, else ``name_0 ...``."""
    if k == 1:
        return [name]
    if spatial and k <= 3:
        return [f"{name}_{axis}" for axis in "xyz"[:k]]
    return [f"{name}_{j}" for j in range(k)]


def _as_sequence(names: str | Sequence[str] | None) -> list[str]:
    if names is None:
        return []
    return [names] if isinstance(names, str) else list(names)
