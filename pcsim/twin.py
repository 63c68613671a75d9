"""The backprop twin of a predictive-coding network.

Every PC network yields the feed-forward network with identical weights,
``h_0 = x_0``, ``h_l = f(h_{l-1}) @ W_l + b_l``, trained by autograd on the loss that matches
the output energy, ``1/2 (y - h_L)^T Pi_L (y - h_L)`` averaged over the batch, with the same
optimiser class, data order and seed as the PC rules. Comparing the two is how pcsim
measures how close local learning comes to backprop.
"""

from __future__ import annotations

import torch
from torch import nn

from .energy import output_loss, sweep
from .errors import ConfigError, DataError
from .inference import _as_batch
from .network import PCNetwork
from .parallel import threads, threads_for

Tensor = torch.Tensor

_MODULES = {"tanh": nn.Tanh, "relu": nn.ReLU, "sigmoid": nn.Sigmoid, "linear": nn.Identity}


class BackpropTwin(nn.Module):
    """Feed-forward twin of ``net``: parameters ``W_l`` ``(E, n_{l-1}, n_l)`` and ``b_l`` ``(E, 1, n_l)``, copied."""

    def __init__(self, net: PCNetwork, compile: bool = False):
        super().__init__()
        self._loss = torch.compile(self._loss_impl, dynamic=False) if compile else self._loss_impl
        if net.mode != "discriminative":
            raise ConfigError(f"net: a backprop twin needs a discriminative network (input at x_0, output at x_L), got mode={net.mode!r}")
        self.net = net.clone()  # activations, precisions and validation come from here
        self.weights = nn.ParameterList([nn.Parameter(w.clone()) for w in net.weights])
        self.biases = nn.ParameterList([nn.Parameter(b.clone()) for b in net.biases])

    def params(self) -> list[Tensor]:
        """Parameters in the order of ``PCNetwork.parameters()`` (weights, then biases)."""
        return list(self.weights) + list(self.biases)

    def forward(self, inputs: Tensor) -> Tensor:
        """Output ``h_L`` ``(E, B, n_L)`` for inputs ``(B, n_0)`` or ``(E, B, n_0)``."""
        return self._forward(_as_batch(self.net, inputs, "inputs", self.net.sizes[0]))

    def _forward(self, h: Tensor) -> Tensor:
        return sweep(self.net.spec, list(self.weights), list(self.biases), h)[-1]

    def loss(self, inputs: Tensor, target: Tensor) -> Tensor:
        """Per-member loss ``(E,)``: ``1/2 (y - h_L)^T Pi_L (y - h_L)`` averaged over the batch."""
        x = _as_batch(self.net, inputs, "inputs", self.net.sizes[0])
        y = _as_batch(self.net, target, "target", self.net.sizes[-1])
        if y.shape[1] != x.shape[1]:
            raise DataError(f"target has {y.shape[1]} samples but inputs have {x.shape[1]}")
        return self._loss(x, y)

    def _loss_impl(self, x: Tensor, y: Tensor) -> Tensor:
        return output_loss(self.net, self._forward(x), y)

    def gradients(self, inputs: Tensor, target: Tensor) -> list[Tensor]:
        """Autograd gradients of the loss, ordered as :meth:`params`; members are independent, so their losses are summed."""
        params = self.params()
        return list(torch.autograd.grad(self.loss(inputs, target).sum(), params))

    def step(self, optimizer, inputs: Tensor, target: Tensor) -> Tensor:
        """One backprop training step with ``optimizer`` (from :mod:`pcsim.optim`); returns the pre-step loss ``(E,)``."""
        params = self.params()
        batch = inputs.shape[-2] if hasattr(inputs, "shape") else len(inputs)
        with threads(threads_for(self.net.sizes, batch, self.net.ensemble)):  # pcsim.parallel says why
            loss = self.loss(inputs, target)
            grads = torch.autograd.grad(loss.sum(), params)
            with torch.no_grad():
                optimizer.step([p.data for p in params], list(grads))
        return loss.detach()

    def to_network(self) -> PCNetwork:
        """A PC network carrying the twin's current weights (e.g. to measure alignment along a backprop run)."""
        net = self.net.clone()
        net.weights = [w.detach().clone() for w in self.weights]
        net.biases = [b.detach().clone() for b in self.biases]
        return net

    def to_sequential(self, member: int = 0) -> nn.Sequential:
        """Ensemble member ``member`` as a plain ``nn.Sequential`` of ``nn.Linear`` and activation modules (copies)."""
        layers: list[nn.Module] = []
        for k in range(self.net.depth):
            act = self.net.activations[k]
            if act not in _MODULES:
                raise ConfigError(f"activation {act!r} has no torch.nn module to export")
            if act != "linear":
                layers.append(_MODULES[act]())
            lin = nn.Linear(self.net.sizes[k], self.net.sizes[k + 1], device=self.net.device, dtype=self.net.dtype)
            with torch.no_grad():
                lin.weight.copy_(self.weights[k][member].T)
                lin.bias.copy_(self.biases[k][member, 0])
            layers.append(lin)
        return nn.Sequential(*layers)
