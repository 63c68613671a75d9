"""Benchmarks of the analysis package, run by ``pcsim bench NAME``.

- ``latents``: the Lorenz latent benchmark at the field's scale (400 trials x 60 neurons x 100
  bins of 10 ms): every model fitted and scored as in ``configs/lorenz_latents.toml``; prints
  co-bps, fp-bps, PSTH R2, latent R2, behaviour R2 and fit seconds per model beside the true-rate ceiling (and
  LFADS's active initial-condition units, its posterior-collapse diagnostic).
  ``--speed``: PC and GPFA fit seconds on that data, quiet and beside one CPU-bound process
  (:func:`pcsim.contention.competing_process`), interleaved over ``--repeats``: PC/GPFA in the same
  run and PC's contended/quiet ratio, each per repeat (median, min-max). ``--suite``: every model on
  several generators x data seeds x model seeds (:func:`suite`), per dataset the co-bps of PC, GPFA,
  FA and smoothing, the true-rate ceiling and PC minus GPFA with its spread over model seeds.
- ``gpfa``: our GPFA against elephant's on the same data (:mod:`analysis.gpfa_benchmark`).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace


def main(name: str, as_json: bool = False, args: list[str] | None = None) -> int:
    """Entry point of ``pcsim bench latents|gpfa``; prints a table, or JSON with ``--json``."""
    if name == "gpfa":
        from analysis.gpfa_benchmark import main as gpfa_main

        return gpfa_main([*(args or []), *(["--json"] if as_json else [])])
    from pathlib import Path

    from analysis.experiments import lorenz_latents
    from pcsim.config import load_config
    from pcsim.registry import RunContext

    # the shipped config's model settings (GPFA on 20-bin segments, the PC and LFADS sizes): one
    # declaration of each knob, whether the models run from `pcsim run` or from here
    shipped = load_config(Path(__file__).resolve().parents[1] / "configs" / "lorenz_latents.toml")

    p = argparse.ArgumentParser(prog=f"pcsim bench {name}")
    p.add_argument("--n-trials", type=int, default=400)
    p.add_argument("--n-neurons", type=int, default=60)
    p.add_argument("--n-bins", type=int, default=100)
    p.add_argument("--models", nargs="+", default=list(shipped.models.fit))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--speed", action="store_true", help="time PC and GPFA quiet and beside a CPU-bound process")
    p.add_argument("--repeats", type=int, default=2, help="--speed: interleaved repeats")
    p.add_argument("--suite", action="store_true", help="co-bps on several generators x data seeds x model seeds")
    p.add_argument("--datasets", nargs="+", default=["sinusoid", "gp", "lds", "ring"], help="--suite: generators")
    p.add_argument("--data-seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--model-seeds", type=int, nargs="+", default=[0, 1, 2])
    opts = p.parse_args(args or [])
    if opts.speed:
        res = speed(opts.n_trials, opts.n_neurons, opts.n_bins, opts.repeats, opts.seed, models=shipped.models)
        print(json.dumps(res) if as_json else format_speed(res))
        return 0
    if opts.suite:
        res = suite(opts.datasets, opts.data_seeds, opts.model_seeds, models=tuple(opts.models))
        print(json.dumps(res) if as_json else format_suite(res))
        return 0
    cfg = replace(shipped, seed=opts.seed)
    cfg = replace(cfg, data=replace(cfg.data, n_trials=opts.n_trials, n_neurons=opts.n_neurons, n_bins=opts.n_bins),
                  models=replace(cfg.models, fit=tuple(opts.models)))
    d = cfg.data
    summary = lorenz_latents.run(cfg, RunContext(out_dir=Path("."), device="cpu", progress=True)).summary
    if as_json:
        print(json.dumps(summary))
        return 0
    print(f"Lorenz latents: {d.n_trials} trials x {d.n_neurons} neurons x {d.n_bins} bins of {d.bin_ms:g} ms")
    print(f"{'model':11} {'co-bps':>7} {'fp-bps':>7} {'PSTH R2':>8} {'latent R2':>9} {'behav R2':>8} {'fit s':>7} "
          f"{'active':>6}")
    nan = float("nan")
    for model, r in summary.items():
        print(f"{model:11} {r['co_bps']:7.3f} {r.get('fp_bps', nan):7.3f} {r.get('psth_r2', nan):8.3f} "
              f"{r.get('latent_r2', nan):9.3f} {r.get('behaviour_r2', nan):8.3f} {r.get('fit_seconds', nan):7.1f} "
              f"{'' if 'active_units' not in r else int(r['active_units']):>6}")
    return 0


# ----------------------------------------------------------------------------- speed and suite
def speed(n_trials: int = 400, n_neurons: int = 60, n_bins: int = 100, repeats: int = 2, seed: int = 0,
          models=None) -> dict:
    """Fit seconds of the PC latent model and GPFA (``models``: a models section, default the
    section's own defaults; the ``latents`` benchmark passes the shipped config's) on the Lorenz
    recording, quiet and beside one CPU-bound competing process, interleaved ``repeats`` times so
    that the slow phases of a shared machine hit both alike. Returns the seconds per (load, model)
    and the ratios that the targets are stated in, one per repeat: ``pc_over_gpfa`` (same load, same
    repeat) and ``pc_loaded_over_quiet``."""
    import torch

    from analysis.experiments.models import ModelsSection, build_model
    from analysis.synthetic import lorenz_recording
    from pcsim.contention import competing_process

    rec = lorenz_recording(n_trials, n_neurons, n_bins, n_conditions=8, seed=seed)
    models = ModelsSection() if models is None else models
    seconds = {f"{load}_{name}": [] for load in ("quiet", "loaded") for name in ("gpfa", "pc")}
    for _ in range(repeats):
        for load in ("quiet", "loaded"):
            with competing_process(load == "loaded"):
                for name in ("gpfa", "pc"):
                    seconds[f"{load}_{name}"].append(float(build_model(name, models, seed, "cpu").fit(rec).fit_seconds_))
    ratios = {f"pc_over_gpfa_{load}": [p / g for p, g in zip(seconds[f"{load}_pc"], seconds[f"{load}_gpfa"])]
              for load in ("quiet", "loaded")}
    ratios["pc_loaded_over_quiet"] = [lo / q for lo, q in zip(seconds["loaded_pc"], seconds["quiet_pc"])]
    return {"data": {"n_trials": n_trials, "n_neurons": n_neurons, "n_bins": n_bins, "seed": seed},
            "torch_threads": torch.get_num_threads(), "repeats": repeats, "seconds": seconds, "ratios": ratios}


def _spread(values) -> str:
    import numpy as np

    v = np.asarray(values, float)
    return f"{np.median(v):.2f} [{v.min():.2f}-{v.max():.2f}]"


def format_speed(res: dict) -> str:
    """The table of :func:`speed`: median [min-max] over repeats of every time and ratio."""
    d = res["data"]
    lines = [f"PC vs GPFA fit time, Lorenz {d['n_trials']} trials x {d['n_neurons']} neurons x {d['n_bins']} bins, "
             f"{res['repeats']} interleaved repeats, torch threads {res['torch_threads']} (median [min-max])"]
    lines += [f"  {k:<22} {_spread(v):>24} s" for k, v in res["seconds"].items()]
    lines += [f"  {k:<22} {_spread(v):>24}" for k, v in res["ratios"].items()]
    return "\n".join(lines)


def suite(datasets=("sinusoid", "gp", "lds", "ring"), data_seeds=(0, 1), model_seeds=(0, 1, 2), *, n_trials: int = 100,
          n_neurons: int = 40, n_bins: int = 100, models=("smoothing", "fa", "gpfa", "pc")) -> dict:
    """Co-bps of every model on recordings of several generators (:mod:`analysis.synthetic`; the issue's
    size: 100 trials x 40 neurons x 1 s in 10 ms bins at 10 Hz) and data seeds. Models that take a
    seed (PC) are fitted once per model seed, the others once per recording (their fits do not
    depend on a seed). Returns, per dataset ``"{generator}/{seed}"``, each model's co-bps (a list over
    model seeds for seeded models), the true-rate ceiling and PC minus GPFA per model seed."""
    import inspect

    from analysis import synthetic
    from analysis.experiments.models import MODELS, ModelsSection, fit_and_score

    generators = {"sinusoid": synthetic.sinusoid_recording, "gp": synthetic.gp_recording, "lds": synthetic.lds_recording,
                  "ring": synthetic.ring_recording, "lorenz": synthetic.lorenz_recording}
    seeded = tuple(m for m in models if "seed" in inspect.signature(MODELS[m]).parameters)
    fixed = tuple(m for m in models if m not in seeded)
    out = {}
    for gen in datasets:
        for ds_seed in data_seeds:
            rec = generators[gen](n_trials, n_neurons, n_bins, seed=ds_seed)
            row = {}
            if fixed:
                _, summary = fit_and_score(rec, ModelsSection(fit=fixed), 0, "cpu", progress=False)
                row.update({m: summary[m]["co_bps"] for m in fixed})
                row["true_rates"] = summary["true_rates"]["co_bps"]
            for m in seeded:
                row[m] = []
                for ms in model_seeds:
                    _, summary = fit_and_score(rec, ModelsSection(fit=(m,)), ms, "cpu", progress=False)
                    row[m].append(summary[m]["co_bps"])
                    row["true_rates"] = summary["true_rates"]["co_bps"]
            if "pc" in row and "gpfa" in row:
                row["pc_minus_gpfa"] = [v - row["gpfa"] for v in row["pc"]]
            out[f"{gen}/{ds_seed}"] = row
            print(f"  done {gen}/{ds_seed}: {row}", flush=True)
    return {"size": {"n_trials": n_trials, "n_neurons": n_neurons, "n_bins": n_bins}, "model_seeds": list(model_seeds),
            "datasets": out}


def format_suite(res: dict) -> str:
    """The per-dataset table of :func:`suite`: co-bps per model (PC: mean +- s.d. over model seeds),
    the true-rate ceiling, PC - GPFA (mean, min, max over seeds) and how many fits beat GPFA."""
    import numpy as np

    z = res["size"]
    lines = [f"co-bps, {z['n_trials']} trials x {z['n_neurons']} neurons x {z['n_bins']} bins, model seeds {res['model_seeds']}",
             f"{'dataset':<12} {'PC':>15} {'GPFA':>7} {'FA':>7} {'smooth':>7} {'ceiling':>7} {'PC-GPFA mean [min, max]':>26}"]
    wins = total = 0
    for name, row in res["datasets"].items():
        pc = np.asarray(row.get("pc", [np.nan]), float)
        diff = np.asarray(row.get("pc_minus_gpfa", [np.nan]), float)
        wins += int((diff > 0).sum())
        total += diff.size
        lines.append(f"{name:<12} {pc.mean():7.3f} +- {pc.std():.3f} {row.get('gpfa', np.nan):7.3f} {row.get('fa', np.nan):7.3f} "
                     f"{row.get('smoothing', np.nan):7.3f} {row.get('true_rates', np.nan):7.3f} "
                     f"{diff.mean():+8.3f} [{diff.min():+.3f}, {diff.max():+.3f}]")
    lines.append(f"PC beats GPFA in {wins} of {total} (dataset x model seed) fits")
    return "\n".join(lines)
