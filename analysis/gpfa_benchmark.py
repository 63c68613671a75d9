"""GPFA: pcsim's batched-torch EM against elephant's (Yu et al.'s code, ported to numpy).

Same data (a Lorenz-driven Poisson population, :func:`analysis.synthetic.lorenz_recording`,
400 trials x 60 neurons x 100 bins of 10 ms by default; elephant gets the training trials'
counts as neo SpikeTrains, each spike at a random time inside its bin, and bins them back at
the same 10 ms), same latent dimensionality, same EM iteration cap and the same convergence
rule and tolerance (Yu et al.'s relative criterion, which both implement). Both fit on every
neuron of the training trials and infer latents from every neuron; latent R^2 is the
affine-map recovery of the true Lorenz state (fitted on training trials, scored on test
trials; :func:`analysis.metrics.latent_r2`). Both run on the same number of CPU threads
(``--threads``, default 1: the machine may be shared).

Ours runs twice: on whole trials (the default of :class:`analysis.models.GPFA`) and on
20-bin segments (``segment_bins=20``, the training scheme of Yu et al.'s code and elephant).
Prints, per latent dimensionality: fit seconds (total, including our GLM readout, and EM
alone), seconds per EM iteration, the speed ratios, iterations run, whether the tolerance
was met, the whole-trial log-likelihood of each fitted parameter set (one function,
:func:`analysis.models.gpfa.gpfa_posterior`, for all three), latent R^2 and timescales.
``--json`` prints the same as JSON.

    pcsim bench gpfa [--latents 3 8] [--max-iter 200] [--json]
    python benchmarks/gpfa_vs_elephant.py [same options]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import time
import warnings

import numpy as np
import torch

from analysis.metrics import latent_r2
from analysis.models import GPFA
from analysis.models.gpfa import GPFAParams, gpfa_posterior
from analysis.synthetic import lorenz_recording


def counts_to_spiketrains(counts: np.ndarray, bin_width: float, rng: np.random.Generator) -> list:
    """Counts ``(trial, time, neuron)`` -> list (trial) of lists (neuron) of ``neo.SpikeTrain``,
    each spike at a uniform random time inside its bin (kept 5 % away from the edges so that
    re-binning at ``bin_width`` seconds gives the counts back)."""
    import neo
    n_trials, n_bins, n_neurons = counts.shape
    out = []
    for n in range(n_trials):
        row = []
        for j in range(n_neurons):
            k = counts[n, :, j]
            t = (np.repeat(np.arange(n_bins), k) + rng.uniform(0.05, 0.95, k.sum())) * bin_width
            row.append(neo.SpikeTrain(np.sort(t), t_start=0.0, t_stop=n_bins * bin_width, units="s"))
        out.append(row)
    return out


def run(n_trials=400, n_neurons=60, n_bins=100, n_conditions=8, latents=(3, 8), max_iter=200, tol=1e-6,
        seed=0, skip_elephant=False) -> dict:
    """Fit both implementations for each latent dimensionality; returns a dict of results."""
    rec = lorenz_recording(n_trials, n_neurons, n_bins, n_conditions=n_conditions, seed=seed)
    rec = rec.drop_vars("heldout")                  # both models see (and infer from) every neuron
    bin_width = float(rec.attrs["bin_width"])
    train = rec["split"].values == "train"
    true = rec["latents"]
    out = {"data": {"n_trials": n_trials, "n_train": int(train.sum()), "n_neurons": n_neurons, "n_bins": n_bins,
                    "bin_width_ms": bin_width * 1e3, "n_conditions": n_conditions, "seed": seed},
           "max_iter": max_iter, "tol": tol, "threads": torch.get_num_threads(), "results": []}
    if not skip_elephant:
        import quantities as pq
        from elephant.gpfa import GPFA as ElephantGPFA
        rng = np.random.default_rng(seed)
        spikes = counts_to_spiketrains(rec["counts"].values, bin_width, rng)
        spikes_train = [s for s, keep in zip(spikes, train) if keep]
    train_rec = rec.isel(trial=np.flatnonzero(train))
    y_train = torch.as_tensor(np.sqrt(train_rec["counts"].values), dtype=torch.float64)
    for q in latents:
        row = {"n_latents": q}
        for name, seg in (("ours", None), ("ours_seg20", 20)):
            ours = GPFA(n_latents=q, max_iter=max_iter, tol=tol, segment_bins=seg).fit(train_rec)
            z = ours.transform(rec)
            row[name] = {"fit_seconds": ours.fit_seconds_, "em_seconds": ours.em_seconds_,
                         "seconds_per_iter": ours.em_seconds_ / max(ours.n_iter_, 1),
                         "n_iter": ours.n_iter_, "converged": bool(ours.converged_),
                         # whole-trial marginal log-likelihood of the fitted parameters, for every variant
                         "log_likelihood": gpfa_posterior(y_train, ours.params_, with_cov=False).log_likelihood,
                         "latent_r2": latent_r2(z[train], true[train], z[~train], true[~train]),
                         "tau_ms": np.round(ours.tau_ms_, 1).tolist()}
        if not skip_elephant:
            np.random.seed(seed)                    # elephant cuts training segments with numpy's global RNG
            theirs = ElephantGPFA(bin_size=bin_width * 1000 * pq.ms, x_dim=q, em_max_iters=max_iter, em_tol=tol)
            t0 = time.perf_counter()
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                theirs.fit(spikes_train)
            fit_s = time.perf_counter() - t0
            with contextlib.redirect_stdout(io.StringIO()):
                lat = theirs.transform(spikes)      # object array of (q, T) per trial
            ze = np.stack([np.asarray(x).T for x in lat])
            lls = [v for v in theirs.fit_info["log_likelihoods"] if np.isfinite(v)]
            n_iter = len(theirs.fit_info["log_likelihoods"])
            em_s = float(np.sum(theirs.fit_info["iteration_time"]))
            pe = theirs.params_estimated
            their_params = GPFAParams(*(torch.as_tensor(np.array(v, float)) for v in
                                        (pe["C"], pe["d"], np.diag(pe["R"]), pe["gamma"], pe["eps"])))
            row["elephant"] = {"fit_seconds": fit_s, "em_seconds": em_s, "seconds_per_iter": em_s / max(n_iter, 1),
                               "n_iter": n_iter, "converged": n_iter < max_iter,
                               "log_likelihood": gpfa_posterior(y_train, their_params, with_cov=False).log_likelihood,
                               "log_likelihood_segments": float(lls[-1]),
                               "latent_r2": latent_r2(ze[train], true.values[train], ze[~train], true.values[~train]),
                               "tau_ms": np.round(bin_width * 1000 / np.sqrt(theirs.params_estimated["gamma"]), 1).tolist()}
            for name in ("ours", "ours_seg20"):
                row[f"speedup_fit_{name}"] = fit_s / row[name]["fit_seconds"]
                row[f"speedup_per_iter_{name}"] = row["elephant"]["seconds_per_iter"] / row[name]["seconds_per_iter"]
        out["results"].append(row)
    return out


def _print_table(res: dict) -> None:
    d = res["data"]
    print(f"GPFA on lorenz_recording({d['n_trials']}, {d['n_neurons']}, {d['n_bins']}, n_conditions={d['n_conditions']}):"
          f" {d['n_train']} training trials, {d['bin_width_ms']:g} ms bins; EM cap {res['max_iter']} iterations,"
          f" tol {res['tol']:g} (Yu et al.'s relative criterion), {res['threads']} thread(s)")
    print("ours = whole trials (default); ours_seg20 = trained on 20-bin segments like elephant; "
          "LL = whole-trial log-likelihood of the fitted parameters")
    head = (f"{'q':>2} {'impl':<10} {'fit s':>7} {'EM s':>7} {'ms/iter':>8} {'iters':>5} {'conv':>5} "
            f"{'LL':>11} {'latent R2':>9}  tau (ms)")
    print(head)
    print("-" * len(head))
    for row in res["results"]:
        for name in ("ours", "ours_seg20", "elephant"):
            if name not in row:
                continue
            r = row[name]
            print(f"{row['n_latents']:>2} {name:<10} {r['fit_seconds']:>7.2f} {r['em_seconds']:>7.2f} "
                  f"{1e3 * r['seconds_per_iter']:>8.1f} {r['n_iter']:>5} {str(r['converged']):>5} "
                  f"{r['log_likelihood']:>11.1f} {r['latent_r2']:>9.3f}  {r['tau_ms']}")
        for name in ("ours", "ours_seg20"):
            if f"speedup_fit_{name}" in row:
                print(f"   speed-up elephant / {name}: fit {row[f'speedup_fit_{name}']:.1f}x, "
                      f"per EM iteration {row[f'speedup_per_iter_{name}']:.1f}x")


def main(argv=None) -> int:
    """Command line: parse ``argv``, pin the thread count, run, print a table or JSON; returns 0."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n-trials", type=int, default=400)
    p.add_argument("--n-neurons", type=int, default=60)
    p.add_argument("--n-bins", type=int, default=100)
    p.add_argument("--n-conditions", type=int, default=8)
    p.add_argument("--latents", type=int, nargs="+", default=[3, 8])
    p.add_argument("--max-iter", type=int, default=200, help="EM iteration cap, for both (default 200)")
    p.add_argument("--tol", type=float, default=1e-6, help="EM relative tolerance, for both (default 1e-6)")
    p.add_argument("--threads", type=int, default=1, help="CPU threads for torch and numpy's BLAS (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-elephant", action="store_true")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    try:
        from threadpoolctl import threadpool_limits
        limit = threadpool_limits(args.threads)
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        limit = contextlib.nullcontext()
    with limit:
        res = run(args.n_trials, args.n_neurons, args.n_bins, args.n_conditions, tuple(args.latents),
                  args.max_iter, args.tol, args.seed, args.skip_elephant)
    if args.json:
        json.dump(res, sys.stdout, indent=2)
        print()
    else:
        _print_table(res)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
