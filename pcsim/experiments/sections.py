"""Config sections shared by several experiments (TOML table ``[network]``); ``[inference]`` is
the engine's own :class:`~pcsim.inference.InferenceConfig`."""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Literal

import torch

from ..network import PCNetwork

Activation = Literal["tanh", "relu", "sigmoid", "linear"]


_INIT = inspect.signature(PCNetwork.init).parameters


def _init_default(name: str):
    """The default of ``PCNetwork.init``'s keyword ``name``: the engine states it once."""
    return _INIT[name].default


@dataclass(frozen=True, kw_only=True)
class NetworkSection:
    """A discriminative MLP for a data set whose widths fix the two ends: ``hidden`` (the only
    experiment-level setting) and keywords of :meth:`PCNetwork.init <pcsim.network.PCNetwork.init>`
    under its own names, with its own defaults and its own checks (``activation`` of the
    hidden units; ``precision``: initial precision of every prediction error, dimensionless;
    ``learn_precision``; ``ensemble``: networks with seeds ``seed .. seed+ensemble-1`` run as
    one batch)."""

    hidden: tuple[int, ...] = field(default=(128, 128), metadata={"ge": 1})
    activation: Activation = _init_default("activation")
    precision: float = _init_default("precision")
    learn_precision: bool = _init_default("learn_precision")
    ensemble: int = _init_default("ensemble")

    def __post_init__(self):
        # PCNetwork.init's own checks, on a network of width-1 layers (no weights worth allocating)
        PCNetwork.init((1,) * (len(self.hidden) + 2), seed=0, **self._keywords())

    def _keywords(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "hidden"}

    def build(self, n_in: int, n_out: int, seed: int | Sequence[int], device: str) -> PCNetwork:
        """A discriminative float32 network ``n_in -> hidden... -> n_out`` on ``device``; ``seed``
        as :meth:`PCNetwork.init <pcsim.network.PCNetwork.init>` takes it (one, or one per member)."""
        return PCNetwork.init((n_in, *self.hidden, n_out), seed=seed, device=device, dtype=torch.float32,
                              **self._keywords())
