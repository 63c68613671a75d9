"""A rate circuit stated once, as populations and projections, and the packed integrator derived from it.

:class:`CircuitGraph` is the single statement of a circuit's dynamics: rate populations
(:class:`Population`, each with its update law) connected by signed projections
(:class:`Projection`), constant inputs, and a learned top-level prior. Everything that
simulates a circuit reads it: the Brian2 translation (:mod:`circuits.spiking`) turns its
projections into synapses, and :class:`PackedGraph` turns it into a fast rate integrator.

**Packing.** A laminar circuit repeats the same population types in every area. The packed
form stacks each population type over areas into one ``(A, B, U)`` tensor (areas padded to
the widest ``U``, absent areas kept at zero and never updated) and groups the projections by
(source type, target type, area shift, transfer, gating): each group becomes one batched
operation over the areas it connects, a product with a gain vector when every weight of
the group is diagonal (the within-area wiring) and a batched matrix product otherwise (the
feed-forward and feedback weights). One Euler step is then a fixed, short list of tensor
operations whatever the number of areas, which is what keeps a batched run fast on CPU and
GPU and lets ``torch.compile`` fuse it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pcsim.activations import get_activation
from pcsim.errors import ConfigError

__all__ = ["Population", "Projection", "CircuitGraph", "PackedGraph", "LAWS", "LFP_LAYERS"]

Tensor = torch.Tensor

#: update law of each population kind: what the summed input ``u`` drives
LAWS = {"input": "linear", "relay": "linear", "rectified": "rectified", "integrator": "integrator"}
#: cortical layers of the LFP proxy, in the order of its ``lfp_layer`` axis
LFP_LAYERS = ("L2/3", "L4", "L5/6")


@dataclass(frozen=True)
class Population:
    """One rate population of a circuit graph: ``name`` ('area.population'), ``size`` units,
    time constant ``tau_ms`` (ms), and its dynamics ``kind``:

    - 'relay': ``tau dx/dt = -x + u`` (linear, signed);
    - 'rectified': ``tau dx/dt = -x + [u]_+``;
    - 'integrator': ``tau dx/dt = -leak * x + gain(x) * u_ff + u_rest``, where ``u_ff`` is the
      input from projections marked ``gated`` (multiplied by ``f'(x)`` of ``activation``);
    - 'input': ``tau dx/dt = -x + stimulus + u`` (the sensory stage's L4).

    ``pyramidal``: an excitatory population whose synaptic input enters the LFP proxy.
    """

    name: str
    area: str
    population: str
    layer: str
    size: int
    tau_ms: float
    kind: str
    leak: float = 0.0
    activation: str = "linear"
    pyramidal: bool = True


@dataclass(frozen=True)
class Projection:
    """A signed connection ``u_dst += g(x_src) @ weight`` with ``weight`` ``(n_src, n_dst)``.
    ``transfer`` is the activation applied to the source rates (the deep layer's ``f``) and
    ``gated`` marks feed-forward input to an integrator, multiplied by ``f'(x_dst)``."""

    source: str
    target: str
    weight: Tensor
    transfer: str = "linear"
    gated: bool = False


@dataclass(frozen=True)
class CircuitGraph:
    """The circuit as populations and projections.

    ``bias`` maps a population to a constant input ``(n,)``. The top-level prior enters as
    ``u_pop += prior_inputs[pop] * c(t) * m`` (gain vectors ``(n_top,)``), and the prior mean
    ``m`` (initially ``prior_mean``) learns as ``dm/dt = prior_rate * c(t) * (x_pos - x_neg)``
    from the rates of the two top error populations named in ``prior_errors`` (1/ms).
    ``params`` is the :class:`~circuits.laminar.CircuitParams` the graph was built with
    (``dt``, ``noise``)."""

    populations: list[Population]
    projections: list[Projection]
    bias: dict[str, Tensor]
    prior_mean: Tensor
    prior_inputs: dict[str, Tensor]
    prior_errors: tuple[str, str]
    prior_rate: float
    params: Any


@dataclass
class _Term:
    """The projections from one population type to another at one area shift, as one
    in-place batched operation on views of the packed state: ``u[target, lo:hi+1] +=
    f(x[source, lo-shift:hi-shift+1]) * gains`` (``(n, 1, U)``, when every weight is diagonal)
    or ``@ weight`` (``(n, U, U)``); for ``gated`` input also times ``f'`` (``gain``) of the target."""

    source: int
    target: int
    lo: int
    hi: int
    shift: int
    weight: Tensor
    diagonal: bool
    transfer: str
    gain: str | None  # the target's activation for gated input, else None
    lfp: list[int]  # LFP entry (area * 3 + layer) of each target area, -1 where not pyramidal


@dataclass
class PackedGraph:
    """The packed integrator of a :class:`CircuitGraph` whose populations are named
    ``'area.type'`` and repeat types over ``areas`` (see the module docstring).

    The packed state is ``{'x': (T, A, B, U), 'm': (B, U)}``: every population type ``t`` of
    ``types`` stacked over areas (zero-padded to the widest area ``U``; slots of areas that
    lack a type stay at their initial value) and the prior mean. Build it with
    :meth:`from_graph`; :meth:`step` advances the state by one Euler step of ``dt`` ms.
    Population noise is drawn type by type in ``draw_order``, so seeded runs repeat."""

    areas: list[str]
    sizes: tuple[int, ...]
    U: int
    dt: float
    types: list[str]
    draw_order: list[str]
    span: dict[str, tuple[int, int]]  # type -> (first, last) area holding it
    k: Tensor  # (T, A, 1, 1) dt / tau, 0 where a type is absent
    retain: Tensor  # (T, A, 1, 1) 1 - k * decay (decay: 1 for leaky populations, the leak for integrators)
    rectified: list[tuple[int, int]]  # runs [t0, t1) of rectified population types
    terms: list[_Term]
    constant: Tensor | None  # (T, A, 1, U) biases (None: all zero)
    constant_lfp: Tensor  # (A * 3,) summed |bias| per LFP entry
    prior_input: Tensor  # (T, 1, U) gain of c * m into the top area
    prior_gains: list[tuple[int, Tensor]]  # (type index, gain (1, U)) of every type the prior enters
    prior_lfp: list[tuple[int, int]]  # (type index, lfp entry) of the prior inputs
    prior_errors: tuple[int, int] | None  # type indices of the two top error populations
    prior_rate: float
    top: int
    input: tuple[int, int] | None  # (type index, area) of the stimulus-driven population
    input_lfp: int
    unit_mask: Tensor  # (A, 1, U) 1 on real units, 0 on padding
    lfp_missing: Tensor  # (A, 1, 3) NaN where an area has no pyramidal population in a layer
    noise: float

    @classmethod
    def from_graph(cls, graph: CircuitGraph, areas: list[str], sizes: tuple[int, ...], *,
                   draw_order: tuple[str, ...] = (), device=None, dtype=torch.float32) -> "PackedGraph":
        """Pack ``graph`` for the areas ``areas`` (bottom-up) of widths ``sizes``.

        ``draw_order``: population types whose noise is drawn first, in this order (the rest
        follow in graph order). Raises ConfigError when the graph does not repeat population
        types over areas in the way packing needs (one law per type, contiguous areas)."""
        A, U = len(areas), max(sizes)
        p = graph.params
        pops = {q.name: q for q in graph.populations}
        area_of = {a: i for i, a in enumerate(areas)}
        types = list(dict.fromkeys(q.population for q in graph.populations))
        T = len(types)
        ti = {t: i for i, t in enumerate(types)}
        z = dict(device=device, dtype=dtype)
        k = torch.zeros(T, A, 1, 1, **z)
        decay = torch.ones(T, A, 1, 1, **z)
        laws: dict[str, set] = {t: set() for t in types}
        acts: dict[str, dict[int, str]] = {t: {} for t in types}
        lfp_of: dict[str, int] = {}
        missing = torch.full((A, 1, len(LFP_LAYERS)), float("nan"), **z)
        inp = None
        for q in graph.populations:
            if q.area not in area_of or q.name != f"{q.area}.{q.population}":
                raise ConfigError(f"population '{q.name}' must be named 'area.type' with an area of {areas}")
            a, t = area_of[q.area], ti[q.population]
            if q.size != sizes[a]:
                raise ConfigError(f"population '{q.name}' has {q.size} units, its area {sizes[a]}")
            if q.kind not in LAWS:
                raise ConfigError(f"population '{q.name}' has unknown kind {q.kind!r}; choose one of {sorted(LAWS)}")
            law = LAWS[q.kind]
            laws[q.population].add(law)
            k[t, a] = p.dt / q.tau_ms
            if law == "integrator":
                decay[t, a] = q.leak
                acts[q.population][a] = q.activation
            if q.kind == "input":
                if inp is not None:
                    raise ConfigError("a packed graph takes one input population")
                inp = (t, a)
            if q.pyramidal and q.layer in LFP_LAYERS:
                lfp_of[q.name] = a * len(LFP_LAYERS) + LFP_LAYERS.index(q.layer)
                missing[a, 0, LFP_LAYERS.index(q.layer)] = 0.0
        span = {}
        for t in types:
            idx = sorted(area_of[q.area] for q in graph.populations if q.population == t)
            if idx != list(range(idx[0], idx[-1] + 1)):
                raise ConfigError(f"population type '{t}' must occupy contiguous areas, got {[areas[i] for i in idx]}")
            if len(laws[t]) != 1:
                raise ConfigError(f"population type '{t}' mixes update laws {sorted(laws[t])} across areas")
            span[t] = (idx[0], idx[-1])
        for t in types:
            if len({acts[t][a] for a in acts[t]}) > 1:
                raise ConfigError(f"integrator type '{t}' must have one activation in every area, got {acts[t]}")
        act_of = {ti[t]: next(iter(acts[t].values()), "linear") for t in types}
        groups: dict[tuple, dict[int, Projection]] = {}
        for pr in graph.projections:
            for end in (pr.source, pr.target):
                if end not in pops:
                    raise ConfigError(f"projection {pr.source} -> {pr.target} names unknown population '{end}'")
            s_, d_ = pops[pr.source], pops[pr.target]
            if pr.gated and LAWS[d_.kind] != "integrator":
                raise ConfigError(f"projection {pr.source} -> {pr.target} is gated but its target is not an integrator")
            da = area_of[d_.area]
            key = (ti[s_.population], ti[d_.population], da - area_of[s_.area], pr.transfer, pr.gated)
            if da in groups.setdefault(key, {}):
                raise ConfigError(f"two projections {pr.source} -> {pr.target} of one kind: sum their weights")
            groups[key][da] = pr
        terms = []
        for (st_, dt_, shift, transfer, gated), prs in groups.items():
            lo, hi = min(prs), max(prs)
            diagonal = all(_is_diagonal(pr.weight) for pr in prs.values())
            W = torch.zeros(hi - lo + 1, 1 if diagonal else U, U, **z)
            for a, pr in prs.items():
                w = pr.weight.to(**z)
                if diagonal:
                    W[a - lo, 0, : w.shape[0]] = torch.diagonal(w)
                else:
                    W[a - lo, : w.shape[0], : w.shape[1]] = w
            gain = act_of[dt_] if gated else None
            lfp = [lfp_of.get(f"{areas[a]}.{types[dt_]}", -1) for a in range(lo, hi + 1)]
            terms.append(_Term(st_, dt_, lo, hi, shift, W, diagonal, transfer, gain, lfp))
        constant = torch.zeros(T, A, 1, U, **z)
        constant_lfp = torch.zeros(A * len(LFP_LAYERS), **z)
        for name, b in graph.bias.items():
            q = pops[name]
            constant[ti[q.population], area_of[q.area], 0, : b.shape[0]] = b.to(**z)
            if name in lfp_of:
                constant_lfp[lfp_of[name]] += b.to(**z).abs().sum()
        top_areas = {area_of[pops[n].area] for n in list(graph.prior_inputs) + list(graph.prior_errors)}
        if len(top_areas) > 1:
            raise ConfigError("the prior must enter and learn from populations of one (the top) area")
        top = top_areas.pop() if top_areas else A - 1
        constant = constant if bool((constant != 0).any()) else None
        prior_input = torch.zeros(T, 1, U, **z)
        for name, g in graph.prior_inputs.items():
            prior_input[ti[pops[name].population], 0, : g.shape[0]] = g.to(**z)
        prior_lfp = [(ti[pops[n].population], lfp_of[n]) for n in graph.prior_inputs if n in lfp_of]
        prior_gains = [(t, prior_input[t]) for t in sorted({ti[pops[n].population] for n in graph.prior_inputs})]
        unit_mask = torch.zeros(A, 1, U, **z)
        for a, n in enumerate(sizes):
            unit_mask[a, 0, :n] = 1.0
        order = [t for t in draw_order if t in ti] + [t for t in types if t not in draw_order]
        errors = tuple(ti[pops[n].population] for n in graph.prior_errors) if graph.prior_errors else None
        input_lfp = lfp_of.get(f"{areas[inp[1]]}.{types[inp[0]]}", -1) if inp else -1
        rect_types = [i for i, t in enumerate(types) if laws[t] == {"rectified"}]
        runs = []
        for i in rect_types:
            if runs and runs[-1][1] == i:
                runs[-1] = (runs[-1][0], i + 1)
            else:
                runs.append((i, i + 1))
        return cls(list(areas), tuple(sizes), U, float(p.dt), types, order, span, k, 1.0 - k * decay, runs,
                   terms, constant, constant_lfp, prior_input, prior_gains, prior_lfp, errors, float(graph.prior_rate), top, inp,
                   input_lfp, unit_mask, missing, float(getattr(p, "noise", 0.0)))

    def pack(self, state: dict[str, list[Tensor | None]], m: Tensor) -> dict[str, Tensor]:
        """Per-area state lists (``state[type][area]`` ``(B, n_area)``, ``None`` where the area
        lacks the type) and prior ``m`` ``(B, n_top)`` as the packed state ``{'x', 'm'}``."""
        pad = torch.nn.functional.pad
        B = m.shape[0]
        x = torch.stack([torch.stack([pad(v, (0, self.U - v.shape[-1])) if v is not None else m.new_zeros(B, self.U)
                                      for v in state[t]]) for t in self.types])
        return {"x": x, "m": pad(m, (0, self.U - m.shape[-1]))}

    def unpack(self, st: dict[str, Tensor]) -> dict[str, Tensor]:
        """The packed state as ``{type: (A, B, U)}`` views plus ``'m'`` ``(B, U)``."""
        out = {t: st["x"][i] for i, t in enumerate(self.types)}
        out["m"] = st["m"]
        return out

    def step(self, st: dict[str, Tensor], drive: Tensor, cue: float, gen: torch.Generator | None = None,
             want_aux: bool = False):
        """One Euler step of every population (synchronous update) of the packed state ``st``
        for input ``drive`` ``(B, U)`` and cue ``c`` in {0, 1}; returns the new state and,
        with ``want_aux``, the LFP proxy ``(A, B, 3)`` of the old state: for every area and
        layer the summed absolute synaptic input (each projection, bias, prior and the
        stimulus a separate input) to its pyramidal populations, NaN where it has none."""
        x, m = st["x"], st["m"]
        T, A, B, U = x.shape
        lfp = self.constant_lfp[:, None].expand(-1, B).clone() if want_aux else None
        # every input as (target type, first area, last area, kind, operands): kind 'mul' and
        # 'bmm' are the products src * gains and src @ weight, 'add' a ready value
        inputs: list[tuple] = []
        fx: dict[tuple, Tensor] = {}
        for g in self.terms:
            src = x[g.source, g.lo - g.shift: g.hi - g.shift + 1]
            if g.transfer != "linear":
                key = (g.source, g.lo - g.shift, g.transfer)
                if key not in fx:
                    fx[key] = get_activation(g.transfer).f(src)
                src = fx[key]
            if g.gain is not None and g.gain != "linear" or lfp is not None:
                v = src * g.weight if g.diagonal else torch.bmm(src, g.weight)
                if g.gain is not None and g.gain != "linear":
                    a, xd = get_activation(g.gain), x[g.target, g.lo: g.hi + 1]
                    v = v * a.df(xd, a.f(xd))
                inputs.append((g.target, g.lo, g.hi, "add", v))
                if lfp is not None:
                    mag = v.abs().sum(-1)
                    for i, e in enumerate(g.lfp):
                        if e >= 0:
                            lfp[e] += mag[i]
            else:
                inputs.append((g.target, g.lo, g.hi, "mul" if g.diagonal else "bmm", (src, g.weight)))
        if cue:
            cm = cue * m
            for t, gain in self.prior_gains:
                inputs.append((t, self.top, self.top, "add", (gain * cm)[None]))
            if lfp is not None:
                for t, e in self.prior_lfp:
                    lfp[e] += (self.prior_input[t] * cm).abs().sum(-1)
        if self.input is not None:
            t, a = self.input
            inputs.append((t, a, a, "add", drive[None]))
            if lfp is not None and self.input_lfp >= 0:
                lfp[self.input_lfp] += drive.abs().sum(-1)
        u = self._sum_inputs(inputs, x)
        # x + k (phi(u) - decay x), written as retain * x + k * phi(u)
        x1 = torch.addcmul(self.retain * x, self.k, u)
        if gen is not None and self.noise > 0:
            # an Ornstein-Uhlenbeck drive whose stationary std is `noise` for any tau
            ti = {t: i for i, t in enumerate(self.types)}
            for t in self.draw_order:
                i, (lo, hi) = ti[t], self.span[t]
                x1[i, lo:hi + 1] += self.noise * torch.sqrt(2 * self.k[i, lo:hi + 1]) * self.unit_mask[lo:hi + 1] * \
                    torch.randn((hi - lo + 1, B, U), generator=gen, device=x.device, dtype=x.dtype)
        if self.prior_errors is not None and self.prior_rate > 0 and cue:
            pos, neg = self.prior_errors
            m = m + (self.dt * self.prior_rate * cue) * (x[pos, self.top] - x[neg, self.top])
        new = {"x": x1, "m": m}
        if lfp is None:
            return new, None
        return new, lfp.view(A, len(LFP_LAYERS), B).permute(0, 2, 1) + self.lfp_missing

    def _sum_inputs(self, inputs: list[tuple], x: Tensor) -> Tensor:
        """The summed input ``phi(u)`` ``(T, A, B, U)`` (rectified for rectified types) from the
        ``inputs`` of :meth:`step`. Eager: accumulated in place into one buffer (no
        temporaries); compiled: as a sum of padded terms, which Inductor fuses (in-place adds
        into slices would become a full copy each under functionalisation)."""
        T, A, B, U = x.shape
        if not torch.compiler.is_compiling():
            u = x.new_zeros(T, A, B, U) if self.constant is None else self.constant.expand(-1, -1, B, -1).clone()
            for t, lo, hi, kind, v in inputs:
                out = u[t, lo: hi + 1]  # a view: the products add into u in place
                if kind == "mul":
                    out.addcmul_(*v)
                elif kind == "bmm":
                    out.baddbmm_(*v)
                else:
                    out += v
            for t0, t1 in self.rectified:
                u[t0:t1].clamp_(min=0)
            return u
        rows = []
        for t in range(T):
            acc = x.new_zeros(A, B, U) if self.constant is None else self.constant[t].expand(-1, B, -1)
            for tt, lo, hi, kind, v in inputs:
                if tt == t:
                    v = v[0] * v[1] if kind == "mul" else torch.bmm(*v) if kind == "bmm" else v
                    acc = acc + torch.nn.functional.pad(v, (0, 0, 0, 0, lo, A - 1 - hi))
            if any(t0 <= t < t1 for t0, t1 in self.rectified):
                acc = torch.relu(acc)
            rows.append(acc)
        return torch.stack(rows)


def _is_diagonal(w: Tensor) -> bool:
    return w.ndim == 2 and w.shape[0] == w.shape[1] and bool((w == torch.diag(torch.diagonal(w))).all())
