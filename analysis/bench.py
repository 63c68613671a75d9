"""Benchmarks of the analysis package, run by ``pcsim bench NAME``.

- ``latents``: the Lorenz latent benchmark at the field's scale (400 trials x 60 neurons x 100
  bins of 10 ms): every model fitted and scored as in ``configs/lorenz_latents.toml``; prints
  co-bps, PSTH R2, latent R2 and fit seconds per model beside the true-rate ceiling.
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
    from analysis.experiments.lorenz_latents import Config
    from analysis.experiments.models import ModelsSection, fit_and_score
    from analysis.synthetic import lorenz_recording

    p = argparse.ArgumentParser(prog=f"pcsim bench {name}")
    p.add_argument("--n-trials", type=int, default=400)
    p.add_argument("--n-neurons", type=int, default=60)
    p.add_argument("--n-bins", type=int, default=100)
    p.add_argument("--models", nargs="+", default=list(ModelsSection().fit))
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args(args or [])
    cfg = Config(experiment="analysis.experiments.lorenz_latents", seed=opts.seed)
    d = replace(cfg.data, n_trials=opts.n_trials, n_neurons=opts.n_neurons, n_bins=opts.n_bins)
    rec = lorenz_recording(d.n_trials, d.n_neurons, d.n_bins, bin_width=d.bin_ms / 1000, mean_rate_hz=d.mean_rate_hz,
                           n_conditions=d.n_conditions, heldout_fraction=d.heldout_fraction,
                           test_fraction=d.test_fraction, seed=opts.seed)
    _, summary = fit_and_score(rec, replace(cfg.models, fit=tuple(opts.models)), opts.seed, "cpu", progress=True)
    if as_json:
        print(json.dumps(summary))
        return 0
    print(f"Lorenz latents: {d.n_trials} trials x {d.n_neurons} neurons x {d.n_bins} bins of {d.bin_ms:g} ms")
    print(f"{'model':11} {'co-bps':>7} {'PSTH R2':>8} {'latent R2':>9} {'fit s':>7}")
    for model, r in summary.items():
        print(f"{model:11} {r['co_bps']:7.3f} {r.get('psth_r2', float('nan')):8.3f} "
              f"{r.get('latent_r2', float('nan')):9.3f} {r.get('fit_seconds', float('nan')):7.1f}")
    return 0
