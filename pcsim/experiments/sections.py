"""Config sections shared by several experiments (TOML table ``[network]``); ``[inference]`` is
the engine's own :class:`~pcsim.inference.InferenceConfig`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..network import PCNetwork

Activation = Literal["tanh", "relu", "sigmoid", "linear"]


@dataclass(frozen=True, kw_only=True)
class NetworkSection:
    """``hidden``: widths of the hidden layers; ``activation`` of hidden units; ``precision``:
    initial precision of every layer's prediction error (dimensionless); ``learn_precision``;
    ``ensemble``: number of networks (seeds ``seed .. seed+ensemble-1``) run as one batch."""

    hidden: tuple[int, ...] = field(default=(128, 128), metadata={"ge": 1})
    activation: Activation = "tanh"
    precision: float = field(default=1.0, metadata={"gt": 0})
    learn_precision: bool = False
    ensemble: int = field(default=1, metadata={"ge": 1})

    def build(self, n_in: int, n_out: int, seed: int, device: str) -> PCNetwork:
        """A discriminative network ``n_in -> hidden... -> n_out`` on ``device``."""
        return PCNetwork.init(
            (n_in, *self.hidden, n_out), self.activation, ensemble=self.ensemble, seed=seed,
            precision=self.precision, learn_precision=self.learn_precision, device=device, dtype=torch.float32,
        )
