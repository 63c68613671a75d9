"""Running a translated circuit in Brian2: one network per run, in its own scope and device."""

from __future__ import annotations

import math
import sys
import tempfile
import time as _time

import numpy as np

from ..paradigms import Stimulus

__all__ = ["TARGETS", "simulate"]

TARGETS = ("numpy", "cython", "cpp_standalone")
# printed (with progress on) before a run that compiles: the first one takes tens of seconds
COMPILE_NOTE = {
    "cython": "compiling the Brian2 network for the cython target (first run ~20-40 s, cached afterwards; "
              "target = 'numpy' needs no compiler)",
    "cpp_standalone": "compiling the Brian2 network for the cpp_standalone target (~20-60 s at every run without "
                      "a fixed directory; target = 'numpy' needs no compiler)",
}


def simulate(spk, stimulus: Stimulus, *, target: str, seed: int, progress: bool, directory: str | None,
              duration_ms: float | None = None, timings: dict | None = None) -> dict:
    """Build and run the Brian2 network in its own scope (and, for 'cpp_standalone', its own
    device, reset afterwards). Returns the spikes as ``trial``, ``neuron`` (index within the
    trial copy) and ``t`` (s) arrays, the prior ``final_prior`` (B, n_top), the run's
    ``wall`` seconds and the cue grid the prior synapses saw (``cue_grid``, ``cue_dt_ms``)."""
    import brian2 as b2

    B, n_in, L, p = stimulus.blocks, stimulus.n_in, spk.layout, spk.params
    M, N = L.neurons_per_trial, L.N
    duration_ms = float(stimulus.total_ms) if duration_ms is None else float(duration_ms)
    const = spk._neuron_constants(B, n_in)
    conn = spk.connectivity(B)
    s0, m0 = spk._initial_s(B)
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

    c = spk.code
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
    n_top = spk.graph.prior_mean.numel()
    prior_pre, prior_w = spk._prior_synapses(B)

    old_target = b2.prefs.codegen.target
    standalone = target == "cpp_standalone"
    tmp = None
    try:
        if standalone:
            tmp = tempfile.TemporaryDirectory(prefix="pcsim_brian2_") if directory is None else None
            b2.set_device("cpp_standalone", directory=directory or tmp.name, build_on_run=False)
        else:
            b2.prefs.codegen.target = target
        if progress:
            from tqdm.auto import tqdm

            if target != "numpy":
                # the first run of a network generates and compiles its code, from setting the
                # groups' variables on, before the first progress report: say so before any of it,
                # or the terminal stays silent for half a minute
                tqdm.write(COMPILE_NOTE[target], file=sys.stderr)
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
        if prior_pre.size and spk.graph.prior_rate > 0:
            Sp = b2.Synapses(G, P, "w : 1 (constant)", on_pre="m_post += w * cue(t)", clock=step, namespace=ns,
                             name="prior_synapses")
            Sp.connect(i=prior_pre, j=prior_w[1])
            Sp.w = prior_w[0]
            objs.append(Sp)
        mon = b2.SpikeMonitor(G, name="spikes")
        net = b2.Network(*objs, mon)
        report, bar = None, None
        if progress and not standalone:
            bar = tqdm(total=100, desc=f"brian2 ({target})" + (": compiling" if target != "numpy" else ""),
                       leave=False, unit="%")

            def report(elapsed, completed, start, duration):  # noqa: ARG001
                if bar.n == 0 and target != "numpy":
                    bar.set_description(f"brian2 ({target}): simulating", refresh=False)
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
