"""NWB files in and out: spike times and trials to the binned recording of :mod:`analysis`, and back.

:func:`read_nwb` bins the ``Units`` table's spike times into the trials of the ``trials`` table
(the layout the Neural Latents Benchmark distributes: a boolean ``heldout`` column and
``obs_intervals`` in ``Units``, a ``split`` column and event columns such as
``move_onset_time`` in ``trials``), so a user with such a file can fit and score directly.
Files without a trials table (continuous sessions from any writer) are cut into fixed windows
of a ``TimeIntervals`` table (``epochs``, ...) or of the whole session, each window a trial;
units can be chosen by their columns, and behaviour series of the ``behavior`` processing
module are resampled onto the bins (:mod:`analysis.sessions` holds the numerics).

:func:`write_nwb` saves a recording Dataset *as binned data*: every variable with dims
``(trial, time, ...)`` (``counts``, ``rates``, ``latents``, ``behaviour``, ``observed``) becomes
a ``TimeSeries`` of shape ``(trials * bins, ...)`` (row ``trial * bins + bin``, trial-major) in
the processing module ``binned_recording``; the trial coordinates become the ``trials`` table's
columns; every other dimension's coordinates (``neuron`` with ``heldout``, ``time``,
``latent``, ...) a ``DynamicTable`` named ``<dim>_coordinates`` in the same module. The
module's description ends with a JSON record of dims, dtypes and attrs, so
:func:`read_binned_nwb` rebuilds the Dataset identically (and :func:`read_nwb`, hence
``pcsim fit``, reads such a file at its own bins). Files that are not NWB raise
:class:`~pcsim.errors.FileFormatError` naming the file. When spike times are given too (or
instead: a list of arrays, one per unit), they go to the ``Units`` table in the NWB/NLB layout,
which :func:`read_nwb` bins and :func:`read_spike_times` returns unchanged. Files are written
under a temporary name and renamed into place, so a failed write never leaves half a file.

Times in NWB files are seconds from the session start; every file has a timezone-aware
``session_start_time``.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from hdmf.backends.hdf5 import H5DataIO
from hdmf.common import DynamicTable, DynamicTableRegion, VectorData, VectorIndex
from pynwb import NWBHDF5IO, NWBFile, TimeSeries
from pynwb.epoch import TimeIntervals
from pynwb.file import Subject
from pynwb.misc import Units

from analysis.recording import check_counts, split_recording
from analysis.spikes import (
    _check_bin_width,
    _check_obs_intervals,
    _check_spike_trains,
    _coord_values,
    _covered,
    _show,
    _unit_label,
    bin_spike_times,
    to_recording,
)
from pcsim.errors import DataError, FileFormatError, OutputError, PCSimError

__all__ = ["BINNED_MODULE", "read_binned_nwb", "read_nwb", "read_spike_times", "write_nwb"]

BINNED_MODULE = "binned_recording"
"""Name of the processing module :func:`write_nwb` stores binned recordings in."""

_FORMAT = "pcsim.binned_recording"
_VERSION = 1
_LAYOUT_MARK = "\npcsim layout: "
_UNIT_SKIP = ("spike_times", "obs_intervals", "electrodes", "heldout")
_TRIAL_TIMES = ("start_time", "stop_time")


# ----------------------------------------------------------------------------- reading


def read_nwb(
    path: str | os.PathLike,
    *,
    bin_width: float,
    window: tuple[float, float] | None = None,
    align: str = "start_time",
    intervals: str = "trials",
    window_length: float | None = None,
    intervals_where: Mapping[str, Any] | None = None,
    neurons: Mapping[str, Any] | None = None,
    behaviour: str | Sequence[str] = (),
    circular: str | Sequence[str] = (),
    heldout: Any | None = None,
    split_column: str | None = "split",
    heldout_fraction: float = 0.25,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> xr.Dataset:
    """Bin an NWB file's spike times into a recording Dataset ``counts (trial, time, neuron)``.

    Reads the ``Units`` table (``spike_times``; ``obs_intervals``, a bool ``heldout`` column and
    ``electrodes`` where present) and the ``trials`` table, and counts each unit's spikes in bins
    of ``bin_width`` seconds over ``window=(t0, t1)`` seconds relative to the trials column
    ``align`` (``"start_time"``, or an event column such as NLB's ``"move_onset_time"``; bins as in
    :func:`analysis.spikes.bin_spike_times`). The trials table's ids become the ``trial``
    coordinate and its one-value-per-trial columns (``start_time``, ``stop_time``, conditions,
    event times; ``(trials, k)`` columns with a ``<name>_dim`` dimension) coordinates along
    ``trial``; ``split_column`` becomes the ``split`` coordinate (a file without a ``split``
    column is all ``"train"`` before the split policy). Units ids become ``neuron``; ``heldout``
    (neuron ids, or a bool mask; default the file's ``heldout`` column) the ``heldout``
    coordinate. Then the split policy of :func:`analysis.recording.split_recording` (the same
    as ``pcsim fit``'s) fills in what the file does not say: trials in split ``"none"`` are
    dropped, ``heldout_fraction`` of the neurons are held out at random when none is, and
    ``val`` trials, else ``test_fraction`` of the trials at random, become ``"test"`` when no
    trial is (``seed`` seeds the draws; a fraction of 0 draws nothing). Other
    one-value-per-unit columns (``quality``, ``location``, ...), and ``electrode``/``location`` of
    each unit's (first) electrode, become neuron coordinates; ``neurons`` (``{column: value or
    [values]}``, :func:`analysis.sessions.where_mask`) keeps only the units they match, before
    anything is drawn. With ``obs_intervals`` the Dataset gains the bool variable ``observed``
    ``(trial, time, neuron)``. Ragged columns are skipped with a warning. ``window=None`` is the
    whole trial (equal-length trials aligned at ``start_time``).

    **Sessions without trials.** With ``window_length`` (s) the trials are windows instead:
    the rows of the ``TimeIntervals`` table ``intervals`` (``"epochs"``, ``"trials"``, any table
    under ``/intervals``; ``"session"``: the whole recording, from its first spike to its last)
    that ``intervals_where`` keeps (e.g. ``{"tags": "wake"}``) are cut into consecutive windows
    of ``window_length`` s (:func:`analysis.sessions.cut_windows`; windows that overlap the
    file's ``invalid_times`` are dropped), each a trial aligned at its start (``window`` and
    ``align`` must then be left unset: they are refused), with coordinates ``start_time``/``stop_time`` (session s),
    ``interval`` (the row id it was cut from) and the table's one-value-per-row columns.
    ``behaviour`` names time series in the file's ``behavior`` processing module (or
    acquisition): a series' name (``"position"``), or ``"Container/series"``; each is resampled
    onto the bins (:func:`analysis.sessions.resample_series`) into the variable ``behaviour``
    ``(trial, time, behaviour_dim)``, with coordinates ``behaviour_dim`` (labels such as
    ``position_x``), ``circular`` (bool: an angle, in radians) and ``behaviour_units``.
    Series in a ``CompassDirection`` or with angle units (radians, degrees: converted) are
    circular, and so are those named in ``circular``. This works with trials too.

    A file :func:`write_nwb` stored as binned data without spike times is read through
    :func:`read_binned_nwb`: ``bin_width`` and ``align`` must be its own, ``window`` (default: all
    bins) picks whole bins of it, and the same split policy follows. Errors
    (:class:`~pcsim.errors.DataError`) name the file and the table, column, unit, trial, series
    or window at fault: no Units table, a missing ``align`` column (listed with the trials
    table's columns), an intervals table the file lacks (listed with those it has), a window
    longer than every interval, spikes that fall in no window, behaviour timestamps that are
    not increasing or do not cover the windows; a file that is not NWB (random bytes,
    truncated, HDF5 without the NWB layout) raises :class:`~pcsim.errors.FileFormatError`
    naming it.
    """
    from analysis.sessions import _as_sequence, where_mask

    path = Path(path)
    bin_width = _check_bin_width(bin_width)
    behaviour, circular = _as_sequence(behaviour), _as_sequence(circular)
    unknown = [name for name in circular if name not in behaviour]
    if unknown:
        raise DataError(f"circular names {unknown}, which are not among the behaviour series {behaviour}")
    windowed = window_length is not None or intervals != "trials"
    if windowed:
        window_length = _check_bin_width(window_length, "window_length") if window_length is not None else None
        if window_length is None:
            raise DataError(f"intervals {intervals!r} are cut into windows: give window_length (s)")
        if window is not None or align != "start_time":
            raise DataError(f"{path}: window {window} and align {align!r} place bins around trial events; windows cut from "
                            f"the intervals {intervals!r} start at their own start: leave window and align unset")
    try:
        with _open(path) as nwbfile:
            if nwbfile.units is None or "spike_times" not in nwbfile.units.colnames:
                if BINNED_MODULE not in nwbfile.processing:
                    raise DataError("no Units table with spike_times (and no binned recording written by write_nwb)")
                binned = True
            else:
                binned = False
        if binned:
            if windowed or behaviour or neurons:
                raise DataError("a binned recording written by write_nwb is read at its own trials, neurons and "
                                "variables: intervals, window_length, neurons and behaviour do not apply")
            recording = _binned_window(read_binned_nwb(path), bin_width, window, align)
            if split_column not in (None, "split"):
                if split_column not in recording.coords:
                    raise DataError(f"split column {split_column!r} not found in the trials table; available trial "
                                    f"columns: {[n for n, c in recording.coords.items() if c.dims == ('trial',)]}")
                recording = recording.assign_coords(split=("trial", recording[split_column].values.astype(str)))
            elif split_column is None and "split" in recording.coords:
                recording = recording.drop_vars("split")
            recording = split_recording(recording, heldout=heldout, heldout_fraction=heldout_fraction,
                                        test_fraction=test_fraction, seed=seed)
            recording.attrs.update(source=str(path))
            return recording
        with _open(path) as nwbfile:
            units = nwbfile.units
            spike_times = _ragged(units, "spike_times")
            obs_intervals = _ragged(units, "obs_intervals") if "obs_intervals" in units.colnames else None
            neuron_ids = np.asarray(units.id[:])
            column_heldout = (np.asarray(units["heldout"].data[:], bool) if "heldout" in units.colnames else None)
            neuron_coords, skipped_units = _table_columns(units, skip=_UNIT_SKIP, two_d=False)
            neuron_coords.update({k: v for k, v in _electrode_coords(units).items() if k not in neuron_coords})
            if windowed:
                table = _interval_rows(nwbfile, intervals, spike_times)
                invalid = nwbfile.invalid_times
                invalid = ((np.asarray(invalid["start_time"].data[:]), np.asarray(invalid["stop_time"].data[:]))
                           if invalid is not None and len(invalid.id) else None)
                skipped_trials = []
            else:
                trials = nwbfile.trials
                if trials is None or len(trials.id) == 0:
                    raise DataError("no trials table (or an empty one): read_nwb bins spikes per trial; for a session "
                                    "without trials give window_length (s) and intervals (a TimeIntervals table such "
                                    f"as 'epochs', or 'session'); this file has the interval tables {_interval_names(nwbfile)}")
                columns, skipped_trials = _table_columns(trials, skip=())
                trial_ids = np.asarray(trials.id[:])
            series = [_behaviour_series(nwbfile, name, name in circular) for name in behaviour]
            identifier, session_start = nwbfile.identifier, nwbfile.session_start_time.isoformat()
        _warn_skipped(path, skipped_units, "Units")
        _warn_skipped(path, skipped_trials, "trials")

        keep = where_mask(neuron_coords, neurons, "the Units table") if neurons else np.ones(neuron_ids.size, bool)
        if not keep.all():
            index = np.flatnonzero(keep)
            spike_times = [spike_times[i] for i in index]
            obs_intervals = None if obs_intervals is None else [obs_intervals[i] for i in index]
            neuron_ids = neuron_ids[index]
            column_heldout = None if column_heldout is None else column_heldout[index]
            neuron_coords = {k: v[index] for k, v in neuron_coords.items()}
        if column_heldout is not None and heldout is None:
            heldout = column_heldout
        split, wide = None, {}
        if windowed:
            counts = _bin_windows(path, table, intervals, intervals_where, window_length, invalid, spike_times,
                                  bin_width, neuron_ids, obs_intervals)
            align = "start_time"
        else:
            if align not in columns:
                raise DataError(f"alignment column {align!r} not found in the trials table; available trial columns: "
                                f"{list(columns) + skipped_trials}")
            if split_column is not None and split_column in columns:
                split = columns.pop(split_column)
            elif split_column not in (None, "split"):
                raise DataError(f"split column {split_column!r} not found in the trials table; available trial "
                                f"columns: {list(columns) + skipped_trials}")
            starts, stops = columns.pop("start_time"), columns.pop("stop_time")
            wide = {name: columns.pop(name) for name in [n for n, v in columns.items() if v.ndim == 2]}
            counts = bin_spike_times(
                spike_times, starts, stops, bin_width=bin_width, window=window, align_times=align,
                neuron_ids=neuron_ids, trial_ids=trial_ids, trial_coords=columns, obs_intervals=obs_intervals,
            )
        extras = {"behaviour": _resampled_behaviour(series, counts, align)} if series else {}
        recording = to_recording(counts, heldout=heldout, split=split, **extras)
        reserved = set(recording.coords) | set(recording.data_vars)
        recording = recording.assign_coords(
            {name: ("neuron", values, _column_attrs(name, "Units")) for name, values in neuron_coords.items()
             if name not in reserved})
        # every trial column is attached before the split policy drops the trials in no split
        recording = recording.assign_coords({name: (("trial", f"{name}_dim"), values, _column_attrs(name, "trials"))
                                             for name, values in wide.items()})
        recording = split_recording(recording, heldout_fraction=heldout_fraction, test_fraction=test_fraction,
                                    seed=seed)
    except DataError as error:
        raise _in_file(path, error) from error
    recording.attrs.update(source=str(path), nwb_identifier=identifier, nwb_session_start_time=session_start)
    if windowed:
        recording.attrs.update(intervals=intervals, window_length=float(window_length))
    return recording


# ----------------------------------------------------------------------------- sessions without trials


def _interval_names(nwbfile: NWBFile) -> list[str]:
    """Names of the file's TimeIntervals tables (``epochs``, ``trials``, ``invalid_times`` and any under ``/intervals``)."""
    names = [name for name in ("epochs", "trials", "invalid_times") if getattr(nwbfile, name) is not None]
    return names + [name for name in (nwbfile.intervals or {}) if name not in names]


def _interval_rows(nwbfile: NWBFile, name: str, spike_times: list[np.ndarray]) -> dict[str, Any]:
    """The rows of the intervals table ``name`` as ``{column: values}`` (``id``, ``start_time``,
    ``stop_time``, scalar columns as arrays, ragged ones such as ``tags`` as lists of arrays);
    ``"session"`` is one row spanning the spikes. DataError naming the table if it does not exist."""
    if name == "session":
        trains = [t for t in spike_times if t.size]
        if not trains:
            raise DataError("the Units table has no spikes, so the session has no extent to cut windows from")
        return {"id": np.array([0]), "start_time": np.array([min(float(t[0]) for t in trains)]),
                "stop_time": np.array([np.nextafter(max(float(t[-1]) for t in trains), np.inf)])}
    table = getattr(nwbfile, name, None) if name in ("epochs", "trials", "invalid_times") else None
    if table is None:
        table = (nwbfile.intervals or {}).get(name)
    if table is None:
        raise DataError(f"no TimeIntervals table {name!r} to cut windows from; the file has {_interval_names(nwbfile)} "
                        "(or use 'session' for the whole recording)")
    if len(table.id) == 0:
        raise DataError(f"the TimeIntervals table {name!r} is empty")
    rows: dict[str, Any] = {"id": np.asarray(table.id[:])}
    for column in table.colnames:
        data = table[column]
        if isinstance(data, VectorIndex):
            rows[column] = [_coord_values(np.asarray(v)) for v in _ragged(table, column)]
        elif not isinstance(data, DynamicTableRegion):
            values = _coord_values(np.asarray(data.data[:]))
            if values.ndim == 1 and values.dtype != object:
                rows[column] = values
    return rows


def _bin_windows(path: Path, rows: dict[str, Any], name: str, where: Mapping[str, Any] | None, length: float,
                 invalid: tuple[np.ndarray, np.ndarray] | None, spike_times: list[np.ndarray], bin_width: float,
                 neuron_ids: np.ndarray, obs_intervals: list[np.ndarray] | None) -> xr.DataArray:
    """Counts ``(trial, time, neuron)`` of the windows of ``length`` s cut from the rows of ``name``
    that ``where`` keeps (trial = window), minus those overlapping ``invalid`` intervals."""
    from analysis.sessions import cut_windows, drop_overlapping, where_mask

    what = "the whole session" if name == "session" else f"TimeIntervals table {name!r}"
    keep = where_mask(rows, where, what) if where else np.ones(rows["id"].size, bool)
    starts, row = cut_windows(rows["start_time"][keep], rows["stop_time"][keep], length, what)
    row = np.flatnonzero(keep)[row]
    if invalid is not None:
        valid = drop_overlapping(starts, length, *invalid)
        if not valid.any():
            raise DataError(f"every one of the {starts.size} windows cut from {what} overlaps the file's invalid_times")
        starts, row = starts[valid], row[valid]
    trains = _check_spike_trains(spike_times, neuron_ids=neuron_ids)
    inside = sum(int((np.searchsorted(t, starts + length, side="left") - np.searchsorted(t, starts, side="left")).sum())
                 for t in trains)
    total = sum(t.size for t in trains)
    if total and inside == 0:
        first = min(float(t[0]) for t in trains if t.size)
        last = max(float(t[-1]) for t in trains if t.size)
        raise DataError(f"no spike of the Units table falls in any of the {starts.size} windows cut from {what} "
                        f"({float(starts.min()):.6g} s to {float(starts.max() + length):.6g} s): the {total} spike "
                        f"times run from {first:.6g} s to {last:.6g} s, outside every interval (were they stored in "
                        "another unit, or relative to another start?)")
    coords = {"interval": rows["id"][row]}
    coords.update({k: v[row] for k, v in rows.items()
                   if k not in ("id", "start_time", "stop_time") and not isinstance(v, list)})
    with warnings.catch_warnings():
        # a short epoch of a long session looks like spike times in ms to bin_spike_times' heuristic;
        # the check above has already refused the one real failure, no spike in any window
        warnings.filterwarnings("ignore", message=r".*stored in milliseconds", category=UserWarning)
        return bin_spike_times(trains, starts, starts + length, bin_width=bin_width, window=(0.0, length),
                               neuron_ids=neuron_ids, trial_coords=coords, obs_intervals=obs_intervals)


def _behaviour_containers(nwbfile: NWBFile) -> list[tuple[str, Any]]:
    """``(path, TimeSeries)`` of every series in the ``behavior`` processing module(s) and acquisition,
    including those inside containers (``Position``, ``CompassDirection``, ``BehavioralTimeSeries``)."""
    places = [(f"processing/{name}", module.data_interfaces) for name, module in nwbfile.processing.items()
              if name.lower() in ("behavior", "behaviour")]
    places.append(("acquisition", nwbfile.acquisition))
    found = []
    for prefix, interfaces in places:
        for name, item in interfaces.items():
            if isinstance(item, TimeSeries):
                found.append((f"{prefix}/{name}", item, False))
                continue
            children = getattr(item, "spatial_series", None) or getattr(item, "time_series", None) or {}
            angular = type(item).__name__ == "CompassDirection"
            found.extend((f"{prefix}/{name}/{child}", series, angular) for child, series in children.items())
    return found


def _behaviour_series(nwbfile: NWBFile, name: str, circular: bool) -> dict[str, Any]:
    """The behaviour series ``name`` read into memory: path, label, timestamps (s), values, unit, circular."""
    from analysis.sessions import ANGLE_UNITS

    found = _behaviour_containers(nwbfile)
    matches = [(p, s, a) for p, s, a in found if p.split("/")[-1] == name or p.endswith("/" + name)]
    if not matches:
        raise DataError(f"no behaviour series {name!r}: the file's behaviour module and acquisition hold "
                        f"{[p for p, _, _ in found] or 'no time series'}")
    if len(matches) > 1:
        raise DataError(f"behaviour series {name!r} is ambiguous: {[p for p, _, _ in matches]}; name it as "
                        "'Container/series'")
    where, ts, angular = matches[0]
    values = np.asarray(ts.data[:], np.float64) * float(ts.conversion) + float(getattr(ts, "offset", 0.0) or 0.0)
    if ts.timestamps is not None:
        timestamps = np.asarray(ts.timestamps[:] if hasattr(ts.timestamps, "__getitem__") else ts.timestamps)
    else:
        timestamps = float(ts.starting_time) + np.arange(values.shape[0]) / float(ts.rate)
    unit = str(ts.unit or "")
    factor = ANGLE_UNITS.get(unit.strip().lower())
    circular = circular or angular or factor is not None
    if circular:
        values, unit = values * (factor or 1.0), "rad"
    return {"path": where, "name": name.split("/")[-1], "timestamps": timestamps, "values": values,
            "unit": unit, "circular": circular, "spatial": type(ts).__name__ == "SpatialSeries"}


def _resampled_behaviour(series: list[dict[str, Any]], counts: xr.DataArray, align: str) -> xr.DataArray:
    """The behaviour series resampled at the bin centres of ``counts``: ``(trial, time, behaviour_dim)``."""
    from analysis.sessions import column_labels, resample_series

    centres = counts[align].values.astype(np.float64)[:, None] + counts["time"].values[None, :]
    blocks, labels, circular, units = [], [], [], []
    for s in series:
        block = resample_series(s["timestamps"], s["values"], centres, circular=s["circular"],
                                what=f"behaviour series {s['path']!r}")
        blocks.append(block)
        labels += column_labels(s["name"], block.shape[2], s["spatial"])
        circular += [s["circular"]] * block.shape[2]
        units += [s["unit"]] * block.shape[2]
    if len(set(labels)) != len(labels):
        raise DataError(f"behaviour series give repeated labels {labels}; name each series once")
    unit = units[0] if len(set(units)) == 1 else "see behaviour_units"
    return xr.DataArray(
        np.concatenate(blocks, axis=2), dims=("trial", "time", "behaviour_dim"),
        coords={"trial": counts["trial"].values, "time": counts["time"].values,
                "behaviour_dim": ("behaviour_dim", labels, {"units": "", "long_name": "behaviour variable"}),
                "circular": ("behaviour_dim", np.array(circular, bool),
                             {"units": "", "long_name": "behaviour variable is an angle (rad), decoded as cos/sin"}),
                "behaviour_units": ("behaviour_dim", units, {"units": "", "long_name": "units of each behaviour variable"})},
        attrs={"units": unit, "long_name": "behaviour resampled at the bin centres (linear interpolation; angles "
                                           "along their unwrapped trajectory)",
               "sources": ", ".join(s["path"] for s in series)})


def read_binned_nwb(path: str | os.PathLike) -> xr.Dataset:
    """Read back a recording Dataset that :func:`write_nwb` stored as binned data, identical to the one written.

    Returns the same variables (``counts`` ``(trial, time, neuron)`` int64 counts per bin, and
    ``rates``, ``latents``, ``behaviour``, ``observed`` where written), coordinates (``time`` in s,
    ``heldout``, ``split``, trial conditions, ...) with their dtypes and attrs, and the Dataset's
    attrs (``bin_width`` in s, ``align``, ...). A file without the ``binned_recording`` module
    raises :class:`~pcsim.errors.DataError` (bin its spike times with :func:`read_nwb` instead).
    """
    path = Path(path)
    try:
        with _open(path) as nwbfile:
            if BINNED_MODULE not in nwbfile.processing:
                raise DataError(f"no processing module {BINNED_MODULE!r}: the file holds no binned recording written by "
                                "write_nwb; bin its spike times with read_nwb(path, bin_width=..., window=...)")
            module = nwbfile.processing[BINNED_MODULE]
            layout = _parse_layout(module.description)
            sizes = layout["sizes"]
            n_rows = sizes["trial"] * sizes["time"]
            data_vars = {}
            for name, spec in layout["variables"].items():
                values = np.asarray(module[name].data[:])
                values = values.reshape((sizes["trial"], sizes["time"]) + values.shape[1:])
                if len(values.shape) != len(spec["dims"]) or values.shape[0] * values.shape[1] != n_rows:
                    raise DataError(f"TimeSeries {name!r} has shape {values.shape}, not the layout's dims {spec['dims']}")
                data_vars[name] = (tuple(spec["dims"]), values.astype(spec["dtype"]), _decode(spec["attrs"]))
            coords = {}
            for name, spec in layout["coords"].items():
                table = spec["table"]
                if table is None:
                    values = np.asarray(_decode(spec["value"]))
                elif table == "trials" and name == "trial" and layout["trial_index"] == "id":
                    values = np.asarray(nwbfile.trials.id[:])
                elif table == "trials":
                    values = np.asarray(nwbfile.trials[name].data[:])
                else:
                    values = np.asarray(module[table][name].data[:])
                coords[name] = (tuple(spec["dims"]), values.astype(spec["dtype"]), _decode(spec["attrs"]))
    except DataError as error:
        raise _in_file(path, error) from error
    return xr.Dataset(data_vars, coords=coords, attrs=_decode(layout["attrs"]))


def _column_attrs(name: str, table: str) -> dict[str, str]:
    """``units`` and ``long_name`` of a coordinate read from an NWB table's column: ``*_time``
    columns are session times in s (NWB's convention), others labels, ids or conditions."""
    timed = name == "time" or name.endswith("_time")
    return {"units": "s" if timed else "", "long_name": f"{table} column {name!r}"}


def _in_file(path: Path, error: DataError) -> DataError:
    """``error`` (same class) with its message prefixed by the file's path, unless it names it first already."""
    message = str(error)
    return error if message.startswith(f"{path}:") else type(error)(f"{path}: {message}")


def _binned_window(ds: xr.Dataset, bin_width: float, window: tuple[float, float] | None, align: str) -> xr.Dataset:
    """The bins of a binned recording ``ds`` (:func:`read_binned_nwb`) that ``window`` (s, default all) covers.

    A binned file cannot be re-binned or re-aligned: ``bin_width`` (s) must be the file's and
    ``align`` its alignment; ``window`` must fall on the file's bin edges, inside its bins.
    """
    own = float(ds.attrs["bin_width"])
    if not np.isclose(bin_width, own, rtol=1e-9, atol=0):
        raise DataError(f"bin_width {bin_width:.6g} s differs from the binned recording's {own:.6g} s; a binned file "
                        "is read at its own bin width")
    if ds.attrs.get("align", "start_time") != align:
        raise DataError(f"align {align!r} differs from the binned recording's alignment {ds.attrs.get('align')!r}; "
                        "a binned file is read at its own alignment")
    if window is None:
        return ds
    t0, t1 = (float(t) for t in window)
    centre = ds["time"].values.astype(np.float64)
    keep = (centre - own / 2 >= t0 - 1e-9) & (centre + own / 2 <= t1 + 1e-9)
    if keep.sum() * own < (t1 - t0) - 1e-9:
        raise DataError(f"window [{t0 * 1e3:.6g}, {t1 * 1e3:.6g}] ms is not made of the binned recording's bins, "
                        f"which cover [{(centre[0] - own / 2) * 1e3:.6g}, {(centre[-1] + own / 2) * 1e3:.6g}] ms in "
                        f"{own * 1e3:.6g} ms bins")
    return ds.isel(time=np.flatnonzero(keep))


def read_spike_times(path: str | os.PathLike) -> list[np.ndarray]:
    """Return an NWB file's spike times: one float64 array of session times (s) per unit, in ``Units`` table order.

    The unit ids are :func:`read_nwb`'s ``neuron`` coordinate. Raises
    :class:`~pcsim.errors.DataError` naming the file when it has no ``Units`` table with spike times.
    """
    path = Path(path)
    with _open(path) as nwbfile:
        if nwbfile.units is None or "spike_times" not in nwbfile.units.colnames:
            raise DataError(f"{path}: no Units table with spike_times")
        return [s.astype(np.float64) for s in _ragged(nwbfile.units, "spike_times")]


# ----------------------------------------------------------------------------- writing


def write_nwb(
    data: xr.Dataset | Sequence[Any],
    path: str | os.PathLike,
    *,
    spike_times: Sequence[Any] | None = None,
    trials: Mapping[str, Any] | None = None,
    neuron_ids: Any | None = None,
    heldout: Any | None = None,
    obs_intervals: Sequence[Any] | None = None,
    resolution: float | None = None,
    session_description: str | None = None,
    identifier: str | None = None,
    session_start_time: datetime | str | None = None,
    subject: Subject | Mapping[str, Any] | None = None,
) -> Path:
    """Save a binned recording Dataset, or spike times, as an NWB file (atomically); return its path.

    ``data`` is either a recording Dataset (``counts`` ``(trial, time, neuron)`` and any further
    ``(trial, time, ...)`` variables; stored as binned data, read back by :func:`read_binned_nwb`)
    or spike times: a sequence of 1-D arrays of session times (s), one per unit. Spike times
    (``data`` itself, or ``spike_times=`` beside a Dataset) go to the ``Units`` table with a bool
    ``heldout`` column and, when given, ``obs_intervals`` (per unit an ``(n, 2)`` array of
    ``[start, stop]`` s), in the NLB layout :func:`read_nwb` bins. With a Dataset they must give
    its counts when binned at the Dataset's absolute trial times (its ``align`` trial
    coordinate), and ``neuron_ids``/``heldout``/``trials`` come from its coordinates; alone,
    ``trials`` maps ``start_time``, ``stop_time`` (s, ``(trials,)``) and any condition columns to
    arrays. Units need ``resolution``: the smallest possible spike-time difference (s), e.g.
    ``1/30000``. ``session_start_time`` must be timezone-aware (default: the Dataset's
    ``nwb_session_start_time`` attr, else now, UTC); ``identifier`` defaults to a fresh UUID;
    ``subject`` (a pynwb ``Subject`` or its fields) is optional, but NWB Inspector counts a
    missing subject as critical.
    """
    path = Path(path)
    attrs = dict(data.attrs) if isinstance(data, xr.Dataset) else {}
    nwbfile = NWBFile(
        session_description=session_description
        or ("Binned spike counts written by pcsim (analysis.nwb.write_nwb)" if isinstance(data, xr.Dataset)
            else "Spike times written by pcsim (analysis.nwb.write_nwb)"),
        identifier=identifier or str(uuid.uuid4()),
        session_start_time=_session_start(session_start_time, attrs),
        subject=_subject(subject),
    )
    if isinstance(data, xr.Dataset):
        if trials is not None or neuron_ids is not None or heldout is not None:
            raise DataError("write_nwb takes trials, neuron ids and heldout from the Dataset's coordinates; "
                            "do not pass trials=, neuron_ids= or heldout= with a Dataset")
        align_abs = _add_binned(nwbfile, data)
        if spike_times is not None:
            if align_abs is None:
                raise DataError(
                    f"spike_times need the recording's absolute trial times: the Dataset has no trial coordinate "
                    f"named by its align attr ({data.attrs.get('align')!r}) holding session times in s "
                    "(bin_spike_times and read_nwb add it)")
            trains = _check_spike_trains(spike_times, neuron_ids=data["neuron"].values)
            _check_spikes_match_counts(trains, data, align_abs, obs_intervals)
            extra = {name: c.values for name, c in data.coords.items()
                     if c.dims == ("neuron",) and name not in ("neuron", "heldout")}
            _add_units(nwbfile, trains, data["neuron"].values, data["heldout"].values if "heldout" in data.coords
                       else None, obs_intervals, resolution, extra)
    elif isinstance(data, Sequence) and not isinstance(data, (str, bytes)):
        if spike_times is not None:
            raise DataError("pass spike times either as data or as spike_times=, not both")
        trains = _check_spike_trains(data, neuron_ids=neuron_ids)
        ids = np.arange(len(trains)) if neuron_ids is None else np.asarray(neuron_ids)
        _add_units(nwbfile, trains, ids, heldout, obs_intervals, resolution, {})
        if trials is not None:
            nwbfile.trials = _trials_table(trials)
    else:
        raise DataError(f"write_nwb needs a recording Dataset or a sequence of spike-time arrays, got {type(data).__name__}")
    _write_atomically(nwbfile, path)
    return path


# ----------------------------------------------------------------------------- binned layout


def _add_binned(nwbfile: NWBFile, ds: xr.Dataset) -> np.ndarray | None:
    """Store ``ds`` in ``nwbfile`` (trials table + processing module); return the absolute alignment times if known."""
    if "counts" not in ds.data_vars:
        raise DataError(f"the Dataset has no 'counts' variable (variables: {list(ds.data_vars)})")
    if ds["counts"].dims != ("trial", "time", "neuron"):
        raise DataError(f"counts must have dims ('trial', 'time', 'neuron'), got {ds['counts'].dims}")
    check_counts(ds["counts"].values, "counts", labels=ds["counts"])
    bin_width = _check_bin_width(ds.attrs.get("bin_width"), "attrs['bin_width']")
    if "time" not in ds.coords or ds["time"].dims != ("time",):
        raise DataError("the Dataset has no 'time' coordinate (bin centres in s relative to the alignment event)")
    time = ds["time"].values.astype(np.float64)
    if time.size > 1 and not np.allclose(np.diff(time), bin_width, rtol=0, atol=1e-9):
        raise DataError(f"the time coordinate is not spaced by bin_width ({bin_width} s)")
    for name in list(ds.variables) + list(ds.attrs):
        if "/" in str(name):
            raise DataError(f"name {name!r} contains '/', which NWB does not allow in names")
    n_trials, n_bins = ds.sizes["trial"], ds.sizes["time"]
    first_edge, last_edge = time[0] - bin_width / 2, time[-1] + bin_width / 2

    align = ds.attrs.get("align")
    align_abs = None
    if isinstance(align, str) and align in ds.coords and ds[align].dims == ("trial",) \
            and np.issubdtype(ds[align].dtype, np.number) and np.isfinite(ds[align].values).all():
        align_abs = ds[align].values.astype(np.float64)
        grid = align_abs
    else:  # no absolute times: lay the trials end to end from t = 0
        grid = np.arange(n_trials) * (n_bins * bin_width) - first_edge
    starts = ds["start_time"].values.astype(float) if "start_time" in ds.coords else grid + first_edge
    stops = ds["stop_time"].values.astype(float) if "stop_time" in ds.coords else np.maximum(starts, grid + last_edge)

    trial_index = "id" if np.issubdtype(ds["trial"].dtype, np.integer) else "column"
    coords_spec: dict[str, dict] = {}
    trial_columns = [VectorData(name="start_time", description="trial start (s)", data=starts),
                     VectorData(name="stop_time", description="trial stop (s)", data=stops)]
    dim_tables: dict[str, list[VectorData]] = {}
    for name, coord in ds.coords.items():
        spec = {"dims": list(coord.dims), "dtype": coord.dtype.str, "attrs": _encode(coord.attrs, f"{name}.attrs")}
        if coord.dims == ():
            spec.update(table=None, value=_encode(coord.values.item(), f"coordinate {name!r}"))
        elif len(coord.dims) > 2 or (len(coord.dims) == 2 and coord.dims[1] in ("trial", "time", "neuron")):
            raise DataError(f"coordinate {name!r} has dims {coord.dims}; write_nwb stores coordinates along one "
                            "dimension (plus at most one extra); make it a data variable")
        elif coord.dims[0] == "trial":
            spec["table"] = "trials"
            if name in _TRIAL_TIMES:
                pass  # the table's own start_time / stop_time columns
            elif name == "trial" and trial_index == "id":
                pass  # the table's ids
            elif name in ("id", "tags", "timeseries"):
                raise DataError(f"trial coordinate {name!r} clashes with a reserved column of the NWB trials table")
            else:
                trial_columns.append(VectorData(name=name, description=_describe(coord, name), data=_column_data(coord, name)))
        else:
            spec["table"] = f"{coord.dims[0]}_coordinates"
            dim_tables.setdefault(coord.dims[0], []).append(
                VectorData(name=name, description=_describe(coord, name), data=_column_data(coord, name)))
        coords_spec[name] = spec
    trial_ids = ds["trial"].values if trial_index == "id" else np.arange(n_trials)
    nwbfile.trials = TimeIntervals(name="trials", description="trials of the binned recording",
                                   id=trial_ids.astype(np.int64), columns=trial_columns)

    contents: list[Any] = []  # the module's description holds the layout, so it is created last
    for dim, columns in dim_tables.items():
        contents.append(DynamicTable(name=f"{dim}_coordinates", description=f"coordinates along the recording's {dim!r} dimension",
                                id=np.arange(ds.sizes[dim]), columns=columns))

    stamps = (grid[:, None] + time[None, :]).ravel()
    regular = stamps.size < 2 or np.allclose(np.diff(stamps), bin_width, rtol=0, atol=1e-9)
    variables_spec: dict[str, dict] = {}
    first_series = None
    for name in ["counts"] + [v for v in ds.data_vars if v != "counts"]:
        var = ds[name]
        if var.dims[:2] != ("trial", "time"):
            raise DataError(f"variable {name!r} has dims {var.dims}; write_nwb stores variables with dims "
                            "('trial', 'time', ...)")
        values = var.values.reshape((n_trials * n_bins,) + var.shape[2:])
        if values.dtype == bool:
            values = values.astype(np.uint8)
        elif values.dtype.kind not in "iuf":
            raise DataError(f"variable {name!r} has dtype {values.dtype}; write_nwb stores numbers and booleans")
        timing: dict[str, Any]
        if regular:
            timing = {"starting_time": float(stamps[0]), "rate": 1.0 / bin_width}
        else:
            timing = {"timestamps": stamps if first_series is None else first_series}
        series = TimeSeries(
            name=name, data=H5DataIO(values, compression="gzip"), unit=str(var.attrs.get("units") or "n.a."),
            description=(f"{var.attrs.get('long_name') or name}: dims {var.dims}, trials concatenated "
                         f"(row = trial * {n_bins} + bin)"),
            continuity="step", **timing)
        contents.append(series)
        if first_series is None:
            first_series = series
        variables_spec[name] = {"dims": list(var.dims), "dtype": var.dtype.str, "attrs": _encode(var.attrs, f"{name}.attrs")}

    layout = {"format": _FORMAT, "version": _VERSION, "sizes": dict(ds.sizes), "trial_index": trial_index,
              "coords": coords_spec, "variables": variables_spec, "attrs": _encode(ds.attrs, "attrs")}
    module = nwbfile.create_processing_module(name=BINNED_MODULE, description=(
        f"Binned recording written by pcsim (analysis.nwb.write_nwb): {n_trials} trials of {n_bins} bins of "
        f"{bin_width} s; each variable is a TimeSeries of trials concatenated, coordinates are the trials "
        f"table's columns and the '<dim>_coordinates' tables.{_LAYOUT_MARK}{json.dumps(layout)}"))
    for item in contents:
        module.add(item)
    return align_abs


def _parse_layout(description: str) -> dict:
    if _LAYOUT_MARK not in description:
        raise DataError(f"processing module {BINNED_MODULE!r} has no pcsim layout record in its description")
    layout = json.loads(description.split(_LAYOUT_MARK, 1)[1])
    if layout.get("format") != _FORMAT or layout.get("version", 0) > _VERSION:
        raise DataError(f"unknown binned layout {layout.get('format')!r} version {layout.get('version')!r}")
    return layout


def _check_spikes_match_counts(trains: list[np.ndarray], ds: xr.Dataset, align_abs: np.ndarray,
                               obs_intervals: Sequence[Any] | None) -> None:
    """The Units table and the binned counts of one file must tell the same story."""
    bw, time = float(ds.attrs["bin_width"]), ds["time"].values
    window = (time[0] - bw / 2, time[-1] + bw / 2)
    binned = bin_spike_times(trains, align_abs, bin_width=bw, window=window, neuron_ids=ds["neuron"].values,
                             obs_intervals=obs_intervals).values
    differ = np.argwhere(binned != ds["counts"].values)
    if differ.size:
        t, b, n = differ[0]
        raise DataError(f"spike_times do not give the recording's counts: neuron {_show(ds['neuron'].values[n])}, trial "
                        f"{_show(ds['trial'].values[t])}, time {_show(time[b])} s has {binned[t, b, n]} spikes but counts "
                        f"{ds['counts'].values[t, b, n]} ({len(differ)} bins differ)")


def _describe(coord: xr.DataArray, name: str) -> str:
    label = coord.attrs.get("long_name") or f"coordinate {name!r}"
    units = coord.attrs.get("units")
    return f"{label} ({units})" if units else str(label)


def _column_data(coord: xr.DataArray, name: str) -> Any:
    values = coord.values
    if values.dtype.kind in "biuf":
        return values
    if values.dtype.kind == "U" or (values.dtype == object and all(isinstance(v, str) for v in values.ravel())):
        return values.tolist()
    raise DataError(f"coordinate {name!r} has dtype {values.dtype}; NWB tables store numbers, booleans and strings")


# ----------------------------------------------------------------------------- Units and trials


def _add_units(nwbfile: NWBFile, trains: list[np.ndarray], neuron_ids: np.ndarray, heldout: Any | None,
               obs_intervals: Sequence[Any] | None, resolution: float | None, extra: Mapping[str, np.ndarray]) -> None:
    if resolution is None:
        raise DataError("writing spike times needs resolution= (s): the smallest possible difference between two "
                        "spike times, e.g. 1/30000 for a 30 kHz recording or the simulation time step")
    resolution = float(resolution)
    if not (np.isfinite(resolution) and resolution > 0):
        raise DataError(f"resolution must be a positive number of seconds, got {resolution!r}")
    n = len(trains)
    if neuron_ids.shape != (n,) or not np.issubdtype(neuron_ids.dtype, np.integer):
        raise DataError(f"Units ids must be {n} integers (one per unit), got {neuron_ids.dtype} {neuron_ids.shape}")
    if np.unique(neuron_ids).size != n:
        raise DataError("neuron ids must be unique")
    mask = np.zeros(n, bool) if heldout is None else np.asarray(heldout)
    if mask.shape != (n,) or mask.dtype != bool:
        raise DataError(f"heldout must be a bool mask with one entry per unit ({n}), got {mask.dtype} {mask.shape}")
    if obs_intervals is not None:
        obs_intervals = _check_obs_intervals(obs_intervals, n, neuron_ids)
        for u, (train, intervals) in enumerate(zip(trains, obs_intervals)):
            outside = np.flatnonzero(~_covered(intervals, train, train))
            if outside.size:
                j = outside[0]
                raise DataError(f"{_unit_label(u, neuron_ids)}: spike {j} at {_show(train[j])} s lies outside the "
                                f"unit's obs_intervals ({outside.size} spike(s) in all); a unit has no spikes while it "
                                "is not observed: widen its intervals or drop those spikes")
    units = Units(name="units", description="spike times of the recorded units", resolution=resolution)
    units.add_column(name="heldout", description="unit is held out: models predict it without seeing it on test trials")
    for name, values in extra.items():
        units.add_column(name=name, description=f"coordinate {name!r} of the recording's neurons")
    for u in range(n):
        row = {"spike_times": trains[u], "heldout": bool(mask[u]), "id": int(neuron_ids[u])}
        if obs_intervals is not None:
            row["obs_intervals"] = obs_intervals[u]
        row.update({name: values[u].item() if hasattr(values[u], "item") else values[u] for name, values in extra.items()})
        units.add_unit(**row)
    nwbfile.units = units


def _trials_table(trials: Mapping[str, Any]) -> TimeIntervals:
    missing = [c for c in _TRIAL_TIMES if c not in trials]
    if missing:
        raise DataError(f"trials is missing the column(s) {missing}; it has {list(trials)}")
    n = np.asarray(trials["start_time"]).shape[0] if np.ndim(trials["start_time"]) else -1
    columns = []
    for name, values in trials.items():
        if name == "id":
            continue
        a = _coord_values(np.asarray(values))
        if a.ndim not in (1, 2) or a.shape[0] != n:
            raise DataError(f"trials[{name!r}] must have one entry per trial ({n}), got shape {a.shape}")
        if name in _TRIAL_TIMES and not (np.issubdtype(a.dtype, np.number) and np.isfinite(a).all()):
            raise DataError(f"trials[{name!r}] must be finite times in s")
        if a.dtype.kind not in "biufU":
            raise DataError(f"trials[{name!r}] has dtype {a.dtype}; NWB tables store numbers, booleans and strings")
        description = f"trial {'start' if name == 'start_time' else 'stop'} (s)" if name in _TRIAL_TIMES \
            else f"trial column {name!r}"
        columns.append(VectorData(name=name, description=description, data=a.tolist() if a.dtype.kind == "U" else a))
    empty = np.flatnonzero(np.asarray(trials["stop_time"], float) <= np.asarray(trials["start_time"], float))
    if empty.size:
        raise DataError(f"trial {empty[0]} is empty: its stop_time is not after its start_time")
    ids = np.asarray(trials.get("id", np.arange(n)), np.int64)
    return TimeIntervals(name="trials", description="trials of the recording", id=ids, columns=columns)


# ----------------------------------------------------------------------------- helpers


@contextmanager
def _open(path: Path) -> Iterator[NWBFile]:
    """The NWB file at ``path``, open for reading; a file that is not one raises FileFormatError naming it.

    Opening and reading the file's layout fail for random bytes, truncated copies and HDF5
    files without the NWB layout; the data are read lazily, so HDF5 errors (``OSError``,
    ``KeyError``) raised while the caller reads them are reported the same way.
    """
    if not path.is_file():
        raise DataError(f"{path}: no such NWB file")
    try:
        io = NWBHDF5IO(str(path), mode="r")
    except Exception as error:  # h5py / hdmf raise OSError, TypeError, ValueError, KeyError ... for a non-NWB file
        raise FileFormatError(f"{path}: not a readable NWB (HDF5) file: {_reason(error)}") from error
    try:
        try:
            nwbfile = io.read()
        except Exception as error:
            raise FileFormatError(f"{path}: HDF5 file without a readable NWB layout: {_reason(error)}") from error
        try:
            yield nwbfile
        except (OSError, KeyError) as error:
            if isinstance(error, PCSimError):
                raise
            raise FileFormatError(f"{path}: damaged NWB file (reading its data failed): {_reason(error)}") from error
    finally:
        try:
            io.close()
        except Exception:  # closing a damaged file may fail again; the first error is the one to report
            pass


def _reason(error: BaseException) -> str:
    """``'TypeError: ...'``, the first line of an exception, for an error message."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _write_atomically(nwbfile: NWBFile, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp.nwb")  # hidden; .nwb keeps pynwb quiet
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with NWBHDF5IO(str(tmp), mode="w") as io:
            io.write(nwbfile)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and not isinstance(error, PCSimError):
            raise OutputError(f"{path}: cannot write the NWB file: {_reason(error)}") from error
        raise


def _ragged(table: DynamicTable, name: str) -> list[np.ndarray]:
    """A ragged column as one array per row, split vectorised from the flat data and its end indices."""
    index = table[name]
    ends = np.asarray(index.data[:], dtype=np.int64)
    flat = np.asarray(index.target.data[:])
    return np.split(flat, ends[:-1]) if ends.size else []


def _table_columns(table: DynamicTable, skip: Sequence[str], two_d: bool = True) -> tuple[dict[str, np.ndarray], list[str]]:
    """A table's one-value-per-row columns (``(rows,)``, or ``(rows, k)`` with ``two_d``) as arrays, and the skipped names."""
    columns, skipped = {}, []
    for name in table.colnames:
        if name in skip:
            continue
        column = table[name]
        if isinstance(column, (VectorIndex, DynamicTableRegion)):
            skipped.append(name)
            continue
        values = _coord_values(np.asarray(column.data[:]))
        if values.dtype == object or values.ndim > (2 if two_d else 1):
            skipped.append(name)
            continue
        columns[name] = values
    return columns, skipped


def _electrode_coords(units: Units) -> dict[str, np.ndarray]:
    """``electrode`` (id) and ``location`` of each unit's first electrode, when the Units table links electrodes."""
    if "electrodes" not in units.colnames:
        return {}
    index = units["electrodes"]
    ends = np.asarray(index.data[:], dtype=np.int64)
    rows = np.asarray(index.target.data[:], dtype=np.int64)
    per_unit = np.diff(np.r_[0, ends])
    if (per_unit == 0).any():
        return {}
    if (per_unit > 1).any():
        warnings.warn(f"{int((per_unit > 1).sum())} unit(s) have several electrodes; the first is used for "
                      "their electrode/location coordinates", stacklevel=3)
    first = rows[np.r_[0, ends[:-1]]]
    table = index.target.table
    coords = {"electrode": np.asarray(table.id[:])[first]}
    if "location" in table.colnames:
        coords["location"] = _coord_values(np.asarray(table["location"].data[:]))[first]
    return coords


def _warn_skipped(path: Path, names: list[str], table: str) -> None:
    if names:
        warnings.warn(f"{path}: {table} columns {names} hold more than one value per row (ragged, references or "
                      "objects) and are not read as coordinates", stacklevel=3)


def _session_start(value: datetime | str | None, attrs: Mapping[str, Any]) -> datetime:
    if value is None:
        value = attrs.get("nwb_session_start_time") or datetime.now(timezone.utc)
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise DataError(f"session_start_time must be a timezone-aware datetime, got {value!r}")
    return value


def _subject(subject: Subject | Mapping[str, Any] | None) -> Subject | None:
    if subject is None or isinstance(subject, Subject):
        return subject
    return Subject(**dict(subject))


def _encode(value: Any, where: str) -> Any:
    """Attrs to JSON: scalars, strings, lists and arrays (tagged, so they come back as arrays)."""
    if isinstance(value, Mapping):
        return {str(k): _encode(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"__ndarray__": _encode(value.tolist(), where), "dtype": value.dtype.str}
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)):
        return [_encode(v, where) for v in value]
    raise DataError(f"{where} is a {type(value).__name__}, which write_nwb cannot store (use numbers, strings, "
                    "lists or arrays)")


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "__ndarray__" in value:
        return np.asarray(value["__ndarray__"], dtype=value["dtype"])
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value
