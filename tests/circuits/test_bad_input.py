"""Bad input to the circuits is refused with a pcsim error naming what is wrong: config keys
(areas that do not exist, tones off the tonotopic map, non-finite time constants) at
validation, a diverging simulation as a SimulationDivergenceError naming the parameter, a
spike-count bin too long for the count dtype naming count_bin_ms; the CLI prints one line and
leaves no output behind."""

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuits.laminar import CircuitParams, LaminarCircuit
from circuits.paradigms import Oddball, Stimulus
from pcsim.cli import main as cli
from pcsim.config import load_config
from pcsim.errors import ConfigError, PCSimError, SimulationDivergenceError

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = settings(max_examples=25, deadline=None)
AREA_KEYS = [("oddball_mmn", "oddball.measure_area"), ("repetition_suppression", "repetition.measure_area"),
             ("laminar_spectra", "drive.measure_area")]
CIRCUIT_KEYS = ["dt", "tau_l4", "tau_error", "tau_deep", "tau_inh", "deep_leak", "prior_rate", "noise"]


def refused(name: str, override: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(ROOT / "configs" / f"{name}.toml", overrides=[override])
    return str(info.value)


@SETTINGS
@given(where=st.sampled_from(AREA_KEYS),
       area=st.text("abcdefghijklmnopqrstuvwxyzV0123456789", min_size=1, max_size=8).filter(
           lambda a: a not in ("area1", "area2")))
def test_areas_that_do_not_exist_name_the_key_and_the_choices(where, area):
    name, key = where
    msg = refused(name, f'{key}="{area}"')
    assert key in msg and repr(area) in msg and "'area1', 'area2'" in msg, msg


@SETTINGS
@given(standard=st.one_of(st.floats(-1e6, -0.01), st.floats(15.01, 1e6)))
def test_a_standard_off_the_map_names_the_key_value_and_range(standard):
    # 24 channels, deviances up to 8: a standard must lie in [0, 15]
    msg = refused("oddball_mmn", f"oddball.standard={standard!r}")
    assert "oddball.standard" in msg and (f"{standard:g}" in msg or "must be >= 0" in msg), msg
    if standard > 0:  # off the map, or leaving no room for the largest deviant (8 channels)
        assert "0 <= standard <= 15" in msg, msg


@SETTINGS
@given(deviance=st.floats(16.01, 1e4), spiking=st.booleans())
def test_a_deviant_off_the_map_names_the_deviances(deviance, spiking):
    name, table = ("spiking_oddball", "stimulus") if spiking else ("oddball_mmn", "oddball")
    msg = refused(name, f"{table}.deviances=[{deviance!r}]")
    assert f"{table}.deviances" in msg and f"{deviance:g}" in msg, msg


@SETTINGS
@given(key=st.sampled_from(CIRCUIT_KEYS), value=st.sampled_from(["nan", "inf", "-inf"]),
       name=st.sampled_from(["oddball_mmn", "laminar_spectra", "endstopping", "spiking_oddball"]))
def test_non_finite_circuit_parameters_name_the_key(key, value, name):
    msg = refused(name, f"circuit.{key}={value}")
    assert "circuit" in msg and key in msg, msg


def test_the_cli_prints_one_line_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli(["run", str(ROOT / "configs" / "oddball_mmn.toml"), "--out", str(out), "--no-progress",
                "--set", "oddball.measure_area=V1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("pcsim: error:") and "oddball.measure_area" in err[0]
    assert not out.exists()


def test_a_diverging_circuit_is_a_simulation_divergence_naming_the_precision():
    """Precisions of 100 make the error-representation loop explode within a few tones; the
    error says when, where and which parameter, and is still a FloatingPointError."""
    circ = LaminarCircuit((4, 4, 4), [np.eye(4)] * 2, precisions=[100.0] * 3, params=CircuitParams(dt=0.5))
    stim = Oddball(n_channels=4, standard=1.0, deviances=(2.0,), n_tones=4, soa_ms=300.0, duration_ms=100.0).build()
    with pytest.raises(SimulationDivergenceError) as info:
        circ.run(stim, record_every_ms=5.0)
    msg = str(info.value)
    assert isinstance(info.value, FloatingPointError) and "area 'area1'" in msg and "precisions[1]" in msg, msg
    # the same circuit at precision 1 runs to the end with finite rates
    ok = LaminarCircuit((4, 4, 4), [np.eye(4)] * 2, params=CircuitParams(dt=0.5)).run(stim, record_every_ms=5.0)
    assert np.isfinite(ok.rate.sel(area="area1")).all()


@pytest.mark.parametrize("bad, key", [
    (lambda c, s: c.run(s, record_every_ms=0.3), "record_every_ms"),
    (lambda c, s: c.run(s, record_every_ms=1.0, populations=("l99",)), "populations"),
    (lambda c, s: c.run("tones"), "stimulus"),
    (lambda c, s: LaminarCircuit((4, 4), [np.eye(4)], precisions=[1.0, -1.0]), "precisions"),
    (lambda c, s: LaminarCircuit((4, 4), [np.full((4, 4), np.nan)]), "weights[0]"),
    (lambda c, s: CircuitParams(tau_deep=float("inf")), "tau_deep"),
    (lambda c, s: Stimulus(np.ones((1, 4)), np.zeros((1, 2), int), np.array([0.0]), 10.0, 10.0), "onsets_ms"),
])
def test_bad_arguments_are_config_errors_naming_them(bad, key):
    circ = LaminarCircuit((4, 4), [np.eye(4)], params=CircuitParams(dt=0.5))
    stim = Oddball(n_channels=4, standard=1.0, deviances=(2.0,), n_tones=3, soa_ms=100.0, duration_ms=40.0).build()
    with pytest.raises(PCSimError) as info:
        bad(circ, stim)
    assert isinstance(info.value, (ConfigError, ValueError)) and key in str(info.value), str(info.value)


def test_a_spike_count_bin_too_long_names_count_bin_ms(monkeypatch):
    """A 700 ms bin of neurons firing ~200 Hz overflows an int8 count (the check is the same
    for the int16 counts a run saves): a ConfigError naming count_bin_ms and a bin that fits."""
    from circuits.spiking import SpikingCircuit, SpikingParams, decoding

    monkeypatch.setattr(decoding, "SPIKE_COUNT_DTYPE", np.int8)
    circ = LaminarCircuit((1,), [], params=CircuitParams(dt=0.5))
    stim = Stimulus(np.ones((1, 1)), np.zeros((1, 1), int), np.array([0.0]), 700.0, 700.0, cue=False)
    spk = SpikingCircuit(circ, SpikingParams(neurons_per_unit=2))
    with pytest.raises(ConfigError) as info:
        spk.run(stim, target="numpy", count_bin_ms=700.0, spike_neurons=0)
    msg = str(info.value)
    assert "count_bin_ms = 700.0 ms" in msg and "count_bin_ms <=" in msg, msg
    ds = spk.run(stim, target="numpy", count_bin_ms=350.0, spike_neurons=0)  # a bin that fits
    assert 0 < int(ds.spike_count.max()) <= 127


def test_a_diverging_run_is_one_cli_line_naming_the_precision_and_leaves_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli(["run", str(ROOT / "configs" / "oddball_mmn.toml"), "--out", str(out), "--no-progress",
                "--set", "circuit.precisions=[100.0, 100.0, 100.0]", "--set", "oddball.n_tones=30",
                "--set", "oddball.seeds=[0]", "--set", "oddball.p_deviants=[0.3]", "--set", "oddball.deviances=[4.0]",
                "--set", "oddball.skip_tones=5"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("pcsim: error: circuit diverged"), err
    # no file left behind (the shell creates the run directory before the run starts)
    assert "precisions[1]" in err[0] and (not out.exists() or not any(out.iterdir()))
