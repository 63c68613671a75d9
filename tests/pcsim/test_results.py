"""Results are written atomically and reopen with plain xarray, config included."""

import json
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from matplotlib.figure import Figure

from pcsim import __version__
from pcsim.config import ExperimentConfig, config_to_dict, from_dict
from pcsim.errors import ConfigError, DataError, FileFormatError, OutputError
from pcsim.registry import ExperimentResult, to_jsonable
from pcsim.results import load_summary, open_results, write_figures, write_results


@dataclass(frozen=True, kw_only=True)
class Section:
    sizes: tuple[int, ...] = (3, 2)
    lr: float = 0.5


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    section: Section = field(default_factory=Section)


CONFIG = Config(experiment="tests.fake_experiment", seed=4)


def make_result() -> ExperimentResult:
    dataset = xr.Dataset(
        {
            "energy": (("epoch", "layer"), np.arange(6.0).reshape(3, 2),
                       {"units": "a.u.", "long_name": "energy", "clamped": True, "note": None, "meta": {"k": 1}}),
            "spiked": ("epoch", np.array([True, False, True]), {"units": "", "long_name": "spiked"}),
        },
        coords={"epoch": ("epoch", [0, 1, 2], {"units": "1", "long_name": "epoch"}),
                "layer": ("layer", ["x1", "x2"], {"units": "", "long_name": "layer"})},
        attrs={"flags": [True, False], "window": (0.1, 0.2), "path": Path("a/b")},
    )
    summary = {"accuracy": np.float64(0.75), "per_layer": np.array([1.0, np.nan]),
               "nested": {"count": np.int64(3)}}
    return ExperimentResult(dataset=dataset, summary=summary)


def make_figure() -> Figure:
    figure = Figure(figsize=(2, 2))
    figure.add_subplot().plot([0, 1], [1, 0])
    return figure


class BrokenFigure:
    def savefig(self, path, **kwargs):
        Path(path).write_bytes(b"half a png")  # leaves a partial file, then fails
        raise RuntimeError("disk full")


def test_summary_is_converted_to_json_types():
    summary = make_result().summary
    assert summary == {"accuracy": 0.75, "per_layer": [1.0, None], "nested": {"count": 3}}
    assert type(summary["nested"]["count"]) is int
    with pytest.raises(DataError, match=r"summary\['bad'\] has type object"):
        to_jsonable({"bad": object()}, name="summary")


def test_write_results_files_and_reopen(tmp_path):
    out = tmp_path / "run"
    result = make_result()
    paths = write_results(result, {"energy": make_figure()}, out, CONFIG)

    assert set(paths) == {"results.nc", "summary.json", "config.toml", "energy.png"}
    # no temporary files left, no lock; the manifest lists exactly the files written
    assert sorted(p.name for p in out.iterdir()) == sorted([*paths, "pcsim_run.json"])
    manifest = json.loads((out / "pcsim_run.json").read_text())
    assert manifest["state"] == "complete" and sorted(manifest["files"]) == sorted(paths)
    assert paths["energy.png"].read_bytes().startswith(b"\x89PNG")

    with xr.open_dataset(paths["results.nc"]) as reopened:
        config_text = reopened.attrs["config"]
        assert reopened.attrs["experiment"] == "tests.fake_experiment"
        assert reopened.attrs["pcsim_version"] == __version__
        np.testing.assert_array_equal(reopened["energy"].values, result.dataset["energy"].values)
        assert reopened["energy"].attrs["units"] == "a.u."
        assert reopened["energy"].attrs["clamped"] == 1
        assert "note" not in reopened["energy"].attrs
        assert json.loads(reopened["energy"].attrs["meta"]) == {"k": 1}
        assert reopened["spiked"].dtype == bool
    assert from_dict(Config, tomllib.loads(config_text), source="attrs") == CONFIG
    assert tomllib.loads(paths["config.toml"].read_text()) == config_to_dict(CONFIG)

    # the caller's dataset keeps its original attrs
    assert result.dataset["energy"].attrs["clamped"] is True

    assert load_summary(out) == result.summary
    text = paths["summary.json"].read_text()
    assert text == json.dumps(result.summary, indent=2, sort_keys=True) + "\n"

    loaded = open_results(out)
    assert loaded.attrs["config"] == config_text
    assert list(loaded["layer"].values) == ["x1", "x2"]
    (out / "results.nc").unlink()  # the file is closed: removing it does not disturb `loaded`
    assert float(loaded["energy"].sum()) == 15.0


def test_failed_figure_leaves_no_directory_it_created(tmp_path):
    out = tmp_path / "new" / "run"
    figures = {"good": make_figure(), "bad": BrokenFigure()}
    with pytest.raises(RuntimeError, match="disk full"):
        write_results(make_result(), figures, out, CONFIG)
    assert list(tmp_path.iterdir()) == []  # neither run/ nor the parent new/ it made


def test_rewrite_is_refused_without_overwrite_and_a_failed_one_says_so(tmp_path):
    out = tmp_path / "run"
    write_results(make_result(), {"energy": make_figure()}, out, CONFIG)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    other = Config(experiment="tests.fake_experiment", seed=99)
    with pytest.raises(OutputError, match="already holds a complete run of tests.fake_experiment.*--overwrite"):
        write_results(make_result(), {"energy": make_figure()}, out, other)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    (out / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        write_results(make_result(), {"energy": BrokenFigure()}, out, other, overwrite=True)
    # the old run's files are gone (it was replaced), the user's file is kept, the status says why
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", "pcsim_run.json"]
    manifest = json.loads((out / "pcsim_run.json").read_text())
    assert manifest["state"] == "failed" and "disk full" in manifest["error"]


def test_write_figures_checks_names_and_updates_the_run(tmp_path):
    out = tmp_path / "run"
    write_results(make_result(), {"energy": make_figure()}, out, CONFIG)
    with pytest.raises(ConfigError, match="not a plain file stem"):
        write_figures({"../escape": make_figure()}, out)
    with pytest.raises(ConfigError, match=r"figures\['x'\] is a str, not a Figure"):
        write_figures({"x": "not a figure"}, out)
    paths = write_figures({"a": make_figure(), "b": make_figure()}, out)
    # energy.png was the run's own and is no longer drawn: removed; the manifest follows
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "b.png"]
    assert paths["a.png"] == out / "a.png"
    manifest = json.loads((out / "pcsim_run.json").read_text())
    assert manifest["state"] == "complete"
    assert sorted(manifest["files"]) == ["a.png", "b.png", "config.toml", "results.nc", "summary.json"]
    with pytest.raises(OutputError, match="no pcsim_run.json"):
        write_figures({"a": make_figure()}, tmp_path)  # not a run directory
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_open_results_on_missing_run(tmp_path):
    with pytest.raises(FileFormatError, match="results.nc"):
        open_results(tmp_path)


@pytest.mark.parametrize("text", ["", "{truncated", "[1, 2]"])
def test_load_summary_of_a_broken_file_names_it(tmp_path, text):
    with pytest.raises(FileFormatError, match="summary"):
        load_summary(tmp_path)  # missing
    (tmp_path / "summary.json").write_text(text)
    with pytest.raises(FileFormatError, match=str(tmp_path / "summary.json")):
        load_summary(tmp_path)


def test_a_dataset_that_breaks_the_conventions_is_refused_before_anything_is_written(tmp_path):
    from pcsim.results import convention_problems

    result = make_result()
    result.dataset["time"] = ("epoch", np.zeros(3), {"units": "ms", "long_name": "time"})
    assert convention_problems(result.dataset) == ["variable 'time' is in 'ms', not 's'"]
    with pytest.raises(ValueError, match="'time' is in 'ms'"):
        write_results(result, {}, tmp_path / "out", CONFIG)
    assert not (tmp_path / "out" / "results.nc").exists()
