"""The parameters of a hierarchical predictive-coding network.

A network is a chain of value-node layers ``x_0 .. x_L`` (widths ``sizes``) and, for
``l = 1..L``, a prediction of layer ``l`` from layer ``l-1``::

    mu_l = f_{l-1}(x_{l-1}) @ W_l + b_l

with a precision ``Pi_l`` (scalar or per unit) on the prediction error
``eps_l = x_l - mu_l``. In generative mode ``x_0`` is a free top-level cause with a Gaussian
prior ``N(prior_mean, 1/prior_precision)``; in discriminative mode ``x_0`` is the clamped
input. The same parameters serve both: only which end is clamped differs (DESIGN.md).

Every tensor carries a leading *ensemble* axis ``E``: ``E`` independent networks (seeds or
hyper-parameters) relax and learn in one batched run. ``E = 1`` is the ordinary case.
The parameters hold no inference state; value nodes live in :class:`pcsim.inference.PCState`.
The static part of a network (widths, activations, mode, which precisions are learned and their
shapes) is one immutable :class:`NetworkSpec`, ``net.spec``, separate from its tensors; compiled
code specialises on the spec and takes the tensors as arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Literal, Sequence

import torch

from .activations import Activation, get_activation
from .arguments import check_number, check_numbers
from .errors import ConfigError

Tensor = torch.Tensor
Mode = Literal["discriminative", "generative"]
SparsePrior = Literal["cauchy", "l1"]


def ensemble_seeds(seed: int | Sequence[int], ensemble: int) -> tuple[int, ...]:
    """The generator seed of each of ``ensemble`` members: ``seed + e`` for an int ``seed``, else ``seed`` itself (one per member).

    Raises :class:`~pcsim.errors.ConfigError` for ``ensemble < 1``, a seed that is not a
    non-negative integer or a sequence of the wrong length.
    """
    ensemble = check_number("ensemble", ensemble, integer=True, ge=1)
    if isinstance(seed, (int, float)) or hasattr(seed, "ndim") and seed.ndim == 0:
        seed = check_number("seed", seed, integer=True, ge=0)
        return tuple(range(seed, seed + ensemble))
    seeds = check_numbers("seed", seed, integer=True, ge=0)
    if len(seeds) != ensemble:
        raise ConfigError(f"seed: got {len(seeds)} seeds for an ensemble of {ensemble}")
    return seeds


@dataclass(frozen=True)
class NetworkSpec:
    """The static (hashable) description of a network, what compiled code specialises on.

    ``sizes = (n_0, ..., n_L)``; ``activations[l]`` is applied to ``x_l`` when it predicts
    ``l + 1`` (``L + 1`` names, the last one unused); ``mode`` says which end is clamped;
    ``learn_precision``: the log-precisions are parameters; ``scalar_precision[l-1]``: layer
    ``l``'s precision is one number ``(E, 1, 1)`` rather than one per unit ``(E, 1, n_l)``.
    ``sparsity``: the strength ``lambda_l >= 0`` of a sparse prior on the value nodes of each
    layer ``0..L`` (``L + 1`` numbers, or ``()`` for none, today's Gaussian-only energy);
    ``sparse_scale``: its scale ``s`` (in the units of the value nodes); ``sparse_prior``: its
    shape, ``"cauchy"`` (``lambda log(1 + x^2/s^2)``) or ``"l1"`` (``lambda |x| / s``); the
    term itself is :func:`pcsim.energy.sparse_energy`.
    """

    sizes: tuple[int, ...]
    activations: tuple[str, ...]
    mode: Mode
    learn_precision: bool
    scalar_precision: tuple[bool, ...]
    sparsity: tuple[float, ...] = ()
    sparse_scale: float = 1.0
    sparse_prior: SparsePrior = "cauchy"

    @property
    def depth(self) -> int:
        """Number of prediction layers ``L`` (value-node layers are ``0..L``)."""
        return len(self.sizes) - 1

    def activation(self, l: int) -> Activation:
        """The :class:`Activation` applied to value layer ``l`` when it predicts ``l + 1``."""
        return get_activation(self.activations[l])

    def sparse(self, l: int) -> tuple[float, float, SparsePrior] | None:
        """``(lambda_l, s, kind)`` of layer ``l``'s sparse prior, or None where it has none (``lambda_l = 0``)."""
        if not self.sparsity or self.sparsity[l] == 0:
            return None
        return self.sparsity[l], self.sparse_scale, self.sparse_prior


@dataclass
class PCNetwork:
    """Parameters of ``E`` predictive-coding networks of identical architecture.

    Shapes (``E`` ensemble members, ``n_l = sizes[l]``), index ``k = l - 1`` for layer ``l``:

    - ``weights[k]``: ``(E, n_{l-1}, n_l)`` — row-major so ``f(x) @ W`` predicts layer ``l``.
    - ``biases[k]``: ``(E, 1, n_l)``.
    - ``log_precision[k]``: ``(E, 1, n_l)`` (per unit) or ``(E, 1, 1)`` (scalar); the
      precision ``Pi_l = exp(log_precision)`` is dimensionless (inverse variance of the
      prediction error in the units of the value nodes).
    - ``prior_mean``: ``(E, 1, n_0)``, ``prior_log_precision``: ``(E, 1, 1)`` — generative mode.
    - ``activations[l]`` is applied to ``x_l`` when it predicts layer ``l + 1`` (``l < L``).
    """

    spec: NetworkSpec
    weights: list[Tensor]
    biases: list[Tensor]
    log_precision: list[Tensor]
    prior_mean: Tensor
    prior_log_precision: Tensor
    seeds: tuple[int, ...] = field(default=(0,))

    # ----------------------------------------------------------------- construction
    @classmethod
    def init(
        cls,
        sizes: Sequence[int],
        activation: str | Sequence[str] = "tanh",
        *,
        mode: Mode = "discriminative",
        ensemble: int = 1,
        seed: int | Sequence[int] = 0,
        precision: float | Sequence[float] = 1.0,
        per_unit_precision: bool = False,
        learn_precision: bool = False,
        prior_precision: float = 1.0,
        sparsity: float | Sequence[float] = 0.0,
        sparse_scale: float = 1.0,
        sparse_prior: SparsePrior = "cauchy",
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
    ) -> "PCNetwork":
        """Create ``ensemble`` networks with widths ``sizes = (n_0, ..., n_L)``.

        ``activation`` is one name for every hidden layer (the input layer ``x_0`` of a
        discriminative network stays linear) or a list of ``L`` names, one per pre-synaptic
        layer ``0..L-1``. Weights are Glorot-uniform, biases zero. Member ``e`` is drawn from
        its own generator seeded with ``seeds[e]`` (``seed + e`` when ``seed`` is an int), so
        an ensemble equals the same networks made one at a time. ``precision`` is the
        initial precision of layers ``1..L`` (one value, or one per layer), dimensionless.
        Every argument is checked here, the boundary: widths must be integers >= 1 (``32.7``
        is refused, not truncated), precisions finite and > 0; a bad one raises
        :class:`~pcsim.errors.ConfigError` naming it. ``sparsity`` (``L + 1`` strengths
        ``lambda_l >= 0``, one per value layer ``0..L``; the default 0 is none) adds a sparse
        (kurtotic) prior on the value nodes, ``lambda_l sum_i log(1 + x_{l,i}^2 / s^2)`` with
        ``s = sparse_scale`` (``sparse_prior="cauchy"``, Rao & Ballard 1999; Olshausen & Field
        1996) or ``lambda_l sum_i |x_{l,i}| / s`` (``"l1"``), to the energy of inference
        (:func:`pcsim.energy.sparse_energy`); on a clamped layer it is a constant.
        """
        sizes = check_numbers("sizes", sizes, integer=True, ge=1)
        if len(sizes) < 2:
            raise ConfigError(f"sizes must list at least two widths (n_0, ..., n_L), got {sizes}")
        L = len(sizes) - 1
        if mode not in ("discriminative", "generative"):
            raise ConfigError(f"mode must be 'discriminative' or 'generative', got {mode!r}")
        if isinstance(activation, str):
            first = "linear" if mode == "discriminative" else activation
            acts = (first,) + (activation,) * (L - 1)
        else:
            acts = tuple(activation)
            if len(acts) != L:
                raise ConfigError(f"activation: need {L} names (one per pre-synaptic layer 0..{L-1}), got {len(acts)}")
        for a in acts:
            get_activation(a)
        acts = acts + ("linear",)  # x_L predicts nothing; kept so activations[l] exists for all l
        prior_precision = check_number("prior_precision", prior_precision, gt=0)
        seeds = ensemble_seeds(seed, ensemble)
        if isinstance(precision, (int, float)) or hasattr(precision, "ndim") and precision.ndim == 0:
            precs = [check_number("precision", precision, gt=0)] * L
        else:
            precs = list(check_numbers("precision", precision, gt=0))
            if len(precs) != L:
                raise ConfigError(f"precision must be one value or {L} values (one per layer 1..{L}), got {precision}")
        for name, flag in (("per_unit_precision", per_unit_precision), ("learn_precision", learn_precision)):
            if not isinstance(flag, bool):
                raise ConfigError(f"{name} must be True or False, got {flag!r}")

        weights = [[] for _ in range(L)]
        for s in seeds:
            gen = torch.Generator().manual_seed(s)
            for k in range(L):
                bound = math.sqrt(6.0 / (sizes[k] + sizes[k + 1]))
                w = (torch.rand(sizes[k], sizes[k + 1], generator=gen, dtype=torch.float64) * 2 - 1) * bound
                weights[k].append(w)
        W = [torch.stack(ws).to(device=device, dtype=dtype) for ws in weights]
        b = [torch.zeros(ensemble, 1, sizes[k + 1], device=device, dtype=dtype) for k in range(L)]
        lp = [
            torch.full((ensemble, 1, sizes[k + 1] if per_unit_precision else 1), math.log(precs[k]), device=device, dtype=dtype)
            for k in range(L)
        ]
        # relu is flat at 0 (f = f' = 0): a top cause starting there could never move or drive
        # the layers below, so a relu top layer's prior mean starts at 1 instead
        m0 = 1.0 if (mode == "generative" and acts[0] == "relu") else 0.0
        prior_mean = torch.full((ensemble, 1, sizes[0]), m0, device=device, dtype=dtype)
        prior_lp = torch.full((ensemble, 1, 1), math.log(prior_precision), device=device, dtype=dtype)
        if isinstance(sparsity, (int, float)) or hasattr(sparsity, "ndim") and sparsity.ndim == 0:
            if check_number("sparsity", sparsity, ge=0) != 0:
                raise ConfigError(f"sparsity: give {L + 1} strengths (one per value layer 0..{L}), got the single "
                                  f"value {sparsity!r}; 0 (none) is the only single value")
            lams = ()
        else:
            lams = check_numbers("sparsity", sparsity, ge=0)
            if len(lams) != L + 1:
                raise ConfigError(f"sparsity must list {L + 1} strengths (one per value layer 0..{L}), got {len(lams)}")
            lams = lams if any(lams) else ()  # all zero: exactly the network without a sparse prior
        sparse_scale = check_number("sparse_scale", sparse_scale, gt=0)
        if sparse_prior not in ("cauchy", "l1"):
            raise ConfigError(f"sparse_prior must be 'cauchy' or 'l1', got {sparse_prior!r}")
        spec = NetworkSpec(sizes, acts, mode, bool(learn_precision), (not per_unit_precision,) * L, lams, sparse_scale,
                           sparse_prior)
        return cls(spec, W, b, lp, prior_mean, prior_lp, seeds)

    # ----------------------------------------------------------------- properties
    @property
    def sizes(self) -> tuple[int, ...]:
        """Widths ``(n_0, ..., n_L)`` (from :attr:`spec`)."""
        return self.spec.sizes

    @property
    def activations(self) -> tuple[str, ...]:
        """Activation names, one per value layer (from :attr:`spec`)."""
        return self.spec.activations

    @property
    def mode(self) -> Mode:
        """``"discriminative"`` or ``"generative"`` (from :attr:`spec`)."""
        return self.spec.mode

    @property
    def learn_precision(self) -> bool:
        """Whether the log-precisions are learned parameters (from :attr:`spec`)."""
        return self.spec.learn_precision

    @property
    def depth(self) -> int:
        """Number of prediction layers ``L`` (value-node layers are ``0..L``)."""
        return self.spec.depth

    @property
    def ensemble(self) -> int:
        """Number of ensemble members ``E``."""
        return self.weights[0].shape[0]

    @property
    def device(self) -> torch.device:
        """The device every parameter lives on."""
        return self.weights[0].device

    @property
    def dtype(self) -> torch.dtype:
        """The floating-point type of every parameter (float32 by default)."""
        return self.weights[0].dtype

    def activation(self, l: int) -> Activation:
        """The :class:`Activation` applied to value layer ``l`` when it predicts ``l + 1``."""
        return self.spec.activation(l)

    def precision(self) -> list[Tensor]:
        """Precisions ``Pi_l`` for ``l = 1..L``, each ``(E, 1, n_l)`` or ``(E, 1, 1)``, dimensionless."""
        return [lp.exp() for lp in self.log_precision]

    def unit_precision(self) -> bool:
        """True when every precision is fixed at exactly 1 (lets the dynamics skip the products)."""
        if self.learn_precision:
            return False
        return not bool(torch.cat([lp.reshape(-1) for lp in self.log_precision]).any())

    def parameters(self) -> list[Tensor]:
        """The learnable tensors in a fixed order: ``W_1..W_L, b_1..b_L`` (+ log-precisions when learned, + prior mean in generative mode)."""
        ps = list(self.weights) + list(self.biases)
        if self.learn_precision:
            ps += list(self.log_precision)
        if self.mode == "generative":
            ps.append(self.prior_mean)
        return ps

    # ----------------------------------------------------------------- derived networks
    def _map(self, fn, *others: "PCNetwork", **changes) -> "PCNetwork":
        """The network whose every tensor is ``fn`` of the matching tensors of ``self`` and
        ``others`` (the one place that lists a network's tensors), with ``changes`` replaced."""
        nets = (self, *others)
        lists = {name: [fn(*ts) for ts in zip(*(getattr(n, name) for n in nets))]
                 for name in ("weights", "biases", "log_precision")}
        single = {name: fn(*(getattr(n, name) for n in nets)) for name in ("prior_mean", "prior_log_precision")}
        return replace(self, **lists, **single, **changes)

    def clone(self) -> "PCNetwork":
        """A deep copy (new tensors), e.g. to train the same initial weights with several rules."""
        return self._map(torch.clone)

    def member(self, e: int) -> "PCNetwork":
        """Ensemble member ``e`` as a network with ``E = 1`` (copies)."""
        if not 0 <= e < self.ensemble:
            raise ConfigError(f"ensemble member e={e} does not exist (E = {self.ensemble})")
        return self._map(lambda t: t[e:e + 1].clone(), seeds=(self.seeds[e],))

    @classmethod
    def concat(cls, nets: Sequence["PCNetwork"]) -> "PCNetwork":
        """One ensemble of the members of ``nets`` in order (``E = sum of their E``; new tensors),
        e.g. networks of several configs trained as one batch. They must share their spec
        (sizes, activations, mode, precision layout), dtype and device; else ConfigError."""
        nets = list(nets)
        if not nets or not all(isinstance(n, cls) for n in nets):
            raise ConfigError("concat needs a non-empty sequence of PCNetworks")
        first = nets[0]
        for n in nets[1:]:
            if n.spec != first.spec or n.dtype != first.dtype or n.device != first.device:
                raise ConfigError("concat: the networks differ in architecture, precision layout, dtype or device "
                                  f"({n.spec} on {n.device}/{n.dtype} vs {first.spec} on {first.device}/{first.dtype})")
        return first._map(lambda *ts: torch.cat(ts), *nets[1:], seeds=tuple(s for n in nets for s in n.seeds))

    def to(self, device: str | torch.device) -> "PCNetwork":
        """The same network with every tensor moved to ``device``."""
        return self._map(lambda t: t.to(device))

    # ----------------------------------------------------------------- forward sweep
    def forward(self, x0: Tensor) -> list[Tensor]:
        """Feed-forward sweep ``x_l = mu_l(x_{l-1})`` from ``x0: (E, B, n_0)``; returns ``[x_0, ..., x_L]``.

        This is the initial state of discriminative inference and, from the prior mean, of
        generative inference; at that state every prediction error above layer 0 is zero.
        The sweep itself is :func:`pcsim.energy.sweep`.
        """
        from .energy import sweep  # energy builds on this module's types

        return sweep(self.spec, self.weights, self.biases, x0)
