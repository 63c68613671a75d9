"""Config validation: every bad input is a ConfigError naming the file and the dotted key."""

import dataclasses
import tomllib
from dataclasses import dataclass, field
from typing import Any, Literal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsim.config import (
    ExperimentConfig,
    config_to_dict,
    config_to_toml,
    from_dict,
    load_config,
)
from pcsim.errors import ConfigError

SOURCE = "configs/x.toml"


@dataclass(frozen=True, kw_only=True)
class Solver:
    tolerance: float = field(default=1e-6, metadata={"gt": 0})
    method: str = "euler"
    max_step: float = 1.0  # no range: infinity is a value ("no limit")


@dataclass(frozen=True, kw_only=True)
class Training:
    lr: float = field(default=0.1, metadata={"gt": 0})
    epochs: int = field(default=5, metadata={"ge": 1, "le": 1000})
    batch_size: int = field(default=32, metadata={"ge": 1})
    shuffle: bool = True
    optimizer: Literal["sgd", "adam"] = "sgd"
    momentum: float | None = field(default=None, metadata={"ge": 0, "lt": 1})
    sizes: tuple[int, ...] = field(default=(64, 32), metadata={"ge": 1, "nonempty": True})
    weights: list[float] = field(default=(1.0,), metadata={"ge": 0})
    labels: tuple[str, ...] = ()
    solver: Solver = field(default_factory=Solver)


@dataclass(frozen=True, kw_only=True)
class Config(ExperimentConfig):
    training: Training = field(default_factory=Training)
    name: str = "run"


def validate(data):
    return from_dict(Config, {"experiment": "some.module", **data}, source=SOURCE)


# --------------------------------------------------------------------------- from_dict


def test_defaults_and_conversions():
    cfg = validate({"training": {"lr": 1, "sizes": [3, 2, 1], "weights": [0, 2.5]}})
    assert cfg.training.lr == 1.0 and isinstance(cfg.training.lr, float)
    assert cfg.training.sizes == (3, 2, 1)
    assert cfg.training.weights == (0.0, 2.5)
    assert all(isinstance(w, float) for w in cfg.training.weights)
    assert cfg.training.momentum is None
    assert cfg.seed == 0 and cfg.device == "cpu"
    assert hash(cfg) == hash(validate({"training": {"lr": 1.0, "sizes": (3, 2, 1),
                                                    "weights": [0.0, 2.5]}}))
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.seed = 3  # type: ignore[misc]


@pytest.mark.parametrize(
    ("data", "fragments"),
    [
        ({"training": {"lrr": 0.1}},
         ["unknown key 'training.lrr'", "did you mean 'training.lr'?", "known keys: batch_size"]),
        ({"trainig": {}}, ["unknown key 'trainig'", "did you mean 'training'?"]),
        ({"training": {"solver": {"tol": 1.0}}}, ["unknown key 'training.solver.tol'"]),
        ({"training": {"lr": "fast"}}, ["key 'training.lr' must be a number, got string 'fast'"]),
        ({"training": {"epochs": True}}, ["key 'training.epochs' must be an integer, got boolean"]),
        ({"training": {"epochs": 2.0}}, ["key 'training.epochs' must be an integer, got float"]),
        ({"training": {"shuffle": 1}}, ["key 'training.shuffle' must be a boolean"]),
        ({"training": 3}, ["key 'training' must be a table, got integer 3"]),
        ({"training": {"sizes": 3}}, ["key 'training.sizes' must be an array of integers"]),
        ({"training": {"lr": -0.1}}, ["key 'training.lr' must be > 0, got -0.1"]),
        ({"training": {"lr": float("nan")}}, ["key 'training.lr' must be a number, got nan"]),
        ({"training": {"lr": float("inf")}}, ["key 'training.lr' must be a finite number, got inf"]),
        ({"training": {"weights": [1.0, float("inf")]}},
         ["key 'training.weights[1]' must be a finite number, got inf"]),
        ({"training": {"solver": {"max_step": float("nan")}}},
         ["key 'training.solver.max_step' must be a number, got nan"]),
        ({"training": {"epochs": 1001}}, ["key 'training.epochs' must be <= 1000, got 1001"]),
        ({"training": {"momentum": 1.0}}, ["key 'training.momentum' must be < 1, got 1.0"]),
        ({"training": {"sizes": [4, 0]}}, ["key 'training.sizes[1]' must be >= 1, got 0"]),
        ({"training": {"sizes": []}}, ["key 'training.sizes' must not be empty"]),
        ({"training": {"labels": ["a", 2]}}, ["key 'training.labels[1]' must be a string"]),
        ({"training": {"optimizer": "adamm"}},
         ["key 'training.optimizer' must be one of 'sgd', 'adam'", "did you mean 'adam'?"]),
        ({"training": {"solver": {"tolerance": 0}}},
         ["key 'training.solver.tolerance' must be > 0, got 0"]),
        ({"seed": -1}, ["key 'seed' must be >= 0, got -1"]),
        ({"device": "tpu"}, ["key 'device' must be one of 'cpu', 'cuda'"]),
    ],
)
def test_invalid_values_name_file_and_key(data, fragments):
    with pytest.raises(ConfigError) as info:
        validate(data)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: ")
    for fragment in fragments:
        assert fragment in message


def test_missing_required_key():
    with pytest.raises(ConfigError, match=r"^configs/x\.toml: missing required key 'experiment'$"):
        from_dict(Config, {"seed": 1}, source=SOURCE)


def test_post_init_checks_are_reported_with_the_file():
    @dataclass(frozen=True, kw_only=True)
    class Window(ExperimentConfig):
        start: int = 0
        stop: int = 1

        def __post_init__(self):
            if self.stop <= self.start:
                raise ConfigError("'stop' must be greater than 'start'")

    with pytest.raises(ConfigError, match=r"^configs/x\.toml: 'stop' must be greater"):
        from_dict(Window, {"experiment": "m", "start": 3, "stop": 2}, source=SOURCE)


def test_optional_field_must_default_to_none():
    @dataclass(frozen=True, kw_only=True)
    class Bad(ExperimentConfig):
        limit: int | None = 3

    with pytest.raises(TypeError, match="must mean None"):
        from_dict(Bad, {"experiment": "m"}, source=SOURCE)


# --------------------------------------------------------------------------- round trip


def test_round_trip_of_a_hand_written_config():
    cfg = validate({
        "seed": 7,
        "description": 'quotes " and \\ and\nnewline',
        "training": {"momentum": 0.9, "labels": ["a b", "ü"], "weights": [], "lr": 1e-5,
                     "solver": {"tolerance": 1e300, "max_step": float("inf"), "method": "rk4"}},
    })
    assert from_dict(Config, config_to_dict(cfg), source=SOURCE) == cfg
    text = config_to_toml(cfg)
    assert tomllib.loads(text) == config_to_dict(cfg)
    assert "[training.solver]" in text
    assert "momentum" not in config_to_toml(validate({}))  # None is written by omission


@st.composite
def configs(draw):
    solver = Solver(
        tolerance=draw(st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False)),
        method=draw(st.text(max_size=20)),
        max_step=draw(st.floats(allow_nan=False)),
    )
    training = Training(
        lr=draw(st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False)),
        epochs=draw(st.integers(1, 1000)),
        batch_size=draw(st.integers(1, 2**63 - 1)),
        shuffle=draw(st.booleans()),
        optimizer=draw(st.sampled_from(["sgd", "adam"])),
        momentum=draw(st.none() | st.floats(0, 1, exclude_max=True)),
        sizes=tuple(draw(st.lists(st.integers(1, 10**6), min_size=1, max_size=5))),
        weights=tuple(draw(st.lists(st.floats(min_value=0, allow_nan=False, allow_infinity=False), max_size=5))),
        labels=tuple(draw(st.lists(st.text(max_size=10), max_size=4))),
        solver=solver,
    )
    return Config(
        experiment=draw(st.from_regex(r"[a-z_][a-z0-9_]{0,8}(\.[a-z_][a-z0-9_]{0,8}){0,2}",
                                      fullmatch=True)),
        seed=draw(st.integers(0, 2**63 - 1)),
        device=draw(st.sampled_from(["cpu", "cuda"])),
        description=draw(st.text(max_size=40)),
        training=training,
        name=draw(st.text(max_size=10)),
    )


@settings(max_examples=150, deadline=None)
@given(configs())
def test_round_trip_property(cfg):
    as_dict = config_to_dict(cfg)
    assert from_dict(Config, as_dict, source=SOURCE) == cfg
    assert tomllib.loads(config_to_toml(cfg)) == as_dict


# --------------------------------------------------------------------------- load_config


TINY_TOML = """\
experiment = "{module}"
seed = 3

[training]
lr = 0.5
epochs = 4
"""


def test_load_config_validates_into_the_module_config(tiny_experiment, write_config):
    path = write_config(TINY_TOML.format(module=tiny_experiment))
    cfg = load_config(path)
    assert type(cfg).__module__ == tiny_experiment and type(cfg).__name__ == "Config"
    assert (cfg.seed, cfg.training.lr, cfg.training.epochs) == (3, 0.5, 4)
    assert cfg.network.sizes == (4, 3)  # section absent from the file: defaults


def test_overrides_change_values(tiny_experiment, write_config):
    path = write_config(TINY_TOML.format(module=tiny_experiment))
    cfg = load_config(
        path,
        ["training.lr=1e-3", "network.sizes=[8, 4, 2]", "training.optimizer=adam",
         "network.activation = \"relu\"", "training.clip=2", "seed=9"],
        device="cpu",
    )
    assert cfg.training.lr == 1e-3
    assert cfg.network.sizes == (8, 4, 2)
    assert cfg.training.optimizer == "adam"  # a bare word is a string
    assert cfg.network.activation == "relu"
    assert cfg.training.clip == 2.0
    assert cfg.seed == 9


@pytest.mark.parametrize(
    ("override", "fragments"),
    [
        ("training.lrr=0.1", ["override 'training.lrr=0.1'", "unknown key 'training.lrr'",
                              "did you mean 'training.lr'?"]),
        ("training.lr=-1", ["override 'training.lr=-1'", "key 'training.lr' must be > 0"]),
        ("training.lr.x=1", ["key 'training.lr' is not a table"]),
        ("training.epochs=[1,", ["override 'training.epochs=[1,'", "cannot parse"]),
        ("training.lr", ["must look like KEY=VALUE"]),
        ("network.sizes=[1, 0]", ["key 'network.sizes[1]' must be >= 1"]),
    ],
)
def test_bad_overrides_are_rejected(tiny_experiment, write_config, override, fragments):
    path = write_config(TINY_TOML.format(module=tiny_experiment))
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert str(info.value).startswith(str(path))
    for fragment in fragments:
        assert fragment in str(info.value)


def test_unknown_key_in_file_names_file_and_key(tiny_experiment, write_config):
    path = write_config(TINY_TOML.format(module=tiny_experiment) + "batchsize = 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(path) in str(info.value)
    assert "unknown key 'training.batchsize'; did you mean 'training.batch_size'?" in str(
        info.value
    )


def test_missing_experiment_module(write_config):
    path = write_config('experiment = "no_such_pkg.experiment"\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: key 'experiment': ")
    assert "no module named 'no_such_pkg.experiment'" in str(info.value)


def test_module_without_config_class(write_module, write_config):
    module = write_module('"""Not an experiment."""\nx = 1\n')
    path = write_config(f'experiment = "{module}"\n')
    with pytest.raises(ConfigError, match="key 'experiment'.*does not define a class Config"):
        load_config(path)


def test_module_failing_to_import(write_module, write_config):
    module = write_module("import no_such_dependency_xyz\n")
    path = write_config(f'experiment = "{module}"\n')
    with pytest.raises(ConfigError, match="key 'experiment'.*failed to import.*no_such_dep"):
        load_config(path)


def test_toml_syntax_error_names_file_and_line(write_config):
    path = write_config('experiment = "m"\nseed = 1\n[training\nlr = 1\n')
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: invalid TOML")
    assert "line 3" in str(info.value)


def test_missing_file_and_missing_experiment_key(tmp_path, write_config):
    with pytest.raises(ConfigError, match="no such config file"):
        load_config(tmp_path / "absent.toml")
    with pytest.raises(ConfigError, match="missing required key 'experiment'"):
        load_config(write_config("seed = 1\n"))


def test_check_ranges_applies_the_field_metadata_to_objects_built_in_python():
    """The engine's dataclasses state each range once, as field metadata: a config file and a
    Python constructor are refused by the same bound, and NaN fails every bound."""
    from pcsim.config import check_ranges
    from pcsim.inference import InferenceConfig
    from pcsim.training import TrainConfig

    for cls, name, bad in [(InferenceConfig, "dt", -1.0), (InferenceConfig, "dt", float("nan")),
                           (InferenceConfig, "momentum", 1.0), (InferenceConfig, "steps", -1),
                           (TrainConfig, "lr", 0.0), (TrainConfig, "epochs", 0)]:
        with pytest.raises(ValueError, match=rf"{cls.__name__}\.{name} must be"):
            cls(**{name: bad})
        cls()  # the defaults obey their own ranges

    @dataclass(frozen=True)
    class Widths:
        sizes: tuple[int, ...] = field(default=(1, 2), metadata={"ge": 1})

    check_ranges(Widths())
    with pytest.raises(ValueError, match=r"Widths\.sizes must be >= 1, got 0"):
        check_ranges(Widths(sizes=(3, 0)))


def test_a_partial_table_keeps_the_experiments_own_section_defaults():
    """An experiment may default a section to other values than the section class's own
    (default_factory); a table giving some keys keeps those values for the keys it leaves out,
    nested tables merged key by key, and the result equals the fully written-out config."""

    @dataclass(frozen=True)
    class Inner:
        a: int = 1
        b: float = 2.0

    @dataclass(frozen=True)
    class Section:
        x: int = 0
        y: str = "class"
        inner: Inner = field(default_factory=Inner)

    @dataclass(frozen=True)
    class Top:
        sec: Section = field(default_factory=lambda: Section(x=5, y="experiment", inner=Inner(a=7, b=9.0)))

    got = from_dict(Top, {"sec": {"x": 6, "inner": {"b": 3.0}}}, source="t.toml")
    assert got.sec == Section(x=6, y="experiment", inner=Inner(a=7, b=3.0))
    assert from_dict(Top, {}, source="t.toml") == Top()
    with pytest.raises(ConfigError, match=r"t\.toml: key 'sec\.inner\.a' must be an integer"):
        from_dict(Top, {"sec": {"inner": {"a": "seven"}}}, source="t.toml")


@dataclass(frozen=True)
class _Selection:
    where: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _WithSelection:
    neurons: _Selection = field(default_factory=_Selection)


def test_a_free_table_holds_scalars_and_arrays_and_round_trips_through_toml():
    cfg = from_dict(_WithSelection, {"neurons": {"where": {"quality": "good", "depth": [1, 2.5], "ok": True}}},
                    source="x.toml")
    assert cfg.neurons.where == {"quality": "good", "depth": (1, 2.5), "ok": True}
    assert from_dict(_WithSelection, tomllib.loads(config_to_toml(cfg)), source="y.toml") == cfg
    assert from_dict(_WithSelection, {}, source="z.toml").neurons.where == {}
    for bad, key in (({"quality": {"a": 1}}, "neurons.where.quality"), ({"depth": []}, "neurons.where.depth"),
                     ("good", "neurons.where")):
        with pytest.raises(ConfigError, match=rf"x.toml: key '{key}'"):
            from_dict(_WithSelection, {"neurons": {"where": bad}}, source="x.toml")
