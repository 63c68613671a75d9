"""pi-VAE and its unconditioned ablation: the product of Gaussians, the conditional prior on a
tiny instance, labels refused when bad, the synthetic generator, and the benchmark end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.models import PiVAE, PoissonVAE
from analysis.models.pivae import product_of_gaussians
from analysis.recording import split_recording
from analysis.synthetic import pivae_recording
from pcsim.cli import main as cli
from pcsim.errors import DataError
from pcsim.generative.base import Posterior

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def synthetic():
    return pivae_recording(n_trials=30, n_neurons=20, n_bins=20, seed=0)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2 ** 16))
def test_product_of_gaussians_is_the_normalised_product(seed):
    """log q_a(z) + log q_b(z) - log q_ab(z) does not depend on z (the product, renormalised)."""
    g = torch.Generator().manual_seed(seed)
    a = Posterior(torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64))
    b = Posterior(torch.randn(3, 2, generator=g, dtype=torch.float64), torch.randn(3, 2, generator=g, dtype=torch.float64))
    ab = product_of_gaussians(a, b)
    z = 3 * torch.randn(5, 3, 2, generator=g, dtype=torch.float64)
    diff = a.log_prob(z) + b.log_prob(z) - ab.log_prob(z)                       # (K, N)
    torch.testing.assert_close(diff, diff[:1].expand_as(diff))


def _labelled_instance(seed=0):
    """A 1-D latent whose mean is set by a 3-class label, z | u ~ N(mu_u, 0.3^2), mu = (-2, 0, 2),
    read out by 30 Poisson neurons with log-linear tuning."""
    rng = np.random.default_rng(seed)
    B, T, N = 40, 20, 30
    u = np.repeat(np.arange(B) % 3, T).reshape(B, T)
    mu = np.array([-2.0, 0.0, 2.0])
    z = mu[u] + 0.3 * rng.standard_normal((B, T))
    a = rng.uniform(0.5, 1.0, N) * rng.choice([-1, 1], N)
    rates = np.exp(0.5 + z[..., None] * a)
    ds = xr.Dataset({"counts": (("trial", "time", "neuron"), rng.poisson(rates)),
                     "latents": (("trial", "time", "latent"), z[..., None])},
                    coords={"trial": np.arange(B), "time": (np.arange(T) + 0.5) * 0.05, "neuron": np.arange(N),
                            "condition": ("trial", np.arange(B) % 3)},
                    attrs={"bin_width": 0.05})
    return split_recording(ds, heldout_fraction=0.2, test_fraction=0.2, seed=seed), mu


def test_conditional_prior_recovers_the_label_dependent_mean():
    """Mapped into the true latent's coordinates (the affine map from posterior means to the truth
    on the training trials), the learned prior means of the three classes are the true ones."""
    rec, mu = _labelled_instance()
    model = PiVAE(n_latents=1, label="condition", label_type="discrete", hidden=(20,), epochs=150,
                  batch_size=128, lr=1e-2, patience=30).fit(rec)
    np.testing.assert_array_equal(model.classes_, [0, 1, 2])
    z = model.transform(rec).values.reshape(-1)
    true = rec["latents"].values.reshape(-1)
    slope, offset = np.polyfit(z, true, 1)
    recovered = slope * model.prior_mean_.numpy()[:, 0] + offset
    np.testing.assert_allclose(recovered, mu, atol=0.35)
    # the label carries information: the posterior with it beats the unconditioned VAE's latents
    vae = PoissonVAE(n_latents=1, hidden=(20,), epochs=150, batch_size=128, lr=1e-2, patience=30).fit(rec)
    zv = vae.transform(rec).values.reshape(-1)
    assert np.corrcoef(z, true)[0, 1] ** 2 > np.corrcoef(zv, true)[0, 1] ** 2


def test_continuous_label_model_fits_and_uses_the_label(synthetic):
    model = PiVAE(epochs=3).fit(synthetic)
    assert model.label_width_ == 1
    z = model.transform(synthetic)
    assert z.dims == ("trial", "time", "latent") and z.shape == (30, 20, 2)
    shifted = synthetic.assign(behaviour=synthetic["behaviour"] + 1.0)
    assert not np.allclose(model.transform(shifted), z)     # q(z | y, u) depends on u
    held = synthetic.copy(deep=True)
    ho = np.flatnonzero(synthetic["heldout"].values)
    held["counts"][:, :, ho] = 0
    xr.testing.assert_allclose(model.transform(held), z)     # but not on held-out neurons


def test_unconditioned_vae_ignores_labels(synthetic):
    vae = PoissonVAE(epochs=2).fit(synthetic.drop_vars("behaviour"))
    np.testing.assert_allclose(vae.transform(synthetic), vae.transform(synthetic.drop_vars("behaviour")))
    assert "label" not in vae.get_params()


def test_deterministic_under_seed(synthetic):
    a = PiVAE(epochs=2).fit(synthetic).transform(synthetic).values
    b = PiVAE(epochs=2).fit(synthetic).transform(synthetic).values
    c = PiVAE(epochs=2, seed=1).fit(synthetic).transform(synthetic).values
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


BAD_LABELS = {
    "missing": (lambda r: r.drop_vars("behaviour"), "label 'behaviour'.*no coordinate or variable"),
    "nan": (lambda r: r.assign(behaviour=r["behaviour"].where(r["trial"] != 3)), "label 'behaviour' holds .* NaN"),
    "wrong dims": (lambda r: r.assign(behaviour=(("neuron",), np.zeros(r.sizes["neuron"]))), "dims"),
}


@pytest.mark.parametrize("case", sorted(BAD_LABELS))
def test_bad_labels_are_refused_naming_the_label(synthetic, case):
    corrupt, words = BAD_LABELS[case]
    with pytest.raises(DataError, match=words):
        PiVAE(epochs=1).fit(corrupt(synthetic))


def test_unseen_class_and_wrong_width_at_transform(synthetic):
    model = PiVAE(label="condition", label_type="discrete", epochs=1).fit(synthetic)
    other = synthetic.assign_coords(condition=("trial", np.full(30, 7)))
    with pytest.raises(DataError, match=r"label 'condition'\[0, 0\] = 7 is a class not seen at fit"):
        model.transform(other)
    cont = PiVAE(epochs=1).fit(synthetic)
    wide = synthetic.drop_vars(["behaviour", "behaviour_dim"]).assign(
        behaviour=(("trial", "time", "behaviour_dim"), np.repeat(synthetic["behaviour"].values, 2, axis=2)))
    with pytest.raises(DataError, match="2 dimensions; the model was fitted on 1"):
        cont.transform(wide)


def test_pivae_recording_ties_the_latent_to_the_label():
    """E[z | u] = (u, 2 sin u): the regression of z on (u, sin u) recovers the coefficients; the
    mean count per bin is mean_rate_hz * bin_width."""
    rec = pivae_recording(n_trials=60, n_neurons=30, n_bins=40, noise_correlation=0.0, seed=3)
    u = rec["behaviour"].values[..., 0].reshape(-1)
    z = rec["latents"].values.reshape(-1, 2)
    X = np.stack([np.ones_like(u), u, np.sin(u)], 1)
    coef = np.linalg.lstsq(X, z, rcond=None)[0]
    np.testing.assert_allclose(coef[1:, 0], [1.0, 0.0], atol=0.05)
    np.testing.assert_allclose(coef[1:, 1], [0.0, 2.0], atol=0.05)
    assert np.all((u >= 0) & (u <= 2 * np.pi))
    assert rec["rates"].values.mean() == pytest.approx(20.0 * 0.05, rel=1e-9)
    xr.testing.assert_identical(rec, pivae_recording(n_trials=60, n_neurons=30, n_bins=40, noise_correlation=0.0,
                                                     seed=3))


def test_pivae_synthetic_config_end_to_end(tmp_path):
    out = tmp_path / "run"
    assert cli(["run", str(CONFIGS / "pivae_synthetic.toml"), "--out", str(out), "--no-progress",
                "--set", "data.n_trials=16", "--set", "data.n_bins=12", "--set", "data.n_neurons=16",
                "--set", "seeds=[0, 1]", "--set", 'models.fit=["pivae", "vae"]',
                "--set", "models.pivae.epochs=2", "--set", "models.vae.epochs=2"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ds = xr.open_dataset(out / "results.nc")
    for j, name in enumerate(["pivae", "vae"]):
        per_seed = summary[name]["latent_r2_per_seed"]
        np.testing.assert_allclose(per_seed, ds.latent_r2_by_seed.isel(model=j).values)
        assert summary[name]["latent_r2"] == pytest.approx(np.mean(per_seed))
        assert summary[name]["latent_r2_std"] == pytest.approx(np.std(per_seed, ddof=1))
    assert (out / "latent_r2.png").exists() and (out / "latents.png").exists()
