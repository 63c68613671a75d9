"""Binning spike times into the recording layout: counts against a brute-force count, coordinates, errors."""

import numpy as np
import pytest
import xarray as xr
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.spikes import bin_spike_times, counts_to_dataarray, to_recording
from pcsim.errors import DataError

BIN_WIDTHS = (0.01, 0.025, 0.1, 0.3)


def brute_force_counts(spikes, align, t0, bin_width, n_bins):
    """Count spike by spike: bin k of trial i is [a_i + t0 + k w, a_i + t0 + (k + 1) w)."""
    counts = np.zeros((len(align), n_bins, len(spikes)), int)
    for u, train in enumerate(spikes):
        for s in train:
            for i, a in enumerate(align):
                for k in range(n_bins):
                    if a + (t0 + bin_width * k) <= s < a + (t0 + bin_width * (k + 1)):
                        counts[i, k, u] += 1
    return counts


def brute_force_observed(intervals, lo, hi):
    """[lo, hi) is observed when walking from lo along the union of the closed intervals reaches hi."""
    reach = lo
    while reach < hi:
        further = max((b for a, b in intervals if a <= reach <= b), default=reach)
        if further <= reach:
            return False
        reach = further
    return True


@st.composite
def spike_trains(draw):
    bin_width = draw(st.sampled_from(BIN_WIDTHS))
    n_bins = draw(st.integers(1, 8))
    t0 = bin_width * draw(st.integers(-3, 3))
    n_trials = draw(st.integers(1, 4))
    starts = np.array(draw(st.lists(st.floats(1.0, 20.0), min_size=n_trials, max_size=n_trials)))
    align = starts + np.array(draw(st.lists(st.floats(0.0, 0.5), min_size=n_trials, max_size=n_trials)))
    edges = [a + (t0 + bin_width * k) for a in align for k in range(n_bins + 1)]
    units, intervals = [], []
    for _ in range(draw(st.integers(1, 4))):
        free = draw(st.lists(st.floats(0.0, 25.0), max_size=20))
        on_edges = draw(st.lists(st.sampled_from(edges), max_size=5))  # spikes exactly on bin edges
        units.append(np.sort(np.array(free + on_edges, dtype=float)))
        pairs = draw(st.lists(st.tuples(st.floats(0.0, 25.0), st.floats(0.0, 25.0)), max_size=3))
        intervals.append(np.array([sorted(p) for p in pairs]).reshape(-1, 2))
    return units, starts, align, t0, bin_width, n_bins, intervals


@settings(max_examples=60, deadline=None)
@given(spike_trains())
def test_counts_and_observed_equal_brute_force(case):
    units, starts, align, t0, bin_width, n_bins, intervals = case
    da = bin_spike_times(units, starts, bin_width=bin_width, window=(t0, t0 + n_bins * bin_width),
                         align_times=align, obs_intervals=intervals)
    np.testing.assert_array_equal(da.values, brute_force_counts(units, align, t0, bin_width, n_bins))
    assert da.dtype == np.int64 and da.dims == ("trial", "time", "neuron")
    observed = np.array([[[brute_force_observed(iv, a + (t0 + bin_width * k), a + (t0 + bin_width * (k + 1)))
                           for iv in intervals] for k in range(n_bins)] for a in align])
    np.testing.assert_array_equal(da["observed"].values, observed)


def test_window_alignment_and_coordinates():
    starts = np.array([1.0, 3.0])
    onset = starts + np.array([0.5, 0.7])
    # Offsets from movement onset, mid-bin: -0.15 -> bin 0, 0.05 -> bin 2, 0.25 -> bin 4; 0.6 is outside.
    spikes = [np.sort(np.r_[onset + -0.15, onset + 0.05, onset[1] + 0.05, onset + 0.6]), np.array([onset[0] + 0.25])]
    da = bin_spike_times(spikes, starts, starts + 1.5, bin_width=0.1, window=(-0.2, 0.3), align_times="move_onset_time",
                         neuron_ids=[11, 42], trial_ids=[7, 8],
                         trial_coords={"move_onset_time": onset, "condition": ["left", "right"]})
    np.testing.assert_allclose(da["time"].values, [-0.15, -0.05, 0.05, 0.15, 0.25])
    assert da["time"].attrs["units"] == "s"
    assert da.attrs["bin_width"] == 0.1 and da.attrs["align"] == "move_onset_time"
    assert da["trial"].values.tolist() == [7, 8] and da["neuron"].values.tolist() == [11, 42]
    assert da["condition"].dims == ("trial",) and da["condition"].values.tolist() == ["left", "right"]
    np.testing.assert_array_equal(da["start_time"].values, starts)
    np.testing.assert_array_equal(da["stop_time"].values, starts + 1.5)
    np.testing.assert_array_equal(da["move_onset_time"].values, onset)
    expected = np.zeros((2, 5, 2), int)
    expected[:, 0, 0] = 1
    expected[:, 2, 0] = [1, 2]
    expected[0, 4, 1] = 1
    np.testing.assert_array_equal(da.values, expected)
    assert "observed" not in da.coords  # only with obs_intervals


def test_alignment_array_is_kept_as_a_coordinate():
    da = bin_spike_times([np.array([2.05])], [1.0], bin_width=0.1, window=(0.0, 0.2), align_times=[2.0])
    assert da.attrs["align"] == "align_time"
    assert da["align_time"].values.tolist() == [2.0]
    assert da.values[0, :, 0].tolist() == [1, 0]


def test_default_window_is_the_whole_trial():
    da = bin_spike_times([np.array([0.05, 1.45, 2.5])], [0.0, 2.0], [0.5, 2.5], bin_width=0.25)
    np.testing.assert_allclose(da["time"].values, [0.125, 0.375])
    # 2.5 is the last trial's stop: bins are half-open, so it is not counted.
    assert da.values[:, :, 0].tolist() == [[1, 0], [0, 0]]


def test_counts_to_dataarray_matches_bin_spike_times():
    rng = np.random.default_rng(0)
    spikes = [np.sort(rng.uniform(0, 10, 40)) for _ in range(3)]
    starts = np.array([1.0, 4.0, 7.0])
    binned = bin_spike_times(spikes, starts, starts + 2.0, bin_width=0.05, window=(-0.5, 1.0),
                             trial_coords={"condition": [0, 1, 0]}, obs_intervals=[[[0, 5]], [[0, 10]], []])
    columns = {name: binned[name].values for name in ("start_time", "stop_time", "condition")}
    labelled = counts_to_dataarray(binned.values.astype(float), 0.05, window=(-0.5, 1.0), trial_coords=columns,
                                   observed=binned["observed"].values)
    xr.testing.assert_identical(labelled, binned)
    per_trial = counts_to_dataarray(list(binned.values), 0.05, window=(-0.5, 1.0), trial_coords=columns,
                                    observed=binned["observed"].values)
    xr.testing.assert_identical(per_trial, binned)


def test_to_recording_follows_the_conventions():
    starts = np.array([1.0, 2.0, 3.0])
    da = bin_spike_times([np.array([1.1, 2.2]), np.array([3.3])], starts, starts + 0.5, bin_width=0.1,
                         neuron_ids=[5, 9], obs_intervals=[[[0, 2.5]], [[0, 4]]])
    rates = np.full(da.shape, 0.2)
    latents = xr.DataArray(np.zeros((3, 5, 2)), dims=("trial", "time", "latent"))
    ds = to_recording(da, heldout=[9], split=["train", "val", "test"], rates=rates, latents=latents)
    assert ds["counts"].dims == ("trial", "time", "neuron") and ds["counts"].dtype == np.int64
    assert ds.attrs["bin_width"] == 0.1 and ds.attrs["align"] == "start_time"
    assert "bin_width" not in ds["counts"].attrs and ds["counts"].attrs["units"] == "counts/bin"
    assert ds["heldout"].values.tolist() == [False, True]
    assert ds["split"].values.tolist() == ["train", "val", "test"]
    assert ds["observed"].dtype == bool and "observed" not in ds["counts"].coords
    assert ds["observed"].values[2, :, 0].tolist() == [False] * 5  # unit 5 was recorded until 2.5 s
    assert ds["rates"].dims == ("trial", "time", "neuron") and ds["latents"].dims == ("trial", "time", "latent")
    defaults = to_recording(da)
    assert not defaults["heldout"].values.any() and set(defaults["split"].values) == {"train"}
    assert to_recording(da, heldout=np.array([True, False]))["heldout"].values.tolist() == [True, False]


# ----------------------------------------------------------------------------- bad input

TWO_TRIALS = dict(trial_starts=[0.5, 2.0], trial_stops=[1.5, 3.0], bin_width=0.1)
TWO_UNITS = [np.array([0.6, 0.7]), np.array([2.1])]


def _counts_with(index, value):
    counts = np.ones((2, 3, 3))
    counts[index] = value
    return counts


@pytest.mark.parametrize("call, message", [
    pytest.param(lambda: counts_to_dataarray(_counts_with((1, 2, 0), -1), 0.1), r"non-negative, got -1\.0 at trial 1, bin 2, neuron 0", id='negative-count'),
    pytest.param(lambda: counts_to_dataarray(_counts_with((0, 1, 2), 1.5), 0.1), r"whole numbers of spikes, got 1\.5 at trial 0, bin 1, neuron 2", id='fractional-count'),
    pytest.param(lambda: counts_to_dataarray(_counts_with((1, 0, 1), np.nan), 0.1), r"NaN/Inf at trial 1, bin 0, neuron 1", id='nan-count'),
    pytest.param(lambda: counts_to_dataarray([np.ones((3, 2)), np.ones((2, 2))], 0.1), r"unequal length: trial 1 has shape \(2, 2\)", id='ragged-trials'),
    pytest.param(lambda: counts_to_dataarray(np.ones((2, 0, 3)), 0.1), r"empty trials \(zero bins\)", id='zero-bins'),
    pytest.param(lambda: counts_to_dataarray(np.ones((2, 3, 3)), 0.1, window=(0, 0.5)), r"holds 5 bins .* counts has 3 bins", id='window-vs-counts'),
    pytest.param(lambda: bin_spike_times([np.array([0.6]), np.array([0.1, 0.5, 0.3])], **TWO_TRIALS),
     r"unit 1: spike times are not sorted: spike 2 at 0\.3 s comes after spike 1 at 0\.5 s", id='unsorted-spikes'),
    pytest.param(lambda: bin_spike_times([np.array([0.1, 0.5, 0.3])], **TWO_TRIALS, neuron_ids=[17]), r"unit 0 \(id 17\): spike times are not sorted", id='unsorted-spikes-id'),
    pytest.param(lambda: bin_spike_times([np.array([-0.1, 0.6])], **TWO_TRIALS), r"unit 0: spike 0 at -0\.1 s is outside the session \(before", id='spike-before-session'),
    pytest.param(lambda: bin_spike_times([np.array([0.6]), np.array([0.6, 3.5, 9.0])], **TWO_TRIALS, session_stop=4.0),
     r"unit 1: spike 2 at 9\.0 s is outside the session \(after its stop, 4\.0 s\)", id='spike-after-session'),
    pytest.param(lambda: bin_spike_times([np.array([0.6, np.nan])], **TWO_TRIALS), r"unit 0: spike 1 is nan", id='nan-spike'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, [0.5, 2.0, 4.0], [1.5, 3.0, 5.2], bin_width=0.1),
     r"unequal length.*trial 0 lasts 1 s, trial 2 lasts 1\.2 s", id='unequal-trials'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, [0.5, 2.0], [1.5, 2.0], bin_width=0.1), r"trial 1 is empty: its stop_time 2\.0 s", id='empty-trial'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, [0.5, 2.0], [1.5, 2.0], bin_width=0.1, trial_ids=[30, 31]),
     r"trial 31 \(index 1\) is empty", id='empty-trial-id'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, **TWO_TRIALS, window=(0.2, 0.2)), r"window \(0\.2, 0\.2\) s is empty", id='empty-window'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, **TWO_TRIALS, window=(0.0, 0.25)), r"does not divide into whole bins .*2\.5 bins", id='window-not-whole-bins'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, [0.5, 2.0], bin_width=0.0, window=(0, 1)), r"bin_width must be a positive number", id='zero-bin-width'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, [0.5, 2.0], bin_width=-0.1, window=(0, 1)), r"bin_width must be a positive number", id='negative-bin-width'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, **TWO_TRIALS, window=(-0.1, 0.4), align_times="move_onset_time",
                             trial_coords={"condition": [1, 2]}),
     r"alignment column 'move_onset_time' not found; available trial columns: \['condition', 'start_time', 'stop_time'\]", id='missing-align-column'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, **TWO_TRIALS, window=(-0.1, 0.4), align_times="move_onset_time",
                             trial_coords={"move_onset_time": [0.7, np.nan]}),
     r"'move_onset_time' is NaN/Inf for 1 trial\(s\), ids \[1\]", id='nan-align'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, **TWO_TRIALS, trial_coords={"condition": [1, 2, 3]}),
     r"trial_coords\['condition'\] must have shape \(trials,\) with 2 trials, got shape \(3,\)", id='trial-coord-length'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, **TWO_TRIALS, window=(-0.6, 0.4)), r"window of trial 0 starts at -0\.1 s, before the session start", id='window-before-session'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, [0.5, np.nan], bin_width=0.1, window=(0, 1)), r"trial_starts is nan for trial index 1", id='nan-trial-start'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, **TWO_TRIALS, obs_intervals=[[[1.0, 0.5]], []]), r"unit 0: obs_intervals\[0\] = \[1\.0, 0\.5\]", id='bad-obs-interval'),
    pytest.param(lambda: bin_spike_times(TWO_UNITS, **TWO_TRIALS, neuron_ids=[1, 1]), r"neuron_ids must be unique; \[1\]", id='duplicate-neuron-ids'),
    pytest.param(lambda: to_recording(bin_spike_times(TWO_UNITS, **TWO_TRIALS), heldout=[7]), r"heldout names neuron ids \[7\]", id='unknown-heldout-id'),
    pytest.param(lambda: to_recording(bin_spike_times(TWO_UNITS, **TWO_TRIALS), split=["train", "Test"]), r"split label 'Test' of trial 1", id='bad-split-label'),
    pytest.param(lambda: to_recording(bin_spike_times(TWO_UNITS, **TWO_TRIALS), latents=np.zeros((2, 10, 3))),
     r"latents is a bare array of shape \(2, 10, 3\)", id='bare-extra-array'),
    pytest.param(lambda: to_recording(bin_spike_times(TWO_UNITS, **TWO_TRIALS).rename(neuron="unit")), r"counts must have dims", id='wrong-dims'),
])
def test_bad_input_is_named(call, message):
    with pytest.raises(DataError, match=message):
        call()
