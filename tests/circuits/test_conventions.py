"""Every circuit experiment's result Dataset follows the result conventions of
:func:`pcsim.results.convention_problems` (units and long_name on every variable and
coordinate, distinct long_names, every time in seconds), on the smallest protocol that runs
(spiking_oddball's and endstopping's are checked in test_spiking and test_endstopping, beside
the runs those already make);
and the times in seconds are the protocol's milliseconds, not a relabelled ms axis."""

from pathlib import Path

import numpy as np
import pytest

from circuits.coordinates import COORDINATES, label
from pcsim.config import load_config
from pcsim.registry import RunContext
from pcsim.results import convention_problems

ROOT = Path(__file__).resolve().parents[2]

TINY = {
    "oddball_mmn": ["circuit.n_channels=12", "circuit.dt=1.0", "oddball.standard=3.0", "oddball.deviances=[2.0, 5.0]",
                    "oddball.p_deviants=[0.3]", "oddball.n_tones=16", "oddball.soa_ms=300.0", "oddball.skip_tones=4",
                    "oddball.window=[50.0, 200.0]", "oddball.seeds=[0]", "oddball.lead_standards=3"],
    "repetition_suppression": ["circuit.n_channels=12", "circuit.dt=1.0", "repetition.frequencies=[3.0, 8.0]",
                               "repetition.n_repeats=3", "repetition.n_trains=3", "repetition.soa_ms=300.0",
                               "repetition.window=[50.0, 200.0]", "repetition.seeds=[0]"],
    "laminar_spectra": ["circuit.n_channels=6", "drive.trials=2", "drive.trial_ms=700.0", "drive.transient_ms=100.0",
                        "drive.segment_ms=200.0", "drive.frequency=3.0"],
}


def run_tiny(name, tmp_path):
    import importlib

    cfg = load_config(ROOT / "configs" / f"{name}.toml", overrides=TINY[name])
    return cfg, importlib.import_module(cfg.experiment).run(cfg, RunContext(tmp_path, "cpu", progress=False))


@pytest.mark.parametrize("name", sorted(TINY))
def test_result_datasets_follow_the_conventions(name, tmp_path):
    """In memory and after a round trip through results.nc, which the figures redraw from."""
    import importlib

    from matplotlib.figure import Figure

    from pcsim.results import open_results, write_results

    cfg, res = run_tiny(name, tmp_path)
    ds = res.dataset
    assert convention_problems(ds) == []
    times = [k for k in list(ds.coords) + list(ds.data_vars) if k == "time" or str(k).endswith("_time")]
    assert times and all(ds[k].attrs["units"] == "s" for k in times)
    write_results(res, {}, tmp_path / "out", cfg)
    back = open_results(tmp_path / "out")
    assert convention_problems(back) == []
    figs = importlib.import_module(cfg.experiment).plot(back)
    assert figs and all(isinstance(f, Figure) for f in figs.values())


def test_times_are_the_protocols_milliseconds_in_seconds(tmp_path):
    """An epoch runs from -50 ms to before the post-window (ms in the config): the epoch
    ``time`` spans -0.05 s .. (post - record step) / 1000 s, and each trial's ``onset_time``
    is its slot's onset (lead_ms + slot * soa_ms) in seconds."""
    cfg, res = run_tiny("oddball_mmn", tmp_path)
    ds, o = res.dataset, cfg.oddball
    post = min(o.soa_ms - 50.0, o.window[1] + 150.0)
    np.testing.assert_allclose(ds.time.values[[0, -1]], [-0.05, (post - o.record_every_ms) / 1000.0], atol=1e-9)
    np.testing.assert_allclose(ds.onset_time.values, (o.lead_ms + ds.slot.values * o.soa_ms) / 1000.0, atol=1e-9)
    assert ds.tone.attrs == {"units": "", "long_name": "tone channel"} and "frequency" not in ds.coords


def test_label_fills_only_what_is_missing():
    import xarray as xr

    ds = xr.Dataset(coords={"area": ("area", ["input", "area1"]), "p_deviant": ("p_deviant", [0.1], {"units": "x"}),
                            "elsewhere": ("elsewhere", [1])})
    out = label(ds)
    assert out.area.attrs == {"units": COORDINATES["area"][0], "long_name": COORDINATES["area"][1]}
    assert out.p_deviant.attrs == {"units": "x", "long_name": COORDINATES["p_deviant"][1]}
    assert out.elsewhere.attrs == {} and ds.area.attrs == {}  # unknown names untouched, the input unchanged
