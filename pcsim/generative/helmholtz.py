"""The Helmholtz machine, trained by wake-sleep or by reweighted wake-sleep.

A Helmholtz machine (Dayan, Hinton, Neal & Zemel 1995; Hinton, Dayan, Frey & Neal 1995) pairs
a generative model ``p(z) p(x | z)`` with a recognition model ``q(z | x)`` and trains them by
two phases that each need only a local, supervised-looking update:

- **wake**: ``z ~ q(z | x)`` for a data ``x``; the generative parameters ``theta`` climb
  ``log p_theta(x, z)`` (the recognition model labels the data with causes);
- **sleep**: a dream ``(z, x) ~ p_theta``; the recognition parameters ``phi`` climb
  ``log q_phi(z | x)`` (the generative model labels its fantasies).

Reweighted wake-sleep (Bornschein & Bengio 2015) draws ``K`` samples ``z_k ~ q(z | x)`` with
normalised importance weights ``w_k ∝ p(x, z_k) / q(z_k | x)`` and uses them twice: the wake
update of ``theta`` climbs ``sum_k w_k log p(x, z_k)`` (a consistent estimate of the gradient
of ``log p(x)``), and a *wake-phase* ``q`` update climbs ``sum_k w_k log q(z_k | x)`` (the
gradient of ``KL(p(z | x) || q(z | x))``), used beside the sleep update (half each: the
paper's "wake + sleep" variant, its best).

Here the latents are Gaussian, ``p(z) = N(0, I_d)``, and the observation model is
:class:`~pcsim.generative.base.Gaussian` (a learned scalar ``log_sigma``) or
:class:`~pcsim.generative.base.Bernoulli`. The generative path is the shared
:class:`~pcsim.generative.decoder.Decoder` (a PC network's generative path: the
:class:`~pcsim.network.NetworkSpec` and weights ``PCNetwork.init(sizes, activation,
mode="generative")`` makes, swept by :func:`pcsim.energy.sweep` from the top latent ``z = x_0``
to the data mean ``x_L``; with ``observation="bernoulli"`` the sweep's output is the logit, the
mean its sigmoid), the one the VAE uses. The recognition model is the same kind of layer stack
(:class:`~pcsim.generative.decoder.Layers`), ``D -> recognition_hidden -> 2d``, read as a
diagonal Gaussian by :func:`~pcsim.generative.decoder.gaussian_posterior`, as the VAE's encoder is.
Gradients of each phase's objective come from autograd and are applied by
:class:`pcsim.optim.Adam` (one per phase), through :func:`pcsim.training.train`.
"""

from __future__ import annotations

from numbers import Integral

import torch
from sklearn.utils._param_validation import Interval, StrOptions

from pcsim.arguments import check_numbers
from pcsim.errors import DataError
from pcsim.optim import Adam

from .base import GenerativeModel, Posterior, as_data, iw_bound
from .decoder import Decoder, Layers, gaussian_posterior

Tensor = torch.Tensor

__all__ = ["HelmholtzMachine"]


class HelmholtzMachine(GenerativeModel):
    """A Helmholtz machine with Gaussian latents ``z`` ``(d,)``, trained by (reweighted) wake-sleep.

    Hyper-parameters: ``sizes`` ``(d, ..., D)`` and ``activation`` (one name, or one per
    pre-synaptic layer ``0..L-1``) of the generative path, exactly as
    :meth:`pcsim.network.PCNetwork.init` takes them in generative mode; ``observation``
    (``"gaussian"`` or ``"bernoulli"``; Bernoulli data must lie in ``[0, 1]``);
    ``recognition_hidden`` (widths of the recognition network's hidden layers, same
    activation); ``reweighted`` (RWS instead of WS) with ``samples`` (``K`` importance samples
    per example; plain WS takes one); ``epochs``, ``batch_size``, ``lr`` (both Adams, per
    update); ``seed`` (weights, batch order and every draw); ``progress`` (tqdm bar); ``device``
    (``"cpu"`` or ``"cuda"``; every tensor is float64 there).

    Learned state: ``decoder_`` (:class:`~pcsim.generative.decoder.Decoder`, scalar ``log_sigma``)
    and ``recognition_`` (:class:`~pcsim.generative.decoder.Layers`), also seen as
    ``spec_``/``weights_``/``biases_`` (generative path; weights ``(1, n_{l-1}, n_l)``, biases
    ``(1, 1, n_l)``), ``log_sigma_`` (Gaussian observation noise, nats; 0-dim; None for
    Bernoulli), ``recognition_spec_``/``recognition_weights_``/``recognition_biases_``; ``loss_``
    ``(epochs,)`` (mean over the epoch's batches of minus the training bound: the one-sample
    ELBO for WS, the ``K``-sample IWAE bound for RWS; nats per example) and ``epoch_time_``
    ``(epochs,)`` (s). A blow-up raises :class:`~pcsim.errors.LearningDivergenceError` naming ``lr``.
    """

    _parameter_constraints = {
        "sizes": ["array-like"],
        "activation": [str, list, tuple],
        "observation": [StrOptions({"gaussian", "bernoulli"})],
        "recognition_hidden": ["array-like"],
        "reweighted": ["boolean"],
        "samples": [Interval(Integral, 1, None, closed="left")],
        **GenerativeModel._training_constraints,
    }

    def __init__(self, sizes=(2, 16, 8), activation="tanh", observation: str = "gaussian",
                 recognition_hidden=(16,), reweighted: bool = False, samples: int = 5, epochs: int = 50,
                 batch_size: int = 64, lr: float = 1e-3, seed: int = 0, progress: bool = False, device: str = "cpu"):
        self.sizes = sizes
        self.activation = activation
        self.observation = observation
        self.recognition_hidden = recognition_hidden
        self.reweighted = reweighted
        self.samples = samples
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.progress = progress
        self.device = device

    # ----------------------------------------------------------------- the two networks
    def _init_networks(self, D: int) -> None:
        dev = self._device()
        self.decoder_ = Decoder.init(self.sizes, self.activation, observation=self.observation, sigma="scalar",
                                     seed=self.seed, device=dev, dtype=torch.float64)
        if self.decoder_.n_features != D:
            raise DataError(f"x has {D} features but sizes ends in {self.decoder_.n_features}: the last width is the data's")
        hidden = check_numbers("recognition_hidden", self.recognition_hidden, integer=True, ge=1)
        act = self.activation if isinstance(self.activation, str) else self.activation[-1]
        self.recognition_ = Layers.init((D, *hidden, 2 * self.decoder_.latent_dim), act, mode="discriminative",
                                        seed=self.seed + 1, device=dev, dtype=torch.float64)

    # the learned state under the names it has always had: views of decoder_ and recognition_
    spec_ = property(lambda self: self.decoder_.layers.spec, doc="The generative path's NetworkSpec.")
    weights_ = property(lambda self: self.decoder_.layers.weights, doc="Generative weights ``(1, n_{l-1}, n_l)``.")
    biases_ = property(lambda self: self.decoder_.layers.biases, doc="Generative biases ``(1, 1, n_l)``.")
    recognition_spec_ = property(lambda self: self.recognition_.spec, doc="The recognition network's NetworkSpec.")
    recognition_weights_ = property(lambda self: self.recognition_.weights, doc="Recognition weights.")
    recognition_biases_ = property(lambda self: self.recognition_.biases, doc="Recognition biases.")

    @property
    def log_sigma_(self) -> Tensor | None:
        """The Gaussian observation noise ``log sigma`` (nats; a 0-dim view of ``decoder_.log_sigma``), None for Bernoulli."""
        ls = self.decoder_.log_sigma
        return None if ls is None else ls[0]

    def _log_joint(self, x: Tensor, z: Tensor) -> Tensor:
        """``log p(z) + log p(x | z)`` ``(K, N)`` (nats) for ``x`` ``(N, D)`` and ``z`` ``(K, N, d)``."""
        prior = Posterior.standard_normal(1, self.decoder_.latent_dim, dtype=x.dtype, device=x.device)
        return prior.log_prob(z) + self.decoder_.log_prob(x, z)

    def _dream(self, n: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
        """``n`` ancestral samples ``(z, x)`` ``((n, d), (n, D))`` of the generative model."""
        w = self.decoder_.layers.weights[0]
        z = Posterior.standard_normal(n, self.decoder_.latent_dim, dtype=w.dtype, device=w.device).sample(1, gen)[0]
        return z, self.decoder_.sample(z, gen)

    # ----------------------------------------------------------------- training
    def _fit(self, x: Tensor, aux: Tensor | None) -> None:
        if self.observation == "bernoulli" and ((x < 0) | (x > 1)).any():
            i, j = (int(v) for v in torch.nonzero((x < 0) | (x > 1))[0])
            raise DataError(f"x[{i}, {j}] = {float(x[i, j])} is outside [0, 1], which observation='bernoulli' needs")
        self._init_networks(x.shape[1])
        theta, phi = self.decoder_.parameters(), self.recognition_.parameters()
        opt_theta, opt_phi = Adam(self.lr), Adam(self.lr)
        order = torch.Generator().manual_seed(self.seed)                        # batch order, on the CPU
        gen = torch.Generator(device=x.device).manual_seed(self.seed)           # every draw, on the model's device
        n = x.shape[0]
        bs = min(self.batch_size, n)
        K = self.samples if self.reweighted else 1

        def step(idx: Tensor) -> Tensor:
            xb = x[idx]
            q = gaussian_posterior(self.recognition_, xb)
            z = q.sample(K, gen).detach()                       # (K, B, d): causes for the data
            log_p = self._log_joint(xb, z)                      # (K, B)
            log_q = q.log_prob(z)
            log_w = (log_p - log_q).detach()
            bound = iw_bound(log_w)                             # the IWAE bound (ELBO for K = 1)
            w = torch.softmax(log_w, 0)                         # normalised importance weights (1 for K = 1)
            wake = -(w * log_p).sum(0).mean()
            z_dream, x_dream = self._dream(xb.shape[0], gen)
            x_dream, z_dream = x_dream.detach(), z_dream.detach()
            sleep = -gaussian_posterior(self.recognition_, x_dream).log_prob(z_dream[None]).mean()
            recognition = 0.5 * (sleep - (w * log_q).sum(0).mean()) if self.reweighted else sleep
            g_theta = torch.autograd.grad(wake, theta)
            g_phi = torch.autograd.grad(recognition, phi)
            with torch.no_grad():
                opt_theta.step(theta, list(g_theta))
                opt_phi.step(phi, list(g_phi))
            return -bound.mean()

        self.epoch_time_, self.loss_ = self._train(
            step, n, bs, order, [*theta, *phi], [(self.decoder_.layers.sizes, bs * K), (self.recognition_.sizes, bs)],
            desc="reweighted wake-sleep" if self.reweighted else "wake-sleep",
            state={"optimizers": [opt_theta, opt_phi], "draws": gen})

    # ----------------------------------------------------------------- the surface
    def encode(self, x, aux=None) -> Posterior:
        """The recognition model's diagonal Gaussian ``q(z | x)``: mean and log-variance ``(N, d)``."""
        x, _ = self._inputs(x, aux)
        return gaussian_posterior(self.recognition_, x)

    def decode(self, z) -> Tensor:
        """The mean of ``p(x | z)`` ``(N, D)`` for latents ``z`` ``(N, d)`` (Bernoulli: probabilities)."""
        self._check_fitted()
        return self.decoder_.mean(as_data(z, "z", width=self.decoder_.latent_dim, device=self._device()))

    def sample(self, n: int, aux=None, seed: int = 0, *, noise: bool = True) -> Tensor:
        """``n`` samples ``x`` ``(n, D)`` by ancestral sampling ``z ~ N(0, I)``, ``x ~ p(x | z)``, seeded with
        ``seed``; with ``noise=False`` the decoder mean ``E[x | z]`` at the sampled ``z``."""
        z, x = self._dream(*self._sampling(n, seed))
        if noise:
            return x
        with torch.no_grad():
            return self.decoder_.mean(z)

    def log_joint(self, x, z, aux=None) -> Tensor:
        """``log p(x, z) = log N(z; 0, I) + log p(x | z)`` ``(K, N)`` (nats) for ``x`` ``(N, D)``, ``z`` ``(K, N, d)``;
        differentiable in ``z`` (the learned parameters are constants here)."""
        x, _ = self._inputs(x, aux)
        return self._log_joint(x, self._latents(z, x.shape[0], self.decoder_.latent_dim))
