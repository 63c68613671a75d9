"""The dynamical PC network's parameters and the data it is relaxed against.

:class:`TemporalPCNetwork` holds the tensors of ``E`` networks (dynamics ``A, b``, readout
``C, d``, prior mean and log-precisions); :func:`observations` and :func:`check_latents`
validate observations, masks and latents once, at the public entry points, so that the
numerics of :mod:`.energy`, :mod:`.laplace` and :mod:`.inference` never re-check them.
Shapes as in :mod:`pcsim.temporal`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import torch

from ..activations import get_activation
from ..arguments import check_number
from ..errors import ConfigError, DataError
from ..network import ensemble_seeds

Tensor = torch.Tensor
Observation = Literal["poisson", "gaussian"]


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
        D = check_number("latent_dim", latent_dim, integer=True, ge=1)
        N = check_number("n_obs", n_obs, integer=True, ge=1)
        get_activation(activation)
        if observation not in ("poisson", "gaussian"):
            raise ConfigError(f"observation must be 'poisson' or 'gaussian', got {observation!r}")
        for name, v in (("prior_precision", prior_precision), ("dynamics_precision", dynamics_precision),
                        ("observation_precision", observation_precision)):
            check_number(name, v, gt=0)
        seeds = ensemble_seeds(seed, ensemble)
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
        """Learnable tensors in the fixed order of :meth:`parameter_names`: ``A, b, C, d, m_0`` (+ prior, dynamics and, for a Gaussian observation, observation log-precisions when learned)."""
        return [getattr(self, name) for name in self.parameter_names()]

    def parameter_names(self) -> list[str]:
        """Names of :meth:`parameters`, in their order: the one declaration of which tensors are learned."""
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

    def trials(self, idx: Tensor) -> "Observations":
        """The observations of trials ``idx`` (indices into ``B``), still checked: a fit validates its
        data once and takes every minibatch from it."""
        # a mask broadcast over trials (stride 0, e.g. all observed) stays a view rather than a copy
        pick = lambda a: a[:, : len(idx)] if a.stride(1) == 0 else a[:, idx]  # noqa: E731
        return Observations(pick(self.y), pick(self.mask))


def observations(net: TemporalPCNetwork, y, mask=None, *, name: str = "y") -> Observations:
    """Check and broadcast observations for ``net``.

    ``y``: ``(B, T, N)`` or ``(E, B, T, N)`` (counts per bin for a Poisson observation);
    ``mask``: ``None`` (all observed), ``(N,)``, ``(B, T, N)`` or ``(E, B, T, N)``, bool or 0/1.
    Unobserved entries may hold anything, NaN included (they are set to 0 and carry no
    energy); observed entries must be finite, and non-negative for a Poisson observation.
    Raises :class:`~pcsim.errors.DataError` naming the array and the first bad index. An
    :class:`Observations` already checked for a network of this shape (``mask`` None) is returned
    as it is, so a loop that calls several of the engine's functions on one batch checks it once.
    """
    if isinstance(y, Observations) and mask is None:
        if y.y.shape[-1] != net.n_obs or y.y.shape[0] not in (1, net.ensemble) or y.y.dtype != net.dtype:
            raise DataError(f"{name}: Observations of shape {tuple(y.y.shape)} ({y.y.dtype}) were checked for another "
                            f"network (this one: {net.n_obs} outputs, ensemble {net.ensemble}, {net.dtype})")
        return y
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
    # both 4-D, each size 1 or the other's (checked above); torch.broadcast_shapes would import sympy (~0.5 s)
    shape = tuple(max(a, b) for a, b in zip(y.shape, m.shape))
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


def check_latents(net: TemporalPCNetwork, x: Tensor, obs: Observations, name: str = "x") -> Tensor:
    """Check latents ``x`` against ``net`` and validated ``obs`` and return them as ``(E, B, T, D)``.

    ``x``: ``(B, T, D)`` (shared by every ensemble member) or ``(E, B, T, D)``, finite; cast to
    the network's device and dtype. Raises :class:`~pcsim.errors.DataError` naming ``name``.
    """
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


