"""The recording every model and metric of :mod:`analysis` reads: validated once, at the boundary.

:func:`as_recording` checks a recording Dataset (the layout of :mod:`analysis`) and returns a
:class:`Recording`, the plain arrays the numerics see; a :class:`Recording` passed again is
not re-checked, so an experiment validates once and hands the same object to every fit,
inference and score. :func:`check_counts` is the one check of spike counts (finite,
non-negative whole numbers) that binning, NWB writing and this boundary share.
:func:`split_recording` is the one policy that chooses held-out neurons and test trials when
a recording does not say, reachable from Python (:func:`analysis.nwb.read_nwb`,
:func:`analysis.synthetic.lorenz_recording`) and from ``pcsim fit``.

**Unobserved bins** (the ``observed`` variable, ``(trial, time, neuron)`` bool; e.g. from NWB
``obs_intervals``) are missing data, not silence: their counts may hold anything (NaN
included), :class:`Recording` stores 0 there, and every model's fit and every score leaves
them out (``Recording.observed`` travels with the counts).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import xarray as xr

from pcsim.errors import ConfigError, DataError

__all__ = ["DIMS", "Recording", "as_recording", "check_bin_width", "check_counts", "split_recording"]

DIMS = ("trial", "time", "neuron")
HELDOUT_ATTRS = {"units": "", "long_name": "neuron held out (predicted from the others, unseen at inference)"}
SPLIT_ATTRS = {"units": "", "long_name": "trial split (train, val, test)"}


def _show(value: Any) -> str:
    """``repr`` of a value for an error message, NumPy scalars shown as the Python values they hold."""
    return repr(value.item() if isinstance(value, np.generic) else value)


def check_bin_width(bin_width: Any, name: str = "bin_width") -> float:
    """Return ``bin_width`` (s) as a float, or raise DataError naming ``name`` unless it is a positive number."""
    try:
        value = float(bin_width)
    except (TypeError, ValueError):
        raise DataError(f"{name} must be a positive number of seconds, got {bin_width!r}") from None
    if not np.isfinite(value) or value <= 0:
        raise DataError(f"{name} must be a positive number of seconds, got {bin_width!r}")
    return value


def check_counts(counts: Any, name: str = "counts", labels: xr.DataArray | None = None,
                 observed: np.ndarray | None = None) -> np.ndarray:
    """Return spike counts ``(trial, time, neuron)`` as int64 after checking them, or raise DataError.

    The counts must be a 3-D real array (no bool) of finite, non-negative whole numbers with
    no empty dimension. ``observed`` (bool, same shape), when given, restricts the checks to
    the observed bins; unobserved ones may hold anything, and are returned as they are when
    they are counts, else as 0. Errors name
    ``name`` and the first bad bin, by index or, with ``labels`` (a DataArray with ``trial``,
    ``time``, ``neuron`` coordinates), by its coordinate values.
    """
    counts = np.asarray(counts)
    if counts.ndim != 3:
        raise DataError(f"{name} must be (trials, bins, neurons), got shape {counts.shape}")
    for dim, size in zip(DIMS, counts.shape):
        if size == 0:
            what = "empty trials (zero bins)" if dim == "time" else f"no {dim}s"
            raise DataError(f"{name} has shape {counts.shape} (trials, bins, neurons), empty along dim {dim!r}: {what}")
    if counts.dtype == bool or not np.issubdtype(counts.dtype, np.number) or np.issubdtype(counts.dtype, np.complexfloating):
        raise DataError(f"{name} must be integer spike counts, got dtype {counts.dtype}")
    if observed is not None:
        if np.issubdtype(counts.dtype, np.floating):
            valid = np.isfinite(counts) & (counts >= 0) & (counts == np.round(np.nan_to_num(counts)))
        else:
            valid = counts >= 0
        counts = np.where(observed | valid, counts, 0)

    def where(index: np.ndarray) -> str:
        t, b, n = (int(i) for i in index)
        if labels is None:
            return f"trial {t}, bin {b}, neuron {n}"
        return (f"trial {_show(labels['trial'].values[t])}, time {_show(labels['time'].values[b])} s, "
                f"neuron {_show(labels['neuron'].values[n])} (indices {t}, {b}, {n})")

    if np.issubdtype(counts.dtype, np.floating):
        bad = ~np.isfinite(counts)
        if bad.any():
            raise DataError(f"{name} is NaN/Inf at {where(np.argwhere(bad)[0])} ({int(bad.sum())} entries in all); "
                            "mark missing bins in 'observed' instead")
        frac = counts != np.round(counts)
        if frac.any():
            at = np.argwhere(frac)[0]
            raise DataError(f"{name} must be whole numbers of spikes, got {_show(counts[tuple(at)])} at {where(at)} "
                            "(spike counts are integers)")
    neg = counts < 0
    if neg.any():
        at = np.argwhere(neg)[0]
        raise DataError(f"{name} must be non-negative, got {_show(counts[tuple(at)])} at {where(at)}")
    return counts.astype(np.int64)


@dataclass(frozen=True, eq=False)
class Recording:
    """A validated recording as plain arrays: what the numerics of every model and metric see.

    ``counts``: ``(trial, time, neuron)`` float64 spike counts per bin, 0 in unobserved bins;
    ``observed``: ``(trial, time, neuron)`` bool (all True when the Dataset has no
    ``observed`` variable); ``heldout``: ``(neuron,)`` bool; ``bin_width``: seconds;
    ``dataset``: the source Dataset with ``counts`` transposed to ``(trial, time, neuron)``,
    restricted to the same trials (for coordinates and extra variables). Build it with
    :func:`as_recording`; :meth:`select` takes trials without checking again.
    """

    counts: np.ndarray
    observed: np.ndarray
    heldout: np.ndarray
    bin_width: float
    dataset: xr.Dataset

    @property
    def heldin(self) -> np.ndarray:
        """``(neuron,)`` bool: the neurons a model may see at inference."""
        return ~self.heldout

    @property
    def masked_counts(self) -> np.ndarray:
        """``(trial, time, neuron)`` float64 counts with NaN in unobserved bins (what the metrics read)."""
        return np.where(self.observed, self.counts, np.nan)

    @property
    def split(self) -> np.ndarray | None:
        """``(trial,)`` str split labels, or None when the Dataset has no ``split`` coordinate."""
        ds = self.dataset
        return np.asarray(ds["split"].values).astype(str) if "split" in ds.coords else None

    def trials(self, index: Any) -> "Recording":
        """The same recording on the trials ``index`` (positions or a ``(trial,)`` bool mask)."""
        index = np.flatnonzero(index) if np.asarray(index).dtype == bool else np.asarray(index)
        return Recording(self.counts[index], self.observed[index], self.heldout, self.bin_width,
                         self.dataset.isel(trial=index))

    def select(self, split: str | None, *, name: str = "recording") -> "Recording":
        """The trials with ``split == split`` (all of them when ``split`` is None or there is no
        ``split`` coordinate); raises DataError if none has that label."""
        labels = self.split
        if split is None or labels is None:
            return self
        keep = labels == split
        if not keep.any():
            raise DataError(f"{name} has no trial with split == {split!r} (coordinate 'split' holds {sorted(set(labels))})")
        return self.trials(keep)


def as_recording(recording: Any, split: str | None = None, *, name: str = "recording") -> Recording:
    """Check a recording Dataset once and return it as a :class:`Recording`, restricted to one ``split``.

    A :class:`Recording` is returned as it is (restricted to ``split``), without a second
    check. A Dataset must hold ``counts`` with dims ``(trial, time, neuron)`` (any order) of
    non-negative whole numbers (:func:`check_counts`; unobserved bins are not checked), an
    optional bool ``observed`` of the same dims, an optional bool ``heldout`` coordinate along
    ``neuron`` with at least one neuron held in, and a positive ``attrs["bin_width"]`` (s).
    ``split`` keeps the trials whose ``split`` coordinate equals it (every trial without that
    coordinate). Raises :class:`~pcsim.errors.DataError` naming ``name`` and the variable,
    dimension, coordinate or bin at fault.
    """
    if isinstance(recording, Recording):
        return recording.select(split, name=name)
    if not isinstance(recording, xr.Dataset):
        raise DataError(f"{name} must be an xarray.Dataset with a 'counts' variable, got {type(recording).__name__}")
    if "counts" not in recording.data_vars:
        raise DataError(f"{name} has no 'counts' variable (spike counts, dims {DIMS}); "
                        f"variables present: {sorted(map(str, recording.data_vars))}")
    counts = recording["counts"]
    if set(counts.dims) != set(DIMS) or counts.ndim != 3:
        raise DataError(f"{name}['counts'] must have dims {DIMS}, got {counts.dims}")
    recording = recording.transpose(*DIMS, ...)
    observed = None
    if "observed" in recording.variables:
        ob = recording["observed"]
        if set(ob.dims) != set(DIMS) or ob.dtype != bool:
            raise DataError(f"{name}['observed'] must be bool with dims {DIMS}, got {ob.dtype} {ob.dims}")
        observed = np.asarray(ob.transpose(*DIMS).values)
    values = check_counts(recording["counts"].values, f"{name}['counts']", labels=recording["counts"], observed=observed)
    if observed is None:
        observed = np.ones(values.shape, bool)
    if "heldout" in recording.coords:
        ho = recording["heldout"]
        if ho.dims != ("neuron",) or ho.dtype != bool:
            raise DataError(f"{name} coordinate 'heldout' must be boolean along dim 'neuron', "
                            f"got dims {ho.dims} and dtype {ho.dtype}")
        heldout = np.asarray(ho.values, bool)
    else:
        heldout = np.zeros(values.shape[2], bool)
    if heldout.all():
        raise DataError(f"{name} coordinate 'heldout' marks every neuron held out; at least one held-in neuron is needed")
    if recording.attrs.get("bin_width") is None:
        raise DataError(f"{name} has no attrs['bin_width'] (bin width in seconds)")
    bin_width = check_bin_width(recording.attrs["bin_width"], f"{name}.attrs['bin_width']")
    # unobserved bins hold 0, so that nothing downstream can depend on what they held
    rec = Recording(np.where(observed, values, 0).astype(np.float64), observed, heldout, bin_width, recording)
    return rec.select(split, name=name)


def split_recording(recording: xr.Dataset, *, heldout: Any | None = None, heldout_fraction: float = 0.25,
                    test_fraction: float = 0.2, seed: int | np.random.Generator = 0) -> xr.Dataset:
    """Choose held-out neurons and test trials where the recording does not say (the one split policy).

    Trials labelled ``"none"`` (NLB: in no split) are dropped. Held-out neurons: ``heldout``
    (neuron ids, or a ``(neuron,)`` bool mask) if given, else the ``heldout`` coordinate if it
    marks any, else ``max(1, round(heldout_fraction * neurons))`` neurons at random
    (``heldout_fraction = 0``: none). Test trials: the ``split`` coordinate's ``"test"`` trials;
    without any, its ``"val"`` trials (NLB's public files hold out ``val`` for local scoring);
    without those either, ``max(1, round(test_fraction * trials))`` trials at random
    (``test_fraction = 0``: none), the others ``"train"``. ``seed``: an int or a NumPy
    Generator (drawn from in that order: neurons, then trials). Returns the Dataset with the
    ``heldout`` and ``split`` coordinates set; raises ConfigError naming a bad fraction.
    """
    from analysis.spikes import SPLITS, _heldout_mask

    for key, frac in (("heldout_fraction", heldout_fraction), ("test_fraction", test_fraction)):
        if isinstance(frac, bool) or not isinstance(frac, (int, float, np.number)) or not 0 <= frac < 1:
            raise ConfigError(f"{key} must be in [0, 1), got {frac!r}")
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    if "split" in recording.coords:
        labels = np.asarray(recording["split"].values).astype(str)
        bad = np.flatnonzero(~np.isin(labels, SPLITS))
        if bad.size:
            raise DataError(f"split label {labels[bad[0]]!r} of trial index {bad[0]} is not one of {SPLITS}")
        recording = recording.isel(trial=np.flatnonzero(labels != "none"))
    if heldout is not None or "heldout" in recording.coords:
        mask = _heldout_mask(heldout, recording)
    else:
        mask = np.zeros(recording.sizes["neuron"], bool)
    if not mask.any() and heldout_fraction > 0:
        n = recording.sizes["neuron"]
        mask[rng.choice(n, max(1, int(round(heldout_fraction * n))), replace=False)] = True
    split = (np.asarray(recording["split"].values).astype(str) if "split" in recording.coords
             else np.full(recording.sizes["trial"], "train"))
    if not (split == "test").any():
        split = np.where(split == "val", "test", split)
    if not (split == "test").any() and test_fraction > 0:
        split = split.astype(object)
        split[rng.choice(split.size, max(1, int(round(test_fraction * split.size))), replace=False)] = "test"
    return recording.assign_coords(heldout=("neuron", mask, HELDOUT_ATTRS),
                                   split=("trial", np.asarray(split).astype(str), SPLIT_ATTRS))

