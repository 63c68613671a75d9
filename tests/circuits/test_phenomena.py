"""The signature phenomena, each from its experiment module on a small, fast protocol:
mismatch negativity (deviance and probability dependence, omission), repetition
suppression, laminar spectral asymmetry."""

from pathlib import Path

import numpy as np
import pytest

from circuits.experiments import laminar_spectra, oddball_mmn, repetition_suppression
from circuits.experiments.sections import CircuitSection
from pcsim.registry import RunContext

FAST = CircuitSection(n_channels=16, areas=3, dt=1.0, tau_deep=10.0, prior_rate=0.01)


def ctx(tmp_path: Path) -> RunContext:
    return RunContext(tmp_path, "cpu", progress=False)


@pytest.fixture(scope="module")
def mmn(tmp_path_factory):
    cfg = oddball_mmn.Config(
        experiment="circuits.experiments.oddball_mmn", circuit=FAST,
        oddball=oddball_mmn.OddballSection(standard=4.0, deviances=(2.0, 6.0), p_deviants=(0.1, 0.3), n_tones=60,
                                           duration_ms=100.0, soa_ms=300.0, skip_tones=10, window=(50.0, 200.0)))
    return oddball_mmn.run(cfg, ctx(tmp_path_factory.mktemp("mmn")))


def test_mmn_is_positive_grows_with_deviance_and_shrinks_with_probability(mmn):
    s = mmn.summary
    assert s["mmn_all_positive"], s["mmn"]
    assert s["grows_with_deviance"], s["mmn"]
    assert s["shrinks_with_probability"], s["mmn"]
    # independently of the summary: deviant minus standard trials straight from the dataset
    ds = mmn.dataset
    resp = ds.error_response.sel(area="area1")
    sel = (ds.paradigm == "oddball") & (ds.slot >= 10) & (ds.p_deviant == 0.1) & (ds.deviance == 6.0)
    dev = float(resp.where(sel & (ds.kind == "deviant"), drop=True).mean())
    std = float(resp.where(sel & (ds.kind == "standard"), drop=True).mean())
    assert dev - std == pytest.approx(s["mmn"]["p=0.1"]["deviance=6"], rel=1e-5)
    assert dev > 1.2 * std


def test_an_omitted_tone_evokes_negative_errors(mmn):
    assert mmn.summary["omission_response"] > 0.05
    ds = mmn.dataset
    om = (ds.kind == "omission") & (ds.slot >= 10)
    # nothing was presented: the stimulus is silent while the prediction is voiced
    assert float(abs(ds.stimulus.where(om, drop=True)).max()) == 0.0
    assert float(ds.prior.where(om, drop=True).max()) > 0.2


def test_mmn_figures_draw_from_the_dataset(mmn):
    figs = oddball_mmn.plot(mmn.dataset)
    assert set(figs) == {"erp", "mmn"}
    line = figs["mmn"].axes[0].lines[0]
    np.testing.assert_allclose(line.get_ydata(), [mmn.summary["mmn"]["p=0.1"][k] for k in ("deviance=2", "deviance=6")])


def test_repetition_suppresses_errors_but_not_predictions(tmp_path):
    cfg = repetition_suppression.Config(
        experiment="circuits.experiments.repetition_suppression", circuit=FAST,
        repetition=repetition_suppression.RepetitionSection(frequencies=(3.0, 8.0, 13.0), n_repeats=6, n_trains=6, duration_ms=100.0,
                                                            soa_ms=300.0, window=(50.0, 200.0), seeds=(0, 1)))
    s = repetition_suppression.run(cfg, ctx(tmp_path)).summary
    e, p = np.array(s["error_by_repetition"]), np.array(s["prediction_by_repetition"])
    assert s["rs_slope_error"] < 0 and s["error_monotone_fall"]
    assert e[-1] < 0.8 * e[0]
    # the representation of the played tone does not fall: it grows as the expectation agrees
    assert s["rs_slope_prediction"] > 0 and p[-1] > p[0]
    assert s["prediction_relative_fall"] < 0 < s["error_relative_fall"]


def test_superficial_errors_are_faster_than_deep_predictions(tmp_path):
    cfg = laminar_spectra.Config(
        experiment="circuits.experiments.laminar_spectra",
        circuit=CircuitSection(n_channels=12, areas=3, dt=0.5, tau_deep=10.0, interneurons=True, noise=0.05, prior_rate=0.0),
        drive=laminar_spectra.DriveSection(trials=6, trial_ms=1500.0, transient_ms=300.0, segment_ms=400.0))
    res = laminar_spectra.run(cfg, ctx(tmp_path))
    assert res.summary["spectral_ratio"] > 1.1
    # the ratio is what it says: relative high-frequency power of L2/3 over that of L5/6
    rel = res.dataset.relative_high_power.sel(area="area1")
    assert res.summary["spectral_ratio"] == pytest.approx(float(rel.sel(stream="superficial") / rel.sel(stream="deep")))
