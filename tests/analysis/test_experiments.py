"""The analysis experiments end to end: lorenz_latents and `pcsim fit` on an NWB file."""

import json
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis import metrics
from analysis.nwb import write_nwb
from analysis.synthetic import lorenz_recording
from pcsim.cli import main as cli

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
SMALL = ["--set", "data.n_trials=40", "--set", "data.n_neurons=24", "--set", "data.n_bins=40",
         "--set", 'models.fit=["smoothing", "fa"]', "--no-progress"]


@pytest.fixture(scope="module")
def lorenz_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lorenz")
    assert cli(["run", str(CONFIGS / "lorenz_latents.toml"), "--out", str(out), *SMALL]) == 0
    return out


def test_lorenz_summary_agrees_with_the_saved_predictions(lorenz_run):
    ds = xr.open_dataset(lorenz_run / "results.nc")
    summary = json.loads((lorenz_run / "summary.json").read_text())
    assert set(summary) == {"smoothing", "fa", "true_rates"}
    assert ds.pred_rates.dims == ("model", "trial", "time", "neuron")
    assert ds.pred_rates.attrs["units"] == "counts/bin"
    for model in ["smoothing", "fa"]:
        # the summary's number is the NLB co-bps of exactly what results.nc holds
        assert summary[model]["co_bps"] == pytest.approx(metrics.co_bps(ds.pred_rates.sel(model=model), ds.heldout_counts), rel=1e-9)
        assert summary[model]["fit_seconds"] > 0
        assert 0 < summary[model]["co_bps"] < summary["true_rates"]["co_bps"] + 0.05
        assert summary[model]["latent_r2"] > 0.3
    assert summary["true_rates"]["co_bps"] == pytest.approx(metrics.co_bps(ds.true_rates, ds.heldout_counts), rel=1e-9)
    for fig in ["raster", "latents", "heldout_rates"]:
        assert (lorenz_run / f"{fig}.png").stat().st_size > 1000


def _spike_times(rec, rng, gap=0.2):
    """Spike times (s) whose binning reproduces ``rec.counts``: counts spread uniformly in their bins."""
    bw = rec.attrs["bin_width"]
    dur = rec.sizes["time"] * bw
    starts = np.arange(rec.sizes["trial"]) * (dur + gap) + 0.1
    counts = rec.counts.values
    spikes = []
    for n in range(counts.shape[2]):
        tr, tb = np.nonzero(counts[:, :, n])
        reps = counts[tr, tb, n]
        t = np.repeat(starts[tr] + tb * bw, reps) + rng.uniform(0.05, 0.95, reps.sum()) * bw
        spikes.append(np.sort(t))
    return spikes, starts, starts + dur


def test_pcsim_fit_on_an_nwb_file_uses_its_heldout_neurons_and_splits(tmp_path):
    rec = lorenz_recording(30, 12, 30, n_conditions=3, seed=4)
    spikes, start, stop = _spike_times(rec, np.random.default_rng(0))
    path = write_nwb(spikes, tmp_path / "rec.nwb", trials={"start_time": start, "stop_time": stop,
                     "condition": rec.condition.values, "split": rec.split.values},
                     heldout=rec.heldout.values, resolution=1e-5)
    out = tmp_path / "fit"
    status = cli(["fit", str(path), "--config", str(CONFIGS / "fit_recording.toml"), "--out", str(out),
                  "--set", "recording.window_ms=[0, 300]", "--set", 'recording.condition="condition"',
                  "--set", 'models.fit=["smoothing", "fa"]', "--no-progress"])
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    ds = xr.open_dataset(out / "results.nc")
    assert summary["n_heldout"] == int(rec.heldout.sum())
    np.testing.assert_array_equal(ds.neuron.values, rec.neuron.values[rec.heldout.values])
    assert ds.sizes["trial"] == int((rec.split == "test").sum())
    # binning the written spikes reproduced the recording's counts on the test trials
    np.testing.assert_array_equal(ds.heldout_counts.values, rec.counts.isel(trial=(rec.split == "test").values, neuron=rec.heldout.values).values)
    assert "psth_r2" in summary["fa"] and np.isfinite(summary["fa"]["co_bps"])


def test_pcsim_fit_reports_a_missing_file(tmp_path, capsys):
    assert cli(["fit", str(tmp_path / "nope.nwb"), "--config", str(CONFIGS / "fit_recording.toml")]) == 2
    assert "nope.nwb" in capsys.readouterr().err


def test_pcsim_fit_scores_only_the_observed_bins(tmp_path):
    """A unit lost half-way through the session (NWB obs_intervals): its bins after that are NaN in
    results.nc, and the summary's co-bps is the score of the observed bins alone."""
    rec = lorenz_recording(30, 12, 30, seed=5)
    spikes, start, stop = _spike_times(rec, np.random.default_rng(0))
    lost = int(np.flatnonzero(rec.heldout.values)[0])
    cut = start[15]                                           # unit `lost` is not recorded after trial 14
    obs = [np.array([[0.0, stop[-1] + 1]]) if u != lost else np.array([[0.0, cut]]) for u in range(12)]
    spikes[lost] = spikes[lost][spikes[lost] <= cut]
    path = write_nwb(spikes, tmp_path / "rec.nwb", trials={"start_time": start, "stop_time": stop, "split": rec.split.values},
                     heldout=rec.heldout.values, obs_intervals=obs, resolution=1e-5)
    out = tmp_path / "fit"
    assert cli(["fit", str(path), "--config", str(CONFIGS / "fit_recording.toml"), "--out", str(out),
                "--set", "recording.window_ms=[0, 300]", "--set", 'models.fit=["smoothing"]', "--no-progress"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    ds = xr.open_dataset(out / "results.nc")
    counts = ds.heldout_counts.sel(neuron=rec.neuron.values[lost]).values
    late = ds.trial.values >= 15
    assert np.isnan(counts[late]).all() and not np.isnan(counts[~late]).any()
    assert summary["smoothing"]["co_bps"] == pytest.approx(
        metrics.co_bps(ds.pred_rates.sel(model="smoothing"), ds.heldout_counts), rel=1e-12)
