"""Continuous sessions (no trials table): windows, unit selection, behaviour, circular decoding, bad files.

Every file here is written with pynwb's own API (tests/analysis/session_files.py and the
small builder below), never with pcsim's writer, so that the reader is checked against an
independent writer.
"""

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from pynwb import NWBHDF5IO, NWBFile, TimeSeries
from pynwb.behavior import CompassDirection, SpatialSeries
from scipy.interpolate import interp1d

from analysis import metrics
from analysis.nwb import read_nwb, read_spike_times
from analysis.sessions import cut_windows, resample_series, where_mask
from pcsim.config import load_experiment
from pcsim.errors import ConfigError, DataError
from pcsim.results import convention_problems

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _sibling(name: str):
    """The helper module ``name``.py beside this file (pytest runs with --import-mode=importlib,
    which puts no test folder on sys.path)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


_files = _sibling("session_files")
head_direction, head_direction_session, ring_rates = _files.head_direction, _files.head_direction_session, _files.ring_rates
START = datetime(2024, 5, 1, 9, 30, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def hd_file(tmp_path_factory):
    """A small head-direction session: 12 s wake, 6 s sleep, 12 tuned + 3 mua units."""
    return head_direction_session(tmp_path_factory.mktemp("hd") / "hd.nwb", n_tuned=12, n_mua=3, wake=12.0,
                                  sleep=6.0, seed=3)


def _read(path, **kw):
    settings = dict(bin_width=0.02, intervals="epochs", window_length=0.5, intervals_where={"tags": "wake"},
                    heldout_fraction=0.25, test_fraction=0.2)
    settings.update(kw)
    return read_nwb(path, **settings)


# ----------------------------------------------------------------------------- windows


def test_windows_are_cut_exactly_from_the_named_epochs(hd_file):
    rec = _read(hd_file)
    spikes = read_spike_times(hd_file)
    with NWBHDF5IO(str(hd_file), "r") as io:
        epochs = io.read().epochs.to_dataframe()
    wake = epochs[epochs.tags.apply(lambda tags: "wake" in tags)].iloc[0]
    n_windows = int(np.floor((wake.stop_time - wake.start_time) / 0.5 + 1e-9))
    assert rec.sizes == {"trial": n_windows, "time": 25, "neuron": 15}
    np.testing.assert_allclose(rec.start_time.values, wake.start_time + 0.5 * np.arange(n_windows))
    # every bin's count, recounted from the spike times themselves
    for w, start in enumerate(rec.start_time.values):
        for k in range(25):
            lo, hi = start + 0.02 * k, start + 0.02 * (k + 1)
            expected = [int(((s >= lo) & (s < hi)).sum()) for s in spikes]
            np.testing.assert_array_equal(rec.counts.values[w, k], expected)
    assert rec.counts.sum() > 0
    assert set(rec.split.values) == {"train", "test"}
    assert rec.attrs["intervals"] == "epochs" and rec.attrs["window_length"] == 0.5


def test_the_whole_session_and_every_epoch_are_windows_too(hd_file):
    spikes = read_spike_times(hd_file)
    first, last = min(s[0] for s in spikes), max(s[-1] for s in spikes)
    whole = _read(hd_file, intervals="session", intervals_where=None, window_length=1.0)
    assert whole.sizes["trial"] == int(np.floor(last - first))
    assert whole.start_time.values[0] == pytest.approx(first)
    both = _read(hd_file, intervals_where=None)
    assert both.sizes["trial"] == 24 + 12      # 12 s of wake and 6 s of sleep in 0.5 s windows


def test_cut_windows_leaves_out_each_intervals_remainder():
    starts, row = cut_windows([0.0, 10.0, 20.0], [2.5, 10.9, 21.0], 1.0, "table")
    np.testing.assert_allclose(starts, [0.0, 1.0, 20.0])
    np.testing.assert_array_equal(row, [0, 0, 2])


def test_a_short_epoch_of_a_long_session_is_read_without_a_units_warning(tmp_path, recwarn):
    rng = np.random.default_rng(2)
    path = _small_file(tmp_path, spikes=[np.sort(rng.uniform(0, 500, 2000)) for _ in range(2)],
                       epochs=((0.0, 3.0, "wake"),))
    rec = read_nwb(path, bin_width=0.1, intervals="epochs", window_length=1.0)
    assert rec.sizes["trial"] == 3 and rec.counts.sum() > 0
    assert not [w for w in recwarn if "milliseconds" in str(w.message)]


def test_windows_overlapping_invalid_times_are_dropped(tmp_path):
    path = _small_file(tmp_path, invalid=[(3.2, 3.4)])
    rec = read_nwb(path, bin_width=0.1, intervals="epochs", window_length=1.0)
    np.testing.assert_allclose(rec.start_time.values, [0.0, 1.0, 2.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0])


# ----------------------------------------------------------------------------- neurons


def test_units_are_selected_by_their_columns(hd_file):
    every = _read(hd_file)
    assert {"quality", "region", "preferred_direction"} <= set(every.coords)
    good = _read(hd_file, neurons={"quality": "good"})
    np.testing.assert_array_equal(good.neuron.values, every.neuron.values[every.quality.values == "good"])
    assert good.sizes["neuron"] == 12
    both = _read(hd_file, neurons={"quality": "good", "region": ["ADN"]})
    expected = (every.quality.values == "good") & (every.region.values == "ADN")
    np.testing.assert_array_equal(both.neuron.values, every.neuron.values[expected])
    np.testing.assert_array_equal(both.counts.values, every.counts.values[..., expected])


def test_where_mask_matches_ragged_columns_and_names_what_is_missing():
    tags = [np.array(["wake", "run"]), np.array(["sleep"]), np.array(["wake"])]
    np.testing.assert_array_equal(where_mask({"tags": tags}, {"tags": "wake"}, "epochs"), [True, False, True])
    with pytest.raises(DataError, match=r"epochs has no column 'state'.*\['tags'\]"):
        where_mask({"tags": tags}, {"state": "REM"}, "epochs")
    with pytest.raises(DataError, match=r"epochs: no row .*'tags'.*'run', 'sleep', 'wake'"):
        where_mask({"tags": tags}, {"tags": "REM"}, "epochs")


# ----------------------------------------------------------------------------- behaviour


def test_behaviour_is_resampled_onto_the_bins(hd_file):
    rec = _read(hd_file, behaviour=["head_direction", "position"])
    beh = rec.behaviour
    assert list(beh.behaviour_dim.values) == ["head_direction", "position_x", "position_y"]
    np.testing.assert_array_equal(beh.circular.values, [True, False, False])
    centres = rec.start_time.values[:, None] + rec.time.values[None, :]
    with NWBHDF5IO(str(hd_file), "r") as io:
        position = io.read().processing["behavior"]["Position"]["position"]
        stamps, xy = position.timestamps[:], position.data[:]
    expected = interp1d(stamps, xy, axis=0)(centres)            # an independent linear interpolation
    np.testing.assert_allclose(beh.values[..., 1:], expected, rtol=0, atol=1e-12)
    # the angle follows the true trajectory through every wrap; interpolating the wrapped samples would not
    error = np.angle(np.exp(1j * (beh.values[..., 0] - head_direction(centres, seed=3))))
    assert np.abs(error).max() < 5e-3
    hd = head_direction(stamps, seed=3)
    naive = np.interp(centres, stamps, hd)
    assert np.abs(np.angle(np.exp(1j * (naive - head_direction(centres, seed=3))))).max() > 1.0


def test_behaviour_is_resampled_onto_trials_too(tmp_path):
    stamps = np.linspace(-1, 11, 301)
    path = _small_file(tmp_path, behaviour=(stamps, np.sin(stamps)), trials=[(0.5, 1.5), (4.0, 5.0), (7.2, 8.2)])
    rec = read_nwb(path, bin_width=0.1, window=(0.0, 1.0), behaviour=["speed", "heading"], test_fraction=0.0,
                   heldout_fraction=0.0)
    centres = rec.start_time.values[:, None] + rec.time.values[None, :]
    np.testing.assert_allclose(rec.behaviour.sel(behaviour_dim="speed").values,
                               interp1d(stamps, np.abs(np.sin(stamps)))(centres), atol=1e-12)
    # degrees in [0, 360) become radians in [-pi, pi), interpolated across the 0/360 seam
    np.testing.assert_allclose(rec.behaviour.sel(behaviour_dim="heading").values,
                               interp1d(stamps, np.sin(stamps))(centres), atol=1e-9)
    assert rec.behaviour.behaviour_units.values.tolist() == ["m/s", "rad"]
    assert rec.behaviour.circular.values.tolist() == [False, True]


def test_resampling_marks_bins_beside_a_lost_sample_missing():
    t = np.arange(10.0)
    v = np.arange(10.0)
    v[4] = np.nan
    out = resample_series(t, v, np.array([[2.5, 3.5, 4.5, 6.5]]), circular=False, what="x")[0, :, 0]
    np.testing.assert_allclose(out[[0, 3]], [2.5, 6.5])
    assert np.isnan(out[1]) and np.isnan(out[2])


def test_circular_r2_decodes_an_angle_through_its_wrap_around():
    rng = np.random.default_rng(0)
    t = np.arange(0, 80, 0.02)
    theta = head_direction(t, seed=1).reshape(40, 100)
    rates = ring_rates(theta.ravel(), np.linspace(-np.pi, np.pi, 16, endpoint=False)).reshape(40, 100, 16) * 0.02
    features = rates + 0.02 * rng.standard_normal(rates.shape)
    angle = theta[..., None]
    tr, te = slice(0, 30), slice(30, 40)
    circular = metrics.behaviour_r2(features[tr], angle[tr], features[te], angle[te], circular=[True],
                                    multioutput="variance_weighted", per_dim=True)
    naive = metrics.behaviour_r2(features[tr], angle[tr], features[te], angle[te], circular=[False])
    assert circular.r2 > 0.95
    # a linear decoder of the wrapped angle itself fails at every wrap: ten times the unexplained variance
    assert naive < 0.9 and (1 - naive) > 10 * (1 - float(circular.r2))
    # the decoded angle is the true one, up to the noise
    error = np.angle(np.exp(1j * (circular.decoded.values[..., 0] - theta[te])))
    assert np.median(np.abs(error)) < 0.2
    # a DataArray's 'circular' coordinate says the same as the argument
    da = xr.DataArray(angle, dims=("trial", "time", "behaviour_dim"), coords={"circular": ("behaviour_dim", [True])})
    assert metrics.behaviour_r2(features[tr], da[tr], features[te], da[te], multioutput="variance_weighted") \
        == pytest.approx(float(circular.r2))


# ----------------------------------------------------------------------------- bad files


def _small_file(tmp_path, *, units=True, spikes=None, epochs=((0.0, 10.0, "wake"),), invalid=(), behaviour=None,
                trials=(), name="small.nwb"):
    """A 10 s session written with pynwb: 3 units, an epochs table, optional behaviour (timestamps, values)."""
    rng = np.random.default_rng(0)
    nwb = NWBFile(session_description="test", identifier=name, session_start_time=START)
    if units:
        nwb.add_unit_column(name="quality", description="label")
        for u, train in enumerate(spikes if spikes is not None else [np.sort(rng.uniform(0, 10, 40)) for _ in range(3)]):
            nwb.add_unit(spike_times=train, quality="good" if u else "mua")
    for start, stop, tag in epochs:
        nwb.add_epoch(start_time=start, stop_time=stop, tags=[tag])
    for start, stop in invalid:
        nwb.add_invalid_time_interval(start_time=start, stop_time=stop)
    for start, stop in trials:
        nwb.add_trial(start_time=start, stop_time=stop)
    if behaviour is not None:
        stamps, values = behaviour
        module = nwb.create_processing_module(name="behavior", description="behaviour")
        module.add(CompassDirection(spatial_series=SpatialSeries(
            name="head_direction", data=values, timestamps=stamps, reference_frame="north", unit="radians")))
        module.add(TimeSeries(name="speed", data=np.abs(values), timestamps=stamps, unit="m/s"))
        module.add(TimeSeries(name="heading", data=np.degrees(values) % 360, timestamps=stamps, unit="degrees"))
    path = tmp_path / name
    with NWBHDF5IO(str(path), mode="w") as io:
        io.write(nwb)
    return path


def _refusal(path, **kw):
    settings = dict(bin_width=0.1, intervals="epochs", window_length=1.0)
    settings.update(kw)
    with pytest.raises(DataError) as info:
        read_nwb(path, **settings)
    message = str(info.value)
    assert message.startswith(str(path))      # every refusal names the file first
    return message


def test_a_file_without_units_is_refused_naming_the_units_table(tmp_path):
    assert "no Units table" in _refusal(_small_file(tmp_path, units=False))


def test_spike_times_outside_every_interval_are_refused(tmp_path):
    path = _small_file(tmp_path, spikes=[np.sort(np.random.default_rng(1).uniform(100, 110, 30)) for _ in range(2)],
                       epochs=((0.0, 10.0, "wake"),))
    message = _refusal(path)
    assert "'epochs'" in message and "outside every interval" in message and "100" in message


def test_a_missing_intervals_table_is_refused_listing_the_files_tables(tmp_path):
    message = _refusal(_small_file(tmp_path), intervals="sleep_states")
    assert "'sleep_states'" in message and "'epochs'" in message and "'session'" in message


def test_a_window_longer_than_every_interval_is_refused(tmp_path):
    message = _refusal(_small_file(tmp_path, epochs=((0.0, 2.0, "wake"), (5.0, 8.0, "sleep"))), window_length=4.0)
    assert "'epochs'" in message and "longer than every interval" in message and "3000 ms" in message


def test_a_session_without_trials_needs_a_window_length(tmp_path):
    with pytest.raises(DataError, match=r"no trials table.*window_length.*'epochs'"):
        read_nwb(_small_file(tmp_path), bin_width=0.1)


def test_trial_window_and_alignment_are_refused_for_windows_cut_from_intervals(tmp_path):
    # windows start at their own start: a trial window or alignment would be ignored, so it is refused
    path = _small_file(tmp_path)
    for extra in ({"window": (0.0, 0.5)}, {"align": "stop_time"}):
        message = _refusal(path, window_length=1.0, **extra)
        assert "leave window and align unset" in message and "'epochs'" in message


def test_behaviour_with_timestamps_out_of_order_is_refused_naming_the_series(tmp_path):
    stamps = np.linspace(-1, 11, 200)
    stamps[50], stamps[51] = stamps[51], stamps[50]
    message = _refusal(_small_file(tmp_path, behaviour=(stamps, np.zeros(200))), behaviour=["head_direction"])
    assert "head_direction" in message and "not increasing" in message and "sample 51" in message


def test_behaviour_that_does_not_cover_the_windows_is_refused(tmp_path):
    stamps = np.linspace(0, 6, 200)
    message = _refusal(_small_file(tmp_path, behaviour=(stamps, np.zeros(200))), behaviour=["speed"])
    assert "'processing/behavior/speed'" in message and "does not cover the windows" in message and "window 6" in message


def test_an_unknown_behaviour_series_or_unit_column_is_refused_naming_it(tmp_path):
    path = _small_file(tmp_path, behaviour=(np.linspace(-1, 11, 200), np.zeros(200)))
    message = _refusal(path, behaviour=["position"])
    assert "'position'" in message and "head_direction" in message
    message = _refusal(path, neurons={"brain_area": "CA1"})
    assert "'brain_area'" in message and "quality" in message


# ----------------------------------------------------------------------------- config and pcsim fit


def test_the_session_config_reads_its_selections_and_refuses_windows_without_a_length(tmp_path):
    _, cfg = load_experiment(CONFIGS / "fit_session.toml")
    assert cfg.recording.neurons.where == {"quality": "good"}
    assert cfg.recording.windows.where == {"tags": "wake"}
    with pytest.raises(ConfigError, match="length_ms"):
        load_experiment(CONFIGS / "fit_session.toml", overrides=["recording.windows.length_ms=0"])
    for override in ("recording.window_ms=[0.0, 500.0]", "recording.align=move_onset_time"):
        with pytest.raises(ConfigError, match=r"fit_session\.toml.*window_ms = \[\] and leave align unset"):
            load_experiment(CONFIGS / "fit_session.toml", overrides=[override])


def test_pcsim_fit_on_a_continuous_session_reports_behaviour_r2_for_every_model(hd_file, tmp_path):
    from analysis.commands import fit

    out = tmp_path / "run"
    assert fit(hd_file, CONFIGS / "fit_session.toml", out, progress=False, overrides=[
        'models.fit=["smoothing", "fa"]', "models.fa.n_latents=4", "recording.windows.length_ms=500",
        'recording.behaviour.series=["head_direction"]']) == 0
    summary = json.loads((out / "summary.json").read_text())
    ds = xr.open_dataset(out / "results.nc")
    assert convention_problems(ds) == []
    assert summary["n_neurons"] == 12 and summary["n_trials"] == 24     # wake windows only: sleep has no behaviour
    for model in ("smoothing", "fa"):
        decoded = ds.decoded_behaviour.sel(model=model, behaviour_dim="head_direction").values
        true = ds.behaviour.sel(behaviour_dim="head_direction").values
        # the summary's number is the circular R2 of what results.nc holds, and the ring decodes its angle
        resid = np.abs(np.angle(np.exp(1j * (decoded - true))))
        assert np.median(resid) < 0.6
        assert 0.4 < summary[model]["behaviour_r2"] <= 1
    assert (out / "behaviour.png").stat().st_size > 1000
