"""Linear algebra of symmetric positive-definite block-tridiagonal matrices, batched.

The Gauss-Newton curvature of a dynamical PC energy couples only neighbouring time bins, so
its solves and the tridiagonal blocks of its inverse cost ``O(T D^3)`` by block-Cholesky
elimination (the information-form Kalman smoother; Rauch et al. 1965). Blocks are stored as
``diag`` ``(..., T, D, D)`` (``H_tt``) and ``lower`` ``(..., T-1, D, D)`` (``H_{t+1,t}``).

The recursions are sequential in ``T``; each of their steps is a batched product or factorisation
of one bin's blocks, a region of ``batch * D^3`` multiply-adds, and runs with the threads
:func:`pcsim.parallel.threads_for_work` gives that (one at a few dozen trials of ``D = 8``, whatever
the caller runs the rest of its step with: a team forked at each of thousands of regions of a few
microseconds costs more than it gains, and stalls beside other processes, :mod:`pcsim.parallel`).
"""

from __future__ import annotations

import math

import torch

from .. import parallel
from ..errors import InferenceDivergenceError

Tensor = torch.Tensor


def _check_factorised(failed: list[Tensor]) -> None:
    """Raise :class:`InferenceDivergenceError` naming the first time bin whose Schur complement had no Cholesky factor.

    ``failed``: per time bin, the ``info`` of :func:`torch.linalg.cholesky_ex` (``(...)``, 0 = success).
    """
    bad = torch.stack(failed, -1) > 0
    if bool(bad.any()):
        t = int(torch.nonzero(bad.reshape(-1, bad.shape[-1]).any(0))[0, 0])
        raise InferenceDivergenceError(f"curvature is not positive definite at time bin {t}; increase the damping",
                                       step=-1, layer=t)


def _threads(diag: Tensor) -> int:
    """Threads for the recursion over ``diag`` ``(..., T, D, D)``: sized by one bin's region, ``batch * D^3`` (module docstring)."""
    return parallel.threads_for_work(diag[..., 0, :, :].numel() * diag.shape[-1])


def solve_block_tridiagonal(diag: Tensor, lower: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``H s = rhs`` for symmetric positive-definite block-tridiagonal ``H``, batched.

    ``diag``: ``(..., T, D, D)`` blocks ``H_tt``; ``lower``: ``(..., T-1, D, D)`` blocks
    ``H_{t+1,t}``; ``rhs``: ``(..., T, D)``. Block Cholesky forward elimination then back
    substitution (the information-form Kalman smoother / Rauch-Tung-Striebel recursion),
    ``O(T D^3)`` per batch element, sequential in ``T`` and parallel over the batch.
    """
    batch, T, D = diag.shape[:-3], diag.shape[-3], diag.shape[-1]
    with parallel.threads(_threads(diag)):
        n = math.prod(batch)                                                    # (lower has no elements when T = 1)
        s = _solve(diag.reshape(n, T, D, D), lower.reshape(n, T - 1, D, D), rhs.reshape(n, T, D, 1))
    return s.reshape(batch + (T, D))


def _solve(diag: Tensor, lower: Tensor, rhs: Tensor) -> Tensor:
    """:func:`solve_block_tridiagonal` on one flat batch: ``diag`` ``(n, T, D, D)``, ``lower`` ``(n, T-1, D, D)``,
    ``rhs`` ``(n, T, D, 1)``; returns ``(n, T, D)``. Batched products (``bmm``, ``baddbmm``) of 3-d
    blocks, each fused with its subtraction: the recursion's time is its operation count."""
    T, D = diag.shape[1], diag.shape[-1]
    W, yv, failed = [], [], []
    S, z = diag[:, 0], rhs[:, 0]
    for t in range(T):
        if t > 0:
            Lo = lower[:, t - 1]
            S = torch.baddbmm(diag[:, t], Lo, W[-1], alpha=-1)                  # S_t = H_tt - H_{t,t-1} W_{t-1}
            z = torch.baddbmm(rhs[:, t], Lo, yv[-1], alpha=-1)                  # z_t = r_t - H_{t,t-1} y_{t-1}
        L, info = torch.linalg.cholesky_ex(S)
        failed.append(info)
        # one solve for both W_t = S_t^{-1} H_{t,t+1} and y_t = S_t^{-1} z_t
        both = z if t == T - 1 else torch.cat([lower[:, t].transpose(-1, -2), z], -1)
        sol = torch.cholesky_solve(both, L)
        yv.append(sol[..., D:] if t < T - 1 else sol)
        if t < T - 1:
            W.append(sol[..., :D])
    _check_factorised(failed)  # one check at the end: no device synchronisation inside the loop
    s = [yv[T - 1]]
    for t in range(T - 2, -1, -1):
        s.append(torch.baddbmm(yv[t], W[t], s[-1], alpha=-1))                   # s_t = y_t - W_t s_{t+1}
    return torch.cat(s[::-1], -1).transpose(-1, -2)


def block_tridiagonal_inverse(diag: Tensor, lower: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The tridiagonal blocks of ``H^{-1}`` for symmetric positive-definite block-tridiagonal ``H``, batched.

    ``diag``: ``(..., T, D, D)`` blocks ``H_tt``; ``lower``: ``(..., T-1, D, D)`` blocks ``H_{t+1,t}``.
    Returns ``(cov, cross, logdet)``: ``cov`` ``(..., T, D, D)`` the blocks ``(H^{-1})_tt``, ``cross``
    ``(..., T-1, D, D)`` the blocks ``(H^{-1})_{t,t+1}`` and ``logdet`` ``(...)`` = ``log det H``, by forward block elimination
    (Schur complements ``S_t``) and the backward recursion ``Sigma_t = S_t^{-1} + W_t Sigma_{t+1} W_t^T``,
    ``Sigma_{t,t+1} = -W_t Sigma_{t+1}`` with ``W_t = S_t^{-1} H_{t,t+1}`` (the Rauch-Tung-Striebel
    smoother's covariances; Rauch et al. 1965). ``O(T D^3)`` per batch element.
    """
    batch, T, D = diag.shape[:-3], diag.shape[-3], diag.shape[-1]
    with parallel.threads(_threads(diag)):
        n = math.prod(batch)
        cov, cross, logdet = _inverse(diag.reshape(n, T, D, D), lower.reshape(n, T - 1, D, D))
    return cov.reshape(batch + (T, D, D)), cross.reshape(batch + (T - 1, D, D)), logdet.reshape(batch)


def _inverse(diag: Tensor, lower: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`block_tridiagonal_inverse` on one flat batch ``(n, T, D, D)``, ``(n, T-1, D, D)`` (see :func:`_solve`)."""
    T, D = diag.shape[1], diag.shape[-1]
    S_inv, W, Ls, failed = [], [], [], []
    S = diag[:, 0]
    eye = torch.eye(D, dtype=diag.dtype, device=diag.device).expand(diag.shape[0], D, D)
    for t in range(T):
        if t > 0:
            S = torch.baddbmm(diag[:, t], lower[:, t - 1], W[-1], alpha=-1)
        L, info = torch.linalg.cholesky_ex(S)
        failed.append(info)
        Ls.append(L)
        if t < T - 1:
            # one solve for [S_t^{-1} | W_t] = S_t^{-1} [I | H_{t,t+1}] (cheaper than an inverse and a product)
            sol = torch.cholesky_solve(torch.cat([eye, lower[:, t].transpose(-1, -2)], -1), L)
            S_inv.append(sol[..., :D])
            W.append(sol[..., D:])
        else:
            S_inv.append(torch.cholesky_inverse(L))
    _check_factorised(failed)
    # log det H = sum_t log det S_t, from the factors' diagonals in one pass after the recursion
    logdet = 2 * torch.stack(Ls, 1).diagonal(dim1=-2, dim2=-1).log().sum((-2, -1))
    cov, minus_cross = [S_inv[T - 1]], []
    for t in range(T - 2, -1, -1):
        minus_cross.append(torch.bmm(W[t], cov[-1]))                            # W_t Sigma_{t+1}
        cov.append(torch.baddbmm(S_inv[t], minus_cross[-1], W[t].transpose(-1, -2)))
    cov_t = torch.stack(cov[::-1], 1)
    cross_t = -torch.stack(minus_cross[::-1], 1) if T > 1 else diag.new_zeros(diag.shape[:1] + (0, D, D))
    return 0.5 * (cov_t + cov_t.transpose(-1, -2)), cross_t, logdet
