"""Relaxation of a dynamical PC network's latents: Euler or Gauss-Newton preconditioned steps.

Dynamical PC is a relaxing system of :mod:`pcsim.relaxation` (:class:`TemporalDynamics`: its
step moves the latents by ``-dt/tau dE/dx`` or by the preconditioned ``-dt/tau H^{-1} dE/dx``,
``H`` the block-tridiagonal Gauss-Newton curvature, then evaluates the errors and energies
there with :mod:`.energy`'s functions); the one loop :func:`pcsim.relaxation.run` drives it,
exactly as it drives static PC. See :mod:`pcsim.temporal` for the model and
:class:`TemporalInferenceConfig` for the settings.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal, NamedTuple

import numpy as np
import torch

from .. import parallel, relaxation
from ..errors import ConfigError, InferenceDivergenceError
from ..inference import InferenceConfig
from .blocktridiagonal import solve_block_tridiagonal
from .energy import TERMS, TemporalErrors, _curvature, _errors, _term_energies, _value_gradients
from .network import Observations, TemporalPCNetwork, check_latents, observations

Tensor = torch.Tensor
Preconditioner = Literal["none", "gauss-newton"]


# --------------------------------------------------------------------------- settings and outcome
@dataclass(frozen=True)
class TemporalInferenceConfig(InferenceConfig):
    """Settings of one relaxation of the latents: :class:`pcsim.inference.InferenceConfig` and three of its own.

    Shared with static PC: ``steps``, ``dt`` and ``tau`` (ms; step size ``dt/tau``),
    ``momentum`` (heavy ball, Euler steps only), ``tol`` (stop once every trial's total energy
    changes by at most ``tol`` times its previous value in one step), ``max_growth`` (a trial's
    energy may not exceed ``max_growth`` times its start: divergence), ``record`` (keep the
    energy of every term at every step) and ``check_every`` (check divergence every k steps;
    here 1 by default: every step evaluates the energy anyway, and a Gauss-Newton step that
    meets a singular curvature is then reported after the energy check of the step before).
    Dynamical PC's own: ``preconditioner``: ``"none"`` (plain gradient flow ``tau dx/dt =
    -dE/dx``) or ``"gauss-newton"`` (``tau dx/dt = -H^{-1} dE/dx``, :mod:`pcsim.temporal`;
    ``dt/tau = 1`` is Newton's method). ``damping``: added to the curvature's diagonal
    (Levenberg-Marquardt). ``backtrack``: preconditioned steps that would raise a trial's energy
    are halved up to this many times (0: take every step as is). Static PC's ``compile`` and
    ``precondition`` do not apply (the backtracking step decides on the host) and must stay off.
    """

    check_every: int = field(default=1, metadata={"ge": 0})
    preconditioner: Preconditioner = "none"
    damping: float = field(default=0.0, metadata={"ge": 0})
    backtrack: int = field(default=10, metadata={"ge": 0})

    def __post_init__(self):
        super().__post_init__()
        if self.preconditioner not in ("none", "gauss-newton"):
            raise ConfigError(f"preconditioner must be 'none' or 'gauss-newton', got {self.preconditioner!r}")
        if self.damping < 0 or self.backtrack < 0:
            raise ConfigError(f"TemporalInferenceConfig needs damping >= 0 and backtrack >= 0; "
                             f"got damping={self.damping}, backtrack={self.backtrack}")
        if self.compile or self.precondition:
            raise ConfigError(f"TemporalInferenceConfig does not support compile=True or precondition=True (got compile={self.compile}, precondition={self.precondition}) "
                             "(use preconditioner='gauss-newton' for a preconditioned relaxation)")


@dataclass
class TemporalRelaxation(relaxation.LoopResult):
    """The outcome of :func:`relax`: the loop's :class:`pcsim.relaxation.LoopResult` and its time step.

    ``carry``: the final :class:`TemporalCarry`; ``x`` (property): relaxed latents
    ``(E, B, T, D)``; ``errors`` (property): :class:`TemporalErrors` there. ``energy``:
    ``(E, B, T, 3)`` energy per trial, time bin and term (``TERMS``) there. ``steps``: steps
    taken. ``trace``: when recorded, ``energy`` ``(S+1, E, B, 3)`` (per term, summed over time
    bins; step 0 is the initial state). ``dt``: the relaxation time step (ms).
    """

    dt: float = 1.0

    @property
    def x(self) -> Tensor:
        """The relaxed latents ``(E, B, T, D)``."""
        return self.carry.x

    @property
    def errors(self) -> TemporalErrors:
        """The prediction errors at the relaxed latents."""
        return self.carry.errors

    def to_dataset(self):
        """The recorded energy trace as an ``xarray.Dataset`` ``energy (step, ensemble, trial, term)``."""
        import xarray as xr

        if self.trace is None:
            raise ConfigError("relaxation was not recorded: set TemporalInferenceConfig(record=True) (record=False)")
        S1 = self.trace["energy"].shape[0]
        return xr.Dataset(
            {"energy": (("step", "ensemble", "trial", "term"), self.trace["energy"],
                        {"long_name": "predictive-coding energy", "units": "1"})},
            coords={**relaxation.step_coords(S1, self.dt), "term": ("term", list(TERMS), {"long_name": "energy term", "units": ""})},
        )


# --------------------------------------------------------------------------- the relaxing system
class TemporalCarry(NamedTuple):
    """The state of a dynamical-PC relaxation at one step and what was computed at it.

    ``x``: latents ``(E, B, T, D)``; ``v``: heavy-ball velocity (same shape; ``None`` without
    momentum); ``errors``: :class:`TemporalErrors` at ``x``; ``energy``: ``(E, B, T, 3)`` per
    trial, time bin and term at ``x`` (the backtracking step compares against it); ``t``: the
    steps taken to get here (named in a curvature failure).
    """

    x: Tensor
    v: Tensor | None
    errors: TemporalErrors
    energy: Tensor
    t: int


@dataclass
class TemporalDynamics:
    """Dynamical PC as a relaxing system (:mod:`pcsim.relaxation`) of ``net``'s latents given ``obs``.

    One :meth:`step` is an Euler (or heavy-ball) step of ``tau dx/dt = -dE/dx`` or, with
    ``config.preconditioner == "gauss-newton"``, a backtracked step of the preconditioned flow
    ``-H^{-1} dE/dx``; the network's tensors are read at every step.
    """

    net: TemporalPCNetwork
    obs: Observations
    config: TemporalInferenceConfig

    def evaluate(self, x: Tensor, v: Tensor | None, t: int = 0) -> TemporalCarry:
        """Errors and energies at latents ``x`` ``(E, B, T, D)`` (velocity ``v``) after ``t`` steps."""
        er = _errors(self.net, x, self.obs)
        return TemporalCarry(x, v, er, _term_energies(self.net, x, self.obs, er), t)

    def step(self, carry: TemporalCarry) -> TemporalCarry:
        """Move the latents of every trial once (class docstring), then evaluate there."""
        net, obs, cfg = self.net, self.obs, self.config
        t = carry.t + 1
        eta = cfg.step_size
        grad = _value_gradients(net, carry.x, carry.errors)
        if cfg.preconditioner == "gauss-newton":
            diag, lower = _curvature(net, carry.x, obs, carry.errors, cfg.damping)
            try:
                direction = solve_block_tridiagonal(diag, lower, grad)
            except InferenceDivergenceError as err:
                raise InferenceDivergenceError(f"{err} (relaxation step {t})", step=t, layer=err.layer) from None
            return _backtracked_step(self, carry, direction, eta, t)
        if carry.v is not None:
            v = cfg.momentum * carry.v - eta * grad
            return self.evaluate(carry.x + v, v, t)
        return self.evaluate(carry.x - eta * grad, None, t)

    def energies(self, carry: TemporalCarry) -> Tensor:
        """Energy per member, trial, time bin and term, ``(E, B, T, 3)``."""
        return carry.energy

    def totals(self, energies: Tensor) -> Tensor:
        """Total energy per member and trial, summed over time bins and terms: ``(..., E, B)``."""
        return energies.sum((-2, -1))

    def diverged(self, t: int, en: Tensor, start: Tensor) -> InferenceDivergenceError:
        """The error for energies ``en`` ``(E, B, T, 3)`` at step ``t``, naming the trial, time bin
        (as ``layer``), term and the likely cause (:func:`pcsim.relaxation.step_cause`; the
        wording is :func:`pcsim.relaxation.divergence_message`, shared with static PC)."""
        cfg, net = self.config, self.net
        hint = ("or use preconditioner='gauss-newton'" if cfg.preconditioner == "none" else "or raise the damping")
        pis = {f"{name} precision": float(lp.exp().max()) for name, lp in
               (("prior", net.prior_log_precision), ("dynamics", net.dynamics_log_precision),
                ("observation", net.observation_log_precision)) if torch.isfinite(lp).all()}
        cause = relaxation.step_cause(cfg.step_size, cfg.momentum, pis if cfg.preconditioner == "none" else None, hint)
        finite = torch.isfinite(en)
        if not bool(finite.all()):
            e, b, tb, k = torch.nonzero(~finite)[0].tolist()
            what = f"the {TERMS[k]} energy of time bin {tb} became NaN/Inf at step {t} (ensemble member {e}, trial {b})"
        else:
            e, b = relaxation.worst(self, en, start)
            tb = int(torch.argmax((en - start)[e, b].sum(-1)))
            tot, tot0 = float(self.totals(en)[e, b]), float(self.totals(start)[e, b])
            what = (f"the energy of trial {b} (ensemble member {e}) "
                    f"{relaxation.growth_what(tot0, tot, t, cfg.max_growth).removeprefix('energy ')}, mostly in time bin {tb}")
        return InferenceDivergenceError(relaxation.divergence_message(what, cause), step=t, layer=tb)

    def observe(self, carry: TemporalCarry, energies: Tensor) -> dict[str, Tensor]:
        """A recorded step: ``energy`` per member, trial and term ``(E, B, 3)`` (summed over time bins)."""
        return {"energy": energies.sum(-2)}


def _backtracked_step(system: TemporalDynamics, carry: TemporalCarry, direction: Tensor, eta: float,
                      t: int) -> TemporalCarry:
    """Step ``x - eta * direction``; trials whose energy would rise retry with half the step (at most
    ``config.backtrack`` times) and otherwise stay.

    Only the trials that rose (in any ensemble member) are evaluated again, on their own: a retry of the
    whole batch for the few trials that rose was half the evaluations of a relaxation (the Lorenz
    benchmark's Newton steps overshoot on ~15 of 64 trials at three steps in four). The other trials'
    errors and energies are those of the full step, as when every trial was evaluated again.
    """
    new = system.evaluate(carry.x - eta * direction, carry.v, t)
    rose = _rose(carry.energy, new.energy)                                  # (E, B)
    if system.config.backtrack == 0 or not bool(rose.any()):
        return new
    idx = torch.nonzero(rose.any(0))[:, 0]
    sub = TemporalDynamics(system.net, system.obs.trials(idx), system.config)
    x, d, before, rose = carry.x[:, idx], direction[:, idx], carry.energy[:, idx], rose[:, idx]
    step = torch.full(x.shape[:2] + (1, 1), eta, dtype=x.dtype, device=x.device)
    for _ in range(system.config.backtrack):
        step = torch.where(rose[..., None, None], 0.5 * step, step)
        retry = sub.evaluate(x - step * d, None, t)
        rose = _rose(before, retry.energy)
        if not bool(rose.any()):
            break
    else:                                                                   # still rising: these trials stay
        retry = sub.evaluate(x - torch.where(rose[..., None, None], torch.zeros_like(step), step) * d, None, t)
    for whole, part in zip((new.x, new.energy, *(getattr(new.errors, f.name) for f in fields(new.errors))),
                           (retry.x, retry.energy, *(getattr(retry.errors, f.name) for f in fields(retry.errors)))):
        whole.index_copy_(1, idx, part)
    return new


def _rose(before: Tensor, after: Tensor) -> Tensor:
    """Per member and trial ``(E, B)``: True where the total of ``after`` ``(E, B, T, 3)`` is above that of ``before`` or not finite."""
    b, a = before.sum((2, 3)), after.sum((2, 3))
    return ~((a <= b + 1e-12 * b.abs()) & torch.isfinite(a))


# --------------------------------------------------------------------------- relax
def relaxation_threads(net: TemporalPCNetwork, n_trials: int, n_bins: int) -> int:
    """CPU threads for relaxing (or taking the Laplace posterior of) ``n_trials`` trials of ``n_bins`` bins of ``net``.

    Sized, by :func:`pcsim.parallel.threads_for_work`, for the computations over every bin at once
    (errors, energies, gradients and curvature blocks), whose typical product is the readout ``x @ C``
    of all bins: ``E * n_trials * n_bins * D * N`` multiply-adds. The sequential block recursion over
    time bins inside a step (:mod:`.blocktridiagonal`) chooses its own threads by the same rule for
    its much smaller regions (one bin's blocks), and runs on one thread at the PC latent model's sizes.
    Sizing the whole step by the recursion's regions, as before, ran the per-bin computations on one
    thread too (measured, Lorenz benchmark, quiet 2-core machine: a 64-trial x 100-bin x D = 8 fit took
    8.7-9.0 s so, 7.3 s with the per-bin computations on both cores). On a machine whose other cores
    are busy every part runs on one thread (:func:`pcsim.parallel.free_cores`).
    """
    return parallel.threads_for_work(net.ensemble * n_trials * n_bins * net.latent_dim * net.n_obs)


def relax(
    net: TemporalPCNetwork,
    x: Tensor | None,
    y,
    mask=None,
    config: TemporalInferenceConfig = TemporalInferenceConfig(),
) -> TemporalRelaxation:
    """Relax the latents ``x: (E, B, T, D)`` given observations ``y`` and ``mask``; ``x = None`` starts from :meth:`TemporalPCNetwork.rollout` (zeros if that overflows).

    Every step moves all trials' latents by ``-dt/tau * dE/dx`` (or its preconditioned version,
    see :class:`TemporalInferenceConfig`); the steps are driven by the one relaxation loop,
    :func:`pcsim.relaxation.run`. ``y``: ``(B, T, N)`` or ``(E, B, T, N)``, counts per bin for a
    Poisson observation; ``mask``: see :func:`~pcsim.temporal.network.observations`. The input
    ``x`` is not modified. Raises :class:`DataError` for bad input and
    :class:`InferenceDivergenceError` (``step``, and the time bin as ``layer``) when the energy
    becomes NaN/Inf or exceeds ``max_growth`` times its start. Rao & Ballard 1997; Friston 2008;
    Millidge et al. 2023.
    """
    obs = observations(net, y, mask)
    system = TemporalDynamics(net, obs, config)
    if x is None:
        x = net.rollout(obs.y.shape[1], obs.y.shape[2])
        if not bool(torch.isfinite(system.evaluate(x, None).energy).all()):
            x = torch.zeros_like(x)  # an unstable prior trajectory: start from the origin instead
    x = check_latents(net, x, obs).clone()
    start = system.evaluate(x, torch.zeros_like(x) if config.momentum > 0 else None)
    out = relaxation.run(system, start, config.steps, max_growth=config.max_growth, tol=config.tol,
                         record=config.record, check_every=config.check_every, check_descent=config.check_descent,
                         threads=relaxation_threads(net, obs.y.shape[1], obs.y.shape[2]))
    return TemporalRelaxation(out.carry, out.energy, out.steps, out.trace, config.dt)
