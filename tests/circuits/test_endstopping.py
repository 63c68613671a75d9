"""End-stopping (Rao & Ballard 1999): circuits.experiments.endstopping on a smaller training run.

The claims: V1 error cells of the middle module respond more as a bar grows inside their
classical receptive field and less once it extends beyond it (suppression index well above
what the feedback-lesioned circuit shows), the level-1 modules stay local through
training, and the pre-filtering of bars is the training images' own.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from circuits.experiments import endstopping as es
from circuits.measures import suppression_index
from pcsim import parallel
from pcsim.cli import main as cli
from pcsim.config import from_dict
from pcsim.errors import ConfigError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# the shipped training (1000 batches; ~20 s on one thread): with the sparse prior, half of it at
# a higher learning rate is not enough (500 batches at lr 0.0075: the fields not yet localised
# and the single-cell lesion effect at its margin; at 0.01 the intact SI falls to 0.18)
SMALL = ["--no-progress"]


@pytest.fixture(scope="module")
def endstopping_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("endstopping")
    assert cli(["run", str(CONFIGS / "endstopping.toml"), "--out", str(out), *SMALL]) == 0
    return xr.open_dataset(out / "results.nc"), json.loads((out / "summary.json").read_text()), out


def test_error_cells_are_end_stopped_by_the_feedback(endstopping_run):
    ds, summary, out = endstopping_run
    si, si_lesioned = summary["suppression_index"], summary["suppression_index_lesioned"]
    # a network without top-down suppression sits near the lesioned value (about 0.1, from
    # the modules sharing the overlapping columns); the trained hierarchy suppresses far more
    assert si > 0.2, summary
    assert si > si_lesioned + 0.1, summary
    assert summary["suppression_index_cells"] > summary["suppression_index_cells_lesioned"] + 0.1, summary
    # the summary's numbers are those of the saved tuning curves
    for f, key in (("intact", "suppression_index"), ("lesioned", "suppression_index_lesioned")):
        assert summary[key] == pytest.approx(suppression_index(ds.tuning.sel(feedback=f).values), rel=1e-6)
    tuning = ds.tuning.sel(feedback="intact").values
    lengths = ds.length.values
    crf = ds.attrs["crf_stop_col"] - ds.attrs["crf_start_col"]
    # the response grows while the bar stays inside the CRF and peaks there ...
    assert lengths[np.argmax(tuning)] <= crf
    assert tuning.max() > 1.3 * tuning[0]
    # ... and every bar longer than the CRF is answered less than the peak, ever less as it grows
    beyond = tuning[lengths > crf]
    assert (beyond < tuning.max()).all() and beyond[-1] < beyond[0]
    # feedback suppresses long bars more than short ones: the response ratio intact/lesioned falls
    ratio = tuning / ds.tuning.sel(feedback="lesioned").values
    assert ratio[-1] < 0.7 * ratio[0]
    # suppression builds up after the feedforward transient (feedback is slower): at the
    # longest bar the intact response is lower late than at its peak
    pop = ds.error_rate.sel(feedback="intact", length=lengths[-1]).sum(("population", "unit"))
    assert float(pop.max()) > 1.5 * float(ds.tuning.sel(feedback="intact", length=lengths[-1]))
    # the circuit's sustained response is the relaxed network's fixed point (pcsim.inference.relax)
    # (within 6 %: the intact circuit settles slowly and is still a little above it at 800 ms)
    np.testing.assert_allclose(ds.tuning.values, ds.equilibrium_tuning.values, rtol=0.07)
    assert summary["suppression_index_equilibrium"] == pytest.approx(si, abs=0.03)
    for name in ("endstopping", "receptive_fields"):
        assert (out / f"{name}.png").stat().st_size > 5000


def test_results_follow_the_conventions(endstopping_run):
    """The reopened results.nc: units and long names everywhere, time in seconds."""
    from pcsim.results import convention_problems

    ds = endstopping_run[0]
    assert convention_problems(ds) == [] and ds.time.attrs["units"] == "s"
    stop = (ds.attrs["bar_onset_ms"] + ds.attrs["bar_duration_ms"]) / 1000.0
    assert float(ds.time[-1]) < stop <= float(ds.time[-1]) + 0.01  # the record ends with the bar (5 ms steps)


def test_level1_modules_stay_local_through_training(endstopping_run):
    ds = endstopping_run[0]
    rf = ds.receptive_field.values  # (module, unit, row, col)
    patch, offset = ds.attrs["patch"], ds.attrs["offset"]
    for m in range(rf.shape[0]):
        inside = np.zeros(rf.shape[-1], bool)
        inside[m * offset:m * offset + patch] = True
        assert (rf[m][..., ~inside] == 0).all(), f"module {m} has weights outside its patch"
        assert (np.abs(rf[m][..., inside]).sum((-2, -1)) > 0).all()
    # projective fields keep unit norm
    np.testing.assert_allclose(np.sqrt((rf ** 2).sum((-2, -1))), 1.0, rtol=1e-5)


def test_trained_fields_are_measured_localised_and_oriented(endstopping_run):
    """The saved field measures are those of the saved fields; training (500 batches) with the
    shipped sparse prior on the level-1 responses makes the level-1 fields localised and
    oriented (Rao & Ballard 1999), more than the initial random ones (an even 16 px field
    spreads 6.5 px), and puts them in the principal subspace of the patches."""
    from circuits.measures import field_orientedness, field_spread

    ds, summary, _ = endstopping_run
    patch, offset = ds.attrs["patch"], ds.attrs["offset"]
    for m in range(ds.sizes["module"]):
        own = ds.receptive_field.isel(module=m).values[..., m * offset:m * offset + patch]
        np.testing.assert_allclose(ds.field_spread.sel(weights="trained").isel(module=m), field_spread(own))
        np.testing.assert_allclose(ds.field_orientedness.sel(weights="trained").isel(module=m), field_orientedness(own))
    ori, sp = summary["field_orientedness"], summary["field_spread_px"]
    assert ori["trained"] > ori["initial"] + 0.3, ori
    assert sp["trained"] < sp["initial"] - 0.5, sp
    # ... because they learn the principal subspace of the patches (chance: 32 / 256)
    pf = summary["field_principal_fraction"]
    assert pf["initial"] < 0.2 and pf["trained"] > 3 * pf["initial"], pf


def test_training_is_seeded_masked_and_normalised():
    rng = np.random.default_rng(3)
    images = [rng.standard_normal((40, 60)), rng.standard_normal((30, 50))]
    net_cfg = es.NetworkSection(module_units=4, level2_units=5)
    train_cfg = es.TrainingSection(batches=6, batch_size=8, threads=0)
    a, hist_a = es.train_network(net_cfg, train_cfg, images, seed=1)
    b, hist_b = es.train_network(net_cfg, train_cfg, images, seed=1)
    c, _ = es.train_network(net_cfg, train_cfg, images, seed=2)
    assert a.sizes == (5, 12, 16 * 26) and a.mode == "generative"
    for wa, wb in zip(a.weights, b.weights):
        assert torch.equal(wa, wb)
    np.testing.assert_array_equal(hist_a, hist_b)
    assert not torch.equal(a.weights[1], c.weights[1])
    mask = es.module_mask(4, 3, 16, 5)
    W1 = a.weights[1][0]
    assert (W1[~mask] == 0).all() and (W1[mask] != 0).any()
    for W in a.weights:
        torch.testing.assert_close(W.norm(dim=-1), torch.ones_like(W.norm(dim=-1)))
    assert hist_a.shape == (6, 3) and np.isfinite(hist_a).all()


@pytest.fixture(scope="module")
def whitened():
    """The training images and their scale (loading and filtering them takes seconds: once per module)."""
    return es.whitened_images(1.0, 3.0, 12)


def test_a_sparse_prior_localises_and_orients_the_fields(whitened):
    """Rao & Ballard's sparse prior on the level-1 responses, against the same short training
    without it (12 px patches, 300 batches, seed 0): with Gaussian priors only the fields are
    any rotation of the principal subspace; the sparse prior picks localised, oriented ones."""
    from circuits.measures import field_orientedness, field_spread

    images, _ = whitened
    measured = {}
    with parallel.threads(1):  # small matrices: one thread is fastest
        for lam in (0.0, 1.0):
            nc = es.NetworkSection(patch=12, offset=4, module_units=16, level2_units=24, level1_sparsity=lam,
                                   image_errors="own")
            net, _ = es.train_network(nc, es.TrainingSection(batches=300, batch_size=40, lr=0.01), images, seed=0)
            W = es.image_fields(net, nc)
            own = np.concatenate([W[m][..., m * 4:m * 4 + 12] for m in range(3)])
            measured[lam] = np.median(field_spread(own)), np.median(field_orientedness(own))
    (sp_gauss, ori_gauss), (sp_sparse, ori_sparse) = measured[0.0], measured[1.0]
    assert sp_sparse < sp_gauss - 0.1, measured
    assert ori_sparse > ori_gauss + 0.1, measured


def test_own_image_errors_give_each_module_its_own_copy_of_its_patch():
    nc = es.NetworkSection(module_units=2, image_errors="own")
    idx = es.module_pixels(nc)
    assert idx.shape == (3 * 16 * 16,) and nc.data_units == 768
    image = np.arange(16 * 26).reshape(16, 26)
    for m in range(3):
        np.testing.assert_array_equal(image.ravel()[idx[m * 256:(m + 1) * 256]], image[:, 5 * m:5 * m + 16].ravel())
    mask = es.module_mask(2, 3, 16, 5, "own").reshape(3, 2, 3, 256).numpy()
    for m in range(3):
        assert mask[m, :, m].all() and not np.delete(mask[m], m, axis=1).any()
    assert es.module_pixels(es.NetworkSection()) is None
    # the fields come back on the image, where each module's patch lies, and nowhere else
    net = es.initial_network(nc, seed=0)
    W = es.image_fields(net, nc)
    assert W.shape == (3, 2, 16, 26)
    for m in range(3):
        np.testing.assert_array_equal(W[m][..., 5 * m:5 * m + 16].reshape(2, -1), net.weights[1][0, 2 * m:2 * m + 2, 256 * m:256 * (m + 1)].numpy())
        assert not np.delete(W[m], np.s_[5 * m:5 * m + 16], axis=-1).any()


def test_module_mask_tiles_the_image_with_overlapping_patches():
    mask = es.module_mask(2, modules=3, patch=16, offset=5).reshape(3, 2, 16, 26).numpy()
    for m in range(3):
        cols = np.flatnonzero(mask[m, 0, 0])
        assert cols.tolist() == list(range(5 * m, 5 * m + 16))
        assert (mask[m] == mask[m, :1, :1]).all()  # every unit and row of a module alike
    coverage = mask[:, 0, 0].sum(0)
    assert coverage.tolist() == [1] * 5 + [2] * 5 + [3] * 6 + [2] * 5 + [1] * 5


def test_bars_are_prefiltered_like_the_training_images(whitened):
    images, scale = whitened
    pixels = np.concatenate([im.ravel() for im in images])
    assert np.mean(pixels ** 2) == pytest.approx(1.0)
    cfg = es.Config(experiment="circuits.experiments.endstopping")
    stim, raw = es.bar_stimulus(cfg.network, cfg.bars, cfg.images, scale)
    assert raw.shape == (len(cfg.bars.lengths), 16, 26) and stim.patterns.shape == (len(cfg.bars.lengths), 416)
    k = 3
    np.testing.assert_allclose(stim.patterns[k], es.dog_filter(raw[k], 1.0, 3.0).ravel() / scale)
    assert raw[k].sum() == pytest.approx(cfg.bars.contrast * cfg.bars.thickness * cfg.bars.lengths[k])
    patches = es.sample_patches(images, 7, 16, 26, np.random.default_rng(0))
    assert patches.shape == (7, 416) and patches.dtype == np.float32


def test_lesion_removes_only_the_top_down_prediction():
    net, _ = es.train_network(es.NetworkSection(module_units=2, level2_units=3), es.TrainingSection(batches=2, batch_size=4),
                              [np.random.default_rng(0).standard_normal((20, 30))], seed=0)
    lesioned = es.lesion_feedback(net)
    assert (lesioned.weights[0] == 0).all() and (lesioned.biases[0] == 0).all()
    assert torch.equal(lesioned.weights[1], net.weights[1]) and (net.weights[0] != 0).any()


@pytest.mark.parametrize("table, message", [
    ({"network": {"modules": 4}}, "odd"),
    ({"bars": {"lengths": [4, 30]}}, "wide"),
    ({"bars": {"lengths": [8, 4]}}, "increasing"),
    ({"bars": {"lengths": [20, 26]}}, "inside the CRF"),
    ({"measure": {"n_cells": 100}}, "n_cells"),
])
def test_bad_configs_are_refused(table, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(es.Config, {"experiment": "circuits.experiments.endstopping", **table}, source="es.toml")
