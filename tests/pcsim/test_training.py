"""Training on the bundled digits: PC and backprop both learn, runs are reproducible, and the
shipped experiments write what the issue promises."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from pcsim.cli import main as cli
from pcsim.data import load_digits
from pcsim.errors import ConfigError, DataError
from pcsim.inference import InferenceConfig
from pcsim.network import PCNetwork
from pcsim.training import TrainConfig, compare_rules

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def curves(digits):
    net = PCNetwork.init([64, 128, 10], "tanh", seed=0)
    return compare_rules(net, digits, ["pc", "bp"], TrainConfig(epochs=6, lr=3e-3),
                         InferenceConfig(steps=20, dt=1.0, tau=10.0), probe_size=64, progress=False)


def test_pc_and_backprop_reach_90_percent_on_digits(curves):
    final = curves.test_accuracy.isel(epoch=-1, ensemble=0)
    assert float(final.sel(rule="pc")) >= 0.90
    assert float(final.sel(rule="bp")) >= 0.90
    # and they learned: the untrained network is near chance
    assert float(curves.test_accuracy.isel(epoch=0).max()) < 0.5


def test_training_loss_falls_for_every_rule(curves):
    loss = curves.train_loss.isel(ensemble=0)
    assert (loss.isel(epoch=-1) < 0.5 * loss.isel(epoch=0)).all()


def test_same_seed_same_curves_and_other_seed_differs(digits):
    def run(seed):
        net = PCNetwork.init([64, 32, 10], "tanh", seed=seed)
        return compare_rules(net, digits, ["pc", "ipc"], TrainConfig(epochs=1),
                             InferenceConfig(steps=5), probe_size=32, seed=seed, progress=False)

    a, b, c = run(3), run(3), run(4)
    for v in ["train_loss", "test_accuracy", "cosine", "rel_error"]:
        np.testing.assert_array_equal(a[v].values, b[v].values)
    assert not np.array_equal(a.train_loss.values, c.train_loss.values)


def test_fixed_prediction_rule_trains_exactly_like_backprop(digits):
    net = PCNetwork.init([64, 32, 32, 10], "tanh", seed=1, dtype=torch.float64)
    ds = compare_rules(net, _as64(digits), ["fpa", "bp"], TrainConfig(epochs=2), InferenceConfig(steps=5), probe_size=32, progress=False)
    np.testing.assert_allclose(ds.train_loss.sel(rule="fpa"), ds.train_loss.sel(rule="bp"), rtol=1e-9)


def _as64(d):
    from dataclasses import replace
    return replace(d, x_train=d.x_train.double(), y_train=d.y_train.double(), x_test=d.x_test.double(), y_test=d.y_test.double())


def test_bad_classification_arrays_name_the_array():
    from pcsim.data import classification_split

    x = np.random.default_rng(0).normal(size=(10, 3))
    bad = x.copy()
    bad[4, 1] = np.nan
    with pytest.raises(DataError, match=r"x_test contains NaN.*\(4, 1\)"):
        classification_split(x, np.zeros(10), bad, np.zeros(10), n_classes=2)
    with pytest.raises(DataError, match=r"labels_train\[2\]"):
        classification_split(x, np.array([0, 1, 7, 0, 1, 0, 1, 0, 1, 0]), x, np.zeros(10), n_classes=2)
    with pytest.raises(DataError, match="labels_test has 9 entries"):
        classification_split(x, np.zeros(10), x, np.zeros(9), n_classes=2)


def test_pc_vs_bp_experiment_writes_results_summary_and_figures(tmp_path):
    out = tmp_path / "run"
    status = cli(["run", str(CONFIGS / "pc_vs_bp_digits.toml"), "--out", str(out), "--no-progress",
                  "--set", "training.epochs=1", "--set", "network.hidden=[16]",
                  "--set", "alignment.steps=[1, 5]", "--set", "alignment.nudges=[1.0, 0.1]"])
    assert status == 0
    ds = xr.open_dataset(out / "results.nc")
    assert set(ds.test_accuracy.dims) == {"rule", "epoch", "ensemble"}
    assert set(ds.cosine.dims) == {"rule", "epoch", "ensemble", "layer"}
    assert list(ds.rule.values) == ["pc", "ipc", "bp"]
    assert ds.sweep_cosine.sizes == {"nudge": 2, "steps": 2, "ensemble": 1, "layer": 2}
    assert "training" in ds.attrs["config"]
    summary = json.loads((out / "summary.json").read_text())
    for rule in ["pc", "ipc", "bp"]:
        assert summary["test_accuracy"][rule] == pytest.approx(float(ds.test_accuracy.sel(rule=rule).isel(epoch=-1).mean()))
        assert len(summary["alignment_cosine"][rule]) == 2
    for fig in ["accuracy", "alignment_epochs", "alignment_steps"]:
        assert (out / f"{fig}.png").stat().st_size > 1000


def test_inference_dynamics_experiment_records_monotone_energy(tmp_path):
    out = tmp_path / "dyn"
    status = cli(["run", str(CONFIGS / "inference_dynamics.toml"), "--out", str(out), "--no-progress",
                  "--set", "dynamics.pretrain_epochs=0", "--set", "inference.steps=30", "--set", "network.hidden=[32, 16]"])
    assert status == 0
    ds = xr.open_dataset(out / "results.nc")
    assert ds.energy.sizes["step"] == 31
    assert ds.x1.dims == ("step", "ensemble", "trial", "unit_l1")
    assert ds.time.attrs["units"] == "s"
    total = ds.energy.sum("layer")
    assert (total.diff("step") <= 1e-6).all()
    assert json.loads((out / "summary.json").read_text())["monotone"] is True


def test_bad_config_value_exits_2_naming_the_key(tmp_path, capsys):
    status = cli(["run", str(CONFIGS / "pc_vs_bp_digits.toml"), "--out", str(tmp_path), "--set", "training.lr=-1"])
    assert status == 2
    assert "training.lr" in capsys.readouterr().err


def test_training_loop_calls_hooks_in_order_and_names_the_batch_of_a_divergence():
    from pcsim.errors import InferenceDivergenceError
    from pcsim.training import train

    seen = []
    secs = train(lambda b: b * 10, lambda ep: [ep, ep + 1, ep + 2], 3,
                 on_step=lambda s: seen.append(("step", s.epoch, s.index, s.step, s.output)),
                 on_epoch=lambda ep, sec: seen.append(("epoch", ep)), initial=True)
    assert secs.shape == (3,) and (secs >= 0).all()
    assert seen[0] == ("epoch", 0)
    steps = [s for s in seen if s[0] == "step"]
    assert [s[3] for s in steps] == list(range(9))                       # global step count
    assert [s[4] for s in steps[:3]] == [10, 20, 30]                      # batches(1) = [1, 2, 3]
    assert [s for s in seen if s[0] == "epoch"] == [("epoch", e) for e in range(4)]
    assert seen.index(("epoch", 1)) == 4                                  # after epoch 1's three steps

    def bad(b):
        if b == 4:
            raise InferenceDivergenceError("energy became NaN", step=7, layer=2)

    with pytest.raises(InferenceDivergenceError, match=r"epoch 2, batch 2: energy became NaN") as info:
        train(bad, lambda ep: [ep, ep + 1, ep + 2], 3)
    assert (info.value.step, info.value.layer) == (7, 2)



def test_network_section_is_pc_network_init_with_its_defaults_and_checks():
    """The [network] table names PCNetwork.init's keywords: same defaults, same network, and a
    bad value is refused by the engine's own check (as a ConfigError naming the table)."""
    from dataclasses import make_dataclass

    from pcsim.config import from_dict
    from pcsim.errors import ConfigError
    from pcsim.experiments.sections import NetworkSection

    a = NetworkSection(hidden=(7,)).build(5, 3, seed=2, device="cpu")
    b = PCNetwork.init((5, 7, 3), seed=2)
    assert a.activations == b.activations and a.learn_precision == b.learn_precision
    for p, q in zip(a.parameters() + a.log_precision, b.parameters() + b.log_precision):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    wrapper = make_dataclass("Wrapper", [("network", NetworkSection)], frozen=True)
    with pytest.raises(ConfigError, match=r"x\.toml: table 'network': ensemble must be >= 1"):
        from_dict(wrapper, {"network": {"ensemble": 0}}, source="x.toml")


def test_an_ensemble_of_seeds_and_learning_rates_equals_each_member_trained_alone(digits):
    """compare_rules with one batch order and one learning rate per member: member e equals the
    run of its own seed and lr (float32 rounding of batched products), for every rule."""
    seeds, lrs = [2, 5, 2], [1e-3, 1e-3, 4e-3]
    net = PCNetwork.init([64, 16, 10], "tanh", ensemble=3, seed=seeds)
    ens = compare_rules(net, digits, ["pc", "bp"], TrainConfig(epochs=2), InferenceConfig(steps=4),
                        probe_size=32, seed=seeds, lr=lrs, progress=False)
    for e, (seed, lr) in enumerate(zip(seeds, lrs)):
        alone = compare_rules(PCNetwork.init([64, 16, 10], "tanh", seed=seed), digits, ["pc", "bp"],
                              TrainConfig(epochs=2, lr=lr), InferenceConfig(steps=4), probe_size=32, seed=seed,
                              progress=False)
        member = ens.isel(ensemble=[e])
        for v in ["train_loss", "cosine", "rel_error"]:
            np.testing.assert_allclose(member[v].values, alone[v].values, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(member.test_accuracy.values, alone.test_accuracy.values)
    # members 0 and 2 differ only in lr, 0 and 1 only in seed (order and weights): all three differ
    final = ens.train_loss.isel(epoch=-1, rule=0).values
    assert len(set(final.round(6))) == 3
    with pytest.raises(ConfigError, match="one per ensemble member"):
        compare_rules(net, digits, ["pc"], TrainConfig(epochs=1), seed=[0, 1], progress=False)


def test_a_batch_of_pc_vs_bp_points_equals_each_point_run_alone(tmp_path):
    """`run_batch` (what a sweep runs for points differing in seed and training.lr): every
    point's directory holds what `pcsim run` of that point writes, to float rounding."""
    from pcsim.cli import run_batch, run_config
    from pcsim.results import load_summary

    config = CONFIGS / "pc_vs_bp_digits.toml"
    small = ["training.epochs=1", "network.hidden=[16]", "inference.steps=4", "alignment.steps=[1, 4]",
             "alignment.nudges=[1.0]", "alignment.probe_size=32", 'training.rules=["pc", "bp"]']
    points = [[*small, "seed=0", "training.lr=0.001"], [*small, "seed=1", "training.lr=0.001"],
              [*small, "seed=0", "training.lr=0.003", "network.precision=2.0"]]
    run_batch(config, [(p, tmp_path / f"batch{i}", False) for i, p in enumerate(points)], progress=False)
    for i, p in enumerate(points):
        run_config(config, tmp_path / f"alone{i}", overrides=p, progress=False)
        batched, alone = load_summary(tmp_path / f"batch{i}"), load_summary(tmp_path / f"alone{i}")
        assert batched["test_accuracy"] == alone["test_accuracy"]
        np.testing.assert_allclose(batched["alignment_cosine"]["pc"], alone["alignment_cosine"]["pc"], rtol=1e-4)
        assert (tmp_path / f"batch{i}" / "config.toml").read_text() == (tmp_path / f"alone{i}" / "config.toml").read_text()
        with xr.open_dataset(tmp_path / f"batch{i}" / "results.nc") as b, \
                xr.open_dataset(tmp_path / f"alone{i}" / "results.nc") as a:
            assert b.attrs["batched_with"] == 3 and "batched_with" not in a.attrs
            np.testing.assert_allclose(b.train_loss.values, a.train_loss.values, rtol=1e-4)
            np.testing.assert_allclose(b.sweep_cosine.values, a.sweep_cosine.values, rtol=1e-4, atol=1e-6)
    with pytest.raises(ConfigError, match="may differ only in seed, training.lr, network.precision"):
        run_batch(config, [([*small, "seed=0"], tmp_path / "x0", False),
                           ([*small, "seed=0", "inference.steps=5"], tmp_path / "x1", False)], progress=False)
    assert not (tmp_path / "x0").exists()
