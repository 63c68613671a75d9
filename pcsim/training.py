"""Training PC rules and their backprop twin side by side, with the same data order.

:func:`compare_rules` trains copies of one initial network with each named rule
(``"pc"``, ``"ipc"``, ``"fpa"`` or ``"bp"`` for the backprop twin), with the same optimiser,
the same shuffled batches and the same seed, and records per epoch the training loss,
test accuracy, wall time and per-layer gradient alignment into one ``xarray.Dataset``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import xarray as xr

from .alignment import gradient_alignment
from .data import Classification, epoch_batches
from .energy import output_loss
from .inference import InferenceConfig
from .network import PCNetwork
from .optim import make_optimizer
from .rules import make_rule
from .twin import BackpropTwin


@dataclass(frozen=True)
class TrainConfig:
    """``epochs``; ``batch_size`` (incomplete last batch dropped); ``optimizer`` ("adam"/"sgd"),
    ``lr`` (per update), ``momentum`` (sgd only); ``nudge``: output-precision scale while
    training PC; ``probe_size``: training samples on which alignment is measured each epoch;
    ``alignment_nudge``: nudge used for that measurement; ``seed`` for the data order."""

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    momentum: float = 0.0
    nudge: float = 1.0
    probe_size: int = 256
    alignment_nudge: float = 1.0
    seed: int = 0


def evaluate(net: PCNetwork, x: torch.Tensor, y: torch.Tensor, labels: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Feed-forward loss ``(E,)`` (output energy, batch mean) and accuracy ``(E,)`` (fraction, argmax of ``x_L``) on ``x (N, n_0)``."""
    with torch.no_grad():
        out = net.forward(x.unsqueeze(0).expand(net.ensemble, -1, -1))[-1]
        loss = output_loss(net, out, y.unsqueeze(0))
        acc = (out.argmax(-1) == labels.unsqueeze(0)).double().mean(-1)
    return loss.cpu().numpy(), acc.cpu().numpy()


def compare_rules(
    net0: PCNetwork,
    data: Classification,
    rules: Sequence[str],
    train: TrainConfig = TrainConfig(),
    inference: InferenceConfig = InferenceConfig(),
    *,
    progress: bool = True,
) -> xr.Dataset:
    """Train a copy of ``net0`` with each rule in ``rules`` and return the learning curves.

    Dims ``(rule, epoch, ensemble, layer)``; epoch 0 is the untrained network. Variables:
    ``train_loss`` and ``test_accuracy`` (rule, epoch, ensemble), ``epoch_time`` (rule,
    epoch; seconds of training, evaluation excluded), ``cosine``/``rel_error`` (rule, epoch,
    ensemble, layer): standard-PC update vs backprop gradient at that rule's current weights
    on a fixed probe batch.
    """
    from tqdm.auto import tqdm

    E, L = net0.ensemble, net0.depth
    n = data.x_train.shape[0]
    gen = torch.Generator().manual_seed(train.seed)
    orders = [epoch_batches(n, train.batch_size, gen) for _ in range(train.epochs)]
    probe = slice(0, min(train.probe_size, n))
    px, py = data.x_train[probe], data.y_train[probe]
    shape = (len(rules), train.epochs + 1)
    loss = np.zeros(shape + (E,))
    acc = np.zeros(shape + (E,))
    secs = np.zeros(shape)
    cos = np.zeros(shape + (E, L))
    rel = np.zeros(shape + (E, L))
    for i, name in enumerate(rules):
        net = net0.clone()
        opt = make_optimizer(train.optimizer, train.lr, train.momentum)
        twin = BackpropTwin(net) if name == "bp" else None
        rule = None if name == "bp" else make_rule(name, inference, train.nudge)
        bar = tqdm(total=train.epochs * len(orders[0]) if orders else 0, desc=f"{name:>4}", disable=not progress, leave=False)
        for ep in range(train.epochs + 1):
            if ep > 0:
                t0 = time.perf_counter()
                for idx in orders[ep - 1]:
                    xb, yb = data.x_train[idx], data.y_train[idx]
                    if twin is not None:
                        twin.step(opt, xb, yb)
                    else:
                        rule.step(net, opt, xb, yb)
                    bar.update()
                secs[i, ep] = time.perf_counter() - t0
            cur = twin.to_network() if twin is not None else net
            loss[i, ep], _ = evaluate(cur, data.x_train, data.y_train, data.labels_train)
            _, acc[i, ep] = evaluate(cur, data.x_test, data.y_test, data.labels_test)
            al = gradient_alignment(cur, px, py, inference=inference, nudge=train.alignment_nudge)
            cos[i, ep], rel[i, ep] = al.cosine.values, al.rel_error.values
            bar.set_postfix(test_acc=f"{acc[i, ep].mean():.3f}")
        bar.close()
    coords = {
        "rule": ("rule", list(rules), {"long_name": "learning rule"}),
        "epoch": ("epoch", np.arange(train.epochs + 1), {"long_name": "training epoch (0 = untrained)"}),
        "layer": ("layer", np.arange(1, L + 1), {"long_name": "prediction layer l (weights W_l)"}),
        "ensemble": ("ensemble", np.arange(E), {"long_name": "ensemble member"}),
    }
    return xr.Dataset(
        {
            "train_loss": (("rule", "epoch", "ensemble"), loss, {"long_name": "training-set loss 1/2|y - x_L|^2 (feed-forward)", "units": "1"}),
            "test_accuracy": (("rule", "epoch", "ensemble"), acc, {"long_name": "test accuracy", "units": "1"}),
            "epoch_time": (("rule", "epoch"), secs, {"long_name": "wall time of the epoch's training steps", "units": "s"}),
            "cosine": (("rule", "epoch", "ensemble", "layer"), cos, {"long_name": "cosine(PC update, BP gradient)", "units": "1"}),
            "rel_error": (("rule", "epoch", "ensemble", "layer"), rel, {"long_name": "relative error of PC update vs BP gradient", "units": "1"}),
        },
        coords=coords,
    )
