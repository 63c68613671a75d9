"""Spike smoothing: the co-smoothing baseline of the Neural Latents Benchmark (Pei et al. 2021).

Held-in spike counts are convolved with a Gaussian kernel along time (acausal), and the
smoothed held-in rates are the "latents"; a Poisson GLM maps their logarithm to every
neuron's rate (log inputs, as in NLB's baseline: an exp-link GLM on log rates is a product
of powers of the held-in rates).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
from sklearn.decomposition import PCA
from sklearn.utils._param_validation import Interval

from analysis.models.base import LatentModel, observed_mean

# A floor under smoothed rates before the log, in counts per bin (NLB uses 1e-4 too).
_LOG_FLOOR = 1e-4


def gaussian_kernel(n_bins: int, sigma_bins: float) -> np.ndarray:
    """``(n_bins, n_bins)`` acausal Gaussian kernel ``exp(-(t - s)^2 / (2 sigma^2))`` over the bins
    of one trial (``sigma_bins`` in bins; 0 gives the identity)."""
    if sigma_bins <= 0:
        return np.eye(n_bins)
    t = np.arange(n_bins)
    return np.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma_bins) ** 2)


def gaussian_smoothing_matrix(n_bins: int, sigma_bins: float) -> np.ndarray:
    """``(n_bins, n_bins)`` acausal Gaussian smoothing operator, rows summing to one.

    Row ``t`` holds :func:`gaussian_kernel` renormalised so that bins near the trial edges are
    averages of the bins that exist (no zero padding pulling edge rates down).
    """
    k = gaussian_kernel(n_bins, sigma_bins)
    return k / k.sum(1, keepdims=True)


def smooth_counts(counts: np.ndarray, sigma_bins: float, observed: np.ndarray | None = None) -> np.ndarray:
    """Smooth counts ``(trial, time, neuron)`` along ``time`` with a Gaussian of s.d. ``sigma_bins`` bins.

    Normalised convolution: each bin is the kernel-weighted average of the *observed* bins of
    its trial and neuron (``observed``: bool, the counts' shape; default all), so trial edges
    and gaps are averages of the bins that exist and an unobserved bin gets the value its
    observed neighbours give it. A neuron with no observed bin in a trial gives NaN there.
    Returns float64 ``(trial, time, neuron)`` in the input's units (counts per bin).
    """
    counts = np.asarray(counts, np.float64)
    if observed is None:
        return np.einsum("ts,nsk->ntk", gaussian_smoothing_matrix(counts.shape[1], sigma_bins), counts)
    k = gaussian_kernel(counts.shape[1], sigma_bins)
    m = np.asarray(observed, np.float64)
    num = np.einsum("ts,nsk->ntk", k, np.where(observed, counts, 0.0))
    den = np.einsum("ts,nsk->ntk", k, m)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _fill(x: np.ndarray, fill: np.ndarray) -> np.ndarray:
    """``x`` ``(trial, time, k)`` with NaN (no observed bin to smooth from) replaced by ``fill`` ``(k,)``."""
    return np.where(np.isnan(x), fill, x)


class SmoothingModel(LatentModel):
    """Gaussian-smoothed held-in spikes as latents, Poisson GLM readout to every neuron.

    ``sigma_ms``: kernel s.d. in milliseconds (converted with the recording's ``bin_width``).
    ``n_components``: if given, the latents are the first PCA components of the smoothed
    held-in rates (PCA fitted on the training trials) instead of the rates themselves.
    ``readout_alpha``: L2 penalty of the GLM readout (on z-scored inputs). ``transform``
    returns ``(trial, time, latent)`` smoothed held-in rates in counts per bin (latent =
    held-in neuron, in order) or PCA scores. Unobserved bins are smoothed over (their value
    comes from the observed neighbours, :func:`smooth_counts`); a neuron unobserved for a
    whole trial takes its mean smoothed rate over the training trials (``fill_``).
    """

    _parameter_constraints = {"sigma_ms": [Interval(Real, 0, None, closed="left")],
                              "n_components": [Interval(Integral, 1, None, closed="left"), None],
                              "readout_alpha": [Interval(Real, 0, None, closed="left")]}

    def __init__(self, sigma_ms: float = 40.0, n_components: int | None = None, readout_alpha: float = 1e-2):
        self.sigma_ms = sigma_ms
        self.n_components = n_components
        self.readout_alpha = readout_alpha

    def _smoothed(self, counts_heldin, observed_heldin):
        return smooth_counts(counts_heldin, self.sigma_bins_, None if observed_heldin.all() else observed_heldin)

    def _fit_latents(self, counts, observed, heldin, bin_width):
        self.sigma_bins_ = self.sigma_ms / 1000.0 / bin_width
        sm = self._smoothed(counts[..., heldin], observed[..., heldin])
        self.fill_ = observed_mean(sm)
        self.pca_ = None
        if self.n_components is not None:
            sm = _fill(sm, self.fill_)
            self.pca_ = PCA(n_components=self.n_components).fit(sm.reshape(-1, sm.shape[-1]))

    def _infer(self, counts_heldin, observed_heldin):
        sm = _fill(self._smoothed(counts_heldin, observed_heldin), self.fill_)
        if self.pca_ is None:
            return sm
        return self.pca_.transform(sm.reshape(-1, sm.shape[-1])).reshape(sm.shape[:2] + (-1,))

    def _readout_features(self, latents):
        if self.pca_ is None:
            return np.log(latents + _LOG_FLOOR)
        return latents
