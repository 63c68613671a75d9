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

from . import parallel
from .alignment import gradient_alignment
from .data import Classification, epoch_batches
from .energy import output_loss
from .arguments import check_number, check_numbers
from .config import check_ranges
from .errors import ConfigError, InferenceDivergenceError, LearningDivergenceError
from .inference import InferenceConfig, Relaxation
from .network import PCNetwork
from .optim import make_optimizer
from .relaxation import CAUSE
from .rules import RULES, make_rule
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
    parameters: Callable[[], Sequence[torch.Tensor]] | None = None,
    energy: Callable[[Any], Any] | None = None,
    lr: Any = None,
    max_growth: float = 1e3,
    state: Mapping[str, Any] | None = None,
    stop: Callable[[int], bool] | None = None,
) -> np.ndarray:
    """Run ``epochs`` epochs of ``step(batch)`` over ``batches(epoch)`` (epoch = 1..epochs).

    After every step ``on_step(TrainStep(...))`` is called (constraints, records, schedules);
    after every epoch ``on_epoch(epoch, seconds)``, where ``seconds`` is the wall time of that
    epoch's steps and step hooks (evaluation in ``on_epoch`` is not counted); with ``initial``
    it is also called once before training as ``on_epoch(0, 0.0)`` (the untrained model). A
    mapping returned by ``on_epoch`` is shown beside the progress bar. ``stop(epoch)``, asked
    after ``on_epoch``, ends training early when it returns True (early stopping on a
    validation split). Returns the seconds of every epoch run, ``(epochs run,)``.

    Divergence, checked here once for every model and rule: with ``parameters`` (a callable
    returning the learned tensors) every step must leave them finite, and with ``energy`` (the
    training energy or loss of a step's output, a number or one per member ``(E,)``) it must
    stay finite and at most ``max_growth`` (1e3) times its value at the first step (a learning
    rate that is too large makes it explode while the weights stay finite, e.g. a saturated
    tanh network). Either failure raises :class:`~pcsim.errors.LearningDivergenceError`
    (``epoch`` and ``batch`` 0-based; the message counts epochs from 1) naming the learning
    rate ``lr`` as the likely cause. An :class:`~pcsim.errors.InferenceDivergenceError` raised
    by a step is re-raised with the epoch and batch prefixed (``step``/``layer`` kept) while the
    weights are still the initial ones (then the inference settings are to blame); once the
    watched ``parameters`` have changed it becomes a LearningDivergenceError blaming ``lr``.

    Checkpoints, here once for every training: inside a ``pcsim run`` (an active
    :class:`pcsim.checkpoint.Checkpoints` session) a call is a stage that saves, every
    ``[checkpoint] every`` epochs and after its last, ``state`` (a mapping naming everything
    ``step``, ``batches`` and the hooks change: parameters, optimiser, the generators that draw
    the batches, the records the hooks fill; each restored in place, see
    :mod:`pcsim.checkpoint`) with this loop's counters and the global random states. On
    ``--resume`` a finished stage is restored without running a step (it returns the saved
    epoch times) and an interrupted one continues after its last saved epoch, neither calling
    the ``initial`` hook again; so the run ends exactly as an uninterrupted one would. Without
    ``state`` (or outside a session) nothing is saved and a resumed run trains the stage again.
    """
    from tqdm.auto import tqdm

    from .checkpoint import active_checkpoints, check_state

    epochs = check_number("epochs", epochs, integer=True, ge=0)
    max_growth = check_number("max_growth", max_growth, gt=1)
    session = active_checkpoints()
    if state is not None and session is None:
        check_state(state, deep=False)  # a session checks it all
    stage = session.begin(desc, epochs, state) if session is not None else None
    seconds = np.zeros(epochs)
    initial_params = [p.detach().clone() for p in parameters()] if parameters is not None else None
    reference: list[np.ndarray] = []  # the energy of the first step, per member
    done, start = 0, 1
    saved = stage.restore() if stage is not None else None
    if saved is not None:
        seconds[:] = saved["seconds"].numpy()
        reference[:] = [r.numpy() for r in saved["reference"]]
        if initial_params is not None and saved["initial"] is not None:
            initial_params = list(saved["initial"])
        done, start = int(saved["done"]), int(saved["epoch"]) + 1
        if start > epochs:
            return seconds
    total = None
    first = batches(start) if start <= epochs else []
    if hasattr(first, "__len__"):
        total = epochs * len(first)
    bar = tqdm(total=total, initial=done if total is not None else 0, desc=desc, disable=not progress,
               leave=False, mininterval=0.5)
    try:
        if initial and on_epoch is not None and start == 1:
            shown = on_epoch(0, 0.0)
            if shown:
                bar.set_postfix(shown)
        for epoch in range(start, epochs + 1):
            # an epoch (its steps and its evaluation) never forks more threads than the cores free
            # as it starts: a team wider than that stalls at every barrier (pcsim.parallel)
            with parallel.threads(parallel.usable()):
                t0 = time.perf_counter()
                for index, batch in enumerate(first if epoch == start else batches(epoch)):
                    where = f"epoch {epoch}, batch {index}"
                    try:
                        out = step(batch)
                    except InferenceDivergenceError as exc:
                        if initial_params is not None and _changed(parameters(), initial_params):
                            what, _, inference_cause = str(exc).partition(CAUSE)
                            raise LearningDivergenceError(
                                f"{where}: {what}, with weights already changed by learning ({done} step(s) before this batch)"
                                f"{CAUSE}{_lr_cause(lr)} (with the initial weights it would be: {inference_cause})",
                                epoch - 1, index) from exc
                        raise InferenceDivergenceError(f"{where}: {exc}", exc.step, exc.layer) from exc
                    if initial_params is not None:
                        _check_parameters(parameters(), where, lr, epoch, index)
                    if energy is not None:
                        _check_energy(energy(out), reference, max_growth, where, lr, epoch, index)
                    if on_step is not None:
                        on_step(TrainStep(epoch, index, done, batch, out))
                    done += 1
                    bar.update()
                seconds[epoch - 1] = time.perf_counter() - t0
                if on_epoch is not None:
                    shown = on_epoch(epoch, float(seconds[epoch - 1]))
                    if shown:
                        bar.set_postfix(shown)
                if stage is not None and stage.due(epoch):
                    stage.save(epoch, {"epoch": epoch, "done": done, "seconds": seconds, "reference": reference,
                                       "initial": initial_params})
                if stop is not None and stop(epoch):
                    seconds = seconds[:epoch]
                    break
    finally:
        bar.close()
    if stage is not None:
        stage.finish()
    return seconds


def _lr_cause(lr: Any) -> str:
    shown = "" if lr is None else f" (lr={lr:g})" if isinstance(lr, (int, float)) else f" (lr={lr})"
    return f"the learning rate{shown} is too large; lower it"


def _changed(params: Sequence[torch.Tensor], initial: Sequence[torch.Tensor]) -> bool:
    return any(not torch.equal(p.detach(), q) for p, q in zip(params, initial))


def _check_parameters(params: Sequence[torch.Tensor], where: str, lr: Any, epoch: int, index: int) -> None:
    """LearningDivergenceError naming the first parameter tensor (its index in ``parameters()``) that holds
    NaN/Inf, or whose norm overflows. One fused norm per step (~25 us on a 64-128-128-10 network; a
    per-tensor ``isfinite`` costs ~150 us), the tensors are searched only when it fails."""
    params = list(params)
    if bool(torch.isfinite(torch.stack(torch._foreach_norm(params))).all()):
        return
    finite = [bool(torch.isfinite(p).all()) for p in params]
    k = finite.index(False) if False in finite else \
        [bool(torch.isfinite(p.norm())) for p in params].index(False)
    what = "became NaN/Inf" if not finite[k] else "grew so large that its norm overflows"
    raise LearningDivergenceError(
        f"{where}: learning diverged: parameter {k} (in the order of parameters()) {what}"
        f"{CAUSE}{_lr_cause(lr)}", epoch - 1, index)


def _check_energy(value: Any, reference: list, max_growth: float, where: str, lr: Any, epoch: int, index: int) -> None:
    """LearningDivergenceError when the step's training energy ``value`` (number or ``(E,)``) is non-finite or
    exceeds ``max_growth`` times the first step's (kept in ``reference``)."""
    e = np.asarray(value.detach().double().cpu() if isinstance(value, torch.Tensor) else value, dtype=float).reshape(-1)
    if not reference:
        reference.append(np.abs(e))
    ref = reference[0]
    bad = ~np.isfinite(e) | (e > max_growth * ref + 1e-6)
    if bad.any():
        m = int(np.argmax(bad))
        member = f" (ensemble member {m})" if e.size > 1 else ""
        raise LearningDivergenceError(
            f"{where}: learning diverged: the training energy grew from {float(ref[m]):.4g} at the first step to "
            f"{float(e[m]):.4g}{member}, more than max_growth={max_growth:g} times{CAUSE}{_lr_cause(lr)}",
            epoch - 1, index)


def training_energy(out) -> torch.Tensor:
    """The training energy of a step's output, one per member ``(E,)``: a relaxation's energy summed over
    layers, batch mean (PC rules), or the backprop twin's loss."""
    if isinstance(out, Relaxation):
        return out.energy.sum(-1).mean(-1)
    return out


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
    seed: int | Sequence[int] = 0,
    lr: float | Sequence[float] | None = None,
    progress: bool = True,
) -> xr.Dataset:
    """Train a copy of ``net0`` with each rule in ``rules`` and return the learning curves.

    Every rule sees the same batches (shuffled by a generator seeded with ``seed``) and a
    fresh optimiser of ``training``'s kind. Alignment is measured each epoch on the first
    ``probe_size`` training samples at output nudge ``alignment_nudge``.

    An ensemble ``net0`` (``E`` members) runs ``E`` independent trainings at once: ``seed`` may
    give one batch order per member (``E`` seeds; member ``e`` then sees the batches a run of
    its own with ``seed[e]`` sees) and ``lr`` one learning rate per member (``E`` values,
    replacing ``training.lr``), so a grid over seeds and learning rates runs as one ensemble
    and member ``e`` equals that point run alone, to float rounding (``pcsim sweep`` batches
    such grids). ``epoch_time`` is then the ensemble's shared wall time.

    Dims ``(rule, epoch, ensemble, layer)``; epoch 0 is the untrained network. Variables:
    ``train_loss`` and ``test_accuracy`` (rule, epoch, ensemble), ``epoch_time`` (rule,
    epoch; seconds of training, evaluation excluded), ``cosine``/``rel_error`` (rule, epoch,
    ensemble, layer): standard-PC update vs backprop gradient at that rule's current weights
    on a fixed probe batch (NaN where undefined, see :func:`pcsim.alignment.compare_gradients`).
    Bad arguments raise :class:`~pcsim.errors.ConfigError` naming them; a learning blow-up
    raises :class:`~pcsim.errors.LearningDivergenceError` (:func:`train`).
    """
    if not isinstance(net0, PCNetwork):
        raise ConfigError(f"net0 must be a PCNetwork, got {type(net0).__name__}")
    if not isinstance(data, Classification):
        raise ConfigError(f"data must be a pcsim.data.Classification, got {type(data).__name__}")
    if not isinstance(training, TrainConfig):
        raise ConfigError(f"training must be a TrainConfig, got {training!r}")
    if not isinstance(inference, InferenceConfig):
        raise ConfigError(f"inference must be an InferenceConfig, got {inference!r}")
    if isinstance(rules, str) or not rules or any(r not in (*RULES, "bp") for r in rules):
        raise ConfigError(f"rules must be a non-empty list of {', '.join((*RULES, 'bp'))}, got {rules!r}")
    probe_size = check_number("probe_size", probe_size, integer=True, ge=1)
    alignment_nudge = check_number("alignment_nudge", alignment_nudge, gt=0)
    E, L = net0.ensemble, net0.depth
    seeds = check_numbers("seed", seed if hasattr(seed, "__iter__") else [seed], integer=True, ge=0)
    lr = training.lr if lr is None else check_numbers("lr", lr if hasattr(lr, "__iter__") else [lr], gt=0)
    for name, values in (("seed", seeds), ("lr", lr)):
        if isinstance(values, tuple) and len(values) not in (1, E):
            raise ConfigError(f"{name} must be one value or one per ensemble member ({E}), got {len(values)}")
    seeds = seeds[:1] if len(set(seeds)) == 1 else seeds  # one order shared by all
    if isinstance(lr, tuple) and len(set(lr)) == 1:
        lr = lr[0]
    n = data.x_train.shape[0]
    gens = [torch.Generator().manual_seed(s) for s in seeds]
    # one shared order (B,) per batch, or each member's own, stacked (E, B): x_train[idx] is then (E, B, n)
    orders = [[torch.stack(idx) if len(idx) > 1 else idx[0]
               for idx in zip(*(epoch_batches(n, training.batch_size, g) for g in gens))]
              for _ in range(training.epochs)]
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
        opt = make_optimizer(training.optimizer, lr, training.momentum)
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

        params = twin.params if twin is not None else net.parameters
        train(step, lambda ep: orders[ep - 1], training.epochs, on_epoch=measure, initial=True,
              progress=progress, desc=f"{name:>4}", parameters=params, energy=training_energy, lr=lr,
              state={"parameters": params(), "optimizer": opt, "records": [loss, acc, secs, cos, rel]})
    coords = {
        "rule": ("rule", list(rules), {"long_name": "learning rule", "units": ""}),
        "epoch": ("epoch", np.arange(training.epochs + 1), {"long_name": "training epoch (0 = untrained)", "units": "1"}),
        "layer": ("layer", np.arange(1, L + 1), {"long_name": "prediction layer l (weights W_l)", "units": "1"}),
        "ensemble": ("ensemble", np.arange(E), {"long_name": "ensemble member", "units": "1"}),
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


class EarlyStopping:
    """Early stopping on a validation loss, with the best parameters kept (the ``stop`` of :func:`train`).

    Call :meth:`record` from ``on_epoch`` with the epoch (1-based) and its validation loss;
    ``snapshot()`` returns a copy of the parameters worth keeping. Until epoch ``start`` (a
    warm-up during which the objective itself changes) every epoch's snapshot is kept and no
    epoch counts as best; after it, the snapshot of the epoch with the lowest finite loss is kept
    (``checkpoint``, ``best_epoch``, ``best_loss``), and calling the object with an epoch says to
    stop once ``patience`` epochs have passed without a new best.
    """

    def __init__(self, patience: int, snapshot: Callable[[], Any], start: int = 0):
        self.patience = check_number("patience", patience, integer=True, ge=1)
        self.start = check_number("start", start, integer=True, ge=0)
        self.snapshot = snapshot
        self.best_loss = float("inf")
        self.best_epoch = 0
        self.checkpoint = snapshot()

    def record(self, epoch: int, loss: float) -> None:
        """Keep the parameters of ``epoch`` if it is still in warm-up or its ``loss`` is the best so far."""
        if epoch < self.start or (np.isfinite(loss) and loss < self.best_loss):
            if epoch >= self.start:
                self.best_loss = float(loss)
            self.best_epoch = epoch
            self.checkpoint = self.snapshot()

    def __call__(self, epoch: int) -> bool:
        return epoch >= self.start and epoch - self.best_epoch >= self.patience


def guarded_step(optimizer, params: Sequence[torch.Tensor], loss: torch.Tensor, grad_clip: float | None = None) -> float:
    """One optimiser step of an autograd-trained model on ``loss`` (a scalar tensor), its gradient
    norm clipped at ``grad_clip``; returns the loss as a float. When the loss or any gradient is
    NaN/Inf the parameters are left as they were and NaN (or the loss) is returned, so that the
    ``energy`` watch of :func:`train` raises a :class:`~pcsim.errors.LearningDivergenceError`
    naming the epoch and batch while the last good parameters are still in place."""
    grads = torch.autograd.grad(loss, list(params), allow_unused=True)
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    value = float(loss.detach())
    if not (np.isfinite(value) and bool(torch.isfinite(norm))):
        return value if not np.isfinite(value) else float("nan")
    scale = 1.0 if grad_clip is None else min(1.0, grad_clip / (float(norm) + 1e-12))
    with torch.no_grad():
        optimizer.step(list(params), [g * scale for g in grads] if scale < 1.0 else grads)
    return value
