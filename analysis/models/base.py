"""The surface every latent model in :mod:`analysis.models` shares, and the pieces they share.

:class:`LatentModel` is the scikit-learn-style shell (``fit`` / ``transform`` / ``predict`` /
``score``, xarray in and out) that validates a recording once, at the boundary, and hands
plain arrays to the numerics of a subclass. Subclasses implement two methods:
``_fit_latents(counts, heldin)`` (learn whatever maps held-in activity to latents) and
``_infer_latents(counts_heldin)`` (latents ``(trial, time, latent)`` from held-in counts).
The readout from latents to every neuron's rate is shared: a Poisson GLM with exponential
link (:class:`PoissonGLM`, fitted by batched Newton's method), as in the co-smoothing
baselines of the Neural Latents Benchmark (Pei et al. 2021).
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass

import numpy as np
import torch
import xarray as xr

from analysis.metrics import co_bps
from pcsim.errors import DataError

DIMS = ("trial", "time", "neuron")


# --------------------------------------------------------------------------------------------
# Validation (the one place recordings are checked)
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Recording:
    """A validated recording as plain arrays: what the numerics of a model see.

    ``counts``: ``(trial, time, neuron)`` float64 spike counts per bin; ``heldout``:
    ``(neuron,)`` bool; ``bin_width``: seconds; ``dataset``: the source Dataset restricted to the
    selected trials, its ``counts`` transposed to ``(trial, time, neuron)`` (for coordinates).
    """

    counts: np.ndarray
    heldout: np.ndarray
    bin_width: float
    dataset: xr.Dataset


def validate_recording(recording, split: str | None = None, *, name: str = "recording") -> Recording:
    """Check a recording Dataset and return it as arrays, restricted to one ``split``.

    Raises :class:`~pcsim.errors.DataError` naming the variable, dimension or coordinate at
    fault: not a Dataset, missing ``counts``, dims other than ``(trial, time, neuron)``, an
    empty dimension, NaN/Inf, negative or non-integer counts, a ``heldout`` coordinate that
    is not boolean along ``neuron``, a missing/non-positive ``bin_width``, or no trial with
    ``split == split`` (when ``split`` is given and the ``split`` coordinate exists; without
    that coordinate every trial is used).
    """
    if not isinstance(recording, xr.Dataset):
        raise DataError(f"{name} must be an xarray.Dataset with a 'counts' variable, got {type(recording).__name__}")
    if "counts" not in recording.data_vars:
        raise DataError(f"{name} has no 'counts' variable (spike counts, dims {DIMS}); "
                        f"variables present: {sorted(map(str, recording.data_vars))}")
    counts = recording["counts"]
    if set(counts.dims) != set(DIMS) or counts.ndim != 3:
        raise DataError(f"{name}['counts'] must have dims {DIMS}, got {counts.dims}")
    recording = recording.transpose(*DIMS, ...)
    if split is not None and "split" in recording.coords:
        keep = np.asarray(recording["split"].values).astype(str) == split
        if not keep.any():
            labels = sorted(set(np.asarray(recording["split"].values).astype(str)))
            raise DataError(f"{name} has no trial with split == {split!r} (coordinate 'split' holds {labels})")
        recording = recording.isel(trial=np.flatnonzero(keep))
    counts = recording["counts"]
    for dim, size in zip(DIMS, counts.shape):
        if size == 0:
            raise DataError(f"{name}['counts'] is empty along dim {dim!r}")
    values = np.asarray(counts.values)
    if not (np.issubdtype(values.dtype, np.integer) or np.issubdtype(values.dtype, np.floating)
            or values.dtype == bool):
        raise DataError(f"{name}['counts'] must be numeric, got dtype {values.dtype}")
    values = values.astype(np.float64)
    bad = ~np.isfinite(values)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        raise DataError(f"{name}['counts'] contains NaN/Inf ({int(bad.sum())} entries; first at "
                        f"(trial, time, neuron) index {idx})")
    if (values < 0).any():
        idx = tuple(int(i) for i in np.argwhere(values < 0)[0])
        raise DataError(f"{name}['counts'] contains negative spike counts (first at (trial, time, neuron) index {idx})")
    if (values != np.round(values)).any():
        idx = tuple(int(i) for i in np.argwhere(values != np.round(values))[0])
        raise DataError(f"{name}['counts'] must hold integer spike counts; non-integer value at "
                        f"(trial, time, neuron) index {idx}")
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
    bin_width = recording.attrs.get("bin_width")
    if bin_width is None:
        raise DataError(f"{name} has no attrs['bin_width'] (bin width in seconds)")
    try:
        bin_width = float(bin_width)
    except (TypeError, ValueError):
        raise DataError(f"{name}.attrs['bin_width'] must be a number of seconds, got {bin_width!r}") from None
    if not np.isfinite(bin_width) or bin_width <= 0:
        raise DataError(f"{name}.attrs['bin_width'] must be a positive number of seconds, got {bin_width}")
    return Recording(values, heldout, bin_width, recording)


# --------------------------------------------------------------------------------------------
# Poisson GLM readout
# --------------------------------------------------------------------------------------------

class PoissonGLM:
    """Poisson regression with exponential link and L2 penalty, one independent GLM per output.

    ``fit(features, counts)`` takes features ``(n_samples, n_features)`` and counts
    ``(n_samples, n_outputs)`` and minimises, for every output neuron separately,
    ``mean_i[exp(eta_i) - y_i eta_i] + alpha/2 |w|^2`` with ``eta = x_std @ w + b`` (the
    scikit-learn ``PoissonRegressor`` objective; the bias is not penalised). Features are
    z-scored with the training mean/std first so that ``alpha`` means the same for any
    latent scale. All outputs are solved at once by damped Newton's method (batched
    ``(n_outputs, k+1, k+1)`` Hessians, per-output step halving so the objective never rises)
    in torch float64. ``predict(features)`` returns rates ``(n_samples, n_outputs)`` in the
    units of ``counts`` (counts per bin).
    """

    def __init__(self, alpha: float = 1e-2, max_iter: int = 100, tol: float = 1e-8):
        self.alpha = float(alpha)
        self.max_iter = int(max_iter)
        self.tol = float(tol)

    def _design(self, features: np.ndarray) -> torch.Tensor:
        x = (torch.as_tensor(features, dtype=torch.float64) - self.mean_) / self.scale_
        return torch.cat([x, torch.ones(x.shape[0], 1, dtype=torch.float64)], 1)

    def fit(self, features: np.ndarray, counts: np.ndarray) -> "PoissonGLM":
        """Fit weights ``coef_`` ``(n_features, n_outputs)`` and ``intercept_`` ``(n_outputs,)``."""
        f = torch.as_tensor(np.asarray(features, np.float64))
        self.mean_ = f.mean(0)
        self.scale_ = f.std(0).clamp_min(1e-12)
        x = self._design(features)                                     # (n, k+1)
        y = torch.as_tensor(np.asarray(counts, np.float64))            # (n, p)
        n, k1 = x.shape
        p = y.shape[1]
        pen = torch.full((k1,), self.alpha, dtype=torch.float64)
        pen[-1] = 0.0
        beta = torch.zeros(p, k1, dtype=torch.float64)                 # (p, k+1)
        beta[:, -1] = torch.log(y.mean(0).clamp_min(1e-8))

        def objective(b):
            """Per-output loss ``(p,)`` and rates ``(n, p)`` at coefficients ``b``."""
            eta = (x @ b.T).clamp(max=50.0)
            mu = torch.exp(eta)
            return (mu - y * eta).mean(0) + 0.5 * (pen * b * b).sum(1), mu

        loss, mu = objective(beta)
        # Hessians of all outputs in one GEMM: H_j = sum_i mu_ij x_i x_i' = (mu' @ [x_i x_i'])_j,
        # over chunks of samples so the (chunk, (k+1)^2) outer products stay small
        chunk = max(1, int(4e6 // (k1 * k1)))
        outer = [(x[s:s + chunk, :, None] * x[s:s + chunk, None, :]).reshape(-1, k1 * k1)
                 for s in range(0, n, chunk)] if n * k1 * k1 <= 4e7 else None
        self.n_iter_ = 0
        for it in range(self.max_iter):
            grad = ((mu - y).T @ x) / n + pen * beta                  # (p, k+1)
            hess = torch.zeros(p, k1 * k1, dtype=torch.float64)
            for c, s in enumerate(range(0, n, chunk)):
                xx = outer[c] if outer is not None else \
                    (x[s:s + chunk, :, None] * x[s:s + chunk, None, :]).reshape(-1, k1 * k1)
                hess += mu[s:s + chunk].T @ xx
            hess = hess.reshape(p, k1, k1) / n + torch.diag(pen) + 1e-10 * torch.eye(k1, dtype=torch.float64)
            step = torch.linalg.solve(hess, grad)                      # (p, k+1)
            t = torch.ones(p, dtype=torch.float64)
            new = beta - step
            new_loss, new_mu = objective(new)
            for _ in range(30):  # per-output backtracking: never accept a rise
                worse = ~(new_loss <= loss + 1e-12 * loss.abs())
                if not worse.any():
                    break
                t = torch.where(worse, t / 2, t)
                new = beta - t[:, None] * step
                new_loss, new_mu = objective(new)
            worse = ~(new_loss <= loss + 1e-12 * loss.abs())
            new = torch.where(worse[:, None], beta, new)
            change = (new - beta).abs().max().item()
            beta, loss, mu = new, torch.where(worse, loss, new_loss), torch.where(worse, mu, new_mu)
            self.n_iter_ = it + 1
            if change < self.tol:
                break
        self.coef_ = beta[:, :-1].T.numpy() / self.scale_.numpy()[:, None]
        self.intercept_ = beta[:, -1].numpy() - self.mean_.numpy() @ self.coef_
        self._beta = beta
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Rates ``(n_samples, n_outputs)`` = ``exp(features @ coef_ + intercept_)``."""
        eta = np.asarray(features, np.float64) @ self.coef_ + self.intercept_
        return np.exp(np.minimum(eta, 50.0))


# --------------------------------------------------------------------------------------------
# The shared surface
# --------------------------------------------------------------------------------------------

class LatentModel:
    """Base class of the latent models: scikit-learn surface, xarray in and out.

    ``fit(recording)`` learns on the training trials (``split == "train"``; every trial when
    the coordinate is absent) with all neurons visible; ``transform`` returns latents
    ``(trial, time, latent)`` inferred from held-in neurons only (``heldout`` coordinate;
    all neurons are held in when it is absent); ``predict`` returns rates ``(trial, time,
    neuron)`` in counts per bin for every neuron, held-out ones predicted from held-in
    activity through a :class:`PoissonGLM` readout fitted on the training trials' latents;
    ``score`` is co-smoothing bits per spike on the held-out neurons. Learned state ends in
    ``_``; ``fit_seconds_`` is the wall-clock time of ``fit`` (latent model + readout).
    Subclasses implement ``_fit_latents`` and ``_infer_latents`` on plain arrays.
    """

    readout_alpha: float = 1e-2

    # --- to implement ---------------------------------------------------------------------
    def _fit_latents(self, counts: np.ndarray, heldin: np.ndarray, bin_width: float) -> None:
        raise NotImplementedError

    def _infer_latents(self, counts_heldin: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _readout_features(self, latents: np.ndarray) -> np.ndarray:
        """Features the GLM readout sees, ``(trial, time, k)``; the latents themselves by default."""
        return latents

    def _fit_readout(self, latents: np.ndarray, counts: np.ndarray) -> None:
        """Fit ``readout_`` mapping training latents ``(trial, time, latent)`` to all counts."""
        feats = self._readout_features(latents)
        self.readout_ = PoissonGLM(alpha=self.readout_alpha).fit(
            feats.reshape(-1, feats.shape[-1]), counts.reshape(-1, counts.shape[-1]))

    def _rates(self, counts_heldin: np.ndarray) -> np.ndarray:
        """Rates ``(trial, time, neuron)`` of every neuron from held-in counts, counts per bin."""
        feats = self._readout_features(self._infer_latents(counts_heldin))
        out = self.readout_.predict(feats.reshape(-1, feats.shape[-1]))
        return out.reshape(feats.shape[:2] + (self.n_neurons_,))

    # --- shared -----------------------------------------------------------------------------
    def _check_fitted(self):
        if not hasattr(self, "fit_seconds_"):
            raise RuntimeError(f"{type(self).__name__} is not fitted yet; call fit(recording) first")

    def _check_compatible(self, rec: Recording, name: str = "recording"):
        self._check_fitted()
        n = rec.counts.shape[2]
        if n != self.n_neurons_:
            raise DataError(f"{name} has {n} neurons along dim 'neuron'; the model was fitted on {self.n_neurons_}")
        if "heldout" in rec.dataset.coords and not np.array_equal(rec.heldout, self.heldout_):
            raise DataError(f"{name} coordinate 'heldout' differs from the one the model was fitted with")
        if not np.isclose(rec.bin_width, self.bin_width_):
            raise DataError(f"{name}.attrs['bin_width'] is {rec.bin_width} s; the model was fitted at {self.bin_width_} s")

    def fit(self, recording: xr.Dataset, split: str | None = "train") -> "LatentModel":
        """Fit on the trials with ``split == split`` (every trial if ``split`` is None or the
        coordinate is absent), all neurons visible; returns ``self``."""
        rec = validate_recording(recording, split)
        self.__dict__.pop("fit_seconds_", None)   # not fitted until this fit has finished
        t0 = _time.perf_counter()
        self.heldout_ = rec.heldout.copy()
        self.n_neurons_ = rec.counts.shape[2]
        self.bin_width_ = rec.bin_width
        self._fit_latents(rec.counts, ~rec.heldout, rec.bin_width)
        self._fit_readout(self._infer_latents(rec.counts[..., ~rec.heldout]), rec.counts)
        self.fit_seconds_ = _time.perf_counter() - t0
        return self

    def transform(self, recording: xr.Dataset) -> xr.DataArray:
        """Latents ``(trial, time, latent)`` of every trial, inferred from held-in neurons only
        (the ones held in at ``fit``; a ``heldout`` coordinate, if present, must agree)."""
        rec = validate_recording(recording)
        self._check_compatible(rec)
        z = self._infer_latents(rec.counts[..., ~self.heldout_])
        ds = rec.dataset
        coords = {k: v for k, v in ds["counts"].coords.items() if "neuron" not in v.dims}
        return xr.DataArray(z, dims=("trial", "time", "latent"),
                            coords={**coords, "latent": np.arange(z.shape[2])},
                            name="latents", attrs={"model": type(self).__name__})

    def predict(self, recording: xr.Dataset) -> xr.DataArray:
        """Rates ``(trial, time, neuron)`` in counts per bin for every neuron, from held-in neurons."""
        rec = validate_recording(recording)
        self._check_compatible(rec)
        return self._predict(rec)

    def _predict(self, rec: Recording) -> xr.DataArray:
        rates = self._rates(rec.counts[..., ~self.heldout_])
        return xr.DataArray(rates, dims=DIMS, coords=rec.dataset["counts"].coords, name="rates",
                            attrs={"units": "counts/bin", "long_name": "predicted firing rate",
                                   "model": type(self).__name__})

    def score(self, recording: xr.Dataset, split: str | None = "test") -> float:
        """Co-smoothing bits per spike on the held-out neurons of the trials with ``split == split``
        (every trial if ``split`` is None or the coordinate is absent)."""
        rec = validate_recording(recording, split)
        self._check_compatible(rec)
        if not self.heldout_.any():
            raise DataError("the model was fitted with no neuron held out (coordinate 'heldout'); "
                            "co-smoothing needs some")
        rates = self._predict(rec)
        ho = np.flatnonzero(self.heldout_)
        return float(co_bps(rates.isel(neuron=ho), rec.dataset["counts"].isel(neuron=ho)))
