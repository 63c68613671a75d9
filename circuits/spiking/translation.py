"""The translation of a :class:`~circuits.graph.CircuitGraph` into LIF neuron groups and
synapses (see :mod:`circuits.spiking` for the scheme): :class:`SpikingCircuit`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import xarray as xr

from pcsim.errors import ConfigError, DataError
from pcsim.arguments import check_number

from ..graph import CircuitGraph
from ..laminar import LaminarCircuit
from ..paradigms import Stimulus
from .decoding import decode
from .params import SpikingParams
from .rate_code import rate_code
from .runner import TARGETS, simulate

__all__ = ["SpikingCircuit"]


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
            raise ConfigError(f"circuit: SpikingCircuit needs a LaminarCircuit or CircuitGraph, got {type(circuit).__name__}")
        if not isinstance(params, SpikingParams):
            raise ConfigError(f"params: must be SpikingParams, got {type(params).__name__}")
        self.graph, self.params = graph, params
        self.code = rate_code(params)
        self._index = {p.name: q for q, p in enumerate(graph.populations)}
        for p in graph.populations:
            if p.kind not in ("input", "relay", "rectified", "integrator"):
                raise ConfigError(f"population '{p.name}' has unknown kind {p.kind!r}")
            if p.kind == "integrator" and p.activation != "linear":
                raise ConfigError(f"population '{p.name}' has activation {p.activation!r}: the spiking translation "
                                 "needs linear activations (f' = 1 for the gated input)")
        for pr in graph.projections:
            for end in (pr.source, pr.target):
                if end not in self._index:
                    raise ConfigError(f"projection {pr.source} -> {pr.target} names unknown population '{end}'")
            if pr.transfer != "linear":
                raise ConfigError(f"projection {pr.source} -> {pr.target} has transfer {pr.transfer!r}: the spiking "
                                 "translation carries linear rate codes only")
            n_s, n_t = graph.populations[self._index[pr.source]].size, graph.populations[self._index[pr.target]].size
            if tuple(pr.weight.shape) != (n_s, n_t):
                raise ConfigError(f"projection {pr.source} -> {pr.target} weight must be {(n_s, n_t)}, "
                                 f"got {tuple(pr.weight.shape)}")
        for name in list(graph.bias) + list(graph.prior_inputs) + list(graph.prior_errors):
            if name not in self._index:
                raise ConfigError(f"the graph's bias/prior names unknown population '{name}'")
        fastest = min((p.tau_ms for p in graph.populations if p.kind != "integrator"), default=math.inf)
        if params.lag_ms > fastest / 2:
            raise ConfigError(f"SpikingParams.lag_ms = {params.lag_ms} ms must be at most half the fastest population "
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
            raise ConfigError("the circuit graph has no populations")

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
        trials = check_number("trials", trials, integer=True, ge=1)
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
                    raise DataError(f"stimulus has {n_in} input channels but population '{p.name}' has {p.size} units")
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
        ``trial`` (the blocks, with their conditions) and ``time`` (s from block start,
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
        numpy and cython runs are reproducible. Raises ConfigError for an unknown target, a
        stimulus of the wrong width or with input noise, or bad recording settings.
        """
        if not isinstance(stimulus, Stimulus):
            raise ConfigError(f"run needs a circuits.paradigms.Stimulus, got {type(stimulus).__name__}")
        if target not in TARGETS:
            raise ConfigError(f"unknown Brian2 target {target!r}; choose one of {TARGETS}")
        if stimulus.noise_std > 0:
            raise ConfigError("the spiking translation drives the input populations with the noiseless stimulus; "
                             f"got noise_std = {stimulus.noise_std} (the LIF neurons bring their own noise)")
        inputs = [p for p in self.graph.populations if p.kind == "input"]
        if inputs and inputs[0].size != stimulus.n_in:
            raise DataError(f"stimulus has {stimulus.n_in} input channels but population '{inputs[0].name}' "
                             f"has {inputs[0].size} units")
        p = self.params
        smooth_ms = p.smooth_ms if smooth_ms is None else float(smooth_ms)
        record_every_ms = check_number("record_every_ms", record_every_ms, gt=0)
        smooth_ms = check_number("smooth_ms", smooth_ms, ge=0)
        count_bin_ms = None if count_bin_ms is None else check_number("count_bin_ms", count_bin_ms, gt=0)
        spike_neurons = None if spike_neurons is None else check_number("spike_neurons", spike_neurons, integer=True,
                                                                         ge=0)
        seed = check_number("seed", seed, integer=True, ge=0)
        total_ms = float(stimulus.total_ms)
        if total_ms < record_every_ms:
            raise ConfigError(f"the stimulus lasts {total_ms} ms, less than one record bin ({record_every_ms} ms)")
        timings: dict = {}
        sim = simulate(self, stimulus, target=target, seed=int(seed), progress=progress, directory=directory,
                       timings=timings)
        ds = decode(self, stimulus, sim, record_every_ms, smooth_ms, count_bin_ms, spike_neurons)
        ds.attrs.update(target=target, seed=int(seed), wall_seconds=sim["wall"])
        if "compile" in timings:
            ds.attrs["compile_seconds"] = timings["compile"]
        return ds

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
                    raise ConfigError(f"prior error population '{name}' has {grp.size} units, the prior {n_top}")
                for b in range(trials):
                    idx = b * M + grp.unit_offset * N + np.arange(grp.size * N)
                    pre.append(idx)
                    post.append(b * n_top + np.repeat(np.arange(grp.size), N))
                    w.append(np.full(idx.size, sign * grp.polarity * g.prior_rate * 1000.0 / (c.gain_hz * N)))
        return np.concatenate(pre), (np.concatenate(w), np.concatenate(post))

    def _group_of(self, nrn: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Group index and index within the group of neuron indices within a trial."""
        L, N = self.layout, self.layout.N
        starts = np.array([g.unit_offset * N for g in L.groups])
        gidx = np.searchsorted(starts, nrn, side="right") - 1
        return gidx, nrn - starts[gidx]
