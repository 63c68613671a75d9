"""Benchmarks of the analysis package, run by ``pcsim bench NAME``.

- ``latents``: the Lorenz latent benchmark at the field's scale (400 trials x 60 neurons x 100
  bins of 10 ms): every model fitted and scored as in ``configs/lorenz_latents.toml``; prints
  co-bps, fp-bps, PSTH R2, latent R2 and fit seconds per model beside the true-rate ceiling (and
  LFADS's active initial-condition units, its posterior-collapse diagnostic).
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
    from analysis.experiments.models import ModelsSection
    from pcsim.registry import RunContext

    p = argparse.ArgumentParser(prog=f"pcsim bench {name}")
    p.add_argument("--n-trials", type=int, default=400)
    p.add_argument("--n-neurons", type=int, default=60)
    p.add_argument("--n-bins", type=int, default=100)
    p.add_argument("--models", nargs="+", default=list(ModelsSection().fit))
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args(args or [])
    cfg = lorenz_latents.Config(experiment="analysis.experiments.lorenz_latents", seed=opts.seed)
    cfg = replace(cfg, data=replace(cfg.data, n_trials=opts.n_trials, n_neurons=opts.n_neurons, n_bins=opts.n_bins),
                  models=replace(cfg.models, fit=tuple(opts.models)))
    d = cfg.data
    summary = lorenz_latents.run(cfg, RunContext(out_dir=Path("."), device="cpu", progress=True)).summary
    if as_json:
        print(json.dumps(summary))
        return 0
    print(f"Lorenz latents: {d.n_trials} trials x {d.n_neurons} neurons x {d.n_bins} bins of {d.bin_ms:g} ms")
    print(f"{'model':11} {'co-bps':>7} {'fp-bps':>7} {'PSTH R2':>8} {'latent R2':>9} {'fit s':>7} {'active':>6}")
    nan = float("nan")
    for model, r in summary.items():
        print(f"{model:11} {r['co_bps']:7.3f} {r.get('fp_bps', nan):7.3f} {r.get('psth_r2', nan):8.3f} "
              f"{r.get('latent_r2', nan):9.3f} {r.get('fit_seconds', nan):7.1f} "
              f"{'' if 'active_units' not in r else int(r['active_units']):>6}")
    return 0
