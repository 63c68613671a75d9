"""The layer stacks of the generative baselines, built from a PC network's layer specification.

A comparison of predictive coding with a VAE or a Helmholtz machine isolates inference and
learning from architecture only if the generative path is the same. So every decoder here
*is* a PC network's generative path: a :class:`~pcsim.network.NetworkSpec` (widths
``(d, ..., D)``, activations) with weights ``W_l`` ``(1, n_{l-1}, n_l)`` and biases ``b_l``
``(1, 1, n_l)`` (the ensemble axis ``E = 1`` of :class:`~pcsim.network.PCNetwork`), swept
from the top latent ``z`` to the data mean by :func:`pcsim.energy.sweep`, the one statement
of the layer equation ``mu_l = f(x_{l-1}) @ W_l + b_l``. :class:`Layers` is that stack (the
amortised encoders use it too, in discriminative mode, read as a diagonal Gaussian by
:func:`gaussian_posterior`); :class:`Decoder` adds the observation model ``p(x | z)``
(:func:`pcsim.generative.base.observation_model`). The VAEs and the Helmholtz machine are both
made of these.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from pcsim.arguments import check_number
from pcsim.energy import sweep
from pcsim.errors import ConfigError, DataError
from pcsim.network import Mode, NetworkSpec, PCNetwork

from .base import Bernoulli, Gaussian, Posterior, observation_model

Tensor = torch.Tensor

__all__ = ["Decoder", "Layers", "gaussian_posterior"]


@dataclass
class Layers:
    """A stack of layers ``mu_l = f(x_{l-1}) @ W_l + b_l`` of one :class:`~pcsim.network.NetworkSpec`.

    ``weights[k]`` ``(1, n_k, n_{k+1})``, ``biases[k]`` ``(1, 1, n_{k+1})``; calling it on
    ``x`` ``(..., n_0)`` returns the last layer ``(..., n_L)`` of :func:`pcsim.energy.sweep`
    (leading axes are flattened into the batch axis and restored). Differentiable: the
    tensors may require grad, and the training of a VAE back-propagates through them.
    """

    spec: NetworkSpec
    weights: list[Tensor]
    biases: list[Tensor]

    @classmethod
    def init(cls, sizes: Sequence[int], activation: str | Sequence[str] = "tanh", *, mode: Mode = "generative",
             seed: int = 0, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64) -> "Layers":
        """Widths ``sizes = (n_0, ..., n_L)`` initialised exactly as :meth:`PCNetwork.init` would
        (Glorot-uniform weights from ``seed``, zero biases; ``activation`` one name or one per
        pre-synaptic layer, the input of a discriminative stack linear), so a decoder and a PC
        network made with the same arguments start from the same weights. Bad arguments raise
        :class:`~pcsim.errors.ConfigError` naming them."""
        net = PCNetwork.init(sizes, activation, mode=mode, seed=seed, device=device, dtype=dtype)
        return cls(net.spec, list(net.weights), list(net.biases))

    @classmethod
    def from_network(cls, net: PCNetwork, member: int = 0) -> "Layers":
        """The layers of ensemble member ``member`` of ``net`` (copies of its tensors, same spec)."""
        if not isinstance(net, PCNetwork):
            raise ConfigError(f"net must be a PCNetwork, got {type(net).__name__}")
        one = net.member(member)
        return cls(one.spec, list(one.weights), list(one.biases))

    @property
    def sizes(self) -> tuple[int, ...]:
        """Widths ``(n_0, ..., n_L)``."""
        return self.spec.sizes

    def parameters(self) -> list[Tensor]:
        """The learnable tensors: ``W_1..W_L, b_1..b_L`` (the order of :meth:`PCNetwork.parameters`)."""
        return list(self.weights) + list(self.biases)

    def __call__(self, x: Tensor) -> Tensor:
        """The sweep's last layer ``(..., n_L)`` from ``x`` ``(..., n_0)``."""
        flat = x.reshape(1, -1, x.shape[-1])
        return sweep(self.spec, self.weights, self.biases, flat)[-1].reshape(*x.shape[:-1], self.spec.sizes[-1])


def gaussian_posterior(encoder: Layers, x: Tensor) -> Posterior:
    """The diagonal Gaussian an amortised encoder (a recognition network) outputs for ``x``
    ``(..., n_0)``: its last layer ``(..., 2 d)`` split into the mean (first ``d`` units) and
    the log-variance (last ``d``), each ``(..., d)``."""
    out = encoder(x)
    d = out.shape[-1] // 2
    return Posterior(out[..., :d], out[..., d:])


@dataclass
class Decoder:
    """``p(x | z)``: the mean ``g(z)`` of :class:`Layers` in generative mode (``z`` ``(..., d)`` ->
    ``(..., D)``) and an observation model around it.

    ``observation="gaussian"``: ``x ~ N(g(z), sigma^2)`` with ``log_sigma`` ``(D,)`` (per
    dimension) or ``(1,)`` (one scalar), in the units of ``x``; ``"bernoulli"``: the mean is
    ``sigmoid(g(z))`` and ``log_sigma`` is None. :meth:`parameters` lists the layer tensors
    and, for a Gaussian, ``log_sigma`` last.
    """

    layers: Layers
    observation: str = "gaussian"
    log_sigma: Tensor | None = None

    @classmethod
    def init(cls, sizes: Sequence[int], activation: str | Sequence[str] = "tanh", *, observation: str = "gaussian",
             sigma: str = "per_dimension", log_sigma: float = 0.0, seed: int = 0,
             device: str | torch.device = "cpu", dtype: torch.dtype = torch.float64) -> "Decoder":
        """A decoder with widths ``sizes = (d, ..., D)`` (the spec :meth:`PCNetwork.init` builds in
        generative mode from the same ``sizes`` and ``activation``, same initial weights for the
        same ``seed``); ``sigma``: ``"per_dimension"`` or ``"scalar"`` (Gaussian only), initial
        ``log_sigma`` (nats of the units of ``x``). :class:`~pcsim.errors.ConfigError` naming
        a bad argument."""
        layers = Layers.init(sizes, activation, mode="generative", seed=seed, device=device, dtype=dtype)
        return cls._with_observation(layers, observation, sigma, log_sigma)

    @classmethod
    def from_network(cls, net: PCNetwork, *, observation: str = "gaussian", member: int = 0) -> "Decoder":
        """The generative path of a generative-mode PC network as a decoder: its spec and (copied)
        weights; a Gaussian's ``sigma`` is the output layer's ``Pi_L^{-1/2}`` (``log_sigma =
        -log_precision_L / 2``, per unit or scalar as the network has it)."""
        layers = Layers.from_network(net, member)
        if net.mode != "generative":
            raise ConfigError(f"net: a decoder needs a generative-mode network, got mode={net.mode!r}")
        dec = cls._with_observation(layers, observation, "per_dimension", 0.0)
        if dec.log_sigma is not None:
            dec.log_sigma = (-0.5 * net.log_precision[-1][member, 0]).clone()
        return dec

    @classmethod
    def _with_observation(cls, layers: Layers, observation: str, sigma: str, log_sigma: float) -> "Decoder":
        observation_model(observation)  # ConfigError naming a bad one
        if observation == "bernoulli":
            return cls(layers, observation, None)
        if sigma not in ("per_dimension", "scalar"):
            raise ConfigError(f"sigma must be 'per_dimension' or 'scalar', got {sigma!r}")
        log_sigma = check_number("log_sigma", log_sigma)
        w = layers.weights[-1]
        n = layers.sizes[-1] if sigma == "per_dimension" else 1
        return cls(layers, observation, torch.full((n,), log_sigma, dtype=w.dtype, device=w.device))

    @property
    def latent_dim(self) -> int:
        """``d``, the width of the top latent."""
        return self.layers.sizes[0]

    @property
    def n_features(self) -> int:
        """``D``, the width of the data."""
        return self.layers.sizes[-1]

    def parameters(self) -> list[Tensor]:
        """The learnable tensors: ``W_1..W_L, b_1..b_L`` (+ ``log_sigma`` for a Gaussian)."""
        return self.layers.parameters() + ([] if self.log_sigma is None else [self.log_sigma])

    def requires_grad_(self, flag: bool = True) -> "Decoder":
        """Mark every parameter as a leaf that does (or does not) require grad; returns self."""
        for p in self.parameters():
            p.requires_grad_(flag)
        return self

    def model(self) -> Gaussian | Bernoulli:
        """The observation model (:mod:`pcsim.generative.base`) with the current ``log_sigma``."""
        return observation_model(self.observation, self.log_sigma if self.log_sigma is not None else 0.0)

    def mean(self, z: Tensor) -> Tensor:
        """``E[x | z]`` ``(..., D)`` for latents ``z`` ``(..., d)``: the sweep's output, through a
        sigmoid for a Bernoulli observation model."""
        if z.shape[-1] != self.latent_dim:
            raise DataError(f"z has {z.shape[-1]} latent dimensions but the decoder's top layer has {self.latent_dim}")
        out = self.layers(z)
        return torch.sigmoid(out) if self.observation == "bernoulli" else out

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(x | z)`` (nats) of data ``x`` ``(N, D)`` under latents ``z`` ``(K, N, d)``: ``(K, N)``."""
        return self.model().log_prob(x, self.mean(z))

    def sample(self, z: Tensor, generator: torch.Generator) -> Tensor:
        """A draw of ``x ~ p(x | z)`` ``(..., D)`` for ``z`` ``(..., d)`` (Gaussian noise, or 0/1 pixels)."""
        m = self.mean(z)
        if self.observation == "bernoulli":
            return torch.bernoulli(m, generator=generator)
        noise = torch.randn(m.shape, generator=generator, dtype=m.dtype, device=m.device)
        return m + torch.exp(self.log_sigma) * noise

