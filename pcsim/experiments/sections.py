"""Config sections shared by several experiments (TOML tables ``[network]``, ``[inference]``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

from ..inference import InferenceConfig
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


@dataclass(frozen=True, kw_only=True)
class InferenceSection:
    """``steps`` T; ``dt`` and ``tau`` in ms (step size dt/tau); ``momentum``; ``tol``: relative
    energy change for early stopping (0: off); ``max_growth``: divergence bound on the energy;
    ``compile``: run the inference loop as one ``torch.compile``d graph (faster, compiles first)."""

    steps: int = field(default=20, metadata={"ge": 0})
    dt: float = field(default=1.0, metadata={"gt": 0})
    tau: float = field(default=10.0, metadata={"gt": 0})
    momentum: float = field(default=0.0, metadata={"ge": 0, "lt": 1})
    tol: float = field(default=0.0, metadata={"ge": 0})
    max_growth: float = field(default=10.0, metadata={"gt": 1})
    compile: bool = False

    def build(self, record: bool = False) -> InferenceConfig:
        """The :class:`~pcsim.inference.InferenceConfig` these settings describe."""
        return InferenceConfig(self.steps, self.dt, self.tau, self.momentum, self.tol, self.max_growth, record,
                               compile=self.compile)
