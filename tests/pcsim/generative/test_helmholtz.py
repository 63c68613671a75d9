"""The Helmholtz machine: its log-density against a closed form, wake-sleep and reweighted
wake-sleep improving the likelihood on toy problems, seeds, and bad input refused."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

from pcsim.errors import ConfigError, DataError, LearningDivergenceError
from pcsim.generative.helmholtz import HelmholtzMachine

d, D, S = 2, 6, 0.3
LINEAR = dict(sizes=(d, D), activation="linear", recognition_hidden=(), samples=10, batch_size=20, lr=2e-2)


@pytest.fixture(scope="module")
def linear_gaussian():
    """x = A z + b + S eps, z ~ N(0, I_2), A with orthogonal columns (so the exact posterior is diagonal)."""
    rng = np.random.default_rng(0)
    Q = np.linalg.qr(rng.normal(size=(D, D)))[0]
    A, b = Q[:, :d] * np.array([2.0, 1.0]), rng.normal(size=D)

    def make(n):
        return rng.normal(size=(n, d)) @ A.T + b + S * rng.normal(size=(n, D))

    x, xt = make(200), make(200)
    exact = multivariate_normal(b, A @ A.T + S ** 2 * np.eye(D)).logpdf(xt)
    return A, b, x, xt, exact


@pytest.fixture(scope="module")
def two_clusters():
    """Binary vectors (10 pixels) from two prototypes, each pixel flipped with probability 0.1."""
    rng = np.random.default_rng(1)
    protos = np.array([[1, 1, 1, 1, 0, 0, 0, 0, 1, 0], [0, 0, 0, 0, 1, 1, 1, 1, 0, 1]], float)

    def make(n):
        p = np.where(protos[rng.integers(0, 2, n)] == 1, 0.9, 0.1)
        return (rng.random(p.shape) < p).astype(float)

    return make(200), make(200)


def set_to_truth(m: HelmholtzMachine, A, b):
    """The generative path := the true linear-Gaussian model; the recognition network := its exact posterior."""
    precision = 1 + (A ** 2).sum(0) / S ** 2                      # diagonal: A's columns are orthogonal
    gain = A / precision / S ** 2                                 # (D, d): posterior mean = (x - b) @ gain
    with torch.no_grad():
        m.weights_[0].copy_(torch.as_tensor(A.T)[None])
        m.biases_[0].copy_(torch.as_tensor(b)[None, None])
        m.log_sigma_.fill_(np.log(S))
        m.recognition_weights_[0].copy_(torch.as_tensor(np.concatenate([gain, np.zeros((D, d))], 1))[None])
        m.recognition_biases_[0].copy_(torch.as_tensor(np.concatenate([-b @ gain, -np.log(precision)]))[None, None])


# ------------------------------------------------------------------------------- the density
def test_log_likelihood_and_elbo_are_exact_with_the_true_model_and_its_exact_posterior(linear_gaussian):
    A, b, x, xt, exact = linear_gaussian
    m = HelmholtzMachine(epochs=0, **LINEAR).fit(x)
    set_to_truth(m, A, b)
    ll = m.log_likelihood(xt, samples=20, seed=1)
    np.testing.assert_allclose(ll.per_example.numpy(), exact, rtol=0, atol=1e-9)   # every weight p(x,z)/q(z|x) is p(x)
    assert ll.stderr.max() < 1e-6
    np.testing.assert_allclose(m.elbo(xt, samples=3).numpy(), exact, rtol=0, atol=1e-9)


def test_ancestral_samples_have_the_model_marginal(linear_gaussian):
    A, b, x, _, _ = linear_gaussian
    m = HelmholtzMachine(epochs=0, **LINEAR).fit(x)
    set_to_truth(m, A, b)
    s = m.sample(20000, seed=5).numpy()
    assert np.array_equal(s, m.sample(20000, seed=5).numpy())
    np.testing.assert_allclose(s.mean(0), b, atol=0.05)
    np.testing.assert_allclose(np.cov(s.T), A @ A.T + S ** 2 * np.eye(D), atol=0.12)
    mean = m.sample(20000, seed=5, noise=False).numpy()  # the decoder mean at the same z
    np.testing.assert_allclose(np.cov(mean.T), A @ A.T, atol=0.12)
    assert (s - mean).std() == pytest.approx(S, rel=0.03)


def test_log_joint_is_differentiable_in_z_and_not_in_the_weights(linear_gaussian):
    A, b, x, xt, _ = linear_gaussian
    m = HelmholtzMachine(epochs=1, **LINEAR).fit(x)
    z = torch.zeros(2, 5, d, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(m.log_joint(xt[:5], z).sum(), z)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert not any(p.requires_grad for p in (*m.weights_, *m.recognition_weights_))


# ------------------------------------------------------------------------------- learning
def test_wake_sleep_improves_the_likelihood_over_epochs_towards_the_exact_value(linear_gaussian):
    A, b, x, xt, exact = linear_gaussian
    ll = [HelmholtzMachine(epochs=e, **LINEAR).fit(x).log_likelihood(xt, samples=100).mean for e in (0, 10, 40)]
    assert ll[0] < ll[1] - 1.0 < ll[2] - 2.0, ll
    assert exact.mean() - 0.5 < ll[2] < exact.mean() + 0.1, (ll, exact.mean())


def test_wake_sleep_improves_the_likelihood_of_binary_clusters(two_clusters):
    x, xt = two_clusters
    kw = dict(sizes=(1, 10), activation="linear", observation="bernoulli", recognition_hidden=(8,), batch_size=20, lr=2e-2)
    ll = [HelmholtzMachine(epochs=e, **kw).fit(x).log_likelihood(xt, samples=100) for e in (0, 10, 40)]
    assert ll[0].mean < ll[1].mean - 1.0 and ll[1].mean < ll[2].mean - 5 * ll[2].stderr_of_mean, [v.mean for v in ll]


def test_reweighted_wake_sleep_beats_wake_sleep_on_the_same_number_of_updates(linear_gaussian):
    """Bornschein & Bengio 2015: K = 10 importance samples per example, same epochs, batches and seed."""
    _, _, x, xt, _ = linear_gaussian
    ws = HelmholtzMachine(epochs=10, **LINEAR).fit(x).log_likelihood(xt, samples=100)
    rws = HelmholtzMachine(epochs=10, reweighted=True, **LINEAR).fit(x).log_likelihood(xt, samples=100)
    assert rws.mean > ws.mean + 1.0 > ws.mean + 10 * (rws.stderr_of_mean + ws.stderr_of_mean), (ws.mean, rws.mean)


def test_fit_is_deterministic_under_its_seed(linear_gaussian):
    _, _, x, xt, _ = linear_gaussian
    state = torch.get_rng_state()
    a = HelmholtzMachine(epochs=2, reweighted=True, **LINEAR).fit(x)
    assert torch.equal(torch.get_rng_state(), state)
    b = HelmholtzMachine(epochs=2, reweighted=True, **LINEAR).fit(x)
    c = HelmholtzMachine(epochs=2, reweighted=True, **{**LINEAR, "seed": 1}).fit(x)
    assert np.array_equal(a.loss_, b.loss_) and torch.equal(a.weights_[0], b.weights_[0])
    assert not torch.equal(a.weights_[0], c.weights_[0])


# ------------------------------------------------------------------------------- bad input
BAD_PARAMETERS = st.one_of(
    st.tuples(st.just("sizes"), st.sampled_from([(), (6,), (0, 6), (2.5, 6), "ab", (-1, 6)])),
    st.tuples(st.just("activation"), st.sampled_from(["softplus", "", ["tanh", "tanh"], 3])),
    st.tuples(st.just("observation"), st.sampled_from(["poisson", "", "Gaussian", None])),
    st.tuples(st.just("recognition_hidden"), st.sampled_from([(0,), (1.5,), "x", (8, -2)])),
    st.tuples(st.just("reweighted"), st.sampled_from([1, "yes", None])),
    st.tuples(st.just("samples"), st.one_of(st.integers(max_value=0), st.just(2.5), st.just(True))),
    st.tuples(st.just("epochs"), st.one_of(st.integers(max_value=-1), st.just(1.5))),
    st.tuples(st.just("batch_size"), st.one_of(st.integers(max_value=0), st.just(True))),
    st.tuples(st.just("lr"), st.one_of(st.floats(max_value=0), st.just(float("nan")), st.just(float("inf")))),
    st.tuples(st.just("seed"), st.one_of(st.integers(max_value=-1), st.just(0.5))),
    st.tuples(st.just("device"), st.sampled_from(["gpu", "tpu:0", 3, None] + ([] if torch.cuda.is_available() else ["cuda"]))),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=BAD_PARAMETERS)
def test_bad_hyper_parameters_raise_config_error_naming_them(linear_gaussian, bad):
    name, value = bad
    with pytest.raises(ConfigError, match=name):
        HelmholtzMachine(**{**LINEAR, "epochs": 1, name: value}).fit(linear_gaussian[2][:40])


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_data_is_refused_naming_x_and_the_index(linear_gaussian, value):
    x = linear_gaussian[2].copy()
    x[7, 3] = value
    with pytest.raises(DataError, match=r"x .*\[7, 3\]"):
        HelmholtzMachine(epochs=1, **LINEAR).fit(x)


def test_data_the_observation_model_cannot_hold_are_refused(linear_gaussian, two_clusters):
    x = two_clusters[0].copy()
    x[4, 2] = 1.5
    with pytest.raises(DataError, match=r"x\[4, 2\] = 1.5 .*bernoulli"):
        HelmholtzMachine(sizes=(1, 10), observation="bernoulli", epochs=1).fit(x)
    with pytest.raises(DataError, match="sizes ends in 5"):
        HelmholtzMachine(**{**LINEAR, "sizes": (2, 5)}, epochs=1).fit(linear_gaussian[2])


def test_wrong_shapes_and_unfitted_models_are_refused_naming_the_array(linear_gaussian):
    _, _, x, xt, _ = linear_gaussian
    with pytest.raises(ConfigError, match="not fitted"):
        HelmholtzMachine().encode(xt)
    m = HelmholtzMachine(epochs=0, **LINEAR).fit(x)
    with pytest.raises(DataError, match="x has 4 features"):
        m.log_likelihood(xt[:, :4])
    with pytest.raises(DataError, match="z has 3 features"):
        m.decode(np.zeros((5, 3)))
    with pytest.raises(DataError, match=r"z must be \(K, N, d\)"):
        m.log_joint(xt[:5], torch.zeros(2, 4, d))
    with pytest.raises(ConfigError, match="samples"):
        m.log_likelihood(xt, samples=0)
    with pytest.raises(ConfigError, match="n must be"):
        m.sample(-3)


def test_a_learning_rate_that_blows_up_is_a_learning_divergence_naming_lr(linear_gaussian):
    with pytest.raises(LearningDivergenceError, match=r"lr=1e\+08"):
        HelmholtzMachine(**{**LINEAR, "lr": 1e8}, epochs=5).fit(linear_gaussian[2])


@pytest.mark.parametrize("reweighted", [True, False])
def test_training_shows_a_progress_bar_only_when_asked(linear_gaussian, capsys, reweighted):
    HelmholtzMachine(**LINEAR, epochs=1, reweighted=reweighted, progress=True).fit(linear_gaussian[2])
    err = capsys.readouterr().err
    assert "wake-sleep" in err and ("reweighted wake-sleep" in err) is reweighted
    HelmholtzMachine(**LINEAR, epochs=1, reweighted=reweighted).fit(linear_gaussian[2])
    assert "wake-sleep" not in capsys.readouterr().err
