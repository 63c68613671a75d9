"""The Poisson GLM of :mod:`analysis`: the readout of every latent model and the few-shot co-bps regressor.

One independent Poisson regression with exponential link per output neuron, all solved at
once by damped Newton's method in torch float64, with a per-sample, per-output ``observed``
mask so that missing bins (and NaN counts) are left out of the fit: the readout of the
co-smoothing baselines of the Neural Latents Benchmark (Pei et al. 2021) and the regressor of
few-shot co-smoothing (Dabholkar & Barak 2025).
"""

from __future__ import annotations

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval

__all__ = ["PoissonGLM", "poisson_nll"]


def poisson_nll(log_rates: torch.Tensor, counts: torch.Tensor, weight: torch.Tensor | None = None, *,
                rates: torch.Tensor | None = None) -> torch.Tensor:
    """Poisson negative log-likelihood ``rate - y log rate`` (nats, the ``log y!`` constant left
    out) per entry of ``log_rates`` and ``counts`` (same shape, counts per bin), times ``weight``
    (broadcast; 0 leaves an entry out). Returned per entry, same shape: the loss of the GLM readout
    and of the VAEs' Poisson observations. ``rates``: ``exp(log_rates)`` when the caller has it
    already (the GLM's Newton steps need the rates themselves), so it is not computed twice."""
    nll = (torch.exp(log_rates) if rates is None else rates) - counts * log_rates
    return nll if weight is None else nll * weight

# Log rates are capped here before exp, so an extrapolating GLM predicts huge, finite rates.
_MAX_LOG_RATE = 50.0


class PoissonGLM(BaseEstimator):
    """Poisson regression with exponential link and L2 penalty, one independent GLM per output.

    ``fit(features, counts, observed=None)`` takes features ``(n_samples, n_features)`` and
    counts ``(n_samples, n_outputs)`` (NaN: not observed) and minimises, for every output
    neuron ``j`` separately, ``mean_{i observed}[exp(eta_ij) - y_ij eta_ij] + alpha/2 |w_j|^2``
    with ``eta = x @ w + b`` (the scikit-learn ``PoissonRegressor`` objective over the observed
    samples; the bias is not penalised). ``observed`` ``(n_samples, n_outputs)`` bool marks
    the samples each output is fitted on (default: where ``counts`` is not NaN). With
    ``standardize=True`` features are z-scored with the training mean/std first, so that
    ``alpha`` means the same for any latent scale; with False the penalty acts on the raw
    features (sklearn's convention). All outputs are solved at once by damped Newton's
    method (batched ``(n_outputs, k+1, k+1)`` Hessians, per-output step halving so the
    objective never rises), stopping when no coefficient moves by more than ``tol``.
    ``predict(features)`` returns rates ``(n_samples, n_outputs)`` in the units of ``counts``
    (counts per bin). Learned: ``coef_`` ``(n_features, n_outputs)``, ``intercept_``
    ``(n_outputs,)``, ``n_iter_``.
    """

    _parameter_constraints = {"alpha": [Interval(Real, 0, None, closed="left")],
                              "max_iter": [Interval(Integral, 1, None, closed="left")],
                              "tol": [Interval(Real, 0, None, closed="left")],
                              "standardize": ["boolean"]}

    def __init__(self, alpha: float = 1e-2, max_iter: int = 100, tol: float = 1e-8, standardize: bool = True):
        self.alpha = alpha
        self.max_iter = max_iter
        self.tol = tol
        self.standardize = standardize

    def fit(self, features: np.ndarray, counts: np.ndarray, observed: np.ndarray | None = None) -> "PoissonGLM":
        """Fit ``coef_`` and ``intercept_`` on the observed samples of every output; returns ``self``."""
        self._validate_params()
        f = torch.as_tensor(np.asarray(features, np.float64))
        y = torch.as_tensor(np.asarray(counts, np.float64))                # (n, p)
        w = ~torch.isnan(y) if observed is None else torch.as_tensor(np.asarray(observed, bool)) & ~torch.isnan(y)
        w = w.to(torch.float64)
        y = torch.where(w > 0, y, torch.zeros((), dtype=torch.float64))
        n_obs = w.sum(0).clamp_min(1.0)                                     # (p,)
        mean = f.mean(0) if self.standardize else torch.zeros(f.shape[1], dtype=torch.float64)
        scale = f.std(0).clamp_min(1e-12) if self.standardize else torch.ones(f.shape[1], dtype=torch.float64)
        x = torch.cat([(f - mean) / scale, torch.ones(f.shape[0], 1, dtype=torch.float64)], 1)  # (n, k+1)
        n, k1 = x.shape
        p = y.shape[1]
        pen = torch.full((k1,), float(self.alpha), dtype=torch.float64)
        pen[-1] = 0.0
        beta = torch.zeros(p, k1, dtype=torch.float64)                     # (p, k+1)
        beta[:, -1] = torch.log((y.sum(0) / n_obs).clamp_min(1e-8))

        def objective(b):
            """Per-output loss ``(p,)`` and rates ``(n, p)`` at coefficients ``b``."""
            eta = (x @ b.T).clamp(max=_MAX_LOG_RATE)
            mu = torch.exp(eta)
            return poisson_nll(eta, y, w, rates=mu).sum(0) / n_obs + 0.5 * (pen * b * b).sum(1), mu

        loss, mu = objective(beta)
        # Hessians of all outputs in one GEMM: H_j = sum_i w_ij mu_ij x_i x_i', over chunks of
        # samples so the (chunk, (k+1)^2) outer products stay small
        chunk = max(1, int(4e6 // (k1 * k1)))
        outer = [(x[s:s + chunk, :, None] * x[s:s + chunk, None, :]).reshape(-1, k1 * k1)
                 for s in range(0, n, chunk)] if n * k1 * k1 <= 4e7 else None
        self.n_iter_ = 0
        for it in range(int(self.max_iter)):
            grad = (((mu - y) * w).T @ x) / n_obs[:, None] + pen * beta     # (p, k+1)
            hess = torch.zeros(p, k1 * k1, dtype=torch.float64)
            for c, s in enumerate(range(0, n, chunk)):
                xx = outer[c] if outer is not None else \
                    (x[s:s + chunk, :, None] * x[s:s + chunk, None, :]).reshape(-1, k1 * k1)
                hess += (mu[s:s + chunk] * w[s:s + chunk]).T @ xx
            hess = hess.reshape(p, k1, k1) / n_obs[:, None, None] + torch.diag(pen) \
                + 1e-10 * torch.eye(k1, dtype=torch.float64)
            step = torch.linalg.solve(hess, grad)                          # (p, k+1)
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
        self.coef_ = beta[:, :-1].T.numpy() / scale.numpy()[:, None]
        self.intercept_ = beta[:, -1].numpy() - mean.numpy() @ self.coef_
        return self

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Rates ``(n_samples, n_outputs)`` = ``exp(features @ coef_ + intercept_)``, counts per bin."""
        eta = np.asarray(features, np.float64) @ self.coef_ + self.intercept_
        return np.exp(np.minimum(eta, _MAX_LOG_RATE))
