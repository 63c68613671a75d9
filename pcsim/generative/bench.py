"""Speed of the generative models on the digits, and pcsim's VAE against the same VAE as a plain PyTorch loop.

``pcsim bench generative [--json] [--repeats N] [--epochs E] [--models ...]``.

On the dequantised 8x8 digits (1437 training images) every model of
``configs/generative_digits.toml`` is built as that experiment builds it (its decoder ``8-64-64``,
relaxation, baselines, batch size and learning rate; :func:`pcsim.experiments.generative.build_model`),
fitted for ``--epochs`` epochs and its test set (360 images) encoded; reported per model: seconds per epoch (fit time / epochs) and seconds per
inference (``encode`` of the test set), medians over ``--repeats``. In the same run the same
VAE is written as the loop a PyTorch user would write (``nn.Linear`` layers, ``torch.optim.Adam``,
float64, the same widths, batch size, learning rate, epochs and one-sample ELBO with a scalar
learned ``log sigma``); ``vae_over_plain`` is pcsim's VAE epoch time over the plain loop's
(target <= 1.2), against the faster of the plain loop with torch's default thread count
(``plain_vae``) and with one thread (``plain_vae_1thread``; pcsim picks the thread count per
layer size, :mod:`pcsim.parallel`, and one thread is what these widths get). The measurements are interleaved (each repeat runs every model once, the
plain loop right after pcsim's VAE), so slow phases of a shared machine hit them alike.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import torch

from pcsim import parallel

from .data import dequantise, digits


#: the experiment config whose model settings the benchmark times (one declaration of each knob)
SHIPPED = Path(__file__).resolve().parents[2] / "configs" / "generative_digits.toml"


def _config(epochs: int, seed: int):
    """The shipped ``generative_digits`` config with the benchmark's epochs and seed (its decoder,
    relaxation, baselines, batch size and learning rate as shipped)."""
    from ..config import load_config

    cfg = load_config(SHIPPED)
    return replace(cfg, seed=seed, training=replace(cfg.training, epochs=epochs))


def _build(name: str, cfg, D: int):
    """The unfitted model ``name`` for ``D`` features, exactly as ``pcsim run configs/generative_digits.toml`` builds it."""
    from ..experiments.generative import build_model

    return build_model(name, cfg, "cpu")(D)


class PlainVAE(torch.nn.Module):
    """The VAE as a PyTorch user writes it: encoder ``D-64-2d``, decoder ``tanh(z)-64-D``, scalar ``log sigma``."""

    def __init__(self, D: int, d: int = 8, hidden: int = 64):
        super().__init__()
        self.d = d
        self.enc = torch.nn.Sequential(torch.nn.Linear(D, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 2 * d))
        self.dec = torch.nn.Sequential(torch.nn.Tanh(), torch.nn.Linear(d, hidden), torch.nn.Tanh(),
                                       torch.nn.Linear(hidden, D))
        self.log_sigma = torch.nn.Parameter(torch.zeros(()))

    def elbo(self, x: torch.Tensor) -> torch.Tensor:
        """One-sample ELBO per example ``(B,)`` (nats)."""
        h = self.enc(x)
        mean, log_var = h[:, :self.d], h[:, self.d:]
        z = mean + torch.exp(0.5 * log_var) * torch.randn_like(mean)
        mu = self.dec(z)
        ll = (-0.5 * ((x - mu) / self.log_sigma.exp()) ** 2 - self.log_sigma - 0.5 * math.log(2 * math.pi)).sum(-1)
        kl = 0.5 * (mean ** 2 + log_var.exp() - 1.0 - log_var).sum(-1)
        return ll - kl


def plain_vae_fit(x: torch.Tensor, epochs: int, batch: int, lr: float, seed: int, d: int = 8,
                  hidden: int = 64) -> PlainVAE:
    """Train :class:`PlainVAE` (``d`` latents, one ``hidden`` layer) on ``x`` ``(N, D)``: shuffled
    minibatches of ``batch``, ``torch.optim.Adam`` at ``lr``, float64, ``epochs`` epochs, seeded."""
    torch.manual_seed(seed)
    model = PlainVAE(x.shape[1], d, hidden).double()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        for idx in torch.randperm(x.shape[0]).split(batch):
            loss = -model.elbo(x[idx]).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench(models=None, *, epochs: int = 5, repeats: int = 5, seed: int = 0) -> dict:
    """Seconds per epoch and per inference for each of ``models`` (built from the shipped config,
    :func:`_config`) and for the plain PyTorch VAE at the same widths, batch size and learning rate
    (module docstring)."""
    cfg = _config(epochs, seed)
    models = cfg.training.models if models is None else models               # None: the shipped list
    batch, lr = cfg.training.batch_size, cfg.training.lr
    d, hidden = cfg.decoder.latent_dim, cfg.decoder.hidden
    data = digits()
    x_train = dequantise(data.x_train, data.levels, 0)
    x_test = dequantise(data.x_test, data.levels, 1)
    names = list(dict.fromkeys(models))
    fit_t: dict[str, list[float]] = {n: [] for n in names + ["plain_vae", "plain_vae_1thread"]}
    enc_t: dict[str, list[float]] = {n: [] for n in names + ["plain_vae", "plain_vae_1thread"]}
    for r in range(repeats + 1):  # repeat 0 warms up (first calls, thread pools) and is dropped
        for name in names:
            model = _build(name, cfg, x_train.shape[1])
            f = _timed(lambda: model.fit(x_train))
            e = _timed(lambda: model.encode(x_test))
            if r:
                fit_t[name].append(f / epochs)
                enc_t[name].append(e)
            if name == "vae":  # the plain loop right after ours, with torch's threads and with one
                for key, n_threads in (("plain_vae", torch.get_num_threads()), ("plain_vae_1thread", 1)):
                    plain = {}
                    with parallel.threads(n_threads):
                        f = _timed(lambda: plain.setdefault("m", plain_vae_fit(x_train, epochs, batch, lr, seed, d, hidden[0])))
                        with torch.no_grad():
                            e = _timed(lambda: plain["m"].enc(x_test))
                    if r:
                        fit_t[key].append(f / epochs)
                        enc_t[key].append(e)
    out = {"models": {n: {"s_per_epoch": statistics.median(fit_t[n]), "s_per_inference": statistics.median(enc_t[n])}
                      for n in fit_t if fit_t[n]},
           "epochs": epochs, "repeats": repeats, "batch": batch, "lr": lr, "n_train": int(x_train.shape[0]),
           "n_test": int(x_test.shape[0]), "torch": torch.__version__, "threads": torch.get_num_threads()}
    if "vae" in names:
        plain = min(out["models"][k]["s_per_epoch"] for k in ("plain_vae", "plain_vae_1thread"))
        out["vae_over_plain"] = out["models"]["vae"]["s_per_epoch"] / plain
    return out


def main(name: str, as_json: bool = False, args: list[str] | None = None) -> int:
    """Entry point of ``pcsim bench generative``: prints a table, or one JSON object with ``--json``."""
    if name != "generative":
        print(f"pcsim: error: unknown benchmark {name!r}; known: generative")
        return 2
    p = argparse.ArgumentParser(prog="pcsim bench generative")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    shipped = _config(1, 0).training.models
    p.add_argument("--models", nargs="+", default=list(shipped), choices=list(shipped))
    p.add_argument("--seed", type=int, default=0)
    opts = p.parse_args(args or [])
    out = bench(opts.models, epochs=opts.epochs, repeats=opts.repeats, seed=opts.seed)
    if as_json:
        print(json.dumps(out))
        return 0
    print(f"generative models on dequantised digits ({out['n_train']} train / {out['n_test']} test, batch {out['batch']}), "
          f"decoder and settings of {SHIPPED.name} (lr {out['lr']:g}), medians of {opts.repeats} interleaved repeats of {opts.epochs} epochs, {out['threads']} threads")
    print(f"{'model':18} {'s/epoch':>9} {'s/inference':>12}")
    for n, r in out["models"].items():
        print(f"{n:18} {r['s_per_epoch']:9.4f} {r['s_per_inference']:12.5f}")
    if "vae_over_plain" in out:
        print(f"pcsim VAE / faster plain PyTorch VAE epoch time: {out['vae_over_plain']:.2f}x (target <= 1.2x)")
    return 0
