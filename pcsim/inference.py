"""Inference: relaxing the free value nodes down the energy.

The value nodes follow the gradient flow ``tau dx_l/dt = -dE/dx_l`` integrated with Euler
steps of ``dt`` (both in ms, so ``dt / tau`` is the dimensionless step size), optionally
with heavy-ball momentum. Each update of ``x_l`` uses only its own error ``eps_l`` and the
error ``eps_{l+1}`` of the layer it predicts (Whittington & Bogacz 2017). Static PC is a
relaxing system (:class:`PCDynamics`: its step moves the free nodes down the gradient, then
evaluates the errors, all with :mod:`pcsim.energy`'s functions), driven by the one loop
of :mod:`pcsim.relaxation`; learning rules plug into it through ``on_step``, which receives
one :class:`InferenceStep`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Literal, NamedTuple

import numpy as np
import torch

from . import energy as pc
from . import relaxation
from .config import check_ranges
from .errors import ConfigError, DataError, InferenceDivergenceError
from .network import NetworkSpec, PCNetwork
from .parallel import threads, threads_for

Tensor = torch.Tensor


#: the named preconditioners of :class:`InferenceConfig` (``True`` means ``"precision"``)
PRECONDITIONERS = ("precision", "curvature")


@dataclass(frozen=True)
class InferenceConfig:
    """Settings of one relaxation.

    ``steps``: number of Euler steps T. ``dt``, ``tau``: integration step and node time
    constant in ms (step size ``dt/tau``). ``momentum``: heavy-ball coefficient in [0, 1).
    ``tol``: stop early once the relative change of every member's total energy in one step
    is below ``tol`` (0 disables). ``max_growth``: the energy may not exceed ``max_growth``
    times its initial value (divergence). ``check_descent``: a relaxation that ends with a
    higher total energy than it started with (by more than
    :data:`pcsim.relaxation.RISE_RTOL`) diverged too: it catches a slow blow-up from an energy
    already huge at step 0, which the relative ``max_growth`` bound misses (off: only
    NaN/Inf and ``max_growth`` count). ``record``: keep every node, error and layer
    energy at every step. ``check_every``: check for divergence every k steps (0: only at
    the end, unless ``record`` or ``tol`` make the energy available at every step anyway).
    ``compile``: run the steps as ``torch.compile``d chunks (all T steps in one graph when
    nothing is recorded, no tolerance and no hook; fused kernels, no Python in the loop;
    costs seconds of compilation per shape).
    ``precondition``: scale each free layer's step. ``True`` (or ``"precision"``): divide it by
    the layer's own precision ``Pi_l`` (Newton's step on its own quadratic term; with frozen
    predictions and ``dt/tau = 1`` the fixed-prediction rule's exact backprop deltas).
    ``"curvature"``: divide it by a bound ``c_l`` on the layer's curvature (:func:`curvature_bound`),
    ``c_l = Pi_l + g_l^2 (s_{l+1} |W'_{l+1}|^T)`` with ``W'_{l+1} = |W_{l+1}| Pi_{l+1}^{1/2}`` (columns
    weighted by the precision of the error the layer predicts), ``s`` its column sums and ``g_l``
    the activation's largest slope: the Gauss-Newton Hessian of the energy then satisfies
    ``H <= 2 diag(c)``, so for every precision and weight scale the preconditioned Euler step is
    stable and descends the (Gauss-Newton) energy whenever ``dt/tau < 1`` (exactly for linear
    networks). It is local: the layer's own precision, the precision of the error below it and its
    own outgoing weights. A learned precision that grows therefore slows the layer it weighs
    instead of pushing ``dt/tau * Pi`` past its stability bound.
    ``temperature``: Langevin noise (Monte Carlo PC; Oliviers, Bogacz & Meulemans 2024): every
    step adds ``sqrt(2 dt/tau temperature) xi`` (``xi ~ N(0, I)``; divided by ``sqrt(Pi_l)`` when
    preconditioned) to each free node, so at ``temperature = 1`` the nodes sample
    ``p(free | clamped) ~ exp(-E)`` (up to the Euler discretisation) instead of descending to
    its mode; 0 (default) is plain descent. ``seed`` seeds that noise (when :func:`relax` is given
    no generator). A noisy run is not a descent (criterion 3 of :mod:`pcsim.relaxation` is off);
    it cannot be compiled nor use momentum (both refused).
    """

    steps: int = field(default=20, metadata={"ge": 0})
    dt: float = field(default=1.0, metadata={"gt": 0, "units": "ms"})
    tau: float = field(default=10.0, metadata={"gt": 0, "units": "ms"})
    momentum: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    tol: float = field(default=0.0, metadata={"ge": 0})
    max_growth: float = field(default=10.0, metadata={"gt": 1})
    check_descent: bool = True
    record: bool = False
    check_every: int = field(default=0, metadata={"ge": 0})
    compile: bool = False
    precondition: Literal[False, True, "precision", "curvature"] = False
    temperature: float = field(default=0.0, metadata={"ge": 0})
    seed: int = field(default=0, metadata={"ge": 0})

    def __post_init__(self):
        check_ranges(self)  # the ranges are the fields' metadata, as in a config file
        for name in ("record", "compile", "check_descent"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{type(self).__name__}.{name} must be True or False, got {getattr(self, name)!r}")
        if not isinstance(self.precondition, bool) and self.precondition not in PRECONDITIONERS:
            raise ConfigError(f"{type(self).__name__}.precondition must be True, False, 'precision' or 'curvature', "
                              f"got {self.precondition!r}")
        if self.temperature > 0 and (self.compile or self.momentum > 0):
            raise ConfigError(f"{type(self).__name__}.temperature={self.temperature:g} (Langevin noise) cannot be combined "
                              f"with compile={self.compile} or momentum={self.momentum:g}; use compile=False, momentum=0")

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
    descends, plus the sparse prior of the layers that have one; the ``-1/2 log det Pi`` of
    learned precisions does not depend on the nodes and is left out (``energy.layer_energies``
    includes it). ``steps``: Euler steps taken. ``trace``: when recorded, per-step arrays ``x{l}``/``eps{l}`` ``(T+1, E, B, n_l)`` and ``energy``
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
        """The recorded trace as an ``xarray.Dataset`` with dims (step, ensemble, trial, layer, unit_l{l}).

        ``energy`` ``(step, ensemble, trial, layer)``; ``x{l}``, ``eps{l}`` ``(step, ensemble,
        trial, unit_l{l})`` (dimensionless, in the units of the value nodes); ``time`` in s;
        ``clamped`` ``(layer,)``: 1 where the layer was held fixed (input, clamped target or
        data), whose ``x{l}`` is constant by construction and carries ``clamped = 1``.
        """
        import xarray as xr

        if self.trace is None:
            raise ConfigError("relaxation was not recorded: set InferenceConfig(record=True) (record=False)")
        T1 = self.trace["energy"].shape[0]
        ds = xr.Dataset(
            coords={
                **relaxation.step_coords(T1, self.dt),
                "layer": ("layer", np.arange(net.depth + 1), {"long_name": "value-node layer (0 = bottom of the chain)",
                                                              "units": "1"}),
                "clamped": ("layer", np.asarray(self.state.clamped, dtype=np.int8),
                            {"long_name": "layer clamped during the relaxation (1) or free (0)", "units": "1"}),
            }
        )
        ds["energy"] = (("step", "ensemble", "trial", "layer"), self.trace["energy"], {"long_name": "prediction-error energy", "units": "1"})
        for l in range(net.depth + 1):
            dim = f"unit_l{l}"
            ds[f"x{l}"] = (("step", "ensemble", "trial", dim), self.trace[f"x{l}"],
                           {"long_name": f"value nodes of layer {l}", "units": "1", "clamped": int(self.state.clamped[l])})
            if f"eps{l}" in self.trace:
                ds[f"eps{l}"] = (("step", "ensemble", "trial", dim), self.trace[f"eps{l}"],
                                 {"long_name": f"prediction error of layer {l}", "units": "1"})
        ds.attrs.update(mode=net.mode, sizes=list(net.sizes), activations=list(net.activations))
        return ds


# --------------------------------------------------------------------------- state setup
def _as_batch(net: PCNetwork, a: Tensor, name: str, width: int) -> Tensor:
    """Validate ``a`` (``(B, n)`` or ``(E, B, n)``) and return it as ``(E, B, n)`` on the network's device."""
    if a is None:
        raise DataError(f"{name} is missing (None); expected an array of shape (batch, {width})")
    if not isinstance(a, torch.Tensor):
        try:
            a = torch.as_tensor(np.asarray(a, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name} must be a numeric array of shape (batch, {width}), got {type(a).__name__}: {exc}") from None
    if a.dtype == torch.bool or a.is_complex():
        raise DataError(f"{name} must hold real numbers, got dtype {a.dtype}")
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
    mu: list[Tensor | None] = [None] + [pc.predict(fx[k], net.weights[k], net.biases[k]) for k in range(net.depth)]
    return FixedPredictions(mu, fx, dfx)


# --------------------------------------------------------------------------- the relaxing system
@dataclass(frozen=True)
class StepPlan:
    """What stays fixed during one relaxation (hashable; compiled steps specialise on it).

    ``spec``: the network's static part; ``free``: indices of the layers that move; ``eta``:
    the step ``dt/tau``; ``momentum``; ``precondition``: divide each layer's step by its
    precision (``True``/``"precision"``) or by its curvature bound (``"curvature"``, :func:`curvature_bound`); ``unit_precision``: every precision is 1 (the products are skipped);
    ``max_growth``: the divergence bound (quoted in the error message); ``hooked``: a hook may
    change the parameters between steps (the carry then holds the next direction);
    ``temperature``: Langevin noise of each step (:class:`InferenceConfig`).
    """

    spec: NetworkSpec
    free: tuple[int, ...]
    eta: float
    momentum: float = 0.0
    precondition: bool | str = False
    unit_precision: bool = False
    max_growth: float = 10.0
    hooked: bool = False
    temperature: float = 0.0


class PCCarry(NamedTuple):
    """The state of a static-PC relaxation at one step and what was computed at it.

    ``x``: value nodes ``[x_0..x_L]`` ``(E, B, n_l)``; ``v``: heavy-ball velocity of each free
    layer (``None`` entries without momentum); ``eps``/``peps``: errors and precision-weighted
    errors (:func:`pcsim.energy.errors`); ``fx``: activities ``f(x_l)``, ``l < L``;
    ``direction``: ``dE/dx_l`` of each free layer (divided by its preconditioner when preconditioned),
    computed with the parameters of this step so that a hook may change them before the move
    (``plan.hooked``); ``None`` otherwise: the step computes it, and a relaxation's last state
    costs no direction that nothing would use.
    """

    x: list
    v: list
    eps: list
    peps: list
    fx: list
    direction: list | None


@dataclass
class InferenceStep:
    """What ``relax``'s ``on_step`` receives at step ``t``, before the nodes move: the value nodes
    ``x``, errors ``eps``, precision-weighted errors ``peps`` (lists over layers ``0..L``, each
    ``(E, B, n_l)``, ``None`` where a layer has no error) and activities ``fx`` (``l < L``)."""

    t: int
    x: list[Tensor]
    eps: list[Tensor | None]
    peps: list[Tensor | None]
    fx: list[Tensor]


@dataclass
class PCDynamics:
    """Static PC as a relaxing system (:mod:`pcsim.relaxation`): Euler (or heavy-ball) steps of
    ``tau dx_l/dt = -dE/dx_l`` on the free layers of ``plan``.

    Tensors: ``weights``, ``biases`` and ``log_precision`` of the network (read at every step,
    so a hook's in-place updates take effect); ``precisions`` ``[Pi_1..Pi_L]`` or ``None``
    (unit); ``prior = (m_0, Pi_0)`` in generative mode; ``mu``/``fx``/``slopes``: per-layer
    predictions, activities and slopes held fixed (``None`` entries are computed): frozen
    feed-forward values for the fixed-prediction rule, or ``mu_1`` and ``f(x_0)`` of a clamped
    input, which cannot change while the weights do not. ``generator``: the source of the
    Langevin noise when ``plan.temperature > 0``.
    """

    plan: StepPlan
    weights: list
    biases: list
    log_precision: list
    precisions: list | None
    prior: tuple | None
    mu: list | None = None
    fx: list | None = None
    slopes: list | None = None
    generator: torch.Generator | None = None

    def evaluate(self, x: list, v: list) -> PCCarry:
        """Errors and activities at value nodes ``x`` (with velocities ``v``), and the descent
        directions too when the plan is ``hooked``."""
        spec = self.plan.spec
        eps, peps, fx = pc.errors(spec, self.weights, self.biases, self._precisions(), self.prior, x, mu=self.mu,
                                  fx=self.fx)
        carry = PCCarry(list(x), list(v), eps, peps, fx, None)
        return carry._replace(direction=self.directions(carry)) if self.plan.hooked else carry

    def directions(self, carry: PCCarry) -> list[Tensor]:
        """``dE/dx_l`` (:func:`pcsim.energy.node_gradient`) of each free layer at ``carry``, divided by
        its preconditioner (:meth:`scales`) when preconditioned."""
        spec, L = self.plan.spec, self.plan.spec.depth
        x, peps, fx = carry.x, carry.peps, carry.fx
        scales = self.scales()
        out = []
        for i, l in enumerate(self.plan.free):
            if l < L:
                slope = self.slopes[l] if self.slopes is not None else spec.activation(l).df(x[l], fx[l])
                g = pc.node_gradient(peps[l], peps[l + 1], self.weights[l], slope, x[l], spec.sparse(l))
            else:
                g = pc.node_gradient(peps[l], None, None, None, x[l], spec.sparse(l))
            if scales is not None and scales[i] is not None:
                g = g / scales[i]
            out.append(g)
        return out

    def scales(self) -> list | None:
        """The preconditioner of each free layer (``(E, 1, n_l)`` or ``(E, 1, 1)``; None entries: unscaled),
        or None without preconditioning: its own precision (``"precision"``) or :func:`curvature_bound`."""
        plan = self.plan
        if not plan.precondition:
            return None
        pis = self._precisions()
        if plan.precondition == "curvature":
            return curvature_bound(plan.spec, self.weights, pis, None if self.prior is None else self.prior[1],
                                   plan.free)
        if pis is None:
            return None
        return [pis[l - 1] if l > 0 else self.prior[1] for l in plan.free]

    @property
    def descends(self) -> bool:
        """Whether a step descends the energy (:mod:`pcsim.relaxation`, criterion 3): not with frozen
        slopes, the fixed-prediction rule's dynamics, whose errors rise from zero to backprop's deltas, nor
        with Langevin noise, whose energy fluctuates around the posterior's mean energy."""
        return self.slopes is None and self.plan.temperature == 0

    def _precisions(self) -> list | None:
        return [lp.exp() for lp in self.log_precision] if self.plan.spec.learn_precision else self.precisions

    def step(self, carry: PCCarry) -> PCCarry:
        """Move every free layer by ``-eta * direction`` (heavy-ball: ``v = m v - eta d``, ``x += v``), then evaluate."""
        plan = self.plan
        direction = carry.direction if carry.direction is not None else self.directions(carry)
        x, v = list(carry.x), list(carry.v)
        for i, l in enumerate(plan.free):
            if plan.momentum > 0:
                v[i] = v[i] * plan.momentum - plan.eta * direction[i]
                x[l] = x[l] + v[i]
            else:
                x[l] = x[l].sub(direction[i], alpha=plan.eta)
        if plan.temperature > 0:  # unadjusted Langevin: x += sqrt(2 eta T M^-1) xi, M the preconditioner
            scales = self.scales()
            for i, l in enumerate(plan.free):
                xi = torch.randn(x[l].shape, generator=self.generator, dtype=x[l].dtype, device=x[l].device)
                if scales is not None and scales[i] is not None:
                    xi = xi * scales[i].rsqrt()
                x[l] = x[l].add(xi, alpha=(2.0 * plan.eta * plan.temperature) ** 0.5)
        return self.evaluate(x, v)

    def energies(self, carry: PCCarry) -> Tensor:
        """The energy inference descends per member, sample and layer, ``(E, B, L+1)`` (column 0: the prior
        term or 0): the quadratic energy plus the sparse prior where the network has one (:func:`pcsim.energy.node_energies`)."""
        return pc.node_energies(self.plan.spec, carry.eps, carry.peps, carry.x)

    def totals(self, energies: Tensor) -> Tensor:
        """Total energy per member, summed over the batch and the layers: ``(..., E)``."""
        return energies.sum((-2, -1))

    def diverged(self, t: int, en: Tensor, start: Tensor) -> InferenceDivergenceError:
        """The error for energies ``en`` ``(E, B, L+1)`` at step ``t``, naming the layer and member
        and the likely cause (:func:`pcsim.relaxation.step_cause` decides between the step size
        and a precision from ``dt/tau`` and the largest precision of each layer)."""
        L, growth = self.plan.spec.depth, self.plan.max_growth
        finite = torch.isfinite(en)
        if not bool(finite.all()):
            layer = int(torch.nonzero(~finite.reshape(-1, L + 1).all(0))[0, 0])
            member = int(torch.nonzero(~finite.reshape(en.shape[0], -1).all(1))[0, 0])
            what = f"energy of layer {layer} became NaN/Inf at step {t} (ensemble member {member})"
        else:
            (member,) = relaxation.worst(self, en, start)
            layer = int(torch.argmax((en - start)[member].sum(0)))
            tot, tot0 = float(self.totals(en)[member]), float(self.totals(start)[member])
            what = f"{relaxation.growth_what(tot0, tot, t, growth)}, mostly in layer {layer} (ensemble member {member})"
        return InferenceDivergenceError(relaxation.divergence_message(what, self._cause()), step=t, layer=layer)

    def _cause(self) -> str:
        """:func:`pcsim.relaxation.step_cause` with this system's step, momentum and largest precision per layer."""
        pis = self._precisions()
        named = {}
        if self.plan.precondition == "curvature":  # no precision can lift the step past its bound
            return relaxation.step_cause(self.plan.eta, self.plan.momentum, None,
                                         "(the curvature-preconditioned step is stable for dt/tau < 1 on the "
                                         "Gauss-Newton energy; above that, or with strongly curved activations, lower it)")
        if pis is not None:
            named = {f"Pi_{l}": float(p.max()) for l, p in enumerate(pis, start=1) if torch.isfinite(p).all()}
        if self.prior is not None and torch.isfinite(self.prior[1]).all():
            named["Pi_0 (prior)"] = float(self.prior[1].max())
        return relaxation.step_cause(self.plan.eta, self.plan.momentum, named or None)

    def observe(self, carry: PCCarry, energies: Tensor) -> dict[str, Tensor]:
        """A recorded step: ``energy`` ``(E, B, L+1)``, ``x{l}`` and ``eps{l}`` ``(E, B, n_l)`` (zeros where no error)."""
        out = {"energy": energies}
        for l, (xl, e) in enumerate(zip(carry.x, carry.eps)):
            out[f"x{l}"] = xl
            out[f"eps{l}"] = torch.zeros_like(xl) if e is None else e
        return out


def curvature_bound(spec: NetworkSpec, weights, precisions: list | None, prior_precision: Tensor | None,
                    layers) -> list[Tensor | None]:
    """A bound ``c_l`` on the curvature of the energy in each of ``layers`` (value-node layer indices),
    ``(E, 1, n_l)``, from the layer's own precision and the error it predicts.

    The Gauss-Newton Hessian of ``E = sum_l 1/2 ||Pi_l^{1/2} (x_l - mu_l)||^2`` is ``H = sum_l J_l^T
    Pi_l J_l`` with ``J_l v = v_l - A_l v_{l-1}``, ``A_l = diag(f'(x_{l-1})) W_l``. By
    ``|a - b|^2 <= 2 |a|^2 + 2 |b|^2``, ``v^T H v <= 2 sum_l v_l^T (Pi_l + A_{l+1} Pi_{l+1}
    A_{l+1}^T) v_l``, and by the Schur test ``|B^T v|^2 <= sum_i v_i^2 sum_j |B_ij| s_j`` with ``s_j
    = sum_k |B_kj|``; with ``B = g_l |W_{l+1}| Pi_{l+1}^{1/2}`` (``g_l`` the activation's
    :attr:`~pcsim.activations.Activation.slope_bound`) that gives ``H <= 2 diag(c)``,

        c_l = Pi_l + g_l^2 (s_{l+1} @ |W'_{l+1}|^T),   W'_{l+1} = |W_{l+1}| Pi_{l+1}^{1/2},

    for every state (``Pi_0`` the prior precision in generative mode; a discriminative input is
    clamped and carries no own term). The sparse prior adds its largest curvature
    ``2 lambda / s^2`` (Cauchy). ``precisions`` ``[Pi_1..Pi_L]`` or None (unit); ``weights[k]``
    ``(E, n_k, n_{k+1})``. Euler steps ``x_l -= dt/tau dE/dx_l / c_l`` thus have
    ``dt/tau lambda_max(C^{-1} H) <= 2 dt/tau``: stable for ``dt/tau < 1``."""
    L = spec.depth
    out: list[Tensor | None] = []
    for l in layers:
        if l > 0:
            own = precisions[l - 1] if precisions is not None else weights[l - 1].new_ones(1, 1, 1)
        else:
            own = prior_precision if prior_precision is not None else weights[0].new_zeros(1, 1, 1)
        c = own
        if l < L:
            W = weights[l].abs()                                            # (E, n_l, n_{l+1})
            if precisions is not None:
                W = W * precisions[l].sqrt()                                # columns weighted by Pi_{l+1}^{1/2}
            s = W.sum(1, keepdim=True)                                      # (E, 1, n_{l+1})
            c = c + spec.activation(l).slope_bound ** 2 * torch.bmm(s, W.transpose(1, 2))
        sparse = spec.sparse(l)
        if sparse is not None and sparse[2] == "cauchy":
            c = c + 2.0 * sparse[0] / sparse[1] ** 2
        out.append(c)
    return out


def dynamics(net: PCNetwork, state: PCState, config: InferenceConfig, *, fixed: FixedPredictions | None = None,
             hooked: bool = False, generator: torch.Generator | None = None) -> PCDynamics:
    """The relaxing system of ``net`` with ``state``'s clamps and ``config``'s step.

    ``fixed`` freezes predictions and slopes (fixed-prediction rule). Unless ``hooked`` (a hook
    may move the weights between steps), ``mu_1`` and ``f(x_0)`` of a clamped input are
    computed once. ``generator``: the Langevin noise's source (``config.temperature > 0``).
    """
    spec, L = net.spec, net.depth
    unit = net.unit_precision()
    plan = StepPlan(spec, tuple(l for l, c in enumerate(state.clamped) if not c), config.step_size, config.momentum,
                    config.precondition, unit, config.max_growth, hooked, config.temperature)
    prior = (net.prior_mean, net.prior_log_precision.exp()) if net.mode == "generative" else None
    mu = fx = slopes = None
    if fixed is not None:
        mu, fx, slopes = list(fixed.mu), list(fixed.fx), list(fixed.dfx)
    elif not hooked and state.clamped[0]:
        fx = [net.activation(0).f(state.x[0])] + [None] * (L - 1)
        mu = [None, pc.predict(fx[0], net.weights[0], net.biases[0])] + [None] * (L - 1)
    return PCDynamics(plan, net.weights, net.biases, net.log_precision, None if unit else net.precision(), prior,
                      mu, fx, slopes, generator)


def start(system: PCDynamics, x: list[Tensor]) -> PCCarry:
    """The carry at value nodes ``x`` (zero velocities when the plan has momentum)."""
    v = [torch.zeros_like(x[l]) if system.plan.momentum > 0 else None for l in system.plan.free]
    return system.evaluate(list(x), v)


# --------------------------------------------------------------------------- relax
OnStep = Callable[[InferenceStep], None]


def _check_state(net: PCNetwork, state: PCState) -> None:
    """Raise DataError naming ``state.x[l]`` when the state does not fit the network (ConfigError when ``net`` is no network)."""
    if not isinstance(net, PCNetwork):
        raise ConfigError(f"net must be a PCNetwork, got {type(net).__name__}")
    if not isinstance(state, PCState):
        raise DataError(f"state must be a PCState (from init_state), got {type(state).__name__}")
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
    generator: torch.Generator | None = None,
) -> Relaxation:
    """Relax the free value nodes of ``state`` for ``config.steps`` Euler steps.

    Each step moves every free node by ``-dt/tau * dE/dx_l`` (errors ``eps_l`` ``(E, B, n_l)``
    at the current state); ``state.x`` holds the relaxed nodes afterwards. With ``fixed``
    (fixed-prediction assumption, Millidge et al. 2022) the predictions and the slopes ``f'``
    stay at their feed-forward values. ``on_step(step)``, if given, is called at every step
    with an :class:`InferenceStep` (``t``, ``x``, ``eps``, ``peps``, ``fx``) before the nodes
    move; it may update the weights in place (incremental PC), and the move of that step still
    uses the errors it was shown. With ``config.compile`` the steps run as compiled chunks of
    :func:`pcsim.relaxation.advance`. With ``gradients`` the local parameter gradients at the
    relaxed state (:func:`pcsim.energy.parameter_gradients`) come back in
    ``Relaxation.gradients``. Raises :class:`InferenceDivergenceError` naming the step and
    layer when the energy becomes NaN/Inf or exceeds ``max_growth`` times its start.
    With ``config.temperature > 0`` each step adds Langevin noise drawn from ``generator`` (a
    ``torch.Generator`` on the network's device; None: one seeded with ``config.seed``), so
    the run samples the posterior (Monte Carlo PC); the step a divergence is located at is
    then approximate (the replay that locates it draws new noise).
    """
    _check_state(net, state)
    if not isinstance(config, InferenceConfig):
        raise ConfigError(f"config must be an InferenceConfig, got {config!r}")
    if config.temperature > 0 and generator is None:
        generator = torch.Generator(device=net.device).manual_seed(config.seed)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"generator must be a torch.Generator, got {type(generator).__name__}")
    hook = None
    if on_step is not None:
        def hook(t: int, c: PCCarry) -> None:
            on_step(InferenceStep(t, c.x, c.eps, c.peps, c.fx))
    E, B = state.x[-1].shape[:2]
    n_threads = threads_for(net.sizes, B, E)
    with threads(n_threads):  # the sweep that sets the system up and the gradients too (pcsim.parallel)
        system = dynamics(net, state, config, fixed=fixed, hooked=on_step is not None, generator=generator)
        out = relaxation.run(system, start(system, state.x), config.steps, max_growth=config.max_growth,
                             tol=config.tol, record=config.record, check_every=config.check_every,
                             compile=config.compile, on_step=hook, threads=n_threads,
                             check_descent=config.check_descent)
        c: PCCarry = out.carry
        grads = pc.parameter_gradients(net.spec, c.peps, c.fx, c.eps) if gradients else None
    state.x[:] = c.x
    return Relaxation(state, c.eps, c.peps, list(c.fx), out.energy, out.steps, out.trace, config.dt, grads)
