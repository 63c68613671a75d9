"""The recording boundary: the observed mask honoured by every model and metric, one validation,
one split policy, the scikit-learn estimator contract, inference done once, and config sections
derived from the models' constructors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.base import clone

from analysis import metrics
from analysis.glm import PoissonGLM
from analysis.models import (GPFA, LFADS, FactorAnalysisModel, PCLatentModel, PiVAE, PoissonVAE, SmoothingModel,
                             config_section)
from analysis.models.smoothing import smooth_counts
from analysis.recording import Recording, as_recording, split_recording
from analysis.synthetic import lorenz_recording
from pcsim.errors import ConfigError, DataError


pytestmark = pytest.mark.usefixtures("one_thread")


MODELS = {
    "smoothing": lambda: SmoothingModel(sigma_ms=30),
    "smoothing-pca": lambda: SmoothingModel(n_components=3),
    "fa": lambda: FactorAnalysisModel(n_latents=3),
    "gpfa": lambda: GPFA(n_latents=3, max_iter=8),
    "gpfa-gaussian": lambda: GPFA(n_latents=2, max_iter=5, readout="gaussian"),
    "pc": lambda: PCLatentModel(n_latents=3, epochs=3, transform_steps=10),
    "pc-glm-map": lambda: PCLatentModel(n_latents=3, epochs=2, transform_steps=5, readout="glm", learning="map"),
    "lfads": lambda: LFADS(n_latents=3, ic_dim=4, encoder_dim=8, generator_dim=8, epochs=3, batch_size=8),
    "pivae": lambda: PiVAE(n_latents=2, hidden=(8,), epochs=3),
    "vae": lambda: PoissonVAE(n_latents=2, hidden=(8,), epochs=3),
}


@pytest.fixture(scope="module")
def small():
    return lorenz_recording(n_trials=24, n_neurons=12, n_bins=24, n_conditions=3, condition_jitter=None, seed=3)


def _with_mask(rec: xr.Dataset, observed: np.ndarray, fill: np.ndarray | None) -> xr.Dataset:
    """``rec`` with the ``observed`` mask and, where unobserved, the counts ``fill`` (float; NaN allowed)."""
    counts = rec["counts"].values.astype(np.float64)
    if fill is not None:
        counts = np.where(observed, counts, fill)
    out = rec.drop_vars("counts")
    out["counts"] = (("trial", "time", "neuron"), counts)
    out["observed"] = (("trial", "time", "neuron"), observed)
    return out


def _learned(model) -> dict:
    """Every learned attribute (ending in ``_``) but wall-clock times, as NumPy arrays or plain values."""
    out = {}
    for k, v in vars(model).items():
        if not k.endswith("_") or k.startswith("_") or k.endswith("seconds_"):
            continue
        if hasattr(v, "parameters") and callable(v.parameters):     # a TemporalPCNetwork
            v = [p.detach().cpu().numpy() for p in v.parameters()]
        elif hasattr(v, "__dataclass_fields__"):                     # FAParams / GPFAParams
            v = [np.asarray(getattr(v, f).cpu() if torch.is_tensor(getattr(v, f)) else getattr(v, f))
                 for f in v.__dataclass_fields__]
        elif isinstance(v, PoissonGLM):
            v = [v.coef_, v.intercept_]
        elif torch.is_tensor(v):
            v = v.detach().cpu().numpy()
        elif hasattr(v, "components_"):                              # sklearn PCA
            v = [v.components_, v.mean_]
        out[k] = v
    return out


def _assert_same(a, b, where):
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_same(x, y, f"{where}[{i}]")
    elif a is None or isinstance(a, (str, bool)):
        assert a == b, where
    else:
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=where)


# ---------------------------------------------------------------------------------------------
# The observed mask: unobserved bins change nothing, and are missing rather than silent
# ---------------------------------------------------------------------------------------------

@settings(max_examples=2, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**16), frac=st.sampled_from([0.1, 0.3]))
def test_unobserved_bins_change_no_fitted_parameter_and_no_score(small, seed, frac):
    """Bins marked unobserved and filled with arbitrary counts (huge, NaN, zero) change no learned
    parameter, latent, rate, forecast or score of any model, nor any metric."""
    rng = np.random.default_rng(seed)
    observed = rng.random(small["counts"].shape) > frac
    observed[0, :, 1] = False                         # a neuron unobserved for a whole trial
    a = _with_mask(small, observed, rng.integers(0, 10**6, observed.shape).astype(float))
    b = _with_mask(small, observed, np.where(rng.random(observed.shape) < 0.5, np.nan, 0.0))
    test = small["split"].values == "test"
    for name, make in MODELS.items():
        ma, mb = make().fit(a), make().fit(b)
        _assert_same(_learned(ma), _learned(mb), name)
        ia, ib = ma.infer(a), mb.infer(b)
        xr.testing.assert_identical(ia.latents, ib.latents)
        xr.testing.assert_identical(ia.rates, ib.rates)
        if ma.can_forecast:
            xr.testing.assert_identical(ia.forecast(3), ib.forecast(3))
        assert ma.score(a) == mb.score(b)
    # every metric, given the mask, reads only observed bins
    ra, rb = as_recording(a), as_recording(b)
    ho = ra.heldout
    rates = small["rates"].values
    for fn in (metrics.co_bps, metrics.fp_bps):
        assert fn(rates[..., ho], a["counts"].values[..., ho], observed=observed[..., ho]) == \
            fn(rates[..., ho], b["counts"].values[..., ho], observed=observed[..., ho])
    assert metrics.psth_r2(rates, ra.counts, small["condition"].values, smooth_sigma_bins=2.0, observed=observed) == \
        metrics.psth_r2(rates, rb.counts, small["condition"].values, smooth_sigma_bins=2.0, observed=observed)
    z = small["latents"].values
    tr = ~test
    few = [metrics.few_shot_co_bps(z[tr], r.counts[tr][..., ho], z[test], r.counts[test][..., ho], k=4, n_repeats=2,
                                   observed_train=observed[tr][..., ho], observed_test=observed[test][..., ho])
           for r in (ra, rb)]
    assert few[0] == few[1]


def test_smoothing_fills_unobserved_bins_from_observed_neighbours():
    """Constant counts stay constant under smoothing, unobserved bins included (zeros would pull them down)."""
    counts = np.full((2, 30, 3), 4.0)
    observed = np.ones(counts.shape, bool)
    observed[0, 10:20, 0] = False
    counts[~observed] = 0.0
    out = smooth_counts(counts, 3.0, observed)
    np.testing.assert_allclose(out, 4.0)
    observed[1, :, 2] = False                                  # nothing to smooth from
    assert np.isnan(smooth_counts(counts, 3.0, observed)[1, :, 2]).all()


def test_glm_with_a_mask_equals_the_glm_on_the_observed_samples():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((600, 3))
    y = rng.poisson(np.exp(x @ np.array([[0.4], [-0.3], [0.2]]) - 0.5))[:, 0]
    keep = rng.random(600) > 0.4
    counts = np.stack([y, y], 1).astype(float)
    counts[~keep, 1] = 99.0                                    # unobserved for output 1 only
    observed = np.stack([np.ones(600, bool), keep], 1)
    both = PoissonGLM(alpha=0.01, standardize=False).fit(x, counts, observed)
    alone = PoissonGLM(alpha=0.01, standardize=False).fit(x[keep], y[keep, None])
    np.testing.assert_allclose(both.coef_[:, 1], alone.coef_[:, 0], atol=1e-8)
    assert both.intercept_[1] == pytest.approx(alone.intercept_[0], abs=1e-8)


@pytest.mark.parametrize("name", ["smoothing", "fa", "gpfa", "pc", "lfads", "pivae", "vae"])
def test_unobserved_bins_are_missing_not_silent(small, name):
    """A held-out neuron unobserved in half of the training trials (its counts there zero): its
    predicted mean rate matches its observed mean, where fitting the zeros as data halves it."""
    ho = np.flatnonzero(small["heldout"].values)[0]
    train = np.flatnonzero(small["split"].values == "train")
    counts = small["counts"].values.copy()
    boost = 6 * counts[..., ho] + 1                      # a high, known rate to estimate
    counts[..., ho] = boost
    rec = small.copy()
    rec["counts"] = (("trial", "time", "neuron"), counts)
    observed = np.ones(counts.shape, bool)
    observed[train[::2], :, ho] = False
    counts_zeroed = np.where(observed, counts, 0)
    masked = _with_mask(rec, observed, counts_zeroed)
    silent = rec.copy()
    silent["counts"] = (("trial", "time", "neuron"), counts_zeroed)
    target = boost[train].mean()
    m = MODELS[name]().fit(masked)
    ratio = float(m.predict(masked).values[train][..., ho].mean()) / target
    bug = float(MODELS[name]().fit(silent).predict(silent).values[train][..., ho].mean()) / target
    assert 0.85 < ratio < 1.15, ratio
    assert bug < 0.8, bug                                # what the mask protects against


# ---------------------------------------------------------------------------------------------
# One validation, one split policy
# ---------------------------------------------------------------------------------------------

def test_a_recording_is_validated_once(small, monkeypatch):
    import analysis.recording as recording_module

    calls = []
    original = recording_module.check_counts
    monkeypatch.setattr(recording_module, "check_counts", lambda *a, **k: calls.append(1) or original(*a, **k))
    rec = as_recording(small)
    assert len(calls) == 1 and isinstance(rec, Recording)
    model = SmoothingModel().fit(rec)
    model.score(rec)
    model.transform(rec)
    assert len(calls) == 1                                # a Recording is never checked again
    assert as_recording(rec, "test").counts.shape[0] == int((small["split"] == "test").sum())


@settings(max_examples=20, deadline=None)
@given(n_trials=st.integers(2, 40), n_neurons=st.integers(2, 30), seed=st.integers(0, 100),
       labels=st.sampled_from(["none", "train-only", "with-val", "with-test", "with-none"]))
def test_split_policy(n_trials, n_neurons, seed, labels):
    ds = xr.Dataset({"counts": (("trial", "time", "neuron"), np.zeros((n_trials, 3, n_neurons), int))})
    given_split = {"train-only": ["train"] * n_trials,
                   "with-val": ["train", "val"] * (n_trials // 2) + ["train"] * (n_trials % 2),
                   "with-test": ["test", "train"] * (n_trials // 2) + ["train"] * (n_trials % 2),
                   "with-none": ["none", "train"] * (n_trials // 2) + ["train"] * (n_trials % 2)}.get(labels)
    if given_split is not None:
        ds = ds.assign_coords(split=("trial", np.array(given_split)))
    out = split_recording(ds, heldout_fraction=0.25, test_fraction=0.2, seed=seed)
    split = out["split"].values
    assert "none" not in split and out.sizes["trial"] == n_trials - (given_split or []).count("none")
    assert out["heldout"].values.sum() == max(1, round(0.25 * n_neurons))
    if labels in ("with-val", "with-test"):
        kept = np.array(given_split)
        np.testing.assert_array_equal(split == "test", np.isin(kept, ["val", "test"]) if labels == "with-val"
                                      else kept == "test")
    else:
        assert (split == "test").sum() == max(1, round(0.2 * split.size))
    # held-out neurons already marked are kept; the same seed gives the same draw
    marked = out.assign_coords(heldout=("neuron", np.arange(n_neurons) == 0))
    assert split_recording(marked)["heldout"].values.tolist() == (np.arange(n_neurons) == 0).tolist()
    assert split_recording(ds, seed=seed).identical(split_recording(ds, seed=seed))


def test_read_nwb_and_pcsim_fit_share_the_split_policy(tmp_path):
    """A file with no split and no heldout column: read_nwb's defaults are pcsim fit's."""
    from analysis.experiments.fit_recording import RecordingSection, load_recording
    from analysis.nwb import read_nwb, write_nwb

    rng = np.random.default_rng(0)
    spikes = [np.sort(rng.uniform(0, 20, 50)) for _ in range(8)]
    starts = np.arange(10) * 2.0
    path = write_nwb(spikes, tmp_path / "s.nwb", trials={"start_time": starts, "stop_time": starts + 1.0},
                     resolution=1e-5)
    mine = read_nwb(path, bin_width=0.1, window=(0.0, 1.0), seed=7)
    theirs = load_recording(RecordingSection(path=str(path), bin_ms=100.0, window_ms=(0.0, 1000.0)), 7)
    np.testing.assert_array_equal(mine["heldout"].values, theirs["heldout"].values)
    np.testing.assert_array_equal(mine["split"].values, theirs["split"].values)
    assert mine["heldout"].values.sum() == 2 and (mine["split"].values == "test").sum() == 2


# ---------------------------------------------------------------------------------------------
# The scikit-learn contract and forecast in the protocol
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(MODELS))
def test_estimator_contract(name, small):
    model = MODELS[name]()
    params = model.get_params()
    twin = clone(model)
    assert type(twin) is type(model) and twin.get_params() == params and twin is not model
    assert not [k for k in vars(model) if k.endswith("_")]          # nothing learned before fit
    # hyper-parameters are stored verbatim and checked in fit, naming the parameter
    bad = clone(model).set_params(**{next(iter(params)): -1})
    with pytest.raises(ValueError, match=next(iter(params))):
        bad.fit(small)
    fitted = model.fit(small)
    assert clone(fitted).get_params() == params and not hasattr(clone(fitted), "fit_seconds_")
    if not fitted.can_forecast:
        with pytest.raises(NotImplementedError, match="cannot forecast"):
            fitted.forecast(small, 3)


def test_infer_once(small, monkeypatch):
    """PC's generative readout fits without inferring training latents; fit_and_score infers each
    model once (latents, rates and forecasts of one inference)."""
    from analysis.experiments.models import ModelsSection, fit_and_score

    calls = {}

    def counting(cls):
        original = cls._infer

        def wrapped(self, *a):
            calls[cls.__name__] = calls.get(cls.__name__, 0) + 1
            return original(self, *a)
        monkeypatch.setattr(cls, "_infer", wrapped)

    for cls in (SmoothingModel, PCLatentModel, GPFA):
        counting(cls)
    PCLatentModel(n_latents=2, epochs=1).fit(small)
    assert calls.get("PCLatentModel", 0) == 0
    calls.clear()
    models = ModelsSection(fit=("smoothing", "gpfa", "pc"), gpfa=config_section(GPFA)(n_latents=2, max_iter=3),
                           pc=config_section(PCLatentModel)(n_latents=2, epochs=1))
    rec = small.isel(time=slice(0, 20))
    ds, summary = fit_and_score(rec, models, 0, "cpu", progress=False, forward=small.isel(time=slice(20, None)))
    # smoothing and GPFA: one inference of the training trials for the GLM readout, one for scoring
    assert calls == {"SmoothingModel": 2, "GPFA": 2, "PCLatentModel": 1}
    assert "fp_bps" in summary["gpfa"] and "fp_bps" in summary["pc"] and "fp_bps" not in summary["smoothing"]


# ---------------------------------------------------------------------------------------------
# Config sections come from the constructors
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [SmoothingModel, FactorAnalysisModel, GPFA, PCLatentModel])
def test_config_section_is_the_constructor(cls):
    section = config_section(cls)()
    defaults = {k: v for k, v in cls().get_params().items() if k not in ("seed", "device", "dtype", "progress")}
    assert vars(section) == defaults


CONFIG = """
experiment = "analysis.experiments.lorenz_latents"
[data]
n_neurons = 20
[models]
fit = ["fa", "pc"]
"""


@pytest.mark.parametrize("extra, key", [
    ("[models.pc]\nn_latent = 3", "models.pc.n_latent"),                 # unknown key
    ("[models.pc]\nn_latents = 0", "models.pc.n_latents"),               # out of the model's range
    ("[models.pc]\nreadout = 'linear'", "models.pc.readout"),            # not one of the model's choices
    ("[models.pc]\nlr = 'fast'", "models.pc.lr"),                        # wrong type
    ("[models.gpfa]\nsegment_bins = 0", "models.gpfa.segment_bins"),
    ("[models.fa]\nn_latents = 16", "models.fa.n_latents"),              # more than the 15 held-in neurons
])
def test_wrong_model_settings_are_config_errors_naming_file_and_key(tmp_path, extra, key):
    from pcsim.config import load_config

    path = tmp_path / "bad.toml"
    path.write_text(CONFIG + extra + "\n")
    with pytest.raises(ConfigError, match=rf"bad\.toml.*'{key}'"):
        load_config(path)


def test_fit_recording_window_is_checked_at_load(tmp_path):
    from pcsim.config import load_config

    path = tmp_path / "fit.toml"
    path.write_text('experiment = "analysis.experiments.fit_recording"\n[recording]\npath = "x.nwb"\n'
                    "window_ms = [500.0, 100.0]\n")
    with pytest.raises(ConfigError, match=r"fit\.toml.*recording.*'window_ms'"):
        load_config(path)


def test_bad_observed_mask_is_named(small):
    bad = small.assign(observed=(("trial", "time", "neuron"), np.ones(small["counts"].shape, int)))
    with pytest.raises(DataError, match="observed"):
        as_recording(bad)
