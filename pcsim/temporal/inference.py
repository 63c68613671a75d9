"""Relaxation of a dynamical PC network's latents: Euler or Gauss-Newton preconditioned steps.

:func:`relax` integrates ``tau dx/dt = -dE/dx`` (or its preconditioned version ``-H^{-1}
dE/dx``, with ``H`` the block-tridiagonal Gauss-Newton curvature) for every trial at once;
see :mod:`pcsim.temporal` for the model and :class:`TemporalInferenceConfig` for the settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from ..errors import InferenceDivergenceError
from .blocktridiagonal import solve_block_tridiagonal
from .energy import TERMS, TemporalErrors, _curvature, _errors, _term_energies, _value_gradients
from .network import TemporalPCNetwork, check_latents, observations

Tensor = torch.Tensor
Preconditioner = Literal["none", "gauss-newton"]


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
    x = check_latents(net, x, obs).clone()
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
