"""Dynamical (temporal) predictive coding: a generative PC network unrolled over time bins.

The value nodes are latent states ``x_t`` (``t = 1..T``) of every trial; each state predicts the
next one through residual dynamics and the observation of its own time bin::

    g(x)  = x + f(x) @ A + b                          (prediction of x_t from x_{t-1})
    eta_t = x_t @ C + d                               (prediction of the observation y_t)

    E = 1/2 Pi_0 |x_1 - m_0|^2                                            prior
      + sum_{t>1} 1/2 Pi_x |eps_t|^2,   eps_t = x_t - g(x_{t-1})         dynamics
      + sum_t sum_n m_tn O(y_tn; eta_tn)                                  observation

with ``O = 1/2 Pi_y (y - eta)^2`` (Gaussian) or ``O = exp(eta) - y eta`` (Poisson with an
exponential link: the negative log-likelihood up to ``log y!``), and ``m`` the observation
mask (0 for held-out neurons and missing bins). This is the dynamical generative model of
temporal predictive coding (Rao & Ballard 1997 Kalman-filter PC; Friston 2008 generalised
filtering; Millidge et al. 2023 temporal PC) with a Poisson observation energy for spike counts.
With learned precisions the energy gains ``-1/2 log det Pi`` per predicted quantity.

Every update is local in time. The gradient at ``x_t`` reads only the node's own dynamics
error, the error ``eps_{t+1}`` of the step it predicts and its observation error::

    dE/dx_t = Pi_x eps_t - J_t^T Pi_x eps_{t+1} - C (m (y_t - lambda_t))       (Poisson)
    J_t^T v = v + f'(x_t) * (v @ A^T)                                         (row-major)

where ``lambda = exp(eta)`` (counts per bin); for a Gaussian observation the last term reads
``-C (m Pi_y (y_t - eta_t))``. We call ``e_t = m (y_t - lambda_t)`` (resp. ``m Pi_y (y_t - eta_t)``)
the *observation error*: it is the precision-weighted error of the observation layer. The
parameters learn by the Hebbian products of these errors and pre-synaptic activity
(:func:`parameter_gradients`).

Relaxation (:func:`relax`) integrates ``tau dx/dt = -dE/dx`` with Euler steps of ``dt/tau``
(optionally heavy-ball momentum) for all trials at once, like :func:`pcsim.inference.relax`.
The Poisson energy of sparse spike counts is badly conditioned (the temporal coupling
``Pi_x`` is orders of magnitude stiffer than the data term), so plain Euler needs thousands of
steps. ``preconditioner="gauss-newton"`` instead integrates the *preconditioned* flow
``tau dx/dt = -H^{-1} dE/dx`` (same fixed points, same energy, still a descent of E), with
``H`` the Gauss-Newton curvature of the energy, which is block tridiagonal in time: a
step ``dt/tau = 1`` is a Newton step, solved per trial by a block-Cholesky (Kalman-smoother-like)
recursion in O(T D^3). The gradient it preconditions is the local one above; only the
preconditioner couples a trial's time bins. Trials whose energy would rise are stepped back
(halved steps), so the energy never increases.

The same curvature, inverted at the relaxed state, is the covariance of the Laplace posterior
(:func:`laplace_posterior`; Friston et al. 2007 variational Laplace). Its tridiagonal blocks
give the expected energy ``E_q[E]`` (:func:`expected_term_energies`), the variational free
energy (:func:`free_energy`) and the learning rules of Laplace EM (:func:`parameter_gradients`
with a posterior: the Hebbian products at the mean with the expected rate
``E[lambda] = exp(eta + 1/2 c' Cov(x_t) c)``, plus covariance terms; Macke et al. 2011). Learning
from point latents alone (MAP) favours ever smaller latents and larger readout weights; the
posterior covariance is what penalises that.

Shapes: ``E`` ensemble members, ``B`` trials, ``T`` time bins, ``D`` latent dimensions, ``N``
observed channels (neurons). Latents ``x: (E, B, T, D)``, observations ``y: (B, T, N)`` or
``(E, B, T, N)``, mask ``(N,)``, ``(B, T, N)`` or ``(E, B, T, N)``. Time bins are the data's time
axis; ``dt`` and ``tau`` (ms) are the relaxation's own time, as in :mod:`pcsim.inference`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from .activations import get_activation
from .errors import DataError, InferenceDivergenceError

Tensor = torch.Tensor
Observation = Literal["poisson", "gaussian"]
Preconditioner = Literal["none", "gauss-newton"]

TERMS = ("prior", "dynamics", "observation")


# --------------------------------------------------------------------------- parameters
@dataclass
class TemporalPCNetwork:
    """Parameters of ``E`` dynamical PC networks (latent dim ``D``, ``N`` observed channels).

    Row-major like :class:`pcsim.network.PCNetwork` (``x @ W`` predicts), shapes:
    ``dynamics_weights`` A ``(E, D, D)``, ``dynamics_bias`` b ``(E, 1, D)`` (latent units per
    time bin), ``readout_weights`` C ``(E, D, N)``, ``readout_bias`` d ``(E, 1, N)`` (log counts
    per bin for a Poisson observation, observation units for a Gaussian one), ``prior_mean``
    m_0 ``(E, 1, D)``; log-precisions (dimensionless precisions = inverse variances)
    ``prior_log_precision`` ``(E, 1, 1)`` or ``(E, 1, D)``, ``dynamics_log_precision``
    ``(E, 1, 1)`` or ``(E, 1, D)``, ``observation_log_precision`` ``(E, 1, 1)`` or ``(E, 1, N)``
    (Gaussian observation only). ``activation`` names the non-linearity ``f`` of the residual
    dynamics ``g(x) = x + f(x) @ A + b``. The generative model is the one of temporal PC
    (Friston 2008; Millidge et al. 2023); see the module docstring for the energy.
    """

    latent_dim: int
    n_obs: int
    activation: str
    observation: Observation
    dynamics_weights: Tensor
    dynamics_bias: Tensor
    readout_weights: Tensor
    readout_bias: Tensor
    prior_mean: Tensor
    prior_log_precision: Tensor
    dynamics_log_precision: Tensor
    observation_log_precision: Tensor
    learn_precision: bool = False
    seeds: tuple[int, ...] = field(default=(0,))

    @classmethod
    def init(
        cls,
        latent_dim: int,
        n_obs: int,
        *,
        activation: str = "tanh",
        observation: Observation = "poisson",
        ensemble: int = 1,
        seed: int | tuple[int, ...] = 0,
        prior_precision: float = 1.0,
        dynamics_precision: float = 100.0,
        observation_precision: float = 1.0,
        per_unit_precision: bool = False,
        learn_precision: bool = False,
        readout_scale: float = 0.1,
        dynamics_scale: float = 0.0,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "TemporalPCNetwork":
        """Create ``ensemble`` networks with ``latent_dim`` latents and ``n_obs`` observed channels.

        Readout weights C are ``N(0, readout_scale^2 / D)``, dynamics weights A are
        ``N(0, dynamics_scale^2 / D)`` (0: a random walk to start with), biases and the prior mean
        zero. Member ``e`` draws from its own generator seeded ``seeds[e]`` (``seed + e`` for an
        int). Precisions are dimensionless (``dynamics_precision`` is the inverse variance of the
        one-bin prediction error of the latents); ``per_unit_precision`` gives one per latent
        (and per channel for a Gaussian observation).
        """
        D, N = int(latent_dim), int(n_obs)
        if D < 1 or N < 1:
            raise ValueError(f"latent_dim and n_obs must be >= 1, got {latent_dim}, {n_obs}")
        get_activation(activation)
        if observation not in ("poisson", "gaussian"):
            raise ValueError(f"observation must be 'poisson' or 'gaussian', got {observation!r}")
        for name, v in (("prior_precision", prior_precision), ("dynamics_precision", dynamics_precision),
                        ("observation_precision", observation_precision)):
            if not v > 0:
                raise ValueError(f"{name} must be > 0, got {v}")
        seeds = tuple(range(seed, seed + ensemble)) if isinstance(seed, int) else tuple(int(s) for s in seed)
        if len(seeds) != ensemble:
            raise ValueError(f"got {len(seeds)} seeds for an ensemble of {ensemble}")
        As, Cs = [], []
        for s in seeds:
            gen = torch.Generator().manual_seed(s)
            Cs.append(torch.randn(D, N, generator=gen, dtype=torch.float64) * readout_scale / math.sqrt(D))
            As.append(torch.randn(D, D, generator=gen, dtype=torch.float64) * dynamics_scale / math.sqrt(D))
        kw = dict(device=device, dtype=dtype)
        E = ensemble
        du, nu = (D, N) if per_unit_precision else (1, 1)
        return cls(
            D, N, activation, observation,
            dynamics_weights=torch.stack(As).to(**kw),
            dynamics_bias=torch.zeros(E, 1, D, **kw),
            readout_weights=torch.stack(Cs).to(**kw),
            readout_bias=torch.zeros(E, 1, N, **kw),
            prior_mean=torch.zeros(E, 1, D, **kw),
            prior_log_precision=torch.full((E, 1, du), math.log(prior_precision), **kw),
            dynamics_log_precision=torch.full((E, 1, du), math.log(dynamics_precision), **kw),
            observation_log_precision=torch.full((E, 1, nu), math.log(observation_precision), **kw),
            learn_precision=learn_precision,
            seeds=seeds,
        )

    @property
    def ensemble(self) -> int:
        """Number of ensemble members ``E``."""
        return self.readout_weights.shape[0]

    @property
    def device(self) -> torch.device:
        """The device every parameter lives on."""
        return self.readout_weights.device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of every parameter."""
        return self.readout_weights.dtype

    def parameters(self) -> list[Tensor]:
        """Learnable tensors in a fixed order: ``A, b, C, d, m_0`` (+ prior, dynamics and, for a Gaussian observation, observation log-precisions when learned)."""
        ps = [self.dynamics_weights, self.dynamics_bias, self.readout_weights, self.readout_bias, self.prior_mean]
        if self.learn_precision:
            ps += [self.prior_log_precision, self.dynamics_log_precision]
            if self.observation == "gaussian":
                ps.append(self.observation_log_precision)
        return ps

    def parameter_names(self) -> list[str]:
        """Names of :meth:`parameters`, in the same order."""
        names = ["dynamics_weights", "dynamics_bias", "readout_weights", "readout_bias", "prior_mean"]
        if self.learn_precision:
            names += ["prior_log_precision", "dynamics_log_precision"]
            if self.observation == "gaussian":
                names.append("observation_log_precision")
        return names

    def clone(self) -> "TemporalPCNetwork":
        """A deep copy (new tensors)."""
        return replace(self, **{k: getattr(self, k).clone() for k in _TENSORS})

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> "TemporalPCNetwork":
        """The same network with every tensor moved to ``device`` and/or cast to ``dtype``."""
        return replace(self, **{k: getattr(self, k).to(device=device, dtype=dtype) for k in _TENSORS})

    # ------------------------------------------------------------------ generative sweep
    def predict_next(self, x: Tensor) -> Tensor:
        """The dynamics prediction ``g(x) = x + f(x) @ A + b`` of the next state, for ``x: (E, ..., D)``."""
        return _g(self, x, get_activation(self.activation).f(x))

    def rollout(self, n_trials: int, n_bins: int) -> Tensor:
        """The noise-free prior trajectory ``x_1 = m_0, x_t = g(x_{t-1})``, ``(E, n_trials, n_bins, D)``.

        It is the generative sweep from the top (every dynamics error zero): the initial state
        of :func:`relax` when no better guess exists.
        """
        x = self.prior_mean.expand(-1, n_trials, -1)
        xs = [x]
        for _ in range(n_bins - 1):
            x = self.predict_next(x)
            xs.append(x)
        return torch.stack(xs, 2).contiguous()


_TENSORS = ("dynamics_weights", "dynamics_bias", "readout_weights", "readout_bias", "prior_mean",
            "prior_log_precision", "dynamics_log_precision", "observation_log_precision")


def _g(net: TemporalPCNetwork, x: Tensor, fx: Tensor) -> Tensor:
    """``x + f(x) @ A + b`` for ``x, fx: (E, ..., D)`` (broadcast over the middle axes)."""
    E, D = x.shape[0], x.shape[-1]
    flat = fx.reshape(E, -1, D)
    out = torch.baddbmm(net.dynamics_bias, flat, net.dynamics_weights).reshape(x.shape)
    return x + out


def _readout(net: TemporalPCNetwork, x: Tensor) -> Tensor:
    """``eta = x @ C + d``: ``(E, B, T, N)`` for ``x: (E, B, T, D)``."""
    E, B, T, D = x.shape
    return torch.baddbmm(net.readout_bias, x.reshape(E, B * T, D), net.readout_weights).reshape(E, B, T, -1)


# --------------------------------------------------------------------------- data at the boundary
@dataclass
class Observations:
    """Validated observations ``y`` ``(E|1, B, T, N)`` (zeros where unobserved) and mask ``m`` (same shape, float 0/1)."""

    y: Tensor
    mask: Tensor


def observations(net: TemporalPCNetwork, y, mask=None, *, name: str = "y") -> Observations:
    """Check and broadcast observations for ``net``.

    ``y``: ``(B, T, N)`` or ``(E, B, T, N)`` (counts per bin for a Poisson observation);
    ``mask``: ``None`` (all observed), ``(N,)``, ``(B, T, N)`` or ``(E, B, T, N)``, bool or 0/1.
    Unobserved entries may hold anything, NaN included (they are set to 0 and carry no
    energy); observed entries must be finite, and non-negative for a Poisson observation.
    Raises :class:`~pcsim.errors.DataError` naming the array and the first bad index.
    """
    if not isinstance(y, torch.Tensor):
        y = torch.as_tensor(np.asarray(y))
    if y.dim() == 3:
        y = y.unsqueeze(0)
    if y.dim() != 4 or y.shape[-1] != net.n_obs or y.shape[0] not in (1, net.ensemble):
        raise DataError(f"{name} must have shape (trial, time, {net.n_obs}) or ({net.ensemble}, trial, time, {net.n_obs}), "
                        f"got {tuple(y.shape)}")
    if y.shape[1] < 1 or y.shape[2] < 1:
        raise DataError(f"{name} has no trials or no time bins: shape {tuple(y.shape)}")
    y = y.to(device=net.device, dtype=net.dtype)
    if mask is None:
        m = torch.ones(1, 1, 1, net.n_obs, device=net.device, dtype=net.dtype)
    else:
        m = mask if isinstance(mask, torch.Tensor) else torch.as_tensor(np.asarray(mask))
        if m.dim() == 1:
            m = m.reshape(1, 1, 1, -1)
        elif m.dim() == 3:
            m = m.unsqueeze(0)
        if m.dim() != 4 or m.shape[0] not in (1, net.ensemble) or any(a not in (1, b) for a, b in zip(m.shape[1:], y.shape[1:])):
            raise DataError(f"mask must have shape ({net.n_obs},), (trial, time, {net.n_obs}) or broadcast against "
                            f"{name} {tuple(y.shape)}, got {tuple(m.shape)}")
        m = m.to(device=net.device, dtype=net.dtype)
        if not bool(((m == 0) | (m == 1)).all()):
            raise DataError("mask must hold only 0/1 (or False/True)")
    shape = torch.broadcast_shapes(y.shape, m.shape)
    y, m = y.expand(shape), m.expand(shape)
    observed = m > 0
    bad = observed & ~torch.isfinite(y)
    if bool(bad.any()):
        idx = tuple(torch.nonzero(bad)[0].tolist()[1:])
        raise DataError(f"{name} contains NaN or Inf at observed entry (trial, time, neuron) = {idx}; "
                        f"mask it out or remove it")
    y = torch.where(observed, y, torch.zeros((), dtype=y.dtype, device=y.device))
    if net.observation == "poisson" and bool((y < 0).any()):
        idx = tuple(torch.nonzero(y < 0)[0].tolist()[1:])
        raise DataError(f"{name} holds negative spike counts (first at (trial, time, neuron) = {idx})")
    return Observations(y, m)


def _check_latents(net: TemporalPCNetwork, x: Tensor, obs: Observations, name: str = "x") -> Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if x.dim() == 3:
        x = x.unsqueeze(0).expand(net.ensemble, -1, -1, -1)
    B, T = obs.y.shape[1:3]
    if x.dim() != 4 or tuple(x.shape) != (net.ensemble, B, T, net.latent_dim):
        raise DataError(f"{name} must have shape ({net.ensemble}, {B}, {T}, {net.latent_dim}) (ensemble, trial, time, latent), "
                        f"got {tuple(x.shape)}")
    if not bool(torch.isfinite(x).all()):
        raise DataError(f"{name} contains NaN or Inf")
    return x.to(device=net.device, dtype=net.dtype)


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
        out[..., 2] = (obs.mask * (er.rate - obs.y * er.eta)).sum(-1)
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
    return _errors(net, _check_latents(net, x, obs), obs)


def term_energies(net: TemporalPCNetwork, x: Tensor, y, mask=None) -> Tensor:
    """Energy per ensemble member, trial, time bin and term, ``(E, B, T, 3)``; terms are ``TERMS`` = (prior, dynamics, observation).

    The prior term sits in bin 0, the dynamics term of bin ``t`` is the error of predicting
    ``x_t`` from ``x_{t-1}`` (0 in bin 0). Includes ``-1/2 log det Pi`` when precisions are
    learned; the Poisson term omits ``log y!`` (constant in latents and parameters).
    """
    obs = observations(net, y, mask)
    x = _check_latents(net, x, obs)
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
    x = _check_latents(net, x, obs)
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


def parameter_gradients(net: TemporalPCNetwork, x: Tensor | LaplacePosterior, y, mask=None) -> list[Tensor]:
    """Trial-mean ``dE/dtheta`` at latents ``x: (E, B, T, D)``, ordered as ``net.parameters()``.

    The local rules, written as the Hebbian products they are (sums over time bins, means
    over trials): ``dE/dA = -f(x_{t-1})^T Pi_x eps_t``, ``dE/db = -Pi_x eps_t``,
    ``dE/dC = -x_t^T e_t`` (for Poisson ``e = m (y - lambda)``: post-synaptic spike-count error
    times pre-synaptic latent), ``dE/dd = -e_t``, ``dE/dm_0 = -Pi_0 (x_1 - m_0)``; learned
    log-precisions get ``1/2 (Pi eps^2 - 1)`` per unit and bin (Bogacz 2017). Descending
    these is the M-step of the PC generative model (Rao & Ballard 1999; Friston 2008).

    Given a :class:`LaplacePosterior` instead of point latents, the gradients are those of the
    expected energy :func:`expected_term_energies` (trial mean): the same products at the mean,
    with the expected rate ``E[lambda] = exp(eta + 1/2 c' Cov(x_t) c)`` in the observation error,
    plus the covariance terms ``C``: ``+ sum_t w_t Cov(x_t) c_n`` and ``A``: ``+ f'(x_{t-1}) *
    (Pi_x (J Cov(x_{t-1}) - Cov(x_t, x_{t-1})))^T`` (Laplace EM; Friston et al. 2007, Macke et al.
    2011). The posterior uncertainty is what keeps MAP learning from shrinking the latents.
    """
    obs = observations(net, y, mask)
    if isinstance(x, LaplacePosterior):
        return _expected_parameter_gradients(net, _check_posterior(net, x, obs), obs)
    x = _check_latents(net, x, obs)
    return _parameter_gradients(net, x, obs, _errors(net, x, obs))


# --------------------------------------------------------------------------- curvature
def _curvature(net: TemporalPCNetwork, x: Tensor, obs: Observations, er: TemporalErrors, damping: float):
    """Gauss-Newton curvature of E in one trial's latents, block tridiagonal in time.

    Returns ``diag`` ``(E, B, T, D, D)`` (blocks ``H_tt``) and ``lower`` ``(E, B, T-1, D, D)``
    (blocks ``H_{t+1,t}``), in column-vector convention. Exact for linear dynamics; for a
    non-linear ``f`` the term with ``f''`` is dropped, which keeps ``H`` positive definite.
    """
    E, B, T, D = x.shape
    act = get_activation(net.activation)
    eye = torch.eye(D, dtype=x.dtype, device=x.device)
    pix = net.dynamics_log_precision.exp().reshape(E, 1, 1, -1) * torch.ones(D, dtype=x.dtype, device=x.device)  # (E,1,1,D)
    pi0 = net.prior_log_precision.exp().reshape(E, 1, -1) * torch.ones(D, dtype=x.dtype, device=x.device)        # (E,1,D)
    C = net.readout_weights                                                            # (E, D, N)
    w = obs.mask * (er.rate if net.observation == "poisson" else net.observation_log_precision.exp().unsqueeze(1))
    w = w.expand(E, B, T, net.n_obs)
    # observation: C diag(w_t) C^T = sum_n w_tn c_n c_n^T, one matrix product over the outer products
    outer = (C.unsqueeze(1) * C.unsqueeze(2)).reshape(E, D * D, -1)                  # (E, D*D, N)
    diag = torch.bmm(w.reshape(E, B * T, -1), outer.transpose(1, 2)).reshape(E, B, T, D, D)
    # J_t = I + A^T diag(f'(x_t)) (column-vector Jacobian of g at x_t)
    slope = act.df(x[:, :, :-1], er.fx[:, :, :-1])                                    # (E,B,T-1,D)
    At = net.dynamics_weights.transpose(1, 2).reshape(E, 1, 1, D, D)
    J = eye + At * slope.unsqueeze(-2)                                                 # J[j,i] = d+A[i,j] f'_i
    PJ = pix.unsqueeze(-1) * J                                                         # Pi_x J
    diag[:, :, 1:] += torch.diag_embed(pix.expand(E, B, T - 1, D))
    diag[:, :, :-1] += J.transpose(-1, -2) @ PJ
    diag[:, :, 0] += torch.diag_embed(pi0.expand(E, B, D))
    if damping > 0:
        diag += damping * eye
    return diag, -PJ


def solve_block_tridiagonal(diag: Tensor, lower: Tensor, rhs: Tensor) -> Tensor:
    """Solve ``H s = rhs`` for symmetric positive-definite block-tridiagonal ``H``, batched.

    ``diag``: ``(..., T, D, D)`` blocks ``H_tt``; ``lower``: ``(..., T-1, D, D)`` blocks
    ``H_{t+1,t}``; ``rhs``: ``(..., T, D)``. Block Cholesky forward elimination then back
    substitution (the information-form Kalman smoother / Rauch-Tung-Striebel recursion),
    ``O(T D^3)`` per batch element, sequential in ``T`` and parallel over the batch.
    """
    T, D = diag.shape[-3], diag.shape[-1]
    W, yv, failed = [], [], []
    S = diag[..., 0, :, :]
    z = rhs[..., 0, :].unsqueeze(-1)
    for t in range(T):
        if t > 0:
            Lo = lower[..., t - 1, :, :]
            S = diag[..., t, :, :] - Lo @ W[-1]
            z = rhs[..., t, :].unsqueeze(-1) - Lo @ yv[-1]
        L, info = torch.linalg.cholesky_ex(S)
        failed.append(info)
        # one solve for both S_t^{-1} H_{t,t+1} and S_t^{-1} z_t
        both = z if t == T - 1 else torch.cat([lower[..., t, :, :].transpose(-1, -2), z], -1)
        sol = torch.cholesky_solve(both, L)
        yv.append(sol[..., D:] if t < T - 1 else sol)
        if t < T - 1:
            W.append(sol[..., :D])
    bad = torch.stack(failed, -1) > 0
    if bool(bad.any()):  # one check at the end: no device synchronisation inside the loop
        t = int(torch.nonzero(bad.reshape(-1, T).any(0))[0, 0])
        raise InferenceDivergenceError(f"curvature is not positive definite at time bin {t}; increase the damping",
                                       step=-1, layer=t)
    s = [None] * T
    s[T - 1] = yv[T - 1]
    for t in range(T - 2, -1, -1):
        s[t] = yv[t] - W[t] @ s[t + 1]
    return torch.cat(s, -1).transpose(-1, -2)


def block_tridiagonal_inverse(diag: Tensor, lower: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """The tridiagonal blocks of ``H^{-1}`` for symmetric positive-definite block-tridiagonal ``H``, batched.

    ``diag``: ``(..., T, D, D)`` blocks ``H_tt``; ``lower``: ``(..., T-1, D, D)`` blocks ``H_{t+1,t}``.
    Returns ``(cov, cross, logdet)``: ``cov`` ``(..., T, D, D)`` the blocks ``(H^{-1})_tt``, ``cross``
    ``(..., T-1, D, D)`` the blocks ``(H^{-1})_{t,t+1}`` and ``logdet`` ``(...)`` = ``log det H``, by forward block elimination
    (Schur complements ``S_t``) and the backward recursion ``Sigma_t = S_t^{-1} + W_t Sigma_{t+1} W_t^T``,
    ``Sigma_{t,t+1} = -W_t Sigma_{t+1}`` with ``W_t = S_t^{-1} H_{t,t+1}`` (the Rauch-Tung-Striebel
    smoother's covariances; Rauch et al. 1965). ``O(T D^3)`` per batch element.
    """
    T, D = diag.shape[-3], diag.shape[-1]
    S_inv, W, failed = [], [], []
    S = diag[..., 0, :, :]
    logdet = diag.new_zeros(diag.shape[:-3])
    for t in range(T):
        if t > 0:
            S = diag[..., t, :, :] - lower[..., t - 1, :, :] @ W[-1]
        L, info = torch.linalg.cholesky_ex(S)
        failed.append(info)
        logdet = logdet + 2 * L.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        S_inv.append(torch.cholesky_inverse(L))
        if t < T - 1:
            W.append(S_inv[-1] @ lower[..., t, :, :].transpose(-1, -2))
    bad = torch.stack(failed, -1) > 0
    if bool(bad.any()):
        t = int(torch.nonzero(bad.reshape(-1, T).any(0))[0, 0])
        raise InferenceDivergenceError(f"curvature is not positive definite at time bin {t}; increase the damping",
                                       step=-1, layer=t)
    cov = [None] * T
    cross = [None] * (T - 1)
    cov[T - 1] = S_inv[T - 1]
    for t in range(T - 2, -1, -1):
        cross[t] = -W[t] @ cov[t + 1]
        cov[t] = S_inv[t] - cross[t] @ W[t].transpose(-1, -2)
    cov_t = torch.stack(cov, -3)
    cross_t = torch.stack(cross, -3) if T > 1 else diag.new_zeros(diag.shape[:-3] + (0, D, D))
    return 0.5 * (cov_t + cov_t.transpose(-1, -2)), cross_t, logdet


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
    x = _check_latents(net, x, obs)
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
    if posterior.log_det_precision is None:
        raise ValueError("the posterior has no log_det_precision; build it with laplace_posterior")
    E_q = expected_term_energies(net, posterior, y, mask).sum((-1, -2))
    T, D = posterior.mean.shape[-2:]
    entropy = 0.5 * (T * D * math.log(2 * math.pi * math.e) - posterior.log_det_precision)
    return E_q - entropy


def _check_posterior(net: TemporalPCNetwork, q: LaplacePosterior, obs: Observations) -> LaplacePosterior:
    x = _check_latents(net, q.mean, obs, "posterior mean")
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
    dyn_cov: Tensor  # (E, B, T-1, D, D) Cov(eps_t) to first order
    obs_var: Tensor  # (E, B, T, N) Var(eta_tn) = c_n' Cov(x_t) c_n
    rate: Tensor     # (E, B, T, N) E[lambda] (Poisson) or eta (Gaussian)
    obs_error: Tensor  # (E, B, T, N) m (y - E[lambda]) or m Pi_y (y - eta)


def _expected(net: TemporalPCNetwork, q: LaplacePosterior, obs: Observations) -> _Expected:
    x = q.mean
    E, B, T, D = x.shape
    er = _errors(net, x, obs)
    act = get_activation(net.activation)
    slope = act.df(x[:, :, :-1], er.fx[:, :, :-1])
    At = net.dynamics_weights.transpose(1, 2).reshape(E, 1, 1, D, D)
    J = torch.eye(D, dtype=x.dtype, device=x.device) + At * slope.unsqueeze(-2)
    # eps_t = x_t - g(x_{t-1}) ~ linear: Cov = S_tt - J S_{t-1,t} - S_{t,t-1} J' + J S_{t-1,t-1} J'
    JX = J @ q.cross                                                         # J Cov(x_{t-1}, x_t)
    dyn_cov = q.cov[:, :, 1:] - JX - JX.transpose(-1, -2) + J @ q.cov[:, :, :-1] @ J.transpose(-1, -2)
    C = net.readout_weights
    CC = (C.unsqueeze(1) * C.unsqueeze(2)).reshape(E, D * D, -1)             # (E, D*D, N): c_n c_n'
    obs_var = torch.bmm(q.cov.reshape(E, B * T, D * D), CC).reshape(E, B, T, -1)
    if net.observation == "poisson":
        rate = (er.eta + 0.5 * obs_var).exp()                                # E[exp(eta)], eta Gaussian
        err = obs.mask * (obs.y - rate)
    else:
        rate = er.eta
        err = er.obs_error
    return _Expected(er, J, slope, dyn_cov, obs_var, rate, err)


def _expected_term_energies(net, q, obs, ex: _Expected) -> Tensor:
    x = q.mean
    E, B, T, D = x.shape
    out = _term_energies(net, x, obs, ex.er)
    pi0 = net.prior_log_precision.exp().expand(E, 1, D)
    pix = net.dynamics_log_precision.exp().reshape(E, 1, 1, -1).expand(E, 1, 1, D)
    out[:, :, 0, 0] += 0.5 * (pi0 * q.cov[:, :, 0].diagonal(dim1=-2, dim2=-1)).sum(-1)
    out[:, :, 1:, 1] += 0.5 * (pix * ex.dyn_cov.diagonal(dim1=-2, dim2=-1)).sum(-1)
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


def _expected_parameter_gradients(net, q: LaplacePosterior, obs: Observations) -> list[Tensor]:
    ex = _expected(net, q, obs)
    x = q.mean
    E, B, T, D = x.shape
    N = net.n_obs
    er = ex.er
    # the Hebbian products at the mean, with E[lambda] in the observation error
    er_expected = replace(er, obs_error=ex.obs_error)
    grads = _parameter_gradients(net, x, obs, er_expected)
    # dynamics: d/dJ of 1/2 tr(P Cov(eps)) = P (J S_{t-1,t-1} - S_{t,t-1}); dJ[j,i]/dA[i,j] = f'_i
    pix = net.dynamics_log_precision.exp().reshape(E, 1, 1, -1, 1)              # rows j
    GJ = pix * (ex.J @ q.cov[:, :, :-1] - q.cross.transpose(-1, -2))             # (E,B,T-1,D,D) [j,i]
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
        dx = ex.dyn_cov.diagonal(dim1=-2, dim2=-1)                                  # (E, B, T-1, D)
        sqx = (net.dynamics_log_precision.exp().unsqueeze(1) * dx).sum((1, 2)).unsqueeze(1) / B
        grads[k + 1] = grads[k + 1] + _precision_gradient(net.dynamics_log_precision, sqx, 0.0, D)
        if net.observation == "gaussian":
            piy = net.observation_log_precision.exp().unsqueeze(1)
            sqy = (obs.mask * piy * ex.obs_var).sum((1, 2)).unsqueeze(1) / B        # (E, 1, N)
            lp = net.observation_log_precision
            grads[k + 2] = grads[k + 2] + 0.5 * (sqy.sum(-1, keepdim=True) if lp.shape[-1] == 1 else sqy)
    return grads


# --------------------------------------------------------------------------- relaxation
@dataclass(frozen=True)
class TemporalInferenceConfig:
    """Settings of one relaxation of the latents.

    ``steps``: number of Euler steps. ``dt``, ``tau``: integration step and node time constant
    in ms (step size ``dt/tau``, dimensionless). ``momentum``: heavy-ball coefficient in
    [0, 1) (Euler only). ``preconditioner``: ``"none"`` (plain gradient flow ``tau dx/dt =
    -dE/dx``) or ``"gauss-newton"`` (``tau dx/dt = -H^{-1} dE/dx``, module docstring; ``dt/tau =
    1`` is Newton's method). ``damping``: added to the curvature's diagonal (Levenberg-
    Marquardt). ``backtrack``: preconditioned steps that would raise a trial's energy are
    halved up to this many times (0: take every step as is). ``tol``: stop once every trial's
    energy changes by less than ``tol`` times its value in one step. ``max_growth``: the total
    energy may not exceed ``max_growth`` times its start (divergence). ``record``: keep the
    energy of every term at every step.
    """

    steps: int = 20
    dt: float = 1.0
    tau: float = 10.0
    momentum: float = 0.0
    preconditioner: Preconditioner = "none"
    damping: float = 0.0
    backtrack: int = 10
    tol: float = 0.0
    max_growth: float = 10.0
    record: bool = False

    @property
    def step_size(self) -> float:
        """The dimensionless Euler step ``dt / tau``."""
        return self.dt / self.tau


@dataclass
class TemporalRelaxation:
    """The outcome of :func:`relax`.

    ``x``: relaxed latents ``(E, B, T, D)``. ``errors``: :class:`TemporalErrors` there.
    ``energy``: ``(E, B, T, 3)`` energy per trial, time bin and term (``TERMS``) there.
    ``steps``: steps taken. ``trace``: when recorded, ``energy`` ``(S+1, E, B, 3)`` (per term,
    summed over time bins; step 0 is the initial state). ``dt``: the relaxation time step (ms).
    """

    x: Tensor
    errors: TemporalErrors
    energy: Tensor
    steps: int
    trace: dict[str, np.ndarray] | None = None
    dt: float = 1.0

    def to_dataset(self):
        """The recorded energy trace as an ``xarray.Dataset`` ``energy (step, ensemble, trial, term)``."""
        import xarray as xr

        if self.trace is None:
            raise ValueError("relaxation was not recorded: set TemporalInferenceConfig(record=True)")
        S1 = self.trace["energy"].shape[0]
        return xr.Dataset(
            {"energy": (("step", "ensemble", "trial", "term"), self.trace["energy"],
                        {"long_name": "predictive-coding energy", "units": "1"})},
            coords={"step": ("step", np.arange(S1), {"long_name": "inference step"}),
                    "time": ("step", np.arange(S1) * self.dt, {"units": "ms", "long_name": "relaxation time"}),
                    "term": ("term", list(TERMS))},
        )


def _divergence(t: int, en: Tensor, e0: Tensor, config: TemporalInferenceConfig) -> None:
    """Raise :class:`InferenceDivergenceError` naming the step and time bin when ``en`` ``(E, B, T, 3)`` is non-finite or grew too far."""
    finite = torch.isfinite(en)
    how = (f"reduce dt/tau (now {config.step_size:g}) or the momentum, or use preconditioner='gauss-newton'"
           if config.preconditioner == "none" else f"reduce dt/tau (now {config.step_size:g}) or raise the damping")
    if not bool(finite.all()):
        e, b, tb, k = torch.nonzero(~finite)[0].tolist()
        raise InferenceDivergenceError(
            f"inference diverged: the {TERMS[k]} energy of time bin {tb} became NaN/Inf at step {t} "
            f"(ensemble member {e}, trial {b}); {how}", step=t, layer=tb)
    tot, tot0 = en.sum((2, 3)), e0.sum((2, 3))
    grew = tot > config.max_growth * tot0.abs() + 1e-6
    if bool(grew.any()):
        e, b = torch.nonzero(grew)[0].tolist()
        tb = int(torch.argmax((en - e0)[e, b].sum(-1)))
        raise InferenceDivergenceError(
            f"inference diverged: the energy of trial {b} (ensemble member {e}) grew from {float(tot0[e, b]):.4g} to "
            f"{float(tot[e, b]):.4g} (more than max_growth={config.max_growth:g} times) by step {t}, mostly in time bin {tb}; "
            f"{how}", step=t, layer=tb)


def relax(
    net: TemporalPCNetwork,
    x: Tensor | None,
    y,
    mask=None,
    config: TemporalInferenceConfig = TemporalInferenceConfig(),
) -> TemporalRelaxation:
    """Relax the latents ``x: (E, B, T, D)`` given observations ``y`` and ``mask``; ``x = None`` starts from :meth:`TemporalPCNetwork.rollout` (zeros if that overflows).

    Every step moves all trials' latents by ``-dt/tau * dE/dx`` (or its preconditioned version,
    see :class:`TemporalInferenceConfig`); the one loop over steps lives here. ``y``: ``(B, T, N)``
    or ``(E, B, T, N)``, counts per bin for a Poisson observation; ``mask``: see
    :func:`observations`. The input ``x`` is not modified. Raises :class:`DataError` for bad
    input and :class:`InferenceDivergenceError` (``step``, and the time bin as ``layer``) when
    the energy becomes NaN/Inf or exceeds ``max_growth`` times its start. Rao & Ballard 1997;
    Friston 2008; Millidge et al. 2023.
    """
    if config.steps < 0 or not config.step_size > 0 or not 0 <= config.momentum < 1:
        raise ValueError(f"need steps >= 0, dt/tau > 0 and 0 <= momentum < 1, got {config}")
    if config.preconditioner not in ("none", "gauss-newton"):
        raise ValueError(f"preconditioner must be 'none' or 'gauss-newton', got {config.preconditioner!r}")
    obs = observations(net, y, mask)
    if x is None:
        x = net.rollout(obs.y.shape[1], obs.y.shape[2])
        er = _errors(net, x, obs)
        if not bool(torch.isfinite(_term_energies(net, x, obs, er)).all()):
            x = torch.zeros_like(x)  # an unstable prior trajectory: start from the origin instead
    x = _check_latents(net, x, obs).clone()
    eta = config.step_size
    newton = config.preconditioner == "gauss-newton"
    er = _errors(net, x, obs)
    en = _term_energies(net, x, obs, er)
    e0 = en
    _divergence(0, en, e0, config)
    trace = [en.sum(2)] if config.record else None
    v = torch.zeros_like(x) if config.momentum > 0 else None
    steps = 0
    for t in range(1, config.steps + 1):
        grad = _value_gradients(net, x, er)
        if newton:
            diag, lower = _curvature(net, x, obs, er, config.damping)
            try:
                direction = solve_block_tridiagonal(diag, lower, grad)
            except InferenceDivergenceError as err:
                raise InferenceDivergenceError(f"{err} (relaxation step {t})", step=t, layer=err.layer) from None
            x, er, en_new = _backtracked_step(net, x, obs, er, en, direction, eta, config.backtrack)
        else:
            if v is not None:
                v = config.momentum * v - eta * grad
                x = x + v
            else:
                x = x - eta * grad
            er = _errors(net, x, obs)
            en_new = _term_energies(net, x, obs, er)
        _divergence(t, en_new, e0, config)
        steps = t
        if trace is not None:
            trace.append(en_new.sum(2))
        if config.tol > 0:
            before, after = en.sum((2, 3)), en_new.sum((2, 3))
            if bool(((before - after).abs() <= config.tol * after.abs()).all()):
                en = en_new
                break
        en = en_new
    out_trace = {"energy": torch.stack(trace).detach().cpu().numpy()} if trace is not None else None
    return TemporalRelaxation(x, er, en, steps, out_trace, config.dt)


def _backtracked_step(net, x, obs, er, en, direction, eta, backtrack):
    """Step ``x - eta * direction``; trials whose energy would rise retry with half the step (at most ``backtrack`` times) and otherwise stay."""
    E, B = x.shape[:2]
    before = en.sum((2, 3))
    step = torch.full((E, B, 1, 1), eta, dtype=x.dtype, device=x.device)
    for k in range(backtrack + 1):
        xn = x - step * direction
        ern = _errors(net, xn, obs)
        enn = _term_energies(net, xn, obs, ern)
        after = enn.sum((2, 3))
        ok = after <= before + 1e-12 * before.abs()
        ok = ok & torch.isfinite(after)
        if backtrack == 0:
            return xn, ern, enn
        if bool(ok.all()):
            break
        step = torch.where(ok[..., None, None], step, 0.5 * step)
    if not bool(ok.all()):
        step = torch.where(ok[..., None, None], step, torch.zeros_like(step))
        xn = x - step * direction
        ern = _errors(net, xn, obs)
        enn = _term_energies(net, xn, obs, ern)
    return xn, ern, enn
