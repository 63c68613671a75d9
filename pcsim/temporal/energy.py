"""The energy of dynamical PC, its prediction errors and its explicit (local) gradients.

Every equation of the generative model is written here once (see :mod:`pcsim.temporal`):
the errors of the prior, dynamics and observation terms, their energies per trial, time bin
and term, the value gradient ``dE/dx`` that relaxation descends, the MAP learning rules
``dE/dtheta`` (Hebbian products at point latents) and the Gauss-Newton curvature, block
tridiagonal in time, that both the preconditioned relaxation and the Laplace posterior use.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..activations import get_activation
from ..errors import ConfigError, DataError
from .network import Observations, TemporalPCNetwork, _g, _readout, check_latents, observations

Tensor = torch.Tensor

TERMS = ("prior", "dynamics", "observation")


# --------------------------------------------------------------------------- errors and energy
@dataclass
class TemporalErrors:
    """Prediction errors at one state ``x: (E, B, T, D)``.

    ``eps0 = x_1 - m_0`` ``(E, B, D)`` and ``peps0 = Pi_0 eps0``; ``eps`` ``(E, B, T-1, D)`` the
    dynamics errors ``x_t - g(x_{t-1})`` for ``t = 2..T`` and ``peps = Pi_x eps``; ``eta``
    ``(E, B, T, N)`` the predicted natural parameter (log rate for Poisson); ``rate``
    ``lambda = exp(eta)`` (counts per bin; Poisson) or ``eta`` (Gaussian); ``obs_error``
    ``(E, B, T, N)`` the masked, precision-weighted observation error ``m (y - lambda)`` or
    ``m Pi_y (y - eta)``; ``fx = f(x)`` ``(E, B, T, D)``.
    """

    eps0: Tensor
    peps0: Tensor
    eps: Tensor
    peps: Tensor
    eta: Tensor
    rate: Tensor
    obs_error: Tensor
    fx: Tensor


def _errors(net: TemporalPCNetwork, x: Tensor, obs: Observations) -> TemporalErrors:
    fx = get_activation(net.activation).f(x)
    pi0 = net.prior_log_precision.exp()
    pix = net.dynamics_log_precision.exp().unsqueeze(1)  # (E, 1, 1, D|1)
    eps0 = x[:, :, 0] - net.prior_mean
    eps = x[:, :, 1:] - _g(net, x[:, :, :-1], fx[:, :, :-1])
    eta = _readout(net, x)
    if net.observation == "poisson":
        rate = eta.exp()
        err = obs.mask * (obs.y - rate)
    else:
        rate = eta
        err = obs.mask * net.observation_log_precision.exp().unsqueeze(1) * (obs.y - eta)
    return TemporalErrors(eps0, pi0 * eps0, eps, pix * eps, eta, rate, err, fx)


def _term_energies(net: TemporalPCNetwork, x: Tensor, obs: Observations, er: TemporalErrors) -> Tensor:
    """Energy per trial, time bin and term ``(E, B, T, 3)`` (prior, dynamics, observation), log-det terms included when precisions are learned."""
    E, B, T, D = x.shape
    out = x.new_zeros(E, B, T, 3)
    out[:, :, 0, 0] = 0.5 * (er.eps0 * er.peps0).sum(-1)
    out[:, :, 1:, 1] = 0.5 * (er.eps * er.peps).sum(-1)
    if net.observation == "poisson":
        out[..., 2] = (obs.mask * torch.addcmul(er.rate, obs.y, er.eta, value=-1)).sum(-1)   # m (lambda - y eta)
    else:
        out[..., 2] = 0.5 * ((obs.y - er.eta) * er.obs_error).sum(-1)
    if net.learn_precision:
        out[:, :, 0, 0] -= 0.5 * _logdet(net.prior_log_precision, D)
        out[:, :, 1:, 1] -= 0.5 * _logdet(net.dynamics_log_precision, D).unsqueeze(-1)
        if net.observation == "gaussian":
            lp = net.observation_log_precision.unsqueeze(1).expand(E, 1, 1, net.n_obs)
            out[..., 2] -= 0.5 * (obs.mask * lp).sum(-1)
    return out


def _logdet(lp: Tensor, n: int) -> Tensor:
    """``log det Pi`` ``(E, 1)`` of a per-unit ``(E, 1, n)`` or scalar ``(E, 1, 1)`` log-precision."""
    return lp.sum(-1) if lp.shape[-1] == n else lp[..., 0] * n


def prediction_errors(net: TemporalPCNetwork, x: Tensor, y, mask=None) -> TemporalErrors:
    """The prediction errors of every term at latents ``x: (E, B, T, D)`` for observations ``y`` (``(B, T, N)``) and ``mask`` (see :func:`observations`)."""
    obs = observations(net, y, mask)
    return _errors(net, check_latents(net, x, obs), obs)


def term_energies(net: TemporalPCNetwork, x: Tensor, y, mask=None) -> Tensor:
    """Energy per ensemble member, trial, time bin and term, ``(E, B, T, 3)``; terms are ``TERMS`` = (prior, dynamics, observation).

    The prior term sits in bin 0, the dynamics term of bin ``t`` is the error of predicting
    ``x_t`` from ``x_{t-1}`` (0 in bin 0). Includes ``-1/2 log det Pi`` when precisions are
    learned; the Poisson term omits ``log y!`` (constant in latents and parameters).
    """
    obs = observations(net, y, mask)
    x = check_latents(net, x, obs)
    return _term_energies(net, x, obs, _errors(net, x, obs))


def energy(net: TemporalPCNetwork, x: Tensor, y, mask=None) -> Tensor:
    """Total energy of every trial, ``(E, B)`` (dimensionless, nats for the Poisson/Gaussian likelihood terms)."""
    return term_energies(net, x, y, mask).sum((-1, -2))


# --------------------------------------------------------------------------- explicit gradients
def _value_gradients(net: TemporalPCNetwork, x: Tensor, er: TemporalErrors) -> Tensor:
    act = get_activation(net.activation)
    A = net.dynamics_weights
    E, B, T, D = x.shape
    grad = torch.zeros_like(x)
    grad[:, :, 0] = er.peps0
    grad[:, :, 1:] += er.peps
    # the error each state causes in the step it predicts: -J_t^T Pi_x eps_{t+1}
    back = torch.bmm(er.peps.reshape(E, -1, D), A.transpose(1, 2)).reshape(er.peps.shape)
    slope = act.df(x[:, :, :-1], er.fx[:, :, :-1])
    grad[:, :, :-1] -= er.peps + slope * back
    # the observation error it causes: -C e_t
    grad -= torch.bmm(er.obs_error.reshape(E, B * T, -1), net.readout_weights.transpose(1, 2)).reshape(x.shape)
    return grad


def value_gradients(net: TemporalPCNetwork, x: Tensor, y, mask=None) -> Tensor:
    """Explicit ``dE/dx`` ``(E, B, T, D)`` at latents ``x: (E, B, T, D)``.

    ``dE/dx_t = Pi_x eps_t - (Pi_x eps_{t+1} + f'(x_t) * (Pi_x eps_{t+1} @ A^T)) - e_t @ C^T`` with
    ``Pi_0 (x_1 - m_0)`` in place of the first term at ``t = 1`` and no second term at ``t = T``;
    ``e_t`` is the observation error (module docstring). Local in time (Friston 2008; Millidge
    et al. 2023): each node reads its own error, the error of the step it predicts and its
    bin's observation error.
    """
    obs = observations(net, y, mask)
    x = check_latents(net, x, obs)
    return _value_gradients(net, x, _errors(net, x, obs))


def _parameter_gradients(net: TemporalPCNetwork, x: Tensor, obs: Observations, er: TemporalErrors) -> list[Tensor]:
    E, B, T, D = x.shape
    N = net.n_obs
    pre_dyn = er.fx[:, :, :-1].reshape(E, -1, D)
    peps = er.peps.reshape(E, -1, D)
    gA = torch.bmm(pre_dyn.transpose(1, 2), peps).div_(-B)                     # -f(x_{t-1})^T Pi_x eps_t
    gb = peps.sum(1, keepdim=True).div_(-B)
    err = er.obs_error.reshape(E, -1, N)
    gC = torch.bmm(x.reshape(E, -1, D).transpose(1, 2), err).div_(-B)          # -x_t^T e_t
    gd = err.sum(1, keepdim=True).div_(-B)
    gm = er.peps0.sum(1, keepdim=True).div_(-B)
    grads = [gA, gb, gC, gd, gm]
    if net.learn_precision:
        # d/dlog Pi of (1/2 Pi eps^2 - 1/2 log Pi) = 1/2 (Pi eps^2 - 1) per unit and bin
        sq0 = (er.peps0 * er.eps0).sum(1, keepdim=True) / B                    # (E, 1, D)
        grads.append(_precision_gradient(net.prior_log_precision, sq0, 1.0, D))
        sqx = (er.peps * er.eps).sum((1, 2)).unsqueeze(1) / B
        grads.append(_precision_gradient(net.dynamics_log_precision, sqx, float(T - 1), D))
        if net.observation == "gaussian":
            sqy = (er.obs_error * (obs.y - er.eta)).sum((1, 2)).unsqueeze(1) / B  # (E, 1, N)
            count = obs.mask.sum((1, 2)).unsqueeze(1) / B         # observed bins per channel
            count = count.expand(E, 1, N)
            if net.observation_log_precision.shape[-1] == 1:
                grads.append(0.5 * (sqy.sum(-1, keepdim=True) - count.sum(-1, keepdim=True)))
            else:
                grads.append(0.5 * (sqy - count))
    return grads


def _precision_gradient(lp: Tensor, sq: Tensor, count: float, n: int) -> Tensor:
    if lp.shape[-1] == 1:
        return 0.5 * (sq.sum(-1, keepdim=True) - count * n)
    return 0.5 * (sq - count)


#: the largest precision :func:`precision_m_step` sets: an error variance floor of 1e-4 of the
#: latents' unit variance (the PC latent model keeps its latents at unit variance)
MAX_PRECISION = 1e4


def precision_m_step(net: TemporalPCNetwork, grads: list[Tensor], n_bins: int) -> tuple[Tensor, Tensor]:
    """The closed-form M-step of the prior and dynamics log-precisions, from their learning-rule gradients.

    ``grads``: ordered as ``net.parameters()`` of a network with ``learn_precision`` (the MAP rules of
    :func:`parameter_gradients` or the Laplace-EM rules of
    :func:`pcsim.temporal.laplace.expected_parameter_gradients`), for trials of ``n_bins`` bins. Each
    log-precision's gradient is ``g = 1/2 (Pi S - n)``, with ``S`` the trial-mean (expected) squared
    error and ``n`` the errors it sums (``n_bins - 1`` dynamics errors, one prior error, per unit; times
    ``D`` for a scalar precision), so the energy is least at ``Pi* = n / S = Pi n / (2 g + n)``: the
    inverse (posterior-expected) error variance, the M-step of EM for the state noise of a linear
    dynamical system (Shumway & Stoffer 1982; Ghahramani & Hinton 1996). Returns the new
    ``(prior_log_precision, dynamics_log_precision)``, shaped like the network's, each at most
    :data:`MAX_PRECISION` (an error variance floor: with few trials the prior's errors can
    vanish, and an unbounded precision makes the posterior curvature singular in float32).
    """
    if not net.learn_precision:
        raise ConfigError("precision_m_step needs a network with learn_precision=True")
    names = net.parameter_names()
    if len(grads) != len(names):
        raise DataError(f"precision_m_step needs one gradient per parameter ({', '.join(names)}), got {len(grads)}")
    named = dict(zip(names, grads))
    D = net.latent_dim
    out = []
    for lp, g, count in ((net.prior_log_precision, named["prior_log_precision"], 1.0),
                         (net.dynamics_log_precision, named["dynamics_log_precision"], float(n_bins - 1))):
        n = count * (D if lp.shape[-1] == 1 else 1)
        out.append((lp + math.log(n) - (2.0 * g + n).clamp_min(1e-12 * n).log()).clamp_max(math.log(MAX_PRECISION)))
    return out[0], out[1]


def parameter_gradients(net: TemporalPCNetwork, x: Tensor, y, mask=None) -> list[Tensor]:
    """MAP learning rules: trial-mean ``dE/dtheta`` at point latents ``x: (E, B, T, D)``, ordered as ``net.parameters()``.

    The local rules, written as the Hebbian products they are (sums over time bins, means
    over trials): ``dE/dA = -f(x_{t-1})^T Pi_x eps_t``, ``dE/db = -Pi_x eps_t``,
    ``dE/dC = -x_t^T e_t`` (for Poisson ``e = m (y - lambda)``: post-synaptic spike-count error
    times pre-synaptic latent), ``dE/dd = -e_t``, ``dE/dm_0 = -Pi_0 (x_1 - m_0)``; learned
    log-precisions get ``1/2 (Pi eps^2 - 1)`` per unit and bin (Bogacz 2017). Descending
    these is the M-step of the PC generative model (Rao & Ballard 1999; Friston 2008). ``y``,
    ``mask``: see :func:`~pcsim.temporal.network.observations`. The gradients of the expected
    energy under a Laplace posterior are :func:`pcsim.temporal.laplace.expected_parameter_gradients`.
    """
    obs = observations(net, y, mask)
    x = check_latents(net, x, obs)
    return _parameter_gradients(net, x, obs, _errors(net, x, obs))


# --------------------------------------------------------------------------- curvature
def _dynamics_jacobian(net: TemporalPCNetwork, x: Tensor, er: TemporalErrors) -> tuple[Tensor, Tensor]:
    """``J_t = I + A^T diag(f'(x_t))`` ``(E, B, T-1, D, D)``, the column-vector Jacobian of ``g`` at ``x_t`` (``t < T``), and the slopes ``f'(x_t)`` ``(E, B, T-1, D)``."""
    E, B, T, D = x.shape
    slope = get_activation(net.activation).df(x[:, :, :-1], er.fx[:, :, :-1])
    At = net.dynamics_weights.transpose(1, 2).reshape(E, 1, 1, D, D)
    J = torch.addcmul(torch.eye(D, dtype=x.dtype, device=x.device), At, slope.unsqueeze(-2))  # J[j,i] = d+A[i,j] f'_i
    return J, slope


def _readout_outer(net: TemporalPCNetwork) -> Tensor:
    """The outer products ``c_n c_n^T`` of the readout columns, ``(E, D*D, N)``, so that ``sum_n w_n c_n c_n^T`` is one matrix product."""
    C = net.readout_weights                                                            # (E, D, N)
    return (C.unsqueeze(1) * C.unsqueeze(2)).reshape(C.shape[0], C.shape[1] ** 2, -1)


def _curvature(net: TemporalPCNetwork, x: Tensor, obs: Observations, er: TemporalErrors, damping: float):
    """Gauss-Newton curvature of E in one trial's latents, block tridiagonal in time.

    Returns ``diag`` ``(E, B, T, D, D)`` (blocks ``H_tt``) and ``lower`` ``(E, B, T-1, D, D)``
    (blocks ``H_{t+1,t}``), in column-vector convention. Exact for linear dynamics; for a
    non-linear ``f`` the term with ``f''`` is dropped, which keeps ``H`` positive definite.
    """
    E, B, T, D = x.shape
    pix = net.dynamics_log_precision.exp().reshape(E, 1, 1, -1) * torch.ones(D, dtype=x.dtype, device=x.device)  # (E,1,1,D)
    pi0 = net.prior_log_precision.exp().reshape(E, 1, -1) * torch.ones(D, dtype=x.dtype, device=x.device)        # (E,1,D)
    w = obs.mask * (er.rate if net.observation == "poisson" else net.observation_log_precision.exp().unsqueeze(1))
    w = w.expand(E, B, T, net.n_obs)
    # observation: C diag(w_t) C^T = sum_n w_tn c_n c_n^T, one matrix product over the outer products
    diag = torch.bmm(w.reshape(E, B * T, -1), _readout_outer(net).transpose(1, 2)).reshape(E, B, T, D, D)
    J, _ = _dynamics_jacobian(net, x, er)
    PJ = pix.unsqueeze(-1) * J                                                         # Pi_x J
    diag[:, :, :-1] += J.transpose(-1, -2) @ PJ
    # the diagonal terms, added on the blocks' diagonals in place (not as diagonal matrices)
    on_diagonal = diag.diagonal(dim1=-2, dim2=-1)                                      # (E, B, T, D) view
    on_diagonal[:, :, 1:] += pix
    on_diagonal[:, :, 0] += pi0
    if damping > 0:
        on_diagonal += damping
    return diag, -PJ


