"""The field's scores for latent-variable models of spiking: co-bps, fp-bps, PSTH R², behaviour R²,
latent R², few-shot co-bps and seed consistency.

Definitions follow the Neural Latents Benchmark (Pei et al. 2021, ``nlb_tools.evaluation``)
wherever NLB defines the metric, and Dabholkar & Barak (2025) for few-shot co-smoothing.

Every array argument is an :class:`xarray.DataArray` with dims ``(trial, time, X)`` — ``X`` is
``neuron`` for rates and counts, ``latent`` for latents, ``behaviour_dim`` for behaviour — in
any order, or a NumPy array laid out ``(trial, time, X)``. Where two DataArrays share a dim,
their coordinate labels must agree. **Rates are in counts per bin** (expected spike count in
one bin), never Hz; convert at the boundary with ``rate_hz * bin_width``. NaN in spike counts
marks an unobserved bin and is excluded, as NLB does (so do bins a count argument's
``observed`` mask marks False); NaN anywhere else is an error.
Malformed input raises :class:`pcsim.errors.DataError` naming the argument at fault.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr
from scipy.ndimage import gaussian_filter1d
from scipy.special import gammaln, xlogy
from sklearn.linear_model import Ridge
from sklearn.metrics import make_scorer, r2_score
from sklearn.model_selection import GridSearchCV, KFold

from analysis.glm import PoissonGLM
from analysis.recording import check_counts
from pcsim.arguments import check_number
from pcsim.errors import ConfigError, DataError

__all__ = [
    "RATE_FLOOR",
    "NLB_RIDGE_ALPHAS",
    "co_bps",
    "fp_bps",
    "psth_r2",
    "behaviour_r2",
    "latent_r2",
    "trial_latent_r2",
    "align_latents",
    "few_shot_co_bps",
    "seed_consistency",
]

RATE_FLOOR = 1e-9
"""Smallest predicted rate (counts per bin) the Poisson likelihood accepts; lower ones are clipped to it (NLB's 1e-9)."""

NLB_RIDGE_ALPHAS = tuple(float(a) for a in np.logspace(-4, 0, 9))
"""Ridge penalties NLB's velocity decoder searches over (``np.logspace(-4, 0, 9)``)."""

_MULTIOUTPUT = ("uniform_average", "variance_weighted")


# --------------------------------------------------------------------------- validation


def _dims_text(last: tuple[str, ...] | None) -> str:
    if last is None:
        return "(trial, time, feature)"
    return "(trial, time, " + " | ".join(last) + ")"


def _as_trial_array(x, name: str, last: tuple[str, ...] | None, *, allow_nan: bool = False,
                    nonnegative: bool = False) -> tuple[np.ndarray, xr.DataArray | None]:
    """Validate one ``(trial, time, X)`` argument; return it as float64 in that order, and the DataArray (or None)."""
    if isinstance(x, xr.Dataset):
        raise DataError(f"{name}: expected a DataArray or array {_dims_text(last)}, got a Dataset "
                        f"(select a variable, e.g. recording['counts'])")
    da = None
    if isinstance(x, xr.DataArray):
        dims = tuple(str(d) for d in x.dims)
        if len(dims) != 3 or "trial" not in dims or "time" not in dims:
            raise DataError(f"{name}: expected dims {_dims_text(last)}, got {dims}")
        third = next(d for d in dims if d not in ("trial", "time"))
        if last is not None and third not in last:
            raise DataError(f"{name}: expected dims {_dims_text(last)}, got {dims} ({third!r} is not "
                            f"{' or '.join(repr(d) for d in last)})")
        da = x.transpose("trial", "time", third)
        arr = np.asarray(da.values)
    else:
        try:
            arr = np.asarray(x)
        except Exception as err:  # ragged lists and the like
            raise DataError(f"{name}: cannot be read as an array ({err})") from err
        if arr.ndim != 3:
            raise DataError(f"{name}: expected a 3-D array {_dims_text(last)}, got shape {arr.shape}")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.number) or np.iscomplexobj(arr):
        raise DataError(f"{name}: expected real numbers, got dtype {arr.dtype}")
    if 0 in arr.shape:
        axis = ("trial", "time", (da.dims[2] if da is not None else "third axis"))[arr.shape.index(0)]
        raise DataError(f"{name}: is empty along {axis} (shape {arr.shape})")
    arr = np.asarray(arr, dtype=np.float64)
    bad = np.isinf(arr) if allow_nan else ~np.isfinite(arr)
    if bad.any():
        idx = tuple(int(i) for i in np.argwhere(bad)[0])
        what = "Inf" if allow_nan else "NaN or Inf"
        raise DataError(f"{name}: contains {what} ({int(bad.sum())} values; first at (trial, time, "
                        f"{da.dims[2] if da is not None else 'index'}) = {idx})")
    if nonnegative:
        neg = arr < 0  # NaN compares False
        if neg.any():
            idx = tuple(int(i) for i in np.argwhere(neg)[0])
            raise DataError(f"{name}: contains negative values ({int(neg.sum())}; first at index {idx})")
    return arr, da


def _counts_array(x, name: str, observed=None) -> tuple[np.ndarray, xr.DataArray | None]:
    """Validate spike counts ``(trial, time, neuron)``: NaN bins, bins where ``observed`` (bool, the
    counts' shape) is False and, for a DataArray, bins its ``observed`` coordinate marks False are
    unobserved and become NaN; the rest must be non-negative whole numbers
    (:func:`analysis.recording.check_counts`)."""
    arr, da = _as_trial_array(x, name, ("neuron",), allow_nan=True)
    if observed is None and da is not None and "observed" in da.coords and da["observed"].ndim == 3:
        observed = da["observed"].transpose(*da.dims)
    if observed is not None:
        ob = np.asarray(observed.values if isinstance(observed, xr.DataArray) else observed)
        if ob.dtype != bool or ob.shape != arr.shape:
            raise DataError(f"{name}: its observed mask must be bool of shape {arr.shape}, got {ob.dtype} {ob.shape}")
        arr = np.where(ob, arr, np.nan)
    check_counts(arr, f"{name}:", labels=da if da is not None and all(d in da.coords for d in ("trial", "time", "neuron"))
                 else None, observed=~np.isnan(arr))
    return arr, da


def _check_match(a: np.ndarray, a_da, a_name: str, b: np.ndarray, b_da, b_name: str,
                 axes: Sequence[int]) -> None:
    """Sizes (and, for two DataArrays, coordinate labels) of ``a`` and ``b`` must agree on ``axes``."""
    for ax in axes:
        dim = ("trial", "time", "third axis")[ax] if a_da is None else a_da.dims[ax]
        if a.shape[ax] != b.shape[ax]:
            raise DataError(f"{b_name}: has {b.shape[ax]} entries along {dim}, but {a_name} has "
                            f"{a.shape[ax]} (shapes {b.shape} vs {a.shape})")
        if a_da is not None and b_da is not None and a_da.dims[ax] == b_da.dims[ax]:
            d = a_da.dims[ax]
            if d in a_da.coords and d in b_da.coords and not np.array_equal(a_da[d].values, b_da[d].values):
                raise DataError(f"{b_name}: its {d!r} coordinate differs from that of {a_name}")


def _check(name: str, value, **kw) -> float | int:
    """:func:`pcsim.arguments.check_number` (``kw``: ``integer`` and its bounds), raising the
    :class:`DataError` ``"{name}: ..."`` every metric raises for a bad argument."""
    try:
        return check_number(name, value, **kw)
    except ConfigError as exc:
        raise DataError(f"{name}: {str(exc).removeprefix(name).strip()}") from None


def _check_spikes(counts: np.ndarray, name: str) -> None:
    if not np.any(np.nan_to_num(counts) > 0):
        raise DataError(f"{name}: has no spikes in its observed bins; bits per spike is undefined")


# --------------------------------------------------------------------------- bits per spike


def _poisson_log_likelihood(rates: np.ndarray, counts: np.ndarray) -> float:
    """sum(y log(lambda) - lambda - log y!) over the given bins (flat arrays, rates > 0)."""
    return float(np.sum(xlogy(counts, rates) - rates - gammaln(counts + 1.0)))


def _bits_per_spike(rates: np.ndarray, counts: np.ndarray) -> tuple[float, int, int]:
    """Bits per spike of ``rates`` against ``counts`` (validated ``(trial, time, neuron)`` arrays).

    Returns ``(bps, n_clipped, n_observed)``. NaN counts are excluded; the null model predicts
    each neuron's mean count over its observed bins (NLB ``bits_per_spike``).
    """
    observed = ~np.isnan(counts)
    n_obs = observed.sum(axis=(0, 1))
    total = np.where(observed, counts, 0.0).sum(axis=(0, 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        null_mean = total / n_obs  # a neuron never observed gets NaN, but has no bins below
    y = counts[observed]
    lam = rates[observed]
    null = np.broadcast_to(null_mean, counts.shape)[observed]
    n_clipped = int(np.count_nonzero(lam < RATE_FLOOR))
    # The same floor on the null keeps a silent neuron's null finite; NLB does it silently too.
    lam = np.maximum(lam, RATE_FLOOR)
    null = np.maximum(null, RATE_FLOOR)
    ll_model = _poisson_log_likelihood(lam, y)
    ll_null = _poisson_log_likelihood(null, y)
    return (ll_model - ll_null) / (float(np.sum(y)) * math.log(2.0)), n_clipped, int(y.size)


def _warn_clipped(fn: str, n_clipped: int, n_total: int) -> None:
    if n_clipped:
        warnings.warn(f"{fn}: {n_clipped} of {n_total} predicted rates were below the floor of "
                      f"{RATE_FLOOR:g} counts per bin (zero or negative included) and were clipped to it",
                      RuntimeWarning, stacklevel=3)


def _bps_entry(fn: str, pred_rates, counts, observed) -> float:
    rates, rates_da = _as_trial_array(pred_rates, "pred_rates", ("neuron",), allow_nan=True)
    y, y_da = _counts_array(counts, "counts", observed)
    _check_match(y, y_da, "counts", rates, rates_da, "pred_rates", (0, 1, 2))
    missing = np.isnan(rates) & ~np.isnan(y)
    if missing.any():
        idx = tuple(int(i) for i in np.argwhere(missing)[0])
        raise DataError(f"pred_rates: NaN at {int(missing.sum())} bins where counts are observed "
                        f"(first at (trial, time, neuron) = {idx})")
    _check_spikes(y, "counts")
    bps, n_clipped, n_obs = _bits_per_spike(rates, y)
    _warn_clipped(fn, n_clipped, n_obs)
    return bps


def co_bps(pred_rates, counts, *, observed=None) -> float:
    """Co-smoothing bits per spike (NLB's ``co-bps``; Pei et al. 2021): how much better, in bits per
    spike, the predicted rates of the held-out neurons explain their spike counts than a null model
    that predicts each neuron's mean count, ``(LL(pred_rates) - LL(null)) / (sum(counts) * ln 2)``
    with the Poisson log-likelihood ``LL(lam) = sum(y log lam - lam - log y!)`` summed over every
    observed (trial, time, neuron) bin and ``null_n = mean of counts[:, :, n]`` over neuron n's
    observed bins (the ``log y!`` terms cancel). ``pred_rates`` and ``counts`` are
    ``(trial, time, neuron)`` — pass the held-out neurons on the evaluation trials, e.g.
    ``recording.counts.sel(neuron=recording.heldout)`` — with rates in counts per bin (not Hz).
    Unobserved bins -- NaN counts, bins where ``observed`` (bool, the counts' shape) is False, or
    where a counts DataArray's ``observed`` coordinate is False -- are left out of both
    likelihoods, the null means and the spike total (``pred_rates`` may be NaN only there); predicted rates below ``RATE_FLOOR`` = 1e-9
    counts per bin (zero or negative ones included) are clipped to it with a ``RuntimeWarning``
    saying how many. Returns a float: 0 for the null model, > 0 when the prediction beats it.
    """
    return _bps_entry("co_bps", pred_rates, counts, observed)


def fp_bps(pred_rates, counts, *, observed=None) -> float:
    """Forward-prediction bits per spike (NLB's ``fp-bps``; Pei et al. 2021): the :func:`co_bps`
    formula, ``(LL(pred_rates) - LL(null)) / (sum(counts) * ln 2)`` with the same Poisson
    log-likelihood, per-neuron-mean null, exclusion of unobserved bins (NaN, or ``observed`` False) and 1e-9 counts-per-bin clip floor, applied
    to the forward-prediction bins — the bins *after* the observed window, which the model has to
    extrapolate in time — of every neuron (NLB concatenates held-in and held-out neurons here),
    rather than to the held-out neurons inside the window. ``pred_rates`` and ``counts`` are
    ``(trial, time, neuron)`` with ``time`` running over the forward bins only; rates in counts per
    bin. Note the null model is refitted on these bins, so the score measures temporal structure
    beyond each neuron's mean rate in the forward window.
    """
    return _bps_entry("fp_bps", pred_rates, counts, observed)


# --------------------------------------------------------------------------- PSTH R²


def _trial_labels(conditions, name: str, n_trials: int, sources: Sequence[tuple[xr.DataArray | None, str]]) -> np.ndarray:
    """Per-trial condition labels from an array or from the name of a trial coordinate of one of ``sources``."""
    if isinstance(conditions, str):
        for da, _ in sources:
            if da is not None and conditions in da.coords and da[conditions].dims == ("trial",) \
                    and da.sizes["trial"] == n_trials:
                labels = np.asarray(da[conditions].values)
                break
        else:
            names = " or ".join(src for _, src in sources)
            raise DataError(f"{name}: {conditions!r} is not a coordinate along trial of {names}")
    else:
        labels = np.asarray(conditions.values if isinstance(conditions, xr.DataArray) else conditions)
    if labels.ndim != 1 or labels.shape[0] != n_trials:
        raise DataError(f"{name}: expected one condition label per trial ({n_trials}), got shape {labels.shape}")
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise DataError(f"{name}: contains NaN labels")
    return labels


def _smooth_time(x: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian smoothing along time (axis 1) that skips NaN bins (normalised convolution, so edge and gap bins are not biased low)."""
    observed = ~np.isnan(x)
    num = gaussian_filter1d(np.where(observed, x, 0.0), sigma, axis=1, mode="constant", cval=0.0)
    den = gaussian_filter1d(observed.astype(np.float64), sigma, axis=1, mode="constant", cval=0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(observed, num / den, np.nan)


def _r2_columns(y_true: np.ndarray, y_pred: np.ndarray) -> np.ndarray:
    """R² of each column over the rows where ``y_true`` is observed; sklearn's ``force_finite`` rule for constant columns."""
    observed = ~np.isnan(y_true)
    n = observed.sum(axis=0)
    t = np.where(observed, y_true, 0.0)
    mean = t.sum(axis=0) / np.maximum(n, 1)
    ss_res = np.where(observed, (t - y_pred) ** 2, 0.0).sum(axis=0)
    ss_tot = np.where(observed, (t - mean) ** 2, 0.0).sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - ss_res / ss_tot
    return np.where(ss_tot > 0, r2, np.where(ss_res > 0, 0.0, 1.0))


def psth_r2(pred_rates, true_or_counts, conditions, *, smooth_sigma_bins: float | None = None,
            true_conditions=None, per_neuron: bool = False, observed=None) -> float | xr.Dataset:
    """PSTH R² (NLB's ``psth R2``; Pei et al. 2021): predicted rates ``(trial, time, neuron)`` are
    averaged over the trials of each condition and compared with the condition-averaged truth, R² of
    each neuron computed over all (condition, time) points, ``R²_n = 1 - sum (psth_n - pred_psth_n)²
    / sum (psth_n - mean psth_n)²``, then averaged uniformly over neurons (sklearn ``r2_score``,
    including its rule that a constant true PSTH scores 1 if matched exactly, else 0). The truth
    ``true_or_counts`` is ``(trial, time, neuron)``: true rates (counts per bin) when
    ``smooth_sigma_bins`` is None, or spike counts that are first smoothed along time with a
    Gaussian of s.d. ``smooth_sigma_bins`` bins (NaN-aware normalised convolution) before averaging,
    NLB's empirical PSTH. ``conditions`` gives one label per trial, or names a ``trial`` coordinate
    (e.g. ``"condition"``) of the DataArrays; ``true_conditions`` labels the truth's trials when they
    differ from the predictions' (NLB builds PSTHs from all trials, predictions come from test
    trials). NaN truth bins, and those where ``observed`` (bool, the truth's shape) is False, are left out; conditions without predicted trials are skipped.
    Returns a float, or with ``per_neuron=True`` a Dataset with ``r2`` and ``r2_per_neuron``.
    """
    pred, pred_da = _as_trial_array(pred_rates, "pred_rates", ("neuron",))
    true, true_da = _as_trial_array(true_or_counts, "true_or_counts", ("neuron",), allow_nan=True, nonnegative=True)
    if observed is not None:
        ob = np.asarray(observed)
        if ob.dtype != bool or ob.shape != true.shape:
            raise DataError(f"observed: must be bool of the truth's shape {true.shape}, got {ob.dtype} {ob.shape}")
        true = np.where(ob, true, np.nan)
    same_trials = true_conditions is None
    _check_match(pred, pred_da, "pred_rates", true, true_da, "true_or_counts", (0, 1, 2) if same_trials else (1, 2))
    cond_pred = _trial_labels(conditions, "conditions", pred.shape[0],
                              [(pred_da, "pred_rates"), (true_da if same_trials else None, "true_or_counts")])
    cond_true = cond_pred if same_trials else _trial_labels(
        true_conditions, "true_conditions", true.shape[0], [(true_da, "true_or_counts")])
    if smooth_sigma_bins is not None:
        true = _smooth_time(true, _check("smooth_sigma_bins", smooth_sigma_bins, gt=0))
    labels = np.unique(cond_pred)
    absent = [lab for lab in labels if not np.any(cond_true == lab)]
    if absent:
        raise DataError(f"{'conditions' if same_trials else 'true_conditions'}: no truth trials for "
                        f"condition(s) {absent[:5]} that pred_rates has")
    pred_psth = np.stack([pred[cond_pred == lab].mean(axis=0) for lab in labels])  # (condition, time, neuron)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN (condition, time) cells stay NaN
        true_psth = np.stack([np.nanmean(true[cond_true == lab], axis=0) for lab in labels])
    n_neurons = pred.shape[2]
    true_flat = true_psth.reshape(-1, n_neurons)
    unseen = np.isnan(true_flat).all(axis=0)
    if unseen.any():
        raise DataError(f"true_or_counts: neuron(s) {np.flatnonzero(unseen)[:5].tolist()} have no observed "
                        f"bins in the conditions of pred_rates")
    per = _r2_columns(true_flat, pred_psth.reshape(-1, n_neurons))
    r2 = float(per.mean())
    if not per_neuron:
        return r2
    neuron = pred_da["neuron"].values if pred_da is not None and "neuron" in pred_da.coords else np.arange(n_neurons)
    return xr.Dataset({"r2": ((), r2, {"long_name": "PSTH R² (mean over neurons)"}),
                       "r2_per_neuron": (("neuron",), per, {"long_name": "PSTH R² of each neuron"})},
                      coords={"neuron": neuron})


# --------------------------------------------------------------------------- linear read-outs


def _flat(x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1])


def _affine_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares ``y ≈ [x, 1] @ coef``; ``x`` (samples, p), ``y`` (samples, q) -> coef (p + 1, q)."""
    design = np.column_stack([x, np.ones(len(x))])
    return np.linalg.lstsq(design, y, rcond=None)[0]


def _affine_apply(x: np.ndarray, coef: np.ndarray) -> np.ndarray:
    return x @ coef[:-1] + coef[-1]


def _r2_dataset(r2: float, per_dim: np.ndarray, dim: str, da: xr.DataArray | None, what: str, **extra) -> xr.Dataset:
    coord = da[dim].values if da is not None and dim in da.coords else np.arange(len(per_dim))
    data = {"r2": ((), r2, {"long_name": f"{what} R²"}),
            "r2_per_dim": ((dim,), per_dim, {"long_name": f"{what} R² of each {dim}"})}
    data.update(extra)
    return xr.Dataset(data, coords={dim: coord})


def behaviour_r2(features_train, behaviour_train, features_test, behaviour_test,
                 alphas: Sequence[float] = NLB_RIDGE_ALPHAS, *, multioutput: str = "uniform_average",
                 cv: int = 5, circular=None, per_dim: bool = False) -> float | xr.Dataset:
    """Behaviour decoding R² (NLB's ``vel R2``; Pei et al. 2021): a ridge regression with intercept
    from features (inferred latents ``(trial, time, latent)`` or rates ``(trial, time, neuron)``, in
    counts per bin) to behaviour ``(trial, time, behaviour_dim)`` is fitted on the training trials,
    each (trial, time) bin one sample, its penalty chosen from ``alphas`` (default NLB's
    ``logspace(-4, 0, 9)``) by ``cv``-fold unshuffled cross-validation on the training samples
    (NLB's ``GridSearchCV(Ridge())``); the score is ``R² = 1 - SS_res / SS_tot`` of its predictions on
    the test trials. ``multioutput="uniform_average"`` averages the per-dimension R² with equal
    weights — what NLB's ``fit_and_eval_decoder`` returns, since it uses ``Ridge.score`` — and
    ``"variance_weighted"`` pools ``SS_res`` and ``SS_tot`` over dimensions, weighting them by their
    variance. **Circular** dimensions (angles in radians: ``circular``, a ``(behaviour_dim,)`` bool
    mask, default the behaviour DataArray's ``circular`` coordinate, else none) are decoded as
    their cosine and sine, two targets in place of one, so that an angle that wraps from pi to
    -pi is no jump; their R² is that of the (cos, sin) pair. Bins whose behaviour is NaN are
    dropped (as NLB does). Returns a float, or with ``per_dim=True`` a Dataset with ``r2``,
    ``r2_per_dim`` (behaviour_dim; a circular one pooled over its cos and sin), the chosen
    ``alpha`` and ``decoded`` ``(trial, time, behaviour_dim)``, the test trials' decoded
    behaviour (angles as ``atan2(sin, cos)``; NaN where the behaviour is).
    """
    feat_dims = ("latent", "neuron")
    ftr, ftr_da = _as_trial_array(features_train, "features_train", feat_dims)
    btr, btr_da = _as_trial_array(behaviour_train, "behaviour_train", ("behaviour_dim",), allow_nan=True)
    fte, fte_da = _as_trial_array(features_test, "features_test", feat_dims)
    bte, bte_da = _as_trial_array(behaviour_test, "behaviour_test", ("behaviour_dim",), allow_nan=True)
    _check_match(ftr, ftr_da, "features_train", btr, btr_da, "behaviour_train", (0, 1))
    _check_match(fte, fte_da, "features_test", bte, bte_da, "behaviour_test", (0, 1))
    _check_match(ftr, ftr_da, "features_train", fte, fte_da, "features_test", (2,))
    _check_match(btr, btr_da, "behaviour_train", bte, bte_da, "behaviour_test", (2,))
    if multioutput not in _MULTIOUTPUT:
        raise DataError(f"multioutput: expected one of {_MULTIOUTPUT}, got {multioutput!r}")
    grid = np.asarray(alphas, dtype=np.float64).ravel() if not isinstance(alphas, numbers.Real) \
        else np.array([float(alphas)])
    if grid.size == 0 or not np.all(np.isfinite(grid)) or np.any(grid < 0):
        raise DataError(f"alphas: expected finite non-negative ridge penalties, got {alphas!r}")
    if circular is None:
        coord = btr_da.coords.get("circular") if btr_da is not None else None
        circular = coord.values if coord is not None and coord.dims == ("behaviour_dim",) else np.zeros(btr.shape[2], bool)
    circular = np.asarray(circular)
    if circular.dtype != bool or circular.shape != (btr.shape[2],):
        raise DataError(f"circular: expected a bool mask with one entry per behaviour dimension ({btr.shape[2]}), "
                        f"got {circular.dtype} {circular.shape}")
    # each behaviour dimension's target columns: itself, or the cosine and sine of an angle
    owner = np.concatenate([[j, j] if c else [j] for j, c in enumerate(circular)]).astype(int)

    def targets(b: np.ndarray) -> np.ndarray:
        cols = [[np.cos(b[..., j]), np.sin(b[..., j])] if c else [b[..., j]] for j, c in enumerate(circular)]
        return np.stack([c for pair in cols for c in pair], axis=-1)

    x_tr, y_tr, x_te, y_te = _flat(ftr), _flat(targets(btr)), _flat(fte), _flat(targets(bte))
    keep_tr, keep_te = ~np.isnan(y_tr).any(axis=1), ~np.isnan(y_te).any(axis=1)
    x_tr, y_tr = x_tr[keep_tr], y_tr[keep_tr]
    cv = _check("cv", cv, integer=True, ge=2)
    if len(y_tr) < cv:
        raise DataError(f"behaviour_train: only {len(y_tr)} bins with behaviour, fewer than cv={cv} folds")
    if keep_te.sum() < 2:
        raise DataError(f"behaviour_test: needs at least 2 bins with behaviour, has {int(keep_te.sum())}")
    search = GridSearchCV(Ridge(), {"alpha": grid.tolist()}, cv=KFold(cv),
                          scoring=make_scorer(r2_score, multioutput=multioutput))
    search.fit(x_tr, y_tr)
    pred_all = search.predict(x_te).reshape(len(x_te), -1)  # one target column comes back 1-D
    pred, y_te = pred_all[keep_te], y_te[keep_te]
    r2 = float(r2_score(y_te, pred, multioutput=multioutput))
    if not per_dim:
        return r2
    per = np.array([r2_score(y_te[:, owner == j], pred[:, owner == j], multioutput="variance_weighted")
                    for j in range(circular.size)])
    decoded = np.stack([np.arctan2(pred_all[:, owner == j][:, 1], pred_all[:, owner == j][:, 0]) if c
                        else pred_all[:, owner == j][:, 0] for j, c in enumerate(circular)], axis=-1)
    decoded = np.where(keep_te[:, None], decoded, np.nan).reshape(bte.shape)
    out = _r2_dataset(r2, per, "behaviour_dim", bte_da, "behaviour decoding",
                      alpha=((), float(search.best_params_["alpha"]), {"long_name": "chosen ridge penalty"}))
    out["decoded"] = (("trial", "time", "behaviour_dim"), decoded,
                      {"long_name": "decoded behaviour of the test trials (angles: atan2 of the decoded sin, cos)"})
    return out


def latent_r2(inferred_train, true_train, inferred_test, true_test, *, per_dim: bool = False) -> float | xr.Dataset:
    """Latent recovery R²: an affine map ``true ≈ inferred @ A + b`` (least squares with intercept)
    from inferred latents ``(trial, time, latent)`` to the true latents ``(trial, time, latent)`` of a
    synthetic recording is fitted on the training trials, each (trial, time) bin one sample, and
    scored on the test trials by the variance-weighted ``R² = 1 - sum_d SS_res,d / sum_d SS_tot,d``
    over the true latent dimensions d — the standard check that a model recovered the generating
    dynamics up to an affine transform (e.g. Pandarinath et al. 2018; Zhao & Park 2017). It is 1 for
    any invertible affine transform of the true latents. The two latent spaces may differ in size;
    latents are dimensionless. Returns a float, or with ``per_dim=True`` a Dataset with ``r2`` and
    ``r2_per_dim`` (R² of each true latent).
    """
    xtr, xtr_da = _as_trial_array(inferred_train, "inferred_train", ("latent",))
    ytr, ytr_da = _as_trial_array(true_train, "true_train", ("latent",))
    xte, xte_da = _as_trial_array(inferred_test, "inferred_test", ("latent",))
    yte, yte_da = _as_trial_array(true_test, "true_test", ("latent",))
    _check_match(xtr, xtr_da, "inferred_train", ytr, ytr_da, "true_train", (0, 1))
    _check_match(xte, xte_da, "inferred_test", yte, yte_da, "true_test", (0, 1))
    _check_match(xtr, xtr_da, "inferred_train", xte, xte_da, "inferred_test", (2,))
    _check_match(ytr, ytr_da, "true_train", yte, yte_da, "true_test", (2,))
    if _flat(yte).shape[0] < 2:
        raise DataError("true_test: needs at least 2 (trial, time) bins to compute R²")
    coef = _affine_fit(_flat(xtr), _flat(ytr))
    pred = _affine_apply(_flat(xte), coef)
    r2 = float(r2_score(_flat(yte), pred, multioutput="variance_weighted"))
    if not per_dim:
        return r2
    return _r2_dataset(r2, np.atleast_1d(r2_score(_flat(yte), pred, multioutput="raw_values")),
                       "latent", yte_da, "latent")


def align_latents(inferred_train, true_train, inferred) -> np.ndarray:
    """Inferred latents mapped into the true latent space by the affine map of :func:`latent_r2`.

    The map ``true ≈ inferred @ A + b`` is fitted (least squares with intercept) on
    ``inferred_train`` ``(trial, time, latent)`` against ``true_train`` ``(trial, time, true_latent)``
    and applied to ``inferred`` ``(trial', time, latent)``; returns ``(trial', time, true_latent)``
    (dimensionless), e.g. to plot inferred trajectories in the coordinates of the truth.
    """
    xtr, xtr_da = _as_trial_array(inferred_train, "inferred_train", ("latent",))
    ytr, ytr_da = _as_trial_array(true_train, "true_train", ("latent",))
    x, x_da = _as_trial_array(inferred, "inferred", ("latent",))
    _check_match(xtr, xtr_da, "inferred_train", ytr, ytr_da, "true_train", (0, 1))
    _check_match(xtr, xtr_da, "inferred_train", x, x_da, "inferred", (2,))
    coef = _affine_fit(_flat(xtr), _flat(ytr))
    return _affine_apply(_flat(x), coef).reshape(x.shape[:2] + (ytr.shape[2],))


def trial_latent_r2(aligned, true) -> np.ndarray:
    """Latent R² of each trial on its own: ``(trial,)``, the variance-weighted R² of one trial's
    aligned latents ``(trial, time, latent)`` (:func:`align_latents`) against its true latents
    ``(trial, time, latent)``, with each trial's own mean as the baseline.

    It says how well a single trajectory is recovered; it is lower than :func:`latent_r2`
    (whose baseline is the mean over all test trials), and negative for a trial whose
    trajectory barely moves. Dimensionless. Raises DataError for mismatched arguments.
    """
    x, x_da = _as_trial_array(aligned, "aligned", ("latent",))
    y, y_da = _as_trial_array(true, "true", ("latent",))
    _check_match(x, x_da, "aligned", y, y_da, "true", (0, 1, 2))
    if y.shape[1] < 2:
        raise DataError(f"true: needs at least 2 time bins per trial to compute a trial's R², got {y.shape[1]}")
    return np.array([r2_score(y[i], x[i], multioutput="variance_weighted") for i in range(y.shape[0])])


def seed_consistency(latents_a, latents_b, *, symmetric: bool = True) -> float:
    """Consistency of two fits of one model that differ only in their random seed: the variance-weighted
    R² of the affine map (least squares with intercept) from fit A's latents to fit B's,
    ``R²(A→B) = 1 - sum_d SS_res,d / sum_d SS_tot,d`` over B's dimensions, fitted and scored on the
    same (trial, time) bins of the same data; with ``symmetric=True`` (default) the mean of
    ``R²(A→B)`` and ``R²(B→A)``, since either direction alone is fooled when one fit has extra
    dimensions the other lacks (cf. the cross-decoding of Dabholkar & Barak 2025). ``latents_a`` and
    ``latents_b`` are ``(trial, time, latent)`` over the same trials and bins (their latent counts
    may differ). Returns 1 when the two are affinely related, near 0 when unrelated.
    """
    a, a_da = _as_trial_array(latents_a, "latents_a", ("latent",))
    b, b_da = _as_trial_array(latents_b, "latents_b", ("latent",))
    _check_match(a, a_da, "latents_a", b, b_da, "latents_b", (0, 1))
    fa, fb = _flat(a), _flat(b)
    if fa.shape[0] < 2:
        raise DataError("latents_a: needs at least 2 (trial, time) bins to compute R²")

    def r2(x, y):
        return float(r2_score(y, _affine_apply(x, _affine_fit(x, y)), multioutput="variance_weighted"))

    return 0.5 * (r2(fa, fb) + r2(fb, fa)) if symmetric else r2(fa, fb)


# --------------------------------------------------------------------------- few-shot co-bps


def few_shot_co_bps(latents_train, heldout_counts_train, latents_test, heldout_counts_test, k: int,
                    n_repeats: int = 10, seed: int = 0, *, alpha: float = 1e-3,
                    per_repeat: bool = False, observed_train=None, observed_test=None) -> float | xr.DataArray:
    """Few-shot co-smoothing bits per spike (Dabholkar & Barak 2025): how well a model's latents
    predict neurons it never saw when only ``k`` trials of them are available. For each of
    ``n_repeats`` draws of ``k`` distinct training trials (``numpy.random.default_rng(seed)``), a
    Poisson GLM with exp link, ``rate = exp(latents @ w + b)`` in counts per bin, is fitted per
    held-out neuron on those trials' bins — objective ``mean(rate - y log rate) + alpha/2 ||w||²``,
    sklearn ``PoissonRegressor``'s, solved by Newton's method — and its predictions on the test
    trials are scored with :func:`co_bps` against ``heldout_counts_test``; the score is the mean over
    draws. ``latents_*`` are ``(trial, time, latent)`` (the model's inferred latents),
    ``heldout_counts_*`` are ``(trial, time, neuron)`` spike counts; bins that are NaN, or False in
    ``observed_train`` / ``observed_test`` (bool, the counts' shapes), are unobserved and excluded
    from fits and scores (:class:`analysis.glm.PoissonGLM` with ``standardize=False``).
    Returns a float, or with ``per_repeat=True`` a DataArray over ``repeat`` (attrs give ``k``).
    """
    ltr, ltr_da = _as_trial_array(latents_train, "latents_train", ("latent",))
    ctr, ctr_da = _counts_array(heldout_counts_train, "heldout_counts_train", observed_train)
    lte, lte_da = _as_trial_array(latents_test, "latents_test", ("latent",))
    cte, cte_da = _counts_array(heldout_counts_test, "heldout_counts_test", observed_test)
    _check_match(ltr, ltr_da, "latents_train", ctr, ctr_da, "heldout_counts_train", (0, 1))
    _check_match(lte, lte_da, "latents_test", cte, cte_da, "heldout_counts_test", (0, 1))
    _check_match(ltr, ltr_da, "latents_train", lte, lte_da, "latents_test", (2,))
    _check_match(ctr, ctr_da, "heldout_counts_train", cte, cte_da, "heldout_counts_test", (2,))
    k = _check("k", k, integer=True, ge=1, le=ltr.shape[0])
    n_repeats = _check("n_repeats", n_repeats, integer=True, ge=1)
    seed = _check("seed", seed, integer=True, ge=0)
    alpha = _check("alpha", alpha, ge=0)
    _check_spikes(cte, "heldout_counts_test")

    rng = np.random.default_rng(seed)
    scores, n_clipped, n_total = [], 0, 0
    x_te = _flat(lte)
    for _ in range(n_repeats):
        trials = np.sort(rng.choice(ltr.shape[0], size=k, replace=False))
        glm = PoissonGLM(alpha=alpha, standardize=False).fit(_flat(ltr[trials]), _flat(ctr[trials]))
        rates = glm.predict(x_te).reshape(cte.shape)
        bps, clipped, total = _bits_per_spike(rates, cte)
        scores.append(bps)
        n_clipped, n_total = n_clipped + clipped, n_total + total
    _warn_clipped("few_shot_co_bps", n_clipped, n_total)
    if not per_repeat:
        return float(np.mean(scores))
    return xr.DataArray(np.array(scores), dims=("repeat",), coords={"repeat": np.arange(n_repeats)},
                        name="few_shot_co_bps",
                        attrs={"k": k, "seed": seed, "alpha": alpha, "units": "bits/spike"})
