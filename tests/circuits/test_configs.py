"""Circuit experiment configs: the [circuit] table is CircuitParams itself (its defaults, ranges
and units), shipped configs load into the circuits they always built, and cross-field and
cross-section mistakes surface as a ConfigError naming the file and the key."""

from dataclasses import fields
from pathlib import Path

import pytest

from circuits.laminar import CircuitParams
from circuits.spiking import SpikingParams
from pcsim.config import load_config
from pcsim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ["oddball_mmn", "repetition_suppression", "endstopping", "laminar_spectra", "spiking_oddball"]


def test_circuit_tables_are_the_engines_dataclasses():
    """Every CircuitParams (SpikingParams) field is a key of the section with the engine's
    default, and the section's params() equal the engine object built from the same values."""
    for name in CONFIGS:
        cfg = load_config(ROOT / "configs" / f"{name}.toml")
        assert isinstance(cfg.circuit, CircuitParams)
        p = cfg.circuit.params()
        assert type(p) is CircuitParams
        assert all(getattr(p, f.name) == getattr(cfg.circuit, f.name) for f in fields(CircuitParams))
        if name == "spiking_oddball":
            assert isinstance(cfg.spiking, SpikingParams) and type(cfg.spiking.params()) is SpikingParams
    assert {f.metadata.get("units") for f in fields(CircuitParams) if f.name.startswith("tau")} == {"ms"}


def test_shipped_configs_keep_their_time_constants():
    """The tonotopic experiments ran with tau_deep = 10 ms and a learning prior (0.01/ms); the
    spiking one with tau_deep = 20 ms; end-stopping with the engine's defaults."""
    got = {n: load_config(ROOT / "configs" / f"{n}.toml").circuit for n in CONFIGS}
    assert (got["oddball_mmn"].tau_deep, got["oddball_mmn"].prior_rate) == (10.0, 0.01)
    assert (got["repetition_suppression"].tau_deep, got["repetition_suppression"].prior_rate) == (10.0, 0.01)
    assert (got["laminar_spectra"].tau_deep, got["laminar_spectra"].prior_rate) == (10.0, 0.0)
    assert got["spiking_oddball"].tau_deep == 20.0 and got["endstopping"].params() == CircuitParams()


@pytest.mark.parametrize("name, override, key", [
    ("oddball_mmn", "oddball.measure_area=area9", "oddball.measure_area"),
    ("oddball_mmn", "oddball.deviances=[30.0]", "oddball.deviances"),
    ("oddball_mmn", "oddball.record_every_ms=0.3", "oddball.record_every_ms"),
    ("repetition_suppression", "repetition.measure_area=input", "repetition.measure_area"),
    ("repetition_suppression", "repetition.frequencies=[4.0, 40.0]", "repetition.frequencies"),
    ("laminar_spectra", "drive.measure_area=area7", "drive.measure_area"),
    ("spiking_oddball", "analysis.record_every_ms=0.7", "analysis.record_every_ms"),
    ("spiking_oddball", "spiking.lag_ms=3.0", "spiking.lag_ms"),
    ("oddball_mmn", "circuit.tau_deep=-1.0", "circuit.tau_deep"),
    ("endstopping", "circuit.dt=3.0", "circuit"),
])
def test_cross_field_mistakes_are_config_errors(name, override, key):
    path = ROOT / "configs" / f"{name}.toml"
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides=[override])
    msg = str(info.value)
    assert msg.startswith(str(path)) and key in msg, msg


def test_protocol_tables_are_the_paradigms():
    """[oddball] is an Oddball (every paradigm field a key, its defaults), its tones play on
    the circuit's map, and the map width is not a second key of the protocol table."""
    from circuits.experiments import oddball_mmn
    from circuits.experiments.sections import engine_object
    from circuits.paradigms import Oddball

    path = ROOT / "configs" / "oddball_mmn.toml"
    cfg = load_config(path, overrides=["oddball.seeds=[3]"])
    assert isinstance(cfg.oddball, Oddball)
    odd = engine_object(cfg.oddball, Oddball, n_channels=cfg.circuit.n_channels)
    assert type(odd) is Oddball and odd.n_channels == 24 and odd.seeds == (3,)
    want = Oddball(n_channels=24, standard=8.0, deviances=(2.0, 4.0, 8.0), p_deviants=(0.05, 0.1, 0.25), n_tones=150,
                   duration_ms=100.0, soa_ms=500.0, seeds=(3,)).build()
    got = oddball_mmn.build_stimulus(cfg.circuit, cfg.oddball)
    assert (got.schedule[: want.blocks] == want.schedule).all() and got.patterns.shape[1] == 24
    with pytest.raises(ConfigError, match="unknown key 'oddball.n_channels'"):
        load_config(path, overrides=["oddball.n_channels=30"])
