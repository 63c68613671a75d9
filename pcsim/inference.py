"""Inference: relaxing the free value nodes down the energy.

The value nodes follow the gradient flow ``tau dx_l/dt = -dE/dx_l`` integrated with Euler
steps of ``dt`` (both in ms, so ``dt / tau`` is the dimensionless step size), optionally
with heavy-ball momentum. Each update of ``x_l`` uses only its own error ``eps_l`` and the
error ``eps_{l+1}`` of the layer it predicts (Whittington & Bogacz 2017). The one loop that
drives relaxation lives in :func:`relax`; learning rules plug into it through ``on_step``.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from .errors import DataError, InferenceDivergenceError
from .activations import get_activation
from .energy import gradient_spec, hebbian_gradients, parameter_gradients
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
    ``compile``: run the T steps as one ``torch.compile``d graph when nothing is recorded
    (fused kernels, no Python in the loop; costs seconds of compilation per shape).
    ``precondition``: divide each layer's step by its precision (see ``_update``).
    """

    steps: int = 20
    dt: float = 1.0
    tau: float = 10.0
    momentum: float = 0.0
    tol: float = 0.0
    max_growth: float = 10.0
    record: bool = False
    check_every: int = 0
    compile: bool = False
    precondition: bool = False

    def __post_init__(self):
        if self.steps < 0 or self.dt <= 0 or self.tau <= 0 or not 0 <= self.momentum < 1 or self.tol < 0 \
                or self.max_growth <= 1 or self.check_every < 0:
            raise ValueError(
                "InferenceConfig needs steps >= 0, dt > 0, tau > 0, 0 <= momentum < 1, tol >= 0, max_growth > 1, "
                f"check_every >= 0; got steps={self.steps}, dt={self.dt}, tau={self.tau}, momentum={self.momentum}, "
                f"tol={self.tol}, max_growth={self.max_growth}, check_every={self.check_every}")

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
        """A copy with new tensors (same shapes ``(E, B, n_l)``) and the same clamping."""
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
    at the relaxed state ``(E, B, L+1)``: the quadratic (prediction-error) part that inference
    descends; the ``-1/2 log det Pi`` of learned precisions does not depend on the nodes and
    is left out (``energy.layer_energies`` includes it). ``steps``: Euler steps taken. ``trace``: when
    recorded, per-step arrays ``x{l}``/``eps{l}`` ``(T+1, E, B, n_l)`` and ``energy``
    ``(T+1, E, B, L+1)`` (step 0 is the initial state). ``gradients``: local ``dE/dtheta``
    at the relaxed state, ordered as ``net.parameters()``, when asked for.
    """

    state: PCState
    eps: list[Tensor | None]
    peps: list[Tensor | None]
    fx: list[Tensor]
    energy: Tensor
    steps: int
    trace: dict[str, np.ndarray] | None = None
    dt: float = 1.0
    gradients: list[Tensor] | None = None

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
    if a.shape[1] == 0:
        raise DataError(f"{name} is an empty batch (0 samples)")
    a = a.to(device=net.device, dtype=net.dtype)  # cast first: 1e300 is finite in float64, not in float32
    if not torch.isfinite(a).all():
        bad = torch.nonzero(~torch.isfinite(a))[0].tolist()
        raise DataError(f"{name} contains NaN or Inf (first at index {tuple(bad)}, after conversion to {net.dtype})")
    return a


def init_state(
    net: PCNetwork,
    inputs: Tensor | None = None,
    target: Tensor | None = None,
    *,
    data: Tensor | None = None,
    batch: int | None = None,
    generator: torch.Generator | None = None,
) -> PCState:
    """Initial value nodes for inference.

    Discriminative mode: ``inputs`` ``(B, n_0)`` or ``(E, B, n_0)`` is clamped at ``x_0``, the
    other layers start at the feed-forward sweep, and ``target`` ``(.., n_L)``, if given, is
    clamped at ``x_L`` (training); without it ``x_L`` is free (test). Generative mode:
    ``data`` ``(.., n_L)`` is clamped at ``x_L`` (or, with ``data=None``, ``batch`` samples are
    left free: ancestral sampling/dreaming), ``x_0`` starts at the prior mean and the hidden
    layers at the sweep down from it; with a ``generator``, ``x_0`` is instead drawn from the
    prior ``N(m_0, 1/Pi_0)``, so ``init_state(net, batch=B, generator=g)`` followed by the
    sweep is ancestral sampling. Inputs are checked for shape, emptiness and NaN/Inf.
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
            if batch < 1:
                raise DataError(f"batch must be >= 1, got {batch}")
            d, B = None, batch
        else:
            raise DataError("generative inference needs `data` clamped at x_L (or `batch` for free sampling)")
        x0 = net.prior_mean.expand(-1, B, -1).clone()
        if generator is not None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
            x0 = x0 + noise * net.prior_log_precision.exp().rsqrt()
        xs = net.forward(x0)
        clamped = [False] * (L + 1)
        if d is not None:
            xs[-1] = d.clone()
            clamped[-1] = True
    return PCState([x.contiguous() for x in xs], tuple(clamped))


def freeze_predictions(net: PCNetwork, state: PCState) -> FixedPredictions:
    """Freeze predictions ``mu[l]`` ``(E, B, n_l)`` (``l >= 1``), activities ``fx[l]`` and slopes
    ``dfx[l]`` ``(E, B, n_l)`` (``l < L``) at ``state`` (the feed-forward state) for the
    fixed-prediction rule."""
    fx, dfx = [], []
    for l in range(net.depth):
        act = net.activation(l)
        f = act.f(state.x[l])
        fx.append(f)
        dfx.append(act.df(state.x[l], f))
    mu: list[Tensor | None] = [None] + [torch.baddbmm(net.biases[k], fx[k], net.weights[k]) for k in range(net.depth)]
    return FixedPredictions(mu, fx, dfx)


# --------------------------------------------------------------------------- one Euler step
@dataclass(frozen=True)
class _Plan:
    """What stays fixed during one relaxation (hashable, so a compiled step specialises on it)."""

    depth: int
    activations: tuple[str, ...]
    free: tuple[int, ...]
    generative: bool
    unit_precision: bool
    fixed: bool
    mu1_cached: bool
    eta: float
    momentum: float
    precondition: bool = False


@dataclass
class _Params:
    """The tensors one relaxation reads: weights, biases, precisions, prior and frozen predictions."""

    W: list[Tensor]
    b: list[Tensor]
    pis: list[Tensor]
    pi0: Tensor
    prior_mean: Tensor
    mu: list  # fixed predictions, or [mu_1] when cached
    fx: list  # fixed activities (fixed-prediction rule)
    dfx: list  # fixed slopes (fixed-prediction rule)


def _errors(plan: _Plan, p: _Params, x: list[Tensor]):
    """Errors ``eps``, precision-weighted errors ``peps`` and activities ``fx`` at state ``x``."""
    L = plan.depth
    eps: list = [x[0] - p.prior_mean if plan.generative else None]
    if plan.fixed:
        fx = list(p.fx)
        eps += [x[l] - p.mu[l] for l in range(1, L + 1)]
    else:
        start = 1 if plan.mu1_cached else 0
        fx = [None] * start + [get_activation(plan.activations[l]).f(x[l]) for l in range(start, L)]
        for l in range(1, L + 1):
            if l == 1 and plan.mu1_cached:
                eps.append(x[1] - p.mu[0])
            else:
                eps.append(x[l] - torch.baddbmm(p.b[l - 1], fx[l - 1], p.W[l - 1]))
    peps = [None if eps[0] is None else p.pi0 * eps[0]]
    peps += eps[1:] if plan.unit_precision else [p.pis[l - 1] * eps[l] for l in range(1, L + 1)]
    return eps, peps, fx


def _update(plan: _Plan, p: _Params, x: list[Tensor], v: list, eps: list, peps: list, fx: list):
    """One Euler (or heavy-ball) step of every free layer: ``x_l -= eta * dE/dx_l``; returns new ``(x, v)``.

    With ``plan.precondition`` the step of layer ``l`` is divided by its precision ``Pi_l``
    (Newton's step on the layer's own quadratic term), so that at ``eta = 1`` the error equals
    its fixed point after one step: what makes the fixed-prediction rule exact in ``L-1``
    steps for any precisions.
    """
    L = plan.depth
    x = list(x)
    v = list(v)
    scaled = plan.precondition and not plan.unit_precision
    for i, l in enumerate(plan.free):
        back = slope = None
        if l < L:
            back = torch.bmm(peps[l + 1], p.W[l].transpose(1, 2))
            slope = p.dfx[l] if plan.fixed else get_activation(plan.activations[l]).df(x[l], fx[l])
            if scaled:
                back = back / (p.pis[l - 1] if l > 0 else p.pi0)
        if scaled:
            peps = list(peps)
            peps[l] = eps[l]
        if plan.momentum > 0:
            g = peps[l] if back is None else (-(slope * back) if peps[l] is None else peps[l] - slope * back)
            v[i] = v[i] * plan.momentum - plan.eta * g
            x[l] = x[l] + v[i]
        else:
            new = x[l] if peps[l] is None else x[l].sub(peps[l], alpha=plan.eta)
            x[l] = new if back is None else new.addcmul(slope, back, value=plan.eta)
    return x, v


def _energies(plan: _Plan, x: list[Tensor], eps: list, peps: list) -> Tensor:
    """Quadratic energy of every layer and sample, ``(E, B, L+1)`` (column 0: the prior term or 0)."""
    zero = x[-1].new_zeros(x[-1].shape[:2])
    return torch.stack([zero if e is None else 0.5 * (e * pe).sum(-1) for e, pe in zip(eps, peps)], -1)


def _relax_steps(plan: _Plan, p: _Params, x: list[Tensor], v: list, steps: int, max_growth: float, spec: tuple | None):
    """The fast path, one graph: errors and energy at the start, ``steps`` Euler steps with no
    bookkeeping, errors and energy at the end, a flag that the energy stayed finite and
    bounded, and (given ``spec = gradient_spec(net)``) the local parameter gradients at the
    relaxed state."""
    eps, peps, fx = _errors(plan, p, x)
    e0 = _energies(plan, x, eps, peps)
    for _ in range(steps):
        x, v = _update(plan, p, x, v, eps, peps, fx)
        eps, peps, fx = _errors(plan, p, x)
    en = _energies(plan, x, eps, peps)
    ok = torch.isfinite(en).all() & (en.sum((1, 2)) <= max_growth * e0.sum((1, 2)) + 1e-6).all()
    grads = None
    if spec is not None:
        pre = list(fx)
        if plan.mu1_cached:
            pre[0] = get_activation(plan.activations[0]).f(x[0])
        grads = hebbian_gradients(spec, peps, pre, eps)
    return x, eps, peps, fx, e0, en, ok, grads


_COMPILED: dict = {}


def _compiled_relax_steps():
    """``_relax_steps`` compiled once per process by ``torch.compile`` (specialised per plan and shape)."""
    if "fn" not in _COMPILED:
        # the C++ wrapper calls the kernels without Python in between (~10% on small nets)
        _COMPILED["fn"] = torch.compile(_relax_steps, fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
    return _COMPILED["fn"]


def _make_plan(net: PCNetwork, clamped: tuple[bool, ...], config: InferenceConfig, unit: bool, *,
               fixed: bool = False, hooked: bool = False) -> _Plan:
    """The static description of one relaxation of ``net`` with these clamps and settings."""
    return _Plan(
        depth=net.depth, activations=tuple(net.activations), free=tuple(l for l, c in enumerate(clamped) if not c),
        generative=net.mode == "generative", unit_precision=unit, fixed=fixed,
        mu1_cached=not fixed and clamped[0] and not hooked, eta=config.step_size, momentum=config.momentum,
        precondition=config.precondition,
    )


# --------------------------------------------------------------------------- the loop
OnStep = Callable[[int, list[Tensor], list, list, list[Tensor]], None]


def _check_state(net: PCNetwork, state: PCState) -> None:
    """Raise DataError naming ``state.x[l]`` when the state does not fit the network."""
    if len(state.x) != net.depth + 1 or len(state.clamped) != net.depth + 1:
        raise DataError(f"state has {len(state.x)} layers but the network has {net.depth + 1} (sizes {net.sizes})")
    B = state.x[-1].shape[1] if state.x[-1].dim() == 3 else None
    for l, (xl, n) in enumerate(zip(state.x, net.sizes)):
        if xl.dim() != 3 or xl.shape[0] != net.ensemble or xl.shape[1] != B or xl.shape[2] != n:
            raise DataError(f"state.x[{l}] has shape {tuple(xl.shape)}, expected ({net.ensemble}, {B}, {n})")


def relax(
    net: PCNetwork,
    state: PCState,
    config: InferenceConfig = InferenceConfig(),
    *,
    fixed: FixedPredictions | None = None,
    on_step: OnStep | None = None,
    gradients: bool = False,
) -> Relaxation:
    """Relax the free value nodes of ``state`` for ``config.steps`` Euler steps.

    Each step computes the errors ``eps_l`` (``(E, B, n_l)``) at the current state, then moves
    every free node by ``-dt/tau * dE/dx_l``; ``state.x`` holds the relaxed nodes afterwards.
    With ``fixed`` (fixed-prediction assumption, Millidge et al. 2022) the predictions and
    the slopes ``f'`` stay at their feed-forward values. ``on_step(t, x, eps, peps, fx)``, if
    given, is called at every step with the current state, errors, precision-weighted errors
    and activities before the nodes move (incremental PC updates the weights there). With
    ``config.compile`` and no recording, tolerance or hook, the T steps run as one compiled
    graph and divergence is checked at the end. With ``gradients`` the local parameter
    gradients at the relaxed state (:func:`pcsim.energy.parameter_gradients`) come back in
    ``Relaxation.gradients`` (computed in the same graph on the compiled path). Raises :class:`InferenceDivergenceError`
    naming the step and layer when the energy becomes NaN/Inf or exceeds ``max_growth``
    times its start.
    """
    _check_state(net, state)
    sparse_checks = on_step is None and not (config.record or config.tol > 0) and (config.compile or config.check_every != 1)
    try:
        return _relax(net, state, config, fixed, on_step, gradients)
    except InferenceDivergenceError:
        if not sparse_checks:
            raise
        # divergence was seen only at a sparse check: rerun from the untouched state, checking
        # every step, so the error names the step and layer where it started
        return _relax(net, state, replace(config, compile=False, check_every=1), fixed, on_step, gradients)


def _relax(net: PCNetwork, state: PCState, config: InferenceConfig, fixed: FixedPredictions | None,
           on_step: OnStep | None, gradients: bool) -> Relaxation:
    L = net.depth
    x = list(state.x)
    eta = config.step_size
    track = config.record or config.tol > 0
    check_every = 1 if track else config.check_every
    unit = net.unit_precision()
    plan = _make_plan(net, state.clamped, config, unit, fixed=fixed is not None, hooked=on_step is not None)
    mu = list(fixed.mu) if fixed is not None else []
    if plan.mu1_cached:  # mu_1 is constant while x_0 is clamped and the weights do not move
        mu = [torch.baddbmm(net.biases[0], net.activation(0).f(x[0]), net.weights[0])]
    p = _Params(net.weights, net.biases, [] if unit else net.precision(), net.prior_log_precision.exp(), net.prior_mean, mu,
                fixed.fx if fixed is not None else [], fixed.dfx if fixed is not None else [])
    v = [torch.zeros_like(x[l]) for l in plan.free] if config.momentum > 0 else [None] * len(plan.free)
    trace: dict[str, list] | None = {k: [] for k in ["energy"] + [f"x{l}" for l in range(L + 1)] + [f"eps{l}" for l in range(L + 1)]} if config.record else None

    def energies(eps, peps):
        return _energies(plan, x, eps, peps)

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
            layer = int(torch.argmax((en - e0)[member].sum(0)))
            raise InferenceDivergenceError(
                f"inference diverged: energy grew from {float(e0[member].sum()):.4g} to {float(tot[member]):.4g} "
                f"(more than max_growth={config.max_growth:g} times) by step {t}, mostly in layer {layer} "
                f"(ensemble member {member}); reduce dt/tau (now {eta:g}) or the momentum", step=t, layer=layer)

    grads = None
    if config.compile and not track and on_step is None and config.steps > 0:
        x, eps, peps, fx, e_start, en, ok, grads = _compiled_relax_steps()(
            plan, p, x, v, config.steps, config.max_growth, gradient_spec(net) if gradients else None)
        steps_run = config.steps
        if not bool(ok):  # find out where, with the same checks as the stepped loop
            check(0, e_start, e_start)
            check(steps_run, en, e_start)
    else:
        eps, peps, fx = _errors(plan, p, x)
        e_start = en = energies(eps, peps)
        check(0, e_start, e_start)
        steps_run = 0
        prev_total = None
        for t in range(config.steps + 1):
            if t > 0:
                eps, peps, fx = _errors(plan, p, x)
                if track or t == config.steps or (check_every and t % check_every == 0):
                    en = energies(eps, peps)
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
            x_next, v = _update(plan, p, x, v, eps, peps, fx)  # values move with the weights of this step
            if on_step is not None:
                on_step(t, x, eps, peps, fx)
                if net.learn_precision:  # the hook may have changed the precisions
                    p.pis = net.precision()
            x = x_next
            steps_run += 1
    if plan.mu1_cached:
        fx[0] = net.activation(0).f(x[0])
    if gradients and grads is None:
        grads = parameter_gradients(net, peps, fx, eps)
    state.x[:] = x
    out_trace = {k: np.stack(v) for k, v in trace.items()} if trace is not None else None
    return Relaxation(state, eps, peps, list(fx), en, steps_run, out_trace, config.dt, grads)
