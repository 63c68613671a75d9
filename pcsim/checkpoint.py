"""Checkpoints of a run's training, and resuming from them bit for bit.

A ``pcsim run`` opens one :class:`Checkpoints` session for its run directory and activates it
(:meth:`Checkpoints.active`, a context) around the experiment. Every call of the one training
loop :func:`pcsim.training.train` inside it is a *stage* (numbered in call order and named by
its ``desc``): the loop saves, every ``[checkpoint] every`` epochs and at its end, the state
its caller declared (``train(..., state={...})``: model parameters, optimiser, the generators
that draw the batches, the per-epoch records) together with its own counters (epoch, steps,
epoch times, the divergence watch's reference) and the global random states (torch, numpy,
python; CUDA where initialised). The file, ``checkpoint.pt`` in the run directory, holds the
final state of every finished stage and the latest state of the current one; it is written to
a temporary file, fsynced and renamed (:meth:`pcsim.outdir.RunDirectory.write_checkpoint`).

``pcsim run CONFIG --out DIR --resume`` re-runs the experiment from its start with the same
config (refused, naming the keys, if it differs from the checkpoint's); each finished stage is
then restored instead of trained, and the interrupted one continues after its last saved
epoch. Everything an experiment does between stages is deterministic under its seed and is
simply done again, so the resumed run ends with the same results as an uninterrupted one
(exactly on CPU; the per-epoch wall times of restored epochs are the original ones).

What ``state`` may hold (each restored in place, so every reference to it stays valid):
tensors, numpy arrays, ``torch.Generator`` and ``numpy.random.Generator``, any object with
``state_dict()``/``load_state_dict()`` (``torch.nn.Module``, ``torch.optim`` optimisers,
:class:`pcsim.optim.Adam`/``SGD``), and lists and dicts of these or of plain values.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import hashlib
import json
import random
from collections.abc import Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from pcsim import __version__
from pcsim.config import config_to_dict
from pcsim.errors import ConfigError, OutputError
from pcsim.outdir import CHECKPOINT_FILE

if TYPE_CHECKING:
    from pcsim.config import ExperimentConfig
    from pcsim.outdir import RunDirectory

__all__ = ["CHECKPOINT_FILE", "Checkpoints", "Stage", "active_checkpoints", "capture", "restore"]

_FORMAT = 1  # version of the checkpoint layout
_ACTIVE: contextvars.ContextVar[Checkpoints | None] = contextvars.ContextVar("pcsim_checkpoints", default=None)
_PLAIN = (bool, int, float, str, type(None))


def active_checkpoints() -> Checkpoints | None:
    """The session activated by :meth:`Checkpoints.active` around this code, or None (then
    :func:`~pcsim.training.train` neither saves nor restores anything)."""
    return _ACTIVE.get()


# --------------------------------------------------------------------------- state


def capture(obj: Any, name: str = "state") -> Any:
    """A snapshot of ``obj`` that :func:`restore` puts back and ``torch.load(weights_only=True)``
    reads: tensors are cloned (on their device), numpy arrays become tensors, generators their
    state, ``state_dict`` objects their (copied) state dict, lists and dicts are copied item by
    item. Anything else raises :class:`TypeError` naming ``name`` (``state['key'][i]``)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, np.ndarray):
        if obj.dtype == object:
            raise TypeError(f"{name} is a numpy array of Python objects; a checkpoint holds numbers only")
        return torch.from_numpy(np.array(obj, copy=True))
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, torch.Generator):
        return obj.get_state()
    if isinstance(obj, np.random.Generator):
        return dict(obj.bit_generator.state)
    if callable(getattr(obj, "state_dict", None)) and callable(getattr(obj, "load_state_dict", None)):
        return capture(obj.state_dict(), f"{name}.state_dict()")
    if isinstance(obj, Mapping):
        return {k: capture(v, f"{name}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(capture(v, f"{name}[{i}]") for i, v in enumerate(obj))
    if isinstance(obj, _PLAIN):
        return obj
    raise TypeError(f"{name} is a {type(obj).__name__}, which a checkpoint cannot hold "
                    "(tensors, arrays, generators, state_dict objects, lists and dicts of them)")


def restore(target: Any, saved: Any, name: str = "state") -> Any:
    """Put the snapshot ``saved`` (:func:`capture` of an object like ``target``) back into
    ``target`` in place and return it; a plain value (number, string) is returned as saved.
    A shape or kind that does not match raises :class:`~pcsim.errors.OutputError` naming ``name``."""
    if isinstance(target, torch.Tensor):
        if not isinstance(saved, torch.Tensor) or saved.shape != target.shape:
            raise _mismatch(name, target, saved)
        with torch.no_grad():
            target.copy_(saved)
        return target
    if isinstance(target, np.ndarray):
        if not isinstance(saved, torch.Tensor) or tuple(saved.shape) != target.shape:
            raise _mismatch(name, target, saved)
        target[...] = saved.numpy()
        return target
    if isinstance(target, torch.Generator):
        target.set_state(saved)
        return target
    if isinstance(target, np.random.Generator):
        target.bit_generator.state = saved
        return target
    if callable(getattr(target, "state_dict", None)) and callable(getattr(target, "load_state_dict", None)):
        target.load_state_dict(saved)
        return target
    if isinstance(target, MutableMapping) and isinstance(saved, Mapping):
        new = {k: restore(target[k], v, f"{name}[{k!r}]") if k in target else _plain(v, f"{name}[{k!r}]")
               for k, v in saved.items()}
        target.clear()
        target.update(new)
        return target
    if isinstance(target, (list, tuple)) and isinstance(saved, (list, tuple)):
        if len(target) == len(saved):
            items = [restore(t, s, f"{name}[{i}]") for i, (t, s) in enumerate(zip(target, saved))]
        else:  # a record that grows (one entry per epoch): plain values only
            items = [_plain(s, f"{name}[{i}]") for i, s in enumerate(saved)]
        if isinstance(target, list):
            target[:] = items
            return target
        return type(target)(items)
    if isinstance(target, _PLAIN) and isinstance(saved, _PLAIN):
        return saved
    raise _mismatch(name, target, saved)


def _plain(saved: Any, name: str) -> Any:
    """``saved`` where there is no object to restore it into: plain values and lists/dicts of them."""
    if isinstance(saved, _PLAIN):
        return saved
    if isinstance(saved, (list, tuple)):
        return type(saved)(_plain(v, f"{name}[{i}]") for i, v in enumerate(saved))
    if isinstance(saved, Mapping):
        return {k: _plain(v, f"{name}[{k!r}]") for k, v in saved.items()}
    raise OutputError(f"the checkpoint's {name} has no counterpart in the resumed run to restore it into")


def _mismatch(name: str, target: Any, saved: Any) -> OutputError:
    def kind(x):
        return f"{type(x).__name__} {tuple(x.shape)}" if hasattr(x, "shape") else type(x).__name__
    return OutputError(f"the checkpoint's {name} ({kind(saved)}) does not fit the resumed run's ({kind(target)}); "
                       "the code changed since the checkpoint was written: run again without --resume")


def check_state(state: Mapping[str, Any], *, deep: bool = True) -> None:
    """Refuse (:class:`TypeError` naming the key) a ``state`` mapping whose values cannot be
    restored in place: a number or string at the top level would be restored into nothing;
    with ``deep``, also anything :func:`capture` cannot hold."""
    if not isinstance(state, Mapping):
        raise TypeError(f"state must be a mapping of names to objects, got {type(state).__name__}")
    for key, value in state.items():
        if isinstance(value, (*_PLAIN, tuple)):
            raise TypeError(f"state[{key!r}] is a {type(value).__name__}: train can restore only objects it "
                            "changes in place (tensors, arrays, lists, optimisers ...)")
        if deep:
            capture(value, f"state[{key!r}]")  # fails now, not at the first checkpoint


def global_rng_state() -> dict:
    """The global random states: torch's CPU generator (and CUDA's where initialised), numpy's
    legacy ``np.random`` and python's ``random``."""
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_global_rng_state(state: Mapping) -> None:
    """Restore :func:`global_rng_state`'s ``state``."""
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"]))
    if "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- session


def config_identity(config: ExperimentConfig) -> tuple[dict, str]:
    """The config as it decides a run's results (every key but ``checkpoint``, which only says
    how often to save) as a plain dict, and its SHA-256 hash."""
    plain = config_to_dict(config)
    plain.pop("checkpoint", None)
    text = json.dumps(plain, sort_keys=True, separators=(",", ":"))
    return plain, hashlib.sha256(text.encode()).hexdigest()


def config_differences(saved: Mapping, now: Mapping, prefix: str = "") -> list[str]:
    """The dotted keys whose values differ between two plain config dicts, each as
    ``"key: checkpoint V, now W"`` (an absent key shows as ``(unset)``)."""
    out = []
    for key in sorted(set(saved) | set(now)):
        a, b = saved.get(key, "(unset)"), now.get(key, "(unset)")
        if isinstance(a, Mapping) and isinstance(b, Mapping):
            out += config_differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: checkpoint {a!r}, now {b!r}")
    return out


@dataclass
class Stage:
    """One call of :func:`~pcsim.training.train` inside a session: ``index`` (0-based, in call
    order), ``desc``, ``epochs``, the caller's ``state`` mapping (None: not checkpointed), and
    ``saved``, the record a resumed run found for it (``epoch`` saved, ``complete``, ``payload``)
    or None."""

    session: Checkpoints
    index: int
    desc: str
    epochs: int
    state: Mapping[str, Any] | None
    saved: dict | None = None
    record: dict = field(default_factory=dict)

    def due(self, epoch: int) -> bool:
        """Whether to save after ``epoch`` (1-based): every ``every`` epochs and at the last."""
        every = self.session.every
        return self.state is not None and every > 0 and (epoch == self.epochs or epoch % every == 0)

    def restore(self) -> dict | None:
        """Put the saved state back (caller's state, global random states); return the loop's
        own saved counters (``epoch``, ``done``, ``seconds``, ``reference``, ``initial``), or None
        when there is nothing to restore (a fresh run or a stage without state)."""
        if self.saved is None or self.saved["payload"] is None or self.state is None:
            return None
        payload = self.saved["payload"]
        for key, target in self.state.items():
            if key not in payload["state"]:
                raise OutputError(f"the checkpoint's stage {self.index} ({self.desc!r}) holds no state[{key!r}]; "
                                  "the code changed since it was written: run again without --resume")
            restore(target, payload["state"][key], f"state[{key!r}] of training {self.desc!r}")
        set_global_rng_state(payload["rng"])
        self.record = self.saved
        return payload["loop"]

    def save(self, epoch: int, loop: dict) -> None:
        """Snapshot the state after ``epoch`` (with the loop's counters ``loop``) and write the checkpoint."""
        payload = {"state": {k: capture(v, f"state[{k!r}]") for k, v in self.state.items()},
                   "rng": global_rng_state(), "loop": capture(loop, "loop")}
        self.record = {"desc": self.desc, "epochs": self.epochs, "epoch": epoch,
                       "complete": epoch == self.epochs, "payload": payload}
        self.session._write(self)

    def finish(self) -> None:
        """Mark a stage without state as run (a resumed run runs it again)."""
        if self.state is None:
            self.record = {"desc": self.desc, "epochs": self.epochs, "epoch": self.epochs, "complete": True,
                           "payload": None}


class Checkpoints:
    """The checkpoints of one run in its :class:`~pcsim.outdir.RunDirectory` ``run``.

    ``Checkpoints(run, config, resume=False)``: ``config`` is the run's validated config
    (``config.checkpoint.every`` says how often; the rest identifies the run); with ``resume``
    the directory's checkpoint is read now and must belong to the same experiment and config,
    else :class:`~pcsim.errors.ConfigError` names the differing keys (no checkpoint:
    :class:`~pcsim.errors.OutputError`). :func:`~pcsim.training.train` finds the session through
    :func:`active_checkpoints` while :meth:`active` is entered.
    """

    def __init__(self, run: RunDirectory, config: ExperimentConfig, *, resume: bool = False,
                 source: str = "") -> None:
        self.run = run
        self.every = int(config.checkpoint.every)
        self.experiment = config.experiment
        self.config, self.config_hash = config_identity(config)
        self.stages: list[Stage] = []
        self.saved_stages: list[dict] = []
        self.resumed = resume
        if resume:
            self.saved_stages = self._read(source)

    @property
    def path(self) -> Path:
        """The checkpoint file, ``DIR/checkpoint.pt``."""
        return self.run.path / CHECKPOINT_FILE

    @contextlib.contextmanager
    def active(self) -> Iterator[Checkpoints]:
        """Make this the session :func:`~pcsim.training.train` saves to and restores from."""
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def begin(self, desc: str, epochs: int, state: Mapping[str, Any] | None) -> Stage:
        """The next stage (a :func:`~pcsim.training.train` call); on resume, with the record the
        checkpoint holds for it, which must be a training of the same ``desc`` and ``epochs``."""
        if state is not None:
            check_state(state)
        stage = Stage(self, len(self.stages), desc, epochs, state)
        if stage.index < len(self.saved_stages):
            saved = self.saved_stages[stage.index]
            if (saved["desc"], saved["epochs"]) != (desc, epochs):
                raise OutputError(
                    f"{self.path}: the run's training {stage.index + 1} is {desc!r} over {epochs} epoch(s), the "
                    f"checkpoint's is {saved['desc']!r} over {saved['epochs']}; the code changed since it was "
                    "written: run again without --resume")
            stage.saved = saved
        self.stages.append(stage)
        return stage

    def _write(self, stage: Stage) -> None:
        records = [s.record for s in self.stages if s.record]
        document = {"pcsim_checkpoint": _FORMAT, "pcsim_version": __version__, "experiment": self.experiment,
                    "config": self.config, "config_hash": self.config_hash, "stages": records}
        info = {"file": CHECKPOINT_FILE, "stage": stage.index, "desc": stage.desc.strip(), "epoch": stage.record["epoch"],
                "epochs": stage.epochs, "complete": stage.record["complete"], "config_hash": self.config_hash,
                "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        self.run.write_checkpoint(lambda path: torch.save(document, path), info)

    def _read(self, source: str) -> list[dict]:
        path = self.path
        if not path.is_file():
            raise OutputError(f"{self.run.path} holds no checkpoint ({CHECKPOINT_FILE}): the run stopped before "
                              "its first checkpoint was written; run it again without --resume")
        try:
            document = torch.load(path, map_location=None, weights_only=True)
        except Exception as exc:  # a truncated or foreign file: say which, whatever torch raised
            raise OutputError(f"{path} is not a readable pcsim checkpoint ({exc}); run again without --resume") from None
        if not isinstance(document, dict) or document.get("pcsim_checkpoint") != _FORMAT:
            raise OutputError(f"{path} is not a pcsim checkpoint of format {_FORMAT}; run again without --resume")
        where = f"{source}: " if source else ""
        if document["experiment"] != self.experiment:
            raise ConfigError(f"{where}cannot resume: the checkpoint {path} is of experiment "
                              f"{document['experiment']!r}, the config's is {self.experiment!r}")
        if document["config_hash"] != self.config_hash:
            diff = config_differences(document["config"], self.config)
            raise ConfigError(
                f"{where}cannot resume: the config differs from the checkpoint's ({path}): "
                f"{'; '.join(diff) or 'hash ' + document['config_hash'][:12]}; resume with the config of the "
                "interrupted run, or run without --resume to start again")
        return list(document["stages"])
