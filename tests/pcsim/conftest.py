"""Fixtures shared by the config, results and CLI tests: a throwaway experiment module."""

import itertools
import textwrap

import pytest

TINY_EXPERIMENT = '''\
"""Tiny test experiment: an exponentially decaying loss curve."""

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from pcsim.config import ExperimentConfig
from pcsim.registry import ExperimentResult


@dataclass(frozen=True, kw_only=True)
class NetworkSection:
    sizes: tuple[int, ...] = field(default=(4, 3), metadata={"ge": 1, "nonempty": True})
    activation: Literal["tanh", "relu"] = "tanh"


@dataclass(frozen=True, kw_only=True)
class TrainingSection:
    lr: float = field(default=0.1, metadata={"gt": 0})
    epochs: int = field(default=3, metadata={"ge": 1})
    batch_size: int = field(default=8, metadata={"ge": 1})
    optimizer: Literal["sgd", "adam"] = "sgd"
    clip: float | None = None


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    network: NetworkSection = field(default_factory=NetworkSection)
    training: TrainingSection = field(default_factory=TrainingSection)


def run(config, ctx):
    epoch = np.arange(config.training.epochs)
    loss = config.training.lr * np.exp(-epoch)
    dataset = xr.Dataset(
        {"loss": ("epoch", loss, {"units": "nats", "long_name": "training loss", "converged": True})},
        coords={"epoch": ("epoch", epoch, {"units": "1", "long_name": "epoch"})},
    )
    summary = {"final_loss": np.float32(loss[-1]), "network": {"sizes": list(config.network.sizes)},
               "losses": loss, "device": ctx.device}
    return ExperimentResult(dataset=dataset, summary=summary)


def plot(results):
    figure = Figure()
    figure.add_subplot().plot(results["epoch"].values, results["loss"].values)
    return {"loss": figure}
'''

_counter = itertools.count()


@pytest.fixture
def write_module(tmp_path, monkeypatch):
    """Write Python source as a fresh, importable module; return the module's name."""
    modules = tmp_path / "modules"
    modules.mkdir()
    monkeypatch.syspath_prepend(str(modules))

    def write(source: str) -> str:
        # A new name per module, so sys.modules never hands back another test's module.
        name = f"pcsim_test_experiment_{next(_counter)}"
        (modules / f"{name}.py").write_text(textwrap.dedent(source), encoding="utf-8")
        return name

    return write


@pytest.fixture
def tiny_experiment(write_module) -> str:
    """Module name of the tiny experiment (defines Config, run, plot)."""
    return write_module(TINY_EXPERIMENT)


@pytest.fixture
def write_config(tmp_path):
    """Write TOML text to tmp_path/NAME.toml and return its path."""

    def write(text: str, name: str = "tiny.toml"):
        path = tmp_path / name
        path.write_text(textwrap.dedent(text), encoding="utf-8")
        return path

    return write
