"""``pcsim sweep`` on a real Dask LocalCluster (2 worker processes) and a throwaway experiment
whose every execution appends a line to a log file, so that executions can be counted."""

import json
import logging
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

distributed = pytest.importorskip("distributed")

from pcsim.cli import main, run_config  # noqa: E402
from pcsim.config import parse_grid  # noqa: E402
from pcsim.errors import ConfigError, OutputError  # noqa: E402
from pcsim.results import convention_problems, load_summary  # noqa: E402
from pcsim.sweep import HTTP_ANY_PORT, plan_sweep, register_sweep, run_sweep, sweep  # noqa: E402

MODULE = "pcsim_sweep_test_experiment"

EXPERIMENT = '''\
"""Sweep test experiment: a decaying loss; logs each execution, fails or kills itself on request."""

import os
import signal
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from pcsim.config import ExperimentConfig
from pcsim.errors import DataError
from pcsim.registry import ExperimentResult


@dataclass(frozen=True, kw_only=True)
class TrainingSection:
    lr: float = field(default=0.1, metadata={"gt": 0})
    epochs: int = field(default=3, metadata={"ge": 1})


@dataclass(frozen=True, kw_only=True)
class BehaviourSection:
    log: str = ""
    fail_above: float = 1e9
    kill: Literal["never", "once", "always"] = "never"


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    training: TrainingSection = field(default_factory=TrainingSection)
    behaviour: BehaviourSection = field(default_factory=BehaviourSection)


def run(config, ctx):
    b = config.behaviour
    with open(b.log, "a") as fh:
        fh.write(f"{config.training.lr} {config.training.epochs} {config.seed} {b.kill}\\n")
    if config.training.lr > b.fail_above:
        raise DataError(f"training.lr = {config.training.lr} is too large for this test")
    marker = f"{b.log}.{config.training.lr}.{config.seed}.killed"
    if b.kill == "always" or (b.kill == "once" and not os.path.exists(marker)):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    epoch = np.arange(config.training.epochs)
    rng = np.random.default_rng(config.seed)
    loss = config.training.lr * np.exp(-epoch) * (1 + 0.1 * rng.random())
    dataset = xr.Dataset({"loss": ("epoch", loss, {"units": "1", "long_name": "loss"})},
                         coords={"epoch": ("epoch", epoch, {"units": "1", "long_name": "epoch"})})
    return ExperimentResult(dataset, {"final_loss": loss[-1], "first": {"loss": loss[0]}, "n": 7,
                                      "seconds_per_epoch": 0.001 * config.training.epochs})


def plot(results):
    figure = Figure()
    figure.add_subplot().plot(results["loss"].values)
    return {"loss": figure}
'''


BATCHED_MODULE = "pcsim_sweep_test_batched"

#: the same experiment, able to run points differing in seed and training.lr as one batch; each
#: batch appends its size to the log's ``.batches`` file
BATCHED = f'''\
"""Sweep test experiment that batches seed and training.lr."""
from {MODULE} import Config, plot, run

BATCHED = ("seed", "training.lr")


def run_batched(configs, ctx):
    with open(configs[0].behaviour.log + ".batches", "a") as fh:
        fh.write(f"{{len(configs)}}\\n")
    return [run(config, ctx) for config in configs]
'''


@pytest.fixture(scope="module")
def experiment_dir(tmp_path_factory):
    """The test experiments as importable modules, on sys.path before any worker starts (a
    spawned worker process inherits the parent's sys.path)."""
    directory = tmp_path_factory.mktemp("sweep_modules")
    (directory / f"{MODULE}.py").write_text(EXPERIMENT, encoding="utf-8")
    (directory / f"{BATCHED_MODULE}.py").write_text(BATCHED, encoding="utf-8")
    sys.path.insert(0, str(directory))
    yield directory
    sys.path.remove(str(directory))
    sys.modules.pop(MODULE, None)
    sys.modules.pop(BATCHED_MODULE, None)


@pytest.fixture(scope="module")
def cluster(experiment_dir):
    """One LocalCluster of 2 worker processes for the module, set up as the sweep sets up its
    own: a point's worker may die twice and the point is retried (allowed-failures 2), the third
    death reports it."""
    import dask

    with dask.config.set({"distributed.scheduler.allowed-failures": 2, "distributed.scheduler.worker-saturation": 1.0}):
        with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                      dashboard_address=None, scheduler_kwargs=HTTP_ANY_PORT,
                                      silence_logs=logging.ERROR) as local:
            yield local


@pytest.fixture
def config(experiment_dir, tmp_path):
    path = tmp_path / "exp.toml"
    log = tmp_path / "executions.log"
    path.write_text(textwrap.dedent(f"""\
        experiment = "{MODULE}"
        seed = 0

        [training]
        lr = 0.1
        epochs = 3

        [behaviour]
        log = {json.dumps(str(log))}
        """), encoding="utf-8")
    return path


def executions(config_path: Path) -> list[str]:
    log = config_path.parent / "executions.log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.fixture
def with_sweep_command(monkeypatch):
    """`pcsim sweep` registered as the installed entry point will register it (until the
    editable install is refreshed, the pyproject entry point is not yet installed)."""
    import pcsim.cli

    original = pcsim.cli._entry_points

    class Entry:
        name = "sweep"

        @staticmethod
        def load():
            return register_sweep

    def entry_points(group):
        found = original(group)
        if group == "pcsim.commands" and not any(e.name == "sweep" for e in found):
            found = [*found, Entry()]
        return found

    monkeypatch.setattr(pcsim.cli, "_entry_points", entry_points)


def test_combined_result_equals_the_points_run_one_by_one(config, tmp_path):
    """Through the default path (a LocalCluster of 2 processes made by the sweep itself)."""
    out = tmp_path / "sweep"
    plan = plan_sweep(config, grid=["training.lr=0.1,0.3", "training.epochs=2,4"], seeds=2, out=out, workers=2)
    outcome = run_sweep(plan, progress=False)
    assert outcome.failures == [] and outcome.ran == 8 and len(executions(config)) == 8

    with xr.open_dataset(out / "sweep.nc") as ds:
        assert list(ds.sizes.items()) == [("training.lr", 2), ("training.epochs", 2), ("seed", 2)]
        assert convention_problems(ds) == []
        assert ds["seconds_per_epoch"].attrs["units"] == "s" and ds["final_loss"].attrs["units"] == "1"
        for i, lr in enumerate([0.1, 0.3]):
            for j, epochs in enumerate([2, 4]):
                for seed in (0, 1):
                    alone = tmp_path / f"alone_{i}_{j}_{seed}"
                    run_config(config, alone, progress=False,
                               overrides=[f"training.lr={lr}", f"training.epochs={epochs}", f"seed={seed}"])
                    summary = load_summary(alone)
                    point = ds.sel({"training.lr": lr, "training.epochs": epochs, "seed": seed})
                    assert float(point["final_loss"]) == summary["final_loss"]
                    assert float(point["first.loss"]) == summary["first"]["loss"]
                    assert str(point["state"].values) == "complete"
                    directory = out / str(point["directory"].values)
                    assert (directory / "config.toml").read_text() == (alone / "config.toml").read_text()
    # every headline number that varies has its figure; the constant `n` has none
    assert (out / "sweep_final_loss.png").is_file() and not (out / "sweep_n.png").exists()
    assert json.loads((out / "failures.json").read_text()) == []


def test_resume_runs_no_finished_point_twice(config, tmp_path, cluster):
    out = tmp_path / "sweep"
    grid = ["training.lr=0.1,0.2"]
    kwargs = dict(grid=grid, seeds=2, out=out, scheduler=cluster.scheduler_address)
    first = run_sweep(plan_sweep(config, **kwargs), progress=False)
    assert (first.ran, first.resumed, len(executions(config))) == (4, 0, 4)

    again = run_sweep(plan_sweep(config, **kwargs), progress=False)
    assert (again.ran, again.resumed, len(executions(config))) == (0, 4, 4)
    xr.testing.assert_identical(again.dataset.drop_vars("point_seconds"), first.dataset.drop_vars("point_seconds"))

    # a point whose run never finished (a "running" manifest whose process is gone) is run
    # again, never read as finished
    manifest_path = out / "training.lr=0.2_seed=1" / "pcsim_run.json"
    manifest = json.loads(manifest_path.read_text())
    manifest.update(state="running", pid=2**22 + 12345, ended=None)
    manifest_path.write_text(json.dumps(manifest))
    (manifest_path.parent / ".pcsim.lock").write_text("")
    third = run_sweep(plan_sweep(config, **kwargs), progress=False)
    assert (third.ran, third.resumed) == (1, 3)
    assert executions(config)[-1].split()[:3] == ["0.2", "3", "1"]

    # a complete point of another config is refused before anything runs, rerun with overwrite
    changed = dict(kwargs, overrides=["training.epochs=5"])
    with pytest.raises(OutputError, match="another config"):
        run_sweep(plan_sweep(config, **changed), progress=False)
    assert len(executions(config)) == 5
    rerun = run_sweep(plan_sweep(config, **changed), overwrite=True, progress=False)
    assert rerun.ran == 4 and len(executions(config)) == 9


def test_failing_point_is_recorded_and_exit_status_counts_failures(config, tmp_path, cluster, with_sweep_command,
                                                                    capsys):
    out = tmp_path / "sweep"
    code = main(["sweep", str(config), "--grid", "training.lr=0.1,0.5,0.9", "--set", "behaviour.fail_above=0.4",
                 "--scheduler", cluster.scheduler_address, "--out", str(out), "--no-progress"])
    printed = capsys.readouterr()
    assert code == 2, printed.err  # two points failed
    assert "3 points, 3 run now, 0 found complete, 2 failed" in printed.out
    failures = json.loads((out / "failures.json").read_text())
    assert [f["point"] for f in failures] == ["training.lr=0.5", "training.lr=0.9"]
    assert all(f["error"].startswith("DataError: training.lr = ") and "too large" in f["error"] for f in failures)
    with xr.open_dataset(out / "sweep.nc") as ds:
        assert list(ds["state"].values) == ["complete", "failed", "failed"]
        assert ds["error"].values[0] == "" and "too large" in ds["error"].values[2]
        loss = ds["final_loss"].values
        assert np.isfinite(loss[0]) and np.isnan(loss[1:]).all()
    assert not (out / "training.lr=0.5").exists()  # a failed point leaves no directory it created
    # the failed points are tried again by the next run of the sweep; the finished one is not
    code = main(["sweep", str(config), "--grid", "training.lr=0.1,0.5,0.9", "--set", "behaviour.fail_above=0.4",
                 "--scheduler", cluster.scheduler_address, "--out", str(out), "--no-progress"])
    assert code == 2 and "3 points, 2 run now, 1 found complete, 2 failed" in capsys.readouterr().out
    assert len(executions(config)) == 5


def test_bad_grid_key_or_value_is_refused_before_anything_runs(config, tmp_path, with_sweep_command, capsys):
    out = tmp_path / "sweep"
    with pytest.raises(ConfigError, match=r"unknown key 'training\.lrr'"):
        plan_sweep(config, grid=["training.lrr=0.1,0.2"], out=out)
    with pytest.raises(ConfigError) as bad_value:
        plan_sweep(config, grid=["training.epochs=2,3", "training.lr=0.1,-1"], out=out)
    message = str(bad_value.value)
    assert message.startswith("sweep point training.epochs=2_training.lr=-1:") and "key 'training.lr' must be > 0" in message
    code = main(["sweep", str(config), "--grid", "behaviour.kill=never,sometimes", "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "key 'behaviour.kill' must be one of" in err and "'sometimes'" in err
    with pytest.raises(ConfigError, match="swept by the grid and by --seeds"):
        plan_sweep(config, grid=["seed=1,2"], seeds=2, out=out)
    with pytest.raises(ConfigError, match="nothing to sweep"):
        plan_sweep(config, out=out)
    assert not out.exists() and executions(config) == []


def test_sweep_table_of_the_config_is_the_default_and_options_replace_it(config, tmp_path):
    config.write_text(config.read_text().replace("[training]", textwrap.dedent(f"""\
        [sweep]
        grid = ["training.lr=0.1,0.2,0.4"]
        seeds = 3
        out = {json.dumps(str(tmp_path / 'from_table'))}
        workers = 2

        [training]""")))
    plan = plan_sweep(config)
    assert plan.axes == {"training.lr": (0.1, 0.2, 0.4), "seed": (0, 1, 2)} and len(plan.points) == 9
    assert plan.out == tmp_path / "from_table" and plan.workers == 2 and plan.retries == 2
    plan = plan_sweep(config, grid=["training.epochs=1,2"], out=tmp_path / "x", workers=1)
    # each option replaces its own key of the table: the seeds still come from it
    assert plan.axes == {"training.epochs": (1, 2), "seed": (0, 1, 2)}
    assert plan.out == tmp_path / "x" and plan.workers == 1
    config.write_text(config.read_text().replace("seeds = 3", "seeds = 0"))
    with pytest.raises(ConfigError, match=r"key 'sweep.seeds' must be >= 1"):
        plan_sweep(config)


def test_parse_grid_splits_values_as_toml_literals():
    assert parse_grid("network.hidden=[64,64],[128]") == (
        "network.hidden", ([64, 64], [128]), ("network.hidden=[64,64]", "network.hidden=[128]"))
    assert parse_grid('training.optimizer=adam,"sgd"')[1] == ("adam", "sgd")
    assert parse_grid("training.lr=1e-3, 0.01")[1] == (0.001, 0.01)
    with pytest.raises(ConfigError, match="given twice"):
        parse_grid("training.lr=0.1,1e-1")
    with pytest.raises(ConfigError, match="KEY=V1,V2"):
        parse_grid("training.lr")
    with pytest.raises(ConfigError, match="empty value"):
        parse_grid("training.lr=0.1,,0.2")


def test_killed_worker_point_is_retried_or_reported(config, tmp_path, cluster):
    """`once`: the worker dies on the first try, the point is retried on a new worker and
    finishes; `always`: it dies three times (allowed-failures 2) and is reported as failed."""
    out = tmp_path / "sweep"
    plan = plan_sweep(config, grid=["behaviour.kill=never,once,always"], out=out,
                      scheduler=cluster.scheduler_address)
    outcome = run_sweep(plan, progress=False)
    assert [f["point"] for f in outcome.failures] == ["behaviour.kill=always"]
    assert "KilledWorker" in outcome.failures[0]["error"]
    assert list(outcome.dataset["state"].values) == ["complete", "complete", "failed"]
    kinds = [line.split()[-1] for line in executions(config)]
    assert sorted(kinds) == ["always"] * 3 + ["never", "once", "once"]
    assert json.loads((out / "behaviour.kill=once" / "pcsim_run.json").read_text())["state"] == "complete"
    assert sweep(config, grid=["behaviour.kill=never,once"], out=out, scheduler=cluster.scheduler_address,
                 progress=False) == 0  # nothing left to run: both points are found complete


def batches(config_path: Path) -> list[int]:
    log = config_path.parent / "executions.log.batches"
    return [int(n) for n in log.read_text().split()] if log.exists() else []


def test_points_differing_only_in_batched_keys_run_as_one_batch(config, tmp_path, cluster, capsys):
    """Grouping by the experiment's BATCHED keys: the batched sweep equals the unbatched one,
    resumes only the unfinished points of a group, and a failing batch falls back to its
    points one by one, so only the bad point fails."""
    config.write_text(config.read_text().replace(MODULE, BATCHED_MODULE))
    kwargs = dict(grid=["training.lr=0.1,0.2", "training.epochs=2,3"], seeds=2, scheduler=cluster.scheduler_address)
    plan = plan_sweep(config, out=tmp_path / "batched", **kwargs)
    assert [len(g) for g in plan.groups] == [4, 4]  # one group per training.epochs
    assert all(len({plan.points[i].values[1] for i in g}) == 1 for g in plan.groups)
    batched = run_sweep(plan, progress=False)
    assert batched.failures == [] and sorted(batches(config)) == [4, 4] and len(executions(config)) == 8
    assert (batched.dataset["batched_with"].values == 4).all()
    alone = run_sweep(plan_sweep(config, out=tmp_path / "alone", batch=False, **kwargs), progress=False)
    assert sorted(batches(config)) == [4, 4] and len(executions(config)) == 16
    assert (alone.dataset["batched_with"].values == 1).all()
    xr.testing.assert_identical(batched.dataset.drop_vars(["point_seconds", "batched_with", "directory"]),
                                alone.dataset.drop_vars(["point_seconds", "batched_with", "directory"]))

    # resume: two unfinished points of one group run as a batch of two, nothing else runs
    for name in ("training.lr=0.1_training.epochs=2_seed=1", "training.lr=0.2_training.epochs=2_seed=0"):
        manifest_path = tmp_path / "batched" / name / "pcsim_run.json"
        manifest = json.loads(manifest_path.read_text())
        manifest.update(state="running", pid=2**22 + 12345, ended=None)
        manifest_path.write_text(json.dumps(manifest))
    again = run_sweep(plan_sweep(config, out=tmp_path / "batched", **kwargs), progress=False)
    assert (again.ran, again.resumed) == (2, 6) and batches(config)[-1] == 2 and len(executions(config)) == 18

    # a batch holding a failing point: the batch fails, each point then runs alone
    failing = run_sweep(plan_sweep(config, out=tmp_path / "failing", grid=["training.lr=0.1,0.5"], seeds=2,
                                   overrides=["behaviour.fail_above=0.4"], scheduler=cluster.scheduler_address),
                        progress=False)
    assert sorted(f["point"] for f in failing.failures) == ["training.lr=0.5_seed=0", "training.lr=0.5_seed=1"]
    assert list(failing.dataset["state"].values.ravel()) == ["complete", "complete", "failed", "failed"]
    assert (failing.dataset["batched_with"].values == 1).all()
    assert "failed (DataError: training.lr = 0.5" in capsys.readouterr().err  # the batch's failure is said once


def _malloc_trim():
    import os

    return os.environ.get("MALLOC_TRIM_THRESHOLD_")


def test_the_sweeps_own_cluster_keeps_malloc_thresholds_and_takes_a_free_port(cluster, config, tmp_path, monkeypatch):
    """The sweep's own LocalCluster, started beside another (the module's, set up the same way):
    Dask's nanny sets MALLOC_TRIM_THRESHOLD_ in its workers, which pins glibc's mmap threshold and
    made every tensor above 128 KiB a fresh mmap (a batched ensemble ran 2.4x slower), so the
    cluster leaves it unset (and the nanny, which lives in this process, does not set it here
    either); and Dask's scheduler serves its HTTP routes (health, metrics) even with the dashboard
    off, on port 8787 unless told otherwise, so a second cluster warned "Port 8787 is already in
    use": both now take a free port."""
    import contextlib

    from pcsim.sweep import _client

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)  # an earlier cluster's nanny set it here
    plan = plan_sweep(config, grid=["training.lr=0.1,0.2"], out=tmp_path / "sweep", workers=1)
    with warnings.catch_warnings(record=True) as caught, contextlib.ExitStack() as stack:
        warnings.simplefilter("always")
        client = _client(plan, 1, stack)
        assert list(client.run(_malloc_trim).values()) == [None]
        assert list(client.run(lambda: __import__("os").environ.get("OMP_NUM_THREADS")).values()) == ["1"]
    assert _malloc_trim() is None
    assert [str(w.message) for w in caught if "already in use" in str(w.message)] == []
