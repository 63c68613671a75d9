"""Dynamical (temporal) predictive coding: a generative PC network unrolled over time bins.

The value nodes are latent states ``x_t`` (``t = 1..T``) of every trial; each state predicts the
next one through residual dynamics and the observation of its own time bin::

    g(x)  = x + f(x) @ A + b                          (prediction of x_t from x_{t-1})
    eta_t = x_t @ C + d                               (prediction of the observation y_t)

    E = 1/2 Pi_0 |x_1 - m_0|^2                                            prior
      + sum_{t>1} 1/2 Pi_x |eps_t|^2,   eps_t = x_t - g(x_{t-1})         dynamics
      + sum_t sum_n m_tn O(y_tn; eta_tn)                                  observation

with ``O = 1/2 Pi_y (y - eta)^2`` (Gaussian) or ``O = exp(eta) - y eta`` (Poisson with an
exponential link: the negative log-likelihood up to ``log y!``), and ``m`` the observation
mask (0 for held-out neurons and missing bins). This is the dynamical generative model of
temporal predictive coding (Rao & Ballard 1997 Kalman-filter PC; Friston 2008 generalised
filtering; Millidge et al. 2023 temporal PC) with a Poisson observation energy for spike counts.
With learned precisions the energy gains ``-1/2 log det Pi`` per predicted quantity.

Every update is local in time. The gradient at ``x_t`` reads only the node's own dynamics
error, the error ``eps_{t+1}`` of the step it predicts and its observation error::

    dE/dx_t = Pi_x eps_t - J_t^T Pi_x eps_{t+1} - C (m (y_t - lambda_t))       (Poisson)
    J_t^T v = v + f'(x_t) * (v @ A^T)                                         (row-major)

where ``lambda = exp(eta)`` (counts per bin); for a Gaussian observation the last term reads
``-C (m Pi_y (y_t - eta_t))``. We call ``e_t = m (y_t - lambda_t)`` (resp. ``m Pi_y (y_t - eta_t)``)
the *observation error*: it is the precision-weighted error of the observation layer. The
parameters learn by the Hebbian products of these errors and pre-synaptic activity
(:func:`parameter_gradients`, the MAP rules).

Relaxation (:func:`relax`) integrates ``tau dx/dt = -dE/dx`` with Euler steps of ``dt/tau``
(optionally heavy-ball momentum) for all trials at once: dynamical PC is a relaxing system
(:class:`TemporalDynamics`) of the one loop that also drives static PC, :func:`pcsim.relaxation.run`.
The Poisson energy of sparse spike counts is badly conditioned (the temporal coupling
``Pi_x`` is orders of magnitude stiffer than the data term), so plain Euler needs thousands of
steps. ``preconditioner="gauss-newton"`` instead integrates the *preconditioned* flow
``tau dx/dt = -H^{-1} dE/dx`` (same fixed points, same energy, still a descent of E), with
``H`` the Gauss-Newton curvature of the energy, which is block tridiagonal in time: a
step ``dt/tau = 1`` is a Newton step, solved per trial by a block-Cholesky (Kalman-smoother-like)
recursion in O(T D^3). The gradient it preconditions is the local one above; only the
preconditioner couples a trial's time bins. Trials whose energy would rise are stepped back
(halved steps), so the energy never increases.

The same curvature, inverted at the relaxed state, is the covariance of the Laplace posterior
(:func:`laplace_posterior`; Friston et al. 2007 variational Laplace). Its tridiagonal blocks
give the expected energy ``E_q[E]`` (:func:`expected_term_energies`), the variational free
energy (:func:`free_energy`) and the learning rules of Laplace EM
(:func:`expected_parameter_gradients`: the Hebbian products at the mean with the expected rate
``E[lambda] = exp(eta + 1/2 c' Cov(x_t) c)``, plus covariance terms; Macke et al. 2011). Learning
from point latents alone (MAP) favours ever smaller latents and larger readout weights; the
posterior covariance is what penalises that.

Shapes: ``E`` ensemble members, ``B`` trials, ``T`` time bins, ``D`` latent dimensions, ``N``
observed channels (neurons). Latents ``x: (E, B, T, D)``, observations ``y: (B, T, N)`` or
``(E, B, T, N)``, mask ``(N,)``, ``(B, T, N)`` or ``(E, B, T, N)``. Time bins are the data's time
axis; ``dt`` and ``tau`` (ms) are the relaxation's own time, as in :mod:`pcsim.inference`.

The package follows the seams of the static engine: :mod:`.network` (parameters, data at the
boundary), :mod:`.energy` (errors, energies, explicit gradients, curvature), :mod:`.laplace`
(posterior, free energy, EM rules), :mod:`.inference` (relaxation) and :mod:`.blocktridiagonal`
(the algebra of the curvature).
"""


from .blocktridiagonal import block_tridiagonal_inverse, solve_block_tridiagonal
from .energy import (TERMS, TemporalErrors, energy, parameter_gradients, precision_m_step, prediction_errors,
                     term_energies, value_gradients)
from .inference import (TemporalCarry, TemporalDynamics, TemporalInferenceConfig, TemporalRelaxation, relax,
                        relaxation_threads)
from .laplace import (LaplacePosterior, expected_parameter_gradients, expected_rates, expected_term_energies, free_energy,
                      free_energy_and_gradients, laplace_posterior)
from .network import Observations, TemporalPCNetwork, check_latents, observations

__all__ = [
    "TERMS", "LaplacePosterior", "Observations", "TemporalCarry", "TemporalDynamics", "TemporalErrors",
    "TemporalInferenceConfig", "TemporalPCNetwork", "TemporalRelaxation", "relaxation_threads", "block_tridiagonal_inverse", "check_latents", "energy", "expected_parameter_gradients",
    "expected_rates", "expected_term_energies", "free_energy", "free_energy_and_gradients", "laplace_posterior", "observations", "parameter_gradients",
    "precision_m_step", "prediction_errors", "relax", "solve_block_tridiagonal", "term_energies", "value_gradients",
]
