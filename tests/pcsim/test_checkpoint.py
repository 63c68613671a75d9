"""Checkpoint and resume through the one training loop, and Ctrl-C for ``pcsim run``.

The claim under test: a run interrupted anywhere (Ctrl-C, SIGKILL) and resumed from its last
checkpoint ends with exactly the results of the same run left alone. In process, a toy run of
two trainings (drawing batches from a generator and noise from every global random source) is
interrupted at every epoch of either training and resumed; across processes, a real
``python -m pcsim run`` of pc_vs_bp_digits is SIGKILLed or sent SIGINT and resumed, and its
``results.nc`` and ``summary.json`` are compared with an uninterrupted run's.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from pcsim.checkpoint import Checkpoints, capture, restore
from pcsim.cli import main
from pcsim.config import CheckpointSection, ExperimentConfig
from pcsim.data import epoch_batches
from pcsim.errors import ConfigError, OutputError
from pcsim.optim import SGD, Adam
from pcsim.outdir import CHECKPOINT_FILE, MANIFEST_FILE, RunDirectory, run_status
from pcsim.training import train

ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- a toy run


@dataclass(frozen=True, kw_only=True)
class ToyConfig(ExperimentConfig):
    """A run of two trainings; ``lr`` of the first, ``epochs`` of each."""

    experiment: str = "toy"
    lr: float = field(default=0.05, metadata={"gt": 0})
    epochs: tuple[int, ...] = (4, 3)


class Stop(KeyboardInterrupt):
    """The Ctrl-C of a test, raised from an epoch hook."""


def toy_run(config: ToyConfig, stop: tuple[int, int] | None = None) -> dict:
    """Two trainings through :func:`train`: Adam on a linear regression, then SGD with momentum
    on another; every step adds noise drawn from torch's, numpy's and python's global
    generators, batches come from a seeded torch generator, records are a growing list and an
    array, and between the two trainings the global generator is drawn from. ``stop=(stage,
    epoch)`` raises :class:`Stop` in that epoch's hook (before its checkpoint)."""
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    random.seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    x = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64)
    out = {}

    def stage(k: int, w: torch.Tensor, opt, order: torch.Generator) -> dict:
        epochs = config.epochs[k]
        losses: list[float] = []
        norms = np.zeros(epochs)

        def step(idx):
            xb, yb = x[idx], y[idx]
            noise = float(torch.randn(())) + np.random.randn() + random.gauss(0, 1)
            g = xb.T @ (xb @ w - yb) / len(idx) + 1e-3 * noise
            opt.step([w], [g])
            return float(((xb @ w - yb) ** 2).mean())

        def on_epoch(epoch, seconds):
            if (k, epoch) == stop:
                raise Stop
            losses.append(float(((x @ w - y) ** 2).mean()))
            norms[epoch - 1] = float(w.norm())

        train(step, lambda epoch: epoch_batches(40, 8, order), epochs, on_epoch=on_epoch, desc=f"toy {k}",
              parameters=lambda: [w], state={"w": w, "optimizer": opt, "order": order, "losses": losses,
                                             "norms": norms})
        return {f"w{k}": w.clone(), f"losses{k}": list(losses), f"norms{k}": norms.copy()}

    out.update(stage(0, torch.zeros(3, 1, dtype=torch.float64), Adam(config.lr), torch.Generator().manual_seed(1)))
    out["between"] = torch.rand(3)  # the global generator after a training: restored with it
    out.update(stage(1, torch.ones(3, 1, dtype=torch.float64), SGD(0.02, momentum=0.5),
                     torch.Generator().manual_seed(2)))
    return out


def run_toy(path: Path, config: ToyConfig, *, resume: bool = False, stop=None) -> dict:
    with RunDirectory(path, experiment=config.experiment, resume=resume) as run:
        with Checkpoints(run, config, resume=resume).active():
            return toy_run(config, stop)


def assert_same(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


@pytest.fixture(scope="module")
def toy_reference(tmp_path_factory) -> dict:
    return run_toy(tmp_path_factory.mktemp("toy") / "reference", ToyConfig())


@pytest.mark.parametrize("every", [1, 2])
@pytest.mark.parametrize("stop", [(0, 1), (0, 2), (0, 4), (1, 1), (1, 3)])
def test_resume_after_interrupt_equals_the_uninterrupted_run(tmp_path, toy_reference, stop, every):
    config = ToyConfig(checkpoint=CheckpointSection(every=every))
    with pytest.raises(Stop):
        run_toy(tmp_path / "run", config, stop=stop)
    status = run_status(tmp_path / "run")
    if stop == (0, 1) or (stop == (0, 2) and every == 2):  # stopped before the first checkpoint
        assert not (tmp_path / "run").exists()  # nothing to keep: no debris
        return
    assert status.state == "interrupted" and status.manifest["files"] == [CHECKPOINT_FILE]
    saved = status.manifest["checkpoint"]
    assert saved["stage"] == stop[0] or (saved["stage"] == 0 and saved["complete"])
    resumed = run_toy(tmp_path / "run", config, resume=True)
    assert_same(resumed, toy_reference)
    status = run_status(tmp_path / "run")
    assert status.state == "complete" and not (tmp_path / "run" / CHECKPOINT_FILE).exists()
    assert status.manifest["checkpoint"] is None and len(status.manifest["resumed"]) == 1


def test_a_resumed_run_can_be_interrupted_and_resumed_again(tmp_path, toy_reference):
    config = ToyConfig()
    with pytest.raises(Stop):
        run_toy(tmp_path / "run", config, stop=(0, 3))
    with pytest.raises(Stop):
        run_toy(tmp_path / "run", config, resume=True, stop=(1, 2))
    assert run_status(tmp_path / "run").manifest["checkpoint"]["stage"] == 1
    assert_same(run_toy(tmp_path / "run", config, resume=True), toy_reference)
    assert len(run_status(tmp_path / "run").manifest["resumed"]) == 2


def test_resume_is_refused_for_another_config_and_keeps_the_checkpoint(tmp_path, toy_reference):
    with pytest.raises(Stop):
        run_toy(tmp_path / "run", ToyConfig(), stop=(1, 2))
    before = (tmp_path / "run" / CHECKPOINT_FILE).read_bytes()
    with pytest.raises(ConfigError, match=r"lr: checkpoint 0\.05, now 0\.1") as info:
        run_toy(tmp_path / "run", ToyConfig(lr=0.1), resume=True)
    assert "epochs" not in str(info.value)  # only the keys that differ are named
    with pytest.raises(ConfigError, match=r"seed: checkpoint 0, now 3"):
        run_toy(tmp_path / "run", ToyConfig(seed=3), resume=True)
    # the refused resumes left the interrupted run as it was; the checkpoint setting may change
    assert (tmp_path / "run" / CHECKPOINT_FILE).read_bytes() == before
    assert run_status(tmp_path / "run").state == "interrupted"
    assert_same(run_toy(tmp_path / "run", ToyConfig(checkpoint=CheckpointSection(every=3)), resume=True),
                toy_reference)


def test_resume_is_refused_without_a_checkpoint_or_after_the_run_finished(tmp_path):
    with pytest.raises(OutputError, match="no run to resume"):
        run_toy(tmp_path / "none", ToyConfig(), resume=True)
    assert not (tmp_path / "none").exists()
    run_toy(tmp_path / "done", ToyConfig())
    with pytest.raises(OutputError, match="already finished, there is nothing to resume"):
        run_toy(tmp_path / "done", ToyConfig(), resume=True)
    assert run_status(tmp_path / "done").state == "complete"
    (tmp_path / "early").mkdir()  # an existing directory: a Ctrl-C before any checkpoint marks it
    with pytest.raises(Stop):
        run_toy(tmp_path / "early", ToyConfig(), stop=(0, 1))
    assert run_status(tmp_path / "early").state == "interrupted"
    with pytest.raises(OutputError, match="no checkpoint"):
        run_toy(tmp_path / "early", ToyConfig(), resume=True)
    with pytest.raises(Stop):
        run_toy(tmp_path / "never", ToyConfig(checkpoint=CheckpointSection(every=0)), stop=(1, 3))
    assert not (tmp_path / "never").exists()  # every = 0: no checkpoint, so nothing kept


def test_resume_and_overwrite_exclude_each_other(tmp_path, capsys):
    assert main(["run", str(ROOT / "configs" / "pc_vs_bp_digits.toml"), "--out", str(tmp_path / "x"),
                 "--resume", "--overwrite"]) == 2
    assert "not allowed with argument" in capsys.readouterr().err and not (tmp_path / "x").exists()
    with pytest.raises(OutputError, match="exclude each other"):
        RunDirectory(tmp_path / "x", experiment="toy", resume=True, overwrite=True)


def test_a_failed_checkpoint_write_keeps_the_previous_checkpoint(tmp_path):
    with RunDirectory(tmp_path / "run", experiment="toy") as run:
        run.write_checkpoint(lambda p: torch.save({"epoch": 1}, p), {"epoch": 1})

        def broken(path):
            path.write_bytes(b"half a checkpoint")
            raise OSError(28, "No space left on device")

        with pytest.raises(OutputError, match=r"checkpoint\.pt: no space left on device"):
            run.write_checkpoint(broken, {"epoch": 2})
        assert torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=True) == {"epoch": 1}
        assert run.checkpoint == {"epoch": 1}
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [".pcsim.lock", CHECKPOINT_FILE, MANIFEST_FILE]


def test_capture_and_restore_put_back_every_kind_of_state_in_place():
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    opt = Adam(0.1)
    w = torch.randn(3, 2, generator=gen)
    opt.step([w], [torch.ones_like(w)])
    state = {"w": w, "a": np.arange(4.0), "gen": gen, "rng": rng, "opt": opt, "log": [1.0, [2.0]],
             "module": torch.nn.Linear(2, 2), "table": {"k": torch.zeros(2)}}
    saved = capture(state)
    expected = (torch.randn(2, generator=gen), rng.random(), [p.clone() for p in state["module"].parameters()])
    # change everything, then restore: the same objects hold the saved values again
    ids = {k: id(v) for k, v in state.items()}
    w.add_(1.0)
    state["a"][:] = -1
    opt.step([w], [torch.ones_like(w)])
    state["log"].append(3.0)
    with torch.no_grad():
        state["module"].weight.zero_()
    state["table"]["k"] += 5
    restore(state, saved)
    assert {k: id(v) for k, v in state.items()} == ids
    assert torch.equal(w, saved["w"]) and np.array_equal(state["a"], np.arange(4.0))
    assert opt.t == 1 and torch.equal(opt.state.m[0], saved["opt"]["state"]["m"][0])
    assert state["log"] == [1.0, [2.0]] and torch.equal(state["table"]["k"], torch.zeros(2))
    assert torch.equal(torch.randn(2, generator=gen), expected[0]) and rng.random() == expected[1]
    assert all(torch.equal(p, q) for p, q in zip(state["module"].parameters(), expected[2]))
    with pytest.raises(TypeError, match=r"state\['lr'\] is a float"):
        train(lambda b: 0.0, lambda e: [0], 1, state={"lr": 0.1})  # checked even outside a session
    with pytest.raises(OutputError, match=r"does not fit"):
        restore({"w": torch.zeros(2)}, {"w": torch.zeros(3)})


# --------------------------------------------------------------------------- pcsim run, for real

# pc_vs_bp_digits cut down to a few seconds of training: backprop, then standard PC
TINY = ["--set", "training.epochs=6", "--set", 'training.rules=["bp","pc"]', "--set", "training.batch_size=128",
        "--set", "network.hidden=[16]", "--set", "inference.steps=2", "--set", "alignment.steps=[1]",
        "--set", "alignment.nudges=[1.0]", "--set", "alignment.probe_size=32"]
CONFIG = str(ROOT / "configs" / "pc_vs_bp_digits.toml")
WALL = ("epoch_time",)  # wall-clock measurements: differ between any two runs


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, one_thread) -> Path:
    """The tiny run uninterrupted, on one thread as in the subprocesses (so no reduction order can differ)."""
    out = tmp_path_factory.mktemp("pcsim") / "uninterrupted"
    assert main(["run", CONFIG, "--out", str(out), *TINY, "--no-progress"]) == 0
    return out


def start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "pcsim", "run", CONFIG, "--out", str(out), *TINY, "--no-progress"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(process: subprocess.Popen, out: Path, stage: int) -> dict:
    """Poll the manifest until it describes a checkpoint of training ``stage`` (0-based)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert process.poll() is None, f"the run ended (status {process.returncode}) before a checkpoint of " \
                                       f"training {stage}: {process.communicate()[1]}"
        try:
            info = json.loads((out / MANIFEST_FILE).read_text()).get("checkpoint")
        except (FileNotFoundError, json.JSONDecodeError):
            info = None
        if info and info["stage"] >= stage:
            return info
        time.sleep(0.01)
    process.kill()
    raise AssertionError("no checkpoint within 120 s")


def _timeless(summary):
    """A summary without its wall-clock numbers (keys naming seconds)."""
    if isinstance(summary, dict):
        return {k: _timeless(v) for k, v in summary.items() if "seconds" not in k}
    return summary


def assert_same_results(a: Path, b: Path) -> None:
    """``results.nc`` identical but for wall-time variables, ``summary.json`` equal but for seconds."""
    with xr.open_dataset(a / "results.nc") as da, xr.open_dataset(b / "results.nc") as db:
        wall = [v for v in da.data_vars if "wall time" in da[v].attrs.get("long_name", "")]
        assert set(WALL) <= set(wall) or "epoch_time" not in da
        xr.testing.assert_identical(da.drop_vars(wall).load(), db.drop_vars(wall).load())
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (a, b))
    assert _timeless(sa) == _timeless(sb)


# beside pc_vs_bp_digits (the subprocess tests): a pre-training before a recorded relaxation, and
# seven generative models (PC, hybrid PC, MCPC, VAE, IWAE, flow, wake-sleep) trained one after another
EXPERIMENTS = {
    "inference_dynamics": (["--set", "dynamics.pretrain_epochs=4", "--set", "network.hidden=[16]",
                            "--set", "inference.steps=5", "--set", "dynamics.trials=4"], 2),
    "generative_digits": (["--set", "training.epochs=2", "--set", "decoder.latent_dim=2", "--set", "decoder.hidden=[8]",
                           "--set", "baselines.flow_hidden=[8]", "--set", "baselines.flow_transforms=2",
                           "--set", "baselines.recognition_hidden=[8]", "--set", "pc.inference_steps=5",
                           "--set", "data.max_train=100", "--set", "data.max_test=20",
                           "--set", "evaluation.nll_samples=4", "--set", "evaluation.elbo_samples=1",
                           "--set", "evaluation.completion_steps=2", "--set", "evaluation.gap_examples=10",
                           "--set", "evaluation.gap_steps=2", "--set", "evaluation.steps=[0,3]",
                           "--set", "evaluation.n_generated=20", "--set", "evaluation.classifier_max_iter=20",
                           "--set", "evaluation.n_show=2", "--set", "training.batch_size=32"], 7),
}


@pytest.mark.parametrize("name", list(EXPERIMENTS))
def test_ctrl_c_after_a_checkpoint_then_resume_equals_the_uninterrupted_run(name, tmp_path, monkeypatch, one_thread,
                                                                             capsys):
    """In process: Ctrl-C arrives right after the n-th checkpoint (mid-run); the resumed run's
    results equal an uninterrupted run's, and it saved only the checkpoints after the n-th (the
    finished trainings were restored, not trained again)."""
    overrides, n = EXPERIMENTS[name]
    config = str(ROOT / "configs" / f"{name}.toml")
    args = ["run", config, *overrides, "--no-progress"]
    original, calls = RunDirectory.write_checkpoint, []
    stop = [None]

    def counting(self, write, info):
        path = original(self, write, info)
        calls.append(info)
        if len(calls) == stop[0]:
            raise KeyboardInterrupt
        return path

    monkeypatch.setattr(RunDirectory, "write_checkpoint", counting)
    assert main([*args, "--out", str(tmp_path / "whole")]) == 0
    whole = len(calls)
    assert whole > n
    calls.clear()
    stop[0] = n
    assert main([*args, "--out", str(tmp_path / "cut")]) == 130
    assert "continue the run with" in capsys.readouterr().err
    assert run_status(tmp_path / "cut").state == "interrupted"
    saved = torch.load(tmp_path / "cut" / CHECKPOINT_FILE, weights_only=True)["stages"]
    assert all(stage["payload"] is not None for stage in saved)  # every training declares its state
    calls.clear()
    stop[0] = None
    assert main([*args, "--out", str(tmp_path / "cut"), "--resume"]) == 0
    assert len(calls) == whole - n
    assert_same_results(tmp_path / "whole", tmp_path / "cut")


def test_sigkill_mid_run_then_resume_equals_the_uninterrupted_run(tmp_path, uninterrupted, one_thread, capsys):
    out = tmp_path / "killed"
    process = start(out)
    wait_for_checkpoint(process, out, stage=0)
    process.send_signal(signal.SIGKILL)
    process.communicate()
    assert process.returncode == -signal.SIGKILL
    status = run_status(out)
    assert status.state == "interrupted" and CHECKPOINT_FILE in status.manifest["files"]
    assert not (out / "results.nc").exists()
    assert main(["run", CONFIG, "--out", str(out), *TINY, "--resume", "--no-progress"]) == 0
    assert "resuming it" in capsys.readouterr().err
    assert_same_results(out, uninterrupted)
    assert run_status(out).state == "complete" and not (out / CHECKPOINT_FILE).exists()


def test_sigint_stops_cleanly_and_the_printed_command_resumes(tmp_path, uninterrupted, one_thread, capsys):
    out = tmp_path / "interrupted"
    process = start(out)
    wait_for_checkpoint(process, out, stage=1)  # the backprop training is finished: resume skips it
    process.send_signal(signal.SIGINT)
    _, err = process.communicate()
    assert process.returncode == 130
    assert f"the last checkpoint, {out / CHECKPOINT_FILE}, holds epoch" in err and "of training 2 ('pc')" in err
    command = shlex.split(err.strip().splitlines()[-1])
    assert command[:2] == ["pcsim", "run"] and command[-1] == "--resume"
    assert command[2:-1] == [CONFIG, "--out", str(out), *TINY]
    status = run_status(out)
    assert status.state == "interrupted" and status.manifest["state"] == "interrupted"
    assert status.manifest["files"] == [CHECKPOINT_FILE] and status.manifest["checkpoint"]["stage"] == 1
    # a resume with another config is refused, naming the key, and keeps the checkpoint
    assert main([*command[1:], "--set", "training.lr=0.01"]) == 2
    assert "training.lr: checkpoint 0.001, now 0.01" in capsys.readouterr().err
    assert run_status(out).state == "interrupted"
    assert main([*command[1:], "--no-progress"]) == 0
    assert_same_results(out, uninterrupted)


def test_sigterm_stops_like_ctrl_c_with_exit_status_143(tmp_path, one_thread):
    # a batch scheduler's time limit sends SIGTERM: the checkpoint is kept and the message says how to resume
    out = tmp_path / "terminated"
    process = start(out)
    wait_for_checkpoint(process, out, stage=0)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate()
    assert process.returncode == 143
    assert "pcsim: terminated (SIGTERM): the last checkpoint" in err
    assert shlex.split(err.strip().splitlines()[-1])[-1] == "--resume"
    status = run_status(out)
    assert status.state == "interrupted" and status.manifest["files"] == [CHECKPOINT_FILE]
