"""PC vs backprop epoch time and PC's fraction of the machine's matmul throughput (MLP on the digits).

``pcsim bench pc-vs-bp [--json] [--repeats N] [--eager] [--load] [--always-parallel]``.

For an MLP on the digits (small case: 64-128-128-10, batch 64, 22 batches per epoch; wide
case: hidden 512, batch 256, 5 batches) it times, in one run, an epoch of standard PC
(T = 20, Adam) and of the backprop twin, and the *same matrix products alone* (every
product a PC epoch performs, with no other work) to give the machine's matmul throughput.
The PC throughput (its matrix FLOPs per second of epoch time) over that number is the
fraction of the machine's matmul speed that PC reaches. Times are medians over repeats; CPU
seconds (all threads of this process) are reported beside them because they barely depend on
what else runs on the machine.

``--load`` starts one CPU-bound competing process (a Python busy loop) for the duration of the
measurement and stops it afterwards: a cluster node is always shared, and the speed must hold
there. ``--always-parallel`` turns off the thread choice of :mod:`pcsim.parallel` (every
computation uses every thread, the behaviour before it existed) to measure what it buys.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from . import parallel
from .contention import competing_process
from .data import epoch_batches, load_digits
from .inference import InferenceConfig
from .network import PCNetwork
from .optim import Adam
from .rules import StandardPC
from .twin import BackpropTwin

CASES = {"small": (128, 64), "wide": (512, 256)}


def _seconds(fn) -> tuple[float, float]:
    """Wall and CPU seconds of ``fn()``."""
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - t0, time.process_time() - c0


def pc_matmuls(sizes: tuple[int, ...], batch: int, steps: int) -> list[tuple[int, int, int, bool]]:
    """The matrix products of one standard-PC training step, as ``(m, k, n, transposed_rhs)``.

    Feed-forward sweep (L), cached ``mu_1`` (1), errors of layers 2..L at T+1 states (T+1
    each), top-down error propagation to layers 1..L-1 at T steps, and the L Hebbian
    weight-gradient products ``f(x_{l-1})^T eps_l``.
    """
    L = len(sizes) - 1
    mm = [(batch, sizes[k], sizes[k + 1], False) for k in range(L)]  # feed-forward sweep
    mm.append((batch, sizes[0], sizes[1], False))  # mu_1
    for _ in range(steps + 1):
        mm += [(batch, sizes[k], sizes[k + 1], False) for k in range(1, L)]
    for _ in range(steps):
        mm += [(batch, sizes[k + 1], sizes[k], True) for k in range(1, L)]
    mm += [(sizes[k], batch, sizes[k + 1], False) for k in range(L)]
    return mm


def _matmul_alone(products, n_batches: int, generator: torch.Generator):
    def randn(*shape):
        return torch.randn(*shape, generator=generator)

    mats = [(randn(1, m, k), randn(1, n, k).transpose(1, 2) if t else randn(1, k, n)) for m, k, n, t in products]

    def run():
        for _ in range(n_batches):
            for a, b in mats:
                torch.bmm(a, b)

    flops = 2 * n_batches * sum(m * k * n for m, k, n, _ in products)
    return run, flops


def bench_case(hidden: int, batch: int, *, steps: int = 20, repeats: int = 5, compile: bool = True, seed: int = 0) -> dict:
    """Seconds per epoch of PC (T=``steps``) and backprop, and matmul throughput, for one MLP size on the digits.

    ``seed`` fixes the network, the batch order and the random matrices of the matmul-alone run.
    """
    data = load_digits()
    sizes = (64, hidden, hidden, 10)
    gen = torch.Generator().manual_seed(seed)
    batches = epoch_batches(data.x_train.shape[0], batch, gen)
    xs = [data.x_train[i] for i in batches]
    ys = [data.y_train[i] for i in batches]
    net = PCNetwork.init(sizes, "tanh", seed=seed)
    rule = StandardPC(InferenceConfig(steps=steps, dt=1.0, tau=10.0, compile=compile))
    opt = Adam(1e-3)
    twin = BackpropTwin(net, compile=compile)
    bopt = Adam(1e-3)

    def pc_epoch():
        for x, y in zip(xs, ys):
            rule.step(net, opt, x, y)

    def bp_epoch():
        for x, y in zip(xs, ys):
            twin.step(bopt, x, y)

    t0 = time.perf_counter()
    pc_epoch()
    pc_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    bp_epoch()
    bp_first = time.perf_counter() - t0
    mm_run, flops = _matmul_alone(pc_matmuls(sizes, batch, steps), len(xs), gen)
    n_threads = parallel.threads_for(sizes, batch)

    def mm_epoch():
        with parallel.threads(n_threads):  # the products alone, with the threads PC uses for them
            mm_run()

    mm_epoch()
    # interleave the three so slow phases of a noisy machine hit them alike
    pc_t, bp_t, mm_t = [], [], []
    for _ in range(repeats):
        pc_t.append(_seconds(pc_epoch))
        bp_t.append(_seconds(bp_epoch))
        mm_t.append(_seconds(mm_epoch))
    med = lambda ts, i: statistics.median(t[i] for t in ts)  # noqa: E731
    pc, bp, mm = med(pc_t, 0), med(bp_t, 0), med(mm_t, 0)
    return {
        "sizes": list(sizes), "batch": batch, "batches_per_epoch": len(xs), "steps": steps, "compiled": compile,
        "threads": n_threads, "pc_s_per_epoch": pc, "bp_s_per_epoch": bp, "pc_over_bp": pc / bp,
        "pc_cpu_s_per_epoch": med(pc_t, 1), "bp_cpu_s_per_epoch": med(bp_t, 1),
        "matmul_alone_s_per_epoch": mm, "matmul_alone_cpu_s_per_epoch": med(mm_t, 1),
        "matmul_gflops": flops / mm / 1e9, "pc_matmul_gflops": flops / pc / 1e9,
        "pc_fraction_of_matmul": mm / pc, "pc_first_epoch_s": pc_first, "bp_first_epoch_s": bp_first,
    }


def main(name: str, as_json: bool = False, args: list[str] | None = None) -> int:
    """Entry point of ``pcsim bench NAME``: prints a table, or one JSON object with ``--json``."""
    if name != "pc-vs-bp":
        print(f"pcsim: error: unknown benchmark {name!r}; known: pc-vs-bp")
        return 2
    p = argparse.ArgumentParser(prog="pcsim bench pc-vs-bp")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--eager", action="store_true", help="do not torch.compile the inference loop")
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--load", action="store_true", help="run one CPU-bound competing process beside the measurement")
    p.add_argument("--always-parallel", action="store_true",
                   help="use every thread for every computation (turns off pcsim.parallel's choice; for comparison)")
    opts = p.parse_args(args or [])
    if opts.always_parallel:
        parallel.SERIAL_WORK = 0  # this process only: the command line is the place for such a switch
    with competing_process(opts.load):
        out = {c: bench_case(*CASES[c], steps=opts.steps, repeats=opts.repeats, compile=not opts.eager, seed=opts.seed)
               for c in opts.cases}
    out["torch"] = torch.__version__
    out["threads"] = torch.get_num_threads()
    out["load"] = opts.load
    out["always_parallel"] = opts.always_parallel
    if as_json:
        print(json.dumps(out))
        return 0
    print(f"pc-vs-bp on digits, T={opts.steps}, {'eager' if opts.eager else 'compiled'}, {torch.get_num_threads()} threads"
          f"{', beside a CPU-bound process' if opts.load else ''}")
    print(f"{'case':6} {'PC s/epoch':>11} {'BP s/epoch':>11} {'PC/BP':>6} {'matmul s':>9} {'matmul GF/s':>11} {'PC GF/s':>8} {'PC/matmul':>9}")
    for c in opts.cases:
        r = out[c]
        print(f"{c:6} {r['pc_s_per_epoch']:11.4f} {r['bp_s_per_epoch']:11.4f} {r['pc_over_bp']:6.2f} {r['matmul_alone_s_per_epoch']:9.4f} "
              f"{r['matmul_gflops']:11.1f} {r['pc_matmul_gflops']:8.1f} {r['pc_fraction_of_matmul']:9.2f}")
    return 0
