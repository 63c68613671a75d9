"""The pcsim command line, end to end, on a throwaway experiment module."""

import json
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from pcsim.cli import main

CONFIG = """\
experiment = "{module}"
description = "tiny decaying loss"
seed = 1

[training]
lr = 0.5
epochs = 4
"""


@pytest.fixture
def config_path(tiny_experiment, write_config):
    return write_config(CONFIG.format(module=tiny_experiment))


def test_run_writes_results_and_prints_summary(config_path, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["run", str(config_path), "--out", str(out), "--set", "training.epochs=6",
                 "--no-progress"])
    printed = capsys.readouterr()
    assert code == 0, printed.err
    assert sorted(p.name for p in out.iterdir()) == [
        "config.toml", "loss.png", "pcsim_run.json", "results.nc", "summary.json"]
    manifest = json.loads((out / "pcsim_run.json").read_text())
    assert manifest["state"] == "complete"
    assert sorted(manifest["files"]) == ["config.toml", "loss.png", "results.nc", "summary.json"]

    with xr.open_dataset(out / "results.nc") as results:
        assert results.sizes["epoch"] == 6  # the override reached the run
        assert 'epochs = 6' in results.attrs["config"]
        np.testing.assert_allclose(results["loss"].values, 0.5 * np.exp(-np.arange(6)))
    summary = json.loads((out / "summary.json").read_text())
    assert summary["device"] == "cpu"
    assert summary["network"] == {"sizes": [4, 3]}

    lines = printed.out.splitlines()
    final = f"{0.5 * np.exp(-5):.4g}"
    assert any(line.split() == ["final_loss", final] for line in lines)
    assert any(line.split() == ["network.sizes", "[4,", "3]"] for line in lines)
    assert any("losses" in line and "... (6 items)" in line for line in lines)
    assert str(out / "results.nc") in printed.out


def test_run_default_out_dir_is_runs_config_stem(config_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["run", str(config_path), "--no-progress"]) == 0
    assert (tmp_path / "runs" / "tiny" / "results.nc").is_file()


def test_bad_config_exits_2_naming_file_and_key(tiny_experiment, write_config, tmp_path, capsys):
    path = write_config(CONFIG.format(module=tiny_experiment) + "lr_decay = 0.1\n", "bad.toml")
    code = main(["run", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(f"pcsim: error: {path}: unknown key 'training.lr_decay'")
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_bad_override_exits_2(config_path, tmp_path, capsys):
    code = main(["run", str(config_path), "--out", str(tmp_path / "o"), "--set",
                 "training.lr=0"])
    err = capsys.readouterr().err
    assert code == 2
    assert "override 'training.lr=0'" in err and "key 'training.lr' must be > 0" in err


def test_usage_error_exits_2(capsys):
    assert main(["run"]) == 2
    assert "CONFIG.toml" in capsys.readouterr().err
    assert main(["list", "--bogus"]) == 2


def test_replot_redraws_from_results(config_path, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["run", str(config_path), "--out", str(out), "--no-progress"]) == 0
    (out / "loss.png").unlink()
    assert main(["replot", str(out)]) == 0
    assert (out / "loss.png").read_bytes().startswith(b"\x89PNG")
    assert main(["replot", str(tmp_path / "nowhere")]) == 2
    assert f"{tmp_path / 'nowhere'}: no such run directory" in capsys.readouterr().err
    assert not (tmp_path / "nowhere").exists()


def test_list_shows_configs(tiny_experiment, tmp_path, capsys):
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "a.toml").write_text(f'experiment = "{tiny_experiment}"\n'
                                    'description = "first line\\nsecond"\n')
    (configs / "b.toml").write_text(f'experiment = "{tiny_experiment}"\n')
    assert main(["list", "--configs", str(configs)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["CONFIG", "EXPERIMENT", "DESCRIPTION"]
    assert lines[1].split() == ["a.toml", tiny_experiment, "first", "line"]
    # no description key: the module docstring's first line
    assert lines[2].split()[:3] == ["b.toml", tiny_experiment, "Tiny"]
    assert lines[2].endswith("an exponentially decaying loss curve.")


def test_bench_dispatches_lazily_by_name(monkeypatch, capsys):
    calls = []
    fake = types.ModuleType("pcsim.bench")
    fake.main = lambda name, as_json, args: calls.append((name, as_json, args)) or 0
    monkeypatch.setitem(sys.modules, "pcsim.bench", fake)
    assert main(["bench", "pc-vs-bp", "--json", "--steps", "10"]) == 0
    assert calls == [("pc-vs-bp", True, ["--steps", "10"])]

    assert main(["bench", "nonsense"]) == 2
    assert "unknown benchmark 'nonsense'" in capsys.readouterr().err

    monkeypatch.setitem(sys.modules, "pcsim.bench", None)  # import now fails: not installed
    assert main(["bench", "pc-vs-bp"]) == 2
    assert "pcsim.bench:main cannot be imported" in capsys.readouterr().err


def test_commands_and_benchmarks_come_from_the_packages_that_define_them():
    """Every registered benchmark and command resolves to a function in its own package, and
    pcsim's own CLI source names neither circuits nor analysis (the layering)."""
    from importlib.metadata import entry_points
    from pathlib import Path

    benches = {e.name: e for e in entry_points(group="pcsim.benchmarks")}
    assert {"pc-vs-bp", "latents", "gpfa", "circuits"} <= set(benches)
    for name, e in benches.items():
        assert callable(e.load()), name
    commands = {e.name: e for e in entry_points(group="pcsim.commands")}
    assert commands["fit"].value.startswith("analysis.")
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[2] / "pcsim" / "cli.py").read_text())
    strings = [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)]
    imports = [a.name for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names]
    imports += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    for text in strings + imports:
        assert not text.startswith(("analysis.", "circuits.")), text


def test_list_marks_configs_that_need_a_file(tiny_experiment, tmp_path, capsys):
    """The suffix is derived from the config: a path-like key naming a file that is not there."""
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "data.nwb").write_bytes(b"")
    (configs / "needs.toml").write_text(f'experiment = "{tiny_experiment}"\ndescription = "fit"\n'
                                        '[recording]\npath = "placeholder.nwb"\n[extra]\nmask_file = "m.npy"\n')
    (configs / "has.toml").write_text(f'experiment = "{tiny_experiment}"\ndescription = "fit"\n'
                                      '[recording]\npath = "data.nwb"\nname = "not-a-path.nwb"\n')
    assert main(["list", "--configs", str(configs)]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert rows["needs.toml"].endswith("fit (needs --set recording.path=FILE --set extra.mask_file=FILE)")
    assert rows["has.toml"].endswith("fit")  # the file exists beside the config


def test_shipped_fit_config_is_listed_as_needing_its_recording(capsys):
    from pcsim.registry import list_experiments

    rows = {name: text for name, _, text in list_experiments(Path(__file__).resolve().parents[2] / "configs")}
    fits = {"fit_recording.toml", "fit_session.toml"}  # the two configs that fit a user's file
    assert all(rows[name].endswith("(needs --set recording.path=FILE)") for name in fits)
    assert not any("needs" in text for name, text in rows.items() if name not in fits)


def test_bench_help_lists_every_installed_benchmark_with_its_docstring(capsys):
    from importlib.metadata import entry_points

    from pcsim.registry import benchmark_summary

    assert main(["bench", "--help"]) == 0
    out = capsys.readouterr().out
    listed = out.split("benchmarks:\n", 1)[1].splitlines()
    names = sorted(e.name for e in entry_points(group="pcsim.benchmarks"))
    assert [line.split()[0] for line in listed] == names
    for line, name in zip(listed, names):
        assert len(line.split(maxsplit=1)) == 2, line  # every benchmark has a description
    # a module serving several benchmarks: the docstring's bullet for each, not one shared line
    assert benchmark_summary("gpfa", "analysis.bench") != benchmark_summary("latents", "analysis.bench")


def test_benchmark_summary_from_docstring(write_module):
    module = write_module('"""Benchmarks of x.\n\n- ``fast``: the quick one. More.\n- ``slow``: the long one\n"""\n')
    from pcsim.registry import benchmark_summary

    assert benchmark_summary("fast", module) == "the quick one"
    assert benchmark_summary("slow", module) == "the long one"
    assert benchmark_summary("other", module) == "Benchmarks of x."
    assert benchmark_summary("x", "no_such_module_here").startswith("(module not found")


def test_show_prints_every_key_with_type_range_units_and_doc(write_module, write_config, capsys):
    module = write_module('''
        from dataclasses import dataclass, field
        from typing import Literal
        from pcsim.config import ExperimentConfig

        @dataclass(frozen=True, kw_only=True)
        class Timing:
            """Integration. ``dt``: Euler step (e.g. 0.1 ms). ``mode``: which solver; more."""
            dt: float = field(default=0.5, metadata={"gt": 0, "le": 2, "units": "ms"})
            mode: Literal["euler", "rk4"] = "euler"
            steps: tuple[int, ...] = field(default=(1, 2), metadata={"ge": 1, "doc": "steps to record"})
            clip: float | None = None

        @dataclass(frozen=True, kw_only=True)
        class Config(ExperimentConfig):
            timing: Timing = field(default_factory=Timing)

        def run(config, ctx): ...
        def plot(results): ...
    ''')
    path = write_config(f'experiment = "{module}"\n[timing]\ndt = 0.25\n')
    assert main(["show", str(path), "--set", "timing.mode=rk4"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert list(rows) == ["KEY", "experiment", "seed", "device", "description", "checkpoint.every",
                          "sweep.grid", "sweep.seeds", "sweep.out", "sweep.scheduler", "sweep.workers",
                          "sweep.retries", "sweep.batch", "timing.dt", "timing.mode", "timing.steps", "timing.clip"]
    assert rows["timing.dt"].split(None, 5) == ["timing.dt", "0.25", "number", ">", "0,", "<= 2 [ms]  Euler step (e.g. 0.1 ms)"]
    assert " \"rk4\" " in rows["timing.mode"] and "one of 'euler', 'rk4'" in rows["timing.mode"]
    assert rows["timing.mode"].endswith("which solver")
    assert "array of integers" in rows["timing.steps"] and rows["timing.steps"].split()[-4:] == [">=", "1", "steps", "to", "record"][-4:]
    assert "number (optional)" in rows["timing.clip"]
    assert main(["show", str(path), "--set", "timing.dt=3"]) == 2  # validated like run
    assert "key 'timing.dt' must be <= 2" in capsys.readouterr().err


def test_every_run_command_takes_overwrite_and_passes_it_on(tmp_path, monkeypatch, capsys):
    """`add_run_options` is shared: `pcsim fit` (registered by analysis) gets --overwrite too,
    and hands it to the one run_config."""
    import pcsim.cli

    calls = []
    monkeypatch.setattr(pcsim.cli, "run_config", lambda *a, **kw: calls.append(kw) or 0)
    recording = tmp_path / "rec.nwb"
    recording.write_bytes(b"")
    for argv in (["run", "x.toml"], ["fit", str(recording), "--config", "x.toml"]):
        assert main([argv[0], "--help"]) == 0
        assert "--overwrite" in capsys.readouterr().out
        calls.clear()
        assert main([*argv, "--overwrite"]) == 0 and calls[-1]["overwrite"] is True
        assert main(argv) == 0 and calls[-1]["overwrite"] is False


def test_a_reader_that_leaves_early_gets_no_traceback():
    # `pcsim show CONFIG | head -1`: the pipe closes under pcsim, which exits quietly
    import subprocess
    import sys

    config = Path(__file__).resolve().parents[2] / "configs" / "oddball_mmn.toml"
    proc = subprocess.Popen([sys.executable, "-m", "pcsim", "show", str(config)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)
    proc.stdout.close()  # before pcsim (still importing) writes a line
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0 and "Traceback" not in err, err
