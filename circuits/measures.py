"""Circuit-level measures: evoked error responses, mismatch, repetition suppression, spectra.

Every function takes the labelled output of :meth:`circuits.laminar.LaminarCircuit.run`
(or a DataArray cut from it) and returns labelled results, so the measures work the same on
rate circuits and on the spiking translation's population rates. The ``time`` coordinate
of a result is in seconds; windows and segment lengths are given in ms (the unit of the
protocols and configs); frequencies are in Hz, activities in the circuit's rate units.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import xarray as xr

from pcsim.errors import ConfigError, DataError

__all__ = [
    "ERROR_POPULATIONS",
    "population_activity",
    "window_mean",
    "condition_contrast",
    "suppression_index",
    "log_slope",
    "power_spectrum",
    "band_power",
    "spectral_ratio",
    "field_spread",
    "field_orientedness",
    "principal_fraction",
]

ERROR_POPULATIONS = ("l23_pos", "l23_neg")


def population_activity(ds: xr.Dataset, populations: Sequence[str] = ERROR_POPULATIONS) -> xr.DataArray:
    """Summed activity of ``populations`` over their units: ``rate`` (trial, time, area,
    population, unit) -> (trial, time, area), NaN padding ignored. With the default it is
    the total prediction-error activity of each area (the model's ERP proxy)."""
    missing = [p for p in populations if p not in ds.population.values]
    if missing:
        raise ConfigError(f"populations {missing} are not in the dataset (have {list(ds.population.values)})")
    return ds.rate.sel(population=list(populations)).sum(("population", "unit"), skipna=True, min_count=1)


def window_mean(x: xr.DataArray, window: tuple[float, float]) -> xr.DataArray:
    """Mean of ``x`` (dims ``(..., time, ...)``, ``time`` in s) over ``window = (start_ms,
    stop_ms)`` (ms, both ends inclusive, to within a microsecond of rounding); the result
    drops ``time``. Raises :class:`~pcsim.errors.ConfigError` if the window is empty."""
    lo, hi = window
    if not lo < hi:
        raise ConfigError(f"window must be (start_ms, stop_ms) with start < stop, got {window}")
    t = x.time.values
    inside = (t >= lo / 1000.0 - 1e-9) & (t <= hi / 1000.0 + 1e-9)
    if not inside.any():
        raise ConfigError(f"window {window} ms holds no sample (time runs {float(t[0]) * 1000:g}..{float(t[-1]) * 1000:g} ms)")
    return x.isel(time=np.flatnonzero(inside)).mean("time")


def condition_contrast(response: xr.DataArray, label: str, a: str, b: str, by: Sequence[str] = (),
                       where: xr.DataArray | None = None) -> xr.Dataset:
    """Mean response to trials labelled ``a`` minus trials labelled ``b`` (coordinate
    ``label`` on ``trial``), separately for every combination of the trial coordinates in
    ``by`` (e.g. ``("p_deviant", "deviance")``). ``response`` has dims (trial, ...);
    ``where`` (bool over trial) restricts the trials used. Returns a Dataset with the means of
    ``a`` and ``b``, their difference, and the trial counts, indexed by ``by``."""
    if label not in response.coords:
        raise ConfigError(f"label: response has no trial coordinate {label!r}")
    r = response if where is None else response.where(where, drop=True)
    labels = r[label].values
    if not (labels == a).any() or not (labels == b).any():
        raise DataError(f"need trials labelled both {a!r} and {b!r} in {label!r}")
    if not by:
        ra, rb = r.where(r[label] == a, drop=True), r.where(r[label] == b, drop=True)
        return xr.Dataset({a: ra.mean("trial"), b: rb.mean("trial"), "difference": ra.mean("trial") - rb.mean("trial"),
                           f"n_{a}": ra.sizes["trial"], f"n_{b}": rb.sizes["trial"]})
    keys = [np.asarray(r[c].values) for c in by]
    combos = sorted(set(zip(*keys)))
    parts = []
    for combo in combos:
        m = np.ones(r.sizes["trial"], bool)
        for c, v in zip(by, combo):
            m &= np.asarray(r[c].values) == v
        sub = r.isel(trial=np.flatnonzero(m))
        sa, sb = sub.isel(trial=np.flatnonzero(sub[label].values == a)), sub.isel(trial=np.flatnonzero(sub[label].values == b))
        ma, mb = sa.mean("trial"), sb.mean("trial")
        part = xr.Dataset({a: ma, b: mb, "difference": ma - mb, f"n_{a}": sa.sizes["trial"], f"n_{b}": sb.sizes["trial"]})
        parts.append(part.expand_dims({c: [v] for c, v in zip(by, combo)}))
    return xr.combine_by_coords(parts)


def suppression_index(tuning: np.ndarray | xr.DataArray) -> float:
    """Surround suppression of a length- or size-tuning curve: ``(peak - last) / peak`` for
    responses ordered by increasing stimulus extent (``(n,)``, non-negative). 0 means no
    suppression, 1 complete suppression at the largest stimulus."""
    t = np.asarray(tuning, dtype=float)
    if t.ndim != 1 or t.size < 2 or not np.isfinite(t).all():
        raise DataError(f"tuning must be a finite 1-D curve of at least two responses, got shape {t.shape}")
    peak = t.max()
    if peak <= 0:
        raise DataError("tuning curve has no positive response: the suppression index is undefined")
    return float((peak - t[-1]) / peak)


def log_slope(x: np.ndarray, y: np.ndarray) -> float:
    """Least-squares slope of ``y`` against ``log(x)`` (``x > 0``): the change in response per
    e-fold of ``x`` (e.g. per e-fold of repetitions)."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    if x.shape != y.shape or x.size < 2 or (x <= 0).any():
        raise DataError("log_slope needs two equal-length arrays of at least two points with x > 0")
    return float(np.polyfit(np.log(x), y, 1)[0])


def power_spectrum(x: xr.DataArray, *, segment_ms: float = 256.0, detrend: str = "constant") -> xr.DataArray:
    """Welch power spectral density of ``x`` along its ``time`` coordinate (s, uniform).

    Segments of ``segment_ms`` (ms) with half overlap and a Hann window; the result replaces
    ``time`` by ``frequency`` (Hz) and has units of ``x``'s units squared per Hz. Other
    dimensions are kept (average them afterwards, e.g. over trials)."""
    from scipy.signal import welch

    t = np.asarray(x.time.values, float)
    if t.size < 8:
        raise DataError(f"need at least 8 time samples for a spectrum, got {t.size}")
    dt = np.diff(t) * 1000.0  # ms
    if not np.allclose(dt, dt[0], rtol=1e-6):
        raise DataError("power_spectrum needs uniformly sampled 'time'")
    # the sample step in ms, freed of the rounding of ms -> s (1 ms must give exactly 1000 Hz,
    # or the frequency bins drift off the band edges)
    step = float(np.round(dt.mean(), 9))
    fs = 1000.0 / step
    nper = int(min(t.size, max(8, round(segment_ms / step))))
    xt = x.transpose(..., "time")
    f, p = welch(np.nan_to_num(xt.values), fs=fs, nperseg=nper, noverlap=nper // 2, detrend=detrend, axis=-1)
    coords = {k: v for k, v in xt.coords.items() if "time" not in v.dims}
    out = xr.DataArray(p, dims=[*xt.dims[:-1], "frequency"], coords=coords)
    return out.assign_coords(frequency=("frequency", f, {"units": "Hz", "long_name": "frequency"}))


def band_power(psd: xr.DataArray, band: tuple[float, float]) -> xr.DataArray:
    """Power in ``band = (low_hz, high_hz)`` of a spectral density ``psd`` (dims ``(...,
    frequency)``, Hz): its integral over the band, in ``psd``'s units times Hz."""
    lo, hi = band
    sel = psd.sel(frequency=slice(lo, hi))
    if sel.sizes["frequency"] < 2:
        raise ConfigError(f"band {band} Hz holds fewer than two frequency bins")
    return sel.integrate("frequency")


def spectral_ratio(psd: xr.DataArray, high: tuple[float, float] = (30.0, 80.0),
                   low: tuple[float, float] = (4.0, 20.0)) -> xr.DataArray:
    """Relative high-frequency power of ``psd`` (dims ``(..., frequency)``, Hz):
    ``band_power(high) / band_power(low)``, dimensionless, with ``frequency`` dropped."""
    return band_power(psd, high) / band_power(psd, low)


def _fields(fields) -> np.ndarray:
    w = np.asarray(fields, dtype=float)
    if w.ndim != 3 or w.shape[1] < 2 or w.shape[2] < 2 or not np.isfinite(w).all():
        raise DataError(f"fields must be a finite (n, rows, cols) array with rows, cols >= 2, got shape {w.shape}")
    if (np.abs(w).reshape(len(w), -1).max(axis=1) == 0).any():
        raise DataError("fields: a field is all zero, its localisation is undefined")
    return w


def field_spread(fields) -> np.ndarray:
    """How localised each receptive (projective) field is: the RMS distance (px) of its
    weight energy ``w^2`` from the energy's centroid, for ``fields`` ``(n, rows, cols)``;
    returns ``(n,)``. A single pixel gives 0, a field spread evenly over an ``L x L``
    patch ``L / sqrt(6)`` (about 6.5 px for 16 x 16): smaller is more localised."""
    w = _fields(fields)
    e = w**2 / (w**2).sum(axis=(1, 2), keepdims=True)
    r, c = np.meshgrid(np.arange(w.shape[1]), np.arange(w.shape[2]), indexing="ij")
    mr, mc = (e * r).sum(axis=(1, 2)), (e * c).sum(axis=(1, 2))
    var = (e * ((r - mr[:, None, None]) ** 2 + (c - mc[:, None, None]) ** 2)).sum(axis=(1, 2))
    return np.sqrt(var)


def field_orientedness(fields) -> np.ndarray:
    """How oriented each field is: ``1 - lambda_min / lambda_max`` of the second-moment
    matrix of its power spectrum over spatial frequency (DC excluded), for ``fields``
    ``(n, rows, cols)``; returns ``(n,)`` in ``[0, 1]`` (dimensionless). An isotropic field
    (a centre-surround blob, white noise) gives about 0, a grating or a Gabor patch near 1."""
    w = _fields(fields)
    w = w - w.mean(axis=(1, 2), keepdims=True)
    p = np.abs(np.fft.fft2(w)) ** 2
    fr = np.fft.fftfreq(w.shape[1])[:, None] * np.ones((1, w.shape[2]))
    fc = np.ones((w.shape[1], 1)) * np.fft.fftfreq(w.shape[2])[None, :]
    tot = p.sum(axis=(1, 2))
    m = np.stack([np.stack([(p * a * b).sum(axis=(1, 2)) / tot for b in (fr, fc)], -1) for a in (fr, fc)], -2)
    lam = np.linalg.eigvalsh(m)
    return 1.0 - lam[:, 0] / np.maximum(lam[:, 1], 1e-300)


def principal_fraction(fields, patches, k: int) -> np.ndarray:
    """How much of each field lies in the principal subspace of the data: the fraction of
    ``||w||^2`` inside the span of the top ``k`` principal components of ``patches``
    ``(n_patches, rows * cols)`` (or ``(n_patches, rows, cols)``), for ``fields`` ``(n, rows,
    cols)``; returns ``(n,)`` in ``[0, 1]`` (dimensionless). Random fields give about
    ``k / (rows * cols)``; a model whose energy only sees second-order statistics (Gaussian
    priors) learns fields near 1, in any rotation of that subspace."""
    w = _fields(fields).reshape(len(fields), -1)
    x = np.asarray(patches, dtype=float).reshape(len(patches), -1)
    if x.shape[1] != w.shape[1] or x.shape[0] < 2 or not np.isfinite(x).all():
        raise DataError(f"patches must be a finite (n >= 2, {w.shape[1]}) array matching the fields, got {x.shape}")
    if not 1 <= k <= w.shape[1]:
        raise ConfigError(f"k must be in 1..{w.shape[1]}, got {k}")
    _, vecs = np.linalg.eigh(np.cov(x, rowvar=False))
    top = vecs[:, ::-1][:, :k]
    return ((w @ top) ** 2).sum(axis=1) / (w**2).sum(axis=1)
