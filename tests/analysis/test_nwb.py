"""NWB in and out: round trips, the Neural Latents Benchmark layout, NWB Inspector, atomic writes."""

from datetime import datetime, timezone

import numpy as np
import pytest
import xarray as xr
from nwbinspector import Importance, inspect_nwbfile
from pynwb import NWBHDF5IO, NWBFile
from pynwb.misc import Units

from analysis.nwb import read_binned_nwb, read_nwb, read_spike_times, write_nwb
from analysis.spikes import bin_spike_times, to_recording
from analysis.synthetic import lorenz_recording
from pcsim.errors import DataError

START = datetime(2024, 5, 1, 9, 30, tzinfo=timezone.utc)
SUBJECT = {"subject_id": "sim-01", "species": "Mus musculus", "sex": "U", "age": "P90D",
           "description": "simulated animal of the test suite"}
RESOLUTION = 1 / 30000


@pytest.fixture(scope="module")
def lorenz():
    return lorenz_recording(n_trials=6, n_neurons=5, n_bins=20)


@pytest.fixture(scope="module")
def session():
    """Spike times of 4 units over 6 trials of 1 s, with conditions, splits and observation intervals."""
    rng = np.random.default_rng(1)
    starts = 0.5 + 1.2 * np.arange(6)
    trials = {"start_time": starts, "stop_time": starts + 1.0, "condition": np.array([0, 1, 2, 0, 1, 2]),
              "move_onset_time": starts + rng.uniform(0.3, 0.5, 6),
              "split": np.array(["train", "train", "val", "train", "test", "test"])}
    obs = [np.array([[0.0, 8.0]]), np.array([[0.0, 3.0], [4.0, 8.0]]), np.array([[0.0, 8.0]]), np.array([[2.0, 8.0]])]
    spikes = []
    for intervals in obs:  # spikes only while the unit is observed
        times = np.sort(rng.uniform(0, 8, rng.integers(20, 60)))
        spikes.append(times[((times[:, None] >= intervals[:, 0]) & (times[:, None] <= intervals[:, 1])).any(1)])
    return spikes, trials, obs


def serious_messages(path):
    """NWB Inspector's messages at BEST_PRACTICE_VIOLATION or above (CRITICAL, PYNWB_VALIDATION, ERROR)."""
    messages = [m for m in inspect_nwbfile(nwbfile_path=path)
                if m.importance.value >= Importance.BEST_PRACTICE_VIOLATION.value]
    for m in messages:
        print(f"{m.importance.name} {m.check_function_name} {m.location} {m.object_name}: {m.message}")
    return messages


# ----------------------------------------------------------------------------- round trips


def test_binned_recording_round_trip_is_identical(lorenz, tmp_path):
    path = write_nwb(lorenz, tmp_path / "lorenz.nwb", session_start_time=START)
    back = read_binned_nwb(path)
    np.testing.assert_array_equal(back["counts"].values, lorenz["counts"].values)
    assert back["counts"].dtype == lorenz["counts"].dtype
    assert back.attrs["bin_width"] == lorenz.attrs["bin_width"]
    for name, coord in lorenz.coords.items():
        np.testing.assert_array_equal(back[name].values, coord.values, err_msg=name)
    xr.testing.assert_identical(back, lorenz)  # rates, latents, behaviour, every coordinate and attr
    assert {n: v.dtype for n, v in back.variables.items()} == {n: v.dtype for n, v in lorenz.variables.items()}


def test_unusual_labels_round_trip(lorenz, tmp_path):
    """String trial and neuron ids, a scalar coordinate, a (trial, time) variable and array attrs survive too."""
    odd = lorenz.assign_coords(trial=[f"t{i}" for i in range(6)], neuron=["a1", "a2", "b1", "b2", "c1"],
                               session="s-07", quality=("neuron", [0.9, 0.8, np.nan, 0.7, 0.6]))
    odd["speed"] = (("trial", "time"), np.linspace(0, 1, 120).reshape(6, 20), {"units": "m/s"})
    odd.attrs["weights"] = np.arange(3.0)
    back = read_binned_nwb(write_nwb(odd, tmp_path / "odd.nwb", session_start_time=START))
    xr.testing.assert_identical(back, odd)
    assert {n: v.dtype for n, v in back.variables.items()} == {n: v.dtype for n, v in odd.variables.items()}
    assert isinstance(back.attrs["weights"], np.ndarray)


def test_spike_times_round_trip_and_binning(session, tmp_path):
    spikes, trials, obs = session
    heldout = np.array([False, True, False, True])
    path = write_nwb(spikes, tmp_path / "spikes.nwb", trials=trials, neuron_ids=[3, 5, 8, 13], heldout=heldout,
                     obs_intervals=obs, resolution=RESOLUTION, session_start_time=START)
    back = read_spike_times(path)
    assert len(back) == len(spikes)
    for written, read in zip(spikes, back):
        np.testing.assert_array_equal(read, written)

    recording = read_nwb(path, bin_width=0.05, window=(-0.2, 0.4), align="move_onset_time")
    columns = {k: v for k, v in trials.items() if k not in ("start_time", "stop_time", "split")}
    expected = to_recording(
        bin_spike_times(spikes, trials["start_time"], trials["stop_time"], bin_width=0.05, window=(-0.2, 0.4),
                        align_times="move_onset_time", neuron_ids=[3, 5, 8, 13], trial_coords=columns,
                        obs_intervals=obs),
        heldout=heldout, split=trials["split"])
    xr.testing.assert_identical(recording.drop_attrs(deep=False), expected.drop_attrs(deep=False))
    assert recording.attrs["bin_width"] == 0.05 and recording.attrs["align"] == "move_onset_time"
    assert not recording["observed"].values[:, :, 1][2].any()  # unit 5 was not recorded from 3 s to 4 s


def test_recording_with_spike_times_round_trip(session, tmp_path):
    spikes, trials, obs = session
    columns = {"condition": trials["condition"], "move_onset_time": trials["move_onset_time"]}
    recording = to_recording(
        bin_spike_times(spikes, trials["start_time"], trials["stop_time"], bin_width=0.1, window=(-0.2, 0.5),
                        align_times="move_onset_time", trial_coords=columns, obs_intervals=obs),
        heldout=[1], split=trials["split"])
    path = write_nwb(recording, tmp_path / "both.nwb", spike_times=spikes, obs_intervals=obs,
                     resolution=RESOLUTION, session_start_time=START)
    xr.testing.assert_identical(read_binned_nwb(path), recording)
    rebinned = read_nwb(path, bin_width=0.1, window=(-0.2, 0.5), align="move_onset_time")
    xr.testing.assert_identical(rebinned.drop_attrs(deep=False), recording.drop_attrs(deep=False))


def test_spike_times_must_match_the_counts(session, tmp_path):
    spikes, trials, _ = session
    recording = to_recording(bin_spike_times(spikes, trials["start_time"], trials["stop_time"], bin_width=0.1))
    wrong = [np.delete(spikes[0], np.searchsorted(spikes[0], 0.5))] + spikes[1:]  # a spike of trial 0
    with pytest.raises(DataError, match=r"spike_times do not give the recording's counts: neuron 0, trial 0"):
        write_nwb(recording, tmp_path / "bad.nwb", spike_times=wrong, resolution=RESOLUTION)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- the NLB layout


def write_nlb_file(path, splits=("train", "val", "test")):
    """A file laid out like the Neural Latents Benchmark's: Units with heldout/obs_intervals/electrodes, trials
    with split (``splits``, one per trial) and move_onset_time. Spikes sit mid-bin for a 0.1 s grid around movement onset."""
    nwbfile = NWBFile(session_description="NLB-style test session", identifier="nlb-test", session_start_time=START)
    device = nwbfile.create_device(name="utah_array")
    group = nwbfile.create_electrode_group(name="M1_array", description="Utah array", location="M1", device=device)
    for location in ("M1", "M1", "PMd"):
        nwbfile.add_electrode(group=group, location=location)
    nwbfile.add_trial_column(name="split", description="NLB data split")
    nwbfile.add_trial_column(name="move_onset_time", description="movement onset (s)")
    nwbfile.add_trial_column(name="trial_type", description="maze condition")
    nwbfile.add_trial_column(name="target_pos", description="target position (mm)")
    nwbfile.add_trial_column(name="event_times", description="ragged list of event times (s)", index=True)
    onsets = [1.5, 3.6, 5.7]
    for i, (onset, split) in enumerate(zip(onsets, splits)):
        nwbfile.add_trial(start_time=1.0 + 2 * i, stop_time=2.5 + 2 * i, split=split, move_onset_time=onset,
                          trial_type=10 + i, target_pos=[float(i), -float(i)], event_times=[onset] * (i + 1))
    # offsets from onset -> bin of the window (-0.2, 0.4): -0.15 -> 0, 0.05 -> 2, 0.25 -> 4, 0.35 -> 5; -0.6 is outside.
    offsets = {0: [-0.6, -0.15, 0.05, 0.05, 0.35], 1: [0.05, 0.25], 2: [-0.15]}
    silent = {(2, 0), (1, 2)}  # unit 102 does not fire in trial 0; unit 101 is lost (not observed) in trial 2
    units = Units(name="units", description="sorted units", resolution=RESOLUTION, electrode_table=nwbfile.electrodes)
    units.add_column(name="heldout", description="held-out neuron (NLB)")
    observed_until = {0: 10.0, 1: 4.05, 2: 10.0}  # unit 1 is lost before the last trial
    for u, electrode in enumerate([0, 2, 1]):
        times = np.sort([onsets[t] + o for t in range(3) for o in offsets[u] if (u, t) not in silent])
        units.add_unit(spike_times=times, obs_intervals=[[0.0, observed_until[u]]], heldout=u == 2,
                       electrodes=[electrode], id=100 + u)
    nwbfile.units = units
    with NWBHDF5IO(str(path), "w") as io:
        io.write(nwbfile)
    return path


def test_trials_in_no_split_are_dropped_with_their_rows_of_every_trial_column(tmp_path):
    path = write_nlb_file(tmp_path / "nlb.nwb", splits=("train", "none", "test"))
    with pytest.warns(UserWarning, match="event_times"):
        recording = read_nwb(path, bin_width=0.1, window=(-0.2, 0.4), align="move_onset_time")
    assert recording["trial"].values.tolist() == [0, 2]
    assert recording["trial_type"].values.tolist() == [10, 12]
    np.testing.assert_array_equal(recording["target_pos"].values, [[0.0, -0.0], [2.0, -2.0]])


def test_nlb_layout_reads_with_movement_alignment(tmp_path):
    path = write_nlb_file(tmp_path / "nlb.nwb")
    with pytest.warns(UserWarning, match=r"trials columns \['event_times'\]"):
        recording = read_nwb(path, bin_width=0.1, window=(-0.2, 0.4), align="move_onset_time")
    assert recording["counts"].dims == ("trial", "time", "neuron")
    np.testing.assert_allclose(recording["time"].values, [-0.15, -0.05, 0.05, 0.15, 0.25, 0.35])
    assert recording.attrs["align"] == "move_onset_time" and recording.attrs["bin_width"] == 0.1
    assert recording["neuron"].values.tolist() == [100, 101, 102]
    assert recording["heldout"].values.tolist() == [False, False, True]
    assert recording["split"].values.tolist() == ["train", "val", "test"]
    assert recording["trial_type"].values.tolist() == [10, 11, 12]
    assert recording["target_pos"].dims == ("trial", "target_pos_dim")
    assert recording["electrode"].values.tolist() == [0, 2, 1]
    assert recording["location"].values.tolist() == ["M1", "PMd", "M1"]
    expected = np.zeros((3, 6, 3), int)
    expected[:, 0, 0], expected[:, 2, 0], expected[:, 5, 0] = 1, 2, 1
    expected[:2, 2, 1], expected[:2, 4, 1] = 1, 1
    expected[1:, 0, 2] = 1
    np.testing.assert_array_equal(recording["counts"].values, expected)
    observed = np.ones((3, 6, 3), bool)
    observed[2, :, 1] = False
    np.testing.assert_array_equal(recording["observed"].values, observed)

    with pytest.warns(UserWarning, match="event_times"):
        chosen = read_nwb(path, bin_width=0.1, window=(-0.2, 0.4), align="move_onset_time", heldout=[100])
    assert chosen["heldout"].values.tolist() == [True, False, False]

    # What was read from an NLB file saves and reads back unchanged, spike times included.
    copy = write_nwb(recording, tmp_path / "copy.nwb", spike_times=read_spike_times(path),
                     obs_intervals=[[[0.0, 10.0]], [[0.0, 4.05]], [[0.0, 10.0]]], resolution=RESOLUTION)
    back = read_binned_nwb(copy)
    xr.testing.assert_identical(back, recording)
    assert {n: v.dtype for n, v in back.variables.items()} == {n: v.dtype for n, v in recording.variables.items()}
    assert back.attrs["nwb_session_start_time"] == START.isoformat()


def test_missing_alignment_column_lists_the_trial_columns(tmp_path):
    path = write_nlb_file(tmp_path / "nlb.nwb")
    with pytest.warns(UserWarning), pytest.raises(DataError, match=(
            r"nlb\.nwb: alignment column 'go_cue_time' not found in the trials table; available trial columns: "
            r"\['start_time', 'stop_time', 'split', 'move_onset_time', 'trial_type', 'target_pos', 'event_times'\]")):
        read_nwb(path, bin_width=0.1, window=(-0.2, 0.4), align="go_cue_time")


def test_read_nwb_reads_a_binned_file_at_its_own_bins(lorenz, tmp_path):
    """write_nwb's binned file (no spike times) is read by read_nwb too: the window selects its
    bins, and a bin width or window the file's bins cannot give is refused, naming both."""
    binned = write_nwb(lorenz, tmp_path / "binned.nwb", session_start_time=START)
    whole = read_nwb(binned, bin_width=0.01)
    xr.testing.assert_equal(whole.counts, lorenz.counts)
    np.testing.assert_array_equal(whole.split.values, lorenz.split.values)
    part = read_nwb(binned, bin_width=0.01, window=(0.05, 0.15))
    xr.testing.assert_equal(part.counts, lorenz.counts.isel(time=slice(5, 15)))
    with pytest.raises(DataError, match=r"binned\.nwb: bin_width 0\.02 s differs from the binned recording's 0\.01 s"):
        read_nwb(binned, bin_width=0.02)
    with pytest.raises(DataError, match=r"binned\.nwb: window \[0, 5000\] ms is not made of the binned recording's bins"):
        read_nwb(binned, bin_width=0.01, window=(0, 5.0))
    with pytest.raises(DataError, match=r"no processing module 'binned_recording'.*read_nwb"):
        read_binned_nwb(write_nlb_file(tmp_path / "nlb.nwb"))


# ----------------------------------------------------------------------------- NWB Inspector


def test_written_files_pass_nwb_inspector(lorenz, session, tmp_path):
    spikes, trials, obs = session
    recording = to_recording(bin_spike_times(spikes, trials["start_time"], trials["stop_time"], bin_width=0.1),
                             split=trials["split"])
    paths = [
        write_nwb(lorenz, tmp_path / "lorenz.nwb", subject=SUBJECT),
        write_nwb(spikes, tmp_path / "spikes.nwb", trials=trials, obs_intervals=obs, resolution=RESOLUTION,
                  subject=SUBJECT),
        write_nwb(recording, tmp_path / "both.nwb", spike_times=spikes, resolution=RESOLUTION, subject=SUBJECT),
    ]
    for path in paths:
        assert serious_messages(path) == [], path


def test_without_a_subject_the_only_inspector_complaint_is_the_missing_subject(lorenz, tmp_path):
    path = write_nwb(lorenz, tmp_path / "lorenz.nwb")
    assert [m.check_function_name for m in serious_messages(path)] == ["check_subject_exists"]


# ----------------------------------------------------------------------------- writing: errors, atomicity


def test_failed_write_leaves_the_old_file_and_no_temporary(lorenz, tmp_path, monkeypatch):
    path = write_nwb(lorenz, tmp_path / "rec.nwb", session_start_time=START)
    before = path.read_bytes()

    def fail(self, *args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(NWBHDF5IO, "write", fail)
    with pytest.raises(OSError, match="disk full"):
        write_nwb(lorenz.isel(trial=slice(0, 2)), path, session_start_time=START)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["rec.nwb"]


@pytest.mark.parametrize("kwargs, message", [
    pytest.param({"spike_times": None, "session_start_time": datetime(2024, 5, 1)}, r"timezone-aware", id="naive-start"),
    pytest.param({"spike_times": [np.array([0.1])] * 5, "drop": ["start_time", "stop_time"]},
                 r"spike_times need the recording's absolute trial times", id="spikes-without-times"),
    pytest.param({"spike_times": [np.array([0.1])] * 5}, r"spike_times do not give the recording's counts: neuron 0",
                 id="spikes-not-the-counts"),
], )
def test_write_errors_are_named(lorenz, tmp_path, kwargs, message):
    kwargs = dict(kwargs)
    data = lorenz.drop_vars(kwargs.pop("drop", []))
    with pytest.raises(DataError, match=message):
        write_nwb(data, tmp_path / "x.nwb", resolution=RESOLUTION, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_write_rejects_bad_variables_and_missing_resolution(lorenz, session, tmp_path):
    spikes, trials, _ = session
    bad = lorenz.assign(weights=(("neuron", "latent"), np.zeros((5, 3))))
    with pytest.raises(DataError, match=r"variable 'weights' has dims \('neuron', 'latent'\)"):
        write_nwb(bad, tmp_path / "x.nwb")
    with pytest.raises(DataError, match=r"resolution= \(s\)"):
        write_nwb(spikes, tmp_path / "x.nwb", trials=trials)
    with pytest.raises(DataError, match=r"unit 2: spike times are not sorted"):
        write_nwb([spikes[0], spikes[1], spikes[2][::-1]], tmp_path / "x.nwb", resolution=RESOLUTION)
    with pytest.raises(DataError, match=r"unit 1: spike \d+ at 3\.5 s lies outside the unit's obs_intervals"):
        write_nwb([spikes[0], np.r_[spikes[1], 3.5][np.argsort(np.r_[spikes[1], 3.5])]], tmp_path / "x.nwb",
                  obs_intervals=[[[0, 8]], [[0, 3], [4, 8]]], resolution=RESOLUTION)
    with pytest.raises(DataError, match=r"trials is missing the column\(s\) \['stop_time'\]"):
        write_nwb(spikes, tmp_path / "x.nwb", trials={"start_time": trials["start_time"]}, resolution=RESOLUTION)
    assert list(tmp_path.iterdir()) == []


def test_recordings_read_from_nwb_follow_the_result_conventions(lorenz, tmp_path):
    """Every coordinate read from a Units or trials column has units and long_name, times in s."""
    from pcsim.results import convention_problems

    with pytest.warns(UserWarning):   # the file's ragged event_times column is skipped
        nlb = read_nwb(write_nlb_file(tmp_path / "nlb.nwb"), bin_width=0.1, window=(-0.2, 0.4), align="move_onset_time")
    assert {"electrode", "location", "target_pos", "move_onset_time"} <= set(nlb.coords)
    assert nlb.move_onset_time.attrs["units"] == "s"
    assert convention_problems(nlb) == []
    assert convention_problems(read_nwb(write_nwb(lorenz, tmp_path / "binned.nwb", session_start_time=START),
                                        bin_width=0.01)) == []
