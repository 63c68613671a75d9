"""Variational autoencoders beside predictive coding: the VAE, its importance-weighted bound
(IWAE) and the identifiable VAE with a label-conditioned prior.

**VAE** (Kingma & Welling 2014; Rezende, Mohamed & Wierstra 2014): latents ``z`` ``(d,)``
with the prior ``p(z) = N(0, I)``, the shared :class:`~pcsim.generative.decoder.Decoder`
``p(x | z)`` (a PC network's generative path: same spec, same sweep) and an amortised
encoder ``q(z | x) = N(m(x), diag exp(v(x)))``, an MLP (:class:`~pcsim.generative.decoder.Layers`
in discriminative mode, widths ``(D, *reversed(hidden), 2 d)``). Encoder and decoder are
trained together by maximising, with the reparameterisation ``z = m + exp(v/2) eps``,

    L_K(x) = E[ log 1/K sum_k p(x, z_k) / q(z_k | x) ],   z_k ~ q(z | x),

the ELBO for ``K = 1`` and the importance-weighted bound of Burda, Grosse & Salakhutdinov
(2016) for ``iw_samples = K > 1`` (``L_1 <= L_K <= log p(x)``, increasing in ``K``).

**iVAE** (Khemakhem, Kingma, Monti & Hyvärinen 2020): the prior is conditioned on an observed
auxiliary label ``u``, ``p(z | u) = N(mu_u, diag exp(lambda_u))`` (learned per-label tables:
the linear map of the one-hot ``u``), and the encoder sees ``u`` too, ``q(z | x, u)`` (its
input is ``[x, onehot(u)]``). Sources whose distribution changes with ``u`` are identifiable
up to permutation and per-dimension affine maps.

Gradients come from torch autograd (the objective runs through the encoder, the sampler and
the decoder, which no local rule covers); the update is :class:`pcsim.optim.Adam`, the
optimiser of PC rules and backprop twins, fed those gradients, and the loop is
:func:`pcsim.training.train`, which raises :class:`~pcsim.errors.LearningDivergenceError`
when a step leaves a parameter non-finite or the loss explodes. Everything is float64 on
``device`` and deterministic on the CPU under ``seed`` (initial weights, batch order, noise).
"""

from __future__ import annotations

from numbers import Integral

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from pcsim.activations import ACTIVATIONS
from pcsim.arguments import check_numbers
from pcsim.errors import DataError
from pcsim.optim import Adam

from .base import GenerativeModel, Posterior, as_aux, as_data, iw_bound
from .decoder import Decoder, Layers, gaussian_posterior

Tensor = torch.Tensor

__all__ = ["IVAE", "VAE"]


class VAE(GenerativeModel):
    """A variational autoencoder (IWAE with ``iw_samples > 1``); see the module docstring.

    Hyper-parameters: ``latent_dim`` ``d``; ``hidden``: widths of the decoder's hidden layers
    from the top down (decoder widths ``(d, *hidden, D)``, the encoder mirrors them);
    ``activation`` (a name of :data:`pcsim.activations.ACTIVATIONS`, every layer; the
    decoder applies it to ``z`` too, as a PC network's generative path does); ``observation``
    (``"gaussian"``, ``"bernoulli"``); ``sigma`` (Gaussian: ``"per_dimension"`` or
    ``"scalar"`` learned ``log_sigma``); ``iw_samples`` ``K``; ``epochs``, ``batch_size``,
    ``lr`` (Adam, per update); ``seed``; ``progress`` (a bar over the batches);
    ``device``. Learned: ``encoder_`` (:class:`Layers`), ``decoder_`` (:class:`Decoder`),
    ``objective_`` ``(epochs,)`` (the training bound per epoch, nats per example, mean over
    batches), ``epoch_seconds_`` ``(epochs,)``.
    """

    _parameter_constraints = {
        "latent_dim": [Interval(Integral, 1, None, closed="left")],
        "hidden": ["array-like"],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "observation": [StrOptions({"gaussian", "bernoulli"})],
        "sigma": [StrOptions({"per_dimension", "scalar"})],
        "iw_samples": [Interval(Integral, 1, None, closed="left")],
        **GenerativeModel._training_constraints,
        "epochs": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, latent_dim: int = 2, hidden=(64,), activation: str = "tanh", observation: str = "gaussian",
                 sigma: str = "per_dimension", iw_samples: int = 1, epochs: int = 50, batch_size: int = 64,
                 lr: float = 1e-3, seed: int = 0, progress: bool = False, device: str = "cpu"):
        self.latent_dim = latent_dim
        self.hidden = hidden
        self.activation = activation
        self.observation = observation
        self.sigma = sigma
        self.iw_samples = iw_samples
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.progress = progress
        self.device = device

    # ----------------------------------------------------------------- the model's pieces
    def _encoder_width(self) -> int:
        return self.n_features_

    def _encoder_input(self, x: Tensor, aux: Tensor | None) -> Tensor:
        return x

    def _prior(self, aux: Tensor | None, like: Tensor) -> Posterior:
        """``p(z)``: ``N(0, I)`` as a diagonal Gaussian with ``(1, d)`` parameters."""
        return Posterior.standard_normal(1, self.latent_dim, dtype=like.dtype, device=like.device)

    def _init_prior(self) -> list[Tensor]:
        return []

    def _posterior(self, x: Tensor, aux: Tensor | None) -> Posterior:
        return gaussian_posterior(self.encoder_, self._encoder_input(x, aux))

    def _log_joint(self, x: Tensor, z: Tensor, aux: Tensor | None) -> Tensor:
        """``log p(z | aux) + log p(x | z)`` ``(K, N)`` (nats), differentiable."""
        return self._prior(aux, x).log_prob(z) + self.decoder_.log_prob(x, z)

    def _parameters(self) -> list[Tensor]:
        return self.encoder_.parameters() + self.decoder_.parameters() + self._prior_params

    def _check_aux(self, aux: Tensor | None, where: str) -> None:
        """Where the model uses no auxiliary variable, ``aux`` is ignored."""

    # ----------------------------------------------------------------- training
    def _fit(self, x: Tensor, aux: Tensor | None) -> None:
        self._check_aux(aux, "fit")
        hidden = check_numbers("hidden", self.hidden, integer=True, ge=1)
        d, D = self.latent_dim, self.n_features_
        dtype = x.dtype
        self.decoder_ = Decoder.init((d, *hidden, D), self.activation, observation=self.observation, sigma=self.sigma,
                                     seed=self.seed, device=self.device, dtype=dtype)
        self.encoder_ = Layers.init((self._encoder_width(), *reversed(hidden), 2 * d), self.activation,
                                    mode="discriminative", seed=self.seed + 1, device=self.device, dtype=dtype)
        self._prior_params = self._init_prior()
        params = self._parameters()
        opt = Adam(self.lr)
        noise = torch.Generator(device=x.device).manual_seed(self.seed + 2)
        K = int(self.iw_samples)

        def step(idx: Tensor) -> Tensor:
            xb = x[idx.to(x.device)]
            ab = None if aux is None else aux[idx.to(x.device)]
            loss = -self._bound(xb, ab, K, noise).mean()
            grads = torch.autograd.grad(loss, params)
            with torch.no_grad():
                opt.step(params, list(grads))
            return loss.detach()

        self.epoch_seconds_, loss = self._train(
            step, x.shape[0], self.batch_size, torch.Generator().manual_seed(self.seed), params,
            [(self.decoder_.layers.sizes, self.batch_size * K), (self.encoder_.sizes, self.batch_size)],
            desc=type(self).__name__, state={"optimizer": opt, "noise": noise})
        self.objective_ = -loss

    def _bound(self, x: Tensor, aux: Tensor | None, samples: int, generator: torch.Generator) -> Tensor:
        """The training bound ``L_K`` per example ``(N,)`` (nats) with ``K = samples``, differentiable;
        for ``K = 1`` the ELBO with the KL term in closed form (the same expectation, lower variance)."""
        q = self._posterior(x, aux)
        z = q.sample(samples, generator)
        if samples == 1:
            return self.decoder_.log_prob(x, z)[0] - q.kl(self._prior(aux, x)).sum(-1)
        return iw_bound(self._log_joint(x, z, aux) - q.log_prob(z))

    # ----------------------------------------------------------------- the surface
    def _inputs(self, x, aux) -> tuple[Tensor, Tensor | None]:
        x, aux = super()._inputs(x, aux)
        self._check_aux(aux, "aux")
        return x, aux

    def encode(self, x, aux=None) -> Posterior:
        """The amortised posterior ``q(z | x)`` of ``x`` ``(N, D)``: a :class:`Posterior` with ``(N, d)`` mean and log-variance."""
        x, aux = self._inputs(x, aux)
        with torch.no_grad():
            return self._posterior(x, aux)

    def decode(self, z) -> Tensor:
        """The mean of ``p(x | z)`` ``(N, D)`` for latents ``z`` ``(N, d)`` (a sigmoid output for Bernoulli)."""
        self._check_fitted()
        z = as_data(z, "z", width=self.latent_dim).to(self.device)
        with torch.no_grad():
            return self.decoder_.mean(z)

    def log_joint(self, x, z, aux=None) -> Tensor:
        """``log p(x, z)`` ``(K, N)`` in nats for data ``x`` ``(N, D)`` and latents ``z`` ``(K, N, d)``."""
        x, aux = self._inputs(x, aux)
        z = self._latents(z, x.shape[0], self.latent_dim)
        # differentiable in z (the learned parameters are constants here): the metrics that climb
        # log p(x, z) per example (amortisation gap, pattern completion) need its gradient
        return self._log_joint(x, z, aux)

    def sample(self, n: int, aux=None, seed: int = 0, *, noise: bool = True) -> Tensor:
        """``n`` draws ``(n, D)`` of ``x`` from the model: ``z ~ p(z)``, then ``x ~ p(x | z)`` (``seed``);
        with ``noise=False`` the decoder mean ``E[x | z]`` at the sampled ``z`` instead."""
        n, gen = self._sampling(n, seed)
        aux = self._sample_aux(aux, n)
        like = self.decoder_.layers.weights[0]
        with torch.no_grad():
            prior = self._prior(aux, like)
            z = Posterior(prior.mean.expand(n, -1), prior.log_var.expand(n, -1)).sample(1, gen)[0]
            return self.decoder_.sample(z, gen) if noise else self.decoder_.mean(z)

    def _sample_aux(self, aux, n: int) -> Tensor | None:
        return None


class IVAE(VAE):
    """The identifiable VAE (Khemakhem et al. 2020): a :class:`VAE` whose prior
    ``p(z | u) = N(mu_u, diag exp(lambda_u))`` and encoder ``q(z | x, u)`` depend on an integer
    label ``u`` (``aux``, ``0..n_aux-1``; ``n_aux_`` is set by :meth:`fit` from the training
    labels). ``aux`` is required by every method that sees data (a
    :class:`~pcsim.errors.DataError` naming ``aux`` when it is missing); :meth:`sample` takes
    one label for all ``n`` draws or ``(n,)`` labels. Learned beside the VAE's:
    ``prior_log_var_`` ``(n_aux, d)`` and, with ``prior_mean="learned"``, ``prior_mean_``
    ``(n_aux, d)``; ``prior_mean="zero"`` fixes every label's mean at 0, so only the variances
    carry the label (the paper's setting; measured to identify the sources far better here).
    """

    _parameter_constraints = {**VAE._parameter_constraints, "prior_mean": [StrOptions({"learned", "zero"})]}

    def __init__(self, latent_dim: int = 2, hidden=(64,), activation: str = "tanh", observation: str = "gaussian",
                 sigma: str = "per_dimension", iw_samples: int = 1, epochs: int = 50, batch_size: int = 64,
                 lr: float = 1e-3, seed: int = 0, progress: bool = False, device: str = "cpu",
                 prior_mean: str = "learned"):
        super().__init__(latent_dim, hidden, activation, observation, sigma, iw_samples, epochs, batch_size, lr, seed,
                         progress, device)
        self.prior_mean = prior_mean

    def _check_aux(self, aux: Tensor | None, where: str) -> None:
        if aux is None:
            raise DataError(f"aux: {type(self).__name__} conditions its prior on the auxiliary labels; "
                            f"{where} needs aux ((N,) integer labels), got None")

    def _encoder_width(self) -> int:
        return self.n_features_ + self.n_aux_

    def _encoder_input(self, x: Tensor, aux: Tensor) -> Tensor:
        return torch.cat([x, torch.nn.functional.one_hot(aux, self.n_aux_).to(x.dtype)], -1)

    def _init_prior(self) -> list[Tensor]:
        w = self.decoder_.layers.weights[0]
        # the labels' means start apart (seeded), their variances at 1: a table of zeros would
        # start every label at the same prior and leave the first steps without a label signal
        gen = torch.Generator().manual_seed(self.seed + 3)
        mean = 0.1 * torch.randn(self.n_aux_, self.latent_dim, generator=gen, dtype=torch.float64)
        self.prior_mean_ = mean.to(device=w.device, dtype=w.dtype)
        self.prior_log_var_ = w.new_zeros(self.n_aux_, self.latent_dim)
        if self.prior_mean == "zero":  # only the variances carry the label, as in Khemakhem et al. (2020)
            self.prior_mean_.zero_()
            return [self.prior_log_var_]
        return [self.prior_mean_, self.prior_log_var_]

    def _prior(self, aux: Tensor, like: Tensor) -> Posterior:
        """``p(z | u)`` for labels ``aux`` ``(N,)``: ``(N, d)`` means and log-variances."""
        return Posterior(self.prior_mean_[aux], self.prior_log_var_[aux])

    def _sample_aux(self, aux, n: int) -> Tensor:
        self._check_aux(aux, "sample")
        if isinstance(aux, (int, np.integer)) or (hasattr(aux, "ndim") and aux.ndim == 0):
            aux = np.full(n, int(aux))
        return as_aux(aux, n, self.n_aux_, device=self._device())
