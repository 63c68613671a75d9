"""Bad recordings and NWB files, as families: each class of fault raises its pcsim error, names the
file or argument at fault, and leaves nothing behind.

Families (hypothesis draws the members): random bytes, truncated copies of a valid NWB file,
plain HDF5 files without the NWB layout, spike times stored in ms instead of s, and windows
that run past the trials' ends. The same faults through ``pcsim fit`` end in one
``pcsim: error:`` line, exit status 2, and no result file.
"""

import os
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.commands import fit
from analysis.nwb import read_binned_nwb, read_nwb, read_spike_times, write_nwb
from analysis.spikes import bin_spike_times
from pcsim.cli import main as cli
from pcsim.errors import DataError, FileFormatError, PCSimError

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
START = datetime(2024, 5, 1, 9, 30, tzinfo=timezone.utc)
READERS = {
    "read_nwb": lambda path: read_nwb(path, bin_width=0.05, window=(0.0, 0.5)),
    "read_binned_nwb": read_binned_nwb,
    "read_spike_times": read_spike_times,
}
FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _session(rng: np.random.Generator, n_units: int = 3, n_trials: int = 8, trial_s: float = 1.0,
             first_s: float = 0.25, gap_s: float = 0.25, rate_hz: float = 30.0, spikes_from: float = 0.0):
    """Poisson spike times (s) of ``n_units`` from ``spikes_from`` on, over ``n_trials`` trials of
    ``trial_s`` separated by ``gap_s``, the first one starting at ``first_s``."""
    starts = first_s + np.arange(n_trials) * (trial_s + gap_s)
    end = starts[-1] + trial_s + gap_s
    spikes = [np.sort(rng.uniform(spikes_from, end, rng.poisson(rate_hz * (end - spikes_from))))
              for _ in range(n_units)]
    return spikes, {"start_time": starts, "stop_time": starts + trial_s}


@pytest.fixture(scope="module")
def valid_nwb(tmp_path_factory):
    """A valid NWB file with spike times and trials (8 trials of 1 s), and its bytes."""
    spikes, trials = _session(np.random.default_rng(0))
    path = write_nwb(spikes, tmp_path_factory.mktemp("valid") / "valid.nwb", trials=trials, resolution=1e-5,
                     session_start_time=START)
    return path, path.read_bytes()


def _expect(reader: str, path: Path, error: type[PCSimError]) -> str:
    """Read ``path`` with ``reader``; assert it raises ``error`` naming the file and writes nothing."""
    before = sorted(os.listdir(path.parent))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(error) as info:
            READERS[reader](path)
    assert str(path) in str(info.value)
    assert sorted(os.listdir(path.parent)) == before
    return str(info.value)


# ----------------------------------------------------------------------------- files that are not NWB


@FAST
@given(data=st.binary(max_size=4096), reader=st.sampled_from(sorted(READERS)))
def test_random_bytes_are_a_file_format_error_naming_the_file(data, reader):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "random.nwb"
        path.write_bytes(data)
        message = _expect(reader, path, FileFormatError)
        assert "not a readable NWB (HDF5) file" in message


@FAST
@given(fraction=st.floats(0.0, 1.0, exclude_max=True), reader=st.sampled_from(sorted(READERS)))
def test_truncated_copies_of_a_valid_file_are_a_file_format_error(valid_nwb, fraction, reader):
    _, full = valid_nwb
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "truncated.nwb"
        path.write_bytes(full[:int(fraction * len(full))])
        message = _expect(reader, path, FileFormatError)
        # any cut of a valid file loses the HDF5 superblock or its end-of-file address
        assert "not a readable NWB (HDF5) file" in message


@FAST
@given(names=st.lists(st.text("abcdefghij_", min_size=1, max_size=8), min_size=0, max_size=3, unique=True),
       reader=st.sampled_from(sorted(READERS)))
def test_plain_hdf5_is_a_file_format_error_that_says_nwb_is_missing(names, reader):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "plain.h5"
        with h5py.File(path, "w") as f:
            for i, name in enumerate(names):
                f[name] = np.arange(i + 1)
        message = _expect(reader, path, FileFormatError)
        assert "NWB" in message


def test_a_missing_file_is_a_data_error_naming_it(tmp_path):
    for reader in READERS:
        with pytest.raises(DataError, match="absent.nwb: no such NWB file"):
            READERS[reader](tmp_path / "absent.nwb")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- spike times in the wrong unit


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), n_units=st.integers(2, 4), n_trials=st.integers(2, 10),
       trial_s=st.sampled_from([0.5, 1.0, 2.0]), spikes_from=st.sampled_from([0.0, 0.25]))
def test_spike_times_in_ms_are_refused_with_the_counts_and_the_unit_hint(seed, n_units, n_trials, trial_s, spikes_from):
    """Times in ms put ~1/1000 of the spikes (or none) inside the trials: none is refused at
    binning, a few warned about, each time saying how many fell inside and suggesting the unit
    mistake; the same times in s bin without either."""
    # >= 350 spikes, of which in ms a handful at most (~1/1000) land in the trials
    spikes, trials = _session(np.random.default_rng(seed), n_units, n_trials, trial_s, rate_hz=100.0,
                              spikes_from=spikes_from)
    total = sum(s.size for s in spikes)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = bin_spike_times(spikes, trials["start_time"], trials["stop_time"], bin_width=0.05)
    assert int(counts.sum()) > 0.5 * total                  # in seconds: most spikes are in the trials
    ms = [s * 1000.0 for s in spikes]
    message = rf"only \d+ of the {total} spikes fall in the trials' windows.*milliseconds"
    if not any(np.any((s[:, None] >= trials["start_time"]) & (s[:, None] < trials["stop_time"])) for s in ms):
        with pytest.raises(DataError, match=message):
            bin_spike_times(ms, trials["start_time"], trials["stop_time"], bin_width=0.05)
    else:
        with pytest.warns(UserWarning, match=message):
            bin_spike_times(ms, trials["start_time"], trials["stop_time"], bin_width=0.05)


@settings(max_examples=5, deadline=None)
@given(seed=st.integers(0, 2**16))
def test_an_nwb_file_with_ms_spike_times_is_refused_naming_it(seed):
    spikes, trials = _session(np.random.default_rng(seed), spikes_from=0.25)   # no spike before 250 ms: none in a trial
    with tempfile.TemporaryDirectory() as tmp:
        path = write_nwb([s * 1000.0 for s in spikes], Path(tmp) / "ms.nwb", trials=trials, resolution=1e-5,
                         session_start_time=START)
        with pytest.raises(DataError, match=r"ms\.nwb: only 0 of the \d+ spikes .*stored in milliseconds"):
            read_nwb(path, bin_width=0.05)
        assert os.listdir(tmp) == ["ms.nwb"]


def test_a_few_short_trials_in_a_long_session_are_not_mistaken_for_ms():
    """Three 1 s trials in a 2-hour session: 0.04 % of the spikes are in them, yet the times are
    right (the spikes do not run on ~1000x past the trials): counted, no error, no warning."""
    rng = np.random.default_rng(0)
    spikes = [np.sort(rng.uniform(0.0, 7200.0, 20000))]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        counts = bin_spike_times(spikes, [100.0, 200.0, 300.0], [101.0, 201.0, 301.0], bin_width=0.1)
    assert 0 < int(counts.sum()) < 0.001 * 20000


# ----------------------------------------------------------------------------- windows past the trials


@settings(max_examples=30, deadline=None)
@given(trial_bins=st.integers(2, 20), extra_bins=st.integers(1, 30), t0_bins=st.integers(-5, 1),
       short=st.lists(st.integers(0, 5), min_size=1, max_size=3, unique=True))
def test_a_window_past_a_trials_end_is_refused_naming_the_trials_and_the_window(trial_bins, extra_bins, t0_bins, short):
    """Six trials of ``trial_bins`` bins (the trials in ``short`` one bin shorter); a window that
    ends ``extra_bins`` past the long trials' end is refused naming those trials; one that ends
    at the shortest trial's end is fine, and counts only spikes inside the trials."""
    bw = 0.1
    starts = np.arange(6) * 10.0 + 1.0
    lengths = np.where(np.isin(np.arange(6), short), trial_bins - 1, trial_bins) * bw
    stops = starts + lengths
    spikes = [np.sort(np.concatenate([np.linspace(a, b, 7, endpoint=False) for a, b in zip(starts, stops)]
                                     + [stops + 0.5]))]                      # spikes in every gap too
    t0 = t0_bins * bw
    end = (trial_bins + extra_bins) * bw
    with pytest.raises(DataError) as info:
        bin_spike_times(spikes, starts, stops, bin_width=bw, window=(t0, end))
    message = str(info.value)
    assert f"window [{t0 * 1e3:.6g}, {end * 1e3:.6g}] ms runs past the end of trials 0, 1, 2" in message
    assert f"the shortest trial lasts {(trial_bins - 1 if short else trial_bins) * bw * 1e3:.6g} ms" in message
    fits = bin_spike_times(spikes, starts, stops, bin_width=bw, window=(0.0, (trial_bins - 1) * bw))
    assert int(fits.sum()) <= 6 * 7                                            # no gap spike counted


def test_a_window_past_the_trials_in_an_nwb_file_names_the_file(valid_nwb):
    path, _ = valid_nwb
    with pytest.raises(DataError, match=r"valid\.nwb: window \[0, 1500\] ms runs past the end of trials 0, 1, 2, 3, 4, "
                                        r"\.\.\. \(8 of 8 trials; the shortest trial lasts 1000 ms"):
        read_nwb(path, bin_width=0.05, window=(0.0, 1.5))


# ----------------------------------------------------------------------------- the same faults through pcsim fit


def _bad_files(directory: Path, valid: bytes) -> dict[str, Path]:
    files = {"random": directory / "random.nwb", "truncated": directory / "truncated.nwb",
             "plain": directory / "plain.h5"}
    files["random"].write_bytes(np.random.default_rng(0).bytes(2000))
    files["truncated"].write_bytes(valid[:len(valid) // 2])
    with h5py.File(files["plain"], "w") as f:
        f["x"] = np.arange(3)
    return files


@pytest.mark.parametrize("kind", ["random", "truncated", "plain", "window", "ms"])
def test_pcsim_fit_reports_bad_recordings_in_one_line_and_writes_nothing(kind, valid_nwb, tmp_path, capsys):
    path, valid = valid_nwb
    overrides = ["--set", 'models.fit=["smoothing"]']
    if kind == "window":
        overrides += ["--set", "recording.window_ms=[0.0, 1500.0]"]
        expected = "runs past the end of trials"
    elif kind == "ms":
        spikes, trials = _session(np.random.default_rng(1), spikes_from=0.25)
        path = write_nwb([s * 1000.0 for s in spikes], tmp_path / "ms.nwb", trials=trials, resolution=1e-5,
                         session_start_time=START)
        expected = "milliseconds"
    else:
        path = _bad_files(tmp_path, valid)[kind]
        expected = "NWB"
    out = tmp_path / "out"
    assert cli(["fit", str(path), "--config", str(CONFIGS / "fit_recording.toml"), "--out", str(out),
                "--no-progress", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("pcsim: error: ") and str(path) in err[0] and expected in err[0]
    assert not out.exists() or list(out.iterdir()) == []
    # the Python API raises the same error
    with pytest.raises(PCSimError, match=expected):
        fit(path, CONFIGS / "fit_recording.toml", out, overrides=overrides[1::2], progress=False)
    assert not out.exists() or list(out.iterdir()) == []
