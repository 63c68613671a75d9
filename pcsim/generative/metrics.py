"""The metrics every generative model is scored by, the same for each on the same test split.

Each takes a fitted :class:`~pcsim.generative.base.GenerativeModel` (and uses only its
shared surface: ``encode``, ``decode``, ``log_joint``, ``log_likelihood``, ``elbo``) or plain
tensors, so PC networks, VAEs, iVAEs, flows and Helmholtz machines are measured by one code:

- :func:`likelihood_scores`: test NLL in nats per example with its Monte Carlo standard error, and the ELBO;
- :func:`amortisation_gap`: the amortised ELBO against the ELBO of the same Gaussian family optimised per example;
- :func:`iterative_elbo`: PC-style iterative inference on any model's decoder (Euler steps down
  ``-log p(x, z)``), the ELBO of the Laplace posterior after each of ``T`` steps;
- :func:`reconstruction_error`, :func:`pattern_completion` (with :func:`half_mask`);
- :func:`frechet_distance` and :func:`sample_quality` in the features of a :func:`feature_classifier`;
- :func:`probe_accuracy` (linear probe of the latents), :func:`mean_correlation` (MCC with true sources);
- :func:`collapse_diagnostics`: KL per latent dimension and the active units.

Bad input is refused at the boundary with a :class:`~pcsim.errors.ConfigError` (an argument)
or :class:`~pcsim.errors.DataError` (an array), naming it.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Literal, NamedTuple, Sequence

import numpy as np
import torch

from pcsim import parallel, relaxation
from pcsim.arguments import check_number
from pcsim.errors import ConfigError, DataError, InferenceDivergenceError
from pcsim.optim import Adam

from .base import GenerativeModel, Posterior, as_aux, as_data
from .pc import LaplacePosterior

Tensor = torch.Tensor

__all__ = ["AmortisationGap", "Collapse", "Completion", "FeatureClassifier", "IterativeELBO", "LikelihoodScores",
           "SampleQuality", "SourceMatch", "amortisation_gap", "collapse_diagnostics", "feature_classifier",
           "frechet_distance", "half_mask", "iterative_elbo", "likelihood_scores", "mean_correlation",
           "pattern_completion", "probe_accuracy", "reconstruction_error", "sample_quality"]


def _model(model) -> GenerativeModel:
    if not isinstance(model, GenerativeModel):
        raise ConfigError(f"model must be a fitted GenerativeModel, got {type(model).__name__}")
    model._check_fitted()
    return model


def _labels(labels, n: int, name: str) -> np.ndarray:
    a = as_aux(labels, n, None, name)
    if a is None:
        raise DataError(f"{name} must be ({n},) integer labels, got None")
    if bool((a < 0).any()):
        i = int(torch.nonzero(a < 0)[0, 0])
        raise DataError(f"{name}[{i}] = {int(a[i])} is out of range: labels must be >= 0")
    return a.numpy()


# --------------------------------------------------------------------------- likelihoods
@dataclass(frozen=True)
class LikelihoodScores:
    """Test-set likelihood scores in nats per example: ``nll`` (mean of ``-log p(x)``),
    ``nll_stderr`` (its Monte Carlo standard error; 0 for an exact likelihood), ``elbo`` (mean
    evidence lower bound), ``samples`` (importance samples per example) and ``n`` (examples)."""

    nll: float
    nll_stderr: float
    elbo: float
    samples: int
    n: int


def likelihood_scores(model, x, aux=None, *, samples: int = 100, elbo_samples: int = 1, seed: int = 0,
                      log_jacobian: float = 0.0) -> LikelihoodScores:
    """Test NLL and ELBO of ``model`` on ``x`` ``(N, D)`` (``aux`` ``(N,)`` or None), nats per example.

    The NLL is ``-mean_i log p(x_i)`` from ``model.log_likelihood`` with ``samples`` importance
    samples (exact for flows), with the standard error of that mean due to the estimator's
    sampling (:attr:`~pcsim.generative.base.LogLikelihood.stderr_of_mean`); the IW estimate is
    biased low by ``O(1/K)``, so the NLL is an upper bound in expectation (Burda et al. 2016).
    The ELBO is ``model.elbo`` with ``elbo_samples`` draws, averaged. ``log_jacobian`` (nats per
    example) is added to both log-densities, e.g. :attr:`GenerativeData.log_jacobian
    <pcsim.generative.data.GenerativeData.log_jacobian>` ``= -D log 17`` to turn densities of
    dequantised digits into (bounds on) log-probabilities of the discrete images."""
    m = _model(model)
    samples = check_number("samples", samples, integer=True, ge=1)
    elbo_samples = check_number("elbo_samples", elbo_samples, integer=True, ge=1)
    seed = check_number("seed", seed, integer=True, ge=0)
    log_jacobian = check_number("log_jacobian", log_jacobian)
    ll = m.log_likelihood(x, aux, samples=samples, seed=seed)
    elbo = m.elbo(x, aux, samples=elbo_samples, seed=seed)
    return LikelihoodScores(-(ll.mean + log_jacobian), ll.stderr_of_mean, float(elbo.mean()) + log_jacobian,
                            samples, int(ll.per_example.numel()))


# --------------------------------------------------------------------------- gradient ascent on latents
def _ascend(objective: Callable[[list[Tensor], int], Tensor], params: list[Tensor], steps: int, lr: float,
            what: str, progress: bool, work: tuple[int, int]) -> list[Tensor]:
    """``steps`` Adam steps of gradient ascent on ``objective(params, t)`` ``(N,)`` (summed: the
    examples are independent, and Adam's per-coordinate scaling keeps them so), the step size
    decayed from ``lr`` to 0 on a cosine (Loshchilov & Hutter 2017), so that the run ends at the
    optimum rather than in Adam's ``lr``-sized jitter around it; autograd of the objective
    w.r.t. ``params`` only (``torch.autograd.grad``: a model's own ``.grad`` is never touched).
    ``work`` ``(rows, width)`` sizes the thread count (:func:`pcsim.parallel.threads_for`).
    Raises :class:`InferenceDivergenceError` (layer 0: the latents) at the first step whose
    objective is not finite."""
    from tqdm.auto import tqdm

    opt = Adam(lr)
    params = [p.detach().clone() for p in params]
    with parallel.threads(parallel.threads_for((params[0].shape[-1], work[1]), work[0])):
        for t in tqdm(range(steps), desc=what, disable=not progress, leave=False, mininterval=0.5):
            leaves = [p.clone().requires_grad_() for p in params]
            value = objective(leaves, t)
            if not value.requires_grad:
                raise ConfigError(f"{what}: the model's log_joint is not differentiable in z (computed under no_grad?)")
            if not bool(torch.isfinite(value).all()):
                i = int(torch.nonzero(~torch.isfinite(value))[0, 0])
                raise InferenceDivergenceError(
                    f"{what} diverged: the objective of example {i} is {float(value[i])} at step {t}; "
                    f"likely cause: lr (now {lr:g}) is too large", t, 0)
            grads = torch.autograd.grad(-value.sum(), leaves)
            opt.lr = lr * 0.5 * (1.0 + math.cos(math.pi * t / steps))
            opt.step(params, [g.detach() for g in grads])
    return params


@dataclass(frozen=True)
class AmortisationGap:
    """The amortisation gap (Cremer, Li & Duvenaud 2018): ``amortised`` and ``optimised`` ELBO
    per example ``(N,)`` (nats), ``gap`` the mean of their difference (nats per example, >= 0 up
    to the optimiser's error) and ``stderr`` its standard error over the examples."""

    amortised: Tensor
    optimised: Tensor
    gap: float
    stderr: float


def amortisation_gap(model, x, steps: int = 200, lr: float = 0.05, samples: int = 8, seed: int = 0, *, aux=None,
                     eval_samples: int = 256, progress: bool = False) -> AmortisationGap:
    """The ELBO of ``model``'s encoder against the ELBO after per-example optimisation of the same
    diagonal-Gaussian family (Cremer, Li & Duvenaud 2018), on ``x`` ``(N, D)``.

    Each example's ``q = N(mean, exp(log_var))`` starts at ``model.encode(x, aux)`` and its
    ``mean`` and ``log_var`` ``(N, d)`` climb the ELBO for ``steps`` Adam steps of size ``lr``,
    with ``samples`` reparameterised draws per step (fresh, from ``seed``) and autograd through
    ``model.log_joint``. The gradient is the "sticking the landing" estimator (Roeder, Wu &
    Duvenaud 2017: ``log q`` is evaluated with its parameters held fixed), which is unbiased and
    exactly zero at the true posterior, so an encoder that is already exact stays where it is.
    The step size decays to 0 on a cosine; each example then keeps the better of its start and
    its end (judged on ``eval_samples`` draws of their own), since the family's optimum is at
    least both. Both ELBOs are then estimated with the same ``eval_samples`` fresh draws of the
    standard-normal noise (common random numbers), so the gap's sampling error is small. A model with an exact
    likelihood (a flow: its ELBO is ``log p(x)``) has no gap: both are its log-likelihood."""
    m = _model(model)
    steps = check_number("steps", steps, integer=True, ge=0)
    lr = check_number("lr", lr, gt=0)
    samples = check_number("samples", samples, integer=True, ge=1)
    eval_samples = check_number("eval_samples", eval_samples, integer=True, ge=1)
    seed = check_number("seed", seed, integer=True, ge=0)
    x, a = m._inputs(x, aux)
    if m.exact_likelihood:
        ll = m.log_likelihood(x, a, seed=seed).per_example
        return AmortisationGap(ll, ll, 0.0, 0.0)
    with torch.no_grad():
        q0 = m.encode(x, a)
    gen = torch.Generator(device=x.device).manual_seed(seed)

    def elbo(mean: Tensor, log_var: Tensor, eps: Tensor) -> Tensor:
        z = mean + torch.exp(0.5 * log_var) * eps
        fixed = Posterior(mean.detach(), log_var.detach())  # sticking the landing
        return (m.log_joint(x, z, a) - fixed.log_prob(z)).mean(0)

    def objective(p: list[Tensor], t: int) -> Tensor:
        eps = torch.randn((samples, *p[0].shape), generator=gen, dtype=p[0].dtype, device=p[0].device)
        return elbo(p[0], p[1], eps)

    mean, log_var = _ascend(objective, [q0.mean, q0.log_var], steps, lr, "amortisation gap", progress,
                            (samples * x.shape[0], x.shape[1]))

    def noise(offset: int) -> Tensor:
        g = torch.Generator(device=x.device).manual_seed(seed + offset)
        return torch.randn((eval_samples, *q0.mean.shape), generator=g, dtype=q0.mean.dtype, device=q0.mean.device)

    with torch.no_grad():
        # the optimum of the family is at least the better of the start and the end: choose per
        # example on draws independent of those that score the choice
        select = noise(2)
        better = (elbo(mean, log_var, select) > elbo(q0.mean, q0.log_var, select))[:, None]
        mean, log_var = torch.where(better, mean, q0.mean), torch.where(better, log_var, q0.log_var)
        eps = noise(1)
        amortised, optimised = elbo(q0.mean, q0.log_var, eps), elbo(mean, log_var, eps)
    diff = optimised - amortised
    stderr = float(diff.std() / math.sqrt(diff.numel())) if diff.numel() > 1 else 0.0
    return AmortisationGap(amortised, optimised, float(diff.mean()), stderr)


# --------------------------------------------------------------------------- PC's inference on any decoder
class _JointDescent(NamedTuple):
    """The carry of :class:`_LatentRelaxation`: latents ``z`` ``(N, d)``, the energy
    ``-log p(x, z)`` ``(N,)`` and its gradient ``(N, d)`` at ``z``."""

    z: Tensor
    energy: Tensor
    grad: Tensor


@dataclass
class _LatentRelaxation:
    """PC's inference as a relaxing system (:mod:`pcsim.relaxation`) on any model's joint: Euler
    steps ``z <- z - eta dE/dz`` of the gradient flow ``tau dz/dt = -dE/dz`` on the energy
    ``E(z) = -log p(x, z)`` (``model.log_joint``, its gradient by autograd), ``x`` clamped.
    On a VAE's decoder the hidden layers are deterministic (the VAE's model), so ``z`` is the top
    latent alone, unlike :class:`~pcsim.generative.pc.PCGenerative`'s hierarchical Gaussian."""

    model: GenerativeModel
    x: Tensor
    aux: Tensor | None
    eta: float
    max_growth: float = 10.0

    def evaluate(self, z: Tensor) -> _JointDescent:
        z = z.detach().requires_grad_()
        energy = -self.model.log_joint(self.x, z[None], self.aux)[0]
        if not energy.requires_grad:
            raise ConfigError("iterative_elbo: the model's log_joint is not differentiable in z (computed under no_grad?)")
        (grad,) = torch.autograd.grad(energy.sum(), z)
        return _JointDescent(z.detach(), energy.detach(), grad)

    def step(self, carry: _JointDescent) -> _JointDescent:
        return self.evaluate(carry.z - self.eta * carry.grad)

    def energies(self, carry: _JointDescent) -> Tensor:
        return carry.energy

    def totals(self, energies: Tensor) -> Tensor:
        return energies.sum(-1)

    def diverged(self, t: int, energies: Tensor, start: Tensor) -> InferenceDivergenceError:
        finite = torch.isfinite(energies)
        if not bool(finite.all()):
            what = f"-log p(x, z) of example {int(torch.nonzero(~finite)[0, 0])} became NaN/Inf at step {t}"
        else:
            what = relaxation.growth_what(float(start.sum()), float(energies.sum()), t, self.max_growth)
        return InferenceDivergenceError(relaxation.divergence_message(what, relaxation.step_cause(self.eta)), t, 0)

    def observe(self, carry: _JointDescent, energies: Tensor) -> dict[str, Tensor]:
        return {"energy": energies, "z": carry.z}


def _laplace_at(model: GenerativeModel, x: Tensor, aux: Tensor | None, z: Tensor, floor: float) -> LaplacePosterior:
    """The Laplace Gaussian at ``z`` ``(N, d)``: precision the Hessian of ``-log p(x, z)`` w.r.t. ``z``
    (autograd, per example: the examples are independent), its eigenvalues raised to at least
    ``floor`` so that it is a precision also away from the mode (any Gaussian gives a valid ELBO)."""
    z = z.detach().requires_grad_()
    (g,) = torch.autograd.grad(-model.log_joint(x, z[None], aux)[0].sum(), z, create_graph=True)
    rows = [torch.autograd.grad(g[:, j].sum(), z, retain_graph=True)[0] for j in range(z.shape[1])]
    H = torch.stack(rows, 1).detach()                                         # (N, d, d)
    vals, vecs = torch.linalg.eigh(0.5 * (H + H.transpose(1, 2)))
    H = (vecs * vals.clamp_min(floor)[:, None, :]) @ vecs.transpose(1, 2)
    chol = torch.linalg.cholesky(H)
    var = torch.diagonal(torch.cholesky_inverse(chol), dim1=-2, dim2=-1)
    return LaplacePosterior(z.detach(), var.log(), chol)


@dataclass(frozen=True)
class IterativeELBO:
    """:func:`iterative_elbo`'s result: ``steps`` ``(S,)`` (the ``T`` asked for, ascending),
    ``elbo`` ``(S, N)`` (nats) of the Laplace posterior after each ``T``, ``amortised`` ``(N,)``
    the ELBO of the model's own encoder on the same noise, and ``energy`` ``(S, N)`` the
    ``-log p(x, z)`` at the relaxed means."""

    steps: np.ndarray
    elbo: Tensor
    amortised: Tensor
    energy: Tensor


def iterative_elbo(model, x, steps: Sequence[int] = (0, 1, 2, 5, 10, 20, 50, 100), step_size: float = 0.01, *,
                   start: Literal["amortised", "prior"] = "amortised", posterior: Literal["laplace", "encoder"] = "laplace",
                   aux=None, samples: int = 64, seed: int = 0, floor: float = 1e-3,
                   max_growth: float = 10.0) -> IterativeELBO:
    """Predictive coding's iterative inference on ``model``'s own joint, scored by the ELBO per ``T``.

    The latents of ``x`` ``(N, D)`` start at ``model.encode(x, aux).mean`` (``start="amortised"``:
    hybrid PC's start, Tschantz et al. 2023) or at ``0`` (``"prior"``: the mean of a standard-normal
    prior, plain PC's) and relax by ``max(steps)`` Euler steps of size ``step_size`` (``dt/tau``)
    down ``-log p(x, z)`` (:class:`_LatentRelaxation`, driven by :func:`pcsim.relaxation.run`, the
    one relaxation loop: a blow-up past ``max_growth`` is an :class:`InferenceDivergenceError`
    naming the step). After each ``T`` of ``steps`` the posterior is the Laplace Gaussian at the
    current latents (``posterior="laplace"``, :func:`_laplace_at`, eigenvalues floored at ``floor``;
    a poor Gaussian away from the mode, e.g. at ``T = 0``) or the encoder's own diagonal variance
    around them (``"encoder"``: at ``T = 0`` from the encoder's mean, exactly the encoder) and its ELBO is
    estimated with ``samples`` draws of the same standard-normal noise at every ``T`` (common
    random numbers, ``seed``), as is the encoder's own (amortised) ELBO beside it. On a VAE this
    is the same-decoder comparison of Cremer, Li & Duvenaud (2018): the iterative ELBO at large
    ``T`` minus the amortised one is the amortisation gap left by the encoder's mean and
    variance, measured with PC's inference rather than an optimiser."""
    m = _model(model)
    if m.exact_likelihood:
        raise ConfigError(f"iterative_elbo needs a latent-variable model; {type(m).__name__} has an exact likelihood")
    steps = np.array(sorted({check_number(f"steps[{i}]", s, integer=True, ge=0) for i, s in enumerate(steps)}))
    if steps.size == 0:
        raise ConfigError("steps must name at least one number of inference steps T, got ()")
    step_size = check_number("step_size", step_size, gt=0)
    samples = check_number("samples", samples, integer=True, ge=1)
    seed = check_number("seed", seed, integer=True, ge=0)
    floor = check_number("floor", floor, gt=0)
    max_growth = check_number("max_growth", max_growth, gt=1)
    if start not in ("amortised", "prior"):
        raise ConfigError(f"start must be 'amortised' or 'prior', got {start!r}")
    if posterior not in ("laplace", "encoder"):
        raise ConfigError(f"posterior must be 'laplace' or 'encoder', got {posterior!r}")
    x, a = m._inputs(x, aux)
    with torch.no_grad():
        q0 = m.encode(x, a)
    z0 = q0.mean if start == "amortised" else torch.zeros_like(q0.mean)
    # small layers lose to oversubscription on a shared machine (pcsim.parallel): one team size for all of it
    with parallel.threads(parallel.threads_for((z0.shape[-1], x.shape[1]), samples * x.shape[0])):
        system = _LatentRelaxation(m, x, a, step_size, max_growth)
        means: dict[int, Tensor] = {}
        wanted = set(steps.tolist())

        def keep(t: int, carry: _JointDescent) -> None:  # called before step t moves z: z after t steps
            if t in wanted:
                means[t] = carry.z

        out = relaxation.run(system, system.evaluate(z0), int(steps[-1]), max_growth=max_growth, on_step=keep)
        means[int(steps[-1])] = out.carry.z

        def elbo(q: Posterior) -> Tensor:
            z = q.sample(samples, torch.Generator(device=x.device).manual_seed(seed))
            with torch.no_grad():
                return (m.log_joint(x, z, a) - q.log_prob(z)).mean(0)

        rows, energy = [], []
        for t in steps.tolist():
            q = _laplace_at(m, x, a, means[t], floor) if posterior == "laplace" else Posterior(means[t], q0.log_var)
            rows.append(elbo(q))
            with torch.no_grad():
                energy.append(-m.log_joint(x, means[t][None], a)[0])
        return IterativeELBO(steps, torch.stack(rows), elbo(q0), torch.stack(energy))


# --------------------------------------------------------------------------- reconstruction and completion
def reconstruction_error(model, x, aux=None) -> float:
    """Mean squared error per feature of ``model.decode(model.encode(x, aux).mean)`` against ``x``
    ``(N, D)`` (in the data's units squared; pixels in ``[0, 1]`` for the images)."""
    m = _model(model)
    x, a = m._inputs(x, aux)
    with torch.no_grad():
        return float(((m.decode(m.encode(x, a).mean) - x) ** 2).mean())


def half_mask(n: int, width: int, half: Literal["bottom", "top", "left", "right", "random"] = "bottom",
              image_shape: Sequence[int] | None = None, seed: int = 0) -> Tensor:
    """The ``observed`` mask ``(n, width)`` (True = observed) that hides half of each example:
    for images of ``image_shape`` ``(H, W)`` (``H * W = width``) the ``bottom``/``top`` rows or
    ``left``/``right`` columns; for sequences (``image_shape`` None) ``bottom``/``right`` hide the
    second half of the features and ``top``/``left`` the first; ``random`` hides ``width // 2``
    features chosen per example from ``seed``."""
    n = check_number("n", n, integer=True, ge=1)
    width = check_number("width", width, integer=True, ge=2)
    if half == "random":
        g = torch.Generator().manual_seed(check_number("seed", seed, integer=True, ge=0))
        order = torch.argsort(torch.rand((n, width), generator=g), dim=1)
        return order >= width // 2
    if half not in ("bottom", "top", "left", "right"):
        raise ConfigError(f"half must be 'bottom', 'top', 'left', 'right' or 'random', got {half!r}")
    if image_shape is None:
        idx = torch.arange(width)
        hidden = idx >= width // 2 if half in ("bottom", "right") else idx < width // 2
    else:
        if len(image_shape) != 2 or image_shape[0] * image_shape[1] != width:
            raise ConfigError(f"image_shape must be (H, W) with H * W = width = {width}, got {tuple(image_shape)!r}")
        h, w = int(image_shape[0]), int(image_shape[1])
        r, c = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        hidden = {"bottom": r >= h // 2, "top": r < h // 2, "right": c >= w // 2, "left": c < w // 2}[half].reshape(-1)
    return (~hidden).expand(n, width).clone()


@dataclass(frozen=True)
class Completion:
    """Pattern completion: ``completed`` ``(N, D)`` (observed features kept, hidden ones filled
    in), ``error`` the mean squared error over the hidden features only, ``per_example`` ``(N,)``."""

    completed: Tensor
    error: float
    per_example: Tensor


def pattern_completion(model, x, observed, aux=None, *, steps: int = 200, lr: float = 0.05,
                       progress: bool = False) -> Completion:
    """Fill in the features of ``x`` ``(N, D)`` where ``observed`` ``(N, D)`` (bool) is False and
    score them against the truth (mean squared error over the hidden features).

    The hidden features are first replaced by the mean of the observed values of their column
    (so nothing hidden reaches the model). A model with its own ``complete(x, observed)``
    (returning ``(N, D)``) is used as is. Otherwise, model-agnostically, ``z`` ``(N, d)`` starts at
    ``model.encode`` of that filled-in ``x`` and climbs ``log p(x_obs, z)`` for ``steps`` Adam steps
    of size ``lr`` (MAP completion): the hidden features are imputed with the current
    ``model.decode(z)`` held fixed, so their terms of ``model.log_joint`` have zero gradient for
    any observation model whose ``log p(x | mean)`` is stationary at ``x = mean`` (Gaussian,
    Bernoulli) and the ascent is that of the observed half alone (an EM-style imputation).
    The completion is ``decode(z)`` on the hidden features. A model with an exact likelihood and
    no ``complete`` (a flow) has no latent to climb: the hidden features themselves climb
    ``log p(x)`` from the filled-in values (the MAP completion ``argmax p(x_hidden | x_obs)``)."""
    m = _model(model)
    steps = check_number("steps", steps, integer=True, ge=0)
    lr = check_number("lr", lr, gt=0)
    x, a = m._inputs(x, aux)
    obs = torch.as_tensor(np.asarray(observed) if not isinstance(observed, Tensor) else observed)
    if obs.shape != x.shape:
        raise DataError(f"observed must have the shape of x {tuple(x.shape)}, got {tuple(obs.shape)}")
    if obs.dtype != torch.bool:
        raise DataError(f"observed must be a boolean mask (True = observed), got dtype {obs.dtype}")
    obs = obs.to(x.device)
    if bool(obs.all()):
        raise DataError("observed hides no feature: there is nothing to complete")
    counts = obs.sum(0)
    col = torch.where(counts > 0, (x * obs).sum(0) / counts.clamp_min(1), (x * obs).sum() / obs.sum().clamp_min(1))
    filled = torch.where(obs, x, col.expand_as(x))
    if hasattr(m, "complete"):
        with torch.no_grad():
            out = as_data(m.complete(filled, obs), f"{type(m).__name__}.complete output", width=x.shape[1])
        completed = torch.where(obs, x, out)
    elif m.exact_likelihood:
        # no latent to climb (a flow: log_joint is log p(x)): climb log p(x) in the hidden features
        # themselves, the MAP completion x_hidden = argmax p(x_hidden | x_obs)
        dummy = torch.zeros((1, *x.shape), dtype=x.dtype, device=x.device)

        def objective(p: list[Tensor], t: int) -> Tensor:
            return m.log_joint(torch.where(obs, x, p[0]), dummy, a)[0]

        (h,) = _ascend(objective, [filled], steps, lr, "pattern completion", progress, tuple(x.shape))
        completed = torch.where(obs, x, h)
    else:
        with torch.no_grad():
            z0 = m.encode(filled, a).mean

        def objective(p: list[Tensor], t: int) -> Tensor:
            imputed = torch.where(obs, x, m.decode(p[0]).detach())
            return m.log_joint(imputed, p[0][None], a)[0]

        (z,) = _ascend(objective, [z0], steps, lr, "pattern completion", progress, tuple(x.shape))
        with torch.no_grad():
            completed = torch.where(obs, x, m.decode(z))
    hidden = ~obs
    sq = (completed - x) ** 2 * hidden
    per_example = sq.sum(1) / hidden.sum(1).clamp_min(1)
    return Completion(completed, float(sq.sum() / hidden.sum()), per_example)


# --------------------------------------------------------------------------- sample quality
def frechet_distance(a, b) -> float:
    """The Fréchet (2-Wasserstein) distance between Gaussians fitted to ``a`` ``(N, F)`` and ``b``
    ``(M, F)`` (Dowson & Landau 1982; the FID of Heusel et al. 2017 when the features are a
    classifier's): ``|mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2))`` with unbiased sample
    covariances, the square root by :func:`scipy.linalg.sqrtm` (its real part; a ``1e-6 I`` ridge
    is added when that root is not finite or does not square back to ``S_a S_b``). In the
    features' units squared."""
    from scipy.linalg import LinAlgWarning, sqrtm

    fa = as_data(a, "a").numpy()
    fb = as_data(b, "b", width=None).numpy()
    if fa.shape[1] != fb.shape[1]:
        raise DataError(f"a and b must have the same number of features, got {fa.shape[1]} and {fb.shape[1]}")
    for name, f in (("a", fa), ("b", fb)):
        if f.shape[0] < 2:
            raise DataError(f"{name} needs at least 2 examples to fit a covariance, got {f.shape[0]}")
    mu_a, mu_b = fa.mean(0), fb.mean(0)
    s_a, s_b = np.atleast_2d(np.cov(fa, rowvar=False)), np.atleast_2d(np.cov(fb, rowvar=False))
    product = s_a @ s_b
    with warnings.catch_warnings():
        # dead ReLU units make the covariances singular; sqrtm warns but stays accurate (checked here)
        warnings.simplefilter("ignore", LinAlgWarning)
        root = sqrtm(product)
        if not np.isfinite(root).all() or np.abs(root @ root - product).max() > 1e-6 * max(np.abs(product).max(), 1e-300):
            ridge = 1e-6 * np.eye(s_a.shape[0])
            root = sqrtm((s_a + ridge) @ (s_b + ridge))
    root = np.real(root)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a) + np.trace(s_b) - 2.0 * np.trace(root))


@dataclass(frozen=True)
class FeatureClassifier:
    """A fixed classifier of real data whose penultimate layer gives the features of
    :func:`sample_quality`: ``scaler`` (a :class:`sklearn.preprocessing.StandardScaler` fitted on
    the training data), ``mlp`` (a fitted :class:`sklearn.neural_network.MLPClassifier` on the
    standardised data), ``train_accuracy``. :meth:`features` ``(N, D) -> (N, H)`` (the last
    hidden layer's activations), :meth:`probabilities` ``(N, D) -> (N, n_classes)``."""

    scaler: object
    mlp: object
    train_accuracy: float

    def _input(self, x) -> np.ndarray:
        return self.scaler.transform(as_data(x, "x", width=self.mlp.n_features_in_).numpy())

    def features(self, x) -> np.ndarray:
        """The last hidden layer's activations ``(N, H)`` for ``x`` ``(N, D)``."""
        from sklearn.neural_network._base import ACTIVATIONS

        h = self._input(x)
        for w, b in zip(self.mlp.coefs_[:-1], self.mlp.intercepts_[:-1]):
            h = h @ w + b
            ACTIVATIONS[self.mlp.activation](h)  # in place, as in MLPClassifier's own forward pass
        return h

    def probabilities(self, x) -> np.ndarray:
        """Class probabilities ``(N, n_classes)`` for ``x`` ``(N, D)``."""
        return self.mlp.predict_proba(self._input(x))


def feature_classifier(x, labels, hidden: Sequence[int] = (64,), seed: int = 0, max_iter: int = 300) -> FeatureClassifier:
    """Train the fixed classifier of :func:`sample_quality` on real training data ``x`` ``(N, D)``
    with class ``labels`` ``(N,)``: the features standardised with the training statistics, then
    an :class:`~sklearn.neural_network.MLPClassifier` with ReLU ``hidden`` layers, Adam,
    ``max_iter`` epochs, seeded by ``seed`` (the classifier-based FID of
    generative-model benchmarks on MNIST-like data, in place of Inception features)."""
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import StandardScaler

    t = as_data(x, "x").numpy()
    lab = _labels(labels, t.shape[0], "labels")
    hidden = tuple(check_number(f"hidden[{i}]", h, integer=True, ge=1) for i, h in enumerate(hidden))
    if not hidden:
        raise ConfigError("hidden must name at least one hidden layer (its activations are the features), got ()")
    mlp = MLPClassifier(hidden_layer_sizes=hidden, random_state=check_number("seed", seed, integer=True, ge=0),
                        max_iter=check_number("max_iter", max_iter, integer=True, ge=1))
    scaler = StandardScaler().fit(t)
    t = scaler.transform(t)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(t, lab)
    return FeatureClassifier(scaler, mlp, float(mlp.score(t, lab)))


@dataclass(frozen=True)
class SampleQuality:
    """``frechet``: Fréchet distance between real and generated samples in the classifier's
    features; ``label_entropy``: mean entropy of the classifier's label distribution per sample
    (nats; low = samples the classifier finds clear-cut); ``marginal_entropy``: entropy of the
    mean label distribution (nats; ``log n_classes`` = every class equally often)."""

    frechet: float
    label_entropy: float
    marginal_entropy: float


def sample_quality(classifier: FeatureClassifier, real, generated) -> SampleQuality:
    """Score ``generated`` samples ``(M, D)`` against ``real`` data ``(N, D)`` (the test split) in
    the features of ``classifier`` (:func:`feature_classifier`, trained on the real training
    split): their :func:`frechet_distance` and the classifier's label entropies (nats)."""
    if not isinstance(classifier, FeatureClassifier):
        raise ConfigError(f"classifier must be a FeatureClassifier (see feature_classifier), got {type(classifier).__name__}")
    real = as_data(real, "real")
    generated = as_data(generated, "generated")
    fd = frechet_distance(classifier.features(real), classifier.features(generated))
    p = np.clip(classifier.probabilities(generated), 1e-300, 1.0)
    per = -(p * np.log(p)).sum(1)
    pm = p.mean(0)
    return SampleQuality(fd, float(per.mean()), float(-(pm * np.log(pm)).sum()))


# --------------------------------------------------------------------------- latents
def probe_accuracy(train, labels_train, test, labels_test, *, model=None, aux_train=None, aux_test=None,
                   seed: int = 0) -> float:
    """Test accuracy (fraction correct) of a linear probe of the latents: a standardised
    :class:`~sklearn.linear_model.LogisticRegression` trained on ``train`` ``(N, d)`` with
    ``labels_train`` ``(N,)`` and scored on ``test`` with ``labels_test``. With ``model`` the
    arrays are data ``(N, D)``, encoded by ``model.encode(x, aux).mean``; without, they are
    latents already (or :class:`~pcsim.generative.base.Posterior`, whose means are used)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    zs = []
    for name, arr, aux in (("train", train, aux_train), ("test", test, aux_test)):
        if model is not None:
            m = _model(model)
            xa, a = m._inputs(as_data(arr, name), aux)
            with torch.no_grad():
                arr = m.encode(xa, a).mean
        elif isinstance(arr, Posterior):
            arr = arr.mean
        zs.append(as_data(arr.detach() if isinstance(arr, Tensor) else arr, name).numpy())
    if zs[0].shape[1] != zs[1].shape[1]:
        raise DataError(f"train and test latents must have the same width, got {zs[0].shape[1]} and {zs[1].shape[1]}")
    ltr = _labels(labels_train, zs[0].shape[0], "labels_train")
    lte = _labels(labels_test, zs[1].shape[0], "labels_test")
    if len(np.unique(ltr)) < 2:
        raise DataError(f"labels_train must hold at least two classes, got only {np.unique(ltr).tolist()}")
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, random_state=check_number(
        "seed", seed, integer=True, ge=0)))
    probe.fit(zs[0], ltr)
    return float(probe.score(zs[1], lte))


@dataclass(frozen=True)
class SourceMatch:
    """:func:`mean_correlation`'s result: ``mcc`` (mean absolute correlation of the matched
    pairs), per true source ``j``: ``correlation[j]`` (absolute) and ``component[j]``, the index
    of the recovered latent matched to it (-1 when there are fewer latents than sources)."""

    mcc: float
    correlation: np.ndarray
    component: np.ndarray


def mean_correlation(recovered, sources, method: Literal["pearson", "spearman"] = "pearson") -> SourceMatch:
    """The mean correlation coefficient (MCC) between ``recovered`` latents ``(N, d)`` and the true
    ``sources`` ``(N, s)`` (Hyvarinen & Morioka 2016; Khemakhem et al. 2020): absolute Pearson (or
    Spearman) correlations of every pair, the one-to-one matching that maximises their sum
    (:func:`scipy.optimize.linear_sum_assignment`), averaged over the ``min(d, s)`` matched pairs.
    1 means every source is recovered up to permutation, sign and scale (Pearson: and offset);
    ~0 for latents independent of the sources."""
    from scipy.optimize import linear_sum_assignment
    from scipy.stats import rankdata

    if method not in ("pearson", "spearman"):
        raise ConfigError(f"method must be 'pearson' or 'spearman', got {method!r}")
    r = as_data(recovered.mean if isinstance(recovered, Posterior) else recovered, "recovered").numpy()
    s = as_data(sources, "sources").numpy()
    if r.shape[0] != s.shape[0]:
        raise DataError(f"recovered and sources must have the same number of examples, got {r.shape[0]} and {s.shape[0]}")
    if r.shape[0] < 3:
        raise DataError(f"recovered needs at least 3 examples to correlate, got {r.shape[0]}")
    if method == "spearman":
        r, s = rankdata(r, axis=0), rankdata(s, axis=0)
    for name, a in (("recovered", r), ("sources", s)):
        flat = np.nonzero(a.std(0) == 0)[0]
        if flat.size:
            raise DataError(f"{name}[:, {int(flat[0])}] is constant: its correlation is undefined")
    zr = (r - r.mean(0)) / r.std(0)
    zs = (s - s.mean(0)) / s.std(0)
    corr = np.abs(zr.T @ zs) / r.shape[0]  # (d, s)
    rows, cols = linear_sum_assignment(-corr)
    component = np.full(s.shape[1], -1)
    component[cols] = rows
    correlation = np.zeros(s.shape[1])
    correlation[cols] = corr[rows, cols]
    return SourceMatch(float(corr[rows, cols].mean()), correlation, component)


@dataclass(frozen=True)
class Collapse:
    """Posterior-collapse diagnostics per latent dimension ``(d,)``: ``kl`` (mean over examples of
    ``KL(q(z_j | x) || N(0, 1))``, nats), ``activity`` (``Cov_x(E_q[z_j])``, the variance over
    examples of the posterior mean), ``active`` (``activity > threshold``) and ``n_active``."""

    kl: np.ndarray
    activity: np.ndarray
    active: np.ndarray
    n_active: int
    threshold: float


def collapse_diagnostics(posterior, x=None, aux=None, threshold: float = 0.01) -> Collapse:
    """KL per latent dimension and active units of a :class:`~pcsim.generative.base.Posterior`
    (``(N, d)`` means and log-variances), or of ``model.encode(x, aux)`` when ``posterior`` is a
    fitted model. A unit is active when the variance over examples (unbiased) of its posterior
    mean exceeds ``threshold`` (Burda, Grosse & Salakhutdinov 2016: 0.01); the KL is to the
    standard normal (the prior of a VAE; for a conditional prior it measures departure from
    ``N(0, I)``, not the model's own KL term)."""
    threshold = check_number("threshold", threshold, ge=0)
    if isinstance(posterior, GenerativeModel):
        m = _model(posterior)
        if x is None:
            raise ConfigError("x must be given when collapse_diagnostics is passed a model")
        xa, a = m._inputs(x, aux)
        with torch.no_grad():
            posterior = m.encode(xa, a)
    if not isinstance(posterior, Posterior):
        raise ConfigError(f"posterior must be a Posterior or a fitted GenerativeModel, got {type(posterior).__name__}")
    mean = as_data(posterior.mean.detach(), "posterior.mean")
    log_var = as_data(posterior.log_var.detach(), "posterior.log_var", width=mean.shape[1])
    if log_var.shape != mean.shape:
        raise DataError(f"posterior.log_var must have the shape of posterior.mean {tuple(mean.shape)}, got {tuple(log_var.shape)}")
    if mean.shape[0] < 2:
        raise DataError(f"posterior needs at least 2 examples to measure activity, got {mean.shape[0]}")
    kl = Posterior(mean, log_var).kl_to_standard_normal().mean(0).numpy()
    activity = mean.var(0, unbiased=True).numpy()
    active = activity > threshold
    return Collapse(kl, activity, active, int(active.sum()), threshold)
