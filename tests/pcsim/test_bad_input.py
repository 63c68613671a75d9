"""The engine's public constructors and entry points refuse bad arguments at the boundary.

A property battery (hypothesis): for every argument of PCNetwork.init, InferenceConfig,
TemporalInferenceConfig, TrainConfig, Adam, SGD, the rules and compare_rules, any non-finite,
out-of-range or wrong-type value raises a PCSimError (a ConfigError: a setting) whose message
names the argument; bad arrays given to StandardPC.step raise a DataError naming the array.
"""

import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcsim.errors import ConfigError, DataError, PCSimError
from pcsim.inference import InferenceConfig
from pcsim.network import PCNetwork
from pcsim.optim import SGD, Adam
from pcsim.rules import FixedPredictionPC, IncrementalPC, StandardPC
from pcsim.temporal import TemporalInferenceConfig
from pcsim.training import TrainConfig, compare_rules

FAST = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
WRONG_TYPE = st.sampled_from(["1.0", None, ["x"], {"a": 1}, object(), True, 1j])


def positive_bad():
    """Bad values of a setting that must be a finite number > 0."""
    return NON_FINITE | st.floats(max_value=0.0, allow_nan=False, allow_infinity=False) | WRONG_TYPE


def non_negative_bad():
    """Bad values of a setting that must be a finite number >= 0."""
    return NON_FINITE | st.floats(max_value=-1e-9, allow_nan=False, allow_infinity=False) | WRONG_TYPE


def unit_interval_bad():
    """Bad values of a setting in [0, 1)."""
    return non_negative_bad() | st.floats(min_value=1.0, allow_nan=False, allow_infinity=False)


def count_bad(minimum: int):
    """Bad values of an integer setting >= minimum: fractions, too small, non-finite, other types."""
    fractions = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False).filter(lambda v: v != int(v))
    return fractions | st.integers(max_value=minimum - 1) | NON_FINITE | WRONG_TYPE


def refused(make, value, error=ConfigError) -> str:
    """The message of the pcsim error ``make(value)`` raises (pytest fails if it raises none, or
    another kind than ``error``); each test asserts what the message must name."""
    with pytest.raises(PCSimError) as info:
        make(value)
    assert isinstance(info.value, error), f"{type(info.value).__name__} for {value!r}"
    return str(info.value)


# --------------------------------------------------------------------------- PCNetwork.init
CASES = {
    "precision": (lambda v: PCNetwork.init([3, 4, 2], precision=v), positive_bad()),
    "prior_precision": (lambda v: PCNetwork.init([3, 2], mode="generative", prior_precision=v), positive_bad()),
    "ensemble": (lambda v: PCNetwork.init([3, 2], ensemble=v), count_bad(1)),
    "seed": (lambda v: PCNetwork.init([3, 2], seed=v), count_bad(0)),
    "sizes": (lambda v: PCNetwork.init([3, v, 2]), count_bad(1)),
}


@pytest.mark.parametrize("name", list(CASES))
@FAST
@given(data=st.data())
def test_network_init_refuses_bad_arguments_naming_them(name, data):
    make, bad = CASES[name]
    assert name in refused(make, data.draw(bad))


def test_a_fractional_width_is_refused_not_truncated():
    err = refused(lambda v: PCNetwork.init([64, v, 10]), 32.7)
    assert "sizes" in err and "32.7" in err
    assert PCNetwork.init([64, 32.0, 10]).sizes == (64, 32, 10)  # an integral float is that integer


@pytest.mark.parametrize("kw, name", [({"precision": [1.0]}, "precision"), ({"precision": [1.0, math.nan]}, "precision[1]"),
                                      ({"activation": "softplus"}, "softplus"), ({"activation": ["tanh"] * 3}, "activation"),
                                      ({"mode": "causal"}, "mode"), ({"seed": [0, 1]}, "seed"),
                                      ({"learn_precision": "yes"}, "learn_precision")])
def test_network_init_refuses_bad_lists_and_names(kw, name):
    assert name in refused(lambda _: PCNetwork.init([3, 4, 2], **kw), None)


# --------------------------------------------------------------------------- settings dataclasses
SETTINGS = {
    (InferenceConfig, "dt"): positive_bad(),
    (InferenceConfig, "tau"): positive_bad(),
    (InferenceConfig, "momentum"): unit_interval_bad(),
    (InferenceConfig, "tol"): non_negative_bad(),
    (InferenceConfig, "max_growth"): NON_FINITE | st.floats(max_value=1.0, allow_nan=False) | WRONG_TYPE,
    (InferenceConfig, "steps"): count_bad(0),
    (InferenceConfig, "check_every"): count_bad(0),
    (TemporalInferenceConfig, "damping"): non_negative_bad(),
    (TemporalInferenceConfig, "backtrack"): count_bad(0),
    (TemporalInferenceConfig, "dt"): positive_bad(),
    (TrainConfig, "lr"): positive_bad(),
    (TrainConfig, "nudge"): positive_bad(),
    (TrainConfig, "momentum"): unit_interval_bad(),
    (TrainConfig, "epochs"): count_bad(1),
    (TrainConfig, "batch_size"): count_bad(1),
}


@pytest.mark.parametrize("cls, name", list(SETTINGS), ids=[f"{c.__name__}.{n}" for c, n in SETTINGS])
@FAST
@given(data=st.data())
def test_settings_refuse_bad_values_naming_the_field(cls, name, data):
    assert f"{cls.__name__}.{name}" in refused(lambda v: cls(**{name: v}), data.draw(SETTINGS[cls, name]))


@pytest.mark.parametrize("make, name", [
    (lambda: InferenceConfig(record="yes"), "record"),
    (lambda: InferenceConfig(compile=1), "compile"),
    (lambda: TemporalInferenceConfig(preconditioner="newton"), "preconditioner"),
    (lambda: TemporalInferenceConfig(compile=True), "compile"),
    (lambda: TrainConfig(optimizer="rmsprop"), "optimizer"),
])
def test_settings_refuse_bad_choices(make, name):
    assert name in refused(lambda _: make(), None)


def test_training_lr_inf_is_refused_as_nan_is():
    """The reported fault: lr = inf passed validation while NaN was refused."""
    for v in (math.inf, math.nan):
        message = refused(lambda x: TrainConfig(lr=x), v)
        assert "TrainConfig.lr" in message and repr(v) in message


# --------------------------------------------------------------------------- optimisers
OPTIMISERS = {
    "Adam.lr": (lambda v: Adam(lr=v), non_negative_bad()),
    "Adam.eps": (lambda v: Adam(eps=v), non_negative_bad()),
    "Adam.betas[0]": (lambda v: Adam(betas=(v, 0.999)), unit_interval_bad()),
    "Adam.betas[1]": (lambda v: Adam(betas=(0.9, v)), unit_interval_bad()),
    "SGD.lr": (lambda v: SGD(lr=v), non_negative_bad()),
    "SGD.momentum": (lambda v: SGD(momentum=v), unit_interval_bad()),
    "Adam.lr[1]": (lambda v: Adam(lr=[1e-3, v]), NON_FINITE | st.floats(max_value=-1e-9, allow_nan=False)),
}


@pytest.mark.parametrize("name", list(OPTIMISERS))
@FAST
@given(data=st.data())
def test_optimisers_refuse_bad_hyper_parameters(name, data):
    make, bad = OPTIMISERS[name]
    assert name in refused(make, data.draw(bad))


@FAST
@given(bad=NON_FINITE | st.floats(max_value=-1e-9, allow_nan=False))
def test_a_learning_rate_schedule_is_checked_at_every_value_it_sets(bad):
    """A schedule assigns ``opt.lr`` between epochs; a NaN there used to turn every weight into NaN."""
    opt = Adam(1e-3)
    w = [torch.ones(1, 2, 2)]
    opt.step(w, [torch.ones(1, 2, 2)])
    with pytest.raises(ConfigError, match=r"Adam\.lr"):
        opt.lr = bad
    assert opt.lr == 1e-3 and torch.isfinite(w[0]).all()  # the old rate stays; nothing was touched


# --------------------------------------------------------------------------- rules and compare_rules
RULE_CLASSES = [StandardPC, IncrementalPC, FixedPredictionPC]


@pytest.mark.parametrize("rule", RULE_CLASSES, ids=lambda c: c.__name__)
@FAST
@given(bad=positive_bad())
def test_rules_refuse_a_bad_nudge(rule, bad):
    assert f"{rule.__name__}.nudge" in refused(lambda v: rule(nudge=v), bad)


@pytest.mark.parametrize("rule", RULE_CLASSES, ids=lambda c: c.__name__)
def test_rules_refuse_a_non_config_inference_and_a_non_optimiser(rule):
    assert f"{rule.__name__}.inference" in refused(lambda v: rule(inference=v), {"steps": 3})
    net = PCNetwork.init([3, 4, 2])
    before = [p.clone() for p in net.parameters()]
    assert "optimizer" in refused(lambda v: rule().step(net, v, torch.zeros(2, 3), torch.zeros(2, 2)), "adam")
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))  # refused before any update


@pytest.fixture(scope="module")
def tiny_data():
    from pcsim.data import classification_split

    rng = np.random.default_rng(0)
    return classification_split(rng.normal(size=(16, 3)), np.arange(16) % 2, rng.normal(size=(8, 3)), np.arange(8) % 2)


COMPARE = {
    "rules": st.sampled_from([[], ["pc", "adam"], "pc", ["zil"]]),
    "probe_size": count_bad(1),
    "alignment_nudge": positive_bad(),
    "seed": count_bad(0),
    "training": st.sampled_from([{"lr": 1e-3}, None, InferenceConfig()]),
    "inference": st.sampled_from([{"steps": 2}, TrainConfig()]),
}


@pytest.mark.parametrize("name", list(COMPARE))
@FAST
@given(data=st.data())
def test_compare_rules_refuses_bad_arguments_before_training(name, data, tiny_data):
    net = PCNetwork.init([3, 4, 2])
    args = {"rules": ["pc"], "training": TrainConfig(epochs=1, batch_size=8)}
    args[name] = data.draw(COMPARE[name])
    before = [p.clone() for p in net.parameters()]
    assert name in refused(lambda _: compare_rules(net, tiny_data, progress=False, **args), None)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))  # refused before training


# --------------------------------------------------------------------------- bad arrays
BAD_ARRAYS = st.sampled_from([
    ("nan", lambda B, n: torch.full((B, n), math.nan)),
    ("inf", lambda B, n: torch.full((B, n), math.inf)),
    ("overflow", lambda B, n: torch.full((B, n), 1e300, dtype=torch.float64)),  # finite in float64, not float32
    ("shape", lambda B, n: torch.zeros(B, n + 1)),
    ("rank", lambda B, n: torch.zeros(n)),
    ("empty", lambda B, n: torch.zeros(0, n)),
    ("text", lambda B, n: [["a"] * n] * B),
    ("none", lambda B, n: None),
    ("complex", lambda B, n: torch.zeros(B, n, dtype=torch.complex64)),
])


@pytest.mark.parametrize("rule", RULE_CLASSES, ids=lambda c: c.__name__)
@pytest.mark.parametrize("which", ["inputs", "target"])
@FAST
@given(bad=BAD_ARRAYS)
def test_rule_step_refuses_bad_arrays_naming_them(rule, which, bad):
    net = PCNetwork.init([3, 4, 2], seed=1)
    before = [p.clone() for p in net.parameters()]
    arrays = {"inputs": torch.zeros(5, 3), "target": torch.zeros(5, 2)}
    arrays[which] = bad[1](5, 3 if which == "inputs" else 2)
    with pytest.raises(DataError) as info:
        rule(InferenceConfig(steps=2)).step(net, Adam(1e-2), arrays["inputs"], arrays["target"])
    assert which in str(info.value)
    assert all(torch.equal(p, q) for p, q in zip(net.parameters(), before))  # refused before any update


@pytest.mark.parametrize("args, name, error", [
    (lambda net, st_: ("net", st_, InferenceConfig()), "net", ConfigError),
    (lambda net, st_: (net, [torch.zeros(1, 2, 3)], InferenceConfig()), "state", DataError),
    (lambda net, st_: (net, st_, {"steps": 3}), "config", ConfigError),
])
def test_relax_refuses_wrong_types_naming_them(args, name, error):
    from pcsim.inference import init_state, relax

    net = PCNetwork.init([3, 4, 2])
    assert name in refused(lambda _: relax(*args(net, init_state(net, torch.zeros(2, 3)))), None, error)
