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


# ----------------------------------------------------------------------------- issue 9: results, feedback, figures

from analysis.commands import fit  # noqa: E402
from analysis.experiments.models import ModelsSection, fit_and_score, plot_results  # noqa: E402
from analysis.models import GPFA, FactorAnalysisModel, PCLatentModel, config_section  # noqa: E402
from pcsim.errors import ConfigError  # noqa: E402
from pcsim.results import convention_problems  # noqa: E402


def _lorenz_of_small_run():
    """The recording the SMALL lorenz_latents run generates (its config's arguments, seed 0)."""
    return lorenz_recording(40, 24, 40 + 10, bin_width=0.01, mean_rate_hz=8.0, n_conditions=8, condition_jitter=None,
                            heldout_fraction=0.25, test_fraction=0.2, seed=0)


def test_lorenz_results_follow_the_conventions_and_name_the_training_trials(lorenz_run):
    ds = xr.open_dataset(lorenz_run / "results.nc")
    assert convention_problems(ds) == []
    rec = _lorenz_of_small_run()
    split = rec.split.values
    np.testing.assert_array_equal(ds.train_trial.values, rec.trial.values[split == "train"])
    np.testing.assert_array_equal(ds.trial.values, rec.trial.values[split == "test"])
    assert ds.train_trial.attrs["long_name"].startswith("training trial")


def test_the_trial_latent_r2_is_each_trials_own_r2(lorenz_run):
    """Independent reference: 1 - SS_res / SS_tot over one trial's bins and latents, SS_tot about that trial's mean."""
    ds = xr.open_dataset(lorenz_run / "results.nc")
    for m in ds.model.values:
        for i in range(ds.sizes["trial"]):
            y = ds.true_latents.isel(trial=i).values
            x = ds.aligned_latents.sel(model=m).isel(trial=i).values
            expected = 1 - ((y - x) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
            assert float(ds.trial_latent_r2.sel(model=m).isel(trial=i)) == pytest.approx(expected, rel=1e-9)


def test_latents_figure_shows_median_trials_colour_paired_with_labelled_axes(lorenz_run):
    ds = xr.open_dataset(lorenz_run / "results.nc")
    fig = plot_results(ds)["latents"]
    axes = [a for a in fig.axes if a.name == "3d"]
    assert len(axes) == ds.sizes["model"]
    for ax, m in zip(axes, ds.model.values):
        r2 = ds.trial_latent_r2.sel(model=m).values
        median = np.median(r2)
        chosen = np.argsort(np.abs(r2 - median), kind="stable")[:2]
        title = ax.get_title()
        for tr in chosen:   # the trials nearest the median, with their own R2, are the ones named
            assert f"{ds.trial.values[tr]} (" in title and f"R2 {r2[tr]:.2f}" in title
        assert f"median trial R2 {median:.2f}" in title
        for label in (ax.get_xlabel(), ax.get_ylabel(), ax.get_zlabel()):
            assert label.endswith("(z-scored)")
        lines = ax.get_lines()
        assert len(lines) == 4
        for true, inferred in zip(lines[::2], lines[1::2]):   # each trial: truth dashed, inference solid, one colour
            assert true.get_linestyle() == "--" and inferred.get_linestyle() == "-"
            assert true.get_color() == inferred.get_color()
        assert lines[0].get_color() != lines[2].get_color()
        assert ax.get_legend() is None                        # the key is the figure's, outside the panels
    assert [t.get_text() for t in fig.legends[0].get_texts()][0] == "true trajectory"


def test_write_nwb_of_a_lorenz_recording_is_what_pcsim_fit_reads(tmp_path):
    """The obvious call: write_nwb(lorenz_recording(...)), then pcsim fit (its Python API) on that file
    with the shipped config; it scores on the file's own test trials, trained on its train trials."""
    rec = lorenz_recording(24, 10, 30, n_conditions=3, seed=2)
    assert rec.attrs["align"] in rec.coords
    path = write_nwb(rec, tmp_path / "lorenz.nwb")
    out = tmp_path / "fit"
    assert fit(path, CONFIGS / "fit_recording.toml", out, overrides=['models.fit=["smoothing", "fa"]',
               "models.fa.n_latents=3", 'recording.condition="condition"'], progress=False) == 0
    ds = xr.open_dataset(out / "results.nc")
    summary = json.loads((out / "summary.json").read_text())
    assert convention_problems(ds) == []
    test, train = (rec.split == "test").values, (rec.split == "train").values
    np.testing.assert_array_equal(ds.trial.values, rec.trial.values[test])
    np.testing.assert_array_equal(ds.train_trial.values, rec.trial.values[train])
    np.testing.assert_array_equal(ds.heldout_counts.values, rec.counts.values[test][..., rec.heldout.values])
    # the file carries the whole recording: fitting it scores exactly as fitting the Dataset itself
    models = ModelsSection(fit=("smoothing", "fa"), fa=config_section(FactorAnalysisModel)(n_latents=3))
    _, direct = fit_and_score(rec, models, 0, "cpu", progress=False)
    for model in ("smoothing", "fa"):
        assert summary[model]["co_bps"] == pytest.approx(
            metrics.co_bps(ds.pred_rates.sel(model=model), ds.heldout_counts), rel=1e-9)
        for score in ("co_bps", "psth_r2", "latent_r2"):
            assert np.isfinite(summary[model][score])
            assert summary[model][score] == pytest.approx(direct[model][score], rel=1e-9)


def test_pcsim_run_of_the_fit_config_says_how_to_give_the_recording(tmp_path, capsys):
    out = tmp_path / "run"
    assert cli(["run", str(CONFIGS / "fit_recording.toml"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "recording.path" in err[0] and "--set recording.path=FILE" in err[0]
    assert not out.exists()                                   # refused when the config was read


def test_fa_latents_above_the_held_in_neurons_is_a_config_error_naming_key_and_count(tmp_path, capsys):
    rec = lorenz_recording(12, 8, 20, heldout_fraction=0.25, seed=1)   # 6 neurons held in
    path = write_nwb(rec, tmp_path / "rec.nwb")
    out = tmp_path / "fit"
    with pytest.raises(ConfigError, match=r"key 'models\.fa\.n_latents' = 7 exceeds the 6 held-in neurons"):
        fit(path, CONFIGS / "fit_recording.toml", out, overrides=['models.fit=["smoothing", "fa"]',
            "models.fa.n_latents=7"], progress=False)
    assert not (out / "results.nc").exists()
    # lorenz_latents knows its sizes from the config: refused when the config is read
    assert cli(["run", str(CONFIGS / "lorenz_latents.toml"), "--out", str(tmp_path / "l"), *SMALL,
                "--set", "models.fa.n_latents=19"]) == 2
    assert "models.fa.n_latents' = 19 exceeds the 18 held-in neurons" in capsys.readouterr().err
    assert not (tmp_path / "l").exists()
    # the model's own boundary, from Python
    with pytest.raises(ConfigError, match=r"n_latents = 7 exceeds the 6 held-in neurons"):
        FactorAnalysisModel(n_latents=7).fit(rec)


def test_progress_names_the_model_being_fitted_and_shows_its_em_iterations(capsys):
    rec = lorenz_recording(10, 8, 20, seed=3)
    models = ModelsSection(fit=("gpfa", "pc"), gpfa=config_section(GPFA)(n_latents=2, max_iter=3),
                           pc=config_section(PCLatentModel)(n_latents=2, epochs=2, transform_steps=5))
    fit_and_score(rec, models, 0, "cpu", progress=True)
    err = capsys.readouterr().err
    for shown in ("fitting gpfa", "fitting pc", "GPFA EM", "PC latent model EM"):
        assert shown in err
    fit_and_score(rec, models, 0, "cpu", progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("override, message", [
    ("models.gpfa.n_latents=25", "key 'models.gpfa.n_latents' = 25 exceeds the 24 neurons"),
    ("models.gpfa.segment_bins=41", "key 'models.gpfa.segment_bins' = 41 exceeds the 40 bins per trial"),
])
def test_gpfa_sizes_beyond_the_recording_are_refused_when_the_config_is_read(override, message, tmp_path, capsys):
    out = tmp_path / "l"
    assert cli(["run", str(CONFIGS / "lorenz_latents.toml"), "--out", str(out), *SMALL,
                "--set", 'models.fit=["gpfa"]', "--set", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "lorenz_latents.toml" in err[0]
    assert not out.exists()
