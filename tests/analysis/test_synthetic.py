"""The Lorenz ground truth: reproducible, at the requested rate, Poisson, with decodable behaviour."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.synthetic import lorenz_recording, lorenz_trajectory
from pcsim.errors import ConfigError
from pcsim.results import convention_problems


def test_same_seed_same_recording_other_seed_differs():
    a, b, c = lorenz_recording(12, 8, 20, seed=1), lorenz_recording(12, 8, 20, seed=1), lorenz_recording(12, 8, 20, seed=2)
    assert a.identical(b)
    assert not np.array_equal(a.counts.values, c.counts.values)


def test_rates_counts_and_behaviour_follow_their_definitions():
    ds = lorenz_recording(80, 20, 50, bin_width=0.01, mean_rate_hz=7.0, seed=0)
    # population mean rate as requested (counts per bin = Hz x bin width)
    assert float(ds.rates.mean()) == pytest.approx(7.0 * ds.attrs["bin_width"], rel=1e-9)
    assert ds.attrs["mean_rate_hz"] == 7.0
    # Poisson counts: mean and variance both match the rates (pooled over many bins)
    r, n = ds.rates.values.ravel(), ds.counts.values.ravel()
    assert abs(n.mean() - r.mean()) < 4 * np.sqrt(r.mean() / n.size)
    assert np.var(n - r) == pytest.approx(r.mean(), rel=0.05)
    # log rates are affine in the latents, and behaviour is linear in them up to its noise
    z = ds.latents.values.reshape(-1, 3)
    design = np.column_stack([z, np.ones(len(z))])
    resid = np.linalg.lstsq(design, np.log(ds.rates.values.reshape(len(z), -1)), rcond=None)[1]
    assert resid.max() < 1e-9
    beh = ds.behaviour.values.reshape(len(z), -1)
    fit = design @ np.linalg.lstsq(design, beh, rcond=None)[0]
    assert 1 - ((beh - fit) ** 2).sum() / ((beh - beh.mean(0)) ** 2).sum() > 0.95
    # latents are z-scored over the data set
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(0), 1, rtol=1e-9)


def test_lorenz_integrator_converges_at_fourth_order():
    start = np.array([1.0, 1.0, 25.0])
    ref = lorenz_trajectory(801, dt=0.00025, start=start)[-1]
    err = [np.abs(lorenz_trajectory(n + 1, dt=0.2 / n, start=start)[-1] - ref).max() for n in (50, 100)]
    assert err[0] / err[1] > 12  # halving dt cuts the error ~16x


def test_conditions_label_random_starts_by_their_nearest_centre():
    ds = lorenz_recording(200, 5, 10, n_conditions=4, condition_jitter=None, seed=3)
    start = ds.latents.isel(time=0).values  # (trial, 3)
    labels = ds.condition.values
    assert set(np.unique(labels)) <= set(range(4)) and len(np.unique(labels)) > 1
    # trials sharing a label start closer together than trials that do not
    d = np.linalg.norm(start[:, None] - start[None], axis=-1)
    same = labels[:, None] == labels[None]
    off = ~np.eye(len(labels), dtype=bool)
    assert d[same & off].mean() < 0.7 * d[~same].mean()


@settings(max_examples=30, deadline=None)
@given(key=st.sampled_from(["n_trials", "n_neurons", "n_bins", "bin_width", "mean_rate_hz", "dt",
                            "heldout_fraction", "test_fraction"]),
       value=st.one_of(st.sampled_from([0, -1, -0.5, 1.5, float("nan"), float("inf"), True, "3", None]),
                       st.integers(-100, 0)))
def test_bad_arguments_are_config_errors_naming_the_argument(key, value):
    fractions = key.endswith("fraction")
    if fractions and isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < 1:
        return  # a valid fraction (0 draws none)
    if key in ("bin_width", "mean_rate_hz") and value == 1.5:
        return  # 1.5 s bins, 1.5 Hz: valid (dt = 1.5 is not: the Lorenz integration diverges)
    with pytest.raises(ConfigError, match=key):
        lorenz_recording(**{"n_trials": 6, "n_neurons": 4, "n_bins": 5, key: value})


def test_the_recording_follows_the_result_conventions_and_aligns_at_a_coordinate_it_holds():
    ds = lorenz_recording(6, 4, 5, n_conditions=2)
    assert convention_problems(ds) == []
    align = ds.attrs["align"]
    np.testing.assert_allclose(ds[align].values, np.arange(6) * 5 * 0.01)   # trials back to back, in s
    np.testing.assert_allclose(ds.stop_time.values - ds.start_time.values, 5 * 0.01)


# ----------------------------------------------------------------------------- further generators
from analysis.synthetic import (gp_recording, lds_recording, pivae_recording, ring_recording, rotation_dynamics,  # noqa: E402
                                silence_stretch, sinusoid_recording, squared_exponential)

GENERATORS = [sinusoid_recording, gp_recording, lds_recording, ring_recording]


@pytest.mark.parametrize("make", GENERATORS + [lorenz_recording, pivae_recording], ids=lambda f: f.__name__)
def test_each_generator_is_seeded_poisson_at_the_requested_rate_and_follows_the_conventions(make):
    a, b, c = make(30, 12, 40, seed=3), make(30, 12, 40, seed=3), make(30, 12, 40, seed=4)
    assert a.identical(b)
    assert not np.array_equal(a.counts.values, c.counts.values)
    ds = make(60, 20, 50, mean_rate_hz=7.0, seed=0)
    assert float(ds.rates.mean()) == pytest.approx(7.0 * ds.attrs["bin_width"], rel=1e-9)
    assert ds.attrs["mean_rate_hz"] == 7.0
    r, n = ds.rates.values.ravel(), ds.counts.values.ravel()
    assert abs(n.mean() - r.mean()) < 4 * np.sqrt(r.mean() / n.size)
    assert set(ds.split.values) == {"train", "test"} and ds.heldout.values.any()
    assert convention_problems(ds) == []


def test_sinusoid_latents_have_unit_variance_and_peak_at_their_frequencies():
    ds = sinusoid_recording(200, 10, 400, n_latents=3, seed=5)     # 4 s trials: 0.25 Hz resolution
    z = ds.latents.values
    np.testing.assert_allclose(z.var((0, 1)), 1.0, atol=0.08)
    power = (np.abs(np.fft.rfft(z, axis=1)) ** 2).mean(0)           # (freq, latent)
    freqs = np.fft.rfftfreq(z.shape[1], float(ds.attrs["bin_width"]))
    np.testing.assert_allclose(freqs[power.argmax(0)], ds.attrs["frequency_hz"], atol=0.25)


def test_gp_latents_autocorrelation_matches_their_kernel():
    ds = gp_recording(400, 5, 60, n_latents=2, timescale_ms=80.0, seed=2)
    z = ds.latents.values
    lags = np.arange(25)
    emp = np.array([(z[:, :z.shape[1] - k] * z[:, k:]).mean() for k in lags])
    kernel = squared_exponential(lags * float(ds.attrs["bin_width"]), 0.08)
    # an independent estimate: 800 draws of 60 bins each leave ~0.03 sampling error at short lags
    np.testing.assert_allclose(emp, kernel, atol=0.06)
    assert emp[8] < 0.7 < emp[4]       # the kernel's shape, not only its value at lag 0


def test_lds_latents_are_stationary_and_their_regression_recovers_the_dynamics():
    ds = lds_recording(300, 5, 80, n_latents=4, timescale_ms=250.0, frequency_hz=3.0, seed=1)
    z = ds.latents.values
    A = rotation_dynamics(4, 0.01, 250.0, 3.0)
    np.testing.assert_allclose(ds.attrs["dynamics"].reshape(4, 4), A)
    np.testing.assert_allclose(np.cov(z.reshape(-1, 4), rowvar=False), np.eye(4), atol=0.15)
    prev, nxt = z[:, :-1].reshape(-1, 4), z[:, 1:].reshape(-1, 4)
    A_hat = np.linalg.lstsq(prev, nxt, rcond=None)[0].T
    np.testing.assert_allclose(A_hat, A, atol=0.03)
    assert np.all(np.abs(np.linalg.eigvals(A)) < 1)


def test_ring_population_tuning_peaks_at_the_preferred_directions():
    ds = ring_recording(150, 16, 100, concentration=2.0, seed=0)
    theta = ds.head_direction.values.ravel()
    assert np.all((theta >= -np.pi) & (theta < np.pi))
    bins = np.linspace(-np.pi, np.pi, 25)
    which = np.digitize(theta, bins) - 1
    occupancy = np.bincount(which, minlength=24)
    counts = ds.counts.values.reshape(-1, 16)
    tuning = np.stack([np.bincount(which, counts[:, n], minlength=24) for n in range(16)], 1) / occupancy[:, None]
    centres = 0.5 * (bins[1:] + bins[:-1])
    peak = np.angle((tuning * np.exp(1j * centres)[:, None]).sum(0))      # circular mean of each tuning curve
    error = np.angle(np.exp(1j * (peak - ds.preferred_direction.values)))
    assert np.abs(error).max() < 0.3, error
    np.testing.assert_allclose(ds.latents.values[..., 0], np.cos(ds.head_direction.values), atol=1e-9)


def test_silence_stretch_silences_the_last_third_of_the_session_only():
    ds = sinusoid_recording(30, 8, 20, seed=0)
    quiet = silence_stretch(ds, 1 / 3)
    assert int(quiet.counts.isel(trial=slice(20, None)).sum()) == 0
    assert float(quiet.rates.isel(trial=slice(20, None)).max()) == 0.0
    assert quiet.counts.isel(trial=slice(0, 20)).identical(ds.counts.isel(trial=slice(0, 20)))
    assert quiet.attrs["silent_from"] == pytest.approx(20 * 20 * 0.01)
    with pytest.raises(ConfigError, match="fraction"):
        silence_stretch(ds, 1.5)
