"""The predictive-coding latent model on a small Lorenz recording (seconds, CPU).

- it recovers the Lorenz latents (affine latent R² on test trials above a threshold verified
  with margin) and predicts held-out neurons better than their mean rate (co-bps > 0);
- predict returns every neuron's rate in counts per bin, equal to ``exp(x C + d)`` of the
  transformed latents;
- held-out neurons are really hidden: changing their counts changes neither latents nor rates;
- the same seed gives the same fit; bad input fails at the boundary.
"""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

from analysis.metrics import latent_r2
from analysis.models.pc_latent import PCLatentModel
from analysis.synthetic import lorenz_recording
from pcsim.errors import ConfigError, DataError

SMALL = dict(n_trials=60, n_neurons=30, n_bins=60, seed=0)
FIT = dict(n_latents=8, epochs=40, seed=0)


@pytest.fixture(scope="module")
def recording() -> xr.Dataset:
    return lorenz_recording(**SMALL)


@pytest.fixture(scope="module")
def fitted(recording) -> PCLatentModel:
    return PCLatentModel(**FIT).fit(recording)


def split(recording):
    train = recording["split"].values == "train"
    return np.flatnonzero(train), np.flatnonzero(~train)


def test_recovers_the_lorenz_latents_and_predicts_heldout_neurons(recording, fitted):
    lat = fitted.transform(recording)
    tr, te = split(recording)
    r2 = latent_r2(lat.isel(trial=tr), recording["latents"].isel(trial=tr),
                   lat.isel(trial=te), recording["latents"].isel(trial=te))
    # measured 0.80 for this recording and seed (0.80-0.86 over model seeds 0-1 and recording
    # seeds 0-2; 0.72 with 4 latents); co-bps 0.72 (true rates: 0.98)
    assert r2 > 0.7, r2
    assert fitted.score(recording) > 0.4
    # training settles: the Laplace free energy falls overall and ends flat
    F = fitted.free_energy_
    assert F.shape == (FIT["epochs"],) and F[-1] < F[0] and abs(F[-1] - F[-5]) < 0.01 * abs(F[-1])


def test_predict_returns_every_neurons_rate_in_counts_per_bin(recording, fitted):
    rates = fitted.predict(recording)
    assert rates.dims == ("trial", "time", "neuron")
    assert rates.shape == recording["counts"].transpose("trial", "time", "neuron").shape
    assert rates.attrs["units"] == "counts/bin"
    np.testing.assert_array_equal(rates["neuron"].values, recording["neuron"].values)
    assert np.all(np.isfinite(rates.values)) and np.all(rates.values > 0)
    # the mean predicted rate is the mean count (8 Hz at 10 ms bins = 0.08 counts per bin), not Hz
    assert 0.5 < rates.values.mean() / recording["counts"].values.mean() < 2.0
    # the generative readout: rates are E[exp(x C + d)] under the Laplace posterior of the latents,
    # exp(m C + d + c' Cov(x_t) c / 2) at its mean m (the transformed latents), above exp(m C + d)
    lat = fitted.transform(recording).values
    C = fitted.network_.readout_weights[0].double().numpy()
    d = fitted.network_.readout_bias[0, 0].double().numpy()
    cov = fitted.infer(recording).state.posterior.cov[0].double().numpy()         # (trial, time, D, D)
    var = np.einsum("btij,in,jn->btn", cov, C, C)
    assert np.all(var > 0)
    np.testing.assert_allclose(rates.values, np.exp(lat @ C + d + 0.5 * var), rtol=1e-5)
    lat_da = fitted.transform(recording)
    assert lat_da.dims == ("trial", "time", "latent") and lat_da.sizes["latent"] == FIT["n_latents"]


def test_heldout_neurons_are_hidden_from_inference(recording, fitted):
    _, te = split(recording)
    test = recording.isel(trial=te)
    ho = test["heldout"].values
    changed = test.copy(deep=True)
    rng = np.random.default_rng(1)
    changed["counts"].values[..., ho] = rng.poisson(2.0, changed["counts"].values[..., ho].shape)
    assert not np.array_equal(changed["counts"].values, test["counts"].values)
    np.testing.assert_array_equal(fitted.transform(changed).values, fitted.transform(test).values)
    np.testing.assert_array_equal(fitted.predict(changed).values, fitted.predict(test).values)
    # whereas a held-in neuron does move the latents
    moved = test.copy(deep=True)
    moved["counts"].values[0, :, np.flatnonzero(~ho)[0]] += 3
    assert not np.allclose(fitted.transform(moved).values[0], fitted.transform(test).values[0])


def test_same_seed_same_fit_and_another_seed_another(recording):
    cfg = dict(n_latents=4, epochs=5, seed=3)
    a = PCLatentModel(**cfg).fit(recording).transform(recording).values
    b = PCLatentModel(**cfg).fit(recording).transform(recording).values
    np.testing.assert_array_equal(a, b)
    c = PCLatentModel(**{**cfg, "seed": 4}).fit(recording).transform(recording).values
    assert not np.allclose(a, c)


def test_glm_readout_option(recording):
    m = PCLatentModel(n_latents=4, epochs=5, readout="glm").fit(recording)
    rates = m.predict(recording)
    assert rates.dims == ("trial", "time", "neuron") and np.all(rates.values > 0)
    assert np.isfinite(m.score(recording))


def test_bad_input_fails_at_the_boundary(recording):
    with pytest.raises(ConfigError, match="not fitted"):
        PCLatentModel().transform(recording)
    bad = recording.copy(deep=True)
    bad["counts"] = bad["counts"].astype(float)
    bad["counts"].values[0, 3, 2] = np.nan
    with pytest.raises(DataError, match="NaN"):
        PCLatentModel(epochs=1).fit(bad)
    # hyper-parameters are stored as given and checked in fit (scikit-learn's contract)
    with pytest.raises(ConfigError, match="readout"):
        PCLatentModel(readout="linear").fit(recording)
    with pytest.raises(ConfigError, match="n_latents"):
        PCLatentModel(n_latents=0).fit(recording)


def test_forecast_beats_the_mean_rate_on_unseen_forward_bins(recording, fitted):
    """fp-bps > 0: rolling the learned dynamics on from the last relaxed latent predicts the
    next bins of test trials better than each neuron's mean rate there (NLB's null)."""
    from analysis.metrics import fp_bps

    _, test = split(recording)
    seen = recording.isel(trial=test, time=slice(0, 50))
    ahead = recording.isel(trial=test, time=slice(50, 55))
    fwd = fitted.forecast(seen, 5)
    assert fwd.dims == ("trial", "time", "neuron") and fwd.attrs["units"] == "counts/bin"
    np.testing.assert_allclose(fwd.time.values, ahead.time.values)
    assert fp_bps(fwd.values, ahead.counts.values) > 0


def test_a_learning_rate_that_blows_up_the_fit_is_named(recording):
    # the EM loop runs on pcsim.training.train, which watches the parameters and the energy
    from pcsim.errors import LearningDivergenceError

    with pytest.raises(LearningDivergenceError, match="lr"):
        PCLatentModel(**{**FIT, "lr": 1e12, "epochs": 3}).fit(recording)


# ----------------------------------------------------------------------------- robustness
from analysis.metrics import co_bps  # noqa: E402
from analysis.synthetic import gp_recording, silence_stretch, sinusoid_recording  # noqa: E402


def test_a_recording_whose_units_fall_silent_fits_and_predicts_near_zero_rates_there():
    # issue 11: every unit stops firing for the last third of the session. With a random start
    # and the dynamics weights at the full Adam step this diverged (NaN readout at epoch ~6: the
    # dynamics expanded, the Laplace variance of the unconstrained silent latents followed and
    # overflowed the expected rate exp(eta + var/2)).
    rec = silence_stretch(sinusoid_recording(60, 24, 60, seed=0))
    silent = rec.counts.values.sum((1, 2)) == 0
    assert 15 <= silent.sum() <= 25
    model = PCLatentModel(n_latents=4, epochs=30, seed=0).fit(rec)
    rates = model.predict(rec).values
    assert np.isfinite(rates).all()
    # measured: 0.0013 counts/bin on silent trials against 0.099 on the others (true mean 0.1)
    assert rates[silent].mean() < 0.05 * rates[~silent].mean()
    assert 0.5 < rates[~silent].mean() / rec.counts.values[~silent].mean() < 2.0


def test_model_seeds_barely_move_the_fit():
    # issue 11: co-bps moved by up to 0.076 between model seeds (random start). The factor-analysis
    # start is deterministic; with whole-batch EM the seed only orders the trials of the one
    # batch. Measured: spread 5e-5 (a random start: 0.137, seeds 0-2: 0.162, 0.069, 0.025).
    rec = gp_recording(60, 30, 50, seed=0)
    test, ho = rec.split.values == "test", rec.heldout.values
    scores = [co_bps(PCLatentModel(n_latents=4, epochs=20, batch_size=100, seed=s).fit(rec).infer(rec)
                     .rates.values[test][..., ho], rec.counts.values[test][..., ho]) for s in (0, 1, 2)]
    assert np.ptp(scores) < 0.01, scores
    assert min(scores) > 0.05, scores
