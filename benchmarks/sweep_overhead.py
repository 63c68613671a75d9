"""The Dask path of ``pcsim sweep``: its per-point overhead and its speed-up on 2 local workers.

``python benchmarks/sweep_overhead.py [--repeats N] [--points N] [--epochs N] [--by-hand] [--json]``

1. **Overhead.** A trivial experiment (its ``run`` returns at once; written to a temporary
   module) swept over ``--points`` points (default 16): the same points run one after another in
   this process by :func:`pcsim.sweep.run_point` (what a worker calls), against
   :func:`pcsim.sweep.run_sweep` on a LocalCluster of 1 worker process. The difference per point
   is the Dask path's overhead, the cluster's start-up (worker process spawn, imports)
   included and spread over the points: ``(t_dask - t_sequential) / points``. Target: < 1 s.
2. **Speed-up.** A 16-point grid of a short real experiment (``configs/pc_vs_bp_digits.toml``
   with only standard PC, 1 epoch, ``inference.steps`` 5, 10 x ``training.lr`` 1e-3, 2e-3 x 4
   seeds): sequentially in this process against ``run_sweep`` on 2 local worker processes, in
   one run. Target: >= 1.7x. With ``--by-hand`` the same 16 points are also timed as one
   ``python -m pcsim run`` process after another (what a sweep was before ``pcsim sweep``: each
   pays its imports), against the same Dask times. The same grid on a cluster of 1 worker is
   timed too: 1 worker against 2 is the parallel speed-up of the Dask path alone, both paying
   one cluster start-up and the first point's imports (the in-process sequential loop has them
   done after its first repeat). These Dask arms run every point alone (``batch=False``); the
   last arm runs the grid as ``pcsim sweep`` does by default, the 8 points of each
   ``inference.steps`` (4 seeds x 2 learning rates) as one PC ensemble (``run_batched``), on 2
   workers.
3. **The machine's ceiling**, measured in the same run: the throughput of two independent
   CPU-bound processes side by side against one alone (a pure-Python loop, and a single-threaded
   torch loop of the small case's products), ``2 t_alone / t_side_by_side``. On two vCPUs that
   share a physical core or a host's turbo budget this is well under 2, and no scheduler can
   beat it: the speed-up is also reported as a fraction of this ceiling.

The Dask times include the cluster's start-up: each worker process imports torch, xarray,
matplotlib and pcsim once (2-3 s on a quiet machine, 10-20 s on a heavily shared one), which a
grid of points lasting a few seconds each does not amortise.

Each repeat measures both orders' halves back to back (sequential first on even repeats,
Dask first on odd ones), and the medians and the ranges over repeats are reported, because
the machine may be shared (the load average at the start is printed beside them).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's pcsim, also for the spawned workers

from pcsim import parallel  # noqa: E402
from pcsim.sweep import plan_sweep, run_point, run_sweep  # noqa: E402

TRIVIAL = '''\
"""Trivial experiment for the sweep benchmark: returns at once."""
from dataclasses import dataclass, field

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from pcsim.config import ExperimentConfig
from pcsim.registry import ExperimentResult


@dataclass(frozen=True, kw_only=True)
class Section:
    x: float = 0.0


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    point: Section = field(default_factory=Section)


def run(config, ctx):
    value = np.array([config.point.x + config.seed])
    ds = xr.Dataset({"value": ("i", value, {"units": "1", "long_name": "value"})},
                    coords={"i": ("i", [0], {"units": "1", "long_name": "index"})})
    return ExperimentResult(ds, {"value": float(value[0])})


def plot(results):
    return {}
'''

def short(epochs: int) -> list[str]:
    """The overrides that make pc_vs_bp_digits a short point: standard PC only, ``epochs`` epochs."""
    return ["training.rules=[\"pc\"]", f"training.epochs={epochs}", "alignment.steps=[1]", "alignment.nudges=[1.0]",
            "alignment.probe_size=64"]
SHORT_GRID = ["inference.steps=5,10", "training.lr=0.001,0.002"]


def _sequential(plan) -> float:
    t0 = time.perf_counter()
    for point in plan.points:
        record = run_point(str(plan.config_path.resolve()), point.overrides, str((plan.out / point.name).resolve()),
                           config_toml=point.config_toml)
        if record["state"] != "complete":
            raise RuntimeError(f"point {point.name} failed: {record['error']}")
    return time.perf_counter() - t0


def _processes(plan) -> float:
    """The points as a user runs them by hand today: one ``python -m pcsim run`` after another."""
    import subprocess

    t0 = time.perf_counter()
    for point in plan.points:
        command = [sys.executable, "-m", "pcsim", "run", str(plan.config_path), "--out", str(plan.out / point.name),
                   "--no-progress", *(arg for override in point.overrides for arg in ("--set", override))]
        subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _dask(plan) -> float:
    t0 = time.perf_counter()
    outcome = run_sweep(plan, progress=False)
    if outcome.failures or outcome.ran != len(plan.points):
        raise RuntimeError(f"the sweep ran {outcome.ran} points, {len(outcome.failures)} failed")
    return time.perf_counter() - t0


def measure(config: Path, grid, seeds: int, overrides, workers: int, scratch: Path, repeat: int) -> tuple[float, float]:
    """(sequential seconds, Dask seconds) of one repeat, each into a fresh directory; every
    point its own run on both sides (no batching: this times the Dask path itself)."""
    def plan(tag):
        return plan_sweep(config, grid=grid, seeds=seeds, overrides=overrides, workers=workers, batch=False,
                          out=scratch / f"{config.stem}_{tag}_{repeat}")

    seq_plan, dask_plan = plan("seq"), plan("dask")
    if repeat % 2 == 0:
        t_seq = _sequential(seq_plan)
        t_dask = _dask(dask_plan)
    else:
        t_dask = _dask(dask_plan)
        t_seq = _sequential(seq_plan)
    return t_seq, t_dask


def one_worker(config: Path, grid, seeds: int, overrides, scratch: Path, repeat: int) -> float:
    """Seconds of the same sweep on a LocalCluster of 1 worker (start-up included), unbatched."""
    return _dask(plan_sweep(config, grid=grid, seeds=seeds, overrides=overrides, workers=1, batch=False,
                            out=scratch / f"{config.stem}_one_{repeat}"))


def batched(config: Path, grid, seeds: int, overrides, scratch: Path, repeat: int) -> float:
    """Seconds of the same sweep as ``pcsim sweep`` runs it by default on 2 workers: the points
    that differ only in seed and training.lr batched into one PC ensemble per run (two runs of
    8 points here, one per ``inference.steps``)."""
    return _dask(plan_sweep(config, grid=grid, seeds=seeds, overrides=overrides, workers=2,
                            out=scratch / f"{config.stem}_batched_{repeat}"))


_LOOPS = {
    "python": "s = 0\nfor i in range(12_000_000):\n    s += i * i\n",
    "torch": ("import torch\ntorch.set_num_threads(1)\nx = torch.randn(64, 128)\nw = torch.randn(128, 128)\n"
              "for _ in range(40_000):\n    x = torch.tanh(x @ w) * 0.1\n"),
}


def ceiling(repeats: int = 3) -> dict:
    """The machine's parallel ceiling for 2 processes: per kind of loop (:data:`_LOOPS`), the
    median over ``repeats`` of ``2 t_alone / t_side_by_side`` (seconds of one loop alone and of
    the slower of two identical loops started together), imports excluded (each loop times itself)."""
    import subprocess

    def timed(code: str, n: int) -> float:
        prog = f"import time\n{code.split('for ')[0]}t0 = time.perf_counter()\nfor {code.split('for ', 1)[1]}" \
               "print(time.perf_counter() - t0)\n"
        procs = [subprocess.Popen([sys.executable, "-c", prog], stdout=subprocess.PIPE, text=True) for _ in range(n)]
        return max(float(p.communicate()[0]) for p in procs)

    out = {}
    for name, code in _LOOPS.items():
        ratios = []
        for _ in range(repeats):
            alone, both = timed(code, 1), timed(code, 2)
            ratios.append(2 * alone / both)
        out[name] = {"ceiling": ratios, "median_ceiling": statistics.median(ratios)}
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--points", type=int, default=16, help="points of the overhead grid")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--skip-speedup", action="store_true")
    parser.add_argument("--epochs", type=int, default=1,
                        help="epochs of each point of the speed-up grid (the points' length; start-up is amortised over it)")
    parser.add_argument("--by-hand", action="store_true",
                        help="also time the 16 points as separate `python -m pcsim run` processes, one after another")
    args = parser.parse_args(argv)

    load = os.getloadavg()[0]
    results: dict = {"cores": parallel.allowed_cores(), "load_average_1min": load}
    with tempfile.TemporaryDirectory(prefix="pcsim_sweep_bench_") as tmp:
        scratch = Path(tmp)
        (scratch / "modules").mkdir()
        (scratch / "modules" / "pcsim_sweep_bench_trivial.py").write_text(TRIVIAL, encoding="utf-8")
        sys.path.insert(0, str(scratch / "modules"))
        trivial = scratch / "trivial.toml"
        trivial.write_text('experiment = "pcsim_sweep_bench_trivial"\n', encoding="utf-8")
        values = ",".join(str(float(i)) for i in range(args.points))
        overhead = [measure(trivial, [f"point.x={values}"], None, (), 1, scratch, r) for r in range(args.repeats)]
        per_point = [(d - s) / args.points for s, d in overhead]
        results["overhead"] = {
            "points": args.points, "sequential_s": [s for s, _ in overhead], "dask_1_worker_s": [d for _, d in overhead],
            "per_point_overhead_s": per_point, "median_per_point_overhead_s": statistics.median(per_point)}
        print(f"overhead: {args.points} trivial points, sequential {_spread([s for s, _ in overhead])} s, "
              f"Dask (1 worker, start-up included) {_spread([d for _, d in overhead])} s -> "
              f"{_spread(per_point, 3)} s per point (target < 1 s)", file=sys.stderr)
        if not args.skip_speedup:
            config = ROOT / "configs" / "pc_vs_bp_digits.toml"
            timed = [measure(config, SHORT_GRID, 4, short(args.epochs), 2, scratch, r) for r in range(args.repeats)]
            ones = [one_worker(config, SHORT_GRID, 4, short(args.epochs), scratch, r) for r in range(args.repeats)]
            batch = [batched(config, SHORT_GRID, 4, short(args.epochs), scratch, r) for r in range(args.repeats)]
            speedups = [s / d for s, d in timed]
            vs_one = [o / d for o, (_, d) in zip(ones, timed)]
            vs_batch = [s / b for (s, _), b in zip(timed, batch)]
            results["speedup"] = {
                "points": 16, "workers": 2, "epochs_per_point": args.epochs, "sequential_s": [s for s, _ in timed],
                "dask_2_workers_s": [d for _, d in timed], "dask_1_worker_s": ones, "speedup": speedups,
                "median_speedup": statistics.median(speedups), "speedup_vs_1_worker": vs_one,
                "median_speedup_vs_1_worker": statistics.median(vs_one), "batched_2_workers_s": batch,
                "speedup_batched": vs_batch, "median_speedup_batched": statistics.median(vs_batch)}
            print(f"speed-up: 16 points of pc_vs_bp_digits (PC, {args.epochs} epoch(s)), sequential in one process "
                  f"{_spread([s for s, _ in timed])} s, 2 workers {_spread([d for _, d in timed])} s -> "
                  f"{_spread(speedups, 2)}x (target >= 1.7x); 1 worker {_spread(ones)} s -> "
                  f"{_spread(vs_one, 2)}x; batched (seeds x lr as one ensemble per run), 2 workers "
                  f"{_spread(batch)} s -> {_spread(vs_batch, 2)}x", file=sys.stderr)
            results["ceiling"] = ceiling(args.repeats)
            for name, c in results["ceiling"].items():
                print(f"machine ceiling ({name} loop, 2 processes vs 1): {_spread(c['ceiling'], 2)}x -> the sweep "
                      f"reaches {statistics.median(speedups) / c['median_ceiling']:.2f} of it (in-process "
                      f"sequential), {statistics.median(vs_one) / c['median_ceiling']:.2f} (1 worker)", file=sys.stderr)
            if args.by_hand:
                by_hand = []
                for r in range(args.repeats):
                    plan = plan_sweep(config, grid=SHORT_GRID, seeds=4, overrides=short(args.epochs), out=scratch / f"hand_{r}")
                    by_hand.append(_processes(plan))
                ratio = [h / d for h, d in zip(by_hand, results["speedup"]["dask_2_workers_s"])]
                results["speedup"].update(by_hand_s=by_hand, speedup_vs_by_hand=ratio)
                print(f"speed-up against one `pcsim run` per point: {_spread(by_hand)} s -> {_spread(ratio, 2)}x",
                      file=sys.stderr)
    results["load_average_1min_end"] = os.getloadavg()[0]
    print(f"load average (1 min) {load:.2f} at the start, {results['load_average_1min_end']:.2f} at the end, "
          f"{results['cores']} cores", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


def _spread(values, digits: int = 1) -> str:
    """median [min, max] of ``values``."""
    return (f"{statistics.median(values):.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]")


if __name__ == "__main__":
    raise SystemExit(main())
