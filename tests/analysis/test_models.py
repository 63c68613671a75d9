"""Latent models (analysis.models): closed forms, invariants, ground-truth recovery, and a
cross-check of GPFA against elephant's independent implementation (Yu et al.'s code, ported)."""

from __future__ import annotations

import contextlib
import io
import warnings

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.linalg import subspace_angles
from scipy.stats import multivariate_normal

from analysis.metrics import fp_bps, latent_r2
from analysis.models import (GPFA, LFADS, FactorAnalysisModel, PCLatentModel, PiVAE, PoissonGLM, PoissonVAE,
                             SmoothingModel, factor_analysis)
from analysis.models.gpfa import (GPFAParams, _fold_grids, _fold_matrix, _fold_matrix_halves, _gp_objective,
                                  gp_covariances, gpfa_em, gpfa_posterior, segment_trials)
from analysis.synthetic import lorenz_recording
from pcsim.errors import DataError

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lorenz():
    return lorenz_recording(n_trials=60, n_neurons=30, n_bins=50, seed=0)


@pytest.fixture(scope="module")
def gpfa_lorenz(lorenz):
    return GPFA(n_latents=8, max_iter=100).fit(lorenz)


def _r2(model, rec):
    train = rec["split"].values == "train"
    z = model.transform(rec)
    return latent_r2(z[train], rec["latents"][train], z[~train], rec["latents"][~train])


def _random_params(rng, p, q, tau_bins):
    return GPFAParams(torch.as_tensor(rng.standard_normal((p, q))), torch.as_tensor(rng.standard_normal(p)),
                      torch.as_tensor(rng.uniform(0.3, 1.5, p)), torch.as_tensor(1.0 / np.asarray(tau_bins) ** 2),
                      torch.full((q,), 1e-3, dtype=F64))


def _sample_gpfa(rng, params, n_trials, n_bins):
    """Observations ``(N, T, p)`` drawn exactly from the GPFA generative model."""
    K = gp_covariances(params.gamma, params.eps, n_bins).numpy()
    q = K.shape[0]
    x = np.einsum("qts,nqs->ntq", np.linalg.cholesky(K), rng.standard_normal((n_trials, q, n_bins)))
    noise = rng.standard_normal((n_trials, n_bins, len(params.d))) * np.sqrt(params.R.numpy())
    return x @ params.C.numpy().T + params.d.numpy() + noise


# ---------------------------------------------------------------------------------------------
# GPFA numerics: closed forms and invariants
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("n_bins", [1, 2, 7, 8])
def test_gpfa_posterior_equals_dense_gaussian_conditioning(n_bins):
    """The folded, batched E-step equals textbook conditioning of the joint Gaussian of (x, y)."""
    rng = np.random.default_rng(n_bins)
    q, p, n = 3, 5, 4
    params = _random_params(rng, p, q, rng.uniform(1, 4, q))
    y = torch.as_tensor(rng.standard_normal((n, n_bins, p)))
    post = gpfa_posterior(y, params)
    k_big = torch.block_diag(*gp_covariances(params.gamma, params.eps, n_bins))   # latent-major
    H = torch.zeros(n_bins * p, q * n_bins, dtype=F64)                             # y time-major
    for t in range(n_bins):
        for i in range(q):
            H[t * p:(t + 1) * p, i * n_bins + t] = params.C[:, i]
    cov_y = H @ k_big @ H.T + torch.diag(params.R.repeat(n_bins))
    gain = k_big @ H.T @ torch.linalg.inv(cov_y)
    resid = y.reshape(n, -1) - params.d.repeat(n_bins)
    mean = (gain @ resid.T).T.reshape(n, q, n_bins).transpose(1, 2)                  # (N, T, q)
    cov = (k_big - gain @ H @ k_big).reshape(q, n_bins, q, n_bins).permute(1, 0, 3, 2)  # (T, q, T, q)
    ll = sum(multivariate_normal(params.d.repeat(n_bins).numpy(), cov_y.numpy()).logpdf(y[i].reshape(-1).numpy())
             for i in range(n))
    assert torch.allclose(post.mean, mean, atol=1e-10)
    assert torch.allclose(post.cov(), cov, atol=1e-10)
    assert post.log_likelihood == pytest.approx(ll, rel=1e-10)


@pytest.mark.parametrize("n_bins", [1, 2, 7, 8])
def test_folded_kernels_equal_folding_the_dense_kernel(n_bins):
    """The closed-form half-size kernels equal Q' K Q of the dense (T, T) covariance."""
    gamma, eps = torch.tensor([0.05, 0.5, 3.0], dtype=F64), torch.full((3,), 1e-3, dtype=F64)
    for ours, ref in zip(_fold_matrix_halves(gamma, eps, n_bins), _fold_matrix(gp_covariances(gamma, eps, n_bins))):
        assert torch.allclose(ours, ref, atol=1e-14)


def test_segment_trials_covers_every_bin():
    y = torch.arange(2 * 50, dtype=F64).reshape(2, 50, 1)
    seg = segment_trials(y, 20)                                  # 3 segments per trial, evenly overlapping
    assert seg.shape == (6, 20, 1)
    assert set(seg[:3].flatten().tolist()) == set(range(50))
    assert torch.equal(segment_trials(y, 50), y)


def test_timescale_objective_derivatives_match_finite_differences():
    """The analytic first/second derivatives driving the Newton timescale step are right."""
    rng = np.random.default_rng(0)
    q, T, n = 2, 9, 5
    a = torch.as_tensor(rng.standard_normal((q, T, T)))
    p_even, p_odd = _fold_matrix(a @ a.transpose(1, 2))
    grids = _fold_grids(T, F64, "cpu")
    lg, eps, h = torch.tensor([-3.0, -1.0], dtype=F64), torch.full((q,), 1e-3, dtype=F64), 1e-5
    f, f1, f2 = _gp_objective(lg, eps, p_even, p_odd, n, grids)
    fp, f1p, _ = _gp_objective(lg + h, eps, p_even, p_odd, n, grids)
    fm, f1m, _ = _gp_objective(lg - h, eps, p_even, p_odd, n, grids)
    K = gp_covariances(torch.exp(lg), eps, T)
    direct = -0.5 * n * torch.logdet(K) - 0.5 * (torch.linalg.inv(K) * (a @ a.transpose(1, 2))).sum((1, 2))
    assert torch.allclose(f, direct, rtol=1e-10)
    assert torch.allclose(f1, (fp - fm) / (2 * h), rtol=1e-6)
    assert torch.allclose(f2, (f1p - f1m) / (2 * h), rtol=1e-5)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 2**16), n_bins=st.integers(5, 16), q=st.integers(1, 3))
def test_gpfa_em_log_likelihood_never_decreases(seed, n_bins, q):
    """EM (exact M-step for C, d, R; uphill-only timescale steps) is monotone in the marginal LL."""
    rng = np.random.default_rng(seed)
    params = _random_params(rng, 8, q, rng.uniform(1.5, 4, q))
    y = _sample_gpfa(rng, params, 12, n_bins)
    fit = gpfa_em(y, q, tau_init_bins=2.0, max_iter=40, tol=0.0)
    ll = fit.log_likelihood
    assert len(ll) == fit.n_iter + 1
    assert np.all(np.diff(ll) >= -1e-8 * np.abs(ll[:-1]))


def test_gpfa_em_log_likelihood_never_decreases_on_spikes(gpfa_lorenz):
    ll = gpfa_lorenz.log_likelihood_
    assert len(ll) == gpfa_lorenz.n_iter_ + 1 == 101
    assert np.all(np.diff(ll) >= -1e-8 * np.abs(ll[:-1]))
    assert ll[-1] > ll[0]


def test_gpfa_recovers_generative_model():
    """On data drawn from GPFA itself: loading subspace and timescales come back."""
    rng = np.random.default_rng(1)
    tau_bins = np.array([2.5, 5.0, 10.0])          # 50, 100, 200 ms at 20 ms bins
    params = _random_params(rng, 30, 3, tau_bins)
    y = _sample_gpfa(rng, params, 100, 40)
    fit = gpfa_em(y, 3, tau_init_bins=4.0, max_iter=200)
    angles = np.degrees(subspace_angles(params.C.numpy(), fit.params.C.numpy()))
    assert angles.max() < 5.0                      # measured 1.4 deg
    tau_hat = np.sort(1.0 / np.sqrt(fit.params.gamma.numpy()))
    np.testing.assert_allclose(tau_hat, tau_bins, rtol=0.25)   # measured within 4 %
    np.testing.assert_allclose(fit.params.R.numpy(), params.R.numpy(), rtol=0.2)    # measured within 6 %


def test_gpfa_stops_on_tolerance_and_reports_it():
    rng = np.random.default_rng(2)
    params = _random_params(rng, 10, 2, [2.0, 4.0])
    y = _sample_gpfa(rng, params, 20, 20)
    loose = gpfa_em(y, 2, tau_init_bins=3.0, max_iter=500, tol=1e-2)
    assert loose.converged and loose.n_iter < 500
    ll = loose.log_likelihood
    assert ll[-1] - ll[-2] < 1e-2 * (ll[-2] - ll[1])   # Yu et al.'s relative criterion met
    capped = gpfa_em(y, 2, tau_init_bins=3.0, max_iter=3, tol=0.0)
    assert not capped.converged and capped.n_iter == 3


# ---------------------------------------------------------------------------------------------
# Shared pieces against independent references
# ---------------------------------------------------------------------------------------------

def test_poisson_glm_matches_sklearn():
    from sklearn.linear_model import PoissonRegressor
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2000, 4))
    x = (x - x.mean(0)) / x.std(0, ddof=1)        # already standardised: same penalty as sklearn
    w = np.array([[0.5, -0.3], [0.0, 0.4], [-0.2, 0.1], [0.3, 0.0]])
    y = rng.poisson(np.exp(x @ w + np.array([-1.0, 0.5])))
    glm = PoissonGLM(alpha=0.05).fit(x, y)
    for j in range(2):
        ref = PoissonRegressor(alpha=0.05, tol=1e-10, max_iter=1000).fit(x, y[:, j])
        np.testing.assert_allclose(glm.coef_[:, j], ref.coef_, atol=1e-5)
        assert glm.intercept_[j] == pytest.approx(ref.intercept_, abs=1e-5)
    np.testing.assert_allclose(glm.predict(x)[:, 0], np.exp(x @ glm.coef_[:, 0] + glm.intercept_[0]))


def test_factor_analysis_matches_sklearn_likelihood():
    from sklearn.decomposition import FactorAnalysis
    rng = np.random.default_rng(0)
    y = rng.standard_normal((3000, 3)) @ rng.standard_normal((3, 12)) + rng.standard_normal((3000, 12)) * 0.7
    ours = factor_analysis(y, 3, min_var_frac=0.0)
    ref = FactorAnalysis(3, tol=1e-8, max_iter=2000, svd_method="lapack").fit(y)
    assert ours.log_likelihood[-1] == pytest.approx(ref.score(y) * len(y), rel=1e-6)
    assert np.all(np.diff(ours.log_likelihood) >= -1e-9 * np.abs(ours.log_likelihood[:-1]))
    assert np.degrees(subspace_angles(ours.C, ref.components_.T)).max() < 1.0


# ---------------------------------------------------------------------------------------------
# Ground truth: Lorenz latents
# ---------------------------------------------------------------------------------------------

def test_gpfa_recovers_lorenz_latents(lorenz, gpfa_lorenz):
    assert _r2(gpfa_lorenz, lorenz) >= 0.8                     # measured 0.834


@pytest.mark.parametrize("model, bound", [(SmoothingModel(sigma_ms=40), 0.7),   # measured 0.781
                                          (FactorAnalysisModel(n_latents=8), 0.75)])  # measured 0.831
def test_baselines_recover_lorenz_latents(lorenz, model, bound):
    assert _r2(model.fit(lorenz), lorenz) >= bound


def test_gpfa_co_smoothing_beats_null_and_own_readout(lorenz, gpfa_lorenz):
    """co-bps on held-out neurons is positive; the GLM readout (default) beats GPFA's own
    sqrt-linear-Gaussian readout, which is why it is the default."""
    bps = gpfa_lorenz.score(lorenz)
    assert bps > 0.5                                           # measured 1.02
    own = GPFA(n_latents=8, max_iter=100, readout="gaussian").fit(lorenz)
    assert own.score(lorenz) > 0
    assert bps > own.score(lorenz)                              # measured 1.02 vs 0.80


def test_gpfa_forecast_beats_null_and_relaxes_to_prior(lorenz, gpfa_lorenz):
    """Forecasting the last 5 bins of test trials from the first T-5 scores fp-bps > 0, with
    the time axis continuing the bin centres; 0 bins ahead is rejected; far beyond the longest
    timescale the GP mean has decayed to the prior mean x = 0, so rates are the GLM's at x = 0."""
    test = lorenz.isel(trial=np.flatnonzero(lorenz["split"].values == "test"))
    rates = gpfa_lorenz.forecast(test.isel(time=slice(0, -5)), 5)
    assert rates.dims == ("trial", "time", "neuron") and rates.shape == (test.sizes["trial"], 5, 30)
    np.testing.assert_allclose(rates["time"], test["time"][-5:], rtol=0, atol=1e-12)
    np.testing.assert_array_equal(rates["trial"], test["trial"])
    assert rates.attrs["units"] == "counts/bin" and np.all(rates > 0)
    assert fp_bps(rates.values, test["counts"].isel(time=slice(-5, None)).values) > 0  # measured 0.46
    with pytest.raises(ValueError, match="n_forward"):
        gpfa_lorenz.forecast(test, 0)
    tau_bins = gpfa_lorenz.tau_ms_.max() / (1000 * lorenz.attrs["bin_width"])
    far = gpfa_lorenz.forecast(test, int(np.ceil(10 * tau_bins)))
    at_zero = gpfa_lorenz.readout_.predict(np.zeros((1, gpfa_lorenz.n_latents)))[0]
    np.testing.assert_allclose(far.isel(time=-1), np.broadcast_to(at_zero, far.isel(time=-1).shape), rtol=1e-6)
    assert not np.allclose(rates.isel(time=0), at_zero, rtol=1e-2)  # near the window it has not decayed


def test_gpfa_gaussian_forecast_equals_dense_conditioning(lorenz):
    """With GPFA's own readout, forecast rates are E[y_f^2] = E[y_f | y_o]^2 + Var[y_f | y_o] of the
    sqrt counts, y_o the held-in neurons of the observed bins: textbook conditioning of the joint
    Gaussian of y over observed and future bins (independent of the GP-extrapolation code path)."""
    model = GPFA(n_latents=3, max_iter=10, readout="gaussian").fit(lorenz)
    rec = lorenz.isel(trial=slice(0, 4), time=slice(0, 9))
    F = 3
    got = model.forecast(rec, F).values
    P = model.params_
    C, d, R = (t.numpy() for t in (P.C, P.d, P.R))
    T, p = rec.sizes["time"], C.shape[0]
    K = gp_covariances(P.gamma, P.eps, T + F).numpy()                    # (q, T+F, T+F)
    # joint covariance of y[t, j] over all bins and neurons, index t * p + j
    cov = np.einsum("jk,kts,lk->tjsl", C, K, C).reshape((T + F) * p, (T + F) * p) + np.diag(np.tile(R, T + F))
    hi = np.flatnonzero(~model.heldout_)
    obs = (np.arange(T)[:, None] * p + hi[None, :]).ravel()
    fut = np.arange(T * p, (T + F) * p)
    gain = np.linalg.solve(cov[np.ix_(obs, obs)], cov[np.ix_(obs, fut)]).T
    y = np.sqrt(rec["counts"].values[:, :, hi]).reshape(len(rec["trial"]), -1)
    mean = np.tile(d, F) + (y - np.tile(d[hi], T)) @ gain.T                # (N, F*p)
    var = np.diag(cov[np.ix_(fut, fut)] - gain @ cov[np.ix_(obs, fut)])
    np.testing.assert_allclose(got, (mean ** 2 + var).reshape(-1, F, p), rtol=1e-6)


def test_gpfa_segment_training_matches_whole_trials(lorenz, gpfa_lorenz):
    """Training on 20-bin segments (Yu et al.'s / elephant's scheme) finds the same subspace;
    whole-trial training reaches the higher whole-trial likelihood, as it maximises it."""
    seg = GPFA(n_latents=8, max_iter=100, segment_bins=20).fit(lorenz)
    angles = np.degrees(subspace_angles(seg.C_, gpfa_lorenz.C_))
    assert np.sort(angles)[:5].max() < 5.0
    train = lorenz.sel(trial=lorenz["split"] == "train")
    y = torch.as_tensor(np.sqrt(train["counts"].values), dtype=F64)
    assert gpfa_posterior(y, gpfa_lorenz.params_).log_likelihood > gpfa_posterior(y, seg.params_).log_likelihood


def test_silent_neurons_do_not_break_models(lorenz):
    counts = lorenz["counts"].values.copy()
    counts[:, :, [0, 7]] = 0
    rec = _with_counts(lorenz, counts)
    for model in (GPFA(n_latents=3, max_iter=20), FactorAnalysisModel(n_latents=3), SmoothingModel()):
        rates = model.fit(rec).predict(rec)
        assert np.all(np.isfinite(rates)) and np.all(np.isfinite(model.transform(rec)))
        assert float(rates[..., 0].max()) < 1e-6


def test_gpfa_timescales_are_learned_and_fixed_when_asked(lorenz):
    fixed = GPFA(n_latents=2, max_iter=5, learn_tau=False, tau_init_ms=70).fit(lorenz)
    np.testing.assert_allclose(fixed.tau_ms_, 70.0)
    learned = GPFA(n_latents=2, max_iter=5, tau_init_ms=70).fit(lorenz)
    assert not np.allclose(learned.tau_ms_, 70.0)


# ---------------------------------------------------------------------------------------------
# Cross-check against elephant
# ---------------------------------------------------------------------------------------------

def test_gpfa_agrees_with_elephant(lorenz):
    from analysis.gpfa_benchmark import counts_to_spiketrains

    pytest.importorskip("elephant")
    import quantities as pq
    from elephant.gpfa import GPFA as ElephantGPFA

    train = lorenz.sel(trial=lorenz["split"] == "train")
    counts = train["counts"].values
    rng = np.random.default_rng(0)
    np.random.seed(0)   # elephant draws its training segments from numpy's global generator
    theirs = ElephantGPFA(bin_size=10 * pq.ms, x_dim=3, em_max_iters=100, em_tol=1e-6)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        theirs.fit(counts_to_spiketrains(counts, 0.01, rng))
    ours = GPFA(n_latents=3, max_iter=100, tol=1e-6).fit(train)
    pe = theirs.params_estimated
    assert np.degrees(subspace_angles(pe["C"], ours.C_)).max() < 5.0          # measured < 2 deg
    tau_theirs = np.sort(10.0 / np.sqrt(pe["gamma"]))
    np.testing.assert_allclose(np.sort(ours.tau_ms_), tau_theirs, rtol=0.25)  # measured within 12 %
    # elephant maximises the likelihood of 20-bin segments, we that of whole trials: evaluated
    # with the whole-trial likelihood, ours must be at least as high, and close.
    y = torch.as_tensor(np.sqrt(counts), dtype=F64)
    theirs_params = GPFAParams(*(torch.as_tensor(np.array(v, float)) for v in
                                 (pe["C"], pe["d"], np.diag(pe["R"]), pe["gamma"], pe["eps"])))
    ll_theirs = gpfa_posterior(y, theirs_params).log_likelihood
    ll_ours = ours.log_likelihood_[-1]
    assert ll_ours >= ll_theirs
    assert (ll_ours - ll_theirs) / y.numel() < 1e-3                            # nats per observation
    # and their own (segment) likelihood per bin is of the same order as ours
    ll_seg = [v for v in theirs.fit_info["log_likelihoods"] if np.isfinite(v)][-1]
    per_bin_theirs = ll_seg / (counts.shape[0] * 3 * 20)   # 3 segments of 20 bins per 50-bin trial
    per_bin_ours = ll_ours / (counts.shape[0] * counts.shape[1])
    assert 0.5 < per_bin_theirs / per_bin_ours < 2.0


# ---------------------------------------------------------------------------------------------
# The shared surface: shapes, labels, validation
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [lambda: SmoothingModel(), lambda: SmoothingModel(n_components=4),
                                  lambda: FactorAnalysisModel(n_latents=4), lambda: GPFA(n_latents=4, max_iter=5),
                                  lambda: PCLatentModel(n_latents=4, epochs=2, transform_steps=5),
                                  lambda: LFADS(n_latents=4, ic_dim=4, encoder_dim=8, generator_dim=8, epochs=2),
                                  lambda: PiVAE(n_latents=4, hidden=(8,), epochs=2),
                                  lambda: PiVAE(n_latents=4, label="condition", label_type="discrete", epochs=2),
                                  lambda: PoissonVAE(n_latents=4, hidden=(8,), epochs=2)])
def test_surface_shapes_and_labels(lorenz, make):
    model = make().fit(lorenz)
    assert model.fit_seconds_ > 0
    z = model.transform(lorenz)
    assert z.dims == ("trial", "time", "latent")
    n_latent = {SmoothingModel: int((~lorenz["heldout"]).sum())}.get(type(model), 4)
    if getattr(model, "n_components", None):
        n_latent = model.n_components
    assert z.shape == (60, 50, n_latent)
    np.testing.assert_array_equal(z["trial"], lorenz["trial"])
    np.testing.assert_array_equal(z["split"], lorenz["split"])
    rates = model.predict(lorenz)
    assert rates.dims == ("trial", "time", "neuron") and rates.shape == lorenz["counts"].shape
    assert rates.attrs["units"] == "counts/bin"
    assert np.all(np.isfinite(rates)) and np.all(rates >= 0)
    np.testing.assert_array_equal(rates["heldout"], lorenz["heldout"])
    assert np.isfinite(model.score(lorenz))
    # transform on a subset of trials and a shorter window works and agrees with held-in-only input
    sub = lorenz.isel(trial=slice(0, 5))
    assert model.transform(sub).shape[:2] == (5, 50)
    assert model.transform(lorenz.isel(time=slice(0, 20))).shape[:2] == (60, 20)


def test_latents_use_held_in_neurons_only(lorenz, gpfa_lorenz):
    """Scrambling held-out neurons' counts changes neither latents nor predictions."""
    scrambled = lorenz.copy(deep=True)
    ho = np.flatnonzero(lorenz["heldout"].values)
    scrambled["counts"][:, :, ho] = np.random.default_rng(0).poisson(3.0, (60, 50, len(ho)))
    for model in (gpfa_lorenz, SmoothingModel().fit(lorenz)):
        xr.testing.assert_allclose(model.transform(lorenz), model.transform(scrambled))
        xr.testing.assert_allclose(model.predict(lorenz), model.predict(scrambled))


def test_gpfa_latents_are_orthonormalised(gpfa_lorenz):
    u = gpfa_lorenz.loadings_orth_
    np.testing.assert_allclose(u.T @ u, np.eye(u.shape[1]), atol=1e-10)
    np.testing.assert_allclose(u @ gpfa_lorenz.orth_, gpfa_lorenz.C_, atol=1e-10)


def _with_counts(rec, values, dims=("trial", "time", "neuron")):
    out = rec.drop_vars("counts")
    out["counts"] = (dims, values)
    return out


BAD = {
    "not a dataset": (lambda r: r["counts"], "xarray.Dataset"),
    "missing counts": (lambda r: r.drop_vars("counts"), "'counts'"),
    "wrong dims": (lambda r: _with_counts(r, r["counts"].values[..., 0], ("trial", "time")), "dims"),
    "negative": (lambda r: _with_counts(r, np.where(np.arange(30) == 3, -1, r["counts"].values)), "negative"),
    "nan": (lambda r: _with_counts(r, np.where(np.arange(30) == 3, np.nan, r["counts"].values)), "NaN"),
    "non-integer": (lambda r: _with_counts(r, r["counts"].values + 0.5), "integer"),
    "empty time": (lambda r: r.isel(time=slice(0, 0)), "'time'"),
    "no training trials": (lambda r: r.assign_coords(split=("trial", np.full(60, "test"))), "split"),
    "all held out": (lambda r: r.assign_coords(heldout=("neuron", np.ones(30, bool))), "heldout"),
    "no bin width": (lambda r: r.assign_attrs(bin_width=None), "bin_width"),
}


@pytest.mark.parametrize("case", sorted(BAD))
@pytest.mark.parametrize("cls", [SmoothingModel, FactorAnalysisModel, GPFA, PCLatentModel, LFADS, PiVAE, PoissonVAE])
def test_bad_input_raises_data_error_naming_the_problem(lorenz, case, cls):
    corrupt, words = BAD[case]
    with pytest.raises(DataError, match=words):
        cls().fit(corrupt(lorenz))


def test_mismatched_recording_at_transform_raises(lorenz):
    model = SmoothingModel().fit(lorenz)
    with pytest.raises(DataError, match="neuron"):
        model.transform(lorenz.isel(neuron=slice(0, 20)))
    with pytest.raises(DataError, match="NaN"):
        model.predict(_with_counts(lorenz, np.where(np.arange(30) == 3, np.nan, lorenz["counts"].values)))
    flipped = lorenz.assign_coords(heldout=("neuron", ~lorenz["heldout"].values))
    with pytest.raises(DataError, match="heldout"):
        model.predict(flipped)
    # without the coordinate, the neurons held in at fit are used
    xr.testing.assert_allclose(model.transform(lorenz.drop_vars("heldout")), model.transform(lorenz))
    with pytest.raises(DataError, match="held out"):
        SmoothingModel().fit(lorenz.drop_vars("heldout")).score(lorenz.drop_vars("heldout"))


def test_fit_and_infer_never_use_more_threads_than_the_free_cores(lorenz, monkeypatch):
    """A model's numerics (fit, the training readout's latents, inference) run at no more intra-op
    threads than the cores free as they start: a wider team waits at every barrier for a
    descheduled thread when another process shares the machine."""
    from pcsim import parallel

    seen = []
    original = GPFA._fit_latents, GPFA._infer

    def fit_latents(self, *args):
        seen.append(("fit", torch.get_num_threads()))
        return original[0](self, *args)

    def infer(self, *args):
        seen.append(("infer", torch.get_num_threads()))
        return original[1](self, *args)

    monkeypatch.setattr(GPFA, "_fit_latents", fit_latents)
    monkeypatch.setattr(GPFA, "_infer", infer)
    torch.set_num_threads(2)
    try:
        for free, expected in ((1, 1), (64, 2)):
            monkeypatch.setattr(parallel, "free_cores", lambda free=free: free)
            seen.clear()
            model = GPFA(n_latents=4, max_iter=3, readout="glm").fit(lorenz)
            model.infer(lorenz)
            assert [k for k, _ in seen] == ["fit", "infer", "infer"]
            assert {n for _, n in seen} == {expected}, free
            assert torch.get_num_threads() == 2          # restored afterwards
    finally:
        torch.set_num_threads(1)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_orthonormalised_axes_reconstruct_the_loadings_and_ignore_a_rotation_of_the_latents(seed):
    """FA's and GPFA's one orthonormalisation: U orth = C, U'U = I, and the axes of C R for any
    rotation or reflection R of the latents are those of C (the SVD's signs fixed), so refits that
    land on another rotation of the same loadings give the same axes."""
    from analysis.models.fa import orthonormalise

    rng = np.random.default_rng(seed)
    C = rng.standard_normal((12, 4))
    U, orth = orthonormalise(C)
    np.testing.assert_allclose(U @ orth, C, atol=1e-10)
    np.testing.assert_allclose(U.T @ U, np.eye(4), atol=1e-10)
    R, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    U_rot, _ = orthonormalise(C @ R)
    np.testing.assert_allclose(U_rot, U, atol=1e-8)
