"""Factor analysis of smoothed, square-root-transformed spike counts.

The static baseline of Yu et al. (2009): counts are square-root transformed (to stabilise the
Poisson variance), smoothed in time with a Gaussian kernel, and a factor-analysis model
``y = C x + d + noise``, ``x ~ N(0, I)``, ``noise ~ N(0, diag(R))`` is fitted by EM on the
sample covariance (Rubin & Thayer 1982). The latents are posterior means ``E[x | y]``.
:func:`factor_analysis` is also GPFA's initialiser (as in Yu et al. and elephant).
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
from sklearn.utils._param_validation import Interval

from pcsim.errors import ConfigError
from analysis.models.base import LatentModel, observed_mean
from analysis.models.smoothing import _fill, smooth_counts


@dataclass(frozen=True)
class FAParams:
    """Factor-analysis parameters: loadings ``C`` ``(p, q)``, mean ``d`` ``(p,)``, private
    variances ``R`` ``(p,)``, and the per-iteration log-likelihoods of the fit."""

    C: np.ndarray
    d: np.ndarray
    R: np.ndarray
    log_likelihood: np.ndarray


def orthonormalise(C: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The orthonormal axes of loadings ``C`` ``(neuron, latent)`` (Yu et al. 2009): with the SVD
    ``C = U S V'``, returns ``U`` ``(neuron, latent)`` and ``orth = S V'`` ``(latent, latent)``, so that
    latents ``x`` map to ``x_orth = orth @ x`` with ``C x = U x_orth``, ordered by the variance they
    carry. Each column's sign is fixed (its largest loading positive), so refits give the same axes."""
    u, s, vt = np.linalg.svd(C, full_matrices=False)
    sign = np.sign(u[np.abs(u).argmax(0), np.arange(u.shape[1])])
    sign[sign == 0] = 1.0
    return u * sign, (sign[:, None] * s[:, None]) * vt


def factor_analysis(y: np.ndarray, n_latents: int, *, max_iter: int = 1000, tol: float = 1e-8,
                    min_var_frac: float = 0.01) -> FAParams:
    """Maximum-likelihood factor analysis of ``y`` ``(n_samples, p)`` by EM on its covariance.

    EM of Rubin & Thayer (1982) run on the ``(p, p)`` sample covariance ``S``, so each
    iteration costs ``O(p^2 q)`` whatever the number of samples. Initialised from the top
    ``q`` principal components. Private variances are floored at ``min_var_frac`` times each
    dimension's variance (Heywood cases; the same floor as Yu et al. / elephant). Stops
    when the log-likelihood gain falls below ``tol`` times its magnitude. Returns
    :class:`FAParams` with ``C`` ``(p, q)``, ``d`` ``(p,)``, ``R`` ``(p,)``.
    """
    y = np.asarray(y, np.float64)
    n, p = y.shape
    q = int(n_latents)
    d = y.mean(0)
    s = np.cov(y, rowvar=False, bias=True).reshape(p, p)
    var = np.diag(s).copy()
    floor = np.maximum(min_var_frac * var, 1e-12)
    evals, evecs = np.linalg.eigh(s)
    top = np.argsort(evals)[::-1][:q]
    c = evecs[:, top] * np.sqrt(np.maximum(evals[top] - np.median(evals), 1e-6))
    r = np.maximum(var - (c * c).sum(1), floor)
    lls = []
    for _ in range(max_iter):
        # beta = C' (C C' + R)^-1 via Woodbury: (I + C'R^-1 C)^-1 C' R^-1
        cr = c.T / r                                     # (q, p)
        g = np.linalg.inv(np.eye(q) + cr @ c)            # posterior covariance (q, q)
        beta = g @ cr                                    # (q, p)
        # log-likelihood of the current parameters (matrix determinant lemma)
        logdet = np.log(r).sum() + np.linalg.slogdet(np.eye(q) + cr @ c)[1]
        sigma_inv_s = s / r[:, None] - cr.T @ (beta @ s)
        ll = -0.5 * n * (p * np.log(2 * np.pi) + logdet + np.trace(sigma_inv_s))
        lls.append(ll)
        exx = g + beta @ s @ beta.T                      # E[x x'] averaged over samples
        c = s @ beta.T @ np.linalg.inv(exx)
        r = np.maximum(np.diag(s) - (c * (s @ beta.T)).sum(1), floor)
        if len(lls) > 1 and lls[-1] - lls[-2] < tol * abs(lls[-1]):
            break
    return FAParams(C=c, d=d, R=r, log_likelihood=np.asarray(lls))


def fa_posterior_mean(y: np.ndarray, params: FAParams) -> np.ndarray:
    """Posterior means ``E[x | y]`` ``(..., q)`` of observations ``y`` ``(..., p)``."""
    cr = params.C.T / params.R
    g = np.linalg.inv(np.eye(params.C.shape[1]) + cr @ params.C)
    return (np.asarray(y, np.float64) - params.d) @ (g @ cr).T


class FactorAnalysisModel(LatentModel):
    """Factor analysis on smoothed sqrt-counts of held-in neurons, Poisson GLM readout.

    ``n_latents``: factors ``q`` (at most the number of held-in neurons); ``sigma_ms``:
    Gaussian smoothing s.d. in ms (Yu et al. smooth before FA; 0 disables); ``readout_alpha``:
    L2 penalty of the GLM readout. ``transform`` returns posterior-mean factors ``(trial,
    time, latent)``, orthonormalised like GPFA's (loadings ``C = U S V'``, latents ``S V' x``,
    so that they are ordered by the variance they explain). Unobserved bins are smoothed over
    from their observed neighbours (:func:`~analysis.models.smoothing.smooth_counts`); a
    neuron unobserved for a whole trial takes its training mean (``fill_``). Learned:
    ``params_`` (:class:`FAParams` of the held-in neurons), ``sigma_bins_``, ``orth_``, ``fill_``.
    """

    _parameter_constraints = {"n_latents": [Interval(Integral, 1, None, closed="left")],
                              "sigma_ms": [Interval(Real, 0, None, closed="left")],
                              "readout_alpha": [Interval(Real, 0, None, closed="left")]}

    def __init__(self, n_latents: int = 8, sigma_ms: float = 40.0, readout_alpha: float = 1e-2):
        self.n_latents = n_latents
        self.sigma_ms = sigma_ms
        self.readout_alpha = readout_alpha

    def _observations(self, counts_heldin, observed_heldin):
        return smooth_counts(np.sqrt(counts_heldin), self.sigma_bins_, None if observed_heldin.all() else observed_heldin)

    def _fit_latents(self, counts, observed, heldin, bin_width):
        if self.n_latents > int(heldin.sum()):
            raise ConfigError(f"n_latents = {self.n_latents} exceeds the {int(heldin.sum())} held-in neurons "
                              "(factor analysis needs at most one latent per held-in neuron)")
        self.sigma_bins_ = self.sigma_ms / 1000.0 / bin_width
        y = self._observations(counts[..., heldin], observed[..., heldin])
        self.fill_ = observed_mean(y)
        y = _fill(y, self.fill_)
        self.params_ = factor_analysis(y.reshape(-1, y.shape[-1]), self.n_latents)
        _, self.orth_ = orthonormalise(self.params_.C)   # x_orth = orth_ @ x

    def _infer(self, counts_heldin, observed_heldin):
        x = fa_posterior_mean(_fill(self._observations(counts_heldin, observed_heldin), self.fill_), self.params_)
        return x @ self.orth_.T
