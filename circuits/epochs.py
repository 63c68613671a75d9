"""Peri-stimulus epochs: which samples of a block belong to which (block, slot) epoch.

One statement serves every circuit result: :func:`epoch_layout` lays the epochs of a
:class:`~circuits.paradigms.Stimulus` out on a sample grid, :meth:`EpochLayout.coords` labels
them, and :func:`cut_epochs` cuts a continuous result (the rate circuit's or the spiking
circuit's) with it. The rate circuit records straight into the same layout while it runs,
so an epoched run and a continuous run cut afterwards hold the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from pcsim.errors import ConfigError, DataError

from .coordinates import label, seconds
from .paradigms import Stimulus

__all__ = ["EpochLayout", "epoch_layout", "cut_epochs"]


@dataclass(frozen=True)
class EpochLayout:
    """Epochs ``-pre_ms <= t < post_ms`` around the onsets of the selected (block, slot) pairs.

    ``keep``: ``(B, S)`` selection; ``block``, ``slot``: ``(E,)`` the selected pairs in
    block-major order (epoch ``e`` is ``(block[e], slot[e])``); ``offsets``: ``(Te,)`` sample
    offsets from the onset on the grid; ``time``: ``(Te,)`` ms from the onset; ``index``:
    ``(E, Te)`` sample of every epoch time on the block's grid."""

    keep: np.ndarray
    block: np.ndarray
    slot: np.ndarray
    offsets: np.ndarray
    time: np.ndarray
    index: np.ndarray

    def coords(self, stimulus: Stimulus) -> dict:
        """Coordinates of the epoch axes: ``time`` (s from onset), and over ``trial`` the
        ``block``, ``slot``, ``onset_time`` (s), ``pattern``, the slot labels and block
        conditions, each with its units and long name (:mod:`circuits.coordinates`)."""
        bb, jj = self.block, self.slot
        coords = {
            "time": ("time", seconds(self.time), {"units": "s", "long_name": "time from stimulus onset"}),
            "block": ("trial", bb), "slot": ("trial", jj),
            "onset_time": ("trial", seconds(stimulus.onsets_ms[jj])),
            "pattern": ("trial", stimulus.schedule[bb, jj]),
        }
        for name, v in stimulus.labels.items():
            coords[name] = ("trial", np.asarray(v)[bb, jj])
        for name, v in stimulus.conditions.items():
            if name not in stimulus.labels:
                coords[name] = ("trial", np.asarray(v)[bb])
        return coords


def epoch_layout(stimulus: Stimulus, pre_ms: float, post_ms: float, *, grid_ms: float, stride: int = 1,
                 keep: np.ndarray | None = None, n_samples: int | None = None) -> EpochLayout:
    """The epochs of ``stimulus`` on a sample grid of ``grid_ms`` (sample ``i`` at ``i * grid_ms``
    from the block start), one epoch sample every ``stride`` grid samples from ``-pre_ms`` to
    before ``post_ms`` around each onset. ``keep``: ``(B, S)`` boolean selection (default
    all). ``n_samples``: grid length; epochs must lie inside it (default: the block,
    ``stimulus.total_ms``). Raises :class:`~pcsim.errors.ConfigError` naming the bad argument."""
    B, S = stimulus.blocks, stimulus.slots
    pre_ms, post_ms = float(pre_ms), float(post_ms)
    if pre_ms < 0 or post_ms <= 0:
        raise ConfigError(f"epochs must be (pre_ms >= 0, post_ms > 0), got ({pre_ms}, {post_ms})")
    if not (grid_ms > 0 and stride >= 1):
        raise ConfigError(f"epochs need grid_ms > 0 and stride >= 1, got {grid_ms}, {stride}")
    keep = np.ones((B, S), bool) if keep is None else np.asarray(keep, bool)
    if keep.shape != (B, S):
        raise ConfigError(f"keep must be a (blocks, slots) = {(B, S)} boolean array, got {keep.shape}")
    bb, jj = np.nonzero(keep)
    if bb.size == 0:
        raise ConfigError("keep selects no epoch")
    offsets = np.arange(-int(round(pre_ms / grid_ms)), int(round(post_ms / grid_ms)), int(stride))
    base = np.round(stimulus.onsets_ms / grid_ms).astype(np.int64)
    index = base[jj][:, None] + offsets[None, :]
    n = int(round(stimulus.total_ms / grid_ms)) if n_samples is None else int(n_samples)
    if index.min() < 0 or index.max() >= n:
        raise ConfigError(f"epochs (pre_ms={pre_ms}, post_ms={post_ms}) reach outside the recorded block: "
                          "lower pre_ms/post_ms or lengthen the protocol")
    return EpochLayout(keep, bb, jj, offsets, offsets * grid_ms, index)


def cut_epochs(ds: xr.Dataset, stimulus: Stimulus, pre_ms: float, post_ms: float, keep: np.ndarray | None = None,
               variables: tuple[str, ...] = ("rate",)) -> xr.Dataset:
    """Cut a continuous result (``trial`` = blocks, ``time`` in s from block start on a
    regular grid, as :meth:`~circuits.laminar.LaminarCircuit.run` without epochs and
    :meth:`~circuits.spiking.SpikingCircuit.run` return) into the epochs of
    :func:`epoch_layout` (``keep``: ``(B, S)`` selection, default all). Returns the
    ``variables`` over a new ``trial`` axis of the selected pairs with the coordinates of
    :meth:`EpochLayout.coords`, laid out like an epoched :meth:`LaminarCircuit.run`."""
    if "time" not in ds.dims or "trial" not in ds.dims:
        raise DataError(f"cut_epochs needs a Dataset with dims 'trial' (blocks) and 'time' (s from block start), "
                        f"got dims {list(ds.dims)}")
    if ds.sizes["trial"] != stimulus.blocks:
        raise DataError(f"cut_epochs: the Dataset has {ds.sizes['trial']} trials but the stimulus {stimulus.blocks} blocks")
    t = ds.time.values * 1000.0  # the layout's grid is in ms, the unit of the protocol
    every = float(t[1] - t[0]) if t.size > 1 else 1.0
    if abs(t[0]) > 1e-9 * every:
        raise DataError(f"cut_epochs needs 'time' to start at the block start (0 s), got {t[0] / 1000.0} s")
    lay = epoch_layout(stimulus, pre_ms, post_ms, grid_ms=every, keep=keep, n_samples=t.size)
    out = {}
    for name in variables:
        if name not in ds:
            raise ConfigError(f"cut_epochs: the Dataset has no variable {name!r} (variables: {list(ds.data_vars)})")
        da = ds[name].transpose("trial", "time", ...)
        out[name] = (("trial", "time") + da.dims[2:], da.values[lay.block[:, None], lay.index], da.attrs)
    coords = lay.coords(stimulus)
    used = {d for v in out.values() for d in v[0]}
    for name in ds.coords:
        dims = set(ds[name].dims)
        if name not in coords and not dims & {"trial", "time"} and dims <= used:
            coords[name] = ds[name].variable
    return label(xr.Dataset(out, coords=coords, attrs=dict(ds.attrs)))
