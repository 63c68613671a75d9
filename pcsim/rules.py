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

import math
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Literal

import torch

from .errors import DataError
from .energy import parameter_gradients as local_gradients  # noqa: F401  (the rules' public name)
from .activations import get_activation
from .energy import gradient_spec
from .inference import (FixedPredictions, InferenceConfig, PCState, Relaxation, _as_batch, _make_plan, _Params,
                        _relax_steps, freeze_predictions, init_state, relax)
from .optim import Adam, adam_update_
from .network import PCNetwork

Tensor = torch.Tensor


def nudged(net: PCNetwork, nudge: float) -> PCNetwork:
    """A view of ``net`` whose output precision is scaled by ``nudge`` (``Pi_L -> nudge * Pi_L``).

    The output energy weighted by ``beta = nudge`` is the nudging of equilibrium propagation
    (Scellier & Bengio 2017): as ``beta -> 0`` the hidden errors shrink as ``O(beta)`` and the
    standard-PC update divided by ``beta`` tends to the backprop gradient (Whittington &
    Bogacz 2017). The view shares the weight tensors, so updates reach ``net``.
    """
    if nudge == 1.0:
        return net
    if nudge <= 0:
        raise ValueError(f"nudge must be > 0, got {nudge}")
    if net.learn_precision:
        raise ValueError("nudging rescales the output precision; it cannot be combined with precision learning")
    return replace(net, log_precision=net.log_precision[:-1] + [net.log_precision[-1] + math.log(nudge)])


def _training_state(net: PCNetwork, inputs, target, data) -> PCState:
    if net.mode == "discriminative":
        if inputs is None or target is None:
            raise DataError("discriminative training needs `inputs` and `target`")
        return init_state(net, inputs, target)
    if data is None:
        raise DataError("generative training needs `data` clamped at x_L")
    return init_state(net, data=data)


@dataclass(frozen=True)
class StandardPC:
    """Inference learning: relax T steps with the weights fixed, then one local update."""

    inference: InferenceConfig = field(default_factory=InferenceConfig)
    nudge: float = 1.0
    name: Literal["pc"] = "pc"

    def gradients(self, net: PCNetwork, inputs=None, target=None, *, data=None) -> tuple[list[Tensor], Relaxation]:
        """Relax on one batch (inputs ``(B, n_0)``, target ``(B, n_L)`` or generative ``data``) and return ``(dE/dtheta, relaxation)``."""
        view = nudged(net, self.nudge)
        r = relax(view, _training_state(view, inputs, target, data), self.inference, gradients=True)
        return r.gradients, r

    def step(self, net: PCNetwork, optimizer, inputs=None, target=None, *, data=None) -> Relaxation:
        """One training step on one batch: relax, then let ``optimizer`` apply the local gradients.

        ``inputs`` ``(B, n_0)`` or ``(E, B, n_0)`` and ``target`` ``(.., n_L)`` in discriminative
        mode, ``data`` ``(.., n_L)`` in generative mode; returns the relaxation.
        """
        if _can_fuse(self, net, optimizer, data):
            r = _fused_step(self, net, optimizer, inputs, target)
            if r is not None:
                return r  # else the energy diverged: the stepped path below says where
        grads, r = self.gradients(net, inputs, target, data=data)
        optimizer.step(net.parameters(), grads)
        return r


def _can_fuse(rule: StandardPC, net: PCNetwork, optimizer, data) -> bool:
    cfg = rule.inference
    return (cfg.compile and not cfg.record and cfg.tol == 0 and cfg.steps > 0 and data is None and rule.nudge == 1.0
            and net.mode == "discriminative" and isinstance(optimizer, Adam) and isinstance(optimizer.lr, (int, float)))


_FUSED: dict = {}


def _fused_step(rule: StandardPC, net: PCNetwork, optimizer: "Adam", inputs, target) -> Relaxation | None:
    """A whole StandardPC training step as one compiled graph: feed-forward sweep, T Euler
    steps, local gradients and the Adam update, the update applied only if the energy stayed
    finite and bounded (else nothing changes and None is returned). The same numbers as the
    stepped path (tested); it saves the Python between the pieces, which dominates small nets."""
    x0 = _as_batch(net, inputs, "inputs", net.sizes[0])
    y = _as_batch(net, target, "target", net.sizes[-1])
    if y.shape[1] != x0.shape[1]:
        raise DataError(f"target has {y.shape[1]} samples but inputs have {x0.shape[1]}")
    cfg, L = rule.inference, net.depth
    clamped = (True,) + (False,) * (L - 1) + (True,)
    plan = _make_plan(net, clamped, cfg, net.unit_precision())
    spec = gradient_spec(net)
    key = (plan, cfg.steps, cfg.max_growth, spec, optimizer.betas, optimizer.eps)
    if key not in _FUSED:
        _FUSED[key] = torch.compile(partial(_train_step_graph, plan, cfg.steps, cfg.max_growth, spec, optimizer.betas,
                                            optimizer.eps), fullgraph=True, dynamic=False, options={"cpp_wrapper": True})
    params = net.parameters()
    m, v, scal = optimizer.begin_step(params)
    fixed_lps = [] if net.learn_precision else net.log_precision
    x, eps, peps, fx, en, ok = _FUSED[key](x0, y, params, m, v, scal, fixed_lps, net.prior_log_precision.exp(), net.prior_mean)
    if not bool(ok):
        optimizer.cancel_step()
        return None
    fx[0] = net.activation(0).f(x[0])
    return Relaxation(PCState(x, clamped), eps, peps, fx, en, cfg.steps, None, cfg.dt)


def _train_step_graph(plan, steps, max_growth, spec, betas, adam_eps, x0, y, params, m, v, scal, fixed_lps, pi0, prior_mean):
    L = plan.depth
    W, b = params[:L], params[L:2 * L]
    lps = params[2 * L:3 * L] if spec[2] else fixed_lps
    pis = [] if plan.unit_precision else [lp.exp() for lp in lps]
    hs = [x0]
    for k in range(L):  # the feed-forward sweep is the initial state; its mu_1 stays fixed
        hs.append(torch.baddbmm(b[k], get_activation(plan.activations[k]).f(hs[-1]), W[k]))
    vel = [torch.zeros_like(hs[l]) for l in plan.free] if plan.momentum > 0 else [None] * len(plan.free)
    p = _Params(W, b, pis, pi0, prior_mean, [hs[1]], [], [])
    x, eps, peps, fx, _, en, ok, grads = _relax_steps(plan, p, hs[:-1] + [y], vel, steps, max_growth, spec)
    adam_update_(params, grads, m, v, scal, betas, adam_eps, ok)
    return x, eps, peps, fx, en, ok


@dataclass(frozen=True)
class IncrementalPC:
    """Incremental PC: the local update is applied at every inference step, values and weights move together."""

    inference: InferenceConfig = field(default_factory=InferenceConfig)
    nudge: float = 1.0
    name: Literal["ipc"] = "ipc"

    def step(self, net: PCNetwork, optimizer, inputs=None, target=None, *, data=None) -> Relaxation:
        """One training step: T inference steps, each followed by a weight update from the same errors.

        ``inputs`` ``(B, n_0)`` or ``(E, B, n_0)`` and ``target`` ``(.., n_L)`` in discriminative
        mode, ``data`` ``(.., n_L)`` in generative mode; returns the relaxation.
        """
        params = net.parameters()
        view = nudged(net, self.nudge)

        def update(t, x, eps, peps, fx):
            optimizer.step(params, local_gradients(net, peps, fx, eps))

        return relax(view, _training_state(view, inputs, target, data), self.inference, on_step=update)


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

    def _config(self, net: PCNetwork) -> InferenceConfig:
        return self.inference or InferenceConfig(steps=max(net.depth - 1, 0), dt=1.0, tau=1.0, precondition=True)

    def gradients(self, net: PCNetwork, inputs=None, target=None, *, data=None) -> tuple[list[Tensor], Relaxation]:
        """Relax with frozen feed-forward predictions and return ``(dE/dtheta, relaxation)``; equals ``nudge`` x the backprop gradient."""
        view = nudged(net, self.nudge)
        state = _training_state(view, inputs, target, data)
        fixed: FixedPredictions = freeze_predictions(view, state)
        r = relax(view, state, self._config(view), fixed=fixed, gradients=True)
        return r.gradients, r

    def step(self, net: PCNetwork, optimizer, inputs=None, target=None, *, data=None) -> Relaxation:
        """One training step with the fixed-prediction update (shapes as :meth:`StandardPC.step`)."""
        grads, r = self.gradients(net, inputs, target, data=data)
        optimizer.step(net.parameters(), grads)
        return r


RULES = {"pc": StandardPC, "ipc": IncrementalPC, "fpa": FixedPredictionPC}


def make_rule(name: str, inference: InferenceConfig, nudge: float = 1.0):
    """The learning rule called ``name`` (``"pc"``, ``"ipc"`` or ``"fpa"``) with the given inference settings."""
    if name not in RULES:
        raise ValueError(f"unknown learning rule {name!r}; known: {', '.join(RULES)}")
    if name == "fpa":
        return FixedPredictionPC(None, nudge)
    return RULES[name](inference, nudge)
