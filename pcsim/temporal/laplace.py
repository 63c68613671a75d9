"""The Laplace posterior of dynamical PC, its free energy and the learning rules of Laplace EM.

At relaxed (MAP) latents the inverse Gauss-Newton curvature of the energy is the covariance
of a Gaussian posterior (Friston et al. 2007 variational Laplace). Its tridiagonal blocks give
the expected energy ``E_q[E]``, the variational free energy ``E_q[E] - H[q]`` and the gradients
of the expected energy (:func:`expected_parameter_gradients`: the M-step of Laplace EM,
Macke et al. 2011), beside the MAP rules of :func:`pcsim.temporal.energy.parameter_gradients`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from ..errors import DataError
from .blocktridiagonal import block_tridiagonal_inverse
from .energy import (TemporalErrors, _curvature, _dynamics_jacobian, _errors, _parameter_gradients,
                     _precision_gradient, _readout_outer, _term_energies)
from .network import Observations, TemporalPCNetwork, check_latents, observations

Tensor = torch.Tensor


# --------------------------------------------------------------------------- Laplace posterior
@dataclass
class LaplacePosterior:
    """A Gaussian posterior over one trial's latents: mean ``(E, B, T, D)`` and the tridiagonal blocks of its covariance.

    ``cov`` ``(E, B, T, D, D)``: ``Cov(x_t)``; ``cross`` ``(E, B, T-1, D, D)``: ``Cov(x_t, x_{t+1})``
    (dimensionless, latent units squared); ``log_det_precision`` ``(E, B)``: ``log det`` of the
    full inverse covariance (``None`` if unknown). Under the Laplace approximation (Friston et al.
    2007, variational Laplace; Macke et al. 2011 for Poisson dynamical systems) the mean is the
    relaxed (MAP) state and the covariance the inverse curvature of the energy there.
    """

    mean: Tensor
    cov: Tensor
    cross: Tensor
    log_det_precision: Tensor | None = None


def laplace_posterior(net: TemporalPCNetwork, x: Tensor, y, mask=None, *, damping: float = 0.0) -> LaplacePosterior:
    """The Laplace posterior at latents ``x: (E, B, T, D)`` (normally relaxed): covariance = inverse Gauss-Newton curvature of E.

    The curvature is the one the preconditioned relaxation uses (block tridiagonal in time);
    exact for linear dynamics. ``y``, ``mask``: see :func:`observations`. Friston et al. 2007.
    """
    obs = observations(net, y, mask)
    x = check_latents(net, x, obs)
    diag, lower = _curvature(net, x, obs, _errors(net, x, obs), damping)
    cov, cross, logdet = block_tridiagonal_inverse(diag, lower)
    return LaplacePosterior(x, cov, cross, logdet)


def free_energy(net: TemporalPCNetwork, posterior: LaplacePosterior, y, mask=None) -> Tensor:
    """Laplace variational free energy per trial, ``(E, B)`` in nats: ``E_q[E] - H[q]``.

    ``H[q] = 1/2 (T D log(2 pi e) - log det precision)`` is the entropy of the Gaussian posterior
    (needs ``posterior.log_det_precision``, as :func:`laplace_posterior` gives). Up to the
    ``log y!`` terms of a Poisson observation it bounds ``-log p(y)`` from above (Friston et al.
    2007); EM over the parameters descends it.
    """
    obs = observations(net, y, mask)
    q = _check_posterior(net, posterior, obs)
    return _free_energy(net, q, obs, _expected(net, q, obs))


def _free_energy(net, q, obs, ex) -> Tensor:
    if q.log_det_precision is None:
        raise DataError("posterior.log_det_precision is None; build the posterior with laplace_posterior")
    E_q = _expected_term_energies(net, q, obs, ex).sum((-1, -2))
    T, D = q.mean.shape[-2:]
    entropy = 0.5 * (T * D * math.log(2 * math.pi * math.e) - q.log_det_precision)
    return E_q - entropy


def free_energy_and_gradients(net: TemporalPCNetwork, posterior: LaplacePosterior, y, mask=None) -> tuple[Tensor, list[Tensor]]:
    """:func:`free_energy` ``(E, B)`` and :func:`expected_parameter_gradients` together, sharing their
    second moments (one pass where the two functions would make two): the M-step of Laplace EM and
    the bound it descends, for one minibatch."""
    obs = observations(net, y, mask)
    q = _check_posterior(net, posterior, obs)
    ex = _expected(net, q, obs)
    return _free_energy(net, q, obs, ex), _expected_gradients(net, q, obs, ex)


def _check_posterior(net: TemporalPCNetwork, q: LaplacePosterior, obs: Observations) -> LaplacePosterior:
    x = check_latents(net, q.mean, obs, "posterior mean")
    E, B, T, D = x.shape
    if tuple(q.cov.shape) != (E, B, T, D, D) or tuple(q.cross.shape) != (E, B, T - 1, D, D):
        raise DataError(f"posterior covariance blocks must be ({E}, {B}, {T}, {D}, {D}) and ({E}, {B}, {T - 1}, {D}, {D}), "
                        f"got {tuple(q.cov.shape)} and {tuple(q.cross.shape)}")
    return LaplacePosterior(x, q.cov.to(net.dtype), q.cross.to(net.dtype), q.log_det_precision)


@dataclass
class _Expected:
    """Second moments the expected energy needs (see :func:`expected_term_energies`)."""

    er: TemporalErrors
    J: Tensor        # (E, B, T-1, D, D) Jacobian of g at mean x_{t-1}, column convention
    slope: Tensor    # (E, B, T-1, D) f'(mean x_{t-1})
    JS: Tensor       # (E, B, T-1, D, D) J Cov(x_{t-1})
    dyn_var: Tensor  # (E, B, T-1, D) Var(eps_t) (the diagonal of Cov(eps_t)) to first order
    obs_var: Tensor  # (E, B, T, N) Var(eta_tn) = c_n' Cov(x_t) c_n
    rate: Tensor     # (E, B, T, N) E[lambda] (Poisson) or eta (Gaussian)
    obs_error: Tensor  # (E, B, T, N) m (y - E[lambda]) or m Pi_y (y - eta)


def _expected(net: TemporalPCNetwork, q: LaplacePosterior, obs: Observations) -> _Expected:
    x = q.mean
    E, B, T, D = x.shape
    er = _errors(net, x, obs)
    J, slope = _dynamics_jacobian(net, x, er)
    # eps_t = x_t - g(x_{t-1}) ~ linear: Cov = S_tt - J S_{t-1,t} - S_{t,t-1} J' + J S_{t-1,t-1} J'; the
    # precisions are diagonal, so only its diagonal enters: diag(J X) = rowsum(J * X'), diag(J S J') = rowsum(J S * J)
    JS = J @ q.cov[:, :, :-1]                                                # J Cov(x_{t-1})
    dyn_var = (q.cov[:, :, 1:].diagonal(dim1=-2, dim2=-1) - 2 * (J * q.cross.transpose(-1, -2)).sum(-1)
               + (JS * J).sum(-1))
    obs_var = torch.bmm(q.cov.reshape(E, B * T, D * D), _readout_outer(net)).reshape(E, B, T, -1)
    if net.observation == "poisson":
        rate = torch.add(er.eta, obs_var, alpha=0.5).exp_()                  # E[exp(eta)], eta Gaussian
        err = obs.mask * (obs.y - rate)
    else:
        rate = er.eta
        err = er.obs_error
    return _Expected(er, J, slope, JS, dyn_var, obs_var, rate, err)


def _expected_term_energies(net, q, obs, ex: _Expected) -> Tensor:
    x = q.mean
    E, B, T, D = x.shape
    out = _term_energies(net, x, obs, ex.er)
    pi0 = net.prior_log_precision.exp().expand(E, 1, D)
    pix = net.dynamics_log_precision.exp().reshape(E, 1, 1, -1).expand(E, 1, 1, D)
    out[:, :, 0, 0] += 0.5 * (pi0 * q.cov[:, :, 0].diagonal(dim1=-2, dim2=-1)).sum(-1)
    out[:, :, 1:, 1] += 0.5 * (pix * ex.dyn_var).sum(-1)
    if net.observation == "poisson":
        # E[exp(eta)] replaces exp(eta); the y*eta term is linear, its expectation is y*mean(eta)
        out[..., 2] += (obs.mask * (ex.rate - ex.er.rate)).sum(-1)
    else:
        piy = net.observation_log_precision.exp().unsqueeze(1)
        out[..., 2] += 0.5 * (obs.mask * piy * ex.obs_var).sum(-1)
    return out


def expected_term_energies(net: TemporalPCNetwork, posterior: LaplacePosterior, y, mask=None) -> Tensor:
    """Expected energy ``E_q[E]`` under a Gaussian posterior ``q``, per trial, time bin and term, ``(E, B, T, 3)``.

    Exact for linear dynamics (the Poisson term uses ``E[exp(eta)] = exp(mean + var/2)``); for a
    non-linear ``f`` the dynamics are linearised around the mean (Laplace, Friston et al. 2007).
    Adding the entropy of ``q`` gives the variational free energy whose minimisation over the
    parameters is the M-step of EM (Macke et al. 2011).
    """
    obs = observations(net, y, mask)
    q = _check_posterior(net, posterior, obs)
    return _expected_term_energies(net, q, obs, _expected(net, q, obs))


def expected_rates(net: TemporalPCNetwork, posterior: LaplacePosterior, y, mask=None) -> Tensor:
    """Every observed channel's mean under the Gaussian posterior ``q``, ``(E, B, T, N)``: for a Poisson
    observation the expected rate ``E_q[lambda] = exp(eta + 1/2 c_n' Cov(x_t) c_n)`` (counts per bin; the
    plug-in rate that maximises the expected Poisson log-likelihood of a count, where ``exp(eta)`` at the
    mean under-predicts by the posterior's spread), for a Gaussian one ``eta`` itself. ``y``, ``mask``
    (only shapes and checks matter here; every channel gets its rate): see :func:`observations`."""
    obs = observations(net, y, mask)
    q = _check_posterior(net, posterior, obs)
    return _expected(net, q, obs).rate


def expected_parameter_gradients(net: TemporalPCNetwork, posterior: LaplacePosterior, y, mask=None) -> list[Tensor]:
    """Laplace-EM learning rules: trial-mean gradients of the expected energy ``E_q[E]``, ordered as ``net.parameters()``.

    ``posterior``: a :class:`LaplacePosterior` over latents ``(E, B, T, D)``; ``y``, ``mask``: see
    :func:`~pcsim.temporal.network.observations`. The gradients of :func:`expected_term_energies`
    (summed over bins and terms, mean over trials): the MAP products of
    :func:`pcsim.temporal.energy.parameter_gradients` at the mean, with the expected rate
    ``E[lambda] = exp(eta + 1/2 c' Cov(x_t) c)`` in the observation error, plus the covariance
    terms ``C``: ``+ sum_t w_t Cov(x_t) c_n`` and ``A``: ``+ f'(x_{t-1}) * (Pi_x (J Cov(x_{t-1}) -
    Cov(x_t, x_{t-1})))^T`` (Laplace EM; Friston et al. 2007, Macke et al. 2011). The posterior
    uncertainty is what keeps MAP learning from shrinking the latents.
    """
    obs = observations(net, y, mask)
    q = _check_posterior(net, posterior, obs)
    return _expected_gradients(net, q, obs, _expected(net, q, obs))


def _expected_gradients(net: TemporalPCNetwork, q: LaplacePosterior, obs: Observations, ex: _Expected) -> list[Tensor]:
    x = q.mean
    E, B, T, D = x.shape
    N = net.n_obs
    er = ex.er
    # the Hebbian products at the mean, with E[lambda] in the observation error
    er_expected = replace(er, obs_error=ex.obs_error)
    grads = _parameter_gradients(net, x, obs, er_expected)
    # dynamics: d/dJ of 1/2 tr(P Cov(eps)) = P (J S_{t-1,t-1} - S_{t,t-1}); dJ[j,i]/dA[i,j] = f'_i
    pix = net.dynamics_log_precision.exp().reshape(E, 1, 1, -1, 1)              # rows j
    GJ = pix * (ex.JS - q.cross.transpose(-1, -2))                               # (E,B,T-1,D,D) [j,i]
    grads[0] = grads[0] + (ex.slope.unsqueeze(-1) * GJ.transpose(-1, -2)).sum((1, 2)) / B
    # readout: d/dc_n of the variance term = w_tn Cov(x_t) c_n, w = m E[lambda] (Poisson) or m Pi_y
    if net.observation == "poisson":
        w = obs.mask * ex.rate
    else:
        w = (obs.mask * net.observation_log_precision.exp().unsqueeze(1)).expand(E, B, T, N)
    w = w.expand(E, B, T, N)
    Sw = torch.bmm(q.cov.reshape(E, B * T, D * D).transpose(1, 2), w.reshape(E, B * T, N))  # (E, D*D, N)
    Sw = Sw.reshape(E, D, D, N)
    grads[2] = grads[2] + torch.einsum("eijn,ejn->ein", Sw, net.readout_weights) / B
    if net.learn_precision:
        k = 5
        d0 = q.cov[:, :, 0].diagonal(dim1=-2, dim2=-1)                              # (E, B, D)
        sq0 = (net.prior_log_precision.exp() * d0).sum(1, keepdim=True) / B
        grads[k] = grads[k] + _precision_gradient(net.prior_log_precision, sq0, 0.0, D)
        dx = ex.dyn_var                                                             # (E, B, T-1, D)
        sqx = (net.dynamics_log_precision.exp().unsqueeze(1) * dx).sum((1, 2)).unsqueeze(1) / B
        grads[k + 1] = grads[k + 1] + _precision_gradient(net.dynamics_log_precision, sqx, 0.0, D)
        if net.observation == "gaussian":
            piy = net.observation_log_precision.exp().unsqueeze(1)
            sqy = (obs.mask * piy * ex.obs_var).sum((1, 2)).unsqueeze(1) / B        # (E, 1, N)
            lp = net.observation_log_precision
            grads[k + 2] = grads[k + 2] + 0.5 * (sqy.sum(-1, keepdim=True) if lp.shape[-1] == 1 else sqy)
    return grads


