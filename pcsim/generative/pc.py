"""Predictive coding's generative mode on the generative-model surface, and its variants.

The model is the hierarchical Gaussian model whose negative log density is PC's energy
(:mod:`pcsim.energy`; Rao & Ballard 1999, Friston 2005, Bogacz 2017): a network
``PCNetwork.init(sizes, activation, mode="generative")`` with ``sizes = (n_0, ..., n_L)``,
``n_L = D`` the data width, and

    x_0 ~ N(m_0, I / Pi_0),   x_l ~ N(f(x_{l-1}) W_l + b_l, I / Pi_l)  (l = 1..L),  x = x_L.

**The latent** ``z`` is every free value-node layer, top first, concatenated:
``z = [x_0, x_1, ..., x_{L-1}]`` ``(N, d)`` with ``d = n_0 + ... + n_{L-1}`` (``z = x_0`` for
one latent layer). With all of them ``log p(x, z)`` is exact (minus the energy plus the
Gaussians' normalising constants) for any depth and activation; with ``x_0`` alone it would be
an intractable integral over the hidden layers.

- :meth:`PCGenerative.encode`: PC's iterative inference. The free layers relax for
  ``inference_steps`` Euler steps of ``tau dx/dt = -dE/dx`` with ``x`` clamped
  (:func:`pcsim.inference.relax`); the posterior is the Laplace Gaussian at the relaxed
  state: mean = the relaxed ``z``, precision = the Gauss-Newton Hessian ``J^T Lambda J`` of the
  energy w.r.t. ``z`` (exact for linear activations, where it is the true posterior),
  a full-covariance :class:`LaplacePosterior`, the importance sampler of
  :meth:`~pcsim.generative.base.GenerativeModel.log_likelihood`.
- Training: per minibatch, relax from the prior mean's sweep and apply the local Hebbian
  gradients at the relaxed state (:class:`pcsim.rules.StandardPC`'s update: relax, then
  :func:`pcsim.energy.parameter_gradients`) with :class:`pcsim.optim.Adam`, through
  :func:`pcsim.training.train` (a blow-up is a LearningDivergenceError naming ``lr``).
- ``learning="mcpc"``: Monte Carlo PC (Oliviers, Bogacz & Meulemans 2024). After the
  relaxation to the mode, Langevin steps ``x <- x - eta dE/dx + sqrt(2 eta) xi`` (the
  ``temperature`` of :class:`~pcsim.inference.InferenceConfig`, unit temperature) sample the
  posterior and the local gradients are averaged over ``mc_samples`` of them after ``burn_in``
  steps. :meth:`PCGenerative.posterior_samples` exposes the sampler.
- :class:`HybridPC` (Tschantz et al. 2023): a bottom-up amortiser gives the initial latents,
  trained by the delta rule to predict the relaxed ones; inference then starts close to the
  mode.
- :class:`ConditionalPC`: the PC counterpart of the identifiable VAE (Khemakhem et al. 2020):
  the top prior's mean and precision are tables indexed by the auxiliary label, learned by the
  gradient of the prior energy.

Everything is float64 on the CPU unless ``dtype``/``device`` say otherwise; one ensemble member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from pcsim import energy as pc
from pcsim.arguments import check_number
from pcsim.errors import ConfigError, DataError
from pcsim.inference import InferenceConfig, PCState, Relaxation, init_state, relax
from pcsim.network import PCNetwork
from pcsim.optim import Adam
from pcsim.training import training_energy

from .base import GenerativeModel, Posterior, Tensor, as_aux, as_data

__all__ = ["ConditionalPC", "HybridPC", "LaplacePosterior", "PCGenerative"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class LaplacePosterior(Posterior):
    """A full-covariance Gaussian ``q(z | x) = N(mean, H^-1)``: ``mean`` ``(N, d)``,
    ``precision_cholesky`` ``(N, d, d)`` the lower Cholesky factor ``L`` of the precision
    ``H = L L^T``; ``log_var`` ``(N, d)`` holds the marginal variances' logs (``diag H^-1``), so
    every diagonal use of a :class:`Posterior` (KL per dimension, active units) sees the marginals."""

    precision_cholesky: Tensor

    def sample(self, samples: int, generator: torch.Generator) -> Tensor:
        """``samples`` draws ``z = mean + L^-T eps`` ``(K, N, d)``."""
        eps = torch.randn((samples, *self.mean.shape), generator=generator, dtype=self.mean.dtype,
                          device=self.mean.device)
        Lt = self.precision_cholesky.transpose(-1, -2)
        u = torch.linalg.solve_triangular(Lt, eps.permute(1, 2, 0), upper=True)  # (N, d, K)
        return self.mean + u.permute(2, 0, 1)

    def log_prob(self, z: Tensor) -> Tensor:
        """``log q(z | x)`` of ``z`` ``(K, N, d)`` -> ``(K, N)`` (nats)."""
        u = torch.einsum("nij,kni->knj", self.precision_cholesky, z - self.mean)  # L^T (z - mean)
        logdet = torch.log(torch.diagonal(self.precision_cholesky, dim1=-2, dim2=-1)).sum(-1)
        return -0.5 * (u * u).sum(-1) + logdet - 0.5 * z.shape[-1] * math.log(2 * math.pi)


class PCGenerative(GenerativeModel):
    """A predictive-coding network in generative mode on the :class:`GenerativeModel` surface (module docstring).

    Hyper-parameters: ``sizes`` ``(n_0, ..., n_L)`` (``n_0`` the top latent width, ``n_L`` the
    data width ``D``); ``activation`` (one name, or ``L`` names for layers ``0..L-1``);
    ``precision`` ``Pi_1..Pi_L`` (one or ``L`` values, dimensionless inverse variances) and
    ``prior_precision`` ``Pi_0``; ``learn_precision``; ``inference_steps`` T and ``dt``, ``tau``
    (ms; step ``dt/tau``) of the relaxation, ``precondition`` its step scaling (``"none"``;
    ``"precision"``: by each layer's own precision; ``"curvature"``: by each layer's curvature
    bound, stable for ``dt/tau < 1`` whatever the precisions and weights grow to, the setting for
    learned precisions; :class:`pcsim.inference.InferenceConfig`); ``precision_update`` the
    learned precisions' statistic (``"mode"``: PC's local rule at the relaxed state,
    ``dE/dlog Pi = 1/2 (Pi eps^2 - 1)``; ``"laplace"``: the variational-Laplace M-step, the same
    with ``eps^2`` replaced by its expectation under the Laplace posterior, ``eps^2 + diag Cov_q(eps)``
    (Friston et al. 2007), see :meth:`_error_variances`; Monte Carlo PC's Langevin average is
    that expectation already and uses ``"mode"``); ``learning`` ``"standard"`` or ``"mcpc"`` with
    ``mc_samples`` and ``burn_in`` (Langevin steps); ``epochs``, ``batch_size``, ``lr`` (Adam);
    ``seed`` (weights, batch order, Langevin noise); ``device``, ``dtype``; ``progress`` (a bar
    over the training steps). Learned state: ``network_`` (:class:`pcsim.network.PCNetwork`),
    ``energy_`` (mean relaxed energy per example and epoch ``(epochs,)``, nats up to the
    normalising constant), ``n_latents_`` (``d``).
    """

    _parameter_constraints = {
        "sizes": [list, tuple],
        "activation": [str, list, tuple],
        "precision": [Interval(Real, 0, None, closed="neither"), list, tuple],
        "prior_precision": [Interval(Real, 0, None, closed="neither")],
        "learn_precision": ["boolean"],
        "inference_steps": [Interval(Integral, 0, None, closed="left")],
        "dt": [Interval(Real, 0, None, closed="neither")],
        "tau": [Interval(Real, 0, None, closed="neither")],
        "precondition": [StrOptions({"none", "precision", "curvature"})],
        "precision_update": [StrOptions({"mode", "laplace"})],
        "learning": [StrOptions({"standard", "mcpc"})],
        "mc_samples": [Interval(Integral, 1, None, closed="left")],
        "burn_in": [Interval(Integral, 0, None, closed="left")],
        "epochs": [Interval(Integral, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "device": [str],
        "dtype": [StrOptions(set(_DTYPES))],
        "progress": ["boolean"],
    }

    def __init__(self, sizes=(2, 4), activation="tanh", *, precision=1.0, prior_precision: float = 1.0,
                 learn_precision: bool = False, inference_steps: int = 50, dt: float = 1.0, tau: float = 10.0,
                 precondition: str = "none", precision_update: str = "mode", learning: str = "standard", mc_samples: int = 10, burn_in: int = 10, epochs: int = 10,
                 batch_size: int = 64, lr: float = 1e-3, seed: int = 0, device: str = "cpu", dtype: str = "float64",
                 progress: bool = False):
        self.sizes = sizes
        self.activation = activation
        self.precision = precision
        self.prior_precision = prior_precision
        self.learn_precision = learn_precision
        self.inference_steps = inference_steps
        self.dt = dt
        self.tau = tau
        self.precondition = precondition
        self.precision_update = precision_update
        self.learning = learning
        self.mc_samples = mc_samples
        self.burn_in = burn_in
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.seed = seed
        self.device = device
        self.dtype = dtype
        self.progress = progress

    # ------------------------------------------------------------------ configuration
    def _inference(self, steps: int | None = None, **kw) -> InferenceConfig:
        """The relaxation's settings: ``steps`` (default ``inference_steps``) Euler steps of ``dt/tau``."""
        pre = {"none": False}.get(self.precondition, self.precondition)
        return InferenceConfig(steps=self.inference_steps if steps is None else steps, dt=self.dt, tau=self.tau,
                               precondition=pre, **kw)

    def _to(self, t: Tensor) -> Tensor:
        return t.to(device=self.device, dtype=_DTYPES[self.dtype])

    def _inputs(self, x, aux) -> tuple[Tensor, Tensor | None]:
        """The base's validation, then ``x`` on the model's device and dtype (so the base's
        generators, made on ``x.device``, match the posterior's tensors)."""
        t, a = super()._inputs(x, aux)
        return self._to(t), None if a is None else a.to(self.device)

    def _init_network(self, width: int) -> PCNetwork:
        sizes = tuple(self.sizes)
        if not sizes or sizes[-1] != width:
            raise DataError(f"x has {width} features but sizes = {sizes} ends in "
                            f"{sizes[-1] if sizes else None}: the last width is the data's")
        return PCNetwork.init(sizes, self.activation, mode="generative", seed=self.seed, precision=self.precision,
                              learn_precision=self.learn_precision, prior_precision=self.prior_precision,
                              device=self.device, dtype=_DTYPES[self.dtype])

    def _init_extra(self, x: Tensor, aux: Tensor | None) -> None:
        """Learned state beside the network (subclasses: the amortiser, the prior tables)."""

    def _parameters(self) -> list[Tensor]:
        """The tensors the local rule updates, in the order of :meth:`_local_gradients`' list."""
        return self.network_.parameters()

    def _watched(self) -> list[Tensor]:
        """Every learned tensor, watched by :func:`pcsim.training.train` for a blow-up."""
        return self._parameters()

    def _training_state(self) -> dict:
        """What training changes beside :meth:`_watched` and the optimiser of :meth:`_fit` (a
        checkpoint's ``state``, :mod:`pcsim.checkpoint`); subclasses add their own optimisers."""
        return {}

    # ------------------------------------------------------------------ the model's pieces
    def _view(self, aux: Tensor | None, repeat: int = 1) -> PCNetwork:
        """The network whose prior serves examples with labels ``aux`` (tiled ``repeat`` times); plain PC: the network."""
        return self.network_

    def _start(self, net: PCNetwork, x: Tensor) -> PCState:
        """The initial state of inference with ``x`` ``(N, D)`` clamped: the sweep down from the prior mean."""
        return init_state(net, data=x)

    def _split(self, z: Tensor) -> list[Tensor]:
        """``z`` ``(..., d)`` as the free layers ``[x_0, ..., x_{L-1}]``."""
        return list(torch.split(z, list(self.network_.sizes[:-1]), dim=-1))

    def _check_z(self, z, name: str = "z") -> Tensor:
        """Latents ``z`` ``(K, N, d)`` on the model's device, or a DataError naming ``name`` (the shape
        here; values by :func:`~pcsim.generative.base.as_data`, the one data validator, on ``(K N, d)``)."""
        t = torch.as_tensor(np.asarray(z) if not isinstance(z, Tensor) else z)
        if t.dim() != 3 or t.shape[-1] != self.n_latents_:
            raise DataError(f"{name} must be (K, N, d) with d = {self.n_latents_} (the free layers "
                            f"{self.network_.sizes[:-1]} concatenated), got shape {tuple(t.shape)}")
        return self._to(as_data(t.reshape(-1, t.shape[-1]), name)).reshape(t.shape)

    def _local_gradients(self, net: PCNetwork, eps, peps, fx, aux: Tensor | None,
                         variances: list[Tensor] | None = None) -> list[Tensor]:
        """The local (Hebbian) gradients of the energy at one state, ordered as :meth:`_parameters`
        (:func:`pcsim.energy.parameter_gradients`); with ``variances`` (:meth:`_error_variances`) the
        precisions' gradients take the posterior's spread of each error too, ``+ 1/2 Pi diag Cov_q(eps)``."""
        grads = pc.parameter_gradients(net.spec, peps, fx, eps)
        if variances is not None and net.learn_precision:
            L = net.depth
            for k in range(L):
                extra = 0.5 * (net.log_precision[k].exp() * variances[k + 1]).mean(1, keepdim=True)  # (1, 1, n)
                grads[2 * L + k] = grads[2 * L + k] + (extra.sum(-1, keepdim=True) if net.spec.scalar_precision[k]
                                                       else extra)
        return grads

    def _error_variances(self, net: PCNetwork, xs: list[Tensor]) -> list[Tensor]:
        """``diag Cov_q(eps_l)`` ``(1, N, n_l)`` for ``l = 0..L`` under the Laplace posterior ``q`` at value
        nodes ``xs`` (:meth:`_laplace`'s ``H``, ``Sigma = H^-1``), with the errors linearised there:
        ``eps_0 = x_0 - m_0`` has ``Sigma_00``; ``eps_l = x_l - mu_l(x_{l-1})``, ``d mu_l = A_l^T dx_{l-1}``
        (``A_l = diag f'(x_{l-1}) W_l``), has ``Sigma_ll - 2 A_l^T Sigma_{l-1,l} + A_l^T Sigma_{l-1,l-1} A_l``
        (the data layer ``L`` is clamped: the last term only). What the mode alone leaves out of the
        expected squared error, and why precisions learned at the mode run away (a free layer
        can shrink its error at the mode, its spread under ``q`` stays)."""
        q = self._laplace(net, xs)
        S = torch.cholesky_inverse(q.precision_cholesky)                           # (N, d, d)
        L, widths = net.depth, net.spec.sizes[:net.depth]
        offs = np.concatenate([[0], np.cumsum(widths)]).tolist()
        block = lambda a, b: S[:, offs[a]:offs[a + 1], offs[b]:offs[b + 1]]      # noqa: E731
        out = [torch.diagonal(block(0, 0), dim1=-2, dim2=-1).unsqueeze(0)]
        for l in range(1, L + 1):
            act = net.spec.activation(l - 1)
            A = act.df(xs[l - 1], act.f(xs[l - 1]))[0][:, :, None] * net.weights[l - 1][0][None]  # (N, n_{l-1}, n_l)
            v = torch.einsum("nij,nik,nkj->nj", A, block(l - 1, l - 1), A)
            if l < L:
                v = v + torch.diagonal(block(l, l), dim1=-2, dim2=-1) - 2.0 * torch.einsum("nij,nij->nj", A, block(l - 1, l))
            out.append(v.unsqueeze(0))
        return out

    def _relaxed(self, net: PCNetwork, x: Tensor, steps: int | None = None, start: str | None = None) -> Relaxation:
        state = self._start(net, x) if start is None else init_state(net, data=x)
        return relax(net, state, self._inference(steps))

    # ------------------------------------------------------------------ training
    def _fit(self, x: Tensor, aux: Tensor | None) -> None:
        x = self._to(x)
        aux = None if aux is None else aux.to(self.device)
        self.network_ = self._init_network(x.shape[1])
        self.n_latents_ = sum(self.network_.sizes[:-1])
        self._init_extra(x, aux)
        opt = Adam(self.lr)
        noise = torch.Generator(device=self.device).manual_seed(self.seed + 1)
        N = x.shape[0]
        bs = min(int(self.batch_size), N)

        def step(idx):
            r = self._train_step(x[idx], None if aux is None else aux[idx], opt, noise)
            return training_energy(r)  # (1,): the relaxed energy, batch mean

        self.epoch_seconds_, self.energy_ = self._train(
            step, N, bs, torch.Generator().manual_seed(self.seed), self._watched(), [(self.network_.sizes, bs)],
            desc=type(self).__name__, grad=False, state={"optimizer": opt, "noise": noise, **self._training_state()})

    def _train_step(self, x: Tensor, aux: Tensor | None, optimizer: Adam, noise: torch.Generator) -> Relaxation:
        """One update on a minibatch ``x`` ``(B, D)``: relax (standard PC's update at the relaxed
        state) or, for MCPC, relax and then average the local gradients over Langevin samples.
        Returns the relaxation to the mode (its energy is what ``energy_`` and the blow-up check see)."""
        net = self._view(aux)
        r = relax(net, self._start(net, x), self._inference())
        if self.learning == "standard":
            laplace = self.precision_update == "laplace"
            grads = self._local_gradients(net, r.eps, r.peps, r.fx, aux,
                                          self._error_variances(net, r.state.x) if laplace else None)
        else:
            grads = self._mcpc_gradients(net, r, aux, noise)
        optimizer.step(self._parameters(), grads)
        self._after_step(net, r)
        return r

    def _mcpc_gradients(self, net: PCNetwork, mode: Relaxation, aux, noise) -> list[Tensor]:
        """Monte Carlo PC's update (Oliviers et al. 2024): the local gradients averaged over ``mc_samples``
        unit-temperature Langevin states taken after ``burn_in`` steps from the relaxed ``mode``."""
        acc: list = []

        def collect(s) -> None:
            if s.t >= self.burn_in:
                g = self._local_gradients(net, s.eps, s.peps, s.fx, aux)
                if acc:
                    torch._foreach_add_(acc, g)
                else:
                    acc.extend(t.clone() for t in g)

        cfg = self._inference(self.burn_in + self.mc_samples, temperature=1.0, max_growth=1e6)
        relax(net, mode.state.clone(), cfg, on_step=collect, generator=noise)
        return [g / self.mc_samples for g in acc]

    def _after_step(self, net: PCNetwork, r: Relaxation) -> None:
        """What a variant learns from the relaxed state besides the network (HybridPC: its amortiser)."""

    # ------------------------------------------------------------------ the surface
    def relax(self, x, aux=None, *, steps: int | None = None, start: str | None = None) -> Relaxation:
        """PC's iterative inference on ``x`` ``(N, D)``: ``steps`` (default ``inference_steps``) Euler
        steps from the model's initial state (``start=None``) or from the sweep down from the prior mean
        (``start="prior"``); the :class:`pcsim.inference.Relaxation` (state ``(1, N, n_l)`` per
        layer, energies ``(1, N, L+1)``), e.g. to measure inference quality against ``T``."""
        x, aux = self._inputs(x, aux)
        if start not in (None, "prior"):
            raise ConfigError(f"start must be None (the model's initial state) or 'prior', got {start!r}")
        if steps is not None:
            steps = check_number("steps", steps, integer=True, ge=0)
        return self._relaxed(self._view(aux), self._to(x), steps, start)

    def encode(self, x, aux=None) -> LaplacePosterior:
        """The Laplace posterior at the relaxed latents of ``x`` ``(N, D)``: mean ``(N, d)`` and the
        Gauss-Newton precision ``(N, d, d)`` of the energy (module docstring)."""
        x, aux = self._inputs(x, aux)
        net = self._view(aux)
        r = self._relaxed(net, self._to(x))
        return self._laplace(net, r.state.x)

    def _laplace(self, net: PCNetwork, xs: list[Tensor]) -> LaplacePosterior:
        """The Gaussian at value nodes ``xs`` (``(1, N, n_l)``): mean the free layers, precision
        ``H = J^T Lambda J`` with ``J`` the Jacobian of the prediction errors ``[eps_0..eps_L]`` w.r.t.
        ``z`` and ``Lambda`` their precisions (Gauss-Newton: the ``f''`` terms are left out)."""
        spec, L = net.spec, net.depth
        N = xs[-1].shape[1]
        widths = spec.sizes[:L]
        offs = np.concatenate([[0], np.cumsum(widths)]).tolist()
        d = offs[-1]
        H = xs[-1].new_zeros(N, d, d)
        pi0 = net.prior_log_precision.exp().reshape(-1).expand(N)
        eye0 = torch.eye(widths[0], dtype=H.dtype, device=H.device)
        H[:, :offs[1], :offs[1]] += pi0[:, None, None] * eye0
        pis = net.precision()
        for l in range(1, L + 1):
            k = l - 1
            act = spec.activation(k)
            slope = act.df(xs[k], act.f(xs[k]))[0]                               # (N, n_k)
            A = slope[:, :, None] * net.weights[k][0][None]                      # d mu_l / d x_k, (N, n_k, n_l)
            lam = pis[k].reshape(-1).expand(spec.sizes[l])                       # (n_l,)
            sk = slice(offs[k], offs[k + 1])
            H[:, sk, sk] += (A * lam) @ A.transpose(1, 2)
            if l < L:
                sl = slice(offs[l], offs[l + 1])
                H[:, sl, sl] += torch.diag(lam)
                H[:, sk, sl] -= A * lam
                H[:, sl, sk] -= (A * lam).transpose(1, 2)
        chol = torch.linalg.cholesky(H)
        var = torch.diagonal(torch.cholesky_inverse(chol), dim1=-2, dim2=-1)
        mean = torch.cat([xs[k][0] for k in range(L)], -1)
        return LaplacePosterior(mean, var.log(), chol)

    def log_joint(self, x, z, aux=None) -> Tensor:
        """``log p(x, z)`` ``(K, N)`` in nats of ``x`` ``(N, D)`` and latents ``z`` ``(K, N, d)``: minus
        the energy plus the normalising constants ``1/2 sum_l log det(Pi_l / 2 pi)`` (prior included)."""
        x, aux = self._inputs(x, aux)
        z = self._check_z(z)
        K, N = z.shape[:2]
        if N != x.shape[0]:
            raise DataError(f"z holds latents of {N} examples per sample but x has {x.shape[0]}: z must be (K, N, d)")
        net = self._view(aux, repeat=K)
        xs = [t.reshape(1, K * N, -1) for t in self._split(z)] + [self._to(x).repeat(K, 1).unsqueeze(0)]
        prior = (net.prior_mean, net.prior_log_precision.exp())
        eps, peps, _ = pc.errors(net.spec, net.weights, net.biases, net.precision(), prior, xs)
        quad = pc.quadratic_energies(eps, peps, xs[-1]).sum(-1)[0]               # (K N,)
        logdet = sum(ld[0, 0] for ld in pc.log_det_precision(net.spec, net.log_precision))
        logdet = logdet + net.sizes[0] * net.prior_log_precision.reshape(-1)     # (1,) or (K N,)
        out = -quad + 0.5 * logdet - 0.5 * sum(net.sizes) * math.log(2 * math.pi)
        return out.reshape(K, N)

    def decode(self, z) -> Tensor:
        """The mean of ``p(x | z)`` ``(N, D)``: from the full latent ``z`` ``(N, d)`` the prediction
        ``mu_L`` of its last layer ``x_{L-1}``; from a top cause ``(N, n_0)`` alone (a different width
        when ``L > 1``) the deterministic sweep :func:`pcsim.energy.sweep` down to the data mean."""
        self._check_fitted()
        net = self.network_
        t = as_data(z, "z")
        if t.shape[1] not in (self.n_latents_, net.sizes[0]):
            raise DataError(f"z has {t.shape[1]} columns; expected d = {self.n_latents_} (all free layers) or "
                            f"n_0 = {net.sizes[0]} (the top cause)")
        t = self._to(t)
        with torch.no_grad():
            if t.shape[1] == self.n_latents_:
                last = self._split(t)[-1].unsqueeze(0)
                k = net.depth - 1
                return pc.predict(net.activation(k).f(last), net.weights[k], net.biases[k])[0]
            return pc.sweep(net.spec, net.weights, net.biases, t.unsqueeze(0))[-1][0]

    def sample(self, n: int, aux=None, seed: int = 0, *, noise: bool = True) -> Tensor:
        """``n`` ancestral samples ``(n, D)``: ``x_0`` from the prior, then each layer from its
        prediction plus Gaussian noise of its precision, ``x_l = mu_l(x_{l-1}) + xi / sqrt(Pi_l)``;
        with ``noise=False`` the data layer is its prediction ``mu_L`` (the decoder mean ``E[x | z]`` at
        the sampled latents ``z = [x_0..x_{L-1}]``), without the observation noise."""
        self._check_fitted()
        n = check_number("n", n, integer=True, ge=1)
        seed = check_number("seed", seed, integer=True, ge=0)
        aux = self._sample_aux(aux, n)
        net = self._view(aux)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        draw = lambda shape: torch.randn(shape, generator=gen, dtype=net.dtype, device=net.device)  # noqa: E731
        x = net.prior_mean.expand(1, n, -1) + draw((1, n, net.sizes[0])) * net.prior_log_precision.exp().rsqrt()
        with torch.no_grad():
            for k, pi in enumerate(net.precision()):
                mu = pc.predict(net.activation(k).f(x), net.weights[k], net.biases[k])
                x = mu + draw(mu.shape) * pi.rsqrt() if noise or k < net.depth - 1 else mu
        return x[0]

    def _sample_aux(self, aux, n: int) -> Tensor | None:
        return as_aux(aux, n, self.n_aux_)

    def posterior_samples(self, x, n: int, burn_in: int = 100, *, thin: int = 1, dt: float | None = None, aux=None,
                          seed: int = 0) -> Tensor:
        """``n`` Monte Carlo PC samples of ``z`` per example, ``(n, N, d)``: unit-temperature Langevin
        steps ``z <- z - eta dE/dz + sqrt(2 eta) xi`` (``eta = dt/tau``, ``dt`` in ms, default the
        model's) from the relaxed latents of ``x`` ``(N, D)``; the first ``burn_in`` steps are dropped,
        then every ``thin``-th state is kept. Unadjusted Langevin: the stationary law is the posterior
        up to an ``O(eta)`` bias (for a Gaussian, the variance is ``1/(lam (1 - eta lam / 2))``)."""
        x, aux = self._inputs(x, aux)
        n = check_number("n", n, integer=True, ge=1)
        burn_in = check_number("burn_in", burn_in, integer=True, ge=0)
        thin = check_number("thin", thin, integer=True, ge=1)
        seed = check_number("seed", seed, integer=True, ge=0)
        dt = self.dt if dt is None else check_number("dt", dt, gt=0)
        net = self._view(aux)
        mode = self._relaxed(net, self._to(x))
        keep: list[Tensor] = []

        def collect(s) -> None:
            if s.t >= burn_in and (s.t - burn_in) % thin == 0:
                keep.append(torch.cat(s.x[:-1], -1)[0].clone())

        cfg = replace(self._inference(burn_in + (n - 1) * thin + 1, temperature=1.0, max_growth=1e6), dt=dt)
        gen = torch.Generator(device=self.device).manual_seed(seed)
        with torch.no_grad():
            relax(net, mode.state, cfg, on_step=collect, generator=gen)
        return torch.stack(keep)


class HybridPC(PCGenerative):
    """Hybrid (amortised) predictive coding (Tschantz et al. 2023).

    A bottom-up amortiser mirrors the generative path: layer ``l``'s initial value is predicted from
    the layer below it, ``x^_l = f_{l+1}(x_{l+1}) V_l + c_l`` (``l = L-1..0``, from the data
    ``x_L`` up, ``f`` the network's activations), and inference relaxes ``inference_steps`` steps
    from there instead of from the prior mean. After each relaxation the amortiser learns by the
    delta rule (local: the relaxed ``x_l`` is the target, the relaxed ``x_{l+1}`` the input),
    ``dV_l = f(x_{l+1})^T (x_l - x^_l) / B``, with its own Adam step of size ``amortiser_lr``.
    Hyper-parameters as :class:`PCGenerative` plus ``amortiser_lr``; learned state adds
    ``amortiser_`` (the lists ``V`` ``(1, n_{l+1}, n_l)`` and ``c`` ``(1, 1, n_l)``).
    """

    _parameter_constraints = {**PCGenerative._parameter_constraints,
                              "amortiser_lr": [Interval(Real, 0, None, closed="neither")]}

    def __init__(self, sizes=(2, 4), activation="tanh", *, precision=1.0, prior_precision: float = 1.0,
                 learn_precision: bool = False, inference_steps: int = 5, dt: float = 1.0, tau: float = 10.0,
                 precondition: str = "none", precision_update: str = "mode", learning: str = "standard", mc_samples: int = 10, burn_in: int = 10, epochs: int = 10,
                 batch_size: int = 64, lr: float = 1e-3, amortiser_lr: float = 1e-2, seed: int = 0,
                 device: str = "cpu", dtype: str = "float64", progress: bool = False):
        super().__init__(sizes, activation, precision=precision, prior_precision=prior_precision,
                         learn_precision=learn_precision, inference_steps=inference_steps, dt=dt, tau=tau,
                         precondition=precondition, precision_update=precision_update, learning=learning, mc_samples=mc_samples, burn_in=burn_in, epochs=epochs,
                         batch_size=batch_size, lr=lr, seed=seed, device=device, dtype=dtype, progress=progress)
        self.amortiser_lr = amortiser_lr

    def _init_extra(self, x: Tensor, aux: Tensor | None) -> None:
        sizes, L = self.network_.sizes, self.network_.depth
        gen = torch.Generator().manual_seed(self.seed + 2)
        V, c = [], []
        for l in range(L):
            bound = math.sqrt(6.0 / (sizes[l] + sizes[l + 1]))
            w = (torch.rand(1, sizes[l + 1], sizes[l], generator=gen, dtype=torch.float64) * 2 - 1) * bound
            V.append(self._to(w))
            c.append(self._to(torch.zeros(1, 1, sizes[l])))
        self.amortiser_ = {"V": V, "c": c}
        self._amortiser_opt = Adam(self.amortiser_lr)

    def _watched(self) -> list[Tensor]:
        return super()._watched() + self.amortiser_["V"] + self.amortiser_["c"]

    def _training_state(self) -> dict:
        return {"amortiser_optimizer": self._amortiser_opt}

    def amortised(self, x) -> Tensor:
        """The amortiser's latents ``z`` ``(N, d)`` for ``x`` ``(N, D)`` (before any relaxation)."""
        x, _ = self._inputs(x, None)
        return torch.cat(self._amortise(self._to(x).unsqueeze(0))[:-1], -1)[0]

    def _amortise(self, x: Tensor) -> list[Tensor]:
        """``[x^_0, ..., x^_{L-1}, x]`` from data ``x`` ``(1, N, D)`` by the bottom-up sweep."""
        net, V, c = self.network_, self.amortiser_["V"], self.amortiser_["c"]
        out = [x]
        for l in reversed(range(net.depth)):
            out.insert(0, pc.predict(net.activation(l + 1).f(out[0]), V[l], c[l]))
        return out

    def _start(self, net: PCNetwork, x: Tensor) -> PCState:
        state = init_state(net, data=x)
        xs = self._amortise(state.x[-1])
        return PCState([t.contiguous() for t in xs[:-1]] + [state.x[-1]], state.clamped)

    def _after_step(self, net: PCNetwork, r: Relaxation) -> None:
        """The amortiser's delta rule on the relaxed state ``r.state.x``."""
        xs, V, c = r.state.x, self.amortiser_["V"], self.amortiser_["c"]
        B = xs[-1].shape[1]
        gV, gc = [], []
        for l in range(net.depth):
            a = net.activation(l + 1).f(xs[l + 1])
            err = xs[l] - pc.predict(a, V[l], c[l])                          # the amortiser's prediction error
            gV.append(-torch.bmm(a.transpose(1, 2), err) / B)
            gc.append(-err.mean(1, keepdim=True))
        self._amortiser_opt.step(V + c, gV + gc)


class ConditionalPC(PCGenerative):
    """Predictive coding with a label-conditioned top prior, the PC counterpart of the identifiable
    VAE (Khemakhem et al. 2020): ``x_0 | u ~ N(m_u, I / Pi_u)`` for the auxiliary label ``u``.

    ``prior_mean_`` ``(n_aux, n_0)`` and ``prior_log_precision_`` ``(n_aux,)`` are learned by the
    gradient of the prior energy ``1/2 Pi_u ||x_0 - m_u||^2 - n_0/2 log Pi_u`` at the relaxed ``x_0``
    (the precision term is its normaliser, without which ``Pi_u`` would grow without bound):
    ``dE/dm_u = -sum_{i: u_i = u} Pi_u eps_0i / B`` and ``dE/dlog Pi_u = sum_{i: u_i = u}
    (Pi_u ||eps_0i||^2 - n_0) / (2 B)``; with ``learn_prior_precision=False`` only the means
    learn. At the mode this rule runs away: the relaxed ``x_0`` is shrunk towards ``m_u`` by ``Pi_u``,
    so its spread looks smaller than it is, ``Pi_u`` grows, and the shrinkage with it (measured on
    the ICA data: ``Pi_u`` ~ 770 after 300 epochs at lr 1e-3, growing at Adam's largest rate, the
    top cause flattened onto the segment means); ``precision_update="laplace"`` counts the
    posterior's spread, ``||eps_0i||^2 + tr Sigma_00``, the M-step of variational Laplace. ``aux`` ``(N,)`` is required by every method that sees data or samples.
    """

    _parameter_constraints = {**PCGenerative._parameter_constraints, "learn_prior_precision": ["boolean"]}

    def __init__(self, sizes=(2, 4), activation="tanh", *, precision=1.0, prior_precision: float = 1.0,
                 learn_precision: bool = False, learn_prior_precision: bool = True, inference_steps: int = 50,
                 dt: float = 1.0, tau: float = 10.0, precondition: str = "none", precision_update: str = "mode", learning: str = "standard", mc_samples: int = 10,
                 burn_in: int = 10, epochs: int = 10, batch_size: int = 64, lr: float = 1e-3, seed: int = 0,
                 device: str = "cpu", dtype: str = "float64", progress: bool = False):
        super().__init__(sizes, activation, precision=precision, prior_precision=prior_precision,
                         learn_precision=learn_precision, inference_steps=inference_steps, dt=dt, tau=tau,
                         precondition=precondition, precision_update=precision_update, learning=learning, mc_samples=mc_samples, burn_in=burn_in, epochs=epochs,
                         batch_size=batch_size, lr=lr, seed=seed, device=device, dtype=dtype, progress=progress)
        self.learn_prior_precision = learn_prior_precision

    def fit(self, x, aux=None) -> "ConditionalPC":
        """As :meth:`GenerativeModel.fit`; ``aux`` ``(N,)`` labels ``0..n_aux-1`` are required."""
        if aux is None:
            raise DataError("aux is required by ConditionalPC (the labels its prior is conditioned on), got None")
        return super().fit(x, aux)

    def _inputs(self, x, aux):
        if aux is None and hasattr(self, "n_features_"):
            raise DataError("aux is required by ConditionalPC (the labels its prior is conditioned on), got None")
        return super()._inputs(x, aux)

    def _sample_aux(self, aux, n: int) -> Tensor:
        if aux is None:
            raise DataError("aux is required by ConditionalPC.sample: one label per sample, got None")
        return super()._sample_aux(aux, n).to(self.device)

    def _init_extra(self, x: Tensor, aux: Tensor | None) -> None:
        net = self.network_
        self.prior_mean_ = net.prior_mean[0].expand(self.n_aux_, -1).clone()                  # (n_aux, n_0)
        self.prior_log_precision_ = net.prior_log_precision.reshape(1).expand(self.n_aux_).clone()  # (n_aux,)

    def _parameters(self) -> list[Tensor]:
        ps = self.network_.parameters()[:-1] + [self.prior_mean_]  # the tables replace the network's one prior
        return ps + [self.prior_log_precision_] if self.learn_prior_precision else ps

    def _view(self, aux: Tensor | None, repeat: int = 1) -> PCNetwork:
        a = aux.to(self.prior_mean_.device).repeat(repeat)
        return replace(self.network_, prior_mean=self.prior_mean_[a].unsqueeze(0),
                       prior_log_precision=self.prior_log_precision_[a].reshape(1, -1, 1))

    def _local_gradients(self, net: PCNetwork, eps, peps, fx, aux: Tensor | None,
                         variances: list[Tensor] | None = None) -> list[Tensor]:
        grads = super()._local_gradients(net, eps, peps, fx, aux, variances)[:-1]
        B, n0 = eps[0].shape[1], eps[0].shape[2]
        a = aux.to(self.prior_mean_.device)
        gm = self.prior_mean_.new_zeros(self.prior_mean_.shape).index_add_(0, a, -peps[0][0] / B)
        grads.append(gm)
        if self.learn_prior_precision:
            sq = (peps[0][0] * eps[0][0]).sum(-1)                                     # Pi_u ||eps_0||^2, (B,)
            if variances is not None:  # + Pi_u tr Sigma_00: the prior's M-step under the Laplace posterior
                sq = sq + net.prior_log_precision.exp().reshape(-1) * variances[0][0].sum(-1)
            per = 0.5 * (sq - n0) / B
            grads.append(self.prior_log_precision_.new_zeros(self.prior_log_precision_.shape).index_add_(0, a, per))
        return grads
