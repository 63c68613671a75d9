"""The surface every generative model of pcsim shares, and the pieces all of them use.

Predictive coding's generative mode, VAEs, identifiable VAEs, normalizing flows and
Helmholtz machines are compared on the same data, with the same decoders where they have
one, by the same metrics (:mod:`pcsim.generative.metrics`). For that each is a
:class:`GenerativeModel`: a scikit-learn estimator (:class:`sklearn.base.BaseEstimator`:
hyper-parameters stored verbatim by ``__init__`` and checked in :meth:`fit` against
``_parameter_constraints``; learned state ends in ``_``) over data ``x`` ``(N, D)`` (float;
pixel intensities in ``[0, 1]`` for the image data sets) and an optional auxiliary variable
``aux`` ``(N,)`` (integer labels ``0..n_aux-1``: a class, a segment, a condition), with

- ``fit(x, aux=None)``: train on the model's own rule, through :func:`pcsim.training.train`;
- ``encode(x, aux=None) -> Posterior``: the approximate posterior over the latents ``z``
  ``(N, d)`` (a diagonal Gaussian; a flow's latent is its exact inverse, zero variance);
- ``decode(z) -> Tensor``: the mean of ``p(x | z)`` ``(N, D)``;
- ``sample(n, aux=None, seed=0, *, noise=True) -> Tensor``: ``n`` samples of ``x`` ``(n, D)`` from
  the model; ``noise=False``: the decoder mean ``E[x | z]`` at each sampled latent, without the
  observation noise (what a sample-quality score should see: pixel noise of the learned
  ``sigma`` would dominate a Fréchet distance);
- ``log_joint(x, z, aux=None) -> Tensor``: ``log p(x, z)`` per example ``(K, N)`` for latents
  ``z`` ``(K, N, d)``, in nats (flows: ``log p(x)``, ``z`` ignored);
- ``log_likelihood(x, aux=None, samples=K, seed=0) -> LogLikelihood``: ``log p(x)`` per
  example, exact for a flow, else the importance-weighted estimate with ``K`` samples of the
  model's proposal (:func:`importance_weighted`), with its Monte Carlo standard error;
- ``elbo(x, aux=None, samples=1, seed=0) -> Tensor``: the evidence lower bound per example ``(N,)``.

Observation models (:class:`Gaussian`, :class:`Bernoulli`) state ``log p(x | mean)`` once
and are shared by every model with a decoder. Every tensor is float64 on the CPU unless a
model's ``device``/``dtype`` say otherwise; every random draw takes a seed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils._param_validation import Interval, InvalidParameterError

from pcsim.arguments import check_number
from pcsim.data import epoch_batches
from pcsim.errors import ConfigError, DataError
from pcsim.parallel import threads, threads_for_stacks
from pcsim.training import train

Tensor = torch.Tensor

__all__ = ["Bernoulli", "Gaussian", "GenerativeModel", "LogLikelihood", "Posterior", "as_data",
           "importance_weighted", "observation_model"]


def diagonal_normal_log_prob(x: Tensor, mean: Tensor, log_var: Tensor) -> Tensor:
    """``log N(x; mean, diag exp(log_var))`` summed over the last axis (nats): the one statement of
    the diagonal Gaussian density, for observation models and posteriors alike; ``x``, ``mean``
    and ``log_var`` broadcast, ``(..., d) -> (...)``."""
    diff = x - mean
    return -0.5 * (diff * diff * torch.exp(-log_var) + log_var + math.log(2 * math.pi)).sum(-1)


# --------------------------------------------------------------------------- observation models
@dataclass(frozen=True)
class Gaussian:
    """``p(x | mean) = N(mean, sigma^2 I)`` with ``log_sigma`` a scalar or ``(D,)`` tensor (nats).

    :meth:`log_prob` ``(..., D) -> (...)`` sums over the last axis.
    """

    log_sigma: Tensor | float = 0.0

    def log_prob(self, x: Tensor, mean: Tensor) -> Tensor:
        """``log N(x; mean, sigma^2)`` summed over the last axis: ``x`` and ``mean`` ``(..., D)`` -> ``(...)``."""
        log_sigma = torch.as_tensor(self.log_sigma, dtype=mean.dtype, device=mean.device)
        return diagonal_normal_log_prob(x, mean, 2.0 * log_sigma)


@dataclass(frozen=True)
class Bernoulli:
    """``p(x | mean) = prod_d mean_d^x_d (1 - mean_d)^(1 - x_d)`` for ``x`` in ``[0, 1]`` (a
    continuous Bernoulli is not normalised: use it for binarised data or as a reconstruction
    score, and report likelihoods with :class:`Gaussian` on dequantised data)."""

    def log_prob(self, x: Tensor, mean: Tensor) -> Tensor:
        """Summed over the last axis, ``(..., D) -> (...)``; ``mean`` is clipped to ``[1e-6, 1 - 1e-6]``."""
        p = mean.clamp(1e-6, 1 - 1e-6)
        return (x * torch.log(p) + (1 - x) * torch.log1p(-p)).sum(-1)


def observation_model(name: str, log_sigma: Tensor | float = 0.0) -> Gaussian | Bernoulli:
    """The observation model called ``name`` (``"gaussian"``, ``"bernoulli"``)."""
    if name == "gaussian":
        return Gaussian(log_sigma)
    if name == "bernoulli":
        return Bernoulli()
    raise ConfigError(f"observation must be 'gaussian' or 'bernoulli', got {name!r}")


# --------------------------------------------------------------------------- posteriors and likelihoods
@dataclass(frozen=True)
class Posterior:
    """A diagonal Gaussian ``q(z | x)``: ``mean`` and ``log_var`` ``(N, d)``."""

    mean: Tensor
    log_var: Tensor

    def sample(self, samples: int, generator: torch.Generator) -> Tensor:
        """``samples`` reparameterised draws ``(K, N, d)``."""
        eps = torch.randn((samples, *self.mean.shape), generator=generator, dtype=self.mean.dtype,
                          device=self.mean.device)
        return self.mean + torch.exp(0.5 * self.log_var) * eps

    def log_prob(self, z: Tensor) -> Tensor:
        """``log q(z | x)`` of ``z`` ``(K, N, d)`` -> ``(K, N)`` (nats)."""
        return diagonal_normal_log_prob(z, self.mean, self.log_var)

    @classmethod
    def standard_normal(cls, n: int, d: int, *, dtype: torch.dtype = torch.float64,
                        device: str | torch.device = "cpu") -> "Posterior":
        """The prior ``N(0, I_d)`` as ``(n, d)`` zero means and log-variances (``n = 1`` broadcasts
        over any batch in :meth:`log_prob`); ``sample(1, g)[0]`` is ``n`` standard normal draws."""
        zero = torch.zeros(n, d, dtype=dtype, device=device)
        return cls(zero, zero)

    def kl(self, other: "Posterior") -> Tensor:
        """``KL(self || other)`` of two diagonal Gaussians per latent dimension ``(N, d)`` (nats),
        in closed form (``other``'s parameters broadcast, e.g. a ``(1, d)`` prior)."""
        diff = self.mean - other.mean
        return 0.5 * ((diff * diff + torch.exp(self.log_var)) * torch.exp(-other.log_var)
                      - 1.0 + other.log_var - self.log_var)

    def kl_to_standard_normal(self) -> Tensor:
        """``KL(q || N(0, I))`` per latent dimension ``(N, d)`` (nats), in closed form (:meth:`kl`)."""
        return self.kl(Posterior.standard_normal(1, self.mean.shape[-1], dtype=self.mean.dtype,
                                                 device=self.mean.device))


@dataclass(frozen=True)
class LogLikelihood:
    """``log p(x)`` per example ``(N,)`` in nats, and the Monte Carlo standard error of each
    ``(N,)`` (0 where exact). :attr:`mean` and :attr:`stderr_of_mean` summarise the data set:
    the mean and the standard error of the mean that comes from the estimator's sampling
    (not from which examples were drawn)."""

    per_example: Tensor
    stderr: Tensor

    @property
    def mean(self) -> float:
        """Mean log-likelihood over the examples (nats per example)."""
        return float(self.per_example.mean())

    @property
    def stderr_of_mean(self) -> float:
        """Monte Carlo standard error of :attr:`mean`: ``sqrt(sum stderr_i^2) / N``."""
        return float(self.stderr.pow(2).sum().sqrt() / self.per_example.numel())


def iw_bound(log_w: Tensor) -> Tensor:
    """The importance-weighted bound ``logsumexp_k(log w_k) - log K`` (nats) of log weights
    ``log w = log p(x, z) - log q(z)`` ``(K, ...)`` over their first axis (Burda et al. 2016; the ELBO
    for ``K = 1``); differentiable, so training steps and :func:`importance_weighted` share it."""
    return torch.logsumexp(log_w, 0) - math.log(log_w.shape[0])


def importance_weighted(log_joint: Tensor, log_proposal: Tensor) -> LogLikelihood:
    """The importance-weighted estimate of ``log p(x) = log E_q[p(x, z) / q(z)]`` from ``K``
    samples per example: ``log_joint`` and ``log_proposal`` ``(K, N)`` (nats) at the same
    ``z ~ q``. Returns ``logsumexp_k(log w_k) - log K`` per example and its delta-method
    standard error ``sqrt(Var(w) / (K E[w]^2))`` (biased low by ``O(1/K)``: the IWAE bound,
    Burda et al. 2016)."""
    if log_joint.shape != log_proposal.shape or log_joint.dim() != 2:
        raise DataError(f"log_joint and log_proposal must both be (K, N), got {tuple(log_joint.shape)} and "
                        f"{tuple(log_proposal.shape)}")
    log_w = log_joint - log_proposal
    K = log_w.shape[0]
    est = iw_bound(log_w)
    w = torch.exp(log_w - log_w.max(0).values)  # normalised per example; the ratio below is scale-free
    rel_var = w.var(0, unbiased=True) / w.mean(0).pow(2) if K > 1 else torch.full_like(est, float("nan"))
    return LogLikelihood(est, (rel_var / K).sqrt())


# --------------------------------------------------------------------------- data at the boundary
def as_data(x, name: str = "x", *, width: int | None = None, dtype: torch.dtype = torch.float64,
            device: str | torch.device = "cpu") -> Tensor:
    """``x`` (array-like ``(N, D)``) as a finite tensor, or a :class:`DataError` naming ``name``,
    the shape and the first bad index; ``width``: the ``D`` a fitted model expects."""
    t = torch.as_tensor(np.asarray(x) if not isinstance(x, Tensor) else x)
    if t.dim() != 2 or t.shape[0] == 0:
        raise DataError(f"{name} must be a non-empty (N, D) array, got shape {tuple(t.shape)}")
    if not (t.dtype.is_floating_point or t.dtype in (torch.int32, torch.int64, torch.uint8, torch.int16)):
        raise DataError(f"{name} must hold real numbers, got dtype {t.dtype}")
    t = t.to(device=device, dtype=dtype)
    bad = ~torch.isfinite(t)
    if bad.any():
        i, j = (int(v) for v in torch.nonzero(bad)[0])
        raise DataError(f"{name} holds {int(bad.sum())} non-finite values, first at [{i}, {j}] ({float(t[i, j])})")
    if width is not None and t.shape[1] != width:
        raise DataError(f"{name} has {t.shape[1]} features but the model was fitted on {width}")
    return t


def as_aux(aux, n: int, n_aux: int | None, name: str = "aux", *, device: str | torch.device = "cpu") -> Tensor | None:
    """``aux`` (``(N,)`` integer labels ``0..n_aux-1``, or None) as an int64 tensor on ``device``,
    or a :class:`DataError` naming ``name`` and the first label out of range."""
    if aux is None:
        return None
    a = torch.as_tensor(np.asarray(aux) if not isinstance(aux, Tensor) else aux)
    if a.shape != (n,):
        raise DataError(f"{name} must be ({n},) labels, one per example, got shape {tuple(a.shape)}")
    if a.dtype.is_floating_point:
        if not torch.isfinite(a).all() or (a != a.round()).any():
            raise DataError(f"{name} must hold integer labels, got non-integral values")
    a = a.to(torch.int64)
    if n_aux is not None:
        bad = (a < 0) | (a >= n_aux)
        if bad.any():
            i = int(torch.nonzero(bad)[0, 0])
            raise DataError(f"{name}[{i}] = {int(a[i])} is out of range: labels must be 0..{n_aux - 1}")
    return a.to(device)


def _draws(samples, seed) -> tuple[int, int]:
    """``samples`` (>= 1) and ``seed`` (>= 0) as ints, or a :class:`ConfigError` naming the bad one."""
    return check_number("samples", samples, integer=True, ge=1), check_number("seed", seed, integer=True, ge=0)


# --------------------------------------------------------------------------- the surface
class GenerativeModel(BaseEstimator):
    """Base of every generative model (see the module docstring for the surface).

    Subclasses implement ``_fit(x, aux)``, ``encode``, ``decode``, ``sample``, ``log_joint`` and
    either ``_proposal(x, aux) -> Posterior`` (latent-variable models: the importance
    sampler of :meth:`log_likelihood`, by default :meth:`encode`) or their own exact
    :meth:`log_likelihood`. ``n_features_`` (``D``) and ``n_aux_`` (number of auxiliary
    labels, or None) are set by :meth:`fit`. What they share is here once: the training loop
    and its thread count (:meth:`_train`, with the hyper-parameters of
    :attr:`_training_constraints`), the checks of data, latents and draws (:meth:`_inputs`,
    :meth:`_latents`, :meth:`_sampling`) and the importance sampler of :meth:`log_likelihood`
    and :meth:`elbo`.
    """

    #: whether :meth:`log_likelihood` is exact (flows) rather than an importance-weighted estimate
    exact_likelihood = False

    #: the constraints of the hyper-parameters of :meth:`_train` that every model has (a subclass
    #: merges them into its ``_parameter_constraints``): ``epochs``, ``batch_size``, ``lr`` (the
    #: optimiser's, per update), ``seed``, ``progress`` (a tqdm bar), ``device``
    _training_constraints = {
        "epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "progress": ["boolean"],
        "device": [str, torch.device],
    }

    def fit(self, x, aux=None) -> "GenerativeModel":
        """Validate the hyper-parameters and ``x`` ``(N, D)`` / ``aux`` ``(N,)`` once, then train (:meth:`_fit`)."""
        try:
            self._validate_params()
        except InvalidParameterError as exc:  # sklearn's message names the parameter and the value
            raise ConfigError(str(exc)) from exc
        for name, constraints in self._parameter_constraints.items():  # sklearn counts True as an Integral
            value = getattr(self, name, None)
            if isinstance(value, (bool, np.bool_)) and "boolean" not in constraints and bool not in constraints:
                raise ConfigError(f"The {name!r} parameter of {type(self).__name__} must be a number, got {value!r}")
        t = as_data(x, device=self._device())
        self.n_features_ = t.shape[1]
        a = as_aux(aux, t.shape[0], None, device=t.device)
        self.n_aux_ = None if a is None else int(a.max()) + 1
        self._fit(t, a)
        return self

    def _fit(self, x: Tensor, aux: Tensor | None) -> None:
        raise NotImplementedError

    def _train(self, step: Callable[[Tensor], Tensor], n: int, batch_size: int, order: torch.Generator,
               parameters: Sequence[Tensor], stacks: Sequence[tuple[Sequence[int], int]], *, desc: str,
               energy: Callable[[Tensor], Tensor] = lambda loss: loss, grad: bool = True,
               state: Mapping[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The training loop of every model: ``epochs`` epochs of ``loss = step(idx)`` over shuffled
        index batches ``(batch_size,)`` of the ``n`` examples (order from ``order``), through
        :func:`pcsim.training.train` (its divergence watch on ``parameters`` and on ``energy(loss)``
        names ``lr``; a bar labelled ``desc`` and the epoch's mean loss where ``progress``).
        With ``grad`` (autograd-trained models) ``parameters`` require grad for the duration and
        get their flags back afterwards; local-rule models (PC) pass ``grad=False``. The
        OpenMP team is never wider than the largest of the layer stacks ``(sizes, batch)`` that a
        step runs can use, nor than the cores free now (:func:`pcsim.parallel.threads_for_stacks`:
        small layers lose to oversubscription on a shared machine). Returns the seconds and the
        mean loss (the step's output, nats per example) of every epoch, each ``(epochs,)``.
        ``state`` names what else a step changes (the optimisers, the generators of its draws):
        given it, a ``pcsim run`` checkpoints the training (with ``parameters``, ``order`` and the
        losses) and a resumed run continues it (:mod:`pcsim.checkpoint`); without it a resumed
        run trains the model again."""
        losses: list[list[float]] = [[] for _ in range(self.epochs)]

        def record(s) -> None:
            losses[s.epoch - 1].append(float(s.output))

        def shown(epoch: int, seconds: float) -> dict:
            return {"loss": f"{np.mean(losses[epoch - 1]):.3f}"}

        flags = [p.requires_grad for p in parameters]
        try:
            for p in parameters:
                p.requires_grad_(grad or p.requires_grad)
            with threads(threads_for_stacks(stacks)):
                seconds = train(step, lambda epoch: epoch_batches(n, batch_size, order), self.epochs, on_step=record,
                                on_epoch=shown, progress=self.progress, desc=desc, parameters=lambda: parameters,
                                energy=energy, lr=self.lr,
                                state=None if state is None else {"parameters": list(parameters), "order": order,
                                                                  "losses": losses, **state})
        finally:
            for p, flag in zip(parameters, flags):
                p.requires_grad_(flag)
        return seconds, np.array([np.mean(v) for v in losses])

    def _device(self) -> torch.device:
        """The model's ``device`` hyper-parameter (``"cpu"`` where it has none) as a torch device;
        a name torch does not know is a :class:`ConfigError` naming ``device``."""
        device = getattr(self, "device", "cpu")
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"device must be a torch device such as 'cpu' or 'cuda', got {device!r}") from exc
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device {device!r} is not available here (torch.cuda.is_available() is False)")
        return dev

    def _check_fitted(self) -> None:
        if not hasattr(self, "n_features_"):
            raise ConfigError(f"{type(self).__name__} is not fitted yet; call fit(x) first")

    def _inputs(self, x, aux) -> tuple[Tensor, Tensor | None]:
        """``x`` ``(N, D)`` and ``aux`` ``(N,)`` of a fitted model, checked, on its device."""
        self._check_fitted()
        t = as_data(x, width=self.n_features_, device=self._device())
        return t, as_aux(aux, t.shape[0], self.n_aux_, device=t.device)

    def _latents(self, z, n: int, d: int) -> Tensor:
        """Latents ``z`` ``(K, n, d)`` as a finite float64 tensor on the model's device (differentiable
        where ``z`` is a tensor that requires grad), or a :class:`DataError` naming ``z``."""
        t = torch.as_tensor(np.asarray(z) if not isinstance(z, Tensor) else z)
        if t.dim() != 3 or t.shape[1:] != (n, d):
            raise DataError(f"z must be (K, N, d) = (K, {n}, {d}) latents, got shape {tuple(t.shape)}")
        t = t.to(device=self._device(), dtype=torch.float64)
        bad = ~torch.isfinite(t)
        if bad.any():
            k, i, j = (int(v) for v in torch.nonzero(bad)[0])
            raise DataError(f"z holds {int(bad.sum())} non-finite values, first at [{k}, {i}, {j}] ({float(t[k, i, j])})")
        return t

    def _sampling(self, n, seed) -> tuple[int, torch.Generator]:
        """For :meth:`sample`: ``n`` (>= 1) draws of a fitted model and the generator of every draw,
        on the model's device, seeded with ``seed`` (>= 0); a :class:`ConfigError` names a bad one."""
        self._check_fitted()
        n, seed = check_number("n", n, integer=True, ge=1), check_number("seed", seed, integer=True, ge=0)
        return n, torch.Generator(device=self._device()).manual_seed(seed)

    def _proposal(self, x: Tensor, aux: Tensor | None) -> Posterior:
        return self.encode(x, aux)

    def _weighted(self, x, aux, samples, seed, proposal) -> tuple[Tensor, Tensor]:
        """``log p(x, z)`` and ``log q(z | x)`` ``(K, N)`` at ``samples`` draws ``z ~ q`` (``seed``) of
        ``q = proposal(x, aux)``."""
        samples, seed = _draws(samples, seed)
        x, aux = self._inputs(x, aux)
        q = proposal(x, aux)
        z = q.sample(samples, torch.Generator(device=x.device).manual_seed(seed))
        with torch.no_grad():
            return self.log_joint(x, z, aux), q.log_prob(z)

    def log_likelihood(self, x, aux=None, samples: int = 100, seed: int = 0) -> LogLikelihood:
        """``log p(x)`` per example (nats) by importance sampling from :meth:`_proposal` with ``samples`` draws."""
        return importance_weighted(*self._weighted(x, aux, samples, seed, self._proposal))

    def elbo(self, x, aux=None, samples: int = 1, seed: int = 0) -> Tensor:
        """The evidence lower bound ``E_q[log p(x, z) - log q(z | x)]`` per example ``(N,)`` (nats), ``samples`` draws of :meth:`encode`."""
        log_joint, log_q = self._weighted(x, aux, samples, seed, self.encode)
        return (log_joint - log_q).mean(0)
