"""PC's generative mode on the generative surface: exact values on a linear-Gaussian network,
Monte Carlo PC's sampler, hybrid PC's head start, the conditional prior, and bad input."""

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st
from scipy.stats import multivariate_normal

from pcsim.errors import ConfigError, DataError, InferenceDivergenceError, LearningDivergenceError, PCSimError
from pcsim.generative.pc import ConditionalPC, HybridPC, PCGenerative
from pcsim.inference import InferenceConfig, init_state, relax
from pcsim.rules import StandardPC

D, d = 5, 2
PI0, PI1 = 0.5, 2.0


def linear_data(n=200, seed=0):
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(d, D)) * 0.8
    z = rng.normal(size=(n, d)) / math.sqrt(PI0)
    return z @ W + 0.3 + rng.normal(size=(n, D)) / math.sqrt(PI1)


@pytest.fixture(scope="module")
def linear():
    """A linear-Gaussian PC network (one latent layer), fitted briefly; inference converged to the mode."""
    x = linear_data()
    m = PCGenerative((d, D), "linear", precision=PI1, prior_precision=PI0, inference_steps=300, dt=2.0, tau=10.0,
                     epochs=3, batch_size=50, lr=0.05, seed=1).fit(x)
    return m, x


def params(m):
    net = m.network_
    return (net.weights[0][0].numpy(), net.biases[0][0, 0].numpy(), net.prior_mean[0, 0].numpy())


def exact_posterior(m, x):
    """The exact Gaussian posterior of a linear-Gaussian PC network (numpy): mean (N, d), covariance (d, d)."""
    W, b, m0 = params(m)
    cov = np.linalg.inv(PI0 * np.eye(d) + PI1 * W @ W.T)
    mean = (PI0 * m0 + PI1 * (x - b) @ W.T) @ cov
    return mean, cov


# --------------------------------------------------------------------------- exact values, linear-Gaussian
def test_log_likelihood_equals_the_exact_marginal(linear):
    """log p(x) = log N(x; m0 W + b, W^T W / Pi_0 + I / Pi_1): the Laplace proposal is the exact
    posterior, so every importance weight is the same and the estimate is exact to rounding."""
    m, x = linear
    W, b, m0 = params(m)
    exact = multivariate_normal(m0 @ W + b, W.T @ W / PI0 + np.eye(D) / PI1).logpdf(x[:20])
    ll = m.log_likelihood(x[:20], samples=64, seed=3)
    err = np.abs(ll.per_example.numpy() - exact)
    assert (err <= 3 * ll.stderr.numpy() + 1e-8).all()
    assert err.max() < 1e-8
    assert np.allclose(m.elbo(x[:20], samples=8).numpy(), exact, atol=1e-8)  # q = p(z | x): no gap


def test_encode_is_the_exact_posterior(linear):
    m, x = linear
    mean, cov = exact_posterior(m, x[:10])
    q = m.encode(x[:10])
    assert np.allclose(q.mean.numpy(), mean, atol=1e-9)
    L = q.precision_cholesky.numpy()
    assert np.allclose(np.linalg.inv(L[3] @ L[3].T), cov, atol=1e-12)
    assert np.allclose(np.exp(q.log_var.numpy()), np.diag(cov)[None], atol=1e-12)


def test_log_joint_equals_independent_density_deep_tanh():
    """log p(x, z) of a two-layer tanh network = the sum of its three Gaussian log densities (scipy)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(6, 4))
    m = PCGenerative((2, 3, 4), "tanh", precision=[1.5, 3.0], prior_precision=0.7, epochs=1, batch_size=6,
                     lr=0.01, inference_steps=5).fit(x)
    z = torch.as_tensor(rng.normal(size=(3, 6, 5)))
    got = m.log_joint(x, z).numpy()
    net = m.network_
    W1, W2 = (w[0].numpy() for w in net.weights)
    b1, b2 = (b[0, 0].numpy() for b in net.biases)
    m0 = net.prior_mean[0, 0].numpy()
    ref = np.zeros((3, 6))
    for k in range(3):
        for i in range(6):
            x0, x1 = z[k, i, :2].numpy(), z[k, i, 2:].numpy()
            ref[k, i] = (multivariate_normal(m0, np.eye(2) / 0.7).logpdf(x0)
                         + multivariate_normal(np.tanh(x0) @ W1 + b1, np.eye(3) / 1.5).logpdf(x1)
                         + multivariate_normal(np.tanh(x1) @ W2 + b2, np.eye(4) / 3.0).logpdf(x[i]))
    assert np.allclose(got, ref, atol=1e-10)
    # decode: the full latent predicts from x_1; the top cause alone runs the sweep
    assert np.allclose(m.decode(z[0]).numpy(), np.tanh(z[0, :, 2:].numpy()) @ W2 + b2, atol=1e-12)
    top = z[0, :, :2].numpy()
    assert np.allclose(m.decode(top).numpy(), np.tanh(np.tanh(top) @ W1 + b1) @ W2 + b2, atol=1e-12)


def test_ancestral_samples_have_the_model_covariance(linear):
    m, _ = linear
    W, b, m0 = params(m)
    s = m.sample(20000, seed=4).numpy()
    cov = W.T @ W / PI0 + np.eye(D) / PI1
    se = np.sqrt((np.diag(cov)[:, None] * np.diag(cov)[None] + cov ** 2) / len(s))
    assert (np.abs(np.cov(s.T) - cov) < 5 * se).all()
    assert (np.abs(s.mean(0) - (m0 @ W + b)) < 5 * np.sqrt(np.diag(cov) / len(s))).all()
    assert torch.equal(m.sample(5, seed=1), m.sample(5, seed=1))
    mean = m.sample(20000, seed=4, noise=False).numpy()  # the decoder mean at the same x_0: no 1/Pi_1 term
    cov = W.T @ W / PI0
    assert (np.abs(np.cov(mean.T) - cov) < 5 * se + 1e-3).all()
    assert (s - mean).std() == pytest.approx(1 / math.sqrt(PI1), rel=0.03)


# --------------------------------------------------------------------------- training
def test_training_step_is_standard_pc(linear):
    """The plain model's update is StandardPC's: relax from the prior sweep, local gradients."""
    m, x = linear
    xb = torch.as_tensor(x[:16])
    net = m.network_
    r = relax(net, m._start(net, xb), m._inference())
    ours = m._local_gradients(net, r.eps, r.peps, r.fx, None)
    ref, _ = StandardPC(m._inference()).gradients(net, data=xb)
    assert all(torch.allclose(a, b_, atol=1e-12) for a, b_ in zip(ours, ref))


def test_training_lowers_the_energy():
    rng = np.random.default_rng(5)
    x = np.tanh(rng.normal(size=(128, 2)) @ rng.normal(size=(2, 6)))
    m = PCGenerative((2, 6), "tanh", epochs=8, batch_size=32, lr=0.02, inference_steps=20, dt=2.0).fit(x)
    assert m.energy_[-1] < 0.8 * m.energy_[0]


def test_mcpc_gradient_has_the_posterior_covariance_term(linear):
    """MCPC averages the local rule over posterior samples: its dE/dW tends to the expected gradient
    -Pi_1 E[x_0^T (x - x_0 W - b)] / B, which carries the posterior covariance (MAP PC's does not)."""
    m, x = linear
    xb = torch.as_tensor(x[:1]).repeat(2000, 1)        # 2000 chains on one example
    net = m.network_
    mode = relax(net, m._start(net, xb), m._inference())
    m2 = PCGenerative(**{**m.get_params(), "burn_in": 300, "mc_samples": 100, "dt": 0.04})
    m2.network_ = net
    grads = m2._mcpc_gradients(net, mode, None, torch.Generator().manual_seed(0))
    W, b, m0 = params(m)
    mean, cov = exact_posterior(m, x[:1])
    expected = -PI1 * (mean.T @ (x[:1] - b) - (mean.T @ mean + cov) @ W)
    map_grad = -PI1 * (mean.T @ (x[:1] - b - mean @ W))
    got = grads[0][0].numpy()
    assert np.abs(got - expected).max() < 0.15 * np.abs(expected - map_grad).max()


def test_mcpc_fit_is_seeded():
    x = linear_data(64)
    kw = dict(activation="linear", epochs=2, batch_size=32, lr=0.01, inference_steps=10, learning="mcpc", mc_samples=3,
              burn_in=2)
    a, b = PCGenerative((d, D), seed=3, **kw).fit(x), PCGenerative((d, D), seed=3, **kw).fit(x)
    c = PCGenerative((d, D), seed=4, **kw).fit(x)
    assert torch.equal(a.network_.weights[0], b.network_.weights[0])
    assert not torch.equal(a.network_.weights[0], c.network_.weights[0])


# --------------------------------------------------------------------------- Monte Carlo PC's sampler
def test_langevin_samples_match_the_exact_posterior(linear):
    """4000 independent Langevin chains on one example: sample mean and covariance equal the exact
    Gaussian posterior within sampling error (step 0.005: the discretisation bias, <1 %, is below it)."""
    m, x = linear
    n = 4000
    xs = np.repeat(x[:1], n, 0)
    s = m.posterior_samples(xs, 1, burn_in=1200, dt=0.05, seed=7)[0].numpy()
    mean, cov = exact_posterior(m, x[:1])
    se_mean = np.sqrt(np.diag(cov) / n)
    assert (np.abs(s.mean(0) - mean[0]) < 5 * se_mean).all()
    se_cov = np.sqrt((np.diag(cov)[:, None] * np.diag(cov)[None] + cov ** 2) / n)
    assert (np.abs(np.cov(s.T) - cov) < 5 * se_cov + 0.01 * np.abs(cov).max()).all()
    again = m.posterior_samples(xs[:3], 2, burn_in=5, thin=3, seed=7)
    assert again.shape == (2, 3, d)
    assert torch.equal(again, m.posterior_samples(xs[:3], 2, burn_in=5, thin=3, seed=7))
    assert not torch.equal(again, m.posterior_samples(xs[:3], 2, burn_in=5, thin=3, seed=8))


def test_preconditioned_langevin_relaxation_samples_the_posterior(linear):
    """The inference option itself: relax(temperature=1, precondition=True) from the prior sweep,
    noise scaled by 1/sqrt(Pi_0), ends at samples of the exact posterior (3000 chains)."""
    m, x = linear
    net = m.network_
    xs = torch.as_tensor(np.repeat(x[1:2], 3000, 0))
    cfg = InferenceConfig(steps=1500, dt=0.025, tau=10.0, temperature=1.0, precondition=True, max_growth=1e6, seed=2)
    s = relax(net, init_state(net, data=xs), cfg).state.x[0][0].numpy()
    mean, cov = exact_posterior(m, x[1:2])
    assert (np.abs(s.mean(0) - mean[0]) < 5 * np.sqrt(np.diag(cov) / len(s))).all()
    se_cov = np.sqrt((np.diag(cov)[:, None] * np.diag(cov)[None] + cov ** 2) / len(s))
    assert (np.abs(np.cov(s.T) - cov) < 5 * se_cov + 0.01 * np.abs(cov).max()).all()
    again = relax(net, init_state(net, data=xs[:4]), replace(cfg, steps=3)).state.x[0]
    assert torch.equal(again, relax(net, init_state(net, data=xs[:4]), replace(cfg, steps=3)).state.x[0])


def test_noisy_relaxation_is_refused_with_compile_or_momentum():
    for kw in ({"compile": True}, {"momentum": 0.5}):
        with pytest.raises(ConfigError, match="temperature"):
            InferenceConfig(temperature=1.0, **kw)
    with pytest.raises(ConfigError, match="temperature"):
        InferenceConfig(temperature=-1.0)


# --------------------------------------------------------------------------- curvature-preconditioned relaxation
def _random_linear_network(seed):
    """A linear generative network of random depth and widths whose precisions span 1e-2..1e4 and
    whose weights are rescaled by 0.1..30: curvatures from tiny to huge, the regime that learned
    precisions and growing weights reach."""
    from pcsim.network import PCNetwork

    g = np.random.default_rng(seed)
    sizes = tuple(int(v) for v in g.integers(1, 10, size=g.integers(2, 5)))
    prec = [float(10 ** g.uniform(-2, 4)) for _ in sizes[1:]]
    net = PCNetwork.init(sizes, "linear", mode="generative", seed=seed, precision=prec,
                         prior_precision=float(10 ** g.uniform(-2, 3)), dtype=torch.float64)
    for w in net.weights:
        w.mul_(10 ** g.uniform(-1, 1.5))
    return net, torch.as_tensor(g.normal(size=(6, sizes[-1])) * 3)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10 ** 6), eta=st.floats(0.05, 0.95))
def test_curvature_preconditioned_relaxation_never_raises_the_energy(seed, eta):
    """For any precisions and weight scales, Euler steps preconditioned by the curvature bound with
    dt/tau < 1 descend a linear network's (quadratic) energy at every step, to rounding: the bound
    H <= 2 diag(c) makes dt/tau lambda_max(C^-1 H) < 2."""
    net, x = _random_linear_network(seed)
    cfg = InferenceConfig(steps=60, dt=eta, tau=1.0, precondition="curvature", record=True)
    e = relax(net, init_state(net, data=x), cfg).trace["energy"].sum((1, 2, 3))
    assert (np.diff(e) <= 1e-9 * np.abs(e[:-1]) + 1e-12).all()


def test_curvature_bound_dominates_the_hessian():
    """2 diag(c) - H is positive semi-definite, with H the exact Hessian (autograd) of a linear
    network's energy in its free layers; and the bound is not vacuous: lambda_max(C^-1 H) > 1/2."""
    from pcsim.energy import energy
    from pcsim.inference import curvature_bound

    for seed in range(8):
        net, x = _random_linear_network(seed)
        xs = init_state(net, data=x[:1]).x
        widths = net.sizes[:-1]

        def e(z):
            parts = list(torch.split(z, list(widths)))
            return energy(net, [p.reshape(1, 1, -1) for p in parts] + [xs[-1]]).sum()

        H = torch.autograd.functional.hessian(e, torch.cat([t.reshape(-1) for t in xs[:-1]]))
        c = torch.cat([b.reshape(-1).expand(n) for b, n in zip(
            curvature_bound(net.spec, net.weights, net.precision(), net.prior_log_precision.exp(),
                            range(net.depth)), widths)])
        scaled = H / torch.sqrt(c[:, None] * c[None])
        lam = torch.linalg.eigvalsh(scaled)
        assert lam[-1] <= 2 + 1e-9 and lam[-1] > 0.5, (seed, lam[-1])


def test_unpreconditioned_step_on_the_same_networks_diverges():
    """The invariant above can fail: plain Euler steps of the same size diverge on most of them."""
    diverged = 0
    for seed in range(10):
        net, x = _random_linear_network(seed)
        try:
            relax(net, init_state(net, data=x), InferenceConfig(steps=60, dt=0.5, tau=1.0))
        except InferenceDivergenceError:
            diverged += 1
    assert diverged >= 5


@pytest.fixture(scope="module")
def digits_train():
    from pcsim.generative.data import dequantise, digits

    data = digits(0.2, 0)
    return dequantise(data.x_train, data.levels, 0)


def test_hybrid_pc_with_growing_precisions_trains_with_the_curvature_step(digits_train):
    """Hybrid PC with learned precisions on the digits (lr 1e-2, so that it happens in seconds; at the
    configs' 1e-3 by epoch ~30): with plain Euler steps (dt/tau = 0.1) the relaxation diverges by
    epoch ~5 as Pi_2 ||W_2||^2 pushes lambda_max(H) past 2 / 0.1; preconditioned by the curvature
    bound it trains 12 epochs while the precisions grow past 10, and the energy of every training
    relaxation fell (the loop's descent check, criterion 3, passed at each batch)."""
    kw = dict(inference_steps=5, learn_precision=True, epochs=12, lr=1e-2, seed=0)
    with pytest.raises(LearningDivergenceError, match="inference diverged"):
        HybridPC((8, 64, 64), "tanh", dt=1.0, tau=10.0, **kw).fit(digits_train)
    m = HybridPC((8, 64, 64), "tanh", dt=0.5, tau=1.0, precondition="curvature", **kw).fit(digits_train)
    pis = [float(p.exp()) for p in m.network_.log_precision]
    assert min(pis) > 10.0, pis  # they grew from 1, far past what plain Euler steps of 0.1 survive
    assert np.isfinite(m.energy_).all()


# --------------------------------------------------------------------------- hybrid PC
def test_hybrid_starts_closer_to_the_mode():
    """With the trained amortiser, the energy after k steps is below plain PC's after k steps from
    the prior mean (same network), for small k: its excess over the relaxed minimum is under half."""
    rng = np.random.default_rng(6)
    x = np.tanh(rng.normal(size=(256, 2)) @ rng.normal(size=(2, 6)) * 1.5)
    m = HybridPC((2, 6), "tanh", precision=4.0, epochs=15, batch_size=32, lr=0.01, amortiser_lr=0.02,
                 inference_steps=5, dt=0.5, tau=10.0).fit(x)
    floor = float(m.relax(x, steps=300, start="prior").energy.sum())
    for k in (0, 1, 2, 3):
        hybrid = float(m.relax(x, steps=k).energy.sum()) - floor
        plain = float(m.relax(x, steps=k, start="prior").energy.sum()) - floor
        assert hybrid < 0.5 * plain, (k, hybrid, plain)


# --------------------------------------------------------------------------- conditional prior
def test_conditional_prior_learns_label_dependent_means():
    """Latent means that depend on the label: the learned per-label prior means, decoded, land on
    each label's data mean (identifiable up to the decoder, so compared in data space)."""
    rng = np.random.default_rng(8)
    centres = np.array([[2.0, 0.0], [-2.0, 0.0], [0.0, 2.0]])
    u = rng.integers(0, 3, 600)
    z = centres[u] + 0.3 * rng.normal(size=(600, 2))
    x = z @ rng.normal(size=(2, D)) + 0.1 * rng.normal(size=(600, D))
    m = ConditionalPC((2, D), "linear", precision=1.0, epochs=60, batch_size=600, lr=0.05, inference_steps=20,
                      dt=1.0, tau=10.0).fit(x, u)
    decoded = m.decode(m.prior_mean_).numpy()
    means = np.stack([x[u == k].mean(0) for k in range(3)])
    between = np.linalg.norm(means[:, None] - means[None], axis=-1).max()
    assert np.linalg.norm(decoded - means, axis=-1).max() < 0.1 * between  # one shared prior mean: 0.56
    assert m.prior_mean_.shape == (3, 2) and m.prior_log_precision_.shape == (3,)
    assert m.sample(4, aux=[0, 1, 2, 0]).shape == (4, D)


def test_conditional_log_likelihood_is_exact_per_label():
    """Linear ConditionalPC: log p(x | u) = log N(x; m_u W + b, W^T W / Pi_u + I / Pi_1) with the
    learned tables (checks that every example meets its own label's prior, K samples tiled)."""
    rng = np.random.default_rng(9)
    x = linear_data(60, seed=9)
    u = rng.integers(0, 3, 60)
    m = ConditionalPC((d, D), "linear", precision=PI1, epochs=3, batch_size=20, lr=0.05, inference_steps=300,
                      dt=2.0, tau=10.0).fit(x, u)
    W, b, _ = params(m)
    means, pis = m.prior_mean_.numpy(), m.prior_log_precision_.exp().numpy()
    assert np.ptp(pis) > 0 and np.ptp(means, 0).max() > 0          # the tables did learn apart
    exact = np.array([multivariate_normal(means[k] @ W + b, W.T @ W / pis[k] + np.eye(D) / PI1).logpdf(xi)
                      for xi, k in zip(x[:12], u[:12])])
    ll = m.log_likelihood(x[:12], u[:12], samples=16)
    assert np.abs(ll.per_example.numpy() - exact).max() < 1e-8


# --------------------------------------------------------------------------- bad input
bad_matrices = st.one_of(
    st.tuples(st.integers(0, 4), st.integers(0, D - 1), st.sampled_from([np.nan, np.inf, -np.inf])).map(
        lambda t: ("nonfinite", t)),
    st.integers(1, 9).filter(lambda w: w != D).map(lambda w: ("width", w)),
    st.just(("ndim", 1)),
)


def make_bad(kind):
    what, arg = kind
    if what == "nonfinite":
        x = np.zeros((5, D))
        x[arg[0], arg[1]] = arg[2]
        return x
    if what == "width":
        return np.zeros((5, arg))
    return np.zeros(D)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=bad_matrices, method=st.sampled_from(["encode", "log_likelihood", "elbo", "posterior_samples", "relax"]))
def test_bad_x_is_a_data_error_naming_x(linear, kind, method):
    m, _ = linear
    call = {"posterior_samples": lambda x: m.posterior_samples(x, 1, 0)}.get(method, getattr(m, method))
    with pytest.raises(DataError, match=r"\bx\b"):
        call(make_bad(kind))


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.sampled_from([(2, 5, d + 1), (5, d), (2, 5, 1), (2, 4, d)]), nan=st.booleans())
def test_bad_z_is_a_data_error_naming_z(linear, shape, nan):
    m, x = linear
    z = np.zeros(shape)
    if nan:
        z.flat[0] = np.nan
    with pytest.raises(DataError, match=r"\bz\b"):
        m.log_joint(x[:5], z)
    if shape[-1] != d or nan:  # decode takes any (N, d) or (N, n_0)
        with pytest.raises(DataError, match=r"\bz\b"):
            m.decode(z.reshape(-1, shape[-1]))


@pytest.mark.parametrize("param, value", [("inference_steps", -1), ("lr", 0.0), ("learning", "gibbs"),
                                          ("batch_size", 0), ("dtype", "float16"), ("burn_in", -2)])
def test_bad_hyper_parameter_is_a_config_error_naming_it(param, value):
    with pytest.raises(ConfigError, match=param):
        PCGenerative((d, D), **{param: value}).fit(np.zeros((4, D)))


def test_other_bad_arguments_name_themselves(linear):
    m, x = linear
    with pytest.raises(DataError, match="sizes"):
        PCGenerative((d, D + 1)).fit(x)
    with pytest.raises(ConfigError, match="sizes"):
        PCGenerative((0, D)).fit(x)
    with pytest.raises(ConfigError, match=r"\bn\b"):
        m.sample(0)
    for kw, name in (({"n": 0}, "n"), ({"n": 1, "burn_in": -1}, "burn_in"), ({"n": 1, "thin": 0}, "thin"),
                     ({"n": 1, "dt": 0.0}, "dt")):
        with pytest.raises(ConfigError, match=name):
            m.posterior_samples(x[:2], **kw)
    with pytest.raises(ConfigError, match="start"):
        m.relax(x[:2], start="amortised")
    with pytest.raises(ConfigError, match="steps"):
        m.relax(x[:2], steps=-1)
    with pytest.raises(ConfigError, match="not fitted"):
        PCGenerative((d, D)).encode(x)


def test_conditional_pc_requires_aux_in_range():
    x = linear_data(30)
    with pytest.raises(DataError, match="aux"):
        ConditionalPC((d, D), "linear", epochs=1).fit(x)
    m = ConditionalPC((d, D), "linear", epochs=1, batch_size=30, inference_steps=3).fit(x, np.arange(30) % 3)
    for call in (lambda: m.encode(x), lambda: m.sample(3), lambda: m.log_likelihood(x)):
        with pytest.raises(DataError, match="aux"):
            call()
    with pytest.raises(DataError, match=r"aux\[1\] = 3"):
        m.encode(x[:2], [0, 3])
    with pytest.raises(DataError, match="aux"):
        m.sample(2, aux=[0, 5])


def test_learning_blow_up_names_lr():
    x = linear_data(64) * 30
    with pytest.raises(LearningDivergenceError, match="lr"):
        PCGenerative((d, D), "tanh", epochs=5, batch_size=16, lr=1e3, inference_steps=5).fit(x)


def test_inference_blow_up_names_the_step():
    x = linear_data(16)
    with pytest.raises(InferenceDivergenceError, match="dt/tau") as info:
        PCGenerative((d, D), "linear", precision=50.0, epochs=1, batch_size=16, dt=10.0, tau=1.0).fit(x)
    assert isinstance(info.value, PCSimError)


# --------------------------------------------------------------------------- the precisions' M-step
def _marginal_nll(W, b, m0, log_pi0, log_pi1, x):
    """-mean log N(x; m0 W + b, W^T W / Pi_0 + I / Pi_1) (torch, differentiable in the log-precisions)."""
    cov = W.T @ W / log_pi0.exp() + torch.eye(W.shape[1], dtype=W.dtype) / log_pi1.exp()
    return -torch.distributions.MultivariateNormal(m0 @ W + b, cov).log_prob(x).mean()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_laplace_precision_update_is_the_exact_likelihood_gradient(seed):
    """On a linear-Gaussian network the Laplace posterior is exact, so the variational-Laplace M-step
    (precision_update='laplace': Pi (eps^2 + diag Cov_q eps) - 1) is the gradient of the exact marginal
    -log p(x) in log Pi_1 (Fisher's identity) for random weights and precisions; the rule at the mode
    alone is not (it is biased towards larger precisions, the runaway direction)."""
    rng = np.random.default_rng(seed)
    x = torch.as_tensor(linear_data(80, seed))
    pi1 = float(10 ** rng.uniform(-1, 1))
    m = PCGenerative((d, D), "linear", precision=pi1, prior_precision=PI0, learn_precision=True, epochs=0,
                     inference_steps=0, precision_update="laplace").fit(x)
    net = m.network_
    with torch.no_grad():
        net.weights[0].copy_(torch.as_tensor(rng.normal(size=(1, d, D))))
        net.biases[0].copy_(torch.as_tensor(rng.normal(size=(1, 1, D))) * 0.3)
    r = relax(net, init_state(net, data=x), InferenceConfig(steps=400, dt=0.9, tau=1.0, precondition="curvature"))
    laplace = m._local_gradients(net, r.eps, r.peps, r.fx, None, m._error_variances(net, r.state.x))[2]
    mode = m._local_gradients(net, r.eps, r.peps, r.fx, None)[2]
    lp1 = torch.tensor(math.log(pi1), dtype=torch.float64, requires_grad=True)
    nll = _marginal_nll(net.weights[0][0], net.biases[0][0, 0], net.prior_mean[0, 0],
                        torch.tensor(math.log(PI0), dtype=torch.float64), lp1, x)
    (exact,) = torch.autograd.grad(nll, lp1)
    assert float(laplace) == pytest.approx(float(exact), rel=1e-6, abs=1e-8)
    assert float(mode) < float(exact) - 0.05  # the mode's rule: a lower energy for a larger Pi_1


def test_laplace_prior_precision_update_is_the_exact_likelihood_gradient():
    """The same identity for the conditional prior's per-label precision Pi_u (one label here)."""
    rng = np.random.default_rng(4)
    x = torch.as_tensor(linear_data(60, 4))
    u = np.zeros(60, dtype=int)
    m = ConditionalPC((d, D), "linear", precision=PI1, prior_precision=1.5, epochs=0, inference_steps=0,
                      precision_update="laplace").fit(x, u)
    with torch.no_grad():
        m.network_.weights[0].copy_(torch.as_tensor(rng.normal(size=(1, d, D))))
        m.prior_mean_.copy_(torch.as_tensor(rng.normal(size=(1, d))))
    a = torch.as_tensor(u)
    net = m._view(a)
    r = relax(net, init_state(net, data=x), InferenceConfig(steps=400, dt=0.9, tau=1.0, precondition="curvature"))
    g = m._local_gradients(net, r.eps, r.peps, r.fx, a, m._error_variances(net, r.state.x))[-1]
    lp0 = torch.tensor(math.log(1.5), dtype=torch.float64, requires_grad=True)
    nll = _marginal_nll(net.weights[0][0], net.biases[0][0, 0], m.prior_mean_[0], lp0,
                        torch.tensor(math.log(PI1), dtype=torch.float64), x)
    (exact,) = torch.autograd.grad(nll, lp0)
    assert float(g[0]) == pytest.approx(float(exact), rel=1e-6, abs=1e-8)
