"""The one training loop, and PC rules trained beside their backprop twin.

:func:`train` is the loop every training in pcsim runs through (epochs of batches, a step per
batch, hooks after each step and each epoch, a progress bar, per-epoch wall time, and a
divergence named with its epoch and batch); what a model does in a step and what it records
are the caller's ``step`` and hooks. :func:`compare_rules` trains copies of one initial network with each named rule
(``"pc"``, ``"ipc"``, ``"fpa"`` or ``"bp"`` for the backprop twin), with the same optimiser,
the same shuffled batches and the same seed, and records per epoch the training loss,
test accuracy, wall time and per-layer gradient alignment into one ``xarray.Dataset``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import numpy as np
import torch
import xarray as xr

from .alignment import gradient_alignment
from .data import Classification, epoch_batches
from .energy import output_loss
from .config import check_ranges
from .errors import ConfigError, InferenceDivergenceError, LearningDivergenceError
from .inference import InferenceConfig
from .network import PCNetwork
from .optim import make_optimizer
from .rules import make_rule
from .twin import BackpropTwin


@dataclass(frozen=True)
class TrainConfig:
    """How a network is trained (also the ``[training]`` table of a config): ``epochs``;
    ``batch_size`` (incomplete last batch dropped); ``optimizer`` ("adam"/"sgd"), ``lr`` (per
    update, dimensionless), ``momentum`` (sgd only); ``nudge``: output-precision scale while
    training PC (1 = plain target)."""

    epochs: int = field(default=10, metadata={"ge": 1})
    batch_size: int = field(default=64, metadata={"ge": 1})
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = field(default=1e-3, metadata={"gt": 0})
    momentum: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    nudge: float = field(default=1.0, metadata={"gt": 0})

    def __post_init__(self):
        check_ranges(self)
        if self.optimizer not in ("adam", "sgd"):
            raise ConfigError(f"optimizer must be 'adam' or 'sgd', got {self.optimizer!r}")


@dataclass(frozen=True)
class TrainStep:
    """What an ``on_step`` hook of :func:`train` sees after one step: ``epoch`` (1-based),
    ``index`` (batch within the epoch, 0-based), ``step`` (steps taken before this one, over
    all epochs), the ``batch`` the step was given and the ``output`` it returned."""

    epoch: int
    index: int
    step: int
    batch: Any
    output: Any


def train(
    step: Callable[[Any], Any],
    batches: Callable[[int], Iterable[Any]],
    epochs: int,
    *,
    on_step: Callable[[TrainStep], None] | None = None,
    on_epoch: Callable[[int, float], Mapping[str, float] | None] | None = None,
    initial: bool = False,
    progress: bool = False,
    desc: str = "training",
) -> np.ndarray:
    """Run ``epochs`` epochs of ``step(batch)`` over ``batches(epoch)`` (epoch = 1..epochs).

    After every step ``on_step(TrainStep(...))`` is called (constraints, records, schedules);
    after every epoch ``on_epoch(epoch, seconds)``, where ``seconds`` is the wall time of that
    epoch's steps and step hooks (evaluation in ``on_epoch`` is not counted); with ``initial``
    it is also called once before training as ``on_epoch(0, 0.0)`` (the untrained model). A
    mapping returned by ``on_epoch`` is shown beside the progress bar. An
    :class:`~pcsim.errors.InferenceDivergenceError` raised by a step is re-raised with the
    epoch and batch prefixed to its message (``step``/``layer`` kept). Returns the seconds
    of every epoch, ``(epochs,)``.
    """
    from tqdm.auto import tqdm

    if epochs < 0:
        raise ConfigError(f"epochs must be >= 0, got {epochs}")
    seconds = np.zeros(epochs)
    total = None
    first = batches(1) if epochs else []
    if hasattr(first, "__len__"):
        total = epochs * len(first)
    bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, mininterval=0.5)
    try:
        if initial and on_epoch is not None:
            shown = on_epoch(0, 0.0)
            if shown:
                bar.set_postfix(shown)
        done = 0
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            for index, batch in enumerate(first if epoch == 1 else batches(epoch)):
                try:
                    out = step(batch)
                except InferenceDivergenceError as exc:
                    raise InferenceDivergenceError(f"epoch {epoch}, batch {index}: {exc}", exc.step, exc.layer) from exc
                if on_step is not None:
                    on_step(TrainStep(epoch, index, done, batch, out))
                done += 1
                bar.update()
            seconds[epoch - 1] = time.perf_counter() - t0
            if on_epoch is not None:
                shown = on_epoch(epoch, float(seconds[epoch - 1]))
                if shown:
                    bar.set_postfix(shown)
    finally:
        bar.close()
    return seconds


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
    training: TrainConfig = TrainConfig(),
    inference: InferenceConfig = InferenceConfig(),
    *,
    probe_size: int = 256,
    alignment_nudge: float = 1.0,
    seed: int = 0,
    progress: bool = True,
) -> xr.Dataset:
    """Train a copy of ``net0`` with each rule in ``rules`` and return the learning curves.

    Every rule sees the same batches (shuffled by a generator seeded with ``seed``) and a
    fresh optimiser of ``training``'s kind. Alignment is measured each epoch on the first
    ``probe_size`` training samples at output nudge ``alignment_nudge``.

    Dims ``(rule, epoch, ensemble, layer)``; epoch 0 is the untrained network. Variables:
    ``train_loss`` and ``test_accuracy`` (rule, epoch, ensemble), ``epoch_time`` (rule,
    epoch; seconds of training, evaluation excluded), ``cosine``/``rel_error`` (rule, epoch,
    ensemble, layer): standard-PC update vs backprop gradient at that rule's current weights
    on a fixed probe batch.
    """
    E, L = net0.ensemble, net0.depth
    n = data.x_train.shape[0]
    gen = torch.Generator().manual_seed(seed)
    orders = [epoch_batches(n, training.batch_size, gen) for _ in range(training.epochs)]
    probe = slice(0, min(probe_size, n))
    px, py = data.x_train[probe], data.y_train[probe]
    shape = (len(rules), training.epochs + 1)
    loss = np.zeros(shape + (E,))
    acc = np.zeros(shape + (E,))
    secs = np.zeros(shape)
    cos = np.zeros(shape + (E, L))
    rel = np.zeros(shape + (E, L))
    for i, name in enumerate(rules):
        net = net0.clone()
        opt = make_optimizer(training.optimizer, training.lr, training.momentum)
        twin = BackpropTwin(net) if name == "bp" else None
        rule = None if name == "bp" else make_rule(name, inference, training.nudge)

        def step(idx):
            xb, yb = data.x_train[idx], data.y_train[idx]
            return twin.step(opt, xb, yb) if twin is not None else rule.step(net, opt, xb, yb)

        def measure(ep: int, seconds: float) -> dict:
            cur = twin.to_network() if twin is not None else net
            secs[i, ep] = seconds
            loss[i, ep], _ = evaluate(cur, data.x_train, data.y_train, data.labels_train)
            _, acc[i, ep] = evaluate(cur, data.x_test, data.y_test, data.labels_test)
            al = gradient_alignment(cur, px, py, inference=inference, nudge=alignment_nudge)
            cos[i, ep], rel[i, ep] = al.cosine.values, al.rel_error.values
            return {"test_acc": f"{acc[i, ep].mean():.3f}"}

        train(step, lambda ep: orders[ep - 1], training.epochs, on_epoch=measure, initial=True,
              progress=progress, desc=f"{name:>4}")
    coords = {
        "rule": ("rule", list(rules), {"long_name": "learning rule"}),
        "epoch": ("epoch", np.arange(training.epochs + 1), {"long_name": "training epoch (0 = untrained)"}),
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
