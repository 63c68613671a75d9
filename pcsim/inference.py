"""Inference: relaxing the free value nodes down the energy.

The value nodes follow the gradient flow ``tau dx_l/dt = -dE/dx_l`` integrated with Euler
steps of ``dt`` (both in ms, so ``dt / tau`` is the dimensionless step size), optionally
with heavy-ball momentum. Each update of ``x_l`` uses only its own error ``eps_l`` and the
error ``eps_{l+1}`` of the layer it predicts (Whittington & Bogacz 2017). The one loop that
drives relaxation lives in :func:`relax`; learning rules plug into it through ``on_step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .errors import DataError, InferenceDivergenceError
from .network import PCNetwork

Tensor = torch.Tensor


@dataclass(frozen=True)
class InferenceConfig:
    """Settings of one relaxation.

    ``steps``: number of Euler steps T. ``dt``, ``tau``: integration step and node time
    constant in ms (step size ``dt/tau``). ``momentum``: heavy-ball coefficient in [0, 1).
    ``tol``: stop early once the relative change of every member's total energy in one step
    is below ``tol`` (0 disables). ``max_growth``: the energy may not exceed ``max_growth``
    times its initial value (divergence). ``record``: keep every node, error and layer
    energy at every step. ``check_every``: check for divergence every k steps (0: only at
    the end, unless ``record`` or ``tol`` make the energy available at every step anyway).
    """

    steps: int = 20
    dt: float = 1.0
    tau: float = 10.0
    momentum: float = 0.0
    tol: float = 0.0
    max_growth: float = 10.0
    record: bool = False
    check_every: int = 0

    @property
    def step_size(self) -> float:
        """The dimensionless Euler step ``dt / tau``."""
        return self.dt / self.tau


@dataclass
class PCState:
    """Value nodes ``x = [x_0, ..., x_L]`` (each ``(E, B, n_l)``) and which layers are clamped."""

    x: list[Tensor]
    clamped: tuple[bool, ...]

    def clone(self) -> "PCState":
        return PCState([t.clone() for t in self.x], self.clamped)


@dataclass
class FixedPredictions:
    """Feed-forward predictions, activities and slopes frozen for the fixed-prediction rule.

    ``mu[l]`` ``(E, B, n_l)`` for ``l >= 1``; ``fx[l]`` and ``dfx[l]`` for ``l < L``.
    """

    mu: list[Tensor | None]
    fx: list[Tensor]
    dfx: list[Tensor]


@dataclass
class Relaxation:
    """The outcome of :func:`relax`.

    ``state``: the relaxed value nodes. ``eps``: errors ``[eps_0 .. eps_L]`` at that state
    (``eps_0`` is None in discriminative mode); ``peps``: the same times their precision;
    ``fx``: pre-synaptic activities ``f(x_l)`` for ``l < L``. ``energy``: per-layer energy
    at the relaxed state ``(E, B, L+1)``. ``steps``: Euler steps taken. ``trace``: when
    recorded, per-step arrays ``x{l}``/``eps{l}`` ``(T+1, E, B, n_l)`` and ``energy``
    ``(T+1, E, B, L+1)`` (step 0 is the initial state).
    """

    state: PCState
    eps: list[Tensor | None]
    peps: list[Tensor | None]
    fx: list[Tensor]
    energy: Tensor
    steps: int
    trace: dict[str, np.ndarray] | None = None
    dt: float = 1.0

    def to_dataset(self, net: PCNetwork):
        """The recorded trace as an ``xarray.Dataset`` with dims (step, ensemble, trial, layer, unit_l{l})."""
        import xarray as xr

        if self.trace is None:
            raise ValueError("relaxation was not recorded: set InferenceConfig(record=True)")
        T1 = self.trace["energy"].shape[0]
        ds = xr.Dataset(
            coords={
                "step": ("step", np.arange(T1), {"long_name": "inference step"}),
                "time": ("step", np.arange(T1) * self.dt, {"units": "ms", "long_name": "relaxation time"}),
                "layer": ("layer", np.arange(net.depth + 1), {"long_name": "value-node layer (0 = bottom of the chain)"}),
            }
        )
        ds["energy"] = (("step", "ensemble", "trial", "layer"), self.trace["energy"], {"long_name": "prediction-error energy", "units": "1"})
        for l in range(net.depth + 1):
            dim = f"unit_l{l}"
            ds[f"x{l}"] = (("step", "ensemble", "trial", dim), self.trace[f"x{l}"], {"long_name": f"value nodes of layer {l}"})
            if f"eps{l}" in self.trace:
                ds[f"eps{l}"] = (("step", "ensemble", "trial", dim), self.trace[f"eps{l}"], {"long_name": f"prediction error of layer {l}"})
        ds.attrs.update(mode=net.mode, sizes=list(net.sizes), activations=list(net.activations))
        return ds


# --------------------------------------------------------------------------- state setup
def _as_batch(net: PCNetwork, a: Tensor, name: str, width: int) -> Tensor:
    """Validate ``a`` (``(B, n)`` or ``(E, B, n)``) and return it as ``(E, B, n)`` on the network's device."""
    if not isinstance(a, torch.Tensor):
        a = torch.as_tensor(np.asarray(a))
    if a.dim() == 2:
        a = a.unsqueeze(0).expand(net.ensemble, -1, -1)
    if a.dim() != 3 or a.shape[0] != net.ensemble or a.shape[-1] != width:
        raise DataError(f"{name} must have shape (batch, {width}) or ({net.ensemble}, batch, {width}), got {tuple(a.shape)}")
    if not torch.isfinite(a).all():
        bad = torch.nonzero(~torch.isfinite(a))[0].tolist()
        raise DataError(f"{name} contains NaN or Inf (first at index {tuple(bad)})")
    return a.to(device=net.device, dtype=net.dtype)


def init_state(
    net: PCNetwork,
    inputs: Tensor | None = None,
    target: Tensor | None = None,
    *,
    data: Tensor | None = None,
    batch: int | None = None,
) -> PCState:
    """Initial value nodes for inference.

    Discriminative mode: ``inputs`` ``(B, n_0)`` or ``(E, B, n_0)`` is clamped at ``x_0``, the
    other layers start at the feed-forward sweep, and ``target`` ``(.., n_L)``, if given, is
    clamped at ``x_L`` (training); without it ``x_L`` is free (test). Generative mode:
    ``data`` ``(.., n_L)`` is clamped at ``x_L`` (or, with ``data=None``, ``batch`` samples are
    left free: ancestral sampling/dreaming), ``x_0`` starts at the prior mean and the hidden
    layers at the sweep down from it. Inputs are checked for shape and NaN/Inf.
    """
    L = net.depth
    if net.mode == "discriminative":
        if inputs is None:
            raise DataError("discriminative inference needs `inputs` clamped at x_0")
        x0 = _as_batch(net, inputs, "inputs", net.sizes[0])
        xs = net.forward(x0)
        clamped = [True] + [False] * L
        if target is not None:
            t = _as_batch(net, target, "target", net.sizes[-1])
            if t.shape[1] != x0.shape[1]:
                raise DataError(f"target has {t.shape[1]} samples but inputs have {x0.shape[1]}")
            xs[-1] = t.clone()
            clamped[-1] = True
    else:
        if data is not None:
            d = _as_batch(net, data, "data", net.sizes[-1])
            B = d.shape[1]
        elif batch is not None:
            d, B = None, batch
        else:
            raise DataError("generative inference needs `data` clamped at x_L (or `batch` for free sampling)")
        x0 = net.prior_mean.expand(-1, B, -1).clone()
        xs = net.forward(x0)
        clamped = [False] * (L + 1)
        if d is not None:
            xs[-1] = d.clone()
            clamped[-1] = True
    return PCState([x.contiguous() for x in xs], tuple(clamped))


def freeze_predictions(net: PCNetwork, state: PCState) -> FixedPredictions:
    """Freeze predictions, ``f(x)`` and ``f'(x)`` at ``state`` (use the feed-forward state) for the fixed-prediction rule."""
    fx, dfx = [], []
    for l in range(net.depth):
        act = net.activation(l)
        f = act.f(state.x[l])
        fx.append(f)
        dfx.append(act.df(state.x[l], f))
    mu: list[Tensor | None] = [None] + [torch.baddbmm(net.biases[k], fx[k], net.weights[k]) for k in range(net.depth)]
    return FixedPredictions(mu, fx, dfx)


# --------------------------------------------------------------------------- the loop
OnStep = Callable[[int, list[Tensor], list, list[Tensor]], None]


def relax(
    net: PCNetwork,
    state: PCState,
    config: InferenceConfig = InferenceConfig(),
    *,
    fixed: FixedPredictions | None = None,
    on_step: OnStep | None = None,
) -> Relaxation:
    """Relax the free value nodes of ``state`` for ``config.steps`` Euler steps (in place).

    Each step computes the errors ``eps_l`` (``(E, B, n_l)``) at the current state, then moves
    every free node by ``-dt/tau * dE/dx_l``. With ``fixed`` (fixed-prediction assumption,
    Millidge et al. 2022) the predictions and the slopes ``f'`` stay at their feed-forward
    values. ``on_step(t, x, peps, fx)``, if given, is called at every step with the current
    state, precision-weighted errors and activities before the nodes move (incremental PC
    updates the weights there). Raises :class:`InferenceDivergenceError` naming the step
    and layer when the energy becomes NaN/Inf or exceeds ``max_growth`` times its start.
    """
    L = net.depth
    x = state.x
    free = [l for l in range(L + 1) if not state.clamped[l]]
    eta = config.step_size
    unit = net.unit_precision()
    pis = net.precision()
    pi0 = net.prior_log_precision.exp()
    generative = net.mode == "generative"
    acts = [net.activation(l) for l in range(L)]
    track = config.record or config.tol > 0
    check_every = 1 if track else config.check_every
    # mu_1 is constant while x_0 is clamped and the weights do not move
    mu1 = None
    if fixed is None and state.clamped[0] and on_step is None:
        mu1 = torch.baddbmm(net.biases[0], acts[0].f(x[0]), net.weights[0])
    velocity = [torch.zeros_like(x[l]) for l in free] if config.momentum > 0 else None
    trace: dict[str, list] | None = {k: [] for k in ["energy"] + [f"x{l}" for l in range(L + 1)] + [f"eps{l}" for l in range(L + 1)]} if config.record else None

    def errors():
        if fixed is not None:
            fx = fixed.fx
            eps = [x[0] - net.prior_mean if generative else None] + [x[l] - fixed.mu[l] for l in range(1, L + 1)]
        else:
            fx = [acts[l].f(x[l]) for l in range(L)] if mu1 is None else [None] + [acts[l].f(x[l]) for l in range(1, L)]
            eps = [x[0] - net.prior_mean if generative else None]
            for l in range(1, L + 1):
                mu = mu1 if (l == 1 and mu1 is not None) else torch.baddbmm(net.biases[l - 1], fx[l - 1], net.weights[l - 1])
                eps.append(x[l] - mu)
        if unit:
            peps = [None if eps[0] is None else pi0 * eps[0]] + eps[1:]
        else:
            peps = [None if eps[0] is None else pi0 * eps[0]] + [pis[l - 1] * eps[l] for l in range(1, L + 1)]
        return eps, peps, fx

    def energies(eps, peps):
        cols = [(eps[l] * peps[l]).sum(-1) * 0.5 if eps[l] is not None else x[-1].new_zeros(x[-1].shape[:2]) for l in range(L + 1)]
        return torch.stack(cols, -1)

    def check(t, en, e0):
        tot = en.sum(-1).sum(-1)  # (E,)
        finite = torch.isfinite(en)
        if not bool(finite.all()):
            layer = int(torch.nonzero(~finite.reshape(-1, L + 1).all(0))[0, 0])
            member = int(torch.nonzero(~finite.reshape(en.shape[0], -1).all(1))[0, 0])
            raise InferenceDivergenceError(
                f"inference diverged: energy of layer {layer} became NaN/Inf at step {t} (ensemble member {member}); "
                f"reduce dt/tau (now {eta:g}) or the momentum", step=t, layer=layer)
        bound = config.max_growth * e0.sum(-1).sum(-1) + 1e-6
        grew = tot > bound
        if bool(grew.any()):
            member = int(torch.nonzero(grew)[0, 0])
            layer = int(torch.argmax((en - e_start)[member].sum(0)))
            raise InferenceDivergenceError(
                f"inference diverged: energy grew from {float(e0[member].sum()):.4g} to {float(tot[member]):.4g} "
                f"(more than max_growth={config.max_growth:g} times) by step {t}, mostly in layer {layer} "
                f"(ensemble member {member}); reduce dt/tau (now {eta:g}) or the momentum", step=t, layer=layer)

    e_start = None
    steps_run = 0
    prev_total = None
    for t in range(config.steps + 1):
        eps, peps, fx = errors()
        need_energy = track or e_start is None or t == config.steps or (check_every and t % check_every == 0)
        if need_energy:
            en = energies(eps, peps)
            if e_start is None:
                e_start = en
            check(t, en, e_start)
            if trace is not None:
                trace["energy"].append(en.detach().cpu().numpy())
                for l in range(L + 1):
                    trace[f"x{l}"].append(x[l].detach().cpu().numpy().copy())
                    e = eps[l] if eps[l] is not None else torch.zeros_like(x[l])
                    trace[f"eps{l}"].append(e.detach().cpu().numpy())
            if config.tol > 0:
                total = en.sum(-1).sum(-1)
                if prev_total is not None and bool(((prev_total - total).abs() <= config.tol * prev_total.abs()).all()):
                    break
                prev_total = total
        if t == config.steps:
            break
        # explicit local gradients dE/dx_l for the free layers
        grads = []
        for l in free:
            g = peps[l]
            if l < L:
                slope = fixed.dfx[l] if fixed is not None else acts[l].df(x[l], fx[l])
                back = torch.bmm(peps[l + 1], net.weights[l].transpose(1, 2))
                g = back.mul_(slope).neg_() if g is None else g - slope * back
            grads.append(g)
        if on_step is not None:
            on_step(t, x, peps, fx)
        for i, l in enumerate(free):
            if velocity is not None:
                velocity[i].mul_(config.momentum).sub_(grads[i], alpha=eta)
                x[l].add_(velocity[i])
            else:
                x[l].sub_(grads[i], alpha=eta)
        steps_run += 1
    if fixed is None and mu1 is not None:
        fx[0] = acts[0].f(x[0])
    out_trace = None
    if trace is not None:
        out_trace = {k: np.stack(v) for k, v in trace.items()}
    return Relaxation(state, eps, peps, list(fx), en, steps_run, out_trace, config.dt)
