"""The laminar rate circuit translated into a Brian2 network of leaky integrate-and-fire neurons.

Every rate unit of a :class:`~circuits.laminar.CircuitGraph` becomes ``N`` LIF neurons whose
population rate encodes the unit's activity; every signed projection becomes synapses, split
by sign into one excitatory and one inhibitory :class:`brian2.Synapses` object.

**Neuron.** All neurons share one model (dimensionless membrane potential, threshold 1,
reset 0, refractory period ``t_ref``)::

    tau_m dv/dt = mu0 + k * polarity * s - v        (+ a noise kick every update_ms)
    tau_s ds/dt = -lam * s + ext(t) + tau_s * sum_spikes w_syn * delta(t - t_spike)

``s`` is the rate unit's input ``u`` in rate units: with ``lam = 1`` the synaptic current
low-pass filters the input as the rate equation ``tau dx/dt = -x + u`` does (``tau_s = tau -
lag_ms``: the LIF group's own ~1 ms response lag makes up the rest), and with ``lam = leak``
and ``tau_s = tau`` it *is* the integrator of an L5/6 unit (``tau dr/dt = -leak r + u``): a
neuron-model variable that integrates incoming spikes, identical in every neuron of the unit
because the unit's neurons all receive the same spikes (units are connected all-to-all).
``ext`` carries what is not a spike: the bias, the stimulus (current drive, a
:class:`brian2.TimedArray`) and the cue-gated prior ``gain * c(t) * m``. Membrane noise of free
standard deviation ``noise`` (uniform kicks every ``update_ms``, see :class:`SpikingParams`)
keeps the ``N`` neurons asynchronous and makes the rate a threshold-linear function of ``s``
(the Siegert formula, Brunel 2000, with a discrete-kick correction; :func:`lif_rate`).

**Rate code: push-pull.** The operating point ``mu0`` puts the neurons just below threshold
(they fire ``floor_hz`` at ``s = 0``) and ``k`` makes the rate rise by ``gain_hz`` per rate
unit, so a group's rate is ``floor + gain * [polarity * s]_+`` up to a soft threshold. A
rectified population (the L2/3 errors) is one such group. A signed population (L4 relays,
L5/6 representations, the stimulus) is a pair of groups, ON (``polarity +1``) and OFF
(``-1``), sharing ``s``; its activity is ``(R_on - R_off) / gain``. The alternative, one
group at a baseline rate ``r0 + gain * x``, fires ``r0`` even when ``x = 0`` and its Poisson-like
spike noise at that baseline swamps the small error signals downstream (the L2/3 errors of the
oddball circuit vary by a few hundredths of a rate unit); push-pull groups are silent at rest,
so their noise scales with the signal (the same argument as ON/OFF channels in the retina).

**Synapses.** A projection ``u_dst += x_src @ W`` connects each source group (polarity
``p``) all-to-all, unit block to unit block, to the target groups with
``w_syn = p * W[i, j] * 1000 / (gain * N * tau_s[ms])`` (the target's ``tau_s``): ``N`` neurons firing ``R`` Hz raise
``s`` on average by ``W * R / gain``. The floor rate is removed by a constant
``- p * W * floor / gain`` in ``ext`` (it cancels between ON and OFF groups and between the
``l23_pos`` / ``l23_neg`` pairs of a laminar circuit). Positive ``w_syn`` go to the excitatory,
negative ones to the inhibitory Synapses object; both add to ``s``.

**Prior.** The top-level prior mean ``m`` is a tiny NeuronGroup (one element per trial and
top unit) that integrates spikes of the two top error groups, ``m += ±prior_rate * 1000 /
(gain * N) * c(t)`` per spike (``dm/dt = prior_rate * c * (e+ - e-)``); the top populations
read it through a linked variable.

**Speed.** The whole circuit is ONE NeuronGroup (population, unit, polarity and trial are
per-neuron constants), two Synapses objects, the prior group and its Synapses, one
``run_regularly`` operation and one SpikeMonitor, so the per-step overhead of Brian2's runtime
targets stays small. Blocks of a stimulus run side by side as independent copies in the one
network. Every run builds its own :class:`brian2.Network` in a fresh scope, with fixed object,
clock and TimedArray names (so the generated code, hence the compiled-code cache key, is the
same from run to run), and 'cpp_standalone' runs reset the device afterwards.

**Defaults** (:class:`SpikingParams`) were chosen on the oddball circuit of
``configs/spiking_oddball.toml``: low membrane noise (0.15) makes the group respond within
~1 ms and narrows the soft threshold; a high gain (200 Hz per rate unit, refractory 0.5 ms)
gives each unit enough spikes that 40 neurons resolve error signals of a few hundredths
(the spike-count noise of a group falls as ``1 / sqrt(N * gain)``). The rate circuit must
tolerate the small extra lag: with ``tau_deep = 10`` ms the oddball circuit has a barely
damped ~30 Hz mode that a 1.5 ms lag destabilises, hence ``tau_deep = 20`` ms there.

Only linear transfers are translated (a spike count cannot carry ``f(x)`` of a rate code
without a second non-linearity); a graph with non-linear activations is refused.
"""

from __future__ import annotations

import math
import tempfile
import time as _time
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import xarray as xr

from .laminar import LAYER_OF, CircuitGraph, LaminarCircuit
from .paradigms import Stimulus

__all__ = [
    "TARGETS",
    "SpikingParams",
    "SpikingCircuit",
    "RateCode",
    "lif_rate",
    "rate_code",
    "cut_epochs",
    "spike_trains",
    "benchmark",
]

TARGETS = ("numpy", "cython", "cpp_standalone")
_OVERSHOOT_UNIFORM = 0.5161  # Siegmund's threshold correction for uniform random-walk steps (see lif_rate)


# --------------------------------------------------------------------------- parameters


@dataclass(frozen=True)
class SpikingParams:
    """How rate units become LIF neurons (see the module docstring).

    ``neurons_per_unit``: ``N`` neurons per group. ``dt_ms``: Brian2 time step (ms).
    ``update_ms``: interval (ms, a multiple of ``dt_ms``) at which the membrane noise kicks
    (uniform, standard deviation ``noise * sqrt(1 - exp(-2 update / tau_m))``, so the free
    membrane's standard deviation is ``noise``) and the external input (stimulus, cue-gated
    prior) is refreshed: a Gaussian number and the TimedArray look-ups for every neuron at
    every step cost Brian2's runtime targets about twice the rest of the simulation.
    ``tau_m_ms``: membrane time constant (ms); ``refractory_ms``: absolute refractory period
    (ms). ``noise``: standard deviation of the free membrane potential (threshold units).
    ``floor_hz``: rate of a group at zero input; ``gain_hz``: rate increase per rate unit
    (Hz), i.e. a group fires ``floor_hz + gain_hz`` at activity 1. ``lag_ms``: the response
    lag of a LIF group, subtracted from the synaptic time constant of every non-integrating
    population so that synapse plus membrane delay the input by the rate unit's ``tau`` on
    average. ``smooth_ms``: standard deviation of the Gaussian kernel that turns binned spike
    counts into population rates.
    """

    neurons_per_unit: int = 40
    dt_ms: float = 0.1
    update_ms: float = 0.5
    tau_m_ms: float = 10.0
    refractory_ms: float = 0.5
    noise: float = 0.15
    floor_hz: float = 2.0
    gain_hz: float = 200.0
    lag_ms: float = 1.0
    smooth_ms: float = 5.0

    def __post_init__(self):
        if not (isinstance(self.neurons_per_unit, int) and not isinstance(self.neurons_per_unit, bool)
                and self.neurons_per_unit >= 1):
            raise ValueError(f"SpikingParams.neurons_per_unit must be an integer >= 1, got {self.neurons_per_unit!r}")
        for name in ("dt_ms", "update_ms", "tau_m_ms", "noise", "floor_hz", "gain_hz", "smooth_ms"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"SpikingParams.{name} must be a finite number > 0, got {v!r}")
        for name in ("refractory_ms", "lag_ms"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"SpikingParams.{name} must be a finite number >= 0, got {v!r}")
        ratio = self.update_ms / self.dt_ms
        if abs(ratio - round(ratio)) > 1e-6:
            raise ValueError(f"SpikingParams.update_ms ({self.update_ms}) must be a multiple of dt_ms ({self.dt_ms})")
        if self.update_ms > self.tau_m_ms / 10:
            raise ValueError(f"SpikingParams.update_ms = {self.update_ms} ms is too coarse for tau_m = {self.tau_m_ms} ms")
        if self.dt_ms > self.tau_m_ms / 10:
            raise ValueError(f"SpikingParams.dt_ms = {self.dt_ms} ms is too coarse for tau_m = {self.tau_m_ms} ms "
                             f"(use dt <= {self.tau_m_ms / 10} ms)")
        ceiling = 1000.0 / max(self.refractory_ms, 1e-9)
        if self.floor_hz + 1.5 * self.gain_hz > 0.5 * ceiling:
            raise ValueError(f"SpikingParams: floor_hz + 1.5 * gain_hz = {self.floor_hz + 1.5 * self.gain_hz} Hz is "
                             f"too close to the refractory ceiling {ceiling:.0f} Hz; lower gain_hz or refractory_ms")


# --------------------------------------------------------------------------- rate code


def lif_rate(mu, *, tau_m_ms: float, refractory_ms: float, noise: float, kick_ms: float = 0.0) -> np.ndarray:
    """Stationary firing rate (Hz) of a LIF neuron (threshold 1, reset 0) with mean input
    ``mu`` (array, threshold units) and membrane noise of free standard deviation ``noise``.

    The Siegert formula ``1 / (t_ref + tau_m sqrt(pi) int_{-mu/s}^{(th-mu)/s} erfcx(-u) du)``
    with ``s = sqrt(2) * noise`` (Brunel 2000, whose ``sigma`` is sqrt(2) times the free
    standard deviation; the scaled complementary error function keeps it finite far below
    threshold). When the noise arrives as kicks every ``kick_ms``, uniformly distributed with
    standard deviation ``q = noise * sqrt(1 - exp(-2 kick / tau_m))`` (what
    :class:`SpikingCircuit` does), the membrane overshoots the threshold between looks, which
    acts as a higher threshold ``th = 1 + 0.5161 q``: Siegmund's (1979) corrected diffusion
    approximation, with the constant ``-1/pi int_0^inf l^-2 log(2 (1 - phi(l)) / l^2) dl``
    of the uniform step distribution (0.5826 for Gaussian steps). ``kick_ms = 0`` is white
    noise (``th = 1``). Returns an array of ``mu``'s shape.
    """
    from scipy.integrate import quad
    from scipy.special import erfcx

    for name, v, lo in (("tau_m_ms", tau_m_ms, 0.0), ("noise", noise, 0.0)):
        if not (math.isfinite(v) and v > lo):
            raise ValueError(f"lif_rate: {name} must be a finite number > 0, got {v!r}")
    if not (math.isfinite(refractory_ms) and refractory_ms >= 0 and math.isfinite(kick_ms) and kick_ms >= 0):
        raise ValueError(f"lif_rate: refractory_ms and kick_ms must be >= 0, got {refractory_ms!r}, {kick_ms!r}")
    mu = np.asarray(mu, dtype=np.float64)
    if not np.isfinite(mu).all():
        raise ValueError("lif_rate: mu contains NaN or Inf")
    sd = math.sqrt(2) * noise
    th = 1.0 + _OVERSHOOT_UNIFORM * noise * math.sqrt(1.0 - math.exp(-2.0 * kick_ms / tau_m_ms))
    out = np.empty(mu.shape)
    for idx, m in np.ndenumerate(mu):
        val = quad(lambda u: erfcx(-u), -m / sd, (th - m) / sd, limit=200)[0]
        out[idx] = 1.0 / (refractory_ms * 1e-3 + tau_m_ms * 1e-3 * math.sqrt(math.pi) * val)
    return out


@dataclass(frozen=True)
class RateCode:
    """The operating point of every group: mean input ``mu0`` (threshold units) at which a group
    fires ``floor_hz`` (``s = 0``), and the gain ``k`` (threshold units per rate unit) whose
    Siegert rates lie closest (least squares) to ``floor_hz + gain_hz * x`` for ``0 <= x <= 1``;
    a group's activity is read out as ``(R - floor_hz) / gain_hz``."""

    mu0: float
    k: float
    floor_hz: float
    gain_hz: float


@lru_cache(maxsize=32)
def _rate_code(tau_m_ms: float, refractory_ms: float, noise: float, kick_ms: float, floor_hz: float,
               gain_hz: float) -> RateCode:
    from scipy.optimize import brentq, minimize_scalar

    def f(m: float) -> float:
        return float(lif_rate(m, tau_m_ms=tau_m_ms, refractory_ms=refractory_ms, noise=noise, kick_ms=kick_ms))

    lo = -10.0 * noise
    if f(lo) > floor_hz:
        raise ValueError(f"floor_hz = {floor_hz} Hz is below the rate reachable with noise = {noise}")
    mu0 = brentq(lambda m: f(m) - floor_hz, lo, 1.0 + 10 * noise, xtol=1e-10)
    # k: least-squares fit of the rate to the line floor + gain * x over 0 <= x <= 1, the range
    # the circuit's activities live in (the LIF curve is convex at threshold, concave near the
    # refractory ceiling; a fit spreads the residual over both ends)
    xs = np.linspace(0.0, 1.0, 21)
    line = floor_hz + gain_hz * xs

    def misfit(kk):
        rates = lif_rate(mu0 + kk * xs, tau_m_ms=tau_m_ms, refractory_ms=refractory_ms, noise=noise, kick_ms=kick_ms)
        return float(np.sum((rates - line) ** 2))

    hi = 1.0
    while f(mu0 + hi) < floor_hz + gain_hz:
        hi *= 2
        if hi > 1e3:
            raise ValueError(f"gain_hz = {gain_hz} Hz is out of reach of the LIF neuron (refractory ceiling)")
    k = minimize_scalar(misfit, bounds=(hi / 8, 2 * hi), method="bounded", options={"xatol": 1e-6}).x
    return RateCode(float(mu0), float(k), float(floor_hz), float(gain_hz))


def rate_code(params: "SpikingParams") -> RateCode:
    """The :class:`RateCode` (operating point ``mu0`` and input gain ``k``) that ``params``
    ask for, solved from the Siegert rate :func:`lif_rate`."""
    return _rate_code(float(params.tau_m_ms), float(params.refractory_ms), float(params.noise),
                      float(params.update_ms), float(params.floor_hz), float(params.gain_hz))


# --------------------------------------------------------------------------- layout


@dataclass(frozen=True)
class _Group:
    population: int  # index into graph.populations
    polarity: int  # +1 ON, -1 OFF
    size: int  # units
    unit_offset: int  # first unit-group index within a trial


@dataclass
class _Layout:
    groups: list[_Group]
    units_per_trial: int  # sum of group sizes
    N: int

    @property
    def neurons_per_trial(self) -> int:
        return self.units_per_trial * self.N


class SpikingCircuit:
    """A :class:`~circuits.laminar.LaminarCircuit` (or its :class:`CircuitGraph`) as a Brian2
    LIF network (see the module docstring for the translation).

    ``circuit``: the rate circuit; given a LaminarCircuit, the spiking network starts from
    its :meth:`~circuits.laminar.LaminarCircuit.initial_state`, given a bare graph from zero
    activity with the top prior at ``graph.prior_mean``. ``params``: :class:`SpikingParams`.
    Neurons per trial: ``N * sum(units of each group)``; a signed population has two groups.
    """

    def __init__(self, circuit: LaminarCircuit | CircuitGraph, params: SpikingParams = SpikingParams()):
        if isinstance(circuit, LaminarCircuit):
            self.circuit, graph = circuit, circuit.graph()
        elif isinstance(circuit, CircuitGraph):
            self.circuit, graph = None, circuit
        else:
            raise TypeError(f"SpikingCircuit needs a LaminarCircuit or CircuitGraph, got {type(circuit).__name__}")
        if not isinstance(params, SpikingParams):
            raise TypeError(f"params must be SpikingParams, got {type(params).__name__}")
        self.graph, self.params = graph, params
        self.code = rate_code(params)
        self._index = {p.name: q for q, p in enumerate(graph.populations)}
        for p in graph.populations:
            if p.kind not in ("input", "relay", "rectified", "integrator"):
                raise ValueError(f"population '{p.name}' has unknown kind {p.kind!r}")
            if p.kind == "integrator" and p.activation != "linear":
                raise ValueError(f"population '{p.name}' has activation {p.activation!r}: the spiking translation "
                                 "needs linear activations (f' = 1 for the gated input)")
        for pr in graph.projections:
            for end in (pr.source, pr.target):
                if end not in self._index:
                    raise ValueError(f"projection {pr.source} -> {pr.target} names unknown population '{end}'")
            if pr.transfer != "linear":
                raise ValueError(f"projection {pr.source} -> {pr.target} has transfer {pr.transfer!r}: the spiking "
                                 "translation carries linear rate codes only")
            n_s, n_t = graph.populations[self._index[pr.source]].size, graph.populations[self._index[pr.target]].size
            if tuple(pr.weight.shape) != (n_s, n_t):
                raise ValueError(f"projection {pr.source} -> {pr.target} weight must be {(n_s, n_t)}, "
                                 f"got {tuple(pr.weight.shape)}")
        for name in list(graph.bias) + list(graph.prior_inputs) + list(graph.prior_errors):
            if name not in self._index:
                raise ValueError(f"the graph's bias/prior names unknown population '{name}'")
        fastest = min((p.tau_ms for p in graph.populations if p.kind != "integrator"), default=math.inf)
        if params.lag_ms > fastest / 2:
            raise ValueError(f"SpikingParams.lag_ms = {params.lag_ms} ms must be at most half the fastest population "
                             f"time constant ({fastest} ms)")
        groups, off = [], 0
        for q, p in enumerate(graph.populations):
            for pol in ((1,) if p.kind == "rectified" else (1, -1)):
                groups.append(_Group(q, pol, p.size, off))
                off += p.size
        self.layout = _Layout(groups, off, params.neurons_per_unit)
        self.area_names = list(dict.fromkeys(p.area for p in graph.populations))
        self.population_names = list(dict.fromkeys(p.population for p in graph.populations))
        if len(self.area_names) == 0:
            raise ValueError("the circuit graph has no populations")

    def _tau_syn(self, pop) -> float:
        """Synaptic time constant (ms) of a population: its ``tau`` minus the LIF lag, except
        for integrators (whose ``s`` is the integral itself)."""
        return pop.tau_ms if pop.kind == "integrator" else pop.tau_ms - self.params.lag_ms

    # ----------------------------------------------------------------- structure
    @property
    def neurons_per_trial(self) -> int:
        """Neurons of one copy of the circuit (one trial/block)."""
        return self.layout.neurons_per_trial

    def groups(self) -> xr.Dataset:
        """The neuron groups as a Dataset over dim ``group``: ``area``, ``population``,
        ``polarity`` ('on'/'off'), ``n_units``, ``first_neuron`` (index of the group's first
        neuron within a trial copy; neuron ``first + unit * N + k``)."""
        G, gp = self.layout.groups, self.graph.populations
        return xr.Dataset(coords={
            "group": ("group", [self._group_name(g) for g in G]),
            "area": ("group", [gp[g.population].area for g in G]),
            "population": ("group", [gp[g.population].population for g in G]),
            "polarity": ("group", ["on" if g.polarity > 0 else "off" for g in G]),
            "n_units": ("group", [g.size for g in G]),
            "first_neuron": ("group", [g.unit_offset * self.layout.N for g in G]),
        })

    def _group_name(self, g: _Group) -> str:
        p = self.graph.populations[g.population]
        return p.name if p.kind == "rectified" else f"{p.name}.{'on' if g.polarity > 0 else 'off'}"

    def connectivity(self, trials: int = 1) -> dict[str, dict[str, np.ndarray]]:
        """Synapses of ``trials`` independent copies, split by sign.

        Returns ``{'exc': {...}, 'inh': {...}}``, each with int64 ``pre`` and ``post`` neuron
        indices and float64 ``weight`` (the jump of ``s`` per spike, rate units; positive in
        'exc', negative in 'inh'), plus ``'bias'``: ``(trials * neurons_per_trial,)`` the
        constant part of ``ext`` (graph bias minus the floor correction). Weights follow the
        module docstring, so ``sum(weight) * gain * N * tau_dst / 1000`` over the synapses of
        one unit pair and both source polarities recovers ``2 * W[i, j]`` for a signed source
        (ON carries ``+W``, OFF ``-(-W)``) and ``W[i, j]`` for a rectified one.
        """
        if not (isinstance(trials, (int, np.integer)) and trials >= 1):
            raise ValueError(f"trials must be an integer >= 1, got {trials!r}")
        L, N, c = self.layout, self.layout.N, self.code
        M = L.neurons_per_trial
        by_pop: dict[int, list[_Group]] = {}
        for g in L.groups:
            by_pop.setdefault(g.population, []).append(g)
        pre, post, w = [], [], []
        bias = np.zeros(M)
        for q, p in enumerate(self.graph.populations):
            if p.name in self.graph.bias:
                b = self.graph.bias[p.name].detach().cpu().double().numpy()
                for g in by_pop[q]:
                    bias[g.unit_offset * N:(g.unit_offset + g.size) * N] += np.repeat(b, N)
        k = np.arange(N)
        for pr in self.graph.projections:
            W = pr.weight.detach().cpu().double().numpy()
            qs, qt = self._index[pr.source], self._index[pr.target]
            tau = self._tau_syn(self.graph.populations[qt])
            ii, jj = np.nonzero(W)
            if ii.size == 0:
                continue
            vals = W[ii, jj]
            for gs in by_pop[qs]:
                floor_corr = np.zeros(self.graph.populations[qt].size)
                np.add.at(floor_corr, jj, -gs.polarity * vals * c.floor_hz / c.gain_hz)
                for gt in by_pop[qt]:
                    bias[gt.unit_offset * N:(gt.unit_offset + gt.size) * N] += np.repeat(floor_corr, N)
                    src = (gs.unit_offset + ii)[:, None, None] * N + k[None, :, None]  # (nnz, N, 1)
                    dst = (gt.unit_offset + jj)[:, None, None] * N + k[None, None, :]  # (nnz, 1, N)
                    src, dst = np.broadcast_arrays(src, dst)
                    pre.append(src.ravel())
                    post.append(dst.ravel())
                    ws = gs.polarity * vals * 1000.0 / (c.gain_hz * N * tau)
                    w.append(np.broadcast_to(ws[:, None, None], src.shape).ravel())
        pre = np.concatenate(pre) if pre else np.zeros(0, np.int64)
        post = np.concatenate(post) if post else np.zeros(0, np.int64)
        w = np.concatenate(w) if w else np.zeros(0)
        shift = (np.arange(trials) * M)[:, None]
        pre, post = (pre[None, :] + shift).ravel(), (post[None, :] + shift).ravel()
        w = np.tile(w, trials)
        out = {}
        for name, sel in (("exc", w > 0), ("inh", w < 0)):
            out[name] = {"pre": pre[sel].astype(np.int64), "post": post[sel].astype(np.int64), "weight": w[sel]}
        out["bias"] = np.tile(bias, trials)
        return out

    def _neuron_constants(self, trials: int, n_in: int) -> dict[str, np.ndarray]:
        """Per-neuron constants of ``trials`` copies: tau_s (ms), lam, polarity, stim_idx,
        prior_gain, prior_idx."""
        L, N, gp = self.layout, self.layout.N, self.graph.populations
        M = L.neurons_per_trial
        tau, lam, pol = np.zeros(M), np.zeros(M), np.zeros(M)
        stim_unit = np.full(M, -1, np.int64)  # input channel of 'input' neurons
        pgain = np.zeros(M)
        top_unit = np.zeros(M, np.int64)
        for g in L.groups:
            p = gp[g.population]
            sl = slice(g.unit_offset * N, (g.unit_offset + g.size) * N)
            tau[sl] = self._tau_syn(p)
            lam[sl] = p.leak if p.kind == "integrator" else 1.0
            pol[sl] = g.polarity
            units = np.repeat(np.arange(g.size), N)
            if p.kind == "input":
                if p.size != n_in:
                    raise ValueError(f"stimulus has {n_in} input channels but population '{p.name}' has {p.size} units")
                stim_unit[sl] = units
            if p.name in self.graph.prior_inputs:
                gain = self.graph.prior_inputs[p.name].detach().cpu().double().numpy()
                pgain[sl] = gain[units]
                top_unit[sl] = units
        n_top = self.graph.prior_mean.numel()
        b = np.repeat(np.arange(trials), M)
        su = np.tile(stim_unit, trials)
        stim_idx = np.where(su >= 0, b * n_in + su, trials * n_in)  # last column: no stimulus
        return {"tau": np.tile(tau, trials), "lam": np.tile(lam, trials), "pol": np.tile(pol, trials),
                "stim_idx": stim_idx.astype(np.int32), "prior_gain": np.tile(pgain, trials),
                "prior_idx": (b * n_top + np.tile(top_unit, trials)).astype(np.int64)}

    def _initial_s(self, trials: int) -> tuple[np.ndarray, np.ndarray]:
        """Initial ``s`` of every neuron ``(trials * M,)`` and prior ``m`` ``(trials, n_top)``."""
        L, N, gp = self.layout, self.layout.N, self.graph.populations
        s = np.zeros((trials, L.neurons_per_trial))
        prior = self.graph.prior_mean.detach().cpu().double().numpy()
        m = np.broadcast_to(prior, (trials, prior.size)).copy()
        if self.circuit is not None:
            st = self.circuit.initial_state(trials)
            areas = self.circuit.area_names
            for g in L.groups:
                p = gp[g.population]
                a = areas.index(p.area)
                x = st[p.population][a]
                if x is None:
                    continue
                x = x.detach().cpu().double().numpy()
                s[:, g.unit_offset * N:(g.unit_offset + g.size) * N] = np.repeat(x, N, axis=1)
            m = st["m"].detach().cpu().double().numpy()
        return s.ravel(), m

    # ----------------------------------------------------------------- simulation
    def run(
        self,
        stimulus: Stimulus,
        *,
        target: str = "numpy",
        seed: int = 0,
        record_every_ms: float = 1.0,
        smooth_ms: float | None = None,
        count_bin_ms: float | None = 10.0,
        spike_neurons: int | None = None,
        progress: bool = False,
        directory: str | None = None,
    ) -> xr.Dataset:
        """Simulate every block of ``stimulus`` as an independent copy of the network.

        ``target``: Brian2 code generation target, one of :data:`TARGETS` ('numpy' and
        'cython' run in this process; 'cpp_standalone' writes, compiles and runs a C++
        project in ``directory`` (default a temporary folder) and restores the runtime device
        afterwards, so runs can follow each other in one process). Returns a Dataset over
        ``trial`` (the blocks, with their conditions) and ``time`` (ms from block start,
        bins of ``record_every_ms`` labelled by their start):

        - ``rate`` (trial, time, area, population, unit): the decoded activity in rate units,
          ``sum_groups polarity * (R - floor) / gain`` with ``R`` the group's firing rate
          smoothed by a Gaussian of ``smooth_ms`` (default ``params.smooth_ms``); NaN where the
          rate circuit has no such population/unit, as in :meth:`LaminarCircuit.run`;
        - ``firing_rate`` (trial, time, area, population, polarity, unit): the smoothed
          population rate (Hz) of every group;
        - ``prior`` (trial, time, top_unit): the cue-gated prior ``c(t) * m`` (rate units),
          ``prior_mean`` ``m(t)`` itself (rebuilt from the spikes the prior synapses integrate),
          ``final_prior`` (trial, top_unit) as Brian2 left it, ``cue`` (trial, time) and
          ``stimulus`` (trial, time, input_unit);
        - ``spike_count`` (trial, count_time, group, neuron): spikes per neuron in bins of
          ``count_bin_ms`` (int16; -1 where a group has fewer units than the widest; ``None``:
          omitted; mind the size, trials x bins x groups x neurons), with ``neuron_unit`` and
          the group's ``group_area``, ``group_population``, ``group_polarity`` as coordinates;
        - ``spike_time`` (spike, s from block start), ``spike_trial``, ``spike_group``,
          ``spike_neuron`` (spike): every spike of the first ``spike_neurons`` neurons of each
          unit (``None``: all; 0: none), what :func:`spike_trains` hands to NWB export.

        ``seed`` seeds Brian2 (:func:`brian2.seed`) and the initial membrane potentials:
        numpy and cython runs are reproducible. Raises ValueError for an unknown target, a
        stimulus of the wrong width or with input noise, or bad recording settings.
        """
        if not isinstance(stimulus, Stimulus):
            raise TypeError(f"run needs a circuits.paradigms.Stimulus, got {type(stimulus).__name__}")
        if target not in TARGETS:
            raise ValueError(f"unknown Brian2 target {target!r}; choose one of {TARGETS}")
        if stimulus.noise_std > 0:
            raise ValueError("the spiking translation drives the input populations with the noiseless stimulus; "
                             f"got noise_std = {stimulus.noise_std} (the LIF neurons bring their own noise)")
        inputs = [p for p in self.graph.populations if p.kind == "input"]
        if inputs and inputs[0].size != stimulus.n_in:
            raise ValueError(f"stimulus has {stimulus.n_in} input channels but population '{inputs[0].name}' "
                             f"has {inputs[0].size} units")
        p = self.params
        smooth_ms = p.smooth_ms if smooth_ms is None else float(smooth_ms)
        if not (math.isfinite(record_every_ms) and record_every_ms > 0):
            raise ValueError(f"record_every_ms must be > 0, got {record_every_ms}")
        if not (math.isfinite(smooth_ms) and smooth_ms >= 0):
            raise ValueError(f"smooth_ms must be >= 0, got {smooth_ms}")
        if count_bin_ms is not None and not (math.isfinite(count_bin_ms) and count_bin_ms > 0):
            raise ValueError(f"count_bin_ms must be > 0 or None, got {count_bin_ms}")
        if spike_neurons is not None and not (isinstance(spike_neurons, (int, np.integer)) and spike_neurons >= 0):
            raise ValueError(f"spike_neurons must be an integer >= 0 or None, got {spike_neurons!r}")
        if not (isinstance(seed, (int, np.integer)) and seed >= 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        total_ms = float(stimulus.total_ms)
        if total_ms < record_every_ms:
            raise ValueError(f"the stimulus lasts {total_ms} ms, less than one record bin ({record_every_ms} ms)")
        timings: dict = {}
        sim = self._simulate(stimulus, target=target, seed=int(seed), progress=progress, directory=directory,
                             timings=timings)
        ds = self._dataset(stimulus, sim, record_every_ms, smooth_ms, count_bin_ms, spike_neurons)
        ds.attrs.update(target=target, seed=int(seed), wall_seconds=sim["wall"])
        if "compile" in timings:
            ds.attrs["compile_seconds"] = timings["compile"]
        return ds

    def _simulate(self, stimulus: Stimulus, *, target: str, seed: int, progress: bool, directory: str | None,
                  duration_ms: float | None = None, timings: dict | None = None) -> dict:
        """Build and run the Brian2 network in its own scope (and, for 'cpp_standalone', its own
        device, reset afterwards). Returns the spikes as ``trial``, ``neuron`` (index within the
        trial copy) and ``t`` (s) arrays, the prior ``final_prior`` (B, n_top), the run's
        ``wall`` seconds and the cue grid the prior synapses saw (``cue_grid``, ``cue_dt_ms``)."""
        import brian2 as b2

        B, n_in, L, p = stimulus.blocks, stimulus.n_in, self.layout, self.params
        M, N = L.neurons_per_trial, L.N
        duration_ms = float(stimulus.total_ms) if duration_ms is None else float(duration_ms)
        const = self._neuron_constants(B, n_in)
        conn = self.connectivity(B)
        s0, m0 = self._initial_s(B)
        rng = np.random.default_rng(seed)
        v0 = rng.uniform(0.0, 1.0, B * M)

        # stimulus and cue as TimedArrays on the coarsest grid that holds every on/off edge; they
        # are read every update_ms, so edges off that grid are moved to the next update
        edges = np.concatenate([stimulus.onsets_ms, stimulus.onsets_ms + stimulus.duration_ms, [stimulus.total_ms]])
        res = next((r for r in (1.0, p.update_ms) if np.allclose(edges / r, np.round(edges / r), atol=1e-6)), p.update_ms)
        # rendered for the whole stimulus whatever duration_ms is: the array's length is part of the
        # generated code, so a short (compile-only) run and the full run then share compiled code
        t_grid = np.arange(int(math.ceil(float(stimulus.total_ms) / res)) + 1) * res
        x, cue = stimulus.render(t_grid)  # (B, T, n_in), (B, T)
        stim_values = np.concatenate([x.transpose(1, 0, 2).reshape(len(t_grid), B * n_in), np.zeros((len(t_grid), 1))], 1)

        c = self.code
        ns = {
            "mu0": c.mu0, "kgain": c.k, "tau_m": p.tau_m_ms * b2.ms,
            "kick": p.noise * math.sqrt(1.0 - math.exp(-2.0 * p.update_ms / p.tau_m_ms)),
            # fixed names: Brian2 names new objects 'timedarray_1', '_2', ... and the generated code,
            # hence the compiled-code cache key, would change with every run
            "stim": b2.TimedArray(stim_values, dt=res * b2.ms, name="stimulus_drive"),
            "cue": b2.TimedArray(cue[0].astype(np.float64), dt=res * b2.ms, name="expectation_cue"),
        }
        # ext (stimulus, bias, cue-gated prior) and the noise kicks are refreshed every
        # update_ms by one run_regularly operation instead of at every step (see SpikingParams)
        eqs = """
        dv/dt = (mu0 + kgain * pol * s - v) / tau_m : 1 (unless refractory)
        ds/dt = (-lam * s + ext) / tau_s : 1
        ext : 1
        m_prior : 1 (linked)
        tau_s : second (constant)
        lam : 1 (constant)
        pol : 1 (constant)
        bias : 1 (constant)
        prior_gain : 1 (constant)
        stim_idx : integer (constant)
        """
        # uniform kicks: a Gaussian number costs Brian2's runtime targets ~3x a uniform one, and
        # 2 tau_m / update_ms kicks per membrane time constant make the sum Gaussian anyway
        update = ("v += kick * sqrt(12) * (rand() - 0.5) * int(not_refractory)\n"
                  "ext = bias + stim(t, stim_idx) + prior_gain * cue(t) * m_prior")
        dt = p.dt_ms * b2.ms
        n_top = self.graph.prior_mean.numel()
        prior_pre, prior_w = self._prior_synapses(B)

        old_target = b2.prefs.codegen.target
        standalone = target == "cpp_standalone"
        tmp = None
        try:
            if standalone:
                tmp = tempfile.TemporaryDirectory(prefix="pcsim_brian2_") if directory is None else None
                b2.set_device("cpp_standalone", directory=directory or tmp.name, build_on_run=False)
            else:
                b2.prefs.codegen.target = target
            b2.start_scope()
            b2.seed(seed)
            # explicit clocks with fixed names: auto-named clocks ('clock_1', ...) while an earlier
            # network is still alive change the generated code and force a recompilation
            step = b2.Clock(dt, name="circuit_clock")
            slow = b2.Clock(p.update_ms * b2.ms, name="circuit_input_clock")
            G = b2.NeuronGroup(B * M, eqs, threshold="v > 1", reset="v = 0", refractory=p.refractory_ms * b2.ms,
                               method="euler", clock=step, namespace=ns, name="circuit")
            P = b2.NeuronGroup(B * n_top, "m : 1", clock=step, name="prior")
            G.tau_s = const["tau"] * b2.ms
            G.lam, G.pol, G.bias = const["lam"], const["pol"], conn["bias"]
            G.prior_gain, G.stim_idx = const["prior_gain"], const["stim_idx"]
            G.m_prior = b2.linked_var(P, "m", index=const["prior_idx"])
            G.v, G.s = v0, s0
            G.run_regularly(update, clock=slow, when="start", name="circuit_inputs")
            P.m = m0.ravel()
            objs = [G, P]
            for name, part in (("exc", conn["exc"]), ("inh", conn["inh"])):
                if part["pre"].size == 0:
                    continue
                S = b2.Synapses(G, G, "w : 1 (constant)", on_pre="s_post += w", clock=step,
                                name=f"{name}_synapses")
                S.connect(i=part["pre"], j=part["post"])
                S.w = part["weight"]
                objs.append(S)
            if prior_pre.size and self.graph.prior_rate > 0:
                Sp = b2.Synapses(G, P, "w : 1 (constant)", on_pre="m_post += w * cue(t)", clock=step, namespace=ns,
                                 name="prior_synapses")
                Sp.connect(i=prior_pre, j=prior_w[1])
                Sp.w = prior_w[0]
                objs.append(Sp)
            mon = b2.SpikeMonitor(G, name="spikes")
            net = b2.Network(*objs, mon)
            report, bar = None, None
            if progress and not standalone:
                from tqdm.auto import tqdm

                bar = tqdm(total=100, desc=f"brian2 ({target})", leave=False, unit="%")

                def report(elapsed, completed, start, duration):  # noqa: ARG001
                    bar.n = int(round(100 * float(completed)))
                    bar.refresh()

            t0 = _time.perf_counter()
            net.run(duration_ms * b2.ms, report=report, report_period=1 * b2.second, namespace=ns)
            if standalone:
                d = directory or tmp.name
                t1 = _time.perf_counter()
                b2.device.build(directory=d, compile=True, run=False, with_output=False)
                t2 = _time.perf_counter()
                b2.device.run(directory=d, with_output=False)
                t3 = _time.perf_counter()
                if timings is not None:
                    timings.update(setup=t1 - t0, compile=t2 - t1, run=t3 - t2)
                wall = t3 - t2
            else:
                wall = _time.perf_counter() - t0
                if timings is not None:
                    timings.update(run=wall)
            if bar is not None:
                bar.close()
            i = np.asarray(mon.i[:], dtype=np.int64)
            ts = np.asarray(mon.t_[:], dtype=np.float64)
            m_final = np.asarray(P.m[:], dtype=np.float64).reshape(B, n_top)
        finally:
            if standalone:
                b2.device.reinit()
                b2.device.activate()
                b2.set_device("runtime")
                if tmp is not None:
                    tmp.cleanup()
            b2.prefs.codegen.target = old_target
        return {"trial": i // M, "neuron": i % M, "t": ts, "final_prior": m_final, "wall": wall,
                "cue_grid": cue[0].astype(np.float64), "cue_dt_ms": res, "timings": timings or {}}

    def _prior_synapses(self, trials: int):
        """Spikes of the top error groups onto the prior ``m``: pre neuron indices and
        (weights, post indices) of ``trials`` copies."""
        g = self.graph
        if g.prior_rate <= 0 or not g.prior_errors:
            return np.zeros(0, np.int64), (np.zeros(0), np.zeros(0, np.int64))
        L, N, c = self.layout, self.layout.N, self.code
        M, n_top = L.neurons_per_trial, g.prior_mean.numel()
        pre, post, w = [], [], []
        for sign, name in zip((1.0, -1.0), g.prior_errors):
            q = self._index[name]
            for grp in (x for x in L.groups if x.population == q):
                if grp.size != n_top:
                    raise ValueError(f"prior error population '{name}' has {grp.size} units, the prior {n_top}")
                for b in range(trials):
                    idx = b * M + grp.unit_offset * N + np.arange(grp.size * N)
                    pre.append(idx)
                    post.append(b * n_top + np.repeat(np.arange(grp.size), N))
                    w.append(np.full(idx.size, sign * grp.polarity * g.prior_rate * 1000.0 / (c.gain_hz * N)))
        return np.concatenate(pre), (np.concatenate(w), np.concatenate(post))

    # ----------------------------------------------------------------- results
    def _dataset(self, stimulus: Stimulus, sim: dict, every: float, smooth_ms: float, count_bin_ms,
                 spike_neurons) -> xr.Dataset:
        from scipy.ndimage import gaussian_filter1d

        trial, nrn, ts = sim["trial"], sim["neuron"], sim["t"]
        L, N, c, gp = self.layout, self.layout.N, self.code, self.graph.populations
        B, U = stimulus.blocks, L.units_per_trial
        total_ms = float(stimulus.total_ms)
        T = int(math.floor(total_ms / every + 1e-9))
        t_ms = ts * 1000.0
        tb = np.floor(t_ms / every + 1e-9).astype(np.int64)
        ok = tb < T
        unit_global = trial * U + nrn // N
        counts = np.bincount((unit_global[ok] * T + tb[ok]), minlength=B * U * T).reshape(B, U, T).astype(np.float64)
        hz = counts / (N * every * 1e-3)
        if smooth_ms > 0:
            hz = gaussian_filter1d(hz, smooth_ms / every, axis=-1, mode="nearest")
        areas, pops = self.area_names, self.population_names
        Umax = max(p.size for p in gp)
        A, P = len(areas), len(pops)
        rate = np.full((B, T, A, P, Umax), np.nan)
        fr = np.full((B, T, A, P, 2, Umax), np.nan)
        for g in L.groups:
            pp = gp[g.population]
            a, q = areas.index(pp.area), pops.index(pp.population)
            r = hz[:, g.unit_offset:g.unit_offset + g.size, :].transpose(0, 2, 1)  # (B, T, n)
            fr[:, :, a, q, 0 if g.polarity > 0 else 1, :g.size] = r
            dec = g.polarity * (r - c.floor_hz) / c.gain_hz
            cur = rate[:, :, a, q, :g.size]
            rate[:, :, a, q, :g.size] = np.where(np.isnan(cur), dec, cur + dec)
        time = np.arange(T) * every
        x, cue = stimulus.render(time)
        # the prior m(t) is not recorded by the network; rebuild c(t) m(t) from the top error spikes
        m_t = self._prior_trace(stimulus, sim, time)
        coords = {
            "time": ("time", time, {"units": "ms", "long_name": "time from block start (bin start)"}),
            "area": ("area", areas),
            "population": ("population", pops),
            "layer": ("population", [LAYER_OF.get(q, "") for q in pops]),
            "polarity": ("polarity", ["on", "off"]),
            "unit": ("unit", np.arange(Umax)),
            "block": ("trial", np.arange(B)),
        }
        for name, v in stimulus.conditions.items():
            coords[name] = ("trial", np.asarray(v))
        data = {
            "rate": (("trial", "time", "area", "population", "unit"), rate,
                     {"units": "rate units", "long_name": "population activity decoded from spikes"}),
            "firing_rate": (("trial", "time", "area", "population", "polarity", "unit"), fr,
                            {"units": "Hz", "long_name": "population firing rate per neuron group"}),
            "prior": (("trial", "time", "top_unit"), cue[:, :, None] * m_t,
                      {"units": "rate units", "long_name": "top-level prior (cue-gated)"}),
            "prior_mean": (("trial", "time", "top_unit"), m_t,
                           {"units": "rate units", "long_name": "top-level prior mean m (spikes before each time)"}),
            "cue": (("trial", "time"), cue, {"long_name": "temporal expectation cue"}),
            "stimulus": (("trial", "time", "input_unit"), x, {"units": "rate units", "long_name": "input drive"}),
        }
        data["final_prior"] = (("trial", "top_unit"), sim["final_prior"],
                               {"units": "rate units", "long_name": "top-level prior mean m at the end of the run (Brian2)"})
        ds = xr.Dataset(data, coords=coords)
        grp = self.groups()
        Gn = len(L.groups)
        nmax = Umax * N
        neuron_unit = np.arange(nmax) // N
        if count_bin_ms is not None:
            Tc = int(math.floor(total_ms / count_bin_ms + 1e-9))
            cb = np.floor(t_ms / count_bin_ms + 1e-9).astype(np.int64)
            gidx, within = self._group_of(nrn)
            okc = cb < Tc
            flat = ((trial[okc] * Tc + cb[okc]) * Gn + gidx[okc]) * nmax + within[okc]
            sc = np.bincount(flat, minlength=B * Tc * Gn * nmax).reshape(B, Tc, Gn, nmax)
            if sc.max(initial=0) > np.iinfo(np.int16).max:
                raise OverflowError("spike counts exceed int16: use a smaller count_bin_ms")
            sc = sc.astype(np.int16)
            for gi, g in enumerate(L.groups):
                sc[:, :, gi, g.size * N:] = -1
            ds["spike_count"] = (("trial", "count_time", "group", "neuron"), sc,
                                 {"units": "spikes",
                                  "long_name": f"spikes per neuron in {count_bin_ms} ms bins (-1: no such neuron)"})
            ds = ds.assign_coords(count_time=("count_time", np.arange(Tc) * count_bin_ms,
                                              {"units": "ms", "long_name": "count bin start from block start"}))
        ds = ds.assign_coords(group=("group", grp.group.values), group_area=("group", grp.area.values),
                              group_population=("group", grp.population.values),
                              group_polarity=("group", grp.polarity.values), group_units=("group", grp.n_units.values),
                              neuron=("neuron", np.arange(nmax)), neuron_unit=("neuron", neuron_unit))
        if spike_neurons is None or spike_neurons > 0:
            gidx, within = self._group_of(nrn)
            keep = np.ones(trial.size, bool) if spike_neurons is None else (within % N) < spike_neurons
            order = np.lexsort((ts[keep], within[keep], gidx[keep], trial[keep]))
            ds["spike_time"] = ("spike", ts[keep][order], {"units": "s", "long_name": "spike time from block start"})
            ds["spike_trial"] = ("spike", trial[keep][order].astype(np.int32))
            ds["spike_group"] = ("spike", gidx[keep][order].astype(np.int32), {"long_name": "index along dim group"})
            ds["spike_neuron"] = ("spike", within[keep][order].astype(np.int32), {"long_name": "index along dim neuron"})
            ds.attrs["spike_neurons_per_unit"] = N if spike_neurons is None else int(min(spike_neurons, N))
        cp = self.graph.params
        ds.attrs.update(
            neurons_per_unit=N, dt_ms=self.params.dt_ms, tau_m_ms=self.params.tau_m_ms,
            refractory_ms=self.params.refractory_ms, membrane_noise=self.params.noise, floor_hz=c.floor_hz,
            gain_hz=c.gain_hz, mu0=c.mu0, input_gain=c.k, smooth_ms=smooth_ms, record_every_ms=every,
            tau_l4_ms=cp.tau_l4, tau_error_ms=cp.tau_error, tau_deep_ms=cp.tau_deep, deep_leak=cp.deep_leak,
            prior_rate_per_ms=self.graph.prior_rate, n_neurons=B * L.neurons_per_trial,
            stimulus_duration_ms=stimulus.duration_ms, total_ms=total_ms,
        )
        return ds

    def _group_of(self, nrn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group index and index within the group of neuron indices within a trial."""
        L, N = self.layout, self.layout.N
        starts = np.array([g.unit_offset * N for g in L.groups])
        gidx = np.searchsorted(starts, nrn, side="right") - 1
        return gidx, nrn - starts[gidx]

    def _prior_trace(self, stimulus: Stimulus, sim: dict, time: np.ndarray) -> np.ndarray:
        """The prior mean ``m(t)`` (B, T, n_top) rebuilt from the top error spikes exactly as the prior
        Synapses integrate them (each spike adds ``±prior_rate * 1000 / (gain N) * c(t_spike)``,
        with the cue read from the same grid as the network's TimedArray); ``m(t)`` holds the
        spikes before ``t``, the last sample all of them (it equals Brian2's final ``m``)."""
        trial, nrn, ts = sim["trial"], sim["neuron"], sim["t"]
        g, L, N, c = self.graph, self.layout, self.layout.N, self.code
        B, n_top = stimulus.blocks, g.prior_mean.numel()
        _, m0 = self._initial_s(B)
        T = time.size
        every = time[1] - time[0] if T > 1 else float(stimulus.total_ms)
        inc = np.zeros((B, T + 1, n_top))
        if g.prior_rate > 0 and g.prior_errors:
            t_ms = ts * 1000.0
            grid = sim["cue_grid"]
            cue_at = grid[np.minimum(np.floor(t_ms / sim["cue_dt_ms"] + 1e-6).astype(np.int64), grid.size - 1)]
            for sign, name in zip((1.0, -1.0), g.prior_errors):
                q = self._index[name]
                for grp in (x for x in L.groups if x.population == q):
                    lo = grp.unit_offset * N
                    sel = (nrn >= lo) & (nrn < lo + grp.size * N)
                    tb = np.minimum(np.floor(t_ms[sel] / every + 1e-9).astype(np.int64) + 1, T)
                    w = sign * grp.polarity * g.prior_rate * 1000.0 / (c.gain_hz * N) * cue_at[sel]
                    np.add.at(inc, (trial[sel], tb, (nrn[sel] - lo) // N), w)
        return m0[:, None, :] + np.cumsum(inc, axis=1)[:, 1:, :]


# --------------------------------------------------------------------------- helpers on results


def cut_epochs(ds: xr.Dataset, stimulus: Stimulus, pre_ms: float, post_ms: float, keep: np.ndarray | None = None,
               variables: tuple[str, ...] = ("rate",)) -> xr.Dataset:
    """Cut a continuous result (``trial`` = blocks, ``time`` in ms from block start, as returned
    by :meth:`SpikingCircuit.run` or :meth:`LaminarCircuit.run` without epochs) into
    peri-stimulus epochs ``-pre_ms <= t < post_ms`` around every slot onset. ``keep``: ``(B,
    S)`` boolean selection of (block, slot) pairs (default all). Returns the ``variables``
    over a new ``trial`` axis of the selected pairs, with coordinates ``block``, ``slot``,
    ``onset_ms``, ``pattern``, the slot labels and block conditions, and ``time`` relative to
    the onset (ms), laid out like :meth:`LaminarCircuit.run` with ``epochs``."""
    if "time" not in ds.dims or "trial" not in ds.dims:
        raise ValueError("cut_epochs needs a Dataset with dims 'trial' (blocks) and 'time' (ms from block start)")
    B, S = stimulus.blocks, stimulus.slots
    if ds.sizes["trial"] != B:
        raise ValueError(f"the Dataset has {ds.sizes['trial']} trials but the stimulus {B} blocks")
    if pre_ms < 0 or post_ms <= 0:
        raise ValueError(f"epochs need pre_ms >= 0 and post_ms > 0, got ({pre_ms}, {post_ms})")
    t = ds.time.values
    every = float(t[1] - t[0]) if t.size > 1 else 1.0
    rel = np.arange(-int(round(pre_ms / every)), int(round(post_ms / every))) * every
    keep = np.ones((B, S), bool) if keep is None else np.asarray(keep, bool)
    if keep.shape != (B, S):
        raise ValueError(f"keep must be a (blocks, slots) = {(B, S)} boolean array, got {keep.shape}")
    bb, jj = np.nonzero(keep)
    if bb.size == 0:
        raise ValueError("keep selects no epoch")
    idx = np.round((stimulus.onsets_ms[jj][:, None] + rel[None, :] - t[0]) / every).astype(np.int64)
    if idx.min() < 0 or idx.max() >= t.size:
        raise ValueError("epochs reach outside the recorded time: lower pre_ms/post_ms")
    out = {}
    for name in variables:
        if name not in ds:
            raise ValueError(f"cut_epochs: the Dataset has no variable {name!r}")
        da = ds[name].transpose("trial", "time", ...)
        vals = da.values[bb[:, None], idx]  # (E, Te, ...)
        out[name] = (("trial", "time") + da.dims[2:], vals, da.attrs)
    coords = {
        "time": ("time", rel, {"units": "ms", "long_name": "time from stimulus onset"}),
        "block": ("trial", bb), "slot": ("trial", jj),
        "onset_ms": ("trial", stimulus.onsets_ms[jj], {"units": "ms"}),
        "pattern": ("trial", stimulus.schedule[bb, jj]),
    }
    for name, v in stimulus.labels.items():
        coords[name] = ("trial", np.asarray(v)[bb, jj])
    for name, v in stimulus.conditions.items():
        if name not in stimulus.labels:
            coords[name] = ("trial", np.asarray(v)[bb])
    used = {d for v in out.values() for d in v[0]}
    for name in ds.coords:
        dims = set(ds[name].dims)
        if name not in coords and not dims & {"trial", "time"} and dims <= used:
            coords[name] = ds[name].variable
    return xr.Dataset(out, coords=coords, attrs=dict(ds.attrs))


def spike_trains(ds: xr.Dataset, *, trial_offsets_s=None) -> tuple[list[np.ndarray], xr.Dataset]:
    """Spike times of a :meth:`SpikingCircuit.run` result as one array per recorded neuron,
    the form ``analysis.nwb.write_nwb(spike_times=...)`` takes.

    Trials (blocks) are laid end to end in one session: block ``b`` starts at
    ``trial_offsets_s[b]`` seconds (default ``b * total_ms / 1000``). Returns the list of
    float64 arrays (s, sorted) and a Dataset over dim ``unit_id`` naming each train's
    ``group``, ``area``, ``population``, ``polarity``, ``unit`` and ``neuron``, plus ``trial_start``
    and ``trial_stop`` (s) over dim ``trial`` for the trials table."""
    for name in ("spike_time", "spike_trial", "spike_group", "spike_neuron"):
        if name not in ds:
            raise ValueError(f"spike_trains needs '{name}': run the SpikingCircuit with spike_neurons != 0")
    B = ds.sizes["trial"]
    dur = float(ds.attrs["total_ms"]) / 1000.0
    off = np.arange(B) * dur if trial_offsets_s is None else np.asarray(trial_offsets_s, dtype=np.float64)
    if off.shape != (B,):
        raise ValueError(f"trial_offsets_s must have one entry per trial ({B}), got shape {off.shape}")
    if B > 1 and np.any(np.diff(off) < dur - 1e-12):
        raise ValueError("trial_offsets_s must be increasing and at least one block length apart")
    keep = int(ds.attrs["spike_neurons_per_unit"])
    N = int(ds.attrs["neurons_per_unit"])
    units = ds.group_units.values
    ids = [(g, u * N + k) for g in range(ds.sizes["group"]) for u in range(int(units[g])) for k in range(keep)]
    key = ds.spike_group.values.astype(np.int64) * ds.sizes["neuron"] + ds.spike_neuron.values
    t_sess = ds.spike_time.values + off[ds.spike_trial.values]
    order = np.lexsort((t_sess, key))
    key_s, t_s = key[order], t_sess[order]
    wanted = np.array([g * ds.sizes["neuron"] + n for g, n in ids], dtype=np.int64)
    lo, hi = np.searchsorted(key_s, wanted, "left"), np.searchsorted(key_s, wanted, "right")
    trains = [t_s[a:b].copy() for a, b in zip(lo, hi)]
    g_of = np.array([g for g, _ in ids], dtype=np.int64)
    n_of = np.array([n for _, n in ids], dtype=np.int64)
    table = xr.Dataset(
        {"group": ("unit_id", ds.group.values[g_of]), "area": ("unit_id", ds.group_area.values[g_of]),
         "population": ("unit_id", ds.group_population.values[g_of]),
         "polarity": ("unit_id", ds.group_polarity.values[g_of]), "unit": ("unit_id", n_of // N),
         "neuron": ("unit_id", n_of), "trial_start": ("trial", off), "trial_stop": ("trial", off + dur)},
        coords={"unit_id": np.arange(len(ids))})
    return trains, table


# --------------------------------------------------------------------------- benchmark


def benchmark(target: str, n_neurons: int = 10_000, sim_seconds: float = 10.0, seed: int = 0,
              params: SpikingParams | None = None) -> dict:
    """Real-time factor of the spiking oddball circuit on one Brian2 ``target``.

    Builds the 3-area laminar oddball circuit of ``configs/spiking_oddball.toml`` (identity
    weights, ``CircuitParams(dt=0.5, tau_deep=20, prior_rate=0.01, deep_leak=0.05)``) with a
    width ``n`` that makes about ``n_neurons`` LIF neurons at ``params.neurons_per_unit``
    (default :class:`SpikingParams`), and simulates ``sim_seconds`` of an oddball sequence
    (100 ms tones every 500 ms). ``wall_seconds`` is the ``Network.run`` call (for
    'cpp_standalone' the compiled binary's run). The one-off cost is measured apart as
    ``compile_seconds``: for 'cython', a 10 ms run compiling into a fresh cache (the timed run
    then loads the compiled modules); for 'cpp_standalone', the C++ build; for 'numpy', the
    code generation of a 10 ms run. Returns ``{target, n_neurons, n_units, neurons_per_unit,
    sim_seconds, wall_seconds, realtime_factor (sim / wall), compile_seconds, n_synapses,
    n_spikes}``.
    """
    import brian2 as b2

    from .laminar import CircuitParams
    from .paradigms import Oddball

    if target not in TARGETS:
        raise ValueError(f"unknown Brian2 target {target!r}; choose one of {TARGETS}")
    if not (n_neurons >= 100 and sim_seconds > 0):
        raise ValueError(f"benchmark needs n_neurons >= 100 and sim_seconds > 0, got {n_neurons}, {sim_seconds}")
    # 3 areas: input (l4 on/off, l23 +/-) = 4 groups, areas 1-2: l4 on/off, l23 +/-, l56 on/off = 6 groups
    groups = 16
    params = SpikingParams() if params is None else params
    N = params.neurons_per_unit
    n = max(2, int(round(n_neurons / (groups * N))))
    circ = LaminarCircuit([n, n, n], [np.eye(n), np.eye(n)], precisions=[1, 1, 1],
                          params=CircuitParams(dt=0.5, tau_deep=20, prior_rate=0.01, deep_leak=0.05))
    n_tones = max(1, int(math.ceil((sim_seconds * 1000 - 50) / 500)))
    stim = Oddball(n_channels=n, standard=n / 3, deviances=(max(1.0, n / 4),), p_deviants=(0.2,), n_tones=n_tones,
                   duration_ms=100, soa_ms=500, lead_standards=2).build()
    spk = SpikingCircuit(circ, params)
    conn = spk.connectivity(1)
    n_syn = conn["exc"]["pre"].size + conn["inh"]["pre"].size
    timings: dict = {}
    if target == "cython":
        old = b2.prefs.codegen.runtime.cython.cache_dir
        with tempfile.TemporaryDirectory(prefix="pcsim_cython_cache_") as cache:
            b2.prefs.codegen.runtime.cython.cache_dir = cache
            try:
                t0 = _time.perf_counter()
                spk._simulate(stim, target=target, seed=seed, progress=False, directory=None, duration_ms=10.0)
                compile_s = _time.perf_counter() - t0
                sim = spk._simulate(stim, target=target, seed=seed, progress=False, directory=None,
                                    duration_ms=sim_seconds * 1000, timings=timings)
            finally:
                b2.prefs.codegen.runtime.cython.cache_dir = old
    elif target == "numpy":
        t0 = _time.perf_counter()
        spk._simulate(stim, target=target, seed=seed, progress=False, directory=None, duration_ms=10.0)
        compile_s = _time.perf_counter() - t0
        sim = spk._simulate(stim, target=target, seed=seed, progress=False, directory=None,
                            duration_ms=sim_seconds * 1000, timings=timings)
    else:
        sim = spk._simulate(stim, target=target, seed=seed, progress=False, directory=None,
                            duration_ms=sim_seconds * 1000, timings=timings)
        compile_s = timings["compile"]
    wall = timings["run"]
    return {"target": target, "n_neurons": spk.neurons_per_trial, "n_units": n, "neurons_per_unit": N,
            "sim_seconds": float(sim_seconds), "wall_seconds": wall, "realtime_factor": sim_seconds / wall,
            "compile_seconds": compile_s, "n_synapses": int(n_syn), "n_spikes": int(sim["t"].size)}
