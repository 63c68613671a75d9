"""The generative data sets: digits and their dequantisation, MNIST-1D from its offline
generator, and the nonlinear-ICA generator (seeded, invertible, segment variances as drawn)."""

import math
import random
import socket

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsim.errors import ConfigError, DataError
from pcsim.generative.data import GenerativeData, dequantise, digits, mnist1d, nonlinear_ica

FAST = settings(max_examples=25, deadline=None)


@pytest.fixture(scope="module")
def digit_data():
    return digits()


# --------------------------------------------------------------------------- digits
def test_digits_on_the_grid_and_split_by_seed(digit_data):
    d = digit_data
    assert d.x_train.shape == (1437, 64) and d.x_test.shape == (360, 64) and d.x_train.dtype == torch.float64
    k = d.x_train * 16
    assert torch.equal(k, k.round()) and float(d.x_train.min()) == 0.0 and float(d.x_train.max()) == 1.0
    # stratified: each class's share of the test split is its share of the whole within one example
    counts_te = np.bincount(d.labels_test.numpy(), minlength=10)
    counts_all = counts_te + np.bincount(d.labels_train.numpy(), minlength=10)
    assert np.all(np.abs(counts_te - counts_all * 360 / 1797) <= 1)
    again, other = digits(seed=0), digits(seed=1)
    assert torch.equal(again.x_test, d.x_test)
    assert not torch.equal(other.x_test, d.x_test)
    # one split of the same 1797 images: train and test together are the whole set
    both = torch.cat([d.x_train, d.x_test])
    from sklearn.datasets import load_digits
    ref = torch.as_tensor(load_digits().data / 16.0)
    assert sorted(map(tuple, both.tolist())) == sorted(map(tuple, ref.tolist()))


def test_digits_test_split_is_the_classification_split(digit_data):
    # the same test images as pcsim.data.load_digits at the same seed (there standardised with the training statistics)
    from pcsim.data import load_digits
    ref = load_digits(split_seed=0)
    raw = digit_data.x_train.numpy() * 16
    mean, std = raw.mean(0), raw.std(0)
    std[std == 0] = 1
    ours = ((digit_data.x_test.numpy() * 16 - mean) / std).astype(np.float32)
    key = lambda a: sorted(map(tuple, np.round(a, 4).tolist()))  # noqa: E731
    assert key(ours) == key(ref.x_test.numpy())


def test_dequantised_digits_lie_in_their_own_cell_inside_the_unit_interval(digit_data):
    y = dequantise(digit_data.x_train, 17, seed=3)
    assert float(y.min()) > 0.0 and float(y.max()) < 1.0
    # each pixel k/16 lands in the cell [k, k+1)/17 it owns
    assert torch.equal(torch.floor(y * 17), digit_data.x_train * 16)
    assert torch.equal(y, dequantise(digit_data.x_train, 17, seed=3))
    assert not torch.equal(y, dequantise(digit_data.x_train, 17, seed=4))


def test_log_jacobian_is_minus_d_log_levels(digit_data):
    assert digit_data.log_jacobian == pytest.approx(-64 * math.log(17), rel=1e-15)
    # a uniform density on [0,1]^64 (log p = 0) is the uniform distribution over the 17^64 images
    assert 0.0 + digit_data.log_jacobian == pytest.approx(-math.log(17.0 ** 64), rel=1e-12)
    continuous = GenerativeData(torch.zeros(2, 3), torch.zeros(2, 3))
    assert continuous.log_jacobian == 0.0


@FAST
@given(st.lists(st.floats(0.01, 1.0), min_size=17, max_size=17), st.integers(0, 2**31 - 1))
def test_dequantised_density_plus_log_jacobian_is_the_discrete_log_probability(weights, seed):
    # a density constant on each cell, p(y) = 17 P_k on [k, k+1)/17: log p(x_deq) + log_jacobian = log P_k exactly
    P = np.asarray(weights) / np.sum(weights)
    k = np.arange(17)
    x = torch.as_tensor(k / 16.0)[:, None]
    y = dequantise(x, 17, seed=seed)
    cell = torch.floor(y * 17).long()[:, 0].numpy()
    log_density = np.log(17 * P[cell])
    log_jacobian = GenerativeData(x, x, levels=17).log_jacobian
    assert np.allclose(log_density + log_jacobian, np.log(P[k]), atol=1e-12)


@FAST
@given(st.floats(-3, 3).filter(lambda v: abs(v * 16 - round(v * 16)) > 1e-3 or not -1e-3 <= v <= 1 + 1e-3))
def test_dequantise_refuses_values_off_the_grid(v):
    x = torch.zeros(3, 2, dtype=torch.float64)
    x[1, 1] = v
    with pytest.raises(DataError, match=r"x\[1, 1\]") as err:
        dequantise(x, 17)
    assert "levels=17" in str(err.value)


def test_dequantise_refuses_nan():
    x = torch.zeros(2, 2)
    x[0, 1] = float("nan")
    with pytest.raises(DataError, match=r"x holds 1 non-finite"):
        dequantise(x)


BAD_DIGITS = {"test_fraction": [0.0, 1.0, -0.5, float("nan"), "a", None], "seed": [-1, 0.5, "a", None, float("inf")]}


@FAST
@given(st.sampled_from(sorted(BAD_DIGITS)).flatmap(lambda k: st.tuples(st.just(k), st.sampled_from(BAD_DIGITS[k]))))
def test_digits_refuses_bad_arguments(case):
    key, value = case
    with pytest.raises(ConfigError) as err:
        digits(**{key: value})
    assert key in str(err.value) and repr(value) in str(err.value)


# --------------------------------------------------------------------------- MNIST-1D
@pytest.fixture
def offline(monkeypatch):
    """Every route to the network fails, and so does mnist1d's download path."""
    def refuse(*a, **k):
        raise AssertionError("network access attempted")
    import mnist1d.data
    import requests
    import urllib.request
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(requests, "get", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    monkeypatch.setattr(mnist1d.data, "get_dataset", refuse)


def test_mnist1d_is_generated_offline_scaled_split_and_seeded(offline):
    random.seed(5)
    np.random.seed(5)
    before = (random.random(), np.random.rand())
    random.seed(5)
    np.random.seed(5)
    d = mnist1d(num_samples=200, seed=1)
    assert (random.random(), np.random.rand()) == before  # the generator's global seeding is undone
    assert d.x_train.shape == (160, 40) and d.x_test.shape == (40, 40)
    both = torch.cat([d.x_train, d.x_test])
    assert float(both.min()) == 0.0 and float(both.max()) == 1.0
    assert np.all(np.bincount(d.labels_test.numpy(), minlength=10) == 4)
    # the same as the package's own generator at that seed, up to the fixed affine scaling
    from mnist1d.data import get_dataset_args, make_dataset
    args = get_dataset_args()
    args.num_samples, args.seed, args.train_split = 200, 1, 1.0
    raw = np.asarray(make_dataset(args)["x"])
    raw = (raw - raw.min()) / (raw.max() - raw.min())
    assert sorted(map(tuple, np.round(raw, 12).tolist())) == sorted(map(tuple, np.round(both.numpy(), 12).tolist()))
    assert torch.equal(mnist1d(num_samples=200, seed=1).x_train, d.x_train)
    assert not torch.equal(mnist1d(num_samples=200, seed=2).x_train, d.x_train)


@pytest.mark.parametrize("n", [15, 205, 0, 10])
def test_mnist1d_refuses_a_sample_count_it_cannot_split_by_class(n):
    with pytest.raises(ConfigError, match="num_samples"):
        mnist1d(num_samples=n)


# --------------------------------------------------------------------------- nonlinear ICA
@pytest.fixture(scope="module")
def ica():
    return nonlinear_ica(n_sources=3, n_segments=5, n_per_segment=400, n_layers=3, seed=7)


def test_ica_is_seeded(ica):
    same = nonlinear_ica(n_sources=3, n_segments=5, n_per_segment=400, n_layers=3, seed=7)
    other = nonlinear_ica(n_sources=3, n_segments=5, n_per_segment=400, n_layers=3, seed=8)
    assert torch.equal(same.x_train, ica.x_train) and torch.equal(same.extra["sources_test"], ica.extra["sources_test"])
    assert not torch.equal(other.x_train, ica.x_train)
    assert not torch.equal(other.extra["mixing"].weights[0], ica.extra["mixing"].weights[0])


def test_ica_is_invertible_with_the_exact_inverse(ica):
    f = ica.extra["mixing"]
    for x, s in ((ica.x_train, ica.extra["sources_train"]), (ica.x_test, ica.extra["sources_test"])):
        assert torch.allclose(f.inverse(x), s, atol=1e-8, rtol=0)
        assert torch.allclose(f(s), x, atol=1e-12, rtol=0)


@settings(max_examples=10, deadline=None)
@given(st.integers(1, 6), st.integers(1, 4), st.floats(0.05, 1.0), st.integers(0, 2**31 - 1))
def test_every_mixing_mlp_is_invertible(d, layers, slope, seed):
    data = nonlinear_ica(n_sources=d, n_segments=2, n_per_segment=20, n_layers=layers, slope=slope, seed=seed)
    f = data.extra["mixing"]
    s = torch.as_tensor(np.random.default_rng(seed).normal(0, 3, (50, d)))
    assert torch.allclose(f.inverse(f(s)), s, atol=1e-8, rtol=0)
    for w in f.weights:  # well conditioned by construction: singular values in [1, 2]
        sv = torch.linalg.svdvals(w)
        assert float(sv.min()) >= 1 - 1e-12 and float(sv.max()) <= 2 + 1e-12


def test_ica_mixing_is_nonlinear_and_aux_is_the_segment(ica):
    f = ica.extra["mixing"]
    a, b = ica.extra["sources_train"][:50], ica.extra["sources_train"][50:100]
    assert float((f(a + b) - f(a) - f(b)).abs().max()) > 0.1
    assert torch.equal(ica.aux_train, ica.labels_train)
    assert ica.aux_train.dtype == torch.int64 and set(ica.aux_train.tolist()) == set(range(5))
    # train and test split every segment in the same proportion
    assert np.all(np.bincount(ica.aux_test.numpy()) == 80)


@pytest.mark.parametrize("distribution", ["gaussian", "laplace"])
def test_ica_sources_have_the_drawn_variance_of_their_segment(distribution):
    data = nonlinear_ica(n_sources=2, n_segments=3, n_per_segment=4000, n_layers=2, distribution=distribution, seed=2)
    s, u = data.extra["sources_train"], data.aux_train
    lam = data.extra["variances"]
    assert float(lam.min()) >= 0.05 and float(lam.max()) <= 5.0
    for seg in range(3):
        v = s[u == seg].var(0)
        assert torch.allclose(v, lam[seg], rtol=0.12)
    z = s / lam[u].sqrt()
    excess_kurtosis = float(((z - z.mean(0)) ** 4).mean() / z.var() ** 2 - 3)
    assert abs(excess_kurtosis - (3.0 if distribution == "laplace" else 0.0)) < 0.6


BAD_ICA = {"n_sources": [0, -1, 1.5, "2", True, float("inf")], "n_segments": [1, 0, 2.5, None],
           "n_per_segment": [1, -3, 10.5, float("nan")], "n_layers": [0, 1.5, "3"], "slope": [0, -0.1, 1.5, float("nan")],
           "test_fraction": [0, 1, 1.2, -0.1], "seed": [-1, 0.5, "s"]}


@FAST
@given(st.sampled_from(sorted(BAD_ICA)).flatmap(lambda k: st.tuples(st.just(k), st.sampled_from(BAD_ICA[k]))))
def test_ica_refuses_bad_arguments(case):
    key, value = case
    with pytest.raises(ConfigError) as err:
        nonlinear_ica(**{key: value})
    assert key in str(err.value) and repr(value) in str(err.value)


def test_ica_refuses_an_unknown_distribution():
    with pytest.raises(ConfigError, match="distribution.*'cauchy'"):
        nonlinear_ica(distribution="cauchy")
