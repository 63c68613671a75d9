"""A normalizing flow on the generative surface: exact-likelihood density estimation.

A flow is an invertible map ``x = T(z)`` from a standard normal latent ``z ~ N(0, I_D)`` to
the data, so the change of variables gives the exact density (Rezende & Mohamed 2015)

    log p(x) = log N(T^{-1}(x); 0, I) + log |det d T^{-1}(x) / dx|

The bijections are zuko's (Rozet et al., ``zuko`` 1.6), never written here: ``kind="realnvp"``
stacks affine coupling layers (Dinh, Sohl-Dickstein & Bengio 2017), ``kind="nsf"``
rational-quadratic spline coupling layers (Durkan et al. 2019; zuko's NSF with two passes,
i.e. coupling rather than fully autoregressive). Splines act on ``[-5, 5]``, so by default
the data are first standardised by a fixed affine transform (zuko's ``AffineTransform`` as a
non-trainable buffer, fitted on the training data), whose log-Jacobian is part of the flow:
likelihoods are always of the data as given, in nats.

On the surface the latent is the exact inverse image: :meth:`Flow.encode` is a zero-variance
:class:`~pcsim.generative.base.Posterior` (``log_var = -inf``: a point mass, whose
``log_prob`` is undefined), :meth:`Flow.decode` the forward map ``T``, and
:meth:`Flow.log_likelihood`, :meth:`Flow.elbo` and :meth:`Flow.log_joint` are all the exact
``log p(x)`` (the bound is tight, the Monte Carlo standard error 0).
"""

from __future__ import annotations

from numbers import Integral

import torch
import zuko
from sklearn.utils._param_validation import Interval, StrOptions
from torch.distributions import AffineTransform

from pcsim.arguments import check_numbers
from pcsim.errors import ConfigError, DataError
from pcsim.optim import Adam
from pcsim.seeding import seeded

from .base import GenerativeModel, LogLikelihood, Posterior, _draws, as_data

Tensor = torch.Tensor

__all__ = ["Flow"]


class Flow(GenerativeModel):
    """A coupling normalizing flow (zuko) trained by maximum likelihood; exact ``log p(x)``.

    Hyper-parameters: ``kind`` (``"realnvp"`` affine coupling or ``"nsf"`` spline coupling),
    ``transforms`` (number of coupling layers), ``hidden`` (widths of each coupling layer's
    conditioner MLP), ``bins`` (spline bins, ``nsf`` only), ``standardize`` (fixed affine
    standardisation of the data first), ``epochs``, ``batch_size``, ``lr`` (Adam, per update),
    ``seed`` (initial weights and batch order), ``progress`` (a tqdm bar over the training
    steps), ``device`` (``"cpu"`` or ``"cuda"``; every tensor is float64 there). Training minimises the mean negative log-likelihood of each batch with
    :class:`pcsim.optim.Adam` on autograd gradients, through :func:`pcsim.training.train`
    (a NaN or exploding loss raises :class:`~pcsim.errors.LearningDivergenceError` naming
    ``lr``). Learned state: ``flow_`` (the zuko module, float64 on the CPU), ``loss_``
    ``(epochs,)`` (mean training NLL per epoch, nats per example), ``epoch_time_``
    ``(epochs,)`` (s). Data need ``D >= 2`` features (a coupling layer splits them).
    """

    exact_likelihood = True

    _parameter_constraints = {
        "kind": [StrOptions({"realnvp", "nsf"})],
        "transforms": [Interval(Integral, 1, None, closed="left")],
        "hidden": ["array-like"],
        "bins": [Interval(Integral, 2, None, closed="left")],
        "standardize": ["boolean"],
        **GenerativeModel._training_constraints,
    }

    def __init__(self, kind: str = "realnvp", transforms: int = 4, hidden=(64, 64), bins: int = 8,
                 standardize: bool = True, epochs: int = 100, batch_size: int = 128, lr: float = 1e-3,
                 seed: int = 0, progress: bool = False, device: str = "cpu"):
        self.kind = kind
        self.transforms = transforms
        self.hidden = hidden
        self.bins = bins
        self.standardize = standardize
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.progress = progress
        self.device = device

    # ----------------------------------------------------------------- training
    def _build(self, x: Tensor) -> tuple[zuko.flows.Flow, float]:
        """The zuko flow for data like ``x`` ``(N, D)``, its weights drawn from ``seed`` (the global
        torch generator zuko's layers use is forked, so the caller's random state is untouched), and
        the log-Jacobian ``sum_d log scale_d`` of the standardisation (0 without it, nats)."""
        hidden = check_numbers("hidden", self.hidden, integer=True, ge=1)
        if not hidden:
            raise ConfigError(f"hidden must list one or more widths, got {self.hidden!r}")
        D = x.shape[1]
        if D < 2:
            raise DataError(f"x has {D} feature; a coupling flow needs at least 2")
        with seeded(self.seed):                 # the flow is built on the CPU: its draws are the CPU generator's
            if self.kind == "realnvp":
                flow = zuko.flows.RealNVP(D, transforms=self.transforms, hidden_features=hidden)
            else:
                flow = zuko.flows.NSF(D, transforms=self.transforms, bins=self.bins, passes=2, hidden_features=hidden)
        log_scale = 0.0
        if self.standardize:
            loc, scale = x.mean(0), x.std(0).clamp_min(1e-6)
            first = zuko.flows.UnconditionalTransform(AffineTransform, -loc / scale, 1 / scale, buffer=True)
            flow = zuko.flows.Flow([first, *flow.transform.transforms], flow.base)
            log_scale = float(scale.log().sum())
        return flow.to(dtype=torch.float64, device=x.device), log_scale

    def _fit(self, x: Tensor, aux: Tensor | None) -> None:
        self.flow_, log_scale = self._build(x)
        params = [p for p in self.flow_.parameters()]
        opt = Adam(self.lr)
        n = x.shape[0]
        bs = min(self.batch_size, n)

        def step(idx: Tensor) -> Tensor:
            loss = -self.flow_().log_prob(x[idx]).mean()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                opt.step(params, list(grads))
            return loss.detach()

        # the divergence watch compares each step's loss with the first one's: it is the NLL of the
        # standardised data, about 1.4 nats per feature at the start whatever the data's scale
        # (the raw NLL can start near 0, and then any noise would look like a 1000-fold growth)
        widths = (x.shape[1], *check_numbers("hidden", self.hidden), x.shape[1])
        self.epoch_time_, self.loss_ = self._train(step, n, bs, torch.Generator().manual_seed(self.seed), params,
                                                   [(widths, bs * self.transforms)], desc=f"flow ({self.kind})",
                                                   energy=lambda loss: loss - log_scale, state={"optimizer": opt})

    # ----------------------------------------------------------------- the surface
    def _log_prob(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            return self.flow_().log_prob(x)

    def encode(self, x, aux=None) -> Posterior:
        """The exact latent of ``x`` ``(N, D)``: ``z = T^{-1}(x)`` ``(N, D)`` as a point mass
        (``log_var = -inf``; sampling it returns ``z``, its ``log_prob`` is undefined)."""
        x, _ = self._inputs(x, aux)
        with torch.no_grad():
            z = self.flow_().transform(x)
        return Posterior(z, torch.full_like(z, -float("inf")))

    def decode(self, z) -> Tensor:
        """The forward map ``x = T(z)`` of latents ``z`` ``(N, D)`` (a flow's latent has the data's width) -> ``(N, D)``."""
        self._check_fitted()
        z = as_data(z, "z", width=self.n_features_, device=self._device())
        with torch.no_grad():
            return self.flow_().transform.inv(z)

    def sample(self, n: int, aux=None, seed: int = 0, *, noise: bool = True) -> Tensor:
        """``n`` samples ``(n, D)`` of ``x = T(z)``, ``z ~ N(0, I)`` drawn from a generator seeded with ``seed``
        (``noise`` has no effect: a flow has no observation noise to leave out)."""
        n, gen = self._sampling(n, seed)
        prior = Posterior.standard_normal(n, self.n_features_, device=self._device())
        return self.decode(prior.sample(1, gen)[0])

    def log_joint(self, x, z, aux=None) -> Tensor:
        """``log p(x)`` (nats) broadcast to ``(K, N)`` for latents ``z`` ``(K, N, D)``, which are
        ignored: a flow's latent is a deterministic function of ``x``, ``p(x, z) = p(x)`` on it."""
        x, _ = self._inputs(x, aux)
        z = self._latents(z, x.shape[0], self.n_features_)
        # differentiable in x (pattern completion climbs log p(x) in the hidden features)
        return self.flow_().log_prob(x).expand(z.shape[0], -1)

    def log_likelihood(self, x, aux=None, samples: int = 1, seed: int = 0) -> LogLikelihood:
        """The exact ``log p(x)`` per example ``(N,)`` (nats), standard error 0 (``samples`` and ``seed`` are checked, not used)."""
        _draws(samples, seed)
        x, _ = self._inputs(x, aux)
        lp = self._log_prob(x)
        return LogLikelihood(lp, torch.zeros_like(lp))

    def elbo(self, x, aux=None, samples: int = 1, seed: int = 0) -> Tensor:
        """The ELBO per example ``(N,)`` (nats): with the exact point-mass posterior it equals ``log p(x)``."""
        return self.log_likelihood(x, aux, samples, seed).per_example
