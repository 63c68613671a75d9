"""Spike smoothing: the co-smoothing baseline of the Neural Latents Benchmark (Pei et al. 2021).

Held-in spike counts are convolved with a Gaussian kernel along time (acausal), and the
smoothed held-in rates are the "latents"; a Poisson GLM maps their logarithm to every
neuron's rate (log inputs, as in NLB's baseline: an exp-link GLM on log rates is a product
of powers of the held-in rates).
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA

from analysis.models.base import LatentModel

# A floor under smoothed rates before the log, in counts per bin (NLB uses 1e-4 too).
_LOG_FLOOR = 1e-4


def gaussian_smoothing_matrix(n_bins: int, sigma_bins: float) -> np.ndarray:
    """``(n_bins, n_bins)`` acausal Gaussian smoothing operator, rows summing to one.

    Row ``t`` holds ``exp(-(t - s)^2 / (2 sigma^2))`` over bins ``s`` of the same trial,
    renormalised so that bins near the trial edges are averages of the bins that exist
    (no zero padding pulling edge rates down). ``sigma_bins`` in bins; 0 gives the identity.
    """
    if sigma_bins <= 0:
        return np.eye(n_bins)
    t = np.arange(n_bins)
    k = np.exp(-0.5 * ((t[:, None] - t[None, :]) / sigma_bins) ** 2)
    return k / k.sum(1, keepdims=True)


def smooth_counts(counts: np.ndarray, sigma_bins: float) -> np.ndarray:
    """Smooth counts ``(trial, time, neuron)`` along ``time`` with :func:`gaussian_smoothing_matrix`.

    Returns float64 ``(trial, time, neuron)`` in the input's units (counts per bin).
    """
    s = gaussian_smoothing_matrix(counts.shape[1], sigma_bins)
    return np.einsum("ts,nsk->ntk", s, np.asarray(counts, np.float64))


class SmoothingModel(LatentModel):
    """Gaussian-smoothed held-in spikes as latents, Poisson GLM readout to every neuron.

    ``sigma_ms``: kernel s.d. in milliseconds (converted with the recording's ``bin_width``).
    ``n_components``: if given, the latents are the first PCA components of the smoothed
    held-in rates (PCA fitted on the training trials) instead of the rates themselves.
    ``readout_alpha``: L2 penalty of the GLM readout (on z-scored inputs). ``transform``
    returns ``(trial, time, latent)`` smoothed held-in rates in counts per bin (latent =
    held-in neuron, in order) or PCA scores.
    """

    def __init__(self, sigma_ms: float = 40.0, n_components: int | None = None, readout_alpha: float = 1e-2):
        self.sigma_ms = float(sigma_ms)
        self.n_components = n_components
        self.readout_alpha = float(readout_alpha)

    def _fit_latents(self, counts, heldin, bin_width):
        self.sigma_bins_ = self.sigma_ms / 1000.0 / bin_width
        self.pca_ = None
        if self.n_components is not None:
            sm = smooth_counts(counts[..., heldin], self.sigma_bins_)
            self.pca_ = PCA(n_components=int(self.n_components)).fit(sm.reshape(-1, sm.shape[-1]))

    def _infer_latents(self, counts_heldin):
        sm = smooth_counts(counts_heldin, self.sigma_bins_)
        if self.pca_ is None:
            return sm
        return self.pca_.transform(sm.reshape(-1, sm.shape[-1])).reshape(sm.shape[:2] + (-1,))

    def _readout_features(self, latents):
        if self.pca_ is None:
            return np.log(latents + _LOG_FLOOR)
        return latents
