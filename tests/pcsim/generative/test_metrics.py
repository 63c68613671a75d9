"""The generative metrics against independent references: closed forms of a linear-Gaussian
model (exact posterior, marginal likelihood, MAP completion), the Fréchet distance of two
Gaussians, MCC of transformed sources, active units of a constructed posterior."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal

from pcsim.errors import ConfigError, DataError, InferenceDivergenceError
from pcsim.generative.base import Bernoulli, Gaussian, GenerativeModel, Posterior
from pcsim.generative.data import nonlinear_ica
from pcsim.generative.metrics import (
    Collapse, amortisation_gap, collapse_diagnostics, feature_classifier, frechet_distance, half_mask,
    iterative_elbo, likelihood_scores, mean_correlation, pattern_completion, probe_accuracy, reconstruction_error, sample_quality,
)

FAST = settings(max_examples=20, deadline=None)


class LinearGaussian(GenerativeModel):
    """z ~ N(0, I_d), x | z ~ N(A z, s^2 I_D); the encoder is the exact posterior, the prior, or a
    shrunken exact posterior (``encoder``)."""

    _parameter_constraints: dict = {}

    def __init__(self, A=None, log_sigma=math.log(0.5), encoder="exact"):
        self.A = A
        self.log_sigma = log_sigma
        self.encoder = encoder

    def _fit(self, x, aux):
        self.A_ = torch.as_tensor(self.A, dtype=torch.float64)

    def exact_posterior(self, x):
        A, s2 = self.A_, math.exp(2 * self.log_sigma)
        cov = torch.linalg.inv(torch.eye(A.shape[1], dtype=A.dtype) + A.T @ A / s2)
        return x @ A @ cov / s2, cov  # mean (N, d), cov (d, d) (cov symmetric)

    def encode(self, x, aux=None):
        x = torch.as_tensor(x, dtype=torch.float64)
        mean, cov = self.exact_posterior(x)
        log_var = torch.log(torch.diagonal(cov)).expand_as(mean)
        if self.encoder == "prior":
            return Posterior(torch.zeros_like(mean), torch.zeros_like(mean))
        if self.encoder == "shrunk":
            return Posterior(0.5 * mean, log_var + 1.0)
        return Posterior(mean, log_var)

    def decode(self, z):
        return z @ self.A_.T

    def log_joint(self, x, z, aux=None):
        prior = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        return prior + Gaussian(self.log_sigma).log_prob(x, self.decode(z))

    def sample(self, n, aux=None, seed=0):
        g = torch.Generator().manual_seed(seed)
        z = torch.randn((n, self.A_.shape[1]), generator=g, dtype=torch.float64)
        return self.decode(z) + math.exp(self.log_sigma) * torch.randn((n, self.A_.shape[0]), generator=g, dtype=torch.float64)


A_DIAG = np.array([[1.5, 0.0], [0.0, 0.8], [0.0, 0.0], [0.0, 0.0]])  # factorised posterior: diagonal q is exact
A_FULL = np.array([[1.0, 0.5], [-0.3, 0.9], [0.7, -0.4], [0.2, 0.6]])
A_CORR = np.array([[1.0, 0.9], [0.9, 1.0], [0.5, 0.6], [0.3, 0.2]])  # strongly correlated posterior


def toy(A=A_DIAG, encoder="exact", n=64, seed=0):
    model = LinearGaussian(A, encoder=encoder)
    x = model.fit(np.zeros((2, A.shape[0]))).sample(n, seed=seed)
    return model.fit(x), x


def exact_log_marginal(model, x):
    A, s2 = model.A_.numpy(), math.exp(2 * model.log_sigma)
    return multivariate_normal(np.zeros(A.shape[0]), A @ A.T + s2 * np.eye(A.shape[0])).logpdf(x.numpy())


def kl_gaussians(m0, v0, m1, v1):
    """KL(N(m0, v0) || N(m1, v1)) per dimension, elementwise."""
    return 0.5 * (np.log(v1 / v0) + (v0 + (m0 - m1) ** 2) / v1 - 1.0)


# --------------------------------------------------------------------------- likelihood and ELBO
def test_nll_and_elbo_equal_the_exact_marginal_with_the_exact_posterior():
    model, x = toy()
    scores = likelihood_scores(model, x, samples=50, elbo_samples=3)
    exact = -exact_log_marginal(model, x).mean()
    assert scores.nll == pytest.approx(exact, abs=1e-9) and scores.nll_stderr < 1e-9
    assert -scores.elbo == pytest.approx(exact, abs=1e-9)
    shifted = likelihood_scores(model, x, samples=50, log_jacobian=-10.0)
    assert shifted.nll == pytest.approx(scores.nll + 10.0, abs=1e-9) and shifted.elbo == pytest.approx(scores.elbo - 10.0)


def test_nll_of_a_poor_proposal_is_within_its_stderr_and_the_elbo_below():
    model, x = toy(A_FULL, encoder="shrunk", n=200)
    scores = likelihood_scores(model, x, samples=2000, seed=1)
    exact = -exact_log_marginal(model, x).mean()
    assert scores.nll_stderr > 0
    assert abs(scores.nll - exact) < 3 * scores.nll_stderr + 2e-3
    assert -scores.elbo > exact + 0.05


# --------------------------------------------------------------------------- amortisation gap
def test_amortisation_gap_is_zero_when_the_encoder_is_the_exact_posterior():
    model, x = toy()
    g = amortisation_gap(model, x, steps=50, lr=0.05, samples=4, eval_samples=64)
    exact = exact_log_marginal(model, x)
    # the exact posterior's ELBO has no sampling noise: it is log p(x) at every draw
    assert np.allclose(g.amortised.numpy(), exact, atol=1e-9)
    assert abs(g.gap) < 1e-3 and abs(g.gap) < 3 * g.stderr + 1e-9
    assert np.allclose(g.optimised.numpy(), exact, atol=1e-2)


def test_amortisation_gap_of_the_prior_encoder_is_its_kl_to_the_exact_posterior():
    # the optimised q reaches the exact (factorised) posterior, so the gap is KL(prior || posterior) in closed form
    model, x = toy(n=32)
    prior = LinearGaussian(A_DIAG, encoder="prior").fit(x)
    g = amortisation_gap(prior, x, steps=600, lr=0.05, samples=8, eval_samples=2000, seed=2)
    mean, cov = model.exact_posterior(x)
    kl = kl_gaussians(0.0, 1.0, mean.numpy(), np.diag(cov.numpy())).sum(1)
    assert g.gap > 0 and (g.optimised - g.amortised > 0).all()
    assert g.gap == pytest.approx(kl.mean(), rel=0.03)
    assert np.allclose(g.optimised.numpy(), exact_log_marginal(model, x), atol=0.02)


def test_amortisation_gap_is_nonnegative_and_stops_at_the_best_diagonal_posterior():
    # a diagonal q cannot reach this full-covariance posterior (precision L = I + A^T A / s^2):
    # the best one has the exact mean and variances 1 / L_ii, and falls short of log p(x) by
    # KL = (sum_i log L_ii - log det L) / 2 nats for every example
    model, x = toy(A_CORR, encoder="shrunk", n=32)
    g = amortisation_gap(model, x, steps=400, lr=0.1, samples=16, eval_samples=2000, seed=3)
    L = np.eye(2) + A_CORR.T @ A_CORR / 0.25
    shortfall = 0.5 * (np.log(np.diag(L)).sum() - np.linalg.slogdet(L)[1])
    assert shortfall > 0.5
    assert g.gap > 3 * g.stderr > 0
    deficit = exact_log_marginal(model, x) - g.optimised.numpy()
    assert deficit.mean() == pytest.approx(shortfall, abs=0.015)


def test_amortisation_gap_reports_a_diverging_ascent_with_its_step():
    model, x = toy(n=8)

    class Exploding(LinearGaussian):
        def log_joint(self, x, z, aux=None):
            return super().log_joint(x, z) * torch.where((z.abs() > 2).any(-1), float("nan"), 1.0)

    bad = Exploding(A_DIAG, encoder="prior").fit(x)
    with pytest.raises(InferenceDivergenceError, match=r"lr \(now 5\)") as err:
        amortisation_gap(bad, x * 20, steps=20, lr=5.0)
    assert err.value.step >= 0


# --------------------------------------------------------------------------- reconstruction and completion
def test_iterative_elbo_on_a_linear_gaussian_model_reaches_the_exact_marginal():
    """PC's inference on a linear-Gaussian joint from the prior mean converges to the exact posterior
    mean, and the Laplace posterior there is the exact posterior: its ELBO is log p(x), at least the
    shrunken encoder's, and it climbs with T."""
    model, x = toy(A_CORR, encoder="shrunk", n=32)
    r = iterative_elbo(model, x, [0, 5, 20, 200], 0.05, start="prior", samples=16)
    exact = exact_log_marginal(model, x)
    np.testing.assert_allclose(r.elbo[-1].numpy(), exact, atol=1e-5)   # exact posterior: the ELBO is log p(x)
    assert bool((r.elbo[-1] >= r.amortised).all())
    assert (np.diff(r.elbo.mean(1).numpy()) >= -1e-9).all()
    assert (np.diff(r.energy.mean(1).numpy()) <= 1e-9).all()            # the relaxation descends -log p(x, z)


def test_iterative_elbo_on_a_trained_vae_is_at_least_its_amortised_elbo():
    """The same decoder: PC's iterative inference on a small trained VAE's decoder reaches the
    encoder's ELBO and beyond (the amortisation gap is real and non-negative) from either start, and
    the ELBO does not fall with T on average, up to the Monte Carlo noise of the common draws."""
    from pcsim.generative.data import digits
    from pcsim.generative.vae import VAE

    data = digits(0.2, 0)
    vae = VAE(2, (16,), sigma="scalar", epochs=30, lr=3e-3, seed=0).fit(data.x_train[:300])
    x = data.x_test[:40]
    for start in ("amortised", "prior"):
        r = iterative_elbo(vae, x, [0, 2, 10, 50], 0.1, start=start, samples=64)
        curve = r.elbo.mean(1).numpy()
        noise = 3 * float(r.amortised.std() / math.sqrt(40 * 64))
        assert curve[-1] >= float(r.amortised.mean()) - noise
        assert curve[-1] >= curve[0] - noise and np.mean(np.diff(curve)) >= -noise
    # with the encoder's own variance, T = 0 from the encoder's mean is the encoder, on the same noise
    r = iterative_elbo(vae, x, [0, 20], 0.1, start="amortised", posterior="encoder", samples=8)
    assert r.elbo.shape == (2, 40) and r.amortised.shape == (40,)
    torch.testing.assert_close(r.elbo[0], r.amortised)


def test_iterative_elbo_reports_a_diverging_relaxation_with_its_step():
    model, x = toy(A_CORR, n=8)
    with pytest.raises(InferenceDivergenceError, match="step size dt/tau"):
        iterative_elbo(model, x, [50], 5.0, start="prior")


def test_reconstruction_error_is_the_mse_of_the_posterior_mean_decoded():
    model, x = toy(A_FULL)
    mean, _ = model.exact_posterior(x)
    ref = ((mean.numpy() @ A_FULL.T - x.numpy()) ** 2).mean()
    assert reconstruction_error(model, x) == pytest.approx(ref, rel=1e-12)


def test_completion_is_the_map_completion_of_the_linear_gaussian_model():
    model, x = toy(A_FULL, n=16)
    observed = half_mask(16, 4, "bottom")  # features 0, 1 seen, 2, 3 hidden
    c = pattern_completion(model, x, observed, steps=800, lr=0.05)
    # MAP of z from the observed rows alone, then their prediction of the hidden rows
    Ao, Ah, s2 = A_FULL[:2], A_FULL[2:], 0.25
    z = x.numpy()[:, :2] @ Ao @ np.linalg.inv(np.eye(2) + Ao.T @ Ao / s2) / s2
    assert np.allclose(c.completed.numpy()[:, 2:], z @ Ah.T, atol=1e-4)
    assert torch.equal(c.completed[:, :2], x[:, :2])
    assert c.error == pytest.approx(((z @ Ah.T - x.numpy()[:, 2:]) ** 2).mean(), rel=1e-3)


def test_completion_uses_a_models_own_complete_and_never_shows_it_the_hidden_values():
    model, x = toy(A_FULL, n=10)
    seen = {}

    class Completing(LinearGaussian):
        def complete(self, x, observed):
            seen["x"] = x.clone()
            return torch.full_like(x, 7.0)

    m = Completing(A_FULL).fit(x)
    observed = half_mask(10, 4, "random", seed=1)
    c = pattern_completion(m, x, observed)
    hidden = ~observed
    column_means = (x * observed).sum(0) / observed.sum(0)
    assert torch.allclose(seen["x"][hidden], column_means.expand_as(x)[hidden])
    assert torch.equal(c.completed[hidden], torch.full_like(x, 7.0)[hidden]) and torch.equal(c.completed[observed], x[observed])
    assert c.error == pytest.approx(float(((7.0 - x[hidden]) ** 2).mean()))


class LogisticBernoulli(LinearGaussian):
    """z ~ N(0, I_2), x_d ~ Bernoulli(sigmoid(A z + b)_d); A_ is a torch Parameter (a model's own gradients must stay untouched)."""

    def _fit(self, x, aux):
        self.A_ = torch.nn.Parameter(torch.as_tensor(self.A, dtype=torch.float64))
        self.b_ = torch.linspace(-0.5, 0.5, self.A_.shape[0], dtype=torch.float64)

    def encode(self, x, aux=None):
        z = torch.zeros((x.shape[0], self.A_.shape[1]), dtype=torch.float64)
        return Posterior(z, z)

    def decode(self, z):
        return torch.sigmoid(z @ self.A_.T + self.b_)

    def log_joint(self, x, z, aux=None):
        prior = (-0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)).sum(-1)
        return prior + Bernoulli().log_prob(x, self.decode(z))


def test_completion_with_a_bernoulli_observation_model_climbs_the_observed_half_alone():
    # reference: the MAP of z given the observed pixels only, by scipy on the observed terms
    from scipy.optimize import minimize
    from scipy.special import expit, log_expit

    A = np.array([[2.0, -1.0], [1.5, 0.5], [-1.0, 2.0], [0.5, 1.5], [1.0, 1.0], [-2.0, 0.5]])
    rng = np.random.default_rng(6)
    x = torch.as_tensor(rng.uniform(0, 1, (6, 6)).round(1))
    model = LogisticBernoulli(A).fit(x)
    observed = half_mask(6, 6, "right")
    c = pattern_completion(model, x, observed, steps=1500, lr=0.05)
    b = model.b_.numpy()
    for i in range(6):
        xo, Ao, bo = x.numpy()[i, :3], A[:3], b[:3]
        neg = lambda z: 0.5 * z @ z - (xo * log_expit(Ao @ z + bo) + (1 - xo) * log_expit(-(Ao @ z + bo))).sum()
        z = minimize(neg, np.zeros(2), method="BFGS", options={"gtol": 1e-10}).x
        assert np.allclose(c.completed.numpy()[i, 3:], expit(A[3:] @ z + b[3:]), atol=1e-4)
    assert model.A_.grad is None  # the metric differentiates w.r.t. the latents only


def test_the_ascents_show_a_progress_bar_only_when_asked(capsys):
    model, x = toy(n=8)
    amortisation_gap(model, x, steps=5, eval_samples=4, progress=False)
    assert "amortisation gap" not in capsys.readouterr().err
    amortisation_gap(model, x, steps=5, eval_samples=4, progress=True)
    assert "amortisation gap" in capsys.readouterr().err


class CorrelatedGaussian(GenerativeModel):
    """An exact-likelihood model (as a flow is): log p(x) = log N(x; 0, S), z ignored."""

    _parameter_constraints: dict = {}
    exact_likelihood = True

    def __init__(self, cov=None):
        self.cov = cov

    def _fit(self, x, aux):
        self.dist_ = torch.distributions.MultivariateNormal(torch.zeros(x.shape[1], dtype=torch.float64),
                                                            torch.as_tensor(self.cov, dtype=torch.float64))

    def log_joint(self, x, z, aux=None):
        return self.dist_.log_prob(x).expand(z.shape[0], x.shape[0])


def test_completion_of_an_exact_likelihood_model_is_the_conditional_mean():
    S = A_FULL @ A_FULL.T + 0.25 * np.eye(4)
    x = torch.as_tensor(np.random.default_rng(5).multivariate_normal(np.zeros(4), S, 12))
    model = CorrelatedGaussian(S).fit(x)
    observed = half_mask(12, 4, "top")  # features 0, 1 hidden
    c = pattern_completion(model, x, observed, steps=800, lr=0.05)
    ref = x.numpy()[:, 2:] @ np.linalg.solve(S[2:, 2:], S[2:, :2])  # E[x_h | x_o] = S_ho S_oo^-1 x_o
    assert np.allclose(c.completed.numpy()[:, :2], ref, atol=1e-4)


def test_half_masks_hide_half_of_each_example():
    m = half_mask(3, 64, "bottom", image_shape=(8, 8))
    assert m.shape == (3, 64) and (m.sum(1) == 32).all()
    assert m.reshape(3, 8, 8)[:, :4].all() and not m.reshape(3, 8, 8)[:, 4:].any()
    assert not half_mask(1, 64, "left", image_shape=(8, 8)).reshape(8, 8)[:, :4].any()
    assert (half_mask(5, 41, "random", seed=2).sum(1) == 41 - 20).all()
    assert half_mask(2, 40, "right")[:, :20].all() and not half_mask(2, 40, "right")[:, 20:].any()


# --------------------------------------------------------------------------- Fréchet distance and sample quality
def test_frechet_distance_of_sampled_gaussians_matches_the_closed_form():
    rng = np.random.default_rng(0)
    m1, m2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    a = m1 + np.sqrt(v1) * rng.standard_normal((200_000, 3))
    b = m2 + np.sqrt(v2) * rng.standard_normal((200_000, 3))
    # commuting (diagonal) covariances: tr(S1 + S2 - 2 (S1 S2)^1/2) = sum (sqrt v1 - sqrt v2)^2
    closed = ((m1 - m2) ** 2).sum() + ((np.sqrt(v1) - np.sqrt(v2)) ** 2).sum()
    assert frechet_distance(a, b) == pytest.approx(closed, abs=0.03)


def test_frechet_distance_of_correlated_gaussians_matches_the_closed_form():
    # 2-D, S1 = I: tr(S1 + S2 - 2 S2^(1/2)) with S2's square root by its eigen-decomposition
    rng = np.random.default_rng(1)
    S2 = np.array([[2.0, 0.8], [0.8, 1.0]])
    w, V = np.linalg.eigh(S2)
    closed = 1.0 + 2.0 + 3.0 - 2 * np.trace(V @ np.diag(np.sqrt(w)) @ V.T)
    a = rng.standard_normal((200_000, 2))
    b = np.array([1.0, 0.0]) + rng.standard_normal((200_000, 2)) @ np.linalg.cholesky(S2).T
    assert frechet_distance(a, b) == pytest.approx(closed, abs=0.03)


@FAST
@given(st.integers(2, 8), st.integers(0, 2**31 - 1))
def test_frechet_distance_of_a_set_with_itself_is_zero(f, seed):
    x = np.random.default_rng(seed).normal(size=(200, f)) @ np.random.default_rng(seed + 1).normal(size=(f, f))
    assert abs(frechet_distance(x, x)) < 1e-6
    assert frechet_distance(x, x + 1.0) == pytest.approx(f, rel=1e-6)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    centres = np.array([[0.0, 0.0, 0.0, 0.0], [4.0, 4.0, 0.0, 0.0], [0.0, 4.0, 4.0, 4.0]])
    labels = rng.integers(0, 3, 600)
    return centres[labels] + 0.5 * rng.standard_normal((600, 4)), labels


def test_sample_quality_ranks_real_samples_above_noise(blobs):
    x, labels = blobs
    clf = feature_classifier(x[:400], labels[:400], hidden=(16,), seed=0)
    assert clf.train_accuracy > 0.99 and clf.features(x[:5]).shape == (5, 16)
    good = sample_quality(clf, x[:400], x[400:])
    noise = np.random.default_rng(1).uniform(-2, 6, (200, 4))
    bad = sample_quality(clf, x[:400], noise)
    assert good.frechet < 0.2 * bad.frechet
    assert good.label_entropy < 0.2 and good.label_entropy < 0.5 * bad.label_entropy
    assert good.marginal_entropy == pytest.approx(math.log(3), abs=0.05)
    # fixed by its seed
    again = feature_classifier(x[:400], labels[:400], hidden=(16,), seed=0)
    assert np.array_equal(again.features(x[:20]), clf.features(x[:20]))


# --------------------------------------------------------------------------- latents
def test_probe_accuracy_separable_and_chance(blobs):
    x, labels = blobs
    assert probe_accuracy(x[:400], labels[:400], x[400:], labels[400:]) == 1.0
    noise = np.random.default_rng(2).standard_normal((600, 4))
    assert probe_accuracy(noise[:400], labels[:400], noise[400:], labels[400:]) < 0.5


def test_probe_accuracy_of_a_model_encodes_the_data():
    model, x = toy(A_FULL, n=300)
    labels = (x[:, 0] > 0).long()
    z = model.encode(x).mean
    direct = probe_accuracy(z[:200], labels[:200], z[200:], labels[200:])
    assert probe_accuracy(x[:200], labels[:200], x[200:], labels[200:], model=model) == direct > 0.8


@FAST
@given(st.permutations(range(4)), st.lists(st.sampled_from([-3.0, -0.5, 0.2, 2.0]), min_size=4, max_size=4),
       st.integers(0, 2**31 - 1))
def test_mcc_is_one_for_permuted_flipped_scaled_sources(perm, scales, seed):
    s = np.random.default_rng(seed).laplace(size=(500, 4))
    recovered = s[:, perm] * np.asarray(scales) + 3.0
    match = mean_correlation(recovered, s)
    assert match.mcc == pytest.approx(1.0, abs=1e-12)
    assert [perm[c] for c in match.component] == [0, 1, 2, 3]
    assert mean_correlation(np.exp(recovered / 10), s, method="spearman").mcc == pytest.approx(1.0, abs=1e-12)


def test_mcc_is_near_zero_for_independent_noise_and_one_after_exact_unmixing():
    rng = np.random.default_rng(3)
    s = rng.standard_normal((20_000, 3))
    assert mean_correlation(rng.standard_normal((20_000, 3)), s).mcc < 0.03
    ica = nonlinear_ica(n_sources=3, n_segments=4, n_per_segment=100, n_layers=3, seed=1)
    truth = ica.extra["sources_train"]
    assert mean_correlation(ica.extra["mixing"].inverse(ica.x_train), truth).mcc == pytest.approx(1.0, abs=1e-9)
    assert mean_correlation(ica.x_train, truth).mcc < 0.99
    # more latents than sources: each source still finds its own
    extra = np.column_stack([rng.standard_normal(20_000), s[:, ::-1]])
    m = mean_correlation(extra, s)
    assert m.mcc == pytest.approx(1.0) and list(m.component) == [3, 2, 1]


def test_active_units_and_kl_of_a_constructed_posterior():
    rng = np.random.default_rng(4)
    n = 5000
    spread = np.array([1.0, 0.0, 0.02, 0.005])  # variance over examples of each posterior mean
    mean = torch.as_tensor(rng.standard_normal((n, 4)) * np.sqrt(spread))
    log_var = torch.as_tensor(np.log(np.array([0.1, 1.0, 0.5, 0.9])) * np.ones((n, 4)))
    c = collapse_diagnostics(Posterior(mean, log_var))
    assert isinstance(c, Collapse) and c.n_active == 2 and list(c.active) == [True, False, True, False]
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mean, torch.exp(0.5 * log_var)),
                                            torch.distributions.Normal(0.0, 1.0)).mean(0).numpy()
    assert np.allclose(c.kl, ref, rtol=1e-12) and c.kl[1] == 0.0
    assert collapse_diagnostics(Posterior(mean, log_var), threshold=0.001).n_active == 3


def test_collapse_diagnostics_of_a_model_encode_the_data():
    model, x = toy(A_DIAG, n=400)
    c = collapse_diagnostics(model, x)
    mean, cov = model.exact_posterior(x)
    assert c.n_active == 2
    assert np.allclose(c.kl, collapse_diagnostics(Posterior(mean, torch.log(torch.diagonal(cov)).expand_as(mean))).kl)


# --------------------------------------------------------------------------- bad input
@pytest.fixture(scope="module")
def fitted():
    return toy(A_FULL, n=12)


BAD_NUMBERS = {
    "steps": (amortisation_gap, [-1, 2.5, "10", None]), "lr": (amortisation_gap, [0, -0.1, float("nan"), "x"]),
    "samples": (amortisation_gap, [0, 1.5, float("inf")]), "eval_samples": (amortisation_gap, [0, -2]),
    "seed": (likelihood_scores, [-1, 0.5, "s"]), "elbo_samples": (likelihood_scores, [0, 2.2]),
    "log_jacobian": (likelihood_scores, [float("nan"), "a"]), "threshold": (collapse_diagnostics, [-0.1, float("nan")]),
}


@FAST
@given(st.sampled_from(sorted(BAD_NUMBERS)).flatmap(
    lambda k: st.tuples(st.just(k), st.sampled_from(BAD_NUMBERS[k][1]))))
def test_metrics_refuse_bad_numbers_naming_them(fitted, case):
    key, value = case
    model, x = fitted
    fn = BAD_NUMBERS[key][0]
    with pytest.raises(ConfigError) as err:
        fn(model, x, **{key: value}) if fn is not collapse_diagnostics else fn(model, x, threshold=value)
    assert key in str(err.value) and repr(value) in str(err.value)


@FAST
@given(st.sampled_from([(0, 1), (5, 3), (11, 0)]), st.sampled_from([float("nan"), float("inf"), -float("inf")]))
def test_metrics_refuse_non_finite_data_naming_the_index(fitted, where, value):
    model, x = fitted
    bad = x.clone()
    bad[where] = value
    for call in (lambda: likelihood_scores(model, bad), lambda: reconstruction_error(model, bad),
                 lambda: amortisation_gap(model, bad, steps=1), lambda: frechet_distance(bad, x),
                 lambda: mean_correlation(bad, x)):
        with pytest.raises(DataError, match=rf"first at \[{where[0]}, {where[1]}\]"):
            call()


def test_metrics_refuse_wrong_shapes_and_models(fitted):
    model, x = fitted
    with pytest.raises(DataError, match="x has 3 features but the model was fitted on 4"):
        reconstruction_error(model, x[:, :3])
    with pytest.raises(DataError, match="observed must have the shape"):
        pattern_completion(model, x, torch.ones(12, 3, dtype=torch.bool))
    with pytest.raises(DataError, match="observed must be a boolean"):
        pattern_completion(model, x, torch.ones(12, 4))
    with pytest.raises(DataError, match="observed hides no feature"):
        pattern_completion(model, x, torch.ones(12, 4, dtype=torch.bool))
    with pytest.raises(ConfigError, match="model must be a fitted GenerativeModel, got ndarray"):
        likelihood_scores(np.zeros(3), x)
    with pytest.raises(ConfigError, match="LinearGaussian is not fitted"):
        reconstruction_error(LinearGaussian(A_FULL), x)
    with pytest.raises(DataError, match="recovered and sources must have the same number of examples, got 12 and 11"):
        mean_correlation(x, x[:11])
    with pytest.raises(DataError, match=r"sources\[:, 2\] is constant"):
        mean_correlation(x, torch.cat([x[:, :2], torch.ones(12, 1)], 1))
    with pytest.raises(DataError, match="a and b must have the same number of features, got 4 and 3"):
        frechet_distance(x, x[:, :3])
    with pytest.raises(DataError, match=r"labels_train must be \(8,\) labels"):
        probe_accuracy(x[:8], np.zeros(7), x[8:], np.zeros(4))
    with pytest.raises(DataError, match=r"labels_test\[1\] = -1"):
        probe_accuracy(x[:8], np.arange(8) % 2, x[8:], np.array([0, -1, 0, 1]))
    with pytest.raises(ConfigError, match="image_shape must be"):
        half_mask(2, 64, image_shape=(7, 8))
    with pytest.raises(ConfigError, match="half must be"):
        half_mask(2, 64, half="middle")
    with pytest.raises(ConfigError, match="method must be"):
        mean_correlation(x, x, method="kendall")
