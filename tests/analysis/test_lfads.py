"""The LFADS-style sequential VAE: its ELBO terms against closed forms, coordinated dropout by
gradient, forecasts as the generator run on, early stopping, divergence and determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.models import LFADS
from analysis.glm import poisson_nll
from analysis.models.lfads import LFADSNetwork, coordinated_dropout
from analysis.synthetic import lorenz_recording
from pcsim.errors import LearningDivergenceError
from pcsim.training import EarlyStopping


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def lorenz():
    return lorenz_recording(n_trials=24, n_neurons=20, n_bins=30, seed=1)


def _small(**kw):
    # autonomous (no controller) unless a test asks for one: the forecast test runs the generator on its own
    base = dict(n_latents=3, ic_dim=4, encoder_dim=8, generator_dim=8, controller_dim=0, epochs=2, batch_size=8,
                warmup_epochs=1)
    return LFADS(**{**base, **kw})


@pytest.fixture(scope="module")
def fitted(lorenz):
    return _small().fit(lorenz)


def _batch(seed=0, B=5, T=7, N=6):
    g = torch.Generator().manual_seed(seed)
    counts = torch.poisson(torch.full((B, T, N), 0.7), generator=g)
    return counts, torch.ones_like(counts), torch.arange(N) < 4


def test_kl_term_equals_closed_form():
    """The ELBO's KL of q(g0) and of the inferred inputs equals torch.distributions' KL to N(0, I)."""
    torch.manual_seed(0)
    model = LFADS(n_latents=2, ic_dim=3, encoder_dim=5, generator_dim=6, controller_dim=4, co_dim=2)
    net = LFADSNetwork(4, 6, 2, 3, 5, 6, 4, 2, 0.0).eval()
    counts, obs, hi = _batch()
    _, terms = model.loss(net, counts, obs, hi, sample=False)
    with torch.no_grad():
        _, _, q_ic, q_co, _ = net(counts[..., hi], sample=False)
    N01 = torch.distributions.Normal(0.0, 1.0)
    kl_ic = torch.distributions.kl_divergence(torch.distributions.Normal(q_ic.mean, torch.exp(0.5 * q_ic.log_var)), N01)
    kl_co = torch.distributions.kl_divergence(torch.distributions.Normal(q_co.mean, torch.exp(0.5 * q_co.log_var)), N01)
    terms = {k: v.detach() for k, v in terms.items()}
    assert float(terms["kl_ic"]) == pytest.approx(float(kl_ic.sum() / 5), rel=1e-5)
    assert float(terms["kl_co"]) == pytest.approx(float(kl_co.sum() / 5), rel=1e-5)
    # and the reconstruction term is the Poisson NLL (up to log y!) of every neuron
    ref = -torch.distributions.Poisson(torch.exp(terms["log_rates"])).log_prob(counts) - torch.lgamma(counts + 1)
    assert float(terms["recon"]) == pytest.approx(float(ref.sum() / 5), rel=1e-5)


def test_coordinated_dropout_scored_entries_are_never_input():
    """Every held-in entry the encoder sees has zero gradient in the reconstruction term; every
    dropped entry (and every held-out neuron) has a non-zero one."""
    torch.manual_seed(0)
    model = LFADS()
    net = LFADSNetwork(4, 6, 2, 3, 5, 6, 0, 1, 0.0)
    counts, obs, hi = _batch(B=6, T=9)
    torch.manual_seed(3)
    x, w = coordinated_dropout(counts[..., hi], obs[..., hi], 0.4)
    kept = w == 0
    assert 0.2 < kept.float().mean() < 0.9
    torch.manual_seed(3)     # the loss draws the same mask first
    _, terms = model.loss(net, counts, obs, hi, cd_rate=0.4)
    grad = torch.autograd.grad(terms["recon"], terms["log_rates"])[0]
    g_in = grad[..., hi]
    assert torch.all(g_in[kept] == 0)
    assert torch.all(g_in[~kept] != 0)
    assert torch.all(grad[..., ~hi] != 0)
    # kept inputs are rescaled so the input's expectation is unchanged
    torch.testing.assert_close(x[kept], counts[..., hi][kept] / 0.6)


def test_coordinated_dropout_of_unobserved_bins():
    counts, obs, hi = _batch()
    obs[:, 2] = 0
    x, w = coordinated_dropout(counts, obs, 0.5)
    assert torch.all(x[:, 2] == 0) and torch.all(w[:, 2] == 0)
    x0, w0 = coordinated_dropout(counts, obs, 0.0)
    torch.testing.assert_close(x0, counts * obs)
    torch.testing.assert_close(w0, obs)


def test_poisson_nll_gradient_is_rate_minus_count():
    log_rates = torch.randn(3, 4, requires_grad=True)
    counts = torch.poisson(torch.full((3, 4), 2.0))
    g = torch.autograd.grad(poisson_nll(log_rates, counts).sum(), log_rates)[0]
    torch.testing.assert_close(g, torch.exp(log_rates) - counts)


def test_forecast_continues_the_generator(lorenz, fitted):
    """Rates predicted in the window and forecast after it are one run of the generator from the
    posterior mean of g0, T + n bins long."""
    inf = fitted.infer(lorenz)
    net = fitted.network_
    hi = ~fitted.heldout_
    with torch.no_grad():
        q = net.encode_ic(torch.as_tensor(lorenz["counts"].values[..., hi], dtype=torch.float32))
        log_rates, _ = net.run_generator(net.initial_state(q.mean), 30 + 6)
    long = torch.exp(log_rates).double().numpy()
    np.testing.assert_allclose(inf.rates.values, long[:, :30], rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(inf.forecast(6).values, long[:, 30:], rtol=1e-4, atol=1e-7)
    assert inf.forecast(6).dims == ("trial", "time", "neuron")


def test_controller_model_fits_and_forecasts(lorenz):
    model = _small(controller_dim=4, co_dim=1, epochs=1).fit(lorenz)
    assert model.forecast(lorenz, 3).shape == (24, 3, 20)
    assert np.isfinite(model.score(lorenz))


def test_collapse_diagnostics_are_those_of_the_encoder(lorenz, fitted):
    """kl_per_latent_ is the mean closed-form KL of q(g0) over the training trials; active units
    are the dimensions whose posterior mean varies by more than 0.01."""
    train = lorenz.sel(trial=lorenz["split"] == "train")
    hi = ~fitted.heldout_
    with torch.no_grad():
        q = fitted.network_.encode_ic(torch.as_tensor(train["counts"].values[..., hi], dtype=torch.float32))
    # fit holds out a validation split of the training trials: the diagnostics are of the others
    assert fitted.kl_per_latent_.shape == (4,)
    kl = 0.5 * (q.mean ** 2 + torch.exp(q.log_var) - 1 - q.log_var)
    assert np.all(fitted.kl_per_latent_ >= 0)
    assert abs(float(kl.mean()) - fitted.kl_per_latent_.mean()) < 0.5 * float(kl.mean()) + 1e-6
    assert 0 <= fitted.active_units_ <= 4


def test_deterministic_under_seed_and_global_rng_untouched(lorenz):
    state = torch.random.get_rng_state()
    a = _small(epochs=1).fit(lorenz).transform(lorenz).values
    assert torch.equal(torch.random.get_rng_state(), state)
    b = _small(epochs=1).fit(lorenz).transform(lorenz).values
    c = _small(epochs=1, seed=1).fit(lorenz).transform(lorenz).values
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_nan_loss_names_epoch_and_batch_and_keeps_the_last_good_parameters(lorenz, monkeypatch):
    """A loss that turns NaN in the first batch of epoch 2 (a user's data, an overflow) stops the
    fit with an error naming epoch 2, batch 0; the parameters were not touched by that step and
    are the ones kept, finite, in checkpoint_."""
    import analysis.models.lfads as lfads

    calls = [0]
    real = lfads.poisson_nll

    def poisoned(*args, **kwargs):
        calls[0] += 1   # epoch 1: 3 batches of the 22 training trials, then the validation loss
        out = real(*args, **kwargs)
        return out * float("nan") if calls[0] == 5 else out

    monkeypatch.setattr(lfads, "poisson_nll", poisoned)
    model = _small(epochs=3)
    with pytest.raises(LearningDivergenceError, match=r"epoch 2, batch 0") as err:
        model.fit(lorenz)
    assert (err.value.epoch, err.value.batch) == (1, 0)
    assert "checkpoint_" in str(err.value)
    state = model.network_.state_dict()
    assert all(torch.isfinite(v).all() for v in model.checkpoint_.values())
    for k, v in model.checkpoint_.items():
        torch.testing.assert_close(state[k], v)


def test_early_stopping_stops_and_keeps_best(lorenz):
    model = _small(epochs=40, patience=2, warmup_epochs=1, lr=0.2).fit(lorenz)
    n = len(model.validation_loss_)
    assert n <= 40
    if n < 40:
        assert n - model.best_epoch_ == 2
    assert model.best_epoch_ >= 1
    after = model.validation_loss_[model.best_epoch_ - 1:]
    assert after[0] == after.min()


@settings(max_examples=30, deadline=None)
@given(losses=st.lists(st.floats(-10, 10), min_size=1, max_size=30), patience=st.integers(1, 5),
       start=st.integers(0, 4))
def test_early_stopping_property(losses, patience, start):
    """The kept checkpoint is the epoch (>= start) with the lowest loss so far; stop is called
    exactly patience epochs after it."""
    epoch = [0]
    early = EarlyStopping(patience, lambda: epoch[0], start=start)
    for e, loss in enumerate(losses, 1):
        epoch[0] = e
        early.record(e, loss)
        seen = [(v, k) for k, v in enumerate(losses[:e], 1) if k >= start]
        if seen:
            best = min(seen)[1]
            assert early.best_epoch == best and early.checkpoint == best
        else:
            assert early.checkpoint == e
        stopped = early(e)
        assert stopped == (e >= start and e - early.best_epoch >= patience)
        if stopped:
            break


def test_validation_loss_is_the_heldout_nll_of_the_kept_parameters(lorenz):
    """With ``select_on="heldout"`` the loss early stopping and the learning-rate decay watch is
    the held-out neurons' Poisson NLL (up to log y!) per validation trial, inferred from the
    held-in neurons: recomputed here from ``predict`` of the kept model on its validation trials."""
    model = _small(epochs=4, patience=10, select_on="heldout").fit(lorenz)
    train = lorenz.isel(trial=np.flatnonzero(lorenz["split"].values == "train"))
    val = train.isel(trial=model.validation_index_).drop_vars("split")
    ho = model.heldout_
    rates = model.predict(val).values[..., ho]
    y = val["counts"].values[..., ho]
    ref = (rates - y * np.log(rates)).sum() / val.sizes["trial"]
    assert model.validation_loss_[model.best_epoch_ - 1] == pytest.approx(ref, rel=1e-4)
    elbo = _small(epochs=4, patience=10, select_on="elbo").fit(lorenz)
    assert elbo.validation_loss_[elbo.best_epoch_ - 1] != pytest.approx(ref, rel=1e-2)


def test_learning_rate_decays_on_validation_plateaus(lorenz):
    """``lr_`` follows ReduceLROnPlateau replayed on ``validation_loss_``: after warm-up, the rate
    is multiplied by ``lr_decay`` once ``lr_patience`` epochs pass with neither a new best nor a
    decay, and never goes below ``lr_min``."""
    model = _small(epochs=14, patience=100, warmup_epochs=2, lr=0.3, lr_decay=0.5, lr_patience=2,
                   lr_min=0.05).fit(lorenz)
    lr, best, best_epoch, last = 0.3, np.inf, 0, 0
    expected = []
    for epoch, loss in enumerate(model.validation_loss_, 1):
        if epoch < 2 or loss < best:
            best, best_epoch = (loss, epoch) if epoch >= 2 else (best, epoch)
        expected.append(lr)
        if epoch >= 2 and epoch - max(best_epoch, last) >= 2:
            lr, last = max(lr * 0.5, 0.05), epoch
    np.testing.assert_allclose(model.lr_, expected)
    assert np.all(np.diff(model.lr_) <= 0) and model.lr_[-1] == 0.05   # decayed down to the floor


def test_posterior_draws_average_to_the_mean_when_the_posterior_is_a_point(lorenz, fitted):
    """Averaging ``n_samples`` posterior draws is deterministic, differs from the rate at the
    posterior mean, and equals it when q(g0) has (numerically) no variance."""
    import copy

    draws = copy.deepcopy(fitted).set_params(n_samples=5)
    a, b = draws.predict(lorenz).values, draws.predict(lorenz).values
    np.testing.assert_array_equal(a, b)
    mean = fitted.predict(lorenz).values
    assert not np.allclose(a, mean, rtol=1e-3)
    with torch.no_grad():   # log-variance half of the encoder head -> -60
        head = draws.network_.ic_head
        head.weight[draws.ic_dim:] = 0.0
        head.bias[draws.ic_dim:] = -60.0
    np.testing.assert_allclose(draws.predict(lorenz).values, mean, rtol=1e-5)
    np.testing.assert_allclose(draws.forecast(lorenz, 3).values, fitted.forecast(lorenz, 3).values, rtol=1e-5)
