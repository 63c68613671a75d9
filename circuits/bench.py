"""``pcsim bench circuits``: speed of the rate circuit and of its Brian2 spiking translation.

- Rate circuit: the oddball circuit of ``configs/oddball_mmn.toml`` (3 areas x 24 units,
  dt = 0.5 ms) runs ``--trials`` (default 1000) oddball blocks of ``--seconds`` simulated
  seconds side by side, recording nothing; throughput = trials x simulated seconds per wall
  second, eager and with ``torch.compile`` (its one-off compile time reported apart).
- Spiking circuit: :func:`spiking_benchmark` builds a translated circuit of about
  ``--neurons`` (default 10,000) LIF neurons and simulates ``--spiking-seconds`` (default 10)
  seconds with each Brian2 code-generation target; real-time factor = simulated / wall
  seconds of the run itself, and the one-off build/compile time.
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
import time

import numpy as np

from pcsim.errors import ConfigError


def rate_throughput(trials: int = 1000, seconds: float = 1.0, device: str = "cpu", compile: bool = False,
                    seed: int = 0) -> dict:
    """Run ``trials`` oddball blocks of ``seconds`` simulated seconds in one batched rate
    simulation; returns wall seconds, trials x simulated seconds per wall second and, with
    ``compile``, the first (compiling) run's extra time as ``compile_seconds``."""
    from .experiments.sections import CircuitSection
    from .paradigms import Oddball

    circ = CircuitSection(n_channels=24, areas=3, dt=0.5, tau_deep=10.0, prior_rate=0.01).build(device)
    soa = 500.0
    n_tones = max(1, int(seconds * 1000 // soa))
    stim = Oddball(n_channels=24, standard=8.0, deviances=(4.0,), p_deviants=(0.1,), n_tones=n_tones, soa_ms=soa,
                   duration_ms=100.0, lead_ms=0.0, lead_standards=0, seeds=tuple(range(seed, seed + trials))).build()
    sim_s = stim.total_ms / 1000.0
    out = {"trials": trials, "simulated_seconds_per_trial": sim_s, "device": device, "compiled": compile,
           "units": circ.n_areas * 4 * 24}

    def once() -> float:
        t = time.perf_counter()
        circ.run(stim, record_every_ms=None, compile=compile)
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()
        return time.perf_counter() - t

    first = once()
    wall = once() if compile else first
    out.update(wall_seconds=wall, throughput_trial_seconds_per_second=trials * sim_s / wall)
    if compile:
        out["compile_seconds"] = max(0.0, first - wall)
    return out


def spiking_benchmark(target: str, n_neurons: int = 10_000, sim_seconds: float = 10.0, seed: int = 0,
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

    from .laminar import CircuitParams, LaminarCircuit
    from .paradigms import Oddball
    from .spiking import TARGETS, SpikingCircuit, SpikingParams
    from .spiking.runner import simulate

    if target not in TARGETS:
        raise ConfigError(f"unknown Brian2 target {target!r}; choose one of {TARGETS}")
    if not (n_neurons >= 100 and sim_seconds > 0):
        raise ConfigError(f"benchmark needs n_neurons >= 100 and sim_seconds > 0, got {n_neurons}, {sim_seconds}")
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

    def run(duration_ms: float, record: dict | None = None) -> dict:
        return simulate(spk, stim, target=target, seed=seed, progress=False, directory=None,
                        duration_ms=duration_ms, timings=record)

    def warm_then_timed() -> tuple[float, dict]:
        # a 10 ms run pays the one-off code generation (and compilation) before the timed run
        t0 = time.perf_counter()
        run(10.0)
        return time.perf_counter() - t0, run(sim_seconds * 1000, timings)

    if target == "cython":
        old = b2.prefs.codegen.runtime.cython.cache_dir
        with tempfile.TemporaryDirectory(prefix="pcsim_cython_cache_") as cache:
            b2.prefs.codegen.runtime.cython.cache_dir = cache
            try:
                compile_s, sim = warm_then_timed()
            finally:
                b2.prefs.codegen.runtime.cython.cache_dir = old
    elif target == "numpy":
        compile_s, sim = warm_then_timed()
    else:
        sim = run(sim_seconds * 1000, timings)
        compile_s = timings["compile"]
    wall = timings["run"]
    return {"target": target, "n_neurons": spk.neurons_per_trial, "n_units": n, "neurons_per_unit": N,
            "sim_seconds": float(sim_seconds), "wall_seconds": wall, "realtime_factor": sim_seconds / wall,
            "compile_seconds": compile_s, "n_synapses": int(n_syn), "n_spikes": int(sim["t"].size)}


def main(name: str, as_json: bool = False, args: list[str] | None = None) -> int:
    """Entry point of ``pcsim bench circuits``; prints a table, or JSON with ``--json``."""
    p = argparse.ArgumentParser(prog=f"pcsim bench {name}")
    p.add_argument("--trials", type=int, default=1000)
    p.add_argument("--seconds", type=float, default=1.0, help="simulated seconds per rate trial")
    p.add_argument("--device", default="cpu")
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile run")
    p.add_argument("--neurons", type=int, default=10_000)
    p.add_argument("--spiking-seconds", type=float, default=10.0)
    p.add_argument("--targets", nargs="*", default=["numpy", "cython", "cpp_standalone"],
                   help="Brian2 targets to time (none: skip the spiking benchmark)")
    p.add_argument("--seed", type=int, default=0)
    o = p.parse_args(args or [])
    if o.trials < 1 or o.seconds <= 0 or o.neurons < 1 or o.spiking_seconds <= 0:
        p.error("--trials, --seconds, --neurons and --spiking-seconds must be positive")
    report: dict = {"rate": [rate_throughput(o.trials, o.seconds, o.device, False, o.seed)]}
    if not o.no_compile:
        report["rate"].append(rate_throughput(o.trials, o.seconds, o.device, True, o.seed))
    if o.targets:
        report["spiking"] = [spiking_benchmark(t, n_neurons=o.neurons, sim_seconds=o.spiking_seconds, seed=o.seed)
                             for t in o.targets]
    if as_json:
        print(json.dumps(report))
        return 0
    print("rate circuit (3 areas x 4 populations x 24 units, dt 0.5 ms)")
    for r in report["rate"]:
        extra = f", compile {r['compile_seconds']:.1f} s" if "compile_seconds" in r else ""
        print(f"  {'compiled' if r['compiled'] else 'eager':8} {r['trials']} trials x {r['simulated_seconds_per_trial']:g} s: "
              f"{r['wall_seconds']:.2f} s wall -> {r['throughput_trial_seconds_per_second']:.0f} trial-s/s{extra}")
    for s in report.get("spiking", []):
        print(f"spiking {s['target']:14} {s['n_neurons']} neurons, {s['sim_seconds']:g} s: wall {s['wall_seconds']:.1f} s, "
              f"real-time factor {s['realtime_factor']:.3f}, compile {s['compile_seconds']:.1f} s")
    return 0
