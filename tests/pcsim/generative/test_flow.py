"""The normalizing flow on the generative surface: exact change of variables, zuko's density,
maximum-likelihood training on two moons, determinism under a seed, and bad input refused."""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal
from sklearn.datasets import make_moons

from pcsim.errors import ConfigError, DataError, LearningDivergenceError
from pcsim.generative.flow import Flow

SMALL = dict(transforms=2, hidden=(16, 16), batch_size=100)


@pytest.fixture(scope="module")
def moons():
    x, _ = make_moons(600, noise=0.08, random_state=0)
    xt, _ = make_moons(400, noise=0.08, random_state=1)
    return x, xt


@pytest.fixture(scope="module")
def trained(moons):
    return Flow("realnvp", epochs=60, lr=5e-3, **SMALL).fit(moons[0])


def grid_mass(flow: Flow, lo, hi, n: int = 200) -> float:
    """Riemann sum of exp(log p) over an n x n grid of the box [lo, hi] (midpoints)."""
    xs = [np.linspace(a, b, n, endpoint=False) + (b - a) / (2 * n) for a, b in zip(lo, hi)]
    gx, gy = np.meshgrid(*xs, indexing="ij")
    pts = np.stack([gx.ravel(), gy.ravel()], 1)
    cell = np.prod([(b - a) / n for a, b in zip(lo, hi)])
    return float(flow.log_likelihood(pts).per_example.exp().sum() * cell)


# ------------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("kind", ["realnvp", "nsf"])
def test_untrained_density_integrates_to_one(moons, kind):
    flow = Flow(kind, epochs=0, **SMALL).fit(moons[0])
    # the standardised data have std ~(0.87, 0.5); the box spans more than 8 of them each way
    assert grid_mass(flow, (-7.0, -5.0), (8.0, 6.0)) == pytest.approx(1.0, abs=1e-2)


@pytest.mark.parametrize("kind", ["realnvp", "nsf"])
def test_trained_density_integrates_to_one(moons, trained, kind):
    flow = trained if kind == "realnvp" else Flow("nsf", epochs=3, lr=3e-3, **SMALL).fit(moons[0])
    assert flow.loss_[-1] < flow.loss_[0]  # it did train
    assert grid_mass(flow, (-4.0, -3.0), (5.0, 3.5)) == pytest.approx(1.0, abs=1e-2)


def test_log_likelihood_is_the_change_of_variables_with_an_autograd_jacobian(moons, trained):
    """log p(x) = log N(T^-1(x)) + log|det J_{T^-1}(x)|, the Jacobian from autograd, not zuko's log-det."""
    x = torch.as_tensor(moons[1][:5])
    inverse = trained.flow_().transform
    ll = trained.log_likelihood(x)
    for i in range(5):
        J = torch.autograd.functional.jacobian(lambda v: inverse(v[None])[0], x[i])
        z = inverse(x[i][None])[0].detach()
        ref = -0.5 * float(z @ z) - math.log(2 * math.pi) + float(torch.linalg.slogdet(J)[1])
        assert float(ll.per_example[i]) == pytest.approx(ref, abs=1e-9)
    assert torch.equal(ll.stderr, torch.zeros(5))


def test_log_likelihood_equals_zuko_log_prob_and_every_view_of_it(moons, trained):
    xt = torch.as_tensor(moons[1])
    ll = trained.log_likelihood(xt).per_example
    with torch.no_grad():
        ref = trained.flow_().log_prob(xt)
    torch.testing.assert_close(ll, ref, rtol=0, atol=1e-12)
    torch.testing.assert_close(trained.elbo(xt), ll, rtol=0, atol=0)
    lj = trained.log_joint(xt, torch.zeros(3, len(xt), 2))
    assert lj.shape == (3, len(xt)) and torch.equal(lj[2], ll)


def test_encode_decode_are_inverse_and_the_latent_is_a_point_mass(moons, trained):
    x = torch.as_tensor(moons[1])
    q = trained.encode(x)
    assert torch.isneginf(q.log_var).all()
    torch.testing.assert_close(trained.decode(q.mean), x, rtol=0, atol=1e-9)
    torch.testing.assert_close(q.sample(2, torch.Generator().manual_seed(0))[1], q.mean)


def test_training_beats_a_single_gaussian_on_two_moons(moons, trained):
    x, xt = moons
    gaussian = multivariate_normal(x.mean(0), np.cov(x.T)).logpdf(xt).mean()
    untrained = Flow("realnvp", epochs=0, **SMALL).fit(x).log_likelihood(xt).mean
    flow = trained.log_likelihood(xt).mean
    assert untrained < gaussian + 0.1          # the untrained flow is about the standardising Gaussian
    assert flow > gaussian + 0.4, (flow, gaussian)


def test_on_gaussian_data_the_trained_flow_reaches_the_closed_form_likelihood():
    """On x ~ N(m, C) (correlated) the exact test log-likelihood is log N(x; m, C); the flow starts at
    the standardising diagonal Gaussian (0.9 nats below) and learns the correlation."""
    truth = multivariate_normal([1.0, -2.0], [[2.0, 1.6], [1.6, 2.0]])
    x, xt = truth.rvs(1000, random_state=1), truth.rvs(1000, random_state=2)
    exact = truth.logpdf(xt).mean()
    assert Flow("realnvp", epochs=0, **SMALL).fit(x).log_likelihood(xt).mean < exact - 0.5
    assert Flow("realnvp", epochs=10, lr=5e-3, **SMALL).fit(x).log_likelihood(xt).mean == pytest.approx(exact, abs=0.03)


def test_samples_follow_the_data(moons, trained):
    s = trained.sample(2000, seed=3)
    assert torch.equal(s, trained.sample(2000, seed=3)) and not torch.equal(s, trained.sample(2000, seed=4))
    x = moons[0]
    np.testing.assert_allclose(s.mean(0).numpy(), x.mean(0), atol=0.1)
    np.testing.assert_allclose(s.std(0).numpy(), x.std(0), atol=0.1)


# ------------------------------------------------------------------------------- seeds
def test_fit_is_deterministic_under_its_seed_and_leaves_the_global_generator_alone(moons):
    x, xt = moons
    state = torch.get_rng_state()
    a = Flow("realnvp", epochs=2, **SMALL).fit(x).log_likelihood(xt).per_example
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)  # the global seed must not matter
    b = Flow("realnvp", epochs=2, **SMALL).fit(x).log_likelihood(xt).per_example
    c = Flow("realnvp", epochs=2, seed=1, **SMALL).fit(x).log_likelihood(xt).per_example
    assert torch.equal(a, b) and not torch.equal(a, c)


# ------------------------------------------------------------------------------- bad input
BAD_PARAMETERS = st.one_of(
    st.tuples(st.just("kind"), st.sampled_from(["maf", "", "RealNVP", 3])),
    st.tuples(st.just("transforms"), st.one_of(st.integers(max_value=0), st.floats(0.5, 9.5), st.just(True))),
    st.tuples(st.just("hidden"), st.sampled_from([(), (0,), (16, -1), (2.5,), "wide", 16])),
    st.tuples(st.just("bins"), st.one_of(st.integers(max_value=1), st.just(4.5))),
    st.tuples(st.just("epochs"), st.one_of(st.integers(max_value=-1), st.just(1.5))),
    st.tuples(st.just("batch_size"), st.one_of(st.integers(max_value=0), st.just(False))),
    st.tuples(st.just("lr"), st.one_of(st.floats(max_value=0), st.just(float("nan")), st.just(float("inf")), st.just("fast"))),
    st.tuples(st.just("seed"), st.one_of(st.integers(max_value=-1), st.just(0.5))),
    st.tuples(st.just("standardize"), st.sampled_from([1, "yes", None])),
    st.tuples(st.just("device"), st.sampled_from(["gpu", "tpu:0", 3, None] + ([] if torch.cuda.is_available() else ["cuda"]))),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=BAD_PARAMETERS)
def test_bad_hyper_parameters_raise_config_error_naming_them(moons, bad):
    name, value = bad
    with pytest.raises(ConfigError, match=name):
        Flow(**{**SMALL, "epochs": 1, name: value}).fit(moons[0][:100])


@pytest.mark.parametrize("where", [(0, 0), (17, 1)])
@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_data_is_refused_naming_x(moons, trained, where, value):
    x = moons[1].copy()
    x[where] = value
    with pytest.raises(DataError, match=rf"x .*\[{where[0]}, {where[1]}\]"):
        Flow(epochs=1, **SMALL).fit(x)
    with pytest.raises(DataError, match=r"x "):
        trained.log_likelihood(x)


def test_wrong_shapes_are_refused_naming_the_array(moons, trained):
    with pytest.raises(DataError, match="x has 3 features"):
        trained.log_likelihood(np.zeros((4, 3)))
    with pytest.raises(DataError, match="x has 1 feature"):
        Flow(epochs=1, **SMALL).fit(np.zeros((10, 1)))
    with pytest.raises(DataError, match="z has 3 features"):
        trained.decode(np.zeros((4, 3)))
    with pytest.raises(DataError, match=r"z must be \(K, N, d\)"):
        trained.log_joint(moons[1][:4], torch.zeros(4, 2))
    with pytest.raises(ConfigError, match="not fitted"):
        Flow().sample(3)


@pytest.mark.parametrize("call", ["sample_n", "sample_seed", "ll_samples", "ll_seed"])
def test_bad_draw_arguments_are_named(moons, trained, call):
    name, run = {
        "sample_n": ("n", lambda: trained.sample(0)),
        "sample_seed": ("seed", lambda: trained.sample(3, seed=-2)),
        "ll_samples": ("samples", lambda: trained.log_likelihood(moons[1], samples=2.5)),
        "ll_seed": ("seed", lambda: trained.elbo(moons[1], seed="a")),
    }[call]
    with pytest.raises(ConfigError, match=name):
        run()


def test_a_learning_rate_that_blows_up_is_a_learning_divergence_naming_lr(moons):
    with pytest.raises(LearningDivergenceError, match="lr=1e\\+06") as info:
        Flow("realnvp", epochs=5, lr=1e6, **SMALL).fit(moons[0])
    assert info.value.epoch is not None


@pytest.mark.parametrize("progress", [True, False])
def test_training_shows_a_progress_bar_only_when_asked(moons, capsys, progress):
    Flow("realnvp", epochs=1, progress=progress, **SMALL).fit(moons[0])
    assert ("flow (realnvp)" in capsys.readouterr().err) is progress
