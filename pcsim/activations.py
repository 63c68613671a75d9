"""Activation functions with their derivatives, by the names the configs use.

A layer's prediction is ``mu_l = f(x_{l-1}) @ W_l + b_l``; the local inference rule needs
``f'`` at the pre-synaptic value nodes. Each derivative is written as a function of ``x``
and of the already computed ``f(x)`` so a caller can reuse ``f(x)`` (``tanh' = 1 - f^2``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .errors import ConfigError

Tensor = torch.Tensor


@dataclass(frozen=True)
class Activation:
    """A pointwise non-linearity ``f`` with derivative ``df(x, fx)``; shapes are preserved.
    ``slope_bound``: ``sup_x |f'(x)|`` (1 for tanh, relu and linear, 1/4 for the sigmoid), the
    gain the curvature bound of a preconditioned relaxation needs (:mod:`pcsim.inference`)."""

    name: str
    f: Callable[[Tensor], Tensor]
    df: Callable[[Tensor, Tensor], Tensor]
    slope_bound: float = 1.0


def _tanh(x: Tensor) -> Tensor:
    """``tanh``; inside a compiled graph as ``2 sigmoid(2x) - 1`` (absolute error below 2e-7 in
    float32), whose vectorised exponential costs about half of the compiled ``tanh`` kernel:
    tanh is the largest elementwise cost of a compiled PC step (two per hidden layer and step)."""
    if torch.compiler.is_compiling():
        return 2.0 * torch.sigmoid(2.0 * x) - 1.0
    return torch.tanh(x)


def _relu_df(x: Tensor, fx: Tensor) -> Tensor:
    return (x > 0).to(x.dtype)


ACTIVATIONS: dict[str, Activation] = {
    "tanh": Activation("tanh", _tanh, lambda x, fx: 1.0 - fx * fx),
    "relu": Activation("relu", torch.relu, _relu_df),
    "sigmoid": Activation("sigmoid", torch.sigmoid, lambda x, fx: fx * (1.0 - fx), 0.25),
    "linear": Activation("linear", lambda x: x, lambda x, fx: torch.ones_like(x)),
}


def get_activation(name: str) -> Activation:
    """Return the :class:`Activation` called ``name`` (one of ``ACTIVATIONS``); unknown names raise :class:`~pcsim.errors.ConfigError` listing the known ones."""
    if not isinstance(name, str) or name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]
