"""Gaussian-process factor analysis (Yu et al. 2009), fitted by EM in batched torch.

The model, for every trial and time bin ``t`` (``T`` bins per trial), is

    y_t = C x_t + d + noise,   noise ~ N(0, diag(R)),
    x_i(.) ~ GP(0, k_i),   k_i(t, s) = (1 - eps) exp(-(t - s)^2 / (2 tau_i^2)) + eps delta_ts,

with ``y`` the square root of the spike counts per bin (Yu et al. 2009; elephant's default;
the transform makes Poisson variability roughly homoscedastic), ``q`` latents with their
own timescales ``tau_i`` and a fixed GP noise variance ``eps = 1e-3``.

Why it is fast: all trials have the same length, so the posterior covariance of the latents
is the same for every trial. Each EM iteration builds the ``(qT, qT)`` posterior precision
``M = blockdiag(K_i^-1) + I_T kron (C' R^-1 C)`` once, factorises it (Cholesky) once, and
gets every trial's posterior mean from one matrix product; nothing loops over trials. ``M``
commutes with time reversal (Toeplitz ``K_i``), so in even/odd ("folded") time coordinates it
is block diagonal with two halves of about ``qT/2``: two half-size Choleskys, about 4x fewer
flops than one full one (Yu et al.'s code uses the same persymmetry for its inverse). EM
runs entirely in folded coordinates (the data are folded once). Yu et al.'s code, and
elephant's port of it, loop over trials and train on 20-bin segments of them; here whole
trials are used by default (``segment_bins=None``), which keeps all of the temporal
correlation the GP describes and gives a higher whole-trial likelihood; ``segment_bins=20``
reproduces their training scheme, for speed. The M-step for ``C, d, R`` is closed form; the
timescales take safeguarded Newton steps on the GP term of the expected complete-data
log-likelihood (analytic first and second derivatives in ``log(1/tau^2)``), with
backtracking so that a step never lowers that term. EM is therefore a generalised EM and the
marginal log-likelihood never decreases (tested). Convergence: Yu et al.'s / elephant's
relative criterion (see :func:`gpfa_em`).

Latents are reported orthonormalised (Yu et al. 2009, sec. 2.3): with ``C = U S V'``,
``x_orth = S V' x``, so that dimensions are ordered by the variance they explain in
neural space and the loading matrix ``U`` has orthonormal columns.
"""

from __future__ import annotations

import math
import time as _time
from dataclasses import dataclass
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from analysis.models.base import LatentModel
from analysis.models.fa import factor_analysis, orthonormalise
from pcsim.errors import ConfigError

_LOG2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class GPFAParams:
    """GPFA parameters as tensors: loadings ``C`` ``(p, q)``, mean ``d`` ``(p,)``, private
    variances ``R`` ``(p,)`` (sqrt-count units squared), ``gamma`` ``(q,)`` = ``(bin / tau)^2``
    (timescales in bins: ``tau_bins = gamma^-1/2``), GP noise variances ``eps`` ``(q,)``."""

    C: torch.Tensor
    d: torch.Tensor
    R: torch.Tensor
    gamma: torch.Tensor
    eps: torch.Tensor

    def rows(self, keep: torch.Tensor) -> "GPFAParams":
        """The same model restricted to the observed dimensions ``keep`` (bool ``(p,)``)."""
        return GPFAParams(self.C[keep], self.d[keep], self.R[keep], self.gamma, self.eps)


@dataclass(frozen=True)
class GPFAFit:
    """Result of :func:`gpfa_em`: fitted ``params``, ``log_likelihood`` (numpy ``(n_iter + 1,)``;
    entry ``k`` is the marginal log-likelihood after ``k`` EM updates, the last one that of
    ``params``), ``n_iter`` (EM updates made), ``converged`` (tolerance met before the cap),
    ``seconds`` (wall-clock)."""

    params: GPFAParams
    log_likelihood: np.ndarray
    n_iter: int
    converged: bool
    seconds: float


def gp_covariances(gamma: torch.Tensor, eps: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Squared-exponential GP covariances ``(q, T, T)`` over ``T = n_bins`` bins.

    ``K_i(t, s) = (1 - eps_i) exp(-gamma_i (t - s)^2 / 2) + eps_i delta_ts`` with ``t, s`` in
    bins, i.e. unit prior variance per latent and timescale ``tau_i = gamma_i^-1/2`` bins.
    """
    t = torch.arange(n_bins, dtype=gamma.dtype, device=gamma.device)
    dsq = (t[:, None] - t[None, :]) ** 2
    eye = torch.eye(n_bins, dtype=gamma.dtype, device=gamma.device)
    g, e = gamma[:, None, None], eps[:, None, None]
    return (1 - e) * torch.exp(-0.5 * g * dsq) + e * eye


# --- time-reversal folding ------------------------------------------------------------------
# Every matrix the E-step inverts (K_i, hence M) is persymmetric: it commutes with the
# time-reversal J (Toeplitz K_i; I_T in the kron term). In the orthonormal basis of J's
# even and odd vectors, s_h = (e_h + e_{T-1-h}) / sqrt 2 and a_h = (e_h - e_{T-1-h}) / sqrt 2
# (plus e_mid for odd T), those matrices are block diagonal with two blocks of about T/2 bins,
# so each (qT, qT) Cholesky becomes two of (qT/2, qT/2): about 4x fewer flops. (Yu et al.'s
# code exploits the same symmetry, there to halve a matrix inverse.) "Folding" maps a time
# axis to its (even, odd) coordinates; "unfolding" maps back; both are orthogonal.

_RSQRT2 = 1.0 / math.sqrt(2.0)


def _fold(x: torch.Tensor, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Even and odd coordinates ``(ceil(T/2), floor(T/2))`` of a time axis ``dim`` of length ``T``."""
    T = x.shape[dim]
    h = T // 2
    lo = x.narrow(dim, 0, h)
    hi = x.flip(dim).narrow(dim, 0, h)
    even, odd = (lo + hi) * _RSQRT2, (lo - hi) * _RSQRT2
    if T % 2:
        even = torch.cat([even, x.narrow(dim, h, 1)], dim)
    return even, odd


def _unfold(even: torch.Tensor, odd: torch.Tensor, dim: int) -> torch.Tensor:
    """Inverse of :func:`_fold`: time axis ``dim`` from its even and odd coordinates."""
    h = odd.shape[dim]
    e = even.narrow(dim, 0, h)
    parts = [(e + odd) * _RSQRT2]
    if even.shape[dim] > h:
        parts.append(even.narrow(dim, h, 1))
    parts.append(((e - odd) * _RSQRT2).flip(dim))
    return torch.cat(parts, dim)


def _fold_matrix(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Even-even and odd-odd blocks of persymmetric matrices ``x`` ``(..., T, T)`` (the cross
    blocks vanish)."""
    xe, xo = _fold(x, -1)
    return _fold(xe, -2)[0], _fold(xo, -2)[1]


def _unfold_blockdiag(even: torch.Tensor, odd: torch.Tensor, row: int, col: int) -> torch.Tensor:
    """Time-domain matrix ``Q diag(even, odd) Q'`` along axes ``row``/``col`` from its even-even
    ``even`` and odd-odd ``odd`` blocks (any batch/other axes in between)."""
    zeros_eo = even.new_zeros(even.shape[:row] + (even.shape[row],) + even.shape[row + 1:col] + (odd.shape[col],)
                              + even.shape[col + 1:])
    zeros_oe = odd.new_zeros(odd.shape[:row] + (odd.shape[row],) + odd.shape[row + 1:col] + (even.shape[col],)
                             + odd.shape[col + 1:])
    left_even = _unfold(even, zeros_oe, row)          # rows in time, columns even
    left_odd = _unfold(zeros_eo, odd, row)            # rows in time, columns odd
    return _unfold(left_even, left_odd, col)


def _fold_grids(n_bins: int, dtype, device) -> list[tuple[list[int], tuple[torch.Tensor, ...]]]:
    """Index grids that fold a stationary kernel in closed form, grouped for batching.

    For a Toeplitz matrix ``X(t - s)`` the even block is ``c (X(h - h') + X(h + h' - T + 1))``
    and the odd block ``X(h - h') - X(h + h' - T + 1)`` (``c`` = 1, or 1/2 and 1/sqrt 2 on the
    middle bin's row/column for odd ``T``). The halves have equal size for even ``T`` and are
    then stacked into one batch (half the number of tensor operations). Returns a list of
    ``(halves, (dsq1, dsq2, sign, scale))`` with ``halves`` the half indices (0 even, 1 odd)
    in the batch and, each ``(B, 1, Th, Th)``, the squared lags of both terms, the sign of the
    second, and ``c``.
    """
    sizes = (n_bins - n_bins // 2, n_bins // 2)
    groups = [[0, 1]] if sizes[0] == sizes[1] else [[0], [1]]
    out = []
    for halves in groups:
        th = sizes[halves[0]]
        if th == 0:
            continue
        h = torch.arange(th, dtype=dtype, device=device)
        dsq1 = ((h[:, None] - h[None, :]) ** 2).expand(len(halves), 1, th, th)
        dsq2 = ((h[:, None] + h[None, :] - (n_bins - 1)) ** 2).expand(len(halves), 1, th, th)
        sign = torch.tensor([1.0 if i == 0 else -1.0 for i in halves], dtype=dtype, device=device)[:, None, None, None]
        c = torch.ones(th, dtype=dtype, device=device)
        if halves == [0] and n_bins % 2:
            c[-1] = _RSQRT2
        out.append((halves, (dsq1, dsq2, sign, (c[:, None] * c[None, :]).expand(len(halves), 1, th, th))))
    return out


def _folded_kernels(gamma: torch.Tensor, eps: torch.Tensor, grid, derivatives: bool = False):
    """Folded GP covariances ``(B, q, Th, Th)`` of one group of :func:`_fold_grids` and, with
    ``derivatives``, their first and second derivatives in ``log gamma`` (``(K, dK, d2K)``),
    straight from the grids (no ``(q, T, T)`` matrix is formed)."""
    dsq1, dsq2, sign, scale = grid
    g = gamma[:, None, None]
    e = eps[:, None, None]
    e1, e2 = torch.exp(-0.5 * g * dsq1), torch.exp(-0.5 * g * dsq2)
    eye = torch.eye(dsq1.shape[-1], dtype=gamma.dtype, device=gamma.device)
    K = (1 - e) * scale * (e1 + sign * e2) + e * eye
    if not derivatives:
        return K
    m1, m2 = dsq1 * e1, sign * dsq2 * e2
    d1 = -0.5 * (1 - e) * g * scale * (m1 + m2)                                  # dK / dlog(gamma)
    d2 = d1 + 0.25 * (1 - e) * g * g * scale * (dsq1 * m1 + dsq2 * m2)          # d2K / dlog(gamma)^2
    return K, d1, d2


def _fold_matrix_halves(gamma, eps, n_bins):
    """Folded covariances as a list ``[(q, Te, Te), (q, To, To)]`` (for tests and readers)."""
    out = [None, None]
    for halves, grid in _fold_grids(n_bins, gamma.dtype, gamma.device):
        K = _folded_kernels(gamma, eps, grid)
        for j, i in enumerate(halves):
            out[i] = K[j]
    return [k if k is not None else gamma.new_zeros(len(gamma), 0, 0) for k in out]


# --- E-step -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class FoldedTrials:
    """Equal-length trials ``y`` ``(N, T, p)`` folded in time once, with the sums EM reuses.

    ``folded``: ``(N, T, p)``, contiguous, the even coordinates (``Te = ceil(T/2)`` of them)
    then the odd ones (``To = floor(T/2)``); ``even``/``odd``: views of its two parts;
    ``ones_even``: the folded all-ones time course ``(Te,)`` (the odd part of a constant is 0);
    ``sum_y``, ``sum_yy``: ``(p,)`` sums of ``y`` and ``y**2`` over trials and bins.
    """

    folded: torch.Tensor
    n_even: int
    ones_even: torch.Tensor
    sum_y: torch.Tensor
    sum_yy: torch.Tensor
    n_bins: int

    @classmethod
    def from_trials(cls, y: torch.Tensor) -> "FoldedTrials":
        """Fold trials ``y`` ``(N, T, p)``."""
        n, T, p = y.shape
        folded = torch.cat(_fold(y, 1), 1)
        ones_even, _ = _fold(torch.ones(T, dtype=y.dtype, device=y.device), 0)
        return cls(folded, len(ones_even), ones_even, y.sum((0, 1)), (y * y).sum((0, 1)), T)

    @property
    def even(self) -> torch.Tensor:
        """Even (time-reversal symmetric) coordinates ``(N, Te, p)``, a view."""
        return self.folded[:, :self.n_even]

    @property
    def odd(self) -> torch.Tensor:
        """Odd (antisymmetric) coordinates ``(N, To, p)``, a view."""
        return self.folded[:, self.n_even:]


@dataclass(frozen=True)
class Posterior:
    """Posterior of the latents of ``N`` equal-length trials (``T`` bins, ``q`` latents).

    ``mean_even``/``mean_odd``: posterior means in folded time, ``(N, Te, q)``/``(N, To, q)``;
    ``cov_even``/``cov_odd``: the posterior covariance (shared by all trials) of each fold,
    ``(Te*q, Te*q)``/``(To*q, To*q)`` time-major (index ``h * q + i``), or None;
    ``log_likelihood``: marginal log-likelihood summed over trials, or None. ``mean``
    ``(N, T, q)`` and :meth:`cov` ``(T, q, T, q)`` give them back in time.
    """

    mean_even: torch.Tensor
    mean_odd: torch.Tensor
    cov_even: torch.Tensor | None
    cov_odd: torch.Tensor | None
    log_likelihood: float | None

    @property
    def mean(self) -> torch.Tensor:
        """Posterior means ``(N, T, q)`` (trial, time, latent)."""
        return _unfold(self.mean_even, self.mean_odd, 1)

    def _cov4(self):
        te, q = self.mean_even.shape[1:]
        to = self.mean_odd.shape[1]
        return self.cov_even.reshape(te, q, te, q), self.cov_odd.reshape(to, q, to, q)

    def cov(self) -> torch.Tensor:
        """Posterior covariance ``(T, q, T, q)`` in time (``cov[t, i, s, j]``), shared by all trials."""
        ce, co = self._cov4()
        return _unfold_blockdiag(ce, co, 0, 2)

    def summed_time_cov(self) -> torch.Tensor:
        """``sum_t Cov[x_t]`` ``(q, q)`` (folding is orthogonal, so traces over time are kept)."""
        ce, co = self._cov4()
        return torch.diagonal(ce, dim1=0, dim2=2).sum(-1) + torch.diagonal(co, dim1=0, dim2=2).sum(-1)

    def latent_cov_folded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Each latent's own covariance over time, folded: ``(q, Te, Te)`` and ``(q, To, To)``."""
        ce, co = self._cov4()
        return (torch.diagonal(ce, dim1=1, dim2=3).permute(2, 0, 1),
                torch.diagonal(co, dim1=1, dim2=3).permute(2, 0, 1))


def _posterior_folded(data: FoldedTrials, params: GPFAParams, with_cov: bool, with_log_likelihood: bool) -> Posterior:
    """The E-step on folded trials (see :func:`gpfa_posterior`)."""
    n, te, p = data.even.shape
    T = data.n_bins
    q = params.C.shape[1]
    dtype, device = params.C.dtype, params.C.device
    crinv = params.C.T / params.R                                       # (q, p)
    a = crinv @ params.C                                                # (q, q)
    cd = crinv @ params.d                                               # (q,)
    rhs = (data.folded.reshape(-1, p) @ crinv.T).reshape(n, T, q)
    rhs_even = rhs[:, :te] - data.ones_even[:, None] * cd              # (N, Te, q)
    rhs_odd = rhs[:, te:]                                               # (N, To, q)
    rhs_halves = (rhs_even, rhs_odd)
    means = [rhs_even.new_zeros(rhs.shape) for rhs in rhs_halves]
    covs = [rhs_even.new_zeros(0, 0), rhs_even.new_zeros(0, 0)]
    logdet = 0.0
    for halves, grid in _fold_grids(T, dtype, device):
        k = _folded_kernels(params.gamma, params.eps, grid)               # (B, q, Th, Th)
        nb, th = len(halves), k.shape[-1]
        lk = torch.linalg.cholesky(k)
        logdet = logdet + 2 * torch.log(torch.diagonal(lk, dim1=-2, dim2=-1)).sum()
        # M = K^-1 + I kron (C'R^-1 C), time-major: M[b, h, i, h', j]
        m = torch.zeros(nb, th, q, th, q, dtype=dtype, device=device)
        torch.diagonal(m, dim1=2, dim2=4).copy_(torch.cholesky_inverse(lk).permute(0, 2, 3, 1))
        torch.diagonal(m, dim1=1, dim2=3).add_(a[None, :, :, None])
        lm = torch.linalg.cholesky(m.reshape(nb, th * q, th * q))
        logdet = logdet + 2 * torch.log(torch.diagonal(lm, dim1=-2, dim2=-1)).sum()
        b = torch.stack([rhs_halves[i].reshape(n, th * q) for i in halves]).transpose(1, 2)  # (B, Th*q, N)
        if with_cov:
            cov = torch.cholesky_inverse(lm)
            mean = cov @ b
        else:
            cov = None
            mean = torch.cholesky_solve(b, lm)
        for j, i in enumerate(halves):
            means[i] = mean[j].T.reshape(n, th, q)
            covs[i] = cov[j] if cov is not None else None
    out = [(means[i], covs[i], rhs_halves[i]) for i in (0, 1)]
    (m_even, c_even, r_even), (m_odd, c_odd, r_odd) = out
    ll = None
    if with_log_likelihood:
        d = params.d
        quad = ((data.sum_yy - 2 * d * data.sum_y + n * T * d * d) / params.R).sum()
        quad = quad - (r_even * m_even).sum() - (r_odd * m_odd).sum()
        ll = float(-0.5 * (n * (T * torch.log(params.R).sum() + logdet + p * T * _LOG2PI) + quad))
    return Posterior(m_even, m_odd, c_even, c_odd, ll)


def gpfa_posterior(y: torch.Tensor, params: GPFAParams, *, observed: torch.Tensor | None = None,
                   with_cov: bool = True, with_log_likelihood: bool = True) -> Posterior:
    """Exact posterior of the latents of trials ``y`` ``(N, T, p)`` under ``params``.

    The posterior precision ``M = blockdiag(K_i^-1) + I_T kron (C' R^-1 C)`` (``(qT, qT)``) is
    the same for every trial; folded in time it splits into an even and an odd block, each
    factorised once (Cholesky) for all trials. Posterior means ``M^-1 b_n``, ``b_n = (C' R^-1
    (y_nt - d))_t``, are solved for all trials together. The marginal log-likelihood uses
    ``log|Sigma_y| = T log|R| + log|K| + log|M|`` and Woodbury, as Yu et al.'s code does.

    ``observed`` ``(N, T, p)`` bool marks missing entries (False) of ``y``, whose values are
    then never read: they are filled with the posterior prediction ``C x + d`` and the mean
    solved again until the fill settles (:func:`impute_missing`), whose fixed point is the exact
    posterior mean given the observed entries alone; the covariance and log-likelihood
    returned are then those of the completed data (missing entries counted as observed).
    """
    if observed is not None and not bool(observed.all()):
        y = impute_missing(y, observed, params)
    return _posterior_folded(FoldedTrials.from_trials(y), params, with_cov, with_log_likelihood)


def impute_missing(y: torch.Tensor, observed: torch.Tensor, params: GPFAParams, *, max_iter: int = 500,
                   tol: float = 1e-9, start: torch.Tensor | None = None) -> torch.Tensor:
    """``y`` ``(N, T, p)`` with its missing entries (``observed`` False) set to ``C E[x | y_obs] + d``.

    Iterates fill -> posterior mean -> fill from ``start`` (default: each dimension's mean
    over its observed entries), a preconditioned Richardson iteration whose fixed point solves
    ``(K^-1 + H_o' R_o^-1 H_o) x = H_o' R_o^-1 (y_o - d_o)``, the posterior of the observed
    entries alone; stops when no filled entry moves by more than ``tol``. Observed entries are
    returned unchanged; missing ones never influence the result.
    """
    observed = observed.to(torch.bool)
    zero = torch.zeros((), dtype=y.dtype, device=y.device)
    y_obs = torch.where(observed, y, zero)
    if start is None:
        n = observed.sum((0, 1)).clamp_min(1)
        start = (y_obs.sum((0, 1)) / n).expand_as(y)
    filled = torch.where(observed, y_obs, start)
    for _ in range(max_iter):
        post = _posterior_folded(FoldedTrials.from_trials(filled), params, False, False)
        new = torch.where(observed, y_obs, post.mean @ params.C.T + params.d)
        change = float((new - filled).abs().max())
        filled = new
        if change < tol:
            break
    return filled


# --- M-step for the timescales ------------------------------------------------------------------

def _gp_objective(log_gamma, eps, p_even, p_odd, n_trials, grids, derivatives: bool = True):
    """GP term ``-N/2 log|K_i| - 1/2 tr(K_i^-1 P_i)`` per latent and its first and second
    derivatives in ``log gamma_i`` (all ``(q,)``). ``P_i`` is given folded (even-even and odd-odd
    blocks ``p_even``, ``p_odd``; the cross blocks do not enter because ``K^-1`` has none), and
    K is folded alike, so the work is two half-size problems. Without ``derivatives`` only the
    objective is computed (the derivatives come back as None)."""
    tr = lambda x: torch.diagonal(x, dim1=-2, dim2=-1).sum(-1)  # noqa: E731
    dot = lambda a, b: (a * b).sum((-2, -1))                    # noqa: E731  tr(a b') = tr(a' b)
    f = f1 = f2 = 0.0
    p_halves = (p_even, p_odd)
    for halves, grid in grids:
        ks = _folded_kernels(torch.exp(log_gamma), eps, grid, derivatives=derivatives)
        k = ks[0] if derivatives else ks                                     # (B, q, Th, Th)
        pm = torch.stack([p_halves[i] for i in halves])
        L = torch.linalg.cholesky(k)
        k_inv = torch.cholesky_inverse(L)
        logdet = 2 * torch.log(torch.diagonal(L, dim1=-2, dim2=-1)).sum(-1)
        f = f + (-0.5 * n_trials * logdet - 0.5 * dot(k_inv, pm)).sum(0)
        if not derivatives:
            continue
        _, a1, a2 = ks
        kd1 = k_inv @ a1
        kp = k_inv @ pm
        w = kp @ k_inv                                 # K^-1 P K^-1
        kd1kd1 = kd1 @ kd1
        f1 = f1 + (-0.5 * n_trials * tr(kd1) + 0.5 * dot(w, a1)).sum(0)
        f2 = f2 + (-0.5 * n_trials * (dot(k_inv, a2) - tr(kd1kd1))
                   + 0.5 * (dot(w, a2) - 2 * dot(kd1kd1, kp.transpose(-2, -1)))).sum(0)
    if not derivatives:
        return f, None, None
    return f, f1, f2


def update_timescales(log_gamma: torch.Tensor, eps: torch.Tensor, p_even: torch.Tensor, p_odd: torch.Tensor,
                      n_trials: int, n_steps: int = 2, max_step: float = 2.0, step_tol: float = 1e-7) -> torch.Tensor:
    """M-step for the GP timescales: safeguarded Newton ascent in ``log gamma``, all latents at once.

    Maximises ``-N/2 log|K_i| - 1/2 tr(K_i^-1 P_i)`` from the current ``log_gamma`` ``(q,)``,
    where ``P_i`` (summed posterior second moments of latent ``i`` over trials) is given in
    folded time coordinates, ``p_even`` ``(q, Te, Te)`` and ``p_odd`` ``(q, To, To)``. Newton
    steps where the objective is locally concave, otherwise unit gradient steps, capped at
    ``max_step``; each latent halves its step until the objective does not fall, so it never
    decreases; a latent stops once its step is below ``step_tol``. Returns the new
    ``log_gamma`` ``(q,)``.
    """
    grids = _fold_grids(p_even.shape[-1] + p_odd.shape[-1], p_even.dtype, p_even.device)
    f, f1, f2 = _gp_objective(log_gamma, eps, p_even, p_odd, n_trials, grids)
    active = torch.ones_like(log_gamma, dtype=torch.bool)
    for step_i in range(n_steps):
        last = step_i == n_steps - 1   # the last step's candidates need no derivatives
        step = torch.where(f2 < 0, -f1 / f2.clamp(max=-1e-300), torch.sign(f1))
        step = torch.where(active, step.clamp(-max_step, max_step), torch.zeros_like(step))
        active = active & (step.abs() > step_tol)
        if not active.any():
            break
        scale = torch.ones_like(step)
        for _ in range(20):
            cand = log_gamma + scale * step
            fc, f1c, f2c = _gp_objective(cand, eps, p_even, p_odd, n_trials, grids, derivatives=not last)
            worse = active & ~(fc >= f)
            if not worse.any():
                break
            scale = torch.where(worse, scale / 2, scale)
        ok = active & (fc >= f)
        active = ok  # a latent whose step could not be made uphill is at its optimum (to rounding)
        log_gamma = torch.where(ok, cand, log_gamma)
        if last:
            break
        f, f1, f2 = torch.where(ok, fc, f), torch.where(ok, f1c, f1), torch.where(ok, f2c, f2)
    return log_gamma


def segment_trials(y: torch.Tensor, segment_bins: int) -> torch.Tensor:
    """Cut trials ``y`` ``(N, T, p)`` into ``ceil(T / L)`` segments of ``L = segment_bins`` bins each,
    ``(N * ceil(T / L), L, p)``, evenly spaced so that every bin is covered (neighbours overlap
    when ``L`` does not divide ``T``; Yu et al.'s code draws the overlaps at random instead)."""
    n, T, p = y.shape
    if segment_bins >= T:
        return y
    starts = np.round(np.linspace(0, T - segment_bins, math.ceil(T / segment_bins))).astype(int)
    idx = torch.as_tensor(starts[:, None] + np.arange(segment_bins)[None, :], device=y.device)
    return y[:, idx].reshape(-1, segment_bins, p)


def gpfa_em(y, n_latents: int, *, observed=None, tau_init_bins: float = 5.0, eps: float = 1e-3, max_iter: int = 500,
            tol: float = 1e-6, learn_tau: bool = True, min_var_frac: float = 0.01, segment_bins: int | None = None,
            device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64, progress: bool = False) -> GPFAFit:
    """Fit GPFA to equal-length trials ``y`` ``(N, T, p)`` (any real observations) by EM.

    Initialised like Yu et al. / elephant: ``d`` = mean, ``C`` and ``R`` from factor analysis
    of all bins, timescales ``tau_init_bins``, GP noise ``eps`` (fixed). Each iteration: the
    exact E-step (:func:`gpfa_posterior`), closed-form ``C, d`` and diagonal ``R`` (floored at
    ``min_var_frac`` times each dimension's variance against Heywood cases, as elephant), then
    timescale Newton steps (:func:`update_timescales`) if ``learn_tau``. Stops when an
    iteration's log-likelihood gain is below ``tol`` times the total gain since the first
    update (Yu et al.'s and elephant's criterion, ``(LL_k - LL_base) < (1 + tol) (LL_{k-1} -
    LL_base)``), or after ``max_iter`` updates. ``segment_bins``: if given, train on segments of
    that many bins (:func:`segment_trials`; Yu et al.'s and elephant's training scheme, 20 bins
    by default there): cheaper, at the price of the correlations between segments; the
    log-likelihoods are then those of the segments. ``observed`` ``(N, T, p)`` bool marks missing
    entries (False), never read: they start at each dimension's observed mean and, after every
    E-step, are replaced by the prediction ``C E[x] + d`` (EM with the missing entries imputed,
    whose E-step fixed point is the posterior given the observed entries; the log-likelihoods
    are then those of the completed data, and need not increase). ``progress``: show a
    ``GPFA EM`` bar of the iterations (tqdm, not left behind). Returns :class:`GPFAFit`.
    """
    from tqdm.auto import tqdm

    t0 = _time.perf_counter()
    y = y.to(device=device, dtype=dtype) if isinstance(y, torch.Tensor) else \
        torch.as_tensor(np.asarray(y), dtype=dtype, device=device)
    mask = None
    if observed is not None and not np.all(np.asarray(observed)):
        mask = torch.as_tensor(np.asarray(observed, bool), device=device)
    if segment_bins is not None:
        y = segment_trials(y, int(segment_bins))
        mask = None if mask is None else segment_trials(mask, int(segment_bins))
    if mask is not None:
        n_obs = mask.sum((0, 1)).clamp_min(1)
        y = torch.where(mask, y, (torch.where(mask, y, torch.zeros((), dtype=dtype, device=device)).sum((0, 1))
                                  / n_obs).expand_as(y))
        y_obs = y
    n, T, p = y.shape
    q = int(n_latents)
    flat = y.reshape(-1, p)
    fa = factor_analysis(flat.cpu().numpy(), q, min_var_frac=min_var_frac)
    as_t = lambda a: torch.as_tensor(a, dtype=dtype, device=device)  # noqa: E731
    var = flat.var(0, unbiased=False)
    # a neuron silent in every training bin has zero variance: keep its floor positive
    var_floor = torch.clamp(min_var_frac * var, min=1e-8 * float(var.max().clamp(min=1e-300)))
    eps_t = torch.full((q,), float(eps), dtype=dtype, device=device)
    log_gamma = torch.full((q,), -2.0 * math.log(tau_init_bins), dtype=dtype, device=device)
    # start inside the M-step's feasible set (R >= floor), so that every EM step is uphill
    params = GPFAParams(as_t(fa.C), as_t(fa.d), torch.maximum(as_t(fa.R), var_floor), torch.exp(log_gamma), eps_t)

    data = FoldedTrials.from_trials(y)
    sum_y, sum_yy = data.sum_y, data.sum_yy
    n_bins = n * T
    lls: list[float] = []
    converged = False
    bar = tqdm(total=max_iter, desc="GPFA EM", unit="iter", disable=not progress, leave=False, mininterval=0.5)
    for it in range(max_iter + 1):
        if it:
            bar.update()
        post = _posterior_folded(data, params, with_cov=True, with_log_likelihood=True)
        post_C, post_d = params.C, params.d
        lls.append(post.log_likelihood)
        if it >= 2 and (lls[-1] - lls[1]) < (1 + tol) * (lls[-2] - lls[1]):
            converged = True
            break
        if it == max_iter:
            break
        # ---- M-step: C, d, R in closed form (Yu et al. 2009, appendix), in folded time ----
        me, mo = post.mean_even, post.mean_odd                       # (N, Te, q), (N, To, q)
        m2 = torch.cat([me, mo], 1).reshape(-1, q)                   # folded like data.folded
        pauto = n * post.summed_time_cov() + m2.T @ m2               # sum_nt E[x_t x_t']
        sum_x = data.ones_even @ me.sum(0)                           # (q,) = sum_nt E[x_t]
        sum_yx = (m2.T @ data.folded.reshape(-1, p)).T               # (p, q) = sum_nt y_t E[x_t]'
        top = torch.cat([pauto, sum_x[:, None]], 1)
        bottom = torch.cat([sum_x, torch.tensor([float(n_bins)], dtype=dtype, device=device)])[None]
        gram = torch.cat([top, bottom], 0)                           # (q+1, q+1)
        cd = torch.linalg.solve(gram, torch.cat([sum_yx, sum_y[:, None]], 1).T).T  # (p, q+1)
        C, d = cd[:, :q], cd[:, q]
        R = (sum_yy - d * sum_y - (C * sum_yx).sum(1)) / n_bins
        R = torch.maximum(R, var_floor)
        # ---- M-step: timescales, on folded second moments ----
        if learn_tau:
            ce, co = post.latent_cov_folded()
            p_even = n * ce + torch.einsum("nti,nsi->its", me, me)
            p_odd = n * co + torch.einsum("nti,nsi->its", mo, mo)
            log_gamma = update_timescales(log_gamma, eps_t, p_even, p_odd, n)
        params = GPFAParams(C, d, R, torch.exp(log_gamma), eps_t)
        if mask is not None:  # impute the missing entries from this iteration's posterior
            y = torch.where(mask, y_obs, post.mean @ post_C.T + post_d)
            data = FoldedTrials.from_trials(y)
            sum_y, sum_yy = data.sum_y, data.sum_yy
    bar.close()
    return GPFAFit(params, np.asarray(lls), len(lls) - 1, converged, _time.perf_counter() - t0)


class GPFA(LatentModel):
    """Gaussian-process factor analysis (Yu et al. 2009) on sqrt spike counts, EM in torch.

    ``n_latents``: latent dimensions ``q``. ``tau_init_ms``: initial GP timescale (ms; the
    bin width comes from the recording's ``attrs["bin_width"]``). ``max_iter``, ``tol``: EM cap
    and relative log-likelihood tolerance (see :func:`gpfa_em`). ``learn_tau``: learn the
    timescales (else fixed at ``tau_init_ms``). ``eps``: GP noise variance (fixed, 1e-3 as Yu
    et al.). ``min_var_frac``: private-variance floor. ``readout``: ``"glm"`` (default) maps
    latents inferred from held-in neurons to every neuron's rate with the shared Poisson GLM;
    ``"gaussian"`` uses GPFA's own linear readout, ``E[count] = E[y^2] = (c_j' x + d_j)^2 +
    c_j' Sigma_t c_j + R_j`` (posterior mean and covariance of ``x`` from held-in neurons).
    On Lorenz data the GLM is the better of the two in co-bps (it can model the exponential
    rate nonlinearity), hence the default. ``segment_bins``: train on segments of that many
    bins (Yu et al.'s / elephant's scheme, faster) instead of whole trials (default, None).
    ``device``, ``dtype``: where the EM runs (any torch device; float64 by default);
    ``progress``: show a bar of the EM iterations.

    ``fit`` learns on all neurons of the training trials. ``transform`` returns orthonormalised
    posterior-mean latents ``(trial, time, latent)`` from the held-in neurons only (their rows
    of ``C``, ``d``, ``R``). Learned: ``C_`` ``(neuron, latent)``, ``d_``, ``R_`` (numpy),
    ``tau_ms_`` ``(latent,)``, ``loadings_orth_`` ``(neuron, latent)`` (``U``), ``log_likelihood_``
    ``(n_iter_ + 1,)``, ``n_iter_``, ``converged_``, ``tol_``, ``em_seconds_``, ``fit_seconds_``.
    """

    _parameter_constraints = {
        "n_latents": [Interval(Integral, 1, None, closed="left")],
        "tau_init_ms": [Interval(Real, 0, None, closed="neither")],
        "max_iter": [Interval(Integral, 1, None, closed="left")],
        "tol": [Interval(Real, 0, None, closed="neither")],
        "learn_tau": ["boolean"],
        "eps": [Interval(Real, 0, 1, closed="neither")],
        "min_var_frac": [Interval(Real, 0, 1, closed="left")],
        "readout": [StrOptions({"glm", "gaussian"})],
        "readout_alpha": [Interval(Real, 0, None, closed="left")],
        "segment_bins": [Interval(Integral, 1, None, closed="left"), None],
        "device": [str],
        "dtype": "no_validation",
        "progress": ["boolean"],
    }

    def __init__(self, n_latents: int = 8, *, tau_init_ms: float = 100.0, max_iter: int = 500, tol: float = 1e-6,
                 learn_tau: bool = True, eps: float = 1e-3, min_var_frac: float = 0.01, readout: str = "glm",
                 readout_alpha: float = 1e-2, segment_bins: int | None = None, device: str = "cpu",
                 dtype: torch.dtype = torch.float64, progress: bool = False):
        self.n_latents = n_latents
        self.tau_init_ms = tau_init_ms
        self.max_iter = max_iter
        self.tol = tol
        self.learn_tau = learn_tau
        self.eps = eps
        self.min_var_frac = min_var_frac
        self.readout = readout
        self.readout_alpha = readout_alpha
        self.segment_bins = segment_bins
        self.device = device
        self.dtype = dtype
        self.progress = progress

    # ---- numerics -----------------------------------------------------------------------------
    def _fit_latents(self, counts, observed, heldin, bin_width):
        if self.n_latents > counts.shape[2]:
            raise ConfigError(f"n_latents = {self.n_latents} exceeds the {counts.shape[2]} neurons "
                              "(GPFA needs at most one latent per neuron)")
        bin_ms = bin_width * 1000.0
        res = gpfa_em(np.sqrt(counts), self.n_latents, observed=observed, tau_init_bins=self.tau_init_ms / bin_ms,
                      eps=self.eps, max_iter=self.max_iter, tol=self.tol, learn_tau=self.learn_tau,
                      min_var_frac=self.min_var_frac, segment_bins=self.segment_bins, device=self.device,
                      dtype=self.dtype, progress=self.progress)
        self.params_ = res.params
        self.log_likelihood_ = res.log_likelihood
        self.n_iter_ = res.n_iter
        self.converged_ = res.converged
        self.tol_ = self.tol
        self.em_seconds_ = res.seconds
        P = res.params
        self.C_ = P.C.cpu().numpy()
        self.d_ = P.d.cpu().numpy()
        self.R_ = P.R.cpu().numpy()
        self.tau_ms_ = (bin_ms / torch.sqrt(P.gamma)).cpu().numpy()
        self.loadings_orth_, self.orth_ = orthonormalise(self.C_)   # x_orth = orth_ @ x
        self._heldin = torch.as_tensor(heldin, device=self.device)

    def _uses_glm_readout(self):
        return self.readout == "glm"

    def _infer(self, counts_heldin, observed_heldin):
        """The posterior of the latents given the held-in neurons' observed bins (with its
        covariance for the ``"gaussian"`` readout)."""
        y = torch.as_tensor(np.sqrt(counts_heldin), dtype=self.dtype, device=self.device)
        obs = torch.as_tensor(observed_heldin, device=self.device)
        return gpfa_posterior(y, self.params_.rows(self._heldin), observed=obs,
                              with_cov=self.readout == "gaussian", with_log_likelihood=False)

    def _latents(self, post):
        return post.mean.cpu().numpy() @ self.orth_.T

    def _own_rates(self, post):
        P = self.params_
        m = post.mean @ P.C.T + P.d                                      # (N, T, p)
        cov_t = torch.diagonal(post.cov(), dim1=0, dim2=2)               # (q, q, T)
        var_t = torch.einsum("pi,ijt,pj->tp", P.C, cov_t, P.C)           # (T, p)
        return (m * m + var_t + P.R).cpu().numpy()

    def _forecast(self, post, n_forward):
        """Rates ``(trial, n_forward, neuron)`` in counts per bin for the bins after the window
        (NLB forward prediction, scored by fp-bps). The posterior mean of the GP latents
        ``E[x_obs | y]`` ``(trial, T, latent)`` from the held-in neurons of the ``T`` observed bins
        is extended with the exact predictive mean ``E[x_future | y] = K_fo K_oo^-1 E[x_obs | y]``
        (``x_future`` is independent of ``y`` given ``x_obs``), with the model's own
        squared-exponential kernel (timescales ``tau_ms_``, GP noise ``eps``), so forecasts relax
        to the prior mean ``x = 0`` beyond a few timescales. Rates come from the configured
        readout exactly as in ``predict``: the Poisson GLM on the orthonormalised latents
        (``"glm"``), or ``(C x + d)^2 + diag(C Sigma C') + R`` with the predictive covariance
        ``Sigma`` of the future latents (``"gaussian"``)."""
        mean_o = post.mean                                                  # (N, T, q)
        T = mean_o.shape[1]
        P = self.params_
        K = gp_covariances(P.gamma, P.eps, T + n_forward)                   # (q, T+F, T+F), bins
        k_oo, k_fo, k_ff = K[:, :T, :T], K[:, T:, :T], K[:, T:, T:]
        A = torch.cholesky_solve(k_fo.transpose(1, 2), torch.linalg.cholesky(k_oo)).transpose(1, 2)  # (q, F, T)
        mean_f = torch.einsum("ift,nti->nfi", A, mean_o)                    # (N, F, q)
        if self.readout == "gaussian":
            # Cov[x_f | y] = K_ff - A K_of + A Cov[x_o | y] A' (per bin, across latents)
            prior = torch.diagonal(k_ff, dim1=1, dim2=2) - (A * k_fo).sum(-1)          # (q, F)
            var_f = torch.diag_embed(prior.T) + torch.einsum("ift,tisj,jfs->fij", A, post.cov(), A)  # (F, q, q)
            m = mean_f @ P.C.T + P.d                                        # (N, F, p)
            return (m * m + torch.einsum("pi,fij,pj->fp", P.C, var_f, P.C) + P.R).cpu().numpy()
        feats = self._readout_features(mean_f.cpu().numpy() @ self.orth_.T)
        return self.readout_.predict(feats.reshape(-1, feats.shape[-1])).reshape(feats.shape[:2] + (self.n_neurons_,))
