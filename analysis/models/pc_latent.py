"""A predictive-coding latent model of spiking: dynamical PC with a Poisson observation energy.

The model is :class:`pcsim.temporal.TemporalPCNetwork` in generative mode: per trial and time
bin a latent state ``x_t`` (``n_latents``) predicts the next one through learned residual
dynamics ``x_t ~ x_{t-1} + f(x_{t-1}) @ A + b`` (precision ``dynamics_precision``) and the
spike counts of its bin through ``y_t ~ Poisson(exp(x_t @ C + d))``. Latents are inferred by
relaxing the PC energy (Rao & Ballard 1999; Friston 2008 generalised filtering; Millidge et
al. 2023 temporal PC); weights learn by the local Hebbian rules of :mod:`pcsim.temporal`.

``fit`` alternates, over epochs and minibatches of training trials, a relaxation of those
trials' latents (warm-started from the previous epoch) with one Adam step on the local weight
gradients: EM with the E-step done by relaxation. With ``learning="laplace"`` (default) the
weight gradients are those of the expected energy under the Laplace posterior (mean = relaxed
latents, covariance = inverse curvature of the energy; Friston et al. 2007 variational Laplace,
Macke et al. 2011 Laplace-EM for Poisson dynamical systems): the same Hebbian products with the
expected rate ``E[lambda]`` plus covariance corrections. With ``learning="map"`` they are the
plain products at the relaxed latents (faster, but it overfits: MAP latents are over-confident).
Point estimates have a scale degeneracy (shrinking the latents and growing ``C`` lowers the prior
energy at no cost to the fit), so after every epoch all latents are rescaled by one factor to unit
mean variance and the weights rescaled to match (the renormalisation of dictionary learning,
Olshausen & Field 1996); ``dynamics_precision`` and the non-linearity of ``f`` thus act at a fixed
scale. The prior and dynamics precisions are not Adam steps but their closed-form M-step after each
minibatch (the state-noise update of EM for linear dynamical systems, Shumway & Stoffer 1982). The Adam step size follows a cosine schedule from ``lr`` to 0 over the epochs, which keeps
the alternation from oscillating late in training.

EM starts from factor analysis of the smoothed log rates (the way GPFA starts, Yu et al. 2009), not
from random weights: a random start made the fit's quality depend on the seed (co-bps moved by up to
0.14 between seeds on a small GP-latent recording; 5e-5 from the FA start). Every EM step runs its
computations over all bins with the threads :func:`pcsim.temporal.relaxation_threads` chooses for
their size (the free cores, at the benchmark's size); the sequential block recursion over time bins
inside it, thousands of regions of a few microseconds where a second thread on a busy machine made
the step up to 20x slower, sizes its own (one thread here; :mod:`pcsim.temporal.blocktridiagonal`).
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from sklearn.utils._param_validation import Interval, StrOptions

from pcsim.activations import ACTIVATIONS
from analysis.models.base import LatentModel, observed_mean_counts
from pcsim.training import train
from pcsim.optim import Adam
from pcsim import parallel
from pcsim.temporal import (LaplacePosterior, TemporalInferenceConfig, TemporalPCNetwork, expected_rates,
                            free_energy_and_gradients, laplace_posterior,
                            observations, parameter_gradients, precision_m_step, relax, relaxation_threads)

__all__ = ["PCLatentModel"]

#: weight updates of a fit when ``epochs`` is None
UPDATES = 100
#: the network tensors (names of :meth:`TemporalPCNetwork.parameter_names`) that the main Adam
#: optimiser steps; the dynamics weights have their own (``dynamics_lr``) and the log-precisions
#: their closed-form M-step
ADAM_STEPPED = ("dynamics_bias", "readout_weights", "readout_bias", "prior_mean")


class PCLatentModel(LatentModel):
    """Dynamical predictive-coding latent model of binned spike counts (the :class:`LatentModel` surface).

    Hyper-parameters: ``n_latents`` D; ``dt``, ``tau`` (ms) the relaxation step (``dt/tau = 1``
    with the default Gauss-Newton preconditioner is a Newton step; ``preconditioner="none"``
    with a small ``dt/tau`` is the plain local gradient flow, much slower); ``inference_steps``
    relaxation steps per training minibatch (warm-started from the last epoch) and
    ``transform_steps`` for latents inferred from scratch (stopping early once converged);
    ``epochs`` (``None``: as many as :data:`UPDATES` = 100 weight updates take; learned state
    ``epochs_`` says how many ran); ``lr`` (initial Adam step, cosine-decayed to 0); ``dynamics_lr``: the dynamics
    weights' step as a fraction of ``lr`` (Adam moves every weight by about its step whatever the
    gradient, and a per-bin change ``delta`` of A's eigenvalues compounds to ``(1 + delta)^T`` over a
    trial: at ``lr`` itself the first steps made the dynamics expand by orders of magnitude within a
    100-bin trial, and where no spikes constrain the latents, as in silent stretches, the Laplace
    variance followed and overflowed the expected rate); ``init``: ``"fa"`` (default) starts readout
    and latents from factor analysis of the smoothed log rates (smoothing s.d. ``init_sigma_ms``;
    deterministic, so the model's seed no longer chooses the basin EM ends in) or ``"random"``
    (small random readout and latents, the seed's choice); ``batch_size`` (trials per weight
    update, in a fresh random order every epoch; at least the training trials: whole-batch EM); ``dynamics_precision`` (inverse variance of the one-bin
    prediction error of unit-variance latents; with ``learn_precision`` only its starting value);
    ``learn_precision`` (default True): every EM step sets the prior and dynamics precisions to their
    closed-form M-step, the inverse posterior-expected error variance
    (:func:`pcsim.temporal.precision_m_step`), so the state noise is the data's, not a setting (a fixed
    300 over-smoothed a linear dynamical system whose state noise has precision ~15: co-bps 0.27
    against GPFA's 0.40; learned, 0.43); ``activation`` ``f`` of the residual dynamics;
    ``learning``: ``"laplace"`` or ``"map"`` weight gradients (module docstring); ``readout``:
    ``"generative"`` predicts rates with the model's own observation layer: the rate
    ``E_q[exp(x C + d)]`` expected under the Laplace posterior ``q`` of the latents (counts per bin;
    the point prediction a Poisson log-likelihood rewards, above ``exp`` at the posterior mean by half
    each neuron's log-rate variance), ``"glm"`` with the shared :class:`PoissonGLM` fitted on latents inferred
    from held-in neurons; ``seed``; ``device``; ``progress``: show a bar of the EM minibatch steps
    (epochs x batches, with the epoch's energy). Learned state: ``network_``
    (:class:`pcsim.temporal.TemporalPCNetwork`), ``energy_`` (mean PC energy per training trial at
    the relaxed latents after each epoch's relaxation, ``(epoch,)``, nats), ``free_energy_`` (the
    same for the Laplace free energy; ``learning="laplace"`` only), ``fit_seconds_``. Model: Rao &
    Ballard 1999; Friston 2008; Millidge et al. 2023.
    """

    _parameter_constraints = {
        "n_latents": [Interval(Integral, 1, None, closed="left")],
        "dt": [Interval(Real, 0, None, closed="neither")],
        "tau": [Interval(Real, 0, None, closed="neither")],
        "inference_steps": [Interval(Integral, 0, None, closed="left")],
        "transform_steps": [Interval(Integral, 1, None, closed="left")],
        "epochs": [Interval(Integral, 1, None, closed="left"), None],
        "lr": [Interval(Real, 0, None, closed="neither")],
        "dynamics_lr": [Interval(Real, 0, 1, closed="right")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "dynamics_precision": [Interval(Real, 0, None, closed="neither")],
        "learn_precision": ["boolean"],
        "activation": [StrOptions(set(ACTIVATIONS))],
        "preconditioner": [StrOptions({"gauss-newton", "none"})],
        "learning": [StrOptions({"laplace", "map"})],
        "readout": [StrOptions({"generative", "glm"})],
        "readout_alpha": [Interval(Real, 0, None, closed="left")],
        "init": [StrOptions({"fa", "random"})],
        "init_sigma_ms": [Interval(Real, 0, None, closed="neither")],
        "seed": [Interval(Integral, 0, None, closed="left")],
        "device": [str],
        "progress": ["boolean"],
    }

    def __init__(
        self,
        n_latents: int = 8,
        *,
        dt: float = 1.0,
        tau: float = 1.0,
        inference_steps: int = 2,
        transform_steps: int = 30,
        epochs: int | None = None,
        lr: float = 0.02,
        dynamics_lr: float = 0.1,
        batch_size: int = 64,
        dynamics_precision: float = 300.0,
        learn_precision: bool = True,
        activation: str = "tanh",
        preconditioner: str = "gauss-newton",
        learning: str = "laplace",
        readout: str = "generative",
        readout_alpha: float = 1e-2,
        init: str = "fa",
        init_sigma_ms: float = 40.0,
        seed: int = 0,
        device: str = "cpu",
        progress: bool = False,
    ):
        self.n_latents = n_latents
        self.dt = dt
        self.tau = tau
        self.inference_steps = inference_steps
        self.transform_steps = transform_steps
        self.epochs = epochs
        self.lr = lr
        self.dynamics_lr = dynamics_lr
        self.batch_size = batch_size
        self.dynamics_precision = dynamics_precision
        self.learn_precision = learn_precision
        self.activation = activation
        self.preconditioner = preconditioner
        self.learning = learning
        self.readout = readout
        self.readout_alpha = readout_alpha
        self.init = init
        self.init_sigma_ms = init_sigma_ms
        self.seed = seed
        self.device = device
        self.progress = progress

    # ------------------------------------------------------------------ helpers
    def _config(self, steps: int, tol: float = 0.0) -> TemporalInferenceConfig:
        return TemporalInferenceConfig(steps=steps, dt=self.dt, tau=self.tau, preconditioner=self.preconditioner,
                                       damping=1e-6, tol=tol, max_growth=1e6)

    def _lr(self, epoch: int) -> float:
        """Adam step size of epoch ``epoch`` (0-based): cosine from ``lr`` to 0 over the epochs."""
        return self.lr * 0.5 * (1.0 + math.cos(math.pi * epoch / self.epochs_))

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.asarray(a, dtype=np.float32), device=self.device)

    # ------------------------------------------------------------------ LatentModel numerics
    def _fit_latents(self, counts: np.ndarray, observed: np.ndarray, heldin: np.ndarray, bin_width: float) -> None:
        """Learn dynamics and readout from training counts ``(trial, time, neuron)`` (counts per bin),
        all neurons visible, unobserved bins masked out of every energy and gradient."""
        y = self._tensor(counts)                                            # (B, T, N)
        mask = None if observed.all() else self._tensor(observed)           # (B, T, N) 0/1
        B, T, N = y.shape
        D = self.n_latents
        gen = torch.Generator().manual_seed(self.seed)
        net = TemporalPCNetwork.init(D, N, activation=self.activation, observation="poisson", seed=self.seed,
                                     dynamics_precision=self.dynamics_precision, learn_precision=self.learn_precision,
                                     device=self.device)
        data = observations(net, y, mask)                                   # checked once; minibatches index it
        if self.init == "fa":
            C0, d0, x0 = _fa_start(counts, observed, D, self.init_sigma_ms / (1e3 * bin_width))
            with torch.no_grad():
                net.readout_weights.copy_(self._tensor(C0)[None])
                net.readout_bias.copy_(self._tensor(d0).reshape(1, 1, N))
                net.prior_mean.copy_(self._tensor(x0[:, 0].mean(0)).reshape(1, 1, D))
            x = self._tensor(x0)[None].contiguous()
        else:
            with torch.no_grad():
                net.readout_bias.copy_(self._tensor(np.log(observed_mean_counts(counts, observed)))
                                       .reshape(1, 1, N))
            x = (0.1 * torch.randn(1, B, T, D, generator=gen)).to(self.device)
        bs = min(int(self.batch_size), B)
        # epochs=None: enough epochs for UPDATES weight updates (20 on the Lorenz benchmark's 320
        # training trials; 50 on 80 trials, where 20 epochs were 40 updates and fell behind GPFA)
        self.epochs_ = self.epochs if self.epochs is not None else math.ceil(UPDATES / math.ceil(B / bs))
        # the dynamics weights A take a smaller step than the rest (dynamics_lr; see the class docstring)
        opt, opt_dynamics = Adam(self._lr(0)), Adam(self.dynamics_lr * self._lr(0))
        cfg = self._config(self.inference_steps)
        energies, free_energies = [], []
        totals = [0.0, 0.0]                                                 # this epoch's energy, free energy

        def batches(epoch):
            """Minibatches of trial indices, in a fresh random order every epoch."""
            order = torch.randperm(B, generator=gen).to(self.device)
            return [order[start:start + bs] for start in range(0, B, bs)]

        def step(idx):
            """One EM step on the trials ``idx``: relax their latents (E), one Adam step on the local rules (M)."""
            with parallel.threads(relaxation_threads(net, len(idx), T)):
                obs = data.trials(idx)
                r = relax(net, x[:, idx], obs, None, cfg)
                x[:, idx] = r.x
                free = 0.0
                if self.learning == "laplace":
                    q = laplace_posterior(net, r.x, obs, None, damping=1e-6)
                    free, grads = free_energy_and_gradients(net, q, obs, None)
                    free = float(free.sum())
                else:
                    grads = parameter_gradients(net, r.x, obs, None)
                grad = dict(zip(net.parameter_names(), grads))
                opt_dynamics.step([net.dynamics_weights], [grad["dynamics_weights"]])
                opt.step([getattr(net, name) for name in ADAM_STEPPED], [grad[name] for name in ADAM_STEPPED])
                if self.learn_precision:                                    # closed form, not a gradient step
                    lp0, lpx = precision_m_step(net, grads, T)
                    net.prior_log_precision.copy_(lp0)
                    net.dynamics_log_precision.copy_(lpx)
            return float(r.energy.sum()), free

        def on_step(s):
            totals[0] += s.output[0]
            totals[1] += s.output[1]

        def on_epoch(epoch, seconds):
            energies.append(totals[0] / B)
            free_energies.append(totals[1] / B)
            totals[:] = [0.0, 0.0]
            _renormalise(net, x)
            opt.lr = self._lr(epoch)                                        # for the next epoch
            opt_dynamics.lr = self.dynamics_lr * opt.lr
            return {"epoch": epoch, "energy": f"{energies[-1]:.4g}"}

        train(step, batches, self.epochs_, on_step=on_step, on_epoch=on_epoch, progress=self.progress,
              desc="PC latent model EM", parameters=net.parameters, energy=lambda out: out[0], lr=self.lr,
              state={"parameters": net.parameters(), "latents": x, "optimizer": opt,
                     "dynamics_optimizer": opt_dynamics, "order": gen,
                     "records": [energies, free_energies, totals]})
        self.network_ = net
        self.latent_mean_ = x.mean((1, 2), keepdim=True)                    # (1, 1, 1, D)
        self.energy_ = np.asarray(energies)
        if self.learning == "laplace":
            self.free_energy_ = np.asarray(free_energies)
        self._heldin = self._tensor(heldin.astype(np.float32))

    def _uses_glm_readout(self) -> bool:
        return self.readout == "glm"

    def _infer(self, counts_heldin: np.ndarray, observed_heldin: np.ndarray) -> "_Inferred":
        """The Laplace posterior of the latents ``(1, trial, time, latent)`` with the observations it was
        inferred from: mean relaxed with only the held-in neurons' observed bins in the energy (the other
        neurons, and unobserved bins, masked), covariance the inverse curvature there."""
        B, T, _ = counts_heldin.shape
        y = torch.zeros(B, T, self.n_neurons_, device=self.device)
        y[..., self._heldin > 0] = self._tensor(counts_heldin)
        mask = torch.zeros(B, T, self.n_neurons_, device=self.device)
        mask[..., self._heldin > 0] = self._tensor(observed_heldin)
        # every trial starts at the training latents' average state, a point the readout knows
        x0 = self.latent_mean_.expand(1, B, T, -1)
        r = relax(self.network_, x0, y, mask, self._config(self.transform_steps, tol=1e-7))
        return _Inferred(laplace_posterior(self.network_, r.x, y, mask, damping=1e-6), y, mask)

    def _latents(self, state: "_Inferred") -> np.ndarray:
        return state.posterior.mean[0].cpu().numpy().astype(np.float64)

    def _own_rates(self, state: "_Inferred") -> np.ndarray:
        """Every neuron's posterior-expected rate ``E_q[exp(x_t C + d)]`` ``(trial, time, neuron)``, counts
        per bin (:func:`pcsim.temporal.expected_rates`)."""
        return expected_rates(self.network_, state.posterior, state.y, state.mask)[0].cpu().numpy().astype(np.float64)

    def _forecast(self, state: "_Inferred", n_forward: int) -> np.ndarray:
        """Rates ``(trial, n_forward, neuron)`` of the bins after the window: from the last relaxed
        latent the learned dynamics run on, ``x_{T+k} = g(x_{T+k-1})``, and every neuron's rate is
        ``exp(x C + d)`` there (the forward prediction that fp-bps scores). Not the rate expected
        under the posterior of the extended window, whose variance grows by the learned state noise
        each bin: on the Lorenz benchmark that lowered fp-bps from 0.667 to 0.651."""
        z, steps = state.posterior.mean[:, :, -1], []                          # (1, B, D)
        for _ in range(n_forward):
            z = self.network_.predict_next(z)
            steps.append(z)
        eta = torch.stack(steps, 2)[0] @ self.network_.readout_weights[0] + self.network_.readout_bias[0]
        return eta.clamp(max=50.0).exp().cpu().numpy().astype(np.float64)


class _Inferred(NamedTuple):
    """An inference of :class:`PCLatentModel`: the Laplace posterior over ``(1, trial, time, latent)``
    and the observations ``(trial, time, neuron)`` and mask it was inferred from (held-out neurons masked)."""

    posterior: LaplacePosterior
    y: torch.Tensor
    mask: torch.Tensor


@torch.no_grad()
def _renormalise(net: TemporalPCNetwork, x: torch.Tensor) -> None:
    """Rescale latents ``x: (E, B, T, D)`` by one factor to unit mean variance and the weights to match.

    ``x' = x / s``: ``C' = s C``, ``m_0' = m_0 / s``, ``b' = b / s`` (``A`` unchanged) leave every
    prediction unchanged for linear dynamics (for a non-linear ``f`` approximately; ``s`` tends
    to 1 as learning converges). One factor for all dimensions, not one each: dimensions the data
    do not support may shrink instead of being held at unit variance.
    """
    s = x.reshape(-1, x.shape[-1]).var(0).mean().sqrt().clamp_min(1e-6)
    x.div_(s)
    net.readout_weights.mul_(s)
    net.prior_mean.div_(s)
    net.dynamics_bias.div_(s)
    if net.learn_precision:                                 # errors shrink by s: precisions grow by s^2
        net.prior_log_precision.add_(2.0 * s.log())
        net.dynamics_log_precision.add_(2.0 * s.log())


def _fa_start(counts: np.ndarray, observed: np.ndarray, n_latents: int, sigma_bins: float):
    """A data-driven starting point: factor analysis of smoothed log rates (the initialisation of
    GPFA, Yu et al. 2009, on the log scale of the exponential link).

    Counts ``(trial, time, neuron)`` are smoothed over time (Gaussian, ``sigma_bins``), floored at a
    tenth of each neuron's mean count (a silent stretch gives a finite log rate ~2.3 below the
    neuron's mean, not ``log 0``) and logged; FA with ``n_latents`` factors gives loadings and
    posterior-mean factors, scaled to unit mean variance. Returns readout weights ``C`` ``(D, N)``,
    bias ``d`` ``(N,)`` (log counts per bin) and latents ``(trial, time, D)``. Deterministic: the
    model's seed no longer picks the basin EM converges to.
    """
    from analysis.models.fa import fa_posterior_mean, factor_analysis
    from analysis.models.smoothing import smooth_counts

    mean = observed_mean_counts(counts, observed)
    smooth = smooth_counts(counts, max(sigma_bins, 0.5), None if observed.all() else observed)
    log_rate = np.log(np.maximum(np.where(np.isnan(smooth), mean, smooth), 0.1 * mean))
    flat = log_rate.reshape(-1, log_rate.shape[-1])
    params = factor_analysis(flat, n_latents)
    z = fa_posterior_mean(flat, params)
    scale = np.sqrt(z.var(0).mean()) or 1.0
    z = z / scale
    C = params.C.T * scale                                  # (D, N)
    # the bias makes the mean predicted rate the mean count (exp of a spread of log rates is larger)
    d = np.log(mean) - np.log(np.exp(z @ C).mean(0))
    return C, d, z.reshape(counts.shape[0], counts.shape[1], n_latents)
