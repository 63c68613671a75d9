"""Dynamical (temporal) predictive coding against autograd, closed forms and its own invariants.

- the explicit ``dE/dx`` and the local learning rules ``dE/dtheta`` equal torch autograd of the
  energy (Poisson and Gaussian observations, masks, learned precisions, every activation);
- masked observations carry no energy and no gradient (NaN allowed there, not elsewhere);
- Euler relaxation steps are exactly ``x - dt/tau dE/dx`` (with momentum, heavy ball) and never
  raise the energy for a small step; the Gauss-Newton preconditioned relaxation never does, and
  one of its steps is ``x - dt/tau H^{-1} dE/dx`` with ``H`` assembled densely;
- for a linear-Gaussian model the relaxed latents equal the MAP from the normal equations
  assembled and solved densely in numpy (Kalman smoother), by Euler and in one Newton step;
- bad input, bad settings and diverging relaxation raise errors that say what and where, wherever
  the shared relaxation loop (:mod:`pcsim.relaxation`) checks.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsim import temporal as tp
from pcsim.temporal.energy import _curvature, _errors
from pcsim.errors import DataError, InferenceDivergenceError

F64 = torch.float64
ACTS = ["tanh", "linear", "sigmoid", "relu"]


# --------------------------------------------------------------------------- helpers
def make_net(D=3, N=5, *, act="tanh", obs="poisson", E=2, seed=0, precisions=False, per_unit=False, pix=2.0):
    net = tp.TemporalPCNetwork.init(D, N, activation=act, observation=obs, ensemble=E, seed=seed, dtype=F64,
                                    readout_scale=0.8, dynamics_scale=0.5, dynamics_precision=pix,
                                    learn_precision=precisions, per_unit_precision=per_unit)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():
        for name in ("dynamics_bias", "readout_bias", "prior_mean"):
            p = getattr(net, name)
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
        for name in ("prior_log_precision", "dynamics_log_precision", "observation_log_precision"):
            p = getattr(net, name)
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=F64))
    return net


def make_data(net, B=4, T=6, seed=0, mask_kind="bins"):
    g = torch.Generator().manual_seed(seed + 1)
    if net.observation == "poisson":
        y = torch.poisson(torch.full((B, T, net.n_obs), 1.2, dtype=F64), generator=g)
    else:
        y = torch.randn(B, T, net.n_obs, generator=g, dtype=F64)
    if mask_kind is None:
        mask = None
    elif mask_kind == "neurons":
        mask = torch.ones(net.n_obs, dtype=torch.bool)
        mask[::2] = False
    else:
        mask = torch.rand(B, T, net.n_obs, generator=g) > 0.3
    x = torch.randn(net.ensemble, B, T, net.latent_dim, generator=g, dtype=F64)
    return x, y, mask


def with_parameters(net, params):
    """A view of ``net`` whose parameters are ``params`` (in ``net.parameters()`` order)."""
    view = net.clone()
    for name, p in zip(net.parameter_names(), params):
        setattr(view, name, p)
    return view


# --------------------------------------------------------------------------- explicit = autograd
@pytest.mark.parametrize("obs", ["poisson", "gaussian"])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("mask_kind", [None, "neurons", "bins"])
@pytest.mark.parametrize("precisions", [False, True])
def test_explicit_gradients_equal_autograd(obs, act, mask_kind, precisions):
    net = make_net(act=act, obs=obs, precisions=precisions, per_unit=precisions)
    x, y, mask = make_data(net, mask_kind=mask_kind)
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(tp.energy(net, xg, y, mask).sum(), xg)
    torch.testing.assert_close(tp.value_gradients(net, x, y, mask), gx, rtol=1e-10, atol=1e-12)

    params = [p.clone().requires_grad_(True) for p in net.parameters()]
    mean_energy = tp.energy(with_parameters(net, params), x, y, mask).mean(1).sum()  # trial mean per member
    auto = torch.autograd.grad(mean_energy, params)
    local = tp.parameter_gradients(net, x, y, mask)
    assert len(local) == len(auto) == len(net.parameter_names())
    for name, a, b in zip(net.parameter_names(), local, auto):
        assert a.shape == b.shape, name
        assert b.abs().max() > 0, name  # the comparison is not vacuous
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)


@settings(max_examples=25, deadline=None)
@given(D=st.integers(1, 4), N=st.integers(1, 6), B=st.integers(1, 3), T=st.integers(1, 7),
       obs=st.sampled_from(["poisson", "gaussian"]), act=st.sampled_from(ACTS), seed=st.integers(0, 2**16),
       scalar=st.booleans())
def test_value_gradients_equal_autograd_for_any_shape(D, N, B, T, obs, act, seed, scalar):
    net = make_net(D, N, act=act, obs=obs, E=1, seed=seed, precisions=True, per_unit=not scalar)
    x, y, mask = make_data(net, B, T, seed)
    xg = x.clone().requires_grad_(True)
    (gx,) = torch.autograd.grad(tp.energy(net, xg, y, mask).sum(), xg)
    torch.testing.assert_close(tp.value_gradients(net, x, y, mask), gx, rtol=1e-10, atol=1e-12)


def test_energy_terms_are_the_generative_model():
    """Poisson term = -log-likelihood + log y!; Gaussian = -log N + const; per-bin layout."""
    from scipy.special import gammaln
    from scipy.stats import poisson

    net = make_net(obs="poisson", E=1)
    x, y, _ = make_data(net, mask_kind=None)
    terms = tp.term_energies(net, x, y)
    eta = (x @ net.readout_weights[:, None] + net.readout_bias[:, None]).numpy()
    nll = -poisson.logpmf(y.numpy(), np.exp(eta)).sum(-1) - gammaln(y.numpy() + 1).sum(-1)
    np.testing.assert_allclose(terms[..., 2].numpy(), nll, rtol=1e-10)
    assert torch.all(terms[:, :, 1:, 0] == 0) and torch.all(terms[:, :, 0, 1] == 0)
    torch.testing.assert_close(tp.energy(net, x, y), terms.sum((-1, -2)))


def test_masked_observations_carry_no_energy_or_gradient():
    net = make_net(obs="poisson")
    x, y, mask = make_data(net, mask_kind="bins")
    y2 = y.clone()
    y2[~mask] = float("nan")  # unobserved entries may be NaN
    y3 = y.clone()
    y3[~mask] += 5.0
    for other in (y2, y3):
        torch.testing.assert_close(tp.energy(net, x, other, mask), tp.energy(net, x, y, mask))
        torch.testing.assert_close(tp.value_gradients(net, x, other, mask), tp.value_gradients(net, x, y, mask))
        for a, b in zip(tp.parameter_gradients(net, x, other, mask), tp.parameter_gradients(net, x, y, mask)):
            torch.testing.assert_close(a, b)
    # a neuron mask (N,) equals the same mask spelled out per bin
    nmask = torch.tensor([True, False, True, True, False])
    full = nmask.expand(y.shape)
    torch.testing.assert_close(tp.energy(net, x, y, nmask), tp.energy(net, x, y, full))


# --------------------------------------------------------------------------- relaxation
@pytest.mark.parametrize("momentum", [0.0, 0.5])
@pytest.mark.parametrize("obs", ["poisson", "gaussian"])
def test_recorded_steps_are_euler_steps_of_the_autograd_gradient(momentum, obs):
    net = make_net(obs=obs)
    x, y, mask = make_data(net)
    cfg = tp.TemporalInferenceConfig(steps=1, dt=0.5, tau=10.0, momentum=momentum)
    xs = [x]
    v = torch.zeros_like(x)
    for t in range(4):  # four steps, one at a time, against autograd; heavy ball keeps velocity
        xg = xs[-1].clone().requires_grad_(True)
        (g,) = torch.autograd.grad(tp.energy(net, xg, y, mask).sum(), xg)
        v = momentum * v - cfg.step_size * g
        xs.append(xs[-1] + v)
    r = tp.relax(net, x, y, mask, tp.TemporalInferenceConfig(steps=4, dt=0.5, tau=10.0, momentum=momentum))
    torch.testing.assert_close(r.x, xs[-1], rtol=1e-11, atol=1e-12)
    assert r.steps == 4
    torch.testing.assert_close(r.energy, tp.term_energies(net, r.x, y, mask))
    assert not torch.equal(x, r.x)  # it moved, and the input was not modified in place
    torch.testing.assert_close(x, make_data(net)[0])


@settings(max_examples=20, deadline=None)
@given(obs=st.sampled_from(["poisson", "gaussian"]), act=st.sampled_from(["tanh", "linear", "sigmoid"]),
       seed=st.integers(0, 2**16), pre=st.sampled_from(["none", "gauss-newton"]))
def test_energy_never_increases_during_relaxation(obs, act, seed, pre):
    net = make_net(act=act, obs=obs, seed=seed)
    x, y, mask = make_data(net, seed=seed)
    dt = 0.02 if pre == "none" else 1.0  # a small Euler step; a full (damped) Newton step
    r = tp.relax(net, x, y, mask, tp.TemporalInferenceConfig(steps=40, dt=dt, tau=1.0, preconditioner=pre, record=True))
    total = r.trace["energy"].sum(-1)  # (steps+1, E, B)
    rise = total[1:] - total[:-1]
    assert np.all(rise <= 1e-9 * np.abs(total[:-1]) + 1e-12), f"energy rose by {rise.max():.3g}"
    assert total[-1].sum() < total[0].sum()


def test_gauss_newton_and_euler_reach_the_same_poisson_map():
    net = make_net(obs="poisson", act="tanh", E=1, pix=4.0)
    x, y, mask = make_data(net, B=3, T=8)
    newton = tp.relax(net, x, y, mask, tp.TemporalInferenceConfig(steps=30, dt=1, tau=1, preconditioner="gauss-newton"))
    assert tp.value_gradients(net, newton.x, y, mask).abs().max() < 1e-8  # a stationary point
    euler = tp.relax(net, x, y, mask, tp.TemporalInferenceConfig(steps=6000, dt=0.02, tau=1.0, momentum=0.9))
    torch.testing.assert_close(euler.x, newton.x, rtol=1e-6, atol=1e-6)


def linear_gaussian_map(net: tp.TemporalPCNetwork, y: np.ndarray, mask: np.ndarray, member: int = 0) -> np.ndarray:
    """The MAP latents of a linear-Gaussian model, from its normal equations assembled densely in numpy.

    Every error is affine in the stacked latents ``z = vec(x_1..x_T)``, ``r = G z - h``; the energy
    ``1/2 sum r' W r`` is minimised by ``(G' W G) z = G' W h``. Returns ``(B, T, D)``.
    """
    A = net.dynamics_weights[member].numpy()
    b = net.dynamics_bias[member, 0].numpy()
    C = net.readout_weights[member].numpy()
    d = net.readout_bias[member, 0].numpy()
    m0 = net.prior_mean[member, 0].numpy()
    D, N = C.shape
    pi0 = np.broadcast_to(np.exp(net.prior_log_precision[member, 0].numpy()), (D,))
    pix = np.broadcast_to(np.exp(net.dynamics_log_precision[member, 0].numpy()), (D,))
    piy = np.broadcast_to(np.exp(net.observation_log_precision[member, 0].numpy()), (N,))
    B, T, _ = y.shape
    M = np.eye(D) + A.T  # column form of x -> x + x @ A
    out = np.empty((B, T, D))
    for trial in range(B):
        rows_G, rows_h, weights = [], [], []
        G = np.zeros((D, T * D)); G[:, :D] = np.eye(D)
        rows_G.append(G); rows_h.append(m0); weights.append(pi0)
        for t in range(1, T):
            G = np.zeros((D, T * D))
            G[:, t * D:(t + 1) * D] = np.eye(D)
            G[:, (t - 1) * D:t * D] = -M
            rows_G.append(G); rows_h.append(b); weights.append(pix)
        for t in range(T):
            G = np.zeros((N, T * D))
            G[:, t * D:(t + 1) * D] = C.T
            rows_G.append(G); rows_h.append(y[trial, t] - d); weights.append(piy * mask[trial, t])
        G, h, w = np.concatenate(rows_G), np.concatenate(rows_h), np.concatenate(weights)
        z = np.linalg.solve(G.T @ (w[:, None] * G), G.T @ (w * h))
        out[trial] = z.reshape(T, D)
    return out


@pytest.mark.parametrize("per_unit", [False, True])
def test_linear_gaussian_relaxation_reaches_the_closed_form_map(per_unit):
    net = make_net(D=2, N=3, act="linear", obs="gaussian", E=1, seed=3, per_unit=per_unit, pix=3.0)
    x, y, mask = make_data(net, B=3, T=7, seed=3)
    want = linear_gaussian_map(net, y.numpy(), mask.numpy().astype(float))
    euler = tp.relax(net, x, y, mask, tp.TemporalInferenceConfig(steps=4000, dt=0.05, tau=1.0, momentum=0.8))
    np.testing.assert_allclose(euler.x[0].numpy(), want, rtol=1e-8, atol=1e-9)
    # the energy is quadratic and the Gauss-Newton curvature exact: one Newton step lands on the MAP
    newton = tp.relax(net, x, y, mask, tp.TemporalInferenceConfig(steps=1, dt=1.0, tau=1.0, preconditioner="gauss-newton"))
    np.testing.assert_allclose(newton.x[0].numpy(), want, rtol=1e-9, atol=1e-10)


def test_block_tridiagonal_solver_matches_a_dense_solve():
    g = torch.Generator().manual_seed(0)
    B, T, D = 3, 9, 4
    lower = 0.5 * torch.randn(B, T - 1, D, D, generator=g, dtype=F64)
    Q = torch.randn(B, T, D, D, generator=g, dtype=F64)
    diag = Q @ Q.transpose(-1, -2) + 3 * D * torch.eye(D, dtype=F64)
    rhs = torch.randn(B, T, D, generator=g, dtype=F64)
    H = np.zeros((B, T * D, T * D))
    for t in range(T):
        H[:, t * D:(t + 1) * D, t * D:(t + 1) * D] = diag[:, t].numpy()
        if t < T - 1:
            H[:, (t + 1) * D:(t + 2) * D, t * D:(t + 1) * D] = lower[:, t].numpy()
            H[:, t * D:(t + 1) * D, (t + 1) * D:(t + 2) * D] = lower[:, t].transpose(-1, -2).numpy()
    want = np.linalg.solve(H, rhs.reshape(B, -1).numpy()[..., None])[..., 0].reshape(B, T, D)
    np.testing.assert_allclose(tp.solve_block_tridiagonal(diag, lower, rhs).numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("bin_", [0, 4])
def test_block_tridiagonal_algebra_names_the_bin_where_positive_definiteness_fails(bin_):
    B, T, D = 2, 6, 3
    diag = torch.eye(D, dtype=F64).repeat(B, T, 1, 1) * 4.0
    lower = torch.zeros(B, T - 1, D, D, dtype=F64)
    diag[1, bin_] = -torch.eye(D, dtype=F64)  # one trial's block is negative definite
    for solve in (lambda: tp.solve_block_tridiagonal(diag, lower, torch.ones(B, T, D, dtype=F64)),
                  lambda: tp.block_tridiagonal_inverse(diag, lower)):
        with pytest.raises(InferenceDivergenceError, match=f"time bin {bin_}") as info:
            solve()
        assert info.value.layer == bin_


def dense_curvature(net, x, y, mask):
    """The Gauss-Newton curvature of one ensemble member's trials as dense ``(B, T*D, T*D)`` matrices."""
    obs = tp.observations(net, y, mask)
    diag, lower = _curvature(net, x, obs, _errors(net, x, obs), 0.0)
    diag, lower = diag[0], lower[0]
    B, T, D = x.shape[1:]
    H = torch.zeros(B, T * D, T * D, dtype=F64)
    for t in range(T):
        H[:, t * D:(t + 1) * D, t * D:(t + 1) * D] = diag[:, t]
        if t < T - 1:
            H[:, (t + 1) * D:(t + 2) * D, t * D:(t + 1) * D] = lower[:, t]
            H[:, t * D:(t + 1) * D, (t + 1) * D:(t + 2) * D] = lower[:, t].transpose(-1, -2)
    return H


@pytest.mark.parametrize("obs", ["poisson", "gaussian"])
def test_gauss_newton_step_is_a_dense_newton_step_of_the_autograd_gradient(obs):
    """One preconditioned step without backtracking: ``x - dt/tau H^{-1} dE/dx``, ``H`` the curvature assembled densely."""
    net = make_net(act="tanh", obs=obs, E=1)
    x, y, mask = make_data(net, B=2, T=5)
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(tp.energy(net, xg, y, mask).sum(), xg)
    H = dense_curvature(net, x, y, mask)                                       # (B, TD, TD)
    want = x[0] - 0.7 * torch.linalg.solve(H, g[0].reshape(2, -1, 1)).reshape(x[0].shape)
    cfg = tp.TemporalInferenceConfig(steps=1, dt=0.7, tau=1.0, preconditioner="gauss-newton", backtrack=0)
    torch.testing.assert_close(tp.relax(net, x, y, mask, cfg).x[0], want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("mask_kind", ["bins", None])
def test_backtracking_retries_only_the_trials_that_rose_with_the_whole_batchs_result(mask_kind):
    """A Newton step too long for some trials: retrying those alone gives what halving their step and
    evaluating the whole batch again (the plain backtracking loop, written out here) gives."""
    from dataclasses import fields

    from pcsim.temporal.energy import _curvature, _value_gradients
    from pcsim.temporal.inference import TemporalDynamics, _backtracked_step

    net = make_net(act="tanh", obs="poisson", E=2)
    x, y, mask = make_data(net, B=8, T=6, mask_kind=mask_kind)
    x = 3.0 * x                                                           # far from the optimum: steps overshoot
    cfg = tp.TemporalInferenceConfig(steps=1, dt=2.0, tau=1.0, preconditioner="gauss-newton", backtrack=10)
    system = TemporalDynamics(net, tp.observations(net, y, mask), cfg)
    carry = system.evaluate(x, None)
    diag, lower = _curvature(net, x, system.obs, carry.errors, 0.0)
    direction = tp.solve_block_tridiagonal(diag, lower, _value_gradients(net, x, carry.errors))
    before = carry.energy.sum((2, 3))
    step = torch.full((2, 8, 1, 1), 2.0, dtype=F64)
    for k in range(cfg.backtrack + 1):                                    # the reference: whole batch every time
        want = system.evaluate(x - step * direction, None, 1)
        ok = want.energy.sum((2, 3)) <= before + 1e-12 * before.abs()
        if k == 0:
            assert 0 < int((~ok).sum()) < ok.numel()                        # some trials rose, some did not
        if bool(ok.all()):
            break
        step = torch.where(ok[..., None, None], step, 0.5 * step)
    else:
        want = system.evaluate(x - torch.where(ok[..., None, None], step, torch.zeros_like(step)) * direction, None, 1)
    got = _backtracked_step(system, carry, direction, 2.0, 1)
    torch.testing.assert_close(got.x, want.x, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.energy, want.energy, rtol=1e-12, atol=1e-12)
    for f in fields(want.errors):
        torch.testing.assert_close(getattr(got.errors, f.name), getattr(want.errors, f.name), rtol=1e-12, atol=1e-12)


def test_curvature_is_the_hessian_for_linear_dynamics():
    net = make_net(act="linear", obs="poisson", E=1)
    x, y, mask = make_data(net, B=2, T=5)
    H = dense_curvature(net, x, y, mask)
    for b in range(2):
        xb = x[:, b:b + 1]
        hess = torch.autograd.functional.hessian(lambda z: tp.energy(net, z, y[b:b + 1], mask[b:b + 1]).sum(), xb)
        n = xb.numel()
        torch.testing.assert_close(H[b], hess.reshape(n, n), rtol=1e-10, atol=1e-12)


def test_block_tridiagonal_inverse_matches_the_dense_inverse():
    net = make_net(act="tanh", obs="poisson", E=1)
    x, y, mask = make_data(net, B=3, T=6)
    H = dense_curvature(net, x, y, mask)
    Sigma = torch.linalg.inv(H)
    q = tp.laplace_posterior(net, x, y, mask)
    D = 3
    for t in range(6):
        torch.testing.assert_close(q.cov[0, :, t], Sigma[:, t * D:(t + 1) * D, t * D:(t + 1) * D], rtol=1e-9, atol=1e-12)
        if t < 5:
            torch.testing.assert_close(q.cross[0, :, t], Sigma[:, t * D:(t + 1) * D, (t + 1) * D:(t + 2) * D],
                                       rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(q.log_det_precision[0], torch.linalg.slogdet(H)[1], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("obs", ["poisson", "gaussian"])
def test_expected_energy_matches_monte_carlo_for_linear_dynamics(obs):
    """E_q[E] in closed form (Gaussian moments, E[exp(eta)] = exp(mean + var/2)) against sampling from q."""
    net = make_net(act="linear", obs=obs, E=1, seed=5)
    x, y, mask = make_data(net, B=2, T=4, seed=5)
    q = tp.laplace_posterior(net, x, y, mask)
    L = torch.linalg.cholesky(torch.linalg.inv(dense_curvature(net, x, y, mask)))  # (B, TD, TD)
    g = torch.Generator().manual_seed(0)
    n, B, T, D = 20000, 2, 4, 3
    total = torch.zeros(B, dtype=F64)
    for _ in range(10):
        z = torch.randn(n, B, T * D, 1, generator=g, dtype=F64)
        samples = x[0].reshape(B, T * D) + (L @ z)[..., 0]                         # (n, B, TD)
        e = tp.energy(net, samples.reshape(1, n * B, T, D), y.repeat(n, 1, 1), mask.repeat(n, 1, 1))
        total += e.reshape(n, B).mean(0) / 10
    want = tp.expected_term_energies(net, q, y, mask).sum((-1, -2))[0]
    torch.testing.assert_close(want, total, rtol=2e-3, atol=0.0)


@pytest.mark.parametrize("obs", ["poisson", "gaussian"])
def test_expected_rates_match_monte_carlo_over_the_posterior(obs):
    """E_q[lambda] of every channel, masked ones too, against the mean rate of samples from the posterior's
    per-bin marginals; for a Poisson observation it exceeds exp(eta) at the mean (Jensen), for a Gaussian
    one it is eta."""
    net = make_net(obs=obs, E=1, seed=3)
    x, y, mask = make_data(net, B=3, T=5, seed=3)
    q = tp.laplace_posterior(net, x, y, mask)
    got = tp.expected_rates(net, q, y, mask)[0]                                      # (B, T, N)
    g = torch.Generator().manual_seed(1)
    L = torch.linalg.cholesky(q.cov[0])                                              # (B, T, D, D)
    z = q.mean[0] + (L @ torch.randn(100000, *q.mean.shape[1:], 1, generator=g, dtype=F64))[..., 0]
    eta = z @ net.readout_weights[0] + net.readout_bias[0]                           # (n, B, T, N)
    want = (eta.exp() if obs == "poisson" else eta).mean(0)
    torch.testing.assert_close(got, want, rtol=5e-3, atol=5e-3)
    at_mean = tp.prediction_errors(net, x, y, mask).rate[0]
    if obs == "poisson":
        assert bool((got > at_mean).all())
    else:
        torch.testing.assert_close(got, at_mean, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("obs", ["poisson", "gaussian"])
@pytest.mark.parametrize("act", ["tanh", "linear"])
@pytest.mark.parametrize("precisions", [False, True])
def test_laplace_learning_rules_equal_autograd_of_the_expected_energy(obs, act, precisions):
    net = make_net(act=act, obs=obs, precisions=precisions, per_unit=precisions)
    x, y, mask = make_data(net)
    q = tp.laplace_posterior(net, x, y, mask)
    params = [p.clone().requires_grad_(True) for p in net.parameters()]
    expected = tp.expected_term_energies(with_parameters(net, params), q, y, mask).sum((-1, -2)).mean(1).sum()
    auto = torch.autograd.grad(expected, params)
    local = tp.expected_parameter_gradients(net, q, y, mask)
    map_rule = tp.parameter_gradients(net, x, y, mask)
    for name, a, b, m in zip(net.parameter_names(), local, auto, map_rule):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=name)
    # the covariance terms are not vacuous: the readout gradient differs from the MAP rule
    assert not torch.allclose(local[2], map_rule[2])


@pytest.mark.parametrize("obs", ["poisson", "gaussian"])
def test_free_energy_and_gradients_in_one_pass_equal_the_two_functions(obs):
    net = make_net(obs=obs, precisions=True)
    x, y, mask = make_data(net)
    q = tp.laplace_posterior(net, x, y, mask)
    F, grads = tp.free_energy_and_gradients(net, q, y, mask)
    torch.testing.assert_close(F, tp.free_energy(net, q, y, mask), rtol=0, atol=0)
    for name, a, b in zip(net.parameter_names(), grads, tp.expected_parameter_gradients(net, q, y, mask)):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)


def test_relaxation_threads_follow_the_one_thread_policy(monkeypatch):
    from pcsim import parallel

    small = tp.TemporalPCNetwork.init(2, 5)               # 10 trials x 10 bins x 2 x 5: far below SERIAL_WORK
    assert tp.relaxation_threads(small, 10, 10) == 1
    big = tp.TemporalPCNetwork.init(8, 5)
    n = parallel.SERIAL_WORK // (8 * 5 * 10) + 1           # just above it: as many threads as free cores
    monkeypatch.setattr(parallel, "free_cores", lambda: 1)
    assert tp.relaxation_threads(big, n, 10) == 1
    monkeypatch.setattr(parallel, "free_cores", lambda: 64)
    assert tp.relaxation_threads(big, n, 10) == torch.get_num_threads()
    assert tp.relaxation_threads(big, n - 2, 10) == 1


@pytest.mark.parametrize("trials", [4, 300])
def test_block_recursion_sizes_its_threads_by_one_bins_blocks(monkeypatch, trials):
    """The recursion's regions are one bin's blocks (trials * D^3 multiply-adds): one thread below
    SERIAL_WORK whatever the caller runs with, as many as free above it."""
    from pcsim import parallel

    D, T = 8, 3
    monkeypatch.setattr(parallel, "free_cores", lambda: 64)
    seen = []
    factorise = torch.linalg.cholesky_ex

    def spy(S):
        seen.append(torch.get_num_threads())
        return factorise(S)

    monkeypatch.setattr(torch.linalg, "cholesky_ex", spy)
    diag = torch.eye(D, dtype=F64).repeat(trials, T, 1, 1) * 4.0
    lower = torch.zeros(trials, T - 1, D, D, dtype=F64)
    want = 1 if trials * D ** 3 < parallel.SERIAL_WORK else torch.get_num_threads()
    with parallel.threads(torch.get_num_threads()):
        tp.solve_block_tridiagonal(diag, lower, torch.ones(trials, T, D, dtype=F64))
        tp.block_tridiagonal_inverse(diag, lower)
    assert seen == [want] * (2 * T)


def test_free_energy_is_the_negative_log_evidence_of_a_linear_gaussian_model():
    """For linear-Gaussian models the Laplace free energy at the MAP is exact: -log p(y)."""
    net = make_net(D=2, N=3, act="linear", obs="gaussian", E=1, seed=2, precisions=True, per_unit=True)
    x, y, _ = make_data(net, B=2, T=5, seed=2, mask_kind=None)
    relaxed = tp.relax(net, x, y, None, tp.TemporalInferenceConfig(steps=1, dt=1, tau=1, preconditioner="gauss-newton"))
    q = tp.laplace_posterior(net, relaxed.x, y)
    F = tp.free_energy(net, q, y)[0]
    # the marginal of y: stack x ~ N(mu_x, Sigma_x) from the linear dynamics, y = C'x + d + noise
    A = net.dynamics_weights[0].numpy(); b = net.dynamics_bias[0, 0].numpy()
    C = net.readout_weights[0].numpy(); d = net.readout_bias[0, 0].numpy(); m0 = net.prior_mean[0, 0].numpy()
    P0 = np.exp(net.prior_log_precision[0, 0].numpy()); Px = np.exp(net.dynamics_log_precision[0, 0].numpy())
    Py = np.exp(net.observation_log_precision[0, 0].numpy())
    M = np.eye(2) + A.T
    T, D, N = 5, 2, 3
    mu = [m0]
    for _ in range(T - 1):
        mu.append(M @ mu[-1] + b)
    # x = G (noise) + mean, with noise_1 ~ N(0, 1/P0), noise_t ~ N(0, 1/Px)
    G = np.zeros((T * D, T * D))
    for t in range(T):
        for s_ in range(t + 1):
            G[t * D:(t + 1) * D, s_ * D:(s_ + 1) * D] = np.linalg.matrix_power(M, t - s_)
    noise_var = np.concatenate([1 / P0] + [1 / Px] * (T - 1))
    Sx = G @ np.diag(noise_var) @ G.T
    Ct = np.kron(np.eye(T), C.T)
    Sy = Ct @ Sx @ Ct.T + np.diag(np.tile(1 / Py, T))
    my = Ct @ np.concatenate(mu) + np.tile(d, T)
    from scipy.stats import multivariate_normal
    logp = [multivariate_normal(my, Sy).logpdf(y[i].numpy().reshape(-1)) for i in range(2)]
    # the energy omits the Gaussian normalisers 1/2 log(2 pi) per predicted quantity
    const = 0.5 * np.log(2 * np.pi) * (T * N + T * D)
    np.testing.assert_allclose(F.numpy() + const, -np.array(logp), rtol=1e-9)


def test_rollout_is_the_zero_error_state():
    net = make_net(obs="poisson", E=2)
    x = net.rollout(3, 5)
    assert x.shape == (2, 3, 5, 3)
    er = tp.prediction_errors(net, x, torch.zeros(3, 5, net.n_obs, dtype=F64))
    assert er.eps0.abs().max() == 0 and er.eps.abs().max() < 1e-12


def test_recorded_trace_as_dataset():
    net = make_net()
    x, y, mask = make_data(net)
    r = tp.relax(net, x, y, mask, tp.TemporalInferenceConfig(steps=5, dt=0.5, tau=10.0, record=True))
    ds = r.to_dataset()
    assert dict(ds.sizes) == {"step": 6, "ensemble": 2, "trial": 4, "term": 3}
    np.testing.assert_allclose(ds["time"].values, 0.5e-3 * np.arange(6))  # dt in ms, time in s
    np.testing.assert_allclose(ds["energy"].values[-1], r.energy.sum(2).numpy())
    assert list(ds["term"].values) == list(tp.TERMS)


# --------------------------------------------------------------------------- bad input
def test_nan_in_observed_counts_is_a_data_error():
    net = make_net()
    x, y, _ = make_data(net, mask_kind=None)
    y[1, 2, 3] = float("nan")
    with pytest.raises(DataError, match=r"NaN or Inf at observed entry .*\(1, 2, 3\)"):
        tp.relax(net, x, y)
    with pytest.raises(DataError, match="NaN"):
        tp.energy(net, x, y)
    mask = torch.ones(y.shape, dtype=torch.bool)
    mask[1, 2, 3] = False
    tp.relax(net, x, y, mask, tp.TemporalInferenceConfig(steps=2, dt=0.1, tau=1.0))  # masked: fine


def test_bad_input_is_a_data_error():
    net = make_net()
    x, y, _ = make_data(net, mask_kind=None)
    with pytest.raises(DataError, match="negative spike counts"):
        tp.relax(net, x, -y - 1)
    with pytest.raises(DataError, match=r"y must have shape"):
        tp.relax(net, x, y[..., :-1])
    with pytest.raises(DataError, match=r"x must have shape"):
        tp.relax(net, x[:, :, :-1], y)
    with pytest.raises(DataError, match="mask must have shape"):
        tp.relax(net, x, y, torch.ones(3, dtype=torch.bool))
    with pytest.raises(DataError, match="mask must hold only 0/1"):
        tp.relax(net, x, y, torch.full((net.n_obs,), 0.5))
    bad = x.clone()
    bad[0, 0, 0, 0] = float("inf")
    with pytest.raises(DataError, match="x contains NaN or Inf"):
        tp.relax(net, bad, y)


def test_diverging_relaxation_names_step_and_time_bin():
    net = make_net(obs="gaussian", act="linear", pix=50.0)
    x, y, mask = make_data(net)
    with pytest.raises(InferenceDivergenceError, match=r"time bin \d+") as info:
        tp.relax(net, x, y, mask, tp.TemporalInferenceConfig(steps=200, dt=1.0, tau=1.0))
    assert info.value.step >= 1 and 0 <= info.value.layer < 6
    # checked only at the end, the shared loop replays the steps and names the same step and bin
    with pytest.raises(InferenceDivergenceError) as late:
        tp.relax(net, x, y, mask, tp.TemporalInferenceConfig(steps=200, dt=1.0, tau=1.0, check_every=0))
    assert (late.value.step, late.value.layer, str(late.value)) == (info.value.step, info.value.layer, str(info.value))


def test_config_rejects_what_dynamical_pc_cannot_do():
    for bad in (dict(preconditioner="newton"), dict(damping=-1.0), dict(backtrack=-1), dict(compile=True),
                dict(precondition=True), dict(steps=-1), dict(tau=0.0)):
        with pytest.raises(ValueError, match=next(iter(bad))):
            tp.TemporalInferenceConfig(**bad)


def test_checked_observations_pass_through_unchanged_and_give_the_same_energies():
    """An EM step checks its batch once and hands the checked Observations to relax, the Laplace
    posterior and the gradients: they must see exactly what they would have checked themselves,
    and Observations checked for a network of another shape are refused."""
    net = tp.TemporalPCNetwork.init(3, 6, observation="poisson", seed=0, dtype=F64)
    y = torch.poisson(torch.full((4, 7, 6), 2.0, dtype=F64), generator=torch.Generator().manual_seed(0))
    mask = torch.rand(4, 7, 6, generator=torch.Generator().manual_seed(1)) > 0.3
    obs = tp.observations(net, y, mask)
    assert tp.observations(net, obs) is obs
    x = torch.randn(1, 4, 7, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    for a, b in zip(tp.parameter_gradients(net, x, obs), tp.parameter_gradients(net, x, y, mask)):
        assert torch.equal(a, b)
    with pytest.raises(DataError, match="checked for another network"):
        tp.observations(tp.TemporalPCNetwork.init(3, 5, observation="poisson", seed=0, dtype=F64), obs)


@pytest.mark.parametrize("per_unit", [False, True])
def test_precision_m_step_recovers_the_generating_noise_precisions(per_unit):
    """At latents drawn from the generative model, the closed-form M-step of the prior and dynamics
    precisions (from the learning-rule gradients) equals the inverse mean squared error computed
    directly, recovers the generating precisions, and is the energy's minimum over the precision."""
    D, N, B, T = 3, 5, 400, 30
    pi0_true, pix_true = 2.0, 50.0
    net = tp.TemporalPCNetwork.init(D, N, observation="gaussian", activation="linear", seed=3,
                                    dynamics_scale=0.3, learn_precision=True, per_unit_precision=per_unit,
                                    prior_precision=1.0, dynamics_precision=300.0)
    gen = torch.Generator().manual_seed(4)
    xs = [net.prior_mean[0] + torch.randn(B, D, generator=gen) / pi0_true ** 0.5]
    for _ in range(T - 1):
        xs.append(net.predict_next(xs[-1][None])[0] + torch.randn(B, D, generator=gen) / pix_true ** 0.5)
    x = torch.stack(xs, 1)[None]                                              # (1, B, T, D)
    y = torch.randn(B, T, N, generator=gen)
    grads = tp.parameter_gradients(net, x, y)
    lp0, lpx = tp.precision_m_step(net, grads, T)
    er = tp.prediction_errors(net, x, y)
    ms0 = (er.eps0 ** 2).mean((0, 1))                                         # (D,) per-unit mean square
    msx = (er.eps ** 2).mean((0, 1, 2))
    want0, wantx = (1 / ms0, 1 / msx) if per_unit else (1 / ms0.mean(), 1 / msx.mean())
    torch.testing.assert_close(lp0.exp().flatten(), torch.as_tensor(want0).flatten().float(), rtol=1e-4, atol=0)
    torch.testing.assert_close(lpx.exp().flatten(), torch.as_tensor(wantx).flatten().float(), rtol=1e-4, atol=0)
    assert torch.allclose(lpx.exp(), torch.tensor(pix_true), rtol=0.05)
    assert torch.allclose(lp0.exp(), torch.tensor(pi0_true), rtol=0.25)
    # the energy (with its -1/2 log det Pi terms) is least at the M-step's precisions
    def total(lp0_, lpx_):
        return float(tp.energy(replace(net, prior_log_precision=lp0_, dynamics_log_precision=lpx_), x, y).sum())
    best = total(lp0, lpx)
    for f in (0.8, 1.25):
        assert best < total(lp0 + np.log(f), lpx) and best < total(lp0, lpx + np.log(f))


def test_precision_m_step_is_bounded_when_the_errors_vanish():
    """Latents that start exactly at the prior mean and follow the dynamics without noise have zero
    errors: the M-step's precision is then the variance floor's (MAX_PRECISION), finite, not 1/0."""
    from pcsim.temporal.energy import MAX_PRECISION

    D, N, B, T = 3, 4, 8, 6
    net = tp.TemporalPCNetwork.init(D, N, observation="gaussian", activation="linear", seed=1,
                                    dynamics_scale=0.3, learn_precision=True)
    xs = [net.prior_mean[0].expand(B, D)]
    for _ in range(T - 1):
        xs.append(net.predict_next(xs[-1][None])[0])
    x = torch.stack(xs, 1)[None]
    lp0, lpx = tp.precision_m_step(net, tp.parameter_gradients(net, x, torch.zeros(B, T, N)), T)
    for lp in (lp0, lpx):
        assert torch.isfinite(lp).all()
        torch.testing.assert_close(lp.exp(), torch.full_like(lp, MAX_PRECISION), rtol=1e-4, atol=0)


@pytest.mark.parametrize("observation", ["poisson", "gaussian"])
def test_precision_m_step_reads_the_gradients_by_name_and_refuses_a_short_list(observation):
    """The log-precision gradients are found by the network's parameter names (a Gaussian network has
    one more learned precision after them), and a gradient list of the wrong length is refused by name."""
    net = tp.TemporalPCNetwork.init(2, 3, observation=observation, seed=0, learn_precision=True)
    names = net.parameter_names()
    assert [id(p) for p in net.parameters()] == [id(getattr(net, n)) for n in names]
    grads = [torch.zeros_like(p) for p in net.parameters()]
    grads[names.index("dynamics_log_precision")] = torch.full_like(net.dynamics_log_precision, 2.0)
    lp0, lpx = tp.precision_m_step(net, grads, 5)
    torch.testing.assert_close(lp0, net.prior_log_precision)        # zero gradient: already the minimum
    n = 4.0 * (net.latent_dim if net.dynamics_log_precision.shape[-1] == 1 else 1)
    torch.testing.assert_close(lpx, net.dynamics_log_precision + math.log(n) - math.log(4.0 + n))
    with pytest.raises(DataError, match="dynamics_log_precision"):
        tp.precision_m_step(net, grads[:-1], 5)
