"""Local learning rules for predictive-coding networks, written as the products they are.

For ``mu_l = f(x_{l-1}) @ W_l + b_l`` the batch-mean energy gradient is the Hebbian product
of pre-synaptic activity and post-synaptic precision-weighted error::

    dE/dW_l = -f(x_{l-1})^T (Pi_l eps_l) / B        dE/db_l = -mean_B(Pi_l eps_l)

and, for learned precisions (log-parametrised), ``dE/dlog Pi_l = 1/2 (Pi_l eps_l^2 - 1)``.
The rules differ in *when* these products are taken:

- ``StandardPC`` (inference learning; Whittington & Bogacz 2017, Rao & Ballard 1999):
  relax for T steps, then take one update at the relaxed state.
- ``IncrementalPC`` (iPC; Salvatori et al. 2024): update the weights at every inference step.
- ``FixedPredictionPC`` (fixed-prediction assumption, Millidge et al. 2022; with unit step
  and T = L-1 it is zero-divergence inference learning, Z-IL, Song et al. 2020): predictions
  and slopes stay at their feed-forward values, so the relaxed errors are exactly
  backprop's deltas and the update equals the backprop gradient.

Precision learning (Bogacz 2017; Friston 2005) is switched on by ``PCNetwork.learn_precision``
and works with any rule.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field, replace
from typing import Literal

import torch

from . import energy as pc
from . import relaxation
from .errors import ConfigError, DataError, InferenceDivergenceError
from .inference import (FixedPredictions, InferenceConfig, InferenceStep, PCDynamics, PCState, Relaxation, StepPlan,
                        _as_batch, freeze_predictions, init_state, relax, start)
from .arguments import check_number
from .network import PCNetwork
from .optim import Adam, AdamState, adam_init, adam_update
from .parallel import threads, threads_for

Tensor = torch.Tensor


def nudged(net: PCNetwork, nudge: float) -> PCNetwork:
    """A view of ``net`` whose output precision is scaled by ``nudge`` (``Pi_L -> nudge * Pi_L``).

    The output energy weighted by ``beta = nudge`` is the nudging of equilibrium propagation
    (Scellier & Bengio 2017): as ``beta -> 0`` the hidden errors shrink as ``O(beta)`` and the
    standard-PC update divided by ``beta`` tends to the backprop gradient (Whittington &
    Bogacz 2017). The view shares the weight tensors, so updates reach ``net``.
    """
    nudge = check_number("nudge", nudge, gt=0)
    if nudge == 1.0:
        return net
    if net.learn_precision:
        raise ConfigError(f"nudge={nudge:g}: nudging rescales the output precision; it cannot be combined with "
                          "precision learning (learn_precision=True)")
    return replace(net, log_precision=net.log_precision[:-1] + [net.log_precision[-1] + math.log(nudge)])


def _relax_nudged(view: PCNetwork, state: PCState, config: InferenceConfig, nudge: float, **kw) -> Relaxation:
    """:func:`relax` of a rule's nudged view; the one place every rule relaxes. A divergence at the
    output end (the top two layers) with ``nudge > 1`` names the nudge as its likely cause: it
    multiplies the output precision, and with it the curvature the step must stay below."""
    try:
        return relax(view, state, config, **kw)
    except InferenceDivergenceError as exc:
        if nudge <= 1.0 or exc.layer < view.depth - 1:
            raise
        what, _, cause = str(exc).partition(relaxation.CAUSE)
        raise InferenceDivergenceError(
            f"{what}{relaxation.CAUSE}the nudge (nudge={nudge:g}) scales the output precision Pi_{view.depth} to "
            f"{float(view.log_precision[-1].exp().max()):.4g}; lower the nudge (else: {cause})",
            step=exc.step, layer=exc.layer) from exc


def _training_state(net: PCNetwork, inputs, target, data) -> PCState:
    if net.mode == "discriminative":
        if inputs is None or target is None:
            raise DataError("discriminative training needs `inputs` and `target`")
        return init_state(net, inputs, target)
    if data is None:
        raise DataError("generative training needs `data` clamped at x_L")
    return init_state(net, data=data)


def _check_rule(rule, optional_inference: bool = False) -> None:
    """The arguments every rule takes, checked once at construction: ``inference`` an
    :class:`InferenceConfig` (or None where the rule has a default), ``nudge`` a finite number > 0."""
    cls = type(rule).__name__
    if not (isinstance(rule.inference, InferenceConfig) or (optional_inference and rule.inference is None)):
        raise ConfigError(f"{cls}.inference must be an InferenceConfig, got {rule.inference!r}")
    check_number(f"{cls}.nudge", rule.nudge, gt=0)


def _sized(step):
    """Run a rule's ``step`` whole (feed-forward sweep, relaxation, gradients, optimiser update)
    with the threads its batch's products can use (:func:`pcsim.parallel.threads_for`): the
    products around the relaxation are as small as those inside it, and a two-thread team on
    them stalls as soon as another process takes a core (:mod:`pcsim.parallel`)."""
    @functools.wraps(step)
    def sized_step(self, net: PCNetwork, optimizer, inputs=None, target=None, *, data=None) -> Relaxation:
        batch = getattr(inputs if data is None else data, "shape", ())
        with threads(threads_for(net.sizes, batch[-2] if len(batch) >= 2 else 1, net.ensemble)):
            return step(self, net, optimizer, inputs, target, data=data)
    return sized_step


def _check_optimizer(optimizer) -> None:
    if not callable(getattr(optimizer, "step", None)):
        raise ConfigError(f"optimizer must be an optimiser with step(params, grads) (pcsim.optim), got {optimizer!r}")


@dataclass(frozen=True)
class StandardPC:
    """Inference learning: relax T steps with the weights fixed, then one local update."""

    inference: InferenceConfig = field(default_factory=InferenceConfig)
    nudge: float = 1.0
    name: Literal["pc"] = "pc"

    def __post_init__(self):
        _check_rule(self)

    def gradients(self, net: PCNetwork, inputs=None, target=None, *, data=None) -> tuple[list[Tensor], Relaxation]:
        """Relax on one batch (inputs ``(B, n_0)``, target ``(B, n_L)`` or generative ``data``) and return ``(dE/dtheta, relaxation)``."""
        view = nudged(net, self.nudge)
        r = _relax_nudged(view, _training_state(view, inputs, target, data), self.inference, self.nudge, gradients=True)
        return r.gradients, r

    @_sized
    def step(self, net: PCNetwork, optimizer, inputs=None, target=None, *, data=None) -> Relaxation:
        """One training step on one batch: relax, then let ``optimizer`` apply the local gradients.

        ``inputs`` ``(B, n_0)`` or ``(E, B, n_0)`` and ``target`` ``(.., n_L)`` in discriminative
        mode, ``data`` ``(.., n_L)`` in generative mode; returns the relaxation.
        """
        _check_optimizer(optimizer)
        if _can_fuse(self, net, optimizer, data):
            return _fused_step(self, net, optimizer, inputs, target)
        grads, r = self.gradients(net, inputs, target, data=data)
        optimizer.step(net.parameters(), grads)
        return r


def _can_fuse(rule: StandardPC, net: PCNetwork, optimizer, data) -> bool:
    cfg = rule.inference
    return (cfg.compile and not cfg.record and cfg.tol == 0 and cfg.steps > 0 and data is None and rule.nudge == 1.0
            and net.mode == "discriminative" and isinstance(optimizer, Adam) and isinstance(optimizer.lr, (int, float)))


def _fused_step(rule: StandardPC, net: PCNetwork, optimizer: "Adam", inputs, target) -> Relaxation:
    """A whole StandardPC training step as one compiled graph (:func:`training_step`): feed-forward
    sweep, the T steps of :func:`pcsim.relaxation.advance`, the local gradients and
    :func:`pcsim.optim.adam_update`. A sparse prior on the value nodes (``net.spec.sparsity``) is
    part of it, as of the eager step: the relaxation's directions and energies are
    :class:`~pcsim.inference.PCDynamics`' own, which read it off the spec. The new parameters and Adam state are kept only if every
    step's energy stayed finite and bounded; else nothing changes and the divergence error
    names the step, read off the per-step energies the graph returns."""
    x0 = _as_batch(net, inputs, "inputs", net.sizes[0])
    y = _as_batch(net, target, "target", net.sizes[-1])
    if y.shape[1] != x0.shape[1]:
        raise DataError(f"target has {y.shape[1]} samples but inputs have {x0.shape[1]}")
    cfg, L = rule.inference, net.depth
    clamped = (True,) + (False,) * (L - 1) + (True,)
    plan = StepPlan(net.spec, tuple(range(1, L)), cfg.step_size, cfg.momentum, cfg.precondition, net.unit_precision(),
                    cfg.max_growth)
    # the threads of the whole step (:func:`_sized`), baked into the graph it compiles
    step = relaxation.compiled(training_step, torch.get_num_threads())
    return _run_fused(plan, cfg, clamped, net, optimizer, x0, y, step)


def _run_fused(plan: StepPlan, cfg: InferenceConfig, clamped, net: PCNetwork, optimizer: Adam, x0, y, step) -> Relaxation:
    params = net.parameters()
    state = optimizer.state if optimizer.state is not None else adam_init(params)
    count = torch.tensor(float(state.step), dtype=torch.float64)  # a tensor: one graph for every step count
    fixed_lps = [] if net.learn_precision else net.log_precision
    carry, ens, bad, new, m, v = step(plan, cfg.steps, x0, y, params, AdamState(count, state.m, state.v),
                                      optimizer.lr, optimizer.betas, optimizer.eps, fixed_lps)
    system = PCDynamics(plan, net.weights, net.biases, net.log_precision,  # for the checks (and their message) only
                        None if plan.unit_precision else net.precision(), None)
    relaxation.check(system, 0, ens, ens[0], cfg.max_growth, bad)  # steps 0..T
    relaxation.check_end(system, cfg.steps, ens[-1], ens[0], cfg.check_descent)
    torch._foreach_copy_(params, new)
    optimizer.state = AdamState(state.step + 1, list(m), list(v))
    return Relaxation(PCState(carry.x, clamped), carry.eps, carry.peps, list(carry.fx), ens[-1], cfg.steps, None, cfg.dt)


def training_step(plan: StepPlan, steps: int, x0, y, params: list, adam: AdamState, lr: float, betas, adam_eps: float,
                  fixed_lps: list):
    """One standard-PC training step with Adam, pure (the fused path compiles it whole).

    ``x0`` ``(E, B, n_0)`` clamped input, ``y`` ``(E, B, n_L)`` clamped target, ``params`` as
    ``PCNetwork.parameters()``, ``fixed_lps`` the log-precisions when they are not learned.
    Returns the relaxed carry, the energies at steps ``0..T`` ``(T+1, E, B, L+1)``, which of
    them are bad (:func:`pcsim.relaxation.bad_steps`, ``(T+1,)``), the updated parameters and
    Adam's new moments.
    """
    spec, L = plan.spec, plan.spec.depth
    W, b = params[:L], params[L:2 * L]
    lps = params[2 * L:3 * L] if spec.learn_precision else fixed_lps
    xs = pc.sweep(spec, W, b, x0)  # the initial state; its mu_1 = x_1 stays fixed (x_0 is clamped)
    fx = [spec.activation(0).f(x0)] + [None] * (L - 1)
    mu = [None, xs[1]] + [None] * (L - 1)
    pis = None if plan.unit_precision else [lp.exp() for lp in lps]
    system = PCDynamics(plan, W, b, lps, pis, None, mu, fx, None)
    carry = start(system, xs[:-1] + [y])
    e0 = system.energies(carry)
    carry, ens = relaxation.advance(system, carry, steps, True)
    ens = torch.cat([e0[None], ens])
    bad = relaxation.bad_steps(system, ens, e0, plan.max_growth)
    grads = pc.parameter_gradients(spec, carry.peps, carry.fx, carry.eps)
    new, state = adam_update(params, grads, adam, lr, betas, adam_eps)
    return carry, ens, bad, new, state.m, state.v


@dataclass(frozen=True)
class IncrementalPC:
    """Incremental PC: the local update is applied at every inference step, values and weights move together."""

    inference: InferenceConfig = field(default_factory=InferenceConfig)
    nudge: float = 1.0
    name: Literal["ipc"] = "ipc"

    def __post_init__(self):
        _check_rule(self)

    @_sized
    def step(self, net: PCNetwork, optimizer, inputs=None, target=None, *, data=None) -> Relaxation:
        """One training step: T inference steps, each followed by a weight update from the same errors.

        ``inputs`` ``(B, n_0)`` or ``(E, B, n_0)`` and ``target`` ``(.., n_L)`` in discriminative
        mode, ``data`` ``(.., n_L)`` in generative mode; returns the relaxation.
        """
        _check_optimizer(optimizer)
        params = net.parameters()
        view = nudged(net, self.nudge)

        def update(step: InferenceStep) -> None:
            optimizer.step(params, pc.parameter_gradients(net.spec, step.peps, step.fx, step.eps))

        return _relax_nudged(view, _training_state(view, inputs, target, data), self.inference, self.nudge, on_step=update)


@dataclass(frozen=True)
class FixedPredictionPC:
    """Fixed-prediction PC: exact backprop gradients from local relaxation.

    With ``inference=None`` it runs ``L-1`` steps of size ``dt/tau = 1`` (Z-IL), each layer's
    step divided by its precision, after which the precision-weighted errors equal
    backprop's deltas exactly, whatever the precisions; another step size converges to the
    same fixed point geometrically.
    """

    inference: InferenceConfig | None = None
    nudge: float = 1.0
    name: Literal["fpa"] = "fpa"

    def __post_init__(self):
        _check_rule(self, optional_inference=True)

    def _config(self, net: PCNetwork) -> InferenceConfig:
        return self.inference or InferenceConfig(steps=max(net.depth - 1, 0), dt=1.0, tau=1.0, precondition=True)

    def gradients(self, net: PCNetwork, inputs=None, target=None, *, data=None) -> tuple[list[Tensor], Relaxation]:
        """Relax with frozen feed-forward predictions and return ``(dE/dtheta, relaxation)``; equals ``nudge`` x the backprop gradient.

        A network with a sparse prior on its value nodes is refused: the equality holds for the
        Gaussian energy only (the prior moves the fixed point off the feed-forward values)."""
        if any(net.spec.sparsity):
            raise ConfigError(f"FixedPredictionPC: net has a sparse prior (sparsity={list(net.spec.sparsity)}); the "
                              "fixed-prediction rule's backprop equivalence holds for Gaussian energies only")
        view = nudged(net, self.nudge)
        state = _training_state(view, inputs, target, data)
        fixed: FixedPredictions = freeze_predictions(view, state)
        r = _relax_nudged(view, state, self._config(view), self.nudge, fixed=fixed, gradients=True)
        return r.gradients, r

    @_sized
    def step(self, net: PCNetwork, optimizer, inputs=None, target=None, *, data=None) -> Relaxation:
        """One training step with the fixed-prediction update (shapes as :meth:`StandardPC.step`)."""
        _check_optimizer(optimizer)
        grads, r = self.gradients(net, inputs, target, data=data)
        optimizer.step(net.parameters(), grads)
        return r


RULES = {"pc": StandardPC, "ipc": IncrementalPC, "fpa": FixedPredictionPC}


def make_rule(name: str, inference: InferenceConfig, nudge: float = 1.0):
    """The learning rule called ``name`` (``"pc"``, ``"ipc"`` or ``"fpa"``) with the given inference settings."""
    if name not in RULES:
        raise ConfigError(f"unknown learning rule {name!r}; known: {', '.join(RULES)}")
    if name == "fpa":
        return FixedPredictionPC(None, nudge)
    return RULES[name](inference, nudge)
