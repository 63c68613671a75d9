"""Seconds per training epoch of the pcsim bench's *small* case, built in the peer JAX library pcx.

What it measures: the epoch time of standard predictive coding in pcx (PyPI ``pcx`` 0.6.3, on
JAX CPU) for the same problem as ``python -m pcsim bench pc-vs-bp --cases small``: an MLP
64-128-128-10 with tanh, input clamped at the first node and the one-hot label clamped at the
last, batch 64, 22 batches per epoch (scikit-learn's digits, the same 1437-sample training split
as pcsim, last partial batch dropped), T = 20 inference steps of plain SGD on the value nodes
with step size 0.1 (pcsim: Euler steps with dt/tau = 1/10), then one Adam (lr 1e-3) weight
update per batch from the relaxed state. The training step is one ``pxf.jit``-ed function per
batch, as in pcx's own examples (``train_on_batch``). The time is the median over ``--repeats``
epochs after one warm-up epoch (compilation excluded), with ``block_until_ready`` on the
parameters at the end of each epoch.

``--load`` starts one CPU-bound competing process (a Python busy loop ``while True: pass``)
for the duration of the measurement and stops it afterwards, exactly as
``python -m pcsim bench pc-vs-bp --load`` does (``pcsim.contention.competing_process``).

Run it in its own virtual environment, not pcsim's: pcx needs jax/jaxlib, optax and equinox,
which pull numpy >= 2.4, while pcsim's environment keeps numpy < 2.4 for brian2::

    python -m venv /tmp/peer && /tmp/peer/bin/pip install pcx==0.6.3 scikit-learn
    /tmp/peer/bin/python benchmarks/pc_vs_pcx.py            # quiet
    /tmp/peer/bin/python benchmarks/pc_vs_pcx.py --load     # beside one CPU-bound process

It prints one JSON object: ``pcx_s_per_epoch`` (median), every epoch time, ``load``, versions.
Of pcsim only the torch-free ``pcsim.contention`` is imported (from this checkout, by path; pcsim
is not installed in that environment); without scikit-learn the data
are random arrays of the same shapes (the timing does not depend on the values).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

import pcx as px
import pcx.functional as pxf
import pcx.nn as pxnn
import pcx.predictive_coding as pxc
import pcx.utils as pxu

# the same load as `pcsim bench --load`; pcsim.contention imports no torch, so it loads here too
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pcsim.contention import competing_process  # noqa: E402

SIZES = (64, 128, 128, 10)
BATCH = 64


class MLP(pxc.EnergyModule):
    """x_0 (clamped input) -> tanh(W1 x_0) -> x_1 -> tanh(W2 x_1) -> x_2 -> W3 x_2 -> x_3 (clamped label)."""

    def __init__(self, sizes) -> None:
        super().__init__()
        self.act_fn = px.static(jnp.tanh)
        self.layers = [pxnn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
        self.vodes = [pxc.Vode() for _ in sizes[1:]]  # squared-error energy on every node
        self.vodes[-1].h.frozen = True  # the label node is clamped

    def __call__(self, x, y):
        for v, l in zip(self.vodes[:-1], self.layers[:-1]):
            x = v(self.act_fn(l(x)))
        x = self.vodes[-1](self.layers[-1](x))
        if y is not None:
            self.vodes[-1].set("h", y)
        return self.vodes[-1].get("u")


@pxf.vmap(pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0)), in_axes=(0, 0), out_axes=0)
def forward(x, y, *, model: MLP):
    return model(x, y)


@pxf.vmap(pxu.M(pxc.VodeParam | pxc.VodeParam.Cache).to((None, 0)), in_axes=(0,), out_axes=(None, 0), axis_name="batch")
def energy(x, *, model: MLP):
    y_ = model(x, None)
    return jax.lax.psum(model.energy(), "batch"), y_


@pxf.jit(static_argnums=0)
def train_on_batch(T: int, x: jax.Array, y: jax.Array, *, model: MLP, optim_w: pxu.Optim, optim_h: pxu.Optim):
    model.train()
    # feed-forward sweep initialises the value nodes; the label is clamped on the last
    with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
        forward(x, y, model=model)
    # T inference steps: x <- x - 0.1 dE/dx (per sample; the energy is summed over the batch)
    for _ in range(T):
        with pxu.step(model, clear_params=pxc.VodeParam.Cache):
            _, g = pxf.value_and_grad(pxu.M_hasnot(pxc.VodeParam, frozen=True).to([False, True]), has_aux=True)(
                energy
            )(x, model=model)
        optim_h.step(model, g["model"])
    # one weight update from the relaxed state (batch-mean gradient, Adam)
    with pxu.step(model, clear_params=pxc.VodeParam.Cache):
        _, g = pxf.value_and_grad(pxu.M(pxnn.LayerParam).to([False, True]), has_aux=True)(energy)(x, model=model)
    optim_w.step(model, g["model"], scale_by=1.0 / x.shape[0])


def load_data(seed: int):
    """22 batches of 64: the digits training split pcsim uses (or random arrays of those shapes)."""
    rng = np.random.default_rng(seed)
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        d = load_digits()
        xtr, _, ltr, _ = train_test_split(d.data, d.target, test_size=0.2, random_state=0, stratify=d.target)
        x = (xtr / 16.0).astype(np.float32)
        y = np.eye(10, dtype=np.float32)[ltr]
        source = "sklearn digits"
    except ImportError:
        x = rng.standard_normal((1437, 64)).astype(np.float32)
        y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, 1437)]
        source = "random (scikit-learn not installed)"
    perm = rng.permutation(x.shape[0])
    n = x.shape[0] - x.shape[0] % BATCH
    xs = [jnp.asarray(x[perm[i:i + BATCH]]) for i in range(0, n, BATCH)]
    ys = [jnp.asarray(y[perm[i:i + BATCH]]) for i in range(0, n, BATCH)]
    return xs, ys, source


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--load", action="store_true", help="run one CPU-bound competing process beside the measurement")
    opts = p.parse_args(argv)

    px.RKG.seed(opts.seed)
    xs, ys, source = load_data(opts.seed)
    model = MLP(SIZES)
    with pxu.step(model, pxc.STATUS.INIT, clear_params=pxc.VodeParam.Cache):
        forward(jnp.zeros((BATCH, SIZES[0])), None, model=model)
        optim_h = pxu.Optim(lambda: optax.sgd(0.1), pxu.M_hasnot(pxc.VodeParam, frozen=True)(model))
        optim_w = pxu.Optim(lambda: optax.adam(1e-3), pxu.M(pxnn.LayerParam)(model))

    def epoch():
        for x, y in zip(xs, ys):
            train_on_batch(opts.steps, x, y, model=model, optim_w=optim_w, optim_h=optim_h)
        jax.block_until_ready([l.nn.weight.get() for l in model.layers])

    with competing_process(opts.load):
        t0 = time.perf_counter()
        epoch()  # warm-up: includes compilation
        first = time.perf_counter() - t0
        times, cpu = [], []
        for _ in range(opts.repeats):
            t0, c0 = time.perf_counter(), time.process_time()
            epoch()
            times.append(time.perf_counter() - t0)
            cpu.append(time.process_time() - c0)

    from importlib.metadata import version

    out = {
        "pcx_s_per_epoch": statistics.median(times), "pcx_cpu_s_per_epoch": statistics.median(cpu),
        "epochs_s": times, "first_epoch_s": first, "load": opts.load,
        "sizes": list(SIZES), "batch": BATCH, "batches_per_epoch": len(xs), "steps": opts.steps, "data": source,
        "jax": jax.__version__, "jaxlib": version("jaxlib"), "pcx": version("pcx"), "optax": optax.__version__,
        "backend": jax.default_backend(), "cpus": os.cpu_count(),
    }
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
