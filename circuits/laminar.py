"""A laminar rate circuit that implements hierarchical predictive coding in continuous time.

The circuit follows the canonical-microcircuit account of predictive coding (Bastos et al.
2012; Shipp 2016). Areas ``a = 0 .. A-1`` are ordered bottom-up; area 0 is the sensory stage
whose representation is the (clamped) stimulus, and area ``a >= 1`` predicts the
representation of area ``a - 1`` through weights ``W_a`` ``(n_a, n_{a-1})``::

    p_{a-1} = f_a(r_a) @ W_a + b_a               (feedback: deep layer of a -> area a-1)
    p_{A-1} = c(t) * m                             (top area: a learned prior, cue-gated)

Each area has these rate populations (``n_a`` units each; time constants in ms):

- ``l4`` (L4, input): ``tau_l4 dl4_a/dt = -l4_a + (e+_{a-1} - e-_{a-1}) @ W_a^T``, the lower
  area's errors carried up by feed-forward connections; in area 0 it relays the stimulus.
- ``l23_pos``, ``l23_neg`` (L2/3, prediction errors, rectified):
  ``tau_error de±_a/dt = -e±_a + [±Pi_a (r_a - p_a)]_+``; the precision ``Pi_a`` is their
  gain, and ``e+ - e- = Pi_a (r_a - p_a)`` is the precision-weighted error of predictive
  coding. With ``interneurons`` the subtraction is done by two inhibitory populations:
  ``inh_pos`` relays the top-down prediction and inhibits ``l23_pos``, ``inh_neg`` relays the
  local representation and inhibits ``l23_neg`` (``tau_inh dinh/dt = -inh + input``).
- ``l56`` (L5/6, representation, sends predictions down):
  ``tau_deep dr_a/dt = f_a'(r_a) * l4_a - (e+_a - e-_a) - deep_leak * r_a``. Area 0 has no
  free representation (``r_0 = l4_0``), so its ``l56`` is recorded as NaN.

The top-level prior mean ``m`` learns online by the local predictive-coding rule for a bias,
``dm/dt = prior_rate * c(t) * (e+_{A-1} - e-_{A-1})``; this slow plasticity is the circuit's
memory of the stimulus history (mismatch responses and repetition suppression come from it).
With ``deep_leak = 0`` the fixed points are exactly those of :func:`pcsim.inference.relax`
on the same network: every population at rest equals its input, and then
``tau_deep dr_a/dt = -dE/dr_a`` (the tests check this).

Every state tensor has a leading trial axis ``B``: blocks and conditions of a
:class:`~circuits.paradigms.Stimulus` run side by side, on CPU or GPU.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import numpy as np
import torch
import xarray as xr

from pcsim.activations import get_activation
from pcsim.config import check_ranges
from pcsim.errors import ConfigError, DataError, SimulationDivergenceError
from pcsim.network import PCNetwork

from .coordinates import label, seconds
from .graph import LFP_LAYERS, CircuitGraph, PackedGraph, Population, Projection
from .epochs import epoch_layout
from .paradigms import Stimulus

__all__ = ["CircuitParams", "LaminarCircuit", "POPULATIONS", "LAYER_OF", "LFP_LAYERS", "Population", "Projection", "CircuitGraph"]

Tensor = torch.Tensor

POPULATIONS = ("l4", "l23_pos", "l23_neg", "l56", "inh_pos", "inh_neg")
_DRAW_ORDER = ("inh_pos", "inh_neg", "l23_pos", "l23_neg", "l4", "l56")
LAYER_OF = {"l4": "L4", "l23_pos": "L2/3", "l23_neg": "L2/3", "l56": "L5/6", "inh_pos": "L2/3", "inh_neg": "L2/3"}


def _knob(default, units: str | None = None, **ranges):
    """A :class:`CircuitParams` field: its default, range (``ge``/``gt``/``le``/``lt``, the
    keys :mod:`pcsim.config` validates) and units, declared once for code and configs."""
    meta = dict(ranges)
    if units is not None:
        meta["units"] = units
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class CircuitParams:
    """Time constants and switches of a :class:`LaminarCircuit` (also the ``[circuit]`` table
    of the circuit experiments' configs).

    ``dt``: Euler step (ms). ``tau_l4``, ``tau_error``, ``tau_deep``, ``tau_inh``: time
    constants (ms) of the L4, L2/3 error, L5/6 representation and interneuron populations.
    ``interneurons``: realise the error subtraction through inhibitory populations.
    ``deep_leak``: leak of the representation units (dimensionless, 0 = exact predictive
    coding). ``prior_rate``: learning rate of the top-level prior mean (1/ms; 0 = fixed).
    ``noise``: standard deviation (rate units) of the stationary fluctuation that private
    white noise gives each leaky population (an Ornstein-Uhlenbeck drive; 0 = none).
    """

    dt: float = _knob(0.5, "ms", gt=0)
    tau_l4: float = _knob(5.0, "ms", gt=0)
    tau_error: float = _knob(5.0, "ms", gt=0)
    tau_deep: float = _knob(20.0, "ms", gt=0)
    tau_inh: float = _knob(5.0, "ms", gt=0)
    interneurons: bool = False
    deep_leak: float = _knob(0.0, ge=0)
    prior_rate: float = _knob(0.0, "1/ms", ge=0)
    noise: float = _knob(0.0, "rate units", ge=0)

    def __post_init__(self):
        check_ranges(self)  # the fields' metadata, for circuits built in Python
        fastest = min(self.tau_l4, self.tau_error, self.tau_inh if self.interneurons else math.inf)
        if self.dt > fastest / 2:
            raise ConfigError(
                f"dt = {self.dt} ms is too coarse for the fastest time constant ({fastest} ms): "
                f"use dt <= {fastest / 2} ms")

    def circuit_params(self) -> "CircuitParams":
        """The :class:`CircuitParams` fields alone (of a config section that derives from it)."""
        return CircuitParams(**{f.name: getattr(self, f.name) for f in fields(CircuitParams)})




def _vec(x, n: int, name: str, device, dtype) -> Tensor:
    t = torch.as_tensor(np.asarray(x, dtype=np.float64) if not isinstance(x, Tensor) else x).to(device=device, dtype=dtype)
    if t.ndim == 0:
        t = t.expand(n).clone()
    t = t.reshape(-1)
    if t.numel() == 1:
        t = t.expand(n).clone()
    if t.shape != (n,):
        raise ConfigError(f"{name} must be a scalar or have {n} entries, got shape {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ConfigError(f"{name} contains NaN or Inf")
    return t


class LaminarCircuit:
    """A multi-area laminar predictive-coding rate circuit (see the module docstring).

    ``sizes``: ``(n_0, ..., n_{A-1})`` units per area (``n_0`` = stimulus width).
    ``weights[k]``: ``(n_{k+1}, n_k)`` feedback weights by which area ``k+1`` predicts area
    ``k``; ``biases[k]``: ``(n_k,)`` (default 0). ``activations``: the non-linearity ``f`` of
    each area ``1..A-1`` when it predicts (one name or ``A-1`` names). ``precisions``: the
    gains ``Pi_a`` of the error populations, one value, or ``A`` entries each a scalar or
    ``(n_a,)``; the last is the top-level prior precision. ``prior_mean``: ``(n_{A-1},)``
    initial top-level prior (default 0). ``area_names``: labels (default 'input', 'area1'...).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        weights: Sequence,
        biases: Sequence | None = None,
        *,
        activations: str | Sequence[str] = "linear",
        precisions: float | Sequence = 1.0,
        prior_mean=None,
        area_names: Sequence[str] | None = None,
        params: CircuitParams = CircuitParams(),
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ):
        sizes = tuple(int(n) for n in sizes)
        if len(sizes) < 1 or any(n < 1 for n in sizes):
            raise ConfigError(f"sizes must list at least one positive width, got {sizes}")
        A = len(sizes)
        if len(weights) != A - 1:
            raise ConfigError(f"weights: {A} areas need {A - 1} weight matrices (area k+1 predicts area k), got {len(weights)}")
        self.sizes, self.params, self.device, self.dtype = sizes, params, torch.device(device), dtype
        self.weights = []
        for k, w in enumerate(weights):
            w = torch.as_tensor(w).to(device=device, dtype=dtype)
            if w.shape != (sizes[k + 1], sizes[k]):
                raise ConfigError(f"weights[{k}] must be (n_{k+1}, n_{k}) = {(sizes[k + 1], sizes[k])}, got {tuple(w.shape)}")
            if not torch.isfinite(w).all():
                raise ConfigError(f"weights[{k}] contains NaN or Inf")
            self.weights.append(w)
        biases = [0.0] * (A - 1) if biases is None else list(biases)
        if len(biases) != A - 1:
            raise ConfigError(f"biases: {A} areas need {A - 1} bias vectors, got {len(biases)}")
        self.biases = [_vec(b, sizes[k], f"biases[{k}]", device, dtype) for k, b in enumerate(biases)]
        acts = [activations] * (A - 1) if isinstance(activations, str) else list(activations)
        if len(acts) != A - 1:
            raise ConfigError(f"activations: need {A - 1} (areas 1..{A - 1}), got {len(acts)}")
        self.activations = ["linear"] + [get_activation(a).name for a in acts]
        precs = [precisions] * A if isinstance(precisions, (int, float)) else list(precisions)
        if len(precs) != A:
            raise ConfigError(f"precisions must be one value or {A} entries (one per area), got {len(precs)}")
        self.precisions = [_vec(p, sizes[a], f"precisions[{a}]", device, dtype) for a, p in enumerate(precs)]
        if any(bool((p <= 0).any()) for p in self.precisions):
            raise ConfigError("precisions must be > 0, got a minimum of "
                              f"{min(float(p.min()) for p in self.precisions)}")
        self.prior_mean = _vec(0.0 if prior_mean is None else prior_mean, sizes[-1], "prior_mean", device, dtype)
        names = ["input"] + [f"area{a}" for a in range(1, A)] if area_names is None else [str(n) for n in area_names]
        if len(names) != A or len(set(names)) != A:
            raise ConfigError(f"area_names must be {A} distinct names, got {names}")
        self.area_names = names

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_network(cls, net: PCNetwork, *, member: int = 0, area_names: Sequence[str] | None = None,
                     params: CircuitParams = CircuitParams(), device: str | torch.device | None = None) -> "LaminarCircuit":
        """The circuit of a (trained) generative :class:`~pcsim.network.PCNetwork` member.

        PC layer ``x_L`` (the data) becomes area 0 and the top cause ``x_0`` area ``L``:
        area ``a`` is layer ``L - a``, with the network's weights, biases, activations,
        precisions, prior mean and prior precision. Discriminative networks predict the
        label from the input, the opposite of cortical feedback, and are refused.
        """
        if net.mode != "generative":
            raise ConfigError("net: a circuit needs a generative PCNetwork (data clamped at x_L, predictions flowing down); "
                             f"got a {net.mode} network")
        m = net.member(member)
        L = m.depth
        sizes = tuple(reversed(m.sizes))
        weights = [m.weights[L - a][0] for a in range(1, L + 1)]
        biases = [m.biases[L - a][0, 0] for a in range(1, L + 1)]
        acts = [m.activations[L - a] for a in range(1, L + 1)]
        precs = [m.precision()[L - a - 1][0, 0] for a in range(L)] + [m.prior_log_precision.exp()[0, 0]]
        return cls(sizes, weights, biases, activations=acts, precisions=precs, prior_mean=m.prior_mean[0, 0],
                   area_names=area_names, params=params, device=device or m.device, dtype=m.dtype)

    def with_params(self, **changes) -> "LaminarCircuit":
        """A copy sharing the weights, with :class:`CircuitParams` fields replaced."""
        new = object.__new__(LaminarCircuit)
        new.__dict__.update(self.__dict__)
        new.params = replace(self.params, **changes)
        return new

    def to(self, device: str | torch.device) -> "LaminarCircuit":
        """The same circuit with every tensor on ``device``."""
        new = object.__new__(LaminarCircuit)
        new.__dict__.update(self.__dict__)
        new.device = torch.device(device)
        for name in ("weights", "biases", "precisions"):
            setattr(new, name, [t.to(device) for t in getattr(self, name)])
        new.prior_mean = self.prior_mean.to(device)
        return new

    # ----------------------------------------------------------------- structure
    @property
    def n_areas(self) -> int:
        """Number of areas ``A`` (the sensory stage included)."""
        return len(self.sizes)

    @property
    def populations(self) -> tuple[str, ...]:
        """Population names per area (the interneurons only when enabled)."""
        return POPULATIONS if self.params.interneurons else POPULATIONS[:4]

    def graph(self) -> CircuitGraph:
        """The circuit as :class:`Population` s and signed :class:`Projection` s: the one
        statement of its dynamics. :meth:`run` integrates it (through :meth:`packed`) and
        the Brian2 translation (:mod:`circuits.spiking`) turns it into synapses."""
        p, A = self.params, self.n_areas
        pops, projs, bias = [], [], {}
        I = lambda n: torch.eye(n, device=self.device, dtype=self.dtype)  # noqa: E731
        for a, area in enumerate(self.area_names):
            n = self.sizes[a]
            nm = lambda pop: f"{area}.{pop}"  # noqa: E731
            pops.append(Population(nm("l4"), area, "l4", "L4", n, p.tau_l4, "input" if a == 0 else "relay"))
            pops.append(Population(nm("l23_pos"), area, "l23_pos", "L2/3", n, p.tau_error, "rectified"))
            pops.append(Population(nm("l23_neg"), area, "l23_neg", "L2/3", n, p.tau_error, "rectified"))
            if a > 0:
                pops.append(Population(nm("l56"), area, "l56", "L5/6", n, p.tau_deep, "integrator", p.deep_leak,
                                       self.activations[a]))
            if p.interneurons:
                pops.append(Population(nm("inh_pos"), area, "inh_pos", "L2/3", n, p.tau_inh, "relay", pyramidal=False))
                pops.append(Population(nm("inh_neg"), area, "inh_neg", "L2/3", n, p.tau_inh, "relay", pyramidal=False))
            rep = nm("l56") if a > 0 else nm("l4")
            Pi = torch.diag(self.precisions[a])
            # the representation excites e+ and (through inh_neg, or directly) inhibits e-
            projs.append(Projection(rep, nm("l23_pos"), Pi))
            if p.interneurons:
                projs.append(Projection(rep, nm("inh_neg"), I(n)))
                projs.append(Projection(nm("inh_neg"), nm("l23_neg"), -Pi))
            else:
                projs.append(Projection(rep, nm("l23_neg"), -Pi))
            if a > 0:
                below = self.area_names[a - 1]
                W = self.weights[a - 1]
                # feed-forward: errors of the area below into L4, then L4 into the deep layer
                projs.append(Projection(f"{below}.l23_pos", nm("l4"), W.T.contiguous()))
                projs.append(Projection(f"{below}.l23_neg", nm("l4"), -W.T.contiguous()))
                projs.append(Projection(nm("l4"), nm("l56"), I(n), gated=True))
                projs.append(Projection(nm("l23_pos"), nm("l56"), -I(n)))
                projs.append(Projection(nm("l23_neg"), nm("l56"), I(n)))
                # feedback: the deep layer's prediction of the area below
                Pb = torch.diag(self.precisions[a - 1])
                if p.interneurons:
                    projs.append(Projection(nm("l56"), f"{below}.inh_pos", W, transfer=self.activations[a]))
                    projs.append(Projection(nm("l56"), f"{below}.l23_neg", W @ Pb, transfer=self.activations[a]))
                    bias[f"{below}.inh_pos"] = self.biases[a - 1]
                    bias[f"{below}.l23_neg"] = self.biases[a - 1] * self.precisions[a - 1]
                else:
                    projs.append(Projection(nm("l56"), f"{below}.l23_pos", -W @ Pb, transfer=self.activations[a]))
                    projs.append(Projection(nm("l56"), f"{below}.l23_neg", W @ Pb, transfer=self.activations[a]))
                    bias[f"{below}.l23_pos"] = -self.biases[a - 1] * self.precisions[a - 1]
                    bias[f"{below}.l23_neg"] = self.biases[a - 1] * self.precisions[a - 1]
            if p.interneurons:
                projs.append(Projection(nm("inh_pos"), nm("l23_pos"), -Pi))
        top, Pt = self.area_names[-1], self.precisions[-1].clone()
        prior_inputs = ({f"{top}.inh_pos": torch.ones_like(Pt), f"{top}.l23_neg": Pt} if p.interneurons
                        else {f"{top}.l23_pos": -Pt, f"{top}.l23_neg": Pt})
        return CircuitGraph(pops, projs, bias, self.prior_mean.clone(), prior_inputs,
                            (f"{top}.l23_pos", f"{top}.l23_neg"), p.prior_rate, p)

    # ----------------------------------------------------------------- simulation
    def run(
        self,
        stimulus: Stimulus,
        *,
        record_every_ms: float | None = 1.0,
        epochs: tuple[float, float] | None = None,
        keep: np.ndarray | None = None,
        seed: int = 0,
        progress: bool = False,
        record_stimulus: bool = True,
        compile: bool = False,
        populations: Sequence[str] | None = None,
    ) -> xr.Dataset:
        """Simulate every block of ``stimulus`` side by side and return labelled rates.

        Without ``epochs`` the Dataset's ``trial`` axis is the blocks and ``time`` runs over
        the whole block (s from the block start, one sample every ``record_every_ms`` ms). With ``epochs =
        (pre_ms, post_ms)`` each slot is cut into a peri-stimulus epoch (``time`` relative to
        its onset, ``-pre <= t < post``, windows may not overlap) and ``trial`` runs over the
        (block, slot) pairs selected by ``keep`` ``(B, S)`` (default: all), with the slot
        labels and block conditions as trial coordinates. Variables: ``rate`` (trial, time,
        area, population, unit; NaN where an area has fewer units or lacks the population),
        ``lfp`` (trial, time, area, lfp_layer): the summed absolute synaptic input to the
        excitatory populations of each layer, ``prior`` (trial, time, top_unit), ``cue`` and
        ``stimulus`` (trial, time, input_unit). ``record_every_ms=None`` records nothing and
        returns only the final state (benchmarks). White noise (``params.noise`` and the
        stimulus' ``noise_std``) is drawn from a generator seeded with ``seed``. ``compile``:
        run the steps that record nothing through ``torch.compile`` (fused kernels; seconds
        of compilation first; worth it for long or many-trial runs without population noise).
        ``populations``: record only these populations in ``rate`` (default: all), e.g.
        ``("l23_pos", "l23_neg")`` to keep the error populations of a wide circuit small.
        """
        if not isinstance(stimulus, Stimulus):
            raise ConfigError(f"stimulus: run needs a circuits.paradigms.Stimulus, got {type(stimulus).__name__}")
        if stimulus.n_in != self.sizes[0]:
            raise DataError(f"stimulus has {stimulus.n_in} input channels but area '{self.area_names[0]}' has {self.sizes[0]} units")
        p = self.params
        dt = p.dt
        n_steps = int(round(stimulus.total_ms / dt))
        t_ms = np.arange(n_steps) * dt
        B, S = stimulus.blocks, stimulus.slots
        dev, dt_ = self.device, self.dtype
        if populations is not None:
            unknown = [q for q in populations if q not in self.populations]
            if unknown or not populations:
                raise ConfigError(f"populations must be a non-empty subset of {list(self.populations)}, got {list(populations)}")
        rec = _Recorder.make(self, stimulus, t_ms, record_every_ms, epochs, keep, record_stimulus,
                             tuple(populations) if populations is not None else self.populations)

        active = stimulus.slot_index(t_ms)
        cue = (active >= 0) if stimulus.cue else np.ones(n_steps, bool)
        U = max(self.sizes)
        pats = np.zeros((stimulus.patterns.shape[0] + 1, U))
        pats[:-1, : stimulus.n_in] = stimulus.patterns
        padded = torch.as_tensor(pats, device=dev, dtype=dt_)
        sched = torch.as_tensor(np.where(stimulus.schedule >= 0, stimulus.schedule, stimulus.patterns.shape[0]), device=dev)
        drives = [padded[sched[:, j]] for j in range(S)]
        zero_drive = torch.zeros(B, U, device=dev, dtype=dt_)
        in_mask = torch.zeros(U, device=dev, dtype=dt_)
        in_mask[: stimulus.n_in] = 1.0
        gen = torch.Generator(device=dev).manual_seed(int(seed))

        K = self.packed()
        init = self.initial_state(B)
        state = K.pack(init, init["m"])
        fast = K.step
        if compile:
            if p.noise > 0 or stimulus.noise_std > 0:
                raise ConfigError("compile=True needs params.noise = 0 and no stimulus noise "
                                 "(seeded generators do not enter compiled graphs)")
            fast = torch.compile(K.step, dynamic=False)
        from tqdm.auto import tqdm

        noise_gen = gen if p.noise > 0 else None
        for i in tqdm(range(n_steps), desc="circuit", disable=not progress, leave=False, mininterval=0.5):
            drive = drives[active[i]] if active[i] >= 0 else zero_drive
            if stimulus.noise_std > 0:
                drive = drive + stimulus.noise_std * in_mask * torch.randn(drive.shape, generator=gen, device=dev, dtype=dt_)
            c = 1.0 if cue[i] else 0.0
            before = state
            if rec.wants(i):
                state, aux = K.step(state, drive, c, noise_gen, want_aux=True)
                rec.record(i, K.unpack(before), aux, drive[:, : stimulus.n_in], c)  # the sample at t_i and its inputs
            else:
                state, _ = fast(state, drive, c, noise_gen)
            if (i % 1000 == 999 or i == n_steps - 1) and not bool(torch.isfinite(state["x"]).all()):
                raise self._divergence(K, state, t_ms[i])
        return rec.dataset(K.unpack(state))

    def _divergence(self, K: PackedGraph, state: dict, t_ms: float) -> SimulationDivergenceError:
        """The error for a state that is no longer finite at ``t_ms``: the area and population
        that ran away (representations first: errors follow them) and the parameter most
        likely at fault. The circuit is a linear loop of errors and representations whose gain
        is the precisions (times the feedback weights); with a learning prior the top area's
        expectation adds the loop ``prior_rate``; a coarse ``dt`` makes a stable loop unstable."""
        bad = [(a, q) for q in ("l56",) + self.populations for a in range(self.n_areas)
               if q in K.types and not torch.isfinite(state["x"][K.types.index(q), a]).all()][0]
        a, p = bad[0], self.params
        if a == self.n_areas - 1 and p.prior_rate > 0:
            likely = f"prior_rate ({p.prior_rate} /ms) or the top-level precision (precisions[{a}] up to " \
                     f"{float(self.precisions[a].max()):g})"
        else:
            likely = f"precisions[{a}] (up to {float(self.precisions[a].max()):g}) or the feedback weights into area " \
                     f"'{self.area_names[a]}'"
        return SimulationDivergenceError(
            f"circuit diverged by t = {t_ms:.1f} ms: area '{self.area_names[a]}' {bad[1]} rates are not finite "
            f"(lower the precisions or prior_rate, or use a smaller dt; likely parameter: {likely}; dt = {p.dt} ms)")

    def initial_state(self, batch: int) -> dict[str, list[Tensor]]:
        """The state at rest before any input: the top representation at the prior mean,
        lower representations at the predictions sent down from it, errors at their
        steady state for zero input (area 0's error is the prediction it receives)."""
        A, dev, dt_ = self.n_areas, self.device, self.dtype
        z = lambda a: torch.zeros(batch, self.sizes[a], device=dev, dtype=dt_)  # noqa: E731
        r = [z(0)] + [None] * (A - 1)
        m = self.prior_mean.expand(batch, -1).clone()
        if A > 1:
            r[A - 1] = m.clone()
            for a in range(A - 1, 1, -1):
                r[a - 1] = self._predict(a, r[a])
        st = {"l4": [z(a) for a in range(A)], "l56": r, "m": m}
        preds = [self._predict(a + 1, r[a + 1]) if a < A - 1 else m for a in range(A)]
        reps = [r[a] if a > 0 else st["l4"][0] for a in range(A)]
        st["l23_pos"] = [torch.relu(self.precisions[a] * (reps[a] - preds[a])) for a in range(A)]
        st["l23_neg"] = [torch.relu(self.precisions[a] * (preds[a] - reps[a])) for a in range(A)]
        if self.params.interneurons:
            st["inh_pos"] = [x.clone() for x in preds]
            st["inh_neg"] = [x.clone() for x in reps]
        return st

    def _predict(self, a: int, r_a: Tensor) -> Tensor:
        """Prediction ``f_a(r_a) @ W_a + b_a`` ``(B, n_{a-1})`` that area ``a`` sends to area ``a-1``."""
        return get_activation(self.activations[a]).f(r_a) @ self.weights[a - 1] + self.biases[a - 1]

    # ----------------------------------------------------------------- packed fast path
    def packed(self) -> PackedGraph:
        """The fast integrator of this circuit: :meth:`graph` packed by
        :meth:`PackedGraph.from_graph` (cached while weights, precisions and params stay)."""
        key = (tuple(id(w) for w in self.weights), tuple(id(b) for b in self.biases),
               tuple(id(q) for q in self.precisions), id(self.prior_mean), self.params, self.device, self.dtype)
        if getattr(self, "_packed_key", None) != key:
            # noise is drawn in this order so that seeded runs repeat those of earlier versions
            self._packed = PackedGraph.from_graph(self.graph(), self.area_names, self.sizes, device=self.device,
                                                  dtype=self.dtype, draw_order=_DRAW_ORDER)
            self._packed_key = key
        return self._packed


class _Recorder:
    """Collects rates, LFP, prior, cue and stimulus at record steps, continuously or in epochs."""

    @classmethod
    def make(cls, circ: LaminarCircuit, stim: Stimulus, t_ms, every, epochs, keep, record_stimulus, pops):
        self = cls()
        self.circ, self.stim, self.pops = circ, stim, pops
        dt = circ.params.dt
        B, S = stim.blocks, stim.slots
        self.enabled = every is not None
        if not self.enabled:
            if epochs is not None or keep is not None:
                raise ConfigError("epochs and keep need recording: give record_every_ms")
            return self
        k = int(round(every / dt))
        if k < 1 or not math.isclose(k * dt, every, rel_tol=1e-6):
            raise ConfigError(f"record_every_ms ({every}) must be a positive multiple of dt ({dt} ms)")
        self.k = k
        n = len(t_ms)
        self.epoched = epochs is not None
        A, P = circ.n_areas, len(pops)
        self.U = max(circ.sizes)
        if not self.epoched:
            if keep is not None:
                raise ConfigError("keep selects epochs: give epochs=(pre_ms, post_ms) too")
            self.steps = np.arange(0, n, k)
            self.slot_of = None
            self.trial_shape = (B, len(self.steps))
            self.time = t_ms[self.steps]
        else:
            pre, post = (float(e) for e in epochs)
            gaps = np.diff(stim.onsets_ms)
            if S > 1 and pre + post > gaps.min() + 1e-9:
                # each step is recorded into one epoch
                raise ConfigError(f"epochs of {pre}+{post} ms overlap: slots are only {gaps.min()} ms apart")
            self.layout = lay = epoch_layout(stim, pre, post, grid_ms=dt, stride=k, keep=keep, n_samples=n)
            rel = lay.offsets
            self.time = lay.time
            steps = (np.round(stim.onsets_ms / dt).astype(np.int64)[:, None] + rel[None, :]).ravel()
            self.steps = steps
            self.slot_of = np.repeat(np.arange(S), len(rel))
            self.off_of = np.tile(np.arange(len(rel)), S)
            self.keep = keep = lay.keep
            self.rank = np.cumsum(keep.ravel()).reshape(B, S) - 1
            self.n_trials = int(keep.sum())
            self.sel = [torch.as_tensor(np.flatnonzero(keep[:, j]), device=circ.device) for j in range(S)]
            self.dst = [torch.as_tensor(self.rank[keep[:, j], j], device=circ.device) for j in range(S)]
            self.trial_shape = (self.n_trials, len(rel))
        self.index = {int(s): i for i, s in enumerate(self.steps)}
        T, Ttr = self.trial_shape
        nan = float("nan")
        self.nan_mask = torch.zeros(A, P, self.U)
        for a in range(A):
            self.nan_mask[a, :, circ.sizes[a]:] = nan  # padding of narrower areas
        if "l56" in pops:
            self.nan_mask[0, pops.index("l56"), :] = nan  # area 0 has no free representation
        self.rate = torch.full((T, Ttr, A, P, self.U), nan)
        self.lfp = torch.full((T, Ttr, A, len(LFP_LAYERS)), nan)
        self.prior = torch.full((T, Ttr, circ.sizes[-1]), nan)
        self.cue = torch.full((T, Ttr), nan)
        self.stimulus = torch.full((T, Ttr, stim.n_in), nan) if record_stimulus else None
        return self

    def wants(self, i: int) -> bool:
        return self.enabled and i in self.index

    def record(self, i, st, aux, drive, c):
        circ = self.circ
        pops = self.pops
        frame = torch.stack([st[pop] if pop in st else torch.zeros_like(st["m"]).expand(circ.n_areas, -1, -1)
                             for pop in pops], dim=2).detach().to("cpu", self.rate.dtype)  # (A, B, P, U)
        frame = frame.permute(1, 0, 2, 3) + self.nan_mask
        lfp = aux.detach().to("cpu", self.lfp.dtype).permute(1, 0, 2)
        prior = (c * st["m"][:, : circ.sizes[-1]]).detach().cpu()
        stim = drive.detach().cpu() if self.stimulus is not None else None
        pos = self.index[i]
        if not self.epoched:
            self.rate[:, pos], self.lfp[:, pos], self.prior[:, pos] = frame, lfp, prior
            self.cue[:, pos] = c
            if stim is not None:
                self.stimulus[:, pos] = stim
        else:
            j, off = self.slot_of[pos], self.off_of[pos]
            sel, dst = self.sel[j].cpu(), self.dst[j].cpu()
            if sel.numel() == 0:
                return
            self.rate[dst, off], self.lfp[dst, off], self.prior[dst, off] = frame[sel], lfp[sel], prior[sel]
            self.cue[dst, off] = c
            if stim is not None:
                self.stimulus[dst, off] = stim[sel]

    def dataset(self, st) -> xr.Dataset:
        circ, stim = self.circ, self.stim
        p = circ.params
        attrs = {
            "dt_ms": p.dt, "tau_l4_ms": p.tau_l4, "tau_error_ms": p.tau_error, "tau_deep_ms": p.tau_deep,
            "tau_inh_ms": p.tau_inh, "interneurons": int(p.interneurons), "deep_leak": p.deep_leak,
            "prior_rate_per_ms": p.prior_rate, "noise": p.noise, "sizes": list(circ.sizes),
            "activations": list(circ.activations), "stimulus_duration_ms": stim.duration_ms,
            "stimulus_noise_std": stim.noise_std,
        }
        if not self.enabled:
            final = {k: v.detach().cpu().numpy() for k, v in st.items()}
            ds = xr.Dataset({"final_prior": (("trial", "top_unit"), final["m"][:, : circ.sizes[-1]])}, attrs=attrs)
            for a, area in enumerate(circ.area_names):
                for pop in circ.populations:
                    if (pop == "l56" and a == 0) or pop not in final:
                        continue
                    ds[f"final_{area}_{pop}"] = (("trial", f"unit_{area}"), final[pop][a][:, : circ.sizes[a]])
            return ds
        pops = list(self.pops)
        coords = {
            "time": ("time", seconds(self.time), {"units": "s", "long_name": "time from block start" if not self.epoched
                                          else "time from stimulus onset"}),
            "area": ("area", circ.area_names),
            "population": ("population", pops),
            "layer": ("population", [LAYER_OF[q] for q in pops]),
            "unit": ("unit", np.arange(self.U)),
            "lfp_layer": ("lfp_layer", list(LFP_LAYERS)),
            "n_units": ("area", list(circ.sizes)),
        }
        if not self.epoched:
            coords["block"] = ("trial", np.arange(stim.blocks))
            for name, v in stim.conditions.items():
                coords[name] = ("trial", np.asarray(v))
        else:
            coords.update(self.layout.coords(stim))
        data = {
            "rate": (("trial", "time", "area", "population", "unit"), self.rate.numpy(),
                     {"units": "rate units", "long_name": "population activity"}),
            "lfp": (("trial", "time", "area", "lfp_layer"), self.lfp.numpy(),
                    {"units": "rate units", "long_name": "LFP proxy: summed |synaptic input| to excitatory populations"}),
            "prior": (("trial", "time", "top_unit"), self.prior.numpy(),
                      {"units": "rate units", "long_name": "top-level prior (cue-gated)"}),
            "cue": (("trial", "time"), self.cue.numpy(), {"units": "1", "long_name": "temporal expectation cue"}),
        }
        if self.stimulus is not None:
            data["stimulus"] = (("trial", "time", "input_unit"), self.stimulus.numpy(),
                                {"units": "rate units", "long_name": "input drive (with noise)"})
        ds = label(xr.Dataset(data, coords=coords, attrs=attrs))
        ds.attrs["final_prior"] = st["m"][:, : circ.sizes[-1]].detach().cpu().numpy().mean(0).tolist()
        return ds
