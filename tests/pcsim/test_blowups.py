"""Blow-ups are caught and blamed on their cause: one test per cause.

- the learning rate: the one training loop (pcsim.training.train) raises LearningDivergenceError
  with epoch and batch, whether the weights turn non-finite, the training energy explodes
  while they stay finite (saturated tanh: the reported lr = 1e6 run), or inference diverges
  once learning has changed the weights;
- a precision, the step size dt/tau, the nudge: InferenceDivergenceError naming it;
- a slow blow-up from an energy already huge at step 0, which the relative max_growth bound
  misses: the descent criterion catches it;
- alignment of vanishing gradients is undefined (NaN), never "perfect agreement" (0).
"""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from pcsim.alignment import compare_gradients
from pcsim.cli import main as cli
from pcsim.data import classification_split
from pcsim.errors import InferenceDivergenceError, LearningDivergenceError
from pcsim.inference import InferenceConfig, init_state, relax
from pcsim.network import PCNetwork
from pcsim.optim import Adam
from pcsim.relaxation import RISE_RTOL
from pcsim.rules import StandardPC
from pcsim.training import TrainConfig, compare_rules, train

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
F64 = torch.float64


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.default_rng(0)
    labels = np.arange(64) % 3
    x = rng.normal(size=(64, 6)) + labels[:, None]
    return classification_split(x[:48], labels[:48], x[48:], labels[48:])


# --------------------------------------------------------------------------- the learning rate
@pytest.mark.parametrize("rule", ["pc", "fpa", "bp"])
def test_a_huge_learning_rate_raises_a_learning_divergence_naming_it(rule, blobs):
    net = PCNetwork.init([6, 16, 3], "tanh", seed=0)
    with pytest.raises(LearningDivergenceError) as info:
        compare_rules(net, blobs, [rule], TrainConfig(epochs=3, batch_size=8, lr=1e6), InferenceConfig(steps=5),
                      probe_size=8, progress=False)
    err = info.value
    assert "learning rate" in str(err) and "lr=1e+06" in str(err)
    assert err.epoch == 0 and 0 <= err.batch < 6  # caught in the first epoch, named by 0-based epoch and batch
    assert f"epoch {err.epoch + 1}, batch {err.batch}" in str(err)


def test_inference_diverging_after_learning_is_blamed_on_the_learning_rate(blobs):
    """iPC updates the weights at every inference step: a huge lr makes the relaxation itself blow up."""
    net = PCNetwork.init([6, 16, 3], "tanh", seed=0)
    with pytest.raises(LearningDivergenceError) as info:
        compare_rules(net, blobs, ["ipc"], TrainConfig(epochs=2, batch_size=8, lr=1e6), InferenceConfig(steps=5),
                      probe_size=8, progress=False)
    assert "inference diverged" in str(info.value) and "learning rate" in str(info.value)
    assert isinstance(info.value.__cause__, InferenceDivergenceError)


def test_an_ordinary_learning_rate_trains_without_a_divergence(blobs):
    net = PCNetwork.init([6, 16, 3], "tanh", seed=0)
    ds = compare_rules(net, blobs, ["pc", "bp"], TrainConfig(epochs=2, batch_size=8, lr=1e-2), InferenceConfig(steps=5),
                       probe_size=8, progress=False)
    assert np.isfinite(ds.train_loss).all() and float(ds.train_loss.isel(epoch=-1).max()) < float(ds.train_loss.isel(epoch=0).min())


def test_non_finite_weights_raise_a_learning_divergence_with_epoch_and_batch():
    w = [torch.zeros(1, 2, 2)]

    def step(b):
        if b == 5:
            w[0][0, 1, 0] = math.nan
        return torch.tensor([1.0])

    with pytest.raises(LearningDivergenceError, match=r"epoch 2, batch 2: .*parameter 0.*NaN/Inf.*learning rate") as info:
        train(step, lambda ep: [3 * ep - 3 + i for i in range(3)], 3, parameters=lambda: w, energy=lambda out: out)
    assert (info.value.epoch, info.value.batch) == (1, 2)


@pytest.mark.parametrize("growth", [2e3, 1e12, math.inf, math.nan])
def test_an_exploding_training_energy_is_a_learning_divergence(growth):
    energies = iter([2.0, 1.0, 2.0 * growth])  # 1e3 x the first step's is the bound (documented in train)
    with pytest.raises(LearningDivergenceError, match="training energy") as info:
        train(lambda b: next(energies), lambda ep: [0, 1, 2], 1, energy=lambda out: out, lr=0.5)
    assert info.value.batch == 2 and "lr=0.5" in str(info.value)
    ok = iter([2.0, 1.0, 1.9e3])  # below the bound: no error
    train(lambda b: next(ok), lambda ep: [0, 1, 2], 1, energy=lambda out: out)


def test_cli_with_a_huge_learning_rate_exits_2_and_leaves_no_results(tmp_path, capsys):
    out = tmp_path / "run"
    status = cli(["run", str(CONFIGS / "pc_vs_bp_digits.toml"), "--out", str(out), "--no-progress",
                  "--set", "training.lr=1e6", "--set", 'training.rules=["pc"]', "--set", "training.epochs=1",
                  "--set", "network.hidden=[8]", "--set", "inference.steps=3", "--set", "alignment.steps=[1]",
                  "--set", "alignment.nudges=[1.0]", "--set", "alignment.probe_size=8"])
    err = capsys.readouterr().err
    assert status == 2
    assert "pcsim: error:" in err and "learning rate" in err
    assert not (out / "results.nc").exists() and not (out / "summary.json").exists()


# --------------------------------------------------------------------------- inference settings
def linear_chain(precision: float, scale: float = 1.0):
    """A linear [1, 1, 1] chain, float64: the free node x_1 has curvature Pi_1 + Pi_2 w_2^2."""
    net = PCNetwork.init([1, 1, 1], "linear", precision=precision, dtype=F64)
    net.weights = [torch.full_like(w, scale) for w in net.weights]
    state = init_state(net, torch.ones(1, 1, dtype=F64), torch.full((1, 1), 3.0, dtype=F64))
    return net, state


def test_a_large_precision_is_named_as_the_cause():
    net, state = linear_chain(precision=1e3)
    with pytest.raises(InferenceDivergenceError) as info:
        relax(net, state, InferenceConfig(steps=10, dt=1.0, tau=10.0))
    assert "precision Pi_" in str(info.value) and "1000" in str(info.value)
    assert "learning rate" not in str(info.value)


def test_a_large_step_size_is_named_as_the_cause():
    net, state = linear_chain(precision=1.0)  # curvature 2: dt/tau = 1.5 gives |1 - 3| = 2 per step
    with pytest.raises(InferenceDivergenceError) as info:
        relax(net, state, InferenceConfig(steps=10, dt=1.5, tau=1.0))
    assert "step size dt/tau (now 1.5)" in str(info.value) and "precision Pi_" not in str(info.value)


def test_a_large_nudge_is_named_as_the_cause():
    net = PCNetwork.init([2, 3, 2], "linear", seed=0, dtype=F64)
    x, y = torch.ones(4, 2, dtype=F64), torch.full((4, 2), 2.0, dtype=F64)
    StandardPC(InferenceConfig(steps=10), nudge=1.0).step(net.clone(), Adam(1e-3), x, y)  # stable without it
    with pytest.raises(InferenceDivergenceError) as info:
        StandardPC(InferenceConfig(steps=10), nudge=1e3).step(net.clone(), Adam(1e-3), x, y)
    assert "nudge (nudge=1000)" in str(info.value)


def test_a_slow_blow_up_from_a_huge_start_is_caught_by_the_descent_criterion():
    """The reported fault: energies near 1e13 after 20 steps raised nothing. With precision 1e12 the
    start energy is already ~1e12 and dt/tau * curvature = 2.05 makes it grow by 1.1025 a step:
    4x in 20 steps, under max_growth = 10. Gradient descent must not end above its start."""
    pi = 1e12
    net, state = linear_chain(precision=pi)
    eta = 2.05 / (2 * pi)  # curvature Pi_1 + Pi_2 w^2 = 2 Pi
    cfg = InferenceConfig(steps=20, dt=eta, tau=1.0, record=True)
    unguarded = relax(net, state.clone(), InferenceConfig(**{**cfg.__dict__, "check_descent": False}))
    total = unguarded.trace["energy"].sum((-1, -2))[:, 0]
    # closed form: x* = 2, E_min = Pi, E_t = Pi (1 + 1.05^(2t)) from E_0 = 2 Pi
    np.testing.assert_allclose(total, pi * (1 + 1.05 ** (2 * np.arange(21))), rtol=1e-9)
    assert total[0] > 1e12 and total[-1] < 10 * total[0]  # max_growth alone never trips
    with pytest.raises(InferenceDivergenceError) as info:
        relax(net, state.clone(), cfg)
    assert info.value.step == 20 and "must not end above its start" in str(info.value)
    assert "precision Pi_" in str(info.value)  # dt/tau * Pi = 1e-12 * 1e12: the precision is named


def test_the_descent_criterion_leaves_a_converging_relaxation_alone():
    net, state = linear_chain(precision=1e12)
    r = relax(net, state, InferenceConfig(steps=20, dt=0.9 / (2e12), tau=1.0))
    assert float(r.energy.sum()) < 1e12 * (1 + RISE_RTOL)


# --------------------------------------------------------------------------- alignment 0/0
def test_alignment_of_vanishing_gradients_is_undefined_not_perfect():
    net = PCNetwork.init([2, 3, 2], seed=0)
    zeros = [torch.zeros_like(p) for p in net.parameters()]
    ones = [torch.ones_like(p) for p in net.parameters()]
    cos, rel = compare_gradients(net, zeros, zeros)
    assert np.isnan(cos).all() and np.isnan(rel).all()          # 0/0
    cos, rel = compare_gradients(net, ones, zeros)
    assert np.isnan(cos).all() and np.isinf(rel).all()          # x/0
    g = [torch.randn(p.shape, generator=torch.Generator().manual_seed(k)) for k, p in enumerate(net.parameters())]
    cos, rel = compare_gradients(net, [2 * t for t in g], g, nudge=2.0)
    np.testing.assert_allclose(cos, 1.0, rtol=1e-12) and np.testing.assert_allclose(rel, 0.0, atol=1e-12)
    h = [t + 1 for t in g]
    _, rel = compare_gradients(net, h, g)
    a = np.concatenate([t.reshape(-1).numpy() for t in (h[0], h[2])])
    b = np.concatenate([t.reshape(-1).numpy() for t in (g[0], g[2])])
    assert rel[0, 0] == pytest.approx(np.linalg.norm(a - b) / np.linalg.norm(b), rel=1e-6)


def test_summary_json_reports_undefined_alignment_as_null(tmp_path):
    """An undefined relative error reaches summary.json as null (registry: NaN -> None), never 0."""
    from pcsim.registry import ExperimentResult

    res = ExperimentResult(__import__("xarray").Dataset(), {"alignment_rel_error": {"pc": [float("nan"), 0.5]}})
    assert json.loads(json.dumps(res.summary))["alignment_rel_error"]["pc"] == [None, 0.5]


@pytest.mark.parametrize("eta, precisions, named", [
    (3.0, {"Pi_1": 1.0}, "step size"),            # the step alone is unstable
    (0.1, {"Pi_2": 1e3}, "precision Pi_2"),        # a moderate step made large by a precision
    (0.1, {"Pi_1": 2.0}, "step size"),             # dt/tau * Pi = 0.2: not the precision
    (2.0, {"Pi_1": 50.0}, "step size dt/tau (now 2) (with Pi_1 = 50)"),
])
def test_the_likely_cause_follows_the_effective_step(eta, precisions, named):
    from pcsim.relaxation import step_cause

    assert named in step_cause(eta, 0.0, precisions)


def test_dynamical_pc_divergence_shares_the_wording():
    from pcsim import temporal as tp

    net = tp.TemporalPCNetwork.init(2, 3, seed=0, observation="gaussian")
    y = torch.randn(2, 6, 3, generator=torch.Generator().manual_seed(0)) * 3
    with pytest.raises(InferenceDivergenceError) as info:
        tp.relax(net, None, y, None, tp.TemporalInferenceConfig(steps=20, dt=5.0, tau=1.0))
    assert str(info.value).startswith("inference diverged: ") and "; likely cause: " in str(info.value)
    assert "dt/tau (now 5)" in str(info.value)
