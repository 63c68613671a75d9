"""Experiment configs: TOML files validated into typed, frozen dataclasses.

An experiment declares its settings as a frozen dataclass deriving from
:class:`ExperimentConfig`, with one nested dataclass per TOML table. Validation is driven by
the type hints, so the dataclass is the single statement of what a config may hold:

- scalars: ``int`` (a boolean is not an integer), ``float`` (integers are accepted and
  converted; NaN is refused, and so is ±inf where the field has a range), ``str``, ``bool``;
- arrays: ``tuple[int, ...]``, ``tuple[float, ...]``, ``tuple[str, ...]`` (``list[...]`` is
  accepted as a spelling too); values are stored as tuples so the config stays hashable;
- ``typing.Literal[...]`` choices, ``X | None`` (absent from the file means ``None``, so
  such a field must default to ``None``), and nested dataclasses (TOML tables);
- ``dict[str, Any]``: a table of free keys whose values are scalars or arrays of scalars
  (a selection such as ``where = {quality = "good"}``); arrays are stored as tuples.

Ranges come from field metadata, ``field(default=0.1, metadata={"gt": 0})``, with the keys
``ge``, ``gt``, ``le``, ``lt`` (applied to a scalar, or to each element of an array) and
``nonempty`` (arrays and strings). Every error is a :class:`~pcsim.errors.ConfigError`
whose message names the file and the dotted key, e.g.
``configs/x.toml: key 'training.lr' must be > 0, got -0.1``.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import importlib
import math
import operator
import re
import tomllib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal, TypeVar

from pcsim.errors import ConfigError

__all__ = [
    "CheckpointSection",
    "ExperimentConfig",
    "SweepSection",
    "check_device",
    "check_ranges",
    "ConfigField",
    "config_fields",
    "config_to_dict",
    "config_to_toml",
    "from_dict",
    "import_experiment_module",
    "key_field",
    "load_config",
    "load_experiment",
    "parse_grid",
]

C = TypeVar("C")

_RANGES: dict[str, tuple[Callable[[Any, Any], bool], str]] = {
    "ge": (operator.ge, ">="),
    "gt": (operator.gt, ">"),
    "le": (operator.le, "<="),
    "lt": (operator.lt, "<"),
}
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
_TOML_ESCAPES = {
    '"': '\\"',
    "\\": "\\\\",
    "\b": "\\b",
    "\t": "\\t",
    "\n": "\\n",
    "\f": "\\f",
    "\r": "\\r",
}


@dataclass(frozen=True, kw_only=True)
class CheckpointSection:
    """The ``[checkpoint]`` table of every config: how often a ``pcsim run`` saves the state of
    its training so that ``pcsim run ... --resume`` continues it (:mod:`pcsim.checkpoint`).
    ``every``: epochs between checkpoints of each training the run does (0: never; a training's
    end is always saved while it is not 0); a checkpoint costs one write of the model,
    optimiser and records, a few milliseconds for the shipped networks. It does not change a
    run's results, so it is the one setting a resume may change."""

    every: int = field(default=1, metadata={"ge": 0, "units": "epochs"})


@dataclass(frozen=True, kw_only=True)
class SweepSection:
    """The ``[sweep]`` table: a grid of config values that ``pcsim sweep CONFIG`` runs (its
    command-line options, where given, replace these). ``grid``: one ``"KEY=V1,V2,..."`` string
    per swept key, in the syntax of ``--grid`` (each value a TOML literal, as ``--set`` takes it).
    ``seeds``: run every point with seeds ``seed, seed+1, ..., seed+seeds-1`` (a ``seed``
    dimension). ``out``: the sweep's directory (default ``runs/<config stem>_sweep``).
    ``scheduler``: ``"local"`` (a Dask LocalCluster of worker processes on this machine) or the
    address of a running Dask scheduler (``tcp://host:8786``). ``workers``: the local cluster's
    worker processes (default: the CPU cores this process may use). ``retries``: how many times a
    point is started again after its worker process died (Dask's allowed-failures) before it is
    reported as failed. ``batch``: run the points that differ only in keys the experiment
    batches (its ``BATCHED``, e.g. seeds and learning rates of one PC ensemble) as one run of
    its ``run_batched``, each point still written to its own directory (false: every point its
    own run). ``pcsim run`` runs the config itself and ignores this table."""

    grid: tuple[str, ...] = ()
    seeds: int | None = field(default=None, metadata={"ge": 1})
    out: str | None = None
    scheduler: str = field(default="local", metadata={"nonempty": True})
    workers: int | None = field(default=None, metadata={"ge": 1})
    retries: int = field(default=2, metadata={"ge": 0})
    batch: bool = True


@dataclass(frozen=True, kw_only=True)
class ExperimentConfig:
    """Settings every experiment shares; experiments subclass it and add their sections.

    ``experiment`` is the dotted path of the module that runs the config (it defines
    ``Config``, ``run`` and ``plot``), ``seed`` seeds every random generator the run
    creates, ``device`` is where tensors live, and ``description`` is the one line that
    ``pcsim list`` shows; ``checkpoint`` (:class:`CheckpointSection`) says how often a run
    saves its training state; ``sweep`` the grid ``pcsim sweep`` runs (:class:`SweepSection`;
    absent: none). Subclasses must be ``@dataclass(frozen=True, kw_only=True)``.
    """

    experiment: str = field(metadata={"nonempty": True})
    seed: int = field(default=0, metadata={"ge": 0})
    device: Literal["cpu", "cuda"] = "cpu"
    description: str = ""
    checkpoint: CheckpointSection = field(default_factory=CheckpointSection)
    sweep: SweepSection | None = None

    def check_inputs(self) -> None:
        """Check what the config names outside itself (a file that must exist), raising
        :class:`ConfigError` naming the key. ``pcsim run`` calls it after validation and before
        anything is written; reading a config (``pcsim show``, :func:`load_config`) does not,
        so a config whose file the user has not given yet can still be inspected. No-op here."""


# --------------------------------------------------------------------------- validation


def from_dict(cls: type[C], data: Mapping[str, Any], *, source: str) -> C:
    """Validate a plain mapping (a parsed TOML document) into the config dataclass ``cls``.

    Every key of ``data`` must be a field of ``cls`` (nested mappings fill nested dataclass
    fields), every value must match its field's type hint and range metadata, and every
    field without a default must be present. Absent keys take the field's default. Arrays
    become tuples and integers given for float fields become floats. Any violation raises
    :class:`ConfigError` whose message starts with ``source`` (normally the file name) and
    names the dotted key, with a close match suggested for a misspelt key.
    """
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"from_dict needs a dataclass type, got {cls!r}")
    if not isinstance(data, Mapping):
        raise ConfigError(f"{_where(source)}a config must be a table, got {_describe(data)}")
    return _from_mapping(cls, data, source, prefix="")


def _from_mapping(cls: type[C], data: Mapping[str, Any], source: str, prefix: str) -> C:
    fields = _init_fields(cls)
    hints = _field_hints(cls)
    for key in data:
        if key not in fields:
            raise ConfigError(_unknown_key_message(_where(source), prefix, str(key), fields))
    values: dict[str, Any] = {}
    for name, fld in fields.items():
        dotted = prefix + name
        if name in data:
            value = data[name]
            default = _default_section(fld)
            if default is not None and isinstance(value, Mapping):
                # a partial table fills the rest from the experiment's own default section
                # (its default_factory), not from the section class's defaults
                value = _deep_merge(config_to_dict(default), value)
            values[name] = _check(value, hints[name], fld.metadata, dotted, source)
        elif _is_required(fld):
            if not _is_optional(hints[name]):
                raise ConfigError(f"{_where(source)}missing required key '{dotted}'")
            values[name] = None
    try:
        return cls(**values)
    except ValueError as exc:  # a __post_init__ cross-field check (ConfigError included)
        table = f"table '{prefix[:-1]}': " if prefix else ""
        raise ConfigError(f"{_where(source)}{table}{exc}") from exc


def _default_section(fld: dataclasses.Field[Any]) -> Any:
    """The default of ``fld`` when it is a dataclass instance (a config section), else None."""
    if fld.default_factory is not dataclasses.MISSING:
        default = fld.default_factory()
    elif fld.default is not dataclasses.MISSING:
        default = fld.default
    else:
        return None
    return default if dataclasses.is_dataclass(default) and not isinstance(default, type) else None


def _deep_merge(base: Mapping[str, Any], table: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``table``'s keys put over it, nested tables merged key by key."""
    out = dict(base)
    for key, value in table.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _check(value: Any, hint: Any, meta: Mapping[str, Any], key: str, source: str) -> Any:
    """Return ``value`` converted to ``hint`` (tuples, floats), or raise ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        return _check(value, _optional_inner(hint), meta, key, source)
    if origin is Literal:
        choices = typing.get_args(hint)
        if any(type(value) is type(choice) and value == choice for choice in choices):
            return value
        shown = ", ".join(repr(choice) for choice in choices)
        message = f"{_where(source)}key '{key}' must be one of {shown}, got {_describe(value)}"
        if isinstance(value, str):
            strings = [c for c in choices if isinstance(c, str)]
            close = difflib.get_close_matches(value, strings, n=1)
            if close:
                message += f"; did you mean {close[0]!r}?"
        raise ConfigError(message)
    if origin in (list, tuple):
        element = _element_type(hint)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(
                f"{_where(source)}key '{key}' must be {_type_name(hint)}, got {_describe(value)}"
            )
        if meta.get("nonempty") and not value:
            raise ConfigError(f"{_where(source)}key '{key}' must not be empty")
        return tuple(
            _check(item, element, meta, f"{key}[{i}]", source) for i, item in enumerate(value)
        )
    if origin is dict:
        return _check_free_table(value, key, source)
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        if isinstance(value, hint):  # a section built in Python: validate it all the same
            value = config_to_dict(value)
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"{_where(source)}key '{key}' must be a table, got {_describe(value)}"
            )
        return _from_mapping(hint, value, source, prefix=key + ".")
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok:
            value = float(value)
            if math.isnan(value):
                raise ConfigError(f"{_where(source)}key '{key}' must be a number, got nan")
    elif hint is str:
        ok = isinstance(value, str)
        if ok and meta.get("nonempty") and not value:
            raise ConfigError(f"{_where(source)}key '{key}' must not be empty")
    else:
        raise TypeError(f"config key '{key}' has unsupported type {hint!r}")
    if not ok:
        raise ConfigError(
            f"{_where(source)}key '{key}' must be {_type_name(hint)}, got {_describe(value)}"
        )
    problem = _range_problem(value, meta)
    if problem:
        raise ConfigError(f"{_where(source)}key '{key}' {problem}")
    return value


def _check_free_table(value: Any, key: str, source: str) -> dict[str, Any]:
    """A ``dict[str, Any]`` field: a table of free keys, each a scalar or an array of scalars."""
    if not isinstance(value, Mapping):
        raise ConfigError(f"{_where(source)}key '{key}' must be a table, got {_describe(value)}")
    out: dict[str, Any] = {}
    for name, item in value.items():
        items = item if isinstance(item, (list, tuple)) else (item,)
        if not items or not all(isinstance(v, (str, int, float, bool)) for v in items):
            raise ConfigError(f"{_where(source)}key '{key}.{name}' must be a string, number or boolean, or a "
                              f"non-empty array of them, got {_describe(item)}")
        out[str(name)] = tuple(item) if isinstance(item, (list, tuple)) else item
    return out


def _range_problem(value: Any, meta: Mapping[str, Any]) -> str | None:
    """What is wrong with the scalar ``value`` under the range metadata ``meta`` ("must be > 0,
    got -1"), or None. NaN fails every bound (every comparison with it is false); a ranged
    number must also be finite (``lr = inf`` satisfies ``gt = 0`` but is no setting)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isfinite(value) \
            and any(name in meta for name in _RANGES):
        return f"must be a finite number, got {value!r}"
    for name, (holds, symbol) in _RANGES.items():
        if name in meta and not isinstance(value, (bool, str)) and not holds(value, meta[name]):
            return f"must be {symbol} {meta[name]!r}, got {value!r}"
    return None


def check_ranges(obj: Any) -> None:
    """Check every field of the dataclass instance ``obj`` against its range metadata (``ge``,
    ``gt``, ``le``, ``lt``, applied to a number or to each element of a tuple/list); raise
    :class:`ConfigError` naming ``Class.field``. A field with a range must hold finite numbers,
    as in a config file. The engine's dataclasses call it in ``__post_init__`` so that
    objects built in Python obey the same ranges a config file is validated against (one
    statement of each range: the field's metadata)."""
    hints = _field_hints(type(obj))
    for fld in dataclasses.fields(obj):
        if not any(key in fld.metadata for key in _RANGES):
            continue
        value = getattr(obj, fld.name)
        items = value if isinstance(value, (tuple, list)) else (value,)
        hint = hints.get(fld.name)
        integer = hint is int or (typing.get_origin(hint) in (list, tuple) and _element_type(hint) is int)
        for item in items:
            where = f"{type(obj).__name__}.{fld.name}"
            if isinstance(item, bool) or not isinstance(item, (int, float)):
                raise ConfigError(f"{where} must be a number, got {item!r}")
            if integer and not isinstance(item, int):
                raise ConfigError(f"{where} must be an integer, got {item!r}")
            problem = _range_problem(item, fld.metadata)
            if problem:
                raise ConfigError(f"{where} {problem}")


@cache
def _field_hints(cls: type) -> dict[str, Any]:
    """Resolved type hints of the init fields of ``cls``, checked once per class."""
    try:
        hints = typing.get_type_hints(cls)
    except NameError as exc:
        raise TypeError(
            f"cannot resolve the type hints of {cls.__qualname__} ({exc}); "
            "define config dataclasses at module level"
        ) from exc
    resolved = {name: hints[name] for name in _init_fields(cls)}
    for name, hint in resolved.items():
        fld = _init_fields(cls)[name]
        if _is_optional(hint):
            _optional_inner(hint)
            if not (_is_required(fld) or fld.default is None):
                raise TypeError(
                    f"{cls.__qualname__}.{name} is optional but does not default to None; "
                    "TOML has no null, so an absent key must mean None"
                )
    return resolved


def _init_fields(cls: type) -> dict[str, dataclasses.Field[Any]]:
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _is_required(fld: dataclasses.Field[Any]) -> bool:
    return fld.default is dataclasses.MISSING and fld.default_factory is dataclasses.MISSING


def _is_optional(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in (
        typing.get_args(hint)
    )


def _optional_inner(hint: Any) -> Any:
    args = typing.get_args(hint)
    inner = [a for a in args if a is not type(None)]
    if len(inner) != 1 or len(args) != 2:
        raise TypeError(f"unsupported union {hint!r}: only 'X | None' is allowed in configs")
    return inner[0]


def _element_type(hint: Any) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) is tuple:
        if len(args) != 2 or args[1] is not Ellipsis:
            raise TypeError(f"unsupported array type {hint!r}: use tuple[X, ...]")
    elif len(args) != 1:
        raise TypeError(f"unsupported array type {hint!r}: use list[X]")
    return args[0]


def _type_name(hint: Any) -> str:
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string"}
    if hint in names:
        return names[hint]
    if typing.get_origin(hint) in (list, tuple):
        inner = _type_name(_element_type(hint)).split(" ", 1)[-1]
        return f"an array of {inner}s"
    if typing.get_origin(hint) is dict:
        return "a table of values"
    return repr(hint)


def _describe(value: Any) -> str:
    """A value as a TOML user sees it: its TOML type, then its (shortened) repr."""
    kinds = {bool: "boolean", int: "integer", float: "float", str: "string"}
    if isinstance(value, Mapping):
        return "a table"
    kind = "array" if isinstance(value, (list, tuple)) else kinds.get(type(value))
    kind = kind or type(value).__name__
    shown = repr(list(value) if isinstance(value, tuple) else value)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{kind} {shown}"


def _unknown_key_message(where: str, prefix: str, key: str, fields: Mapping[str, Any]) -> str:
    known = sorted(fields)
    message = f"{where}unknown key '{prefix}{key}'"
    close = difflib.get_close_matches(key, known, n=1)
    if close:
        message += f"; did you mean '{prefix}{close[0]}'?"
    if known:
        return message + f" (known keys: {', '.join(known)})"
    return message + " (this table takes no keys)"


def _where(source: str) -> str:
    return f"{source}: " if source else ""


# --------------------------------------------------------------------------- loading


def load_config(
    path: str | Path, overrides: Sequence[str] = (), device: str | None = None
) -> ExperimentConfig:
    """The validated config of :func:`load_experiment` (same arguments, same errors)."""
    return load_experiment(path, overrides, device)[1]


def load_experiment(
    path: str | Path, overrides: Sequence[str] = (), device: str | None = None
) -> tuple[types.ModuleType, ExperimentConfig]:
    """Read a TOML config, apply ``--set`` overrides, and validate it into its experiment's Config;
    return ``(experiment module, config)``, the module imported and checked once.

    ``overrides`` are ``"dotted.key=value"`` strings whose value is a TOML literal
    (``1e-3``, ``[1, 2]``, ``true``, ``"adam"``; a bare word such as ``adam`` is taken as a
    string). ``device``, when given, overrides the config's ``device``. The (overridden)
    ``experiment`` key names a module that is imported and whose ``Config`` class validates
    the whole document. A missing file, a TOML syntax error (with its line), an unknown or
    mistyped key (in the file or in an override) and an unimportable experiment module are
    all raised as :class:`ConfigError` naming the file and the key.
    """
    path = Path(path)
    source = str(path)
    data = _read_toml(path)
    parsed = [_parse_override(text, source) for text in overrides]
    if device is not None:
        parsed.append((("device",), device, f"--device {device}"))

    experiment = data.get("experiment")
    for keys, value, _ in parsed:
        if keys == ("experiment",):
            experiment = value
    if experiment is None:
        raise ConfigError(f"{source}: missing required key 'experiment'")
    if not isinstance(experiment, str):
        raise ConfigError(
            f"{source}: key 'experiment' must be a string, got {_describe(experiment)}"
        )
    module = import_experiment_module(experiment, source=source)
    config_cls: type[ExperimentConfig] = module.Config

    for keys, value, text in parsed:
        _check_override(config_cls, keys, value, f"{source}: override '{text}'")
        node = data
        for depth, key in enumerate(keys[:-1]):
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                dotted = ".".join(keys[: depth + 1])
                raise ConfigError(
                    f"{source}: key '{dotted}' must be a table, got {_describe(node)}"
                )
        node[keys[-1]] = value
    return module, from_dict(config_cls, data, source=source)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such config file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:  # the message carries "(at line L, column C)"
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def _parse_override(text: str, source: str) -> tuple[tuple[str, ...], Any, str]:
    """Split ``"a.b=value"`` into its key path and its value parsed as a TOML literal."""
    key, sep, raw = text.partition("=")
    keys = tuple(part.strip() for part in key.split("."))
    if not sep or not all(keys):
        raise ConfigError(
            f"{source}: override {text!r} must look like KEY=VALUE, e.g. training.lr=0.01"
        )
    raw = raw.strip()
    try:
        value = tomllib.loads(f"value = {raw}")["value"]
    except tomllib.TOMLDecodeError as exc:
        if raw[:1] in ('"', "'", "[", "{"):
            raise ConfigError(
                f"{source}: override '{text}': cannot parse the value as TOML ({exc})"
            ) from None
        value = raw  # a bare word such as adam or pcsim.experiments.x
    return keys, value, text


def _check_override(
    cls: type, keys: tuple[str, ...], value: Any, label: str
) -> None:
    """Check that an override's key exists in ``cls`` and that its value fits the field."""
    fld, hint, owner = _resolve_key(cls, keys, label)
    _check(value, hint, fld.metadata, ".".join(keys), label)


def _resolve_key(cls: type, keys: tuple[str, ...], label: str) -> tuple[dataclasses.Field[Any], Any, type]:
    """The field that the dotted key ``keys`` names in the config class ``cls``: ``(field, its
    type hint, the dataclass that declares it)``; an unknown key, or a key below a field that is
    not a table, raises :class:`ConfigError` starting with ``label``."""
    current = cls
    for depth, key in enumerate(keys):
        prefix = "".join(k + "." for k in keys[:depth])
        fields = _init_fields(current)
        if key not in fields:
            raise ConfigError(_unknown_key_message(f"{label}: ", prefix, key, fields))
        hint = _field_hints(current)[key]
        if depth == len(keys) - 1:
            return fields[key], hint, current
        inner = _optional_inner(hint) if _is_optional(hint) else hint
        if not (isinstance(inner, type) and dataclasses.is_dataclass(inner)):
            raise ConfigError(
                f"{label}: key '{prefix + key}' is not a table, "
                f"so '{'.'.join(keys)}' does not exist"
            )
        current = inner
    raise ConfigError(f"{label}: empty key")


def key_field(cls: type, key: str) -> ConfigField:
    """What the dotted ``key`` of the config class ``cls`` is, as ``pcsim show`` describes it
    (:class:`ConfigField`; ``value`` is its default as TOML, "" when none): used to label a swept
    key with its units (field metadata ``units``) and meaning. An unknown key raises
    :class:`ConfigError` naming it."""
    fld, hint, owner = _resolve_key(cls, tuple(key.split(".")), f"key '{key}'")
    row = _field_row(owner, fld.name, fld, hint, _field_default(fld), "")
    return dataclasses.replace(row, key=key)


def batch_signature(config: ExperimentConfig, keys: Sequence[str]) -> str:
    """What configs must share to run as one batch: ``config`` with the dotted ``keys`` left out
    (e.g. ``("seed", "training.lr")``, an experiment's ``BATCHED``), as a string; two configs
    that differ only in ``keys`` have the same signature."""
    doc = dataclasses.asdict(config)
    for key in keys:
        *path, last = key.split(".")
        table = doc
        for name in path:
            table = table.get(name) if isinstance(table, dict) else None
        if isinstance(table, dict):
            table.pop(last, None)
    return repr(doc)


def _field_default(fld: dataclasses.Field[Any]) -> Any:
    if fld.default is not dataclasses.MISSING:
        return fld.default
    if fld.default_factory is not dataclasses.MISSING:
        return fld.default_factory()
    return None


def parse_grid(text: str, source: str = "") -> tuple[str, tuple[Any, ...], tuple[str, ...]]:
    """Split one grid axis ``"KEY=V1,V2,..."`` (``--grid`` and the ``[sweep]`` table's ``grid``)
    into ``(key, values, overrides)``: the dotted key, the values parsed as TOML literals exactly
    as ``--set`` parses them (a bare word is a string), and one ``"KEY=VALUE"`` override string
    per value, for :func:`load_experiment`. Commas inside brackets or quotes belong to the value
    (``network.hidden=[64,64],[128]`` has two values). A missing ``=``, an empty value or a value
    given twice raises :class:`ConfigError` naming the key; whether the key exists and each
    value fits it is checked when the overrides are applied."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or not all(part.strip() for part in key.split(".")):
        raise ConfigError(f"{_where(source)}grid {text!r} must look like KEY=V1,V2,..., "
                          "e.g. training.lr=0.001,0.01")
    pieces, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(raw):
        if quote:
            quote = "" if ch == quote and raw[i - 1] != "\\" else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            pieces.append(raw[start:i])
            start = i + 1
    pieces.append(raw[start:])
    overrides, values = [], []
    for piece in pieces:
        if not piece.strip():
            raise ConfigError(f"{_where(source)}grid '{key}': empty value in {raw!r}")
        override = f"{key}={piece.strip()}"
        _, value, _ = _parse_override(override, source)
        if any(type(value) is type(v) and value == v for v in values):
            raise ConfigError(f"{_where(source)}grid '{key}': value {piece.strip()} is given twice")
        overrides.append(override)
        values.append(value)
    return key, tuple(values), tuple(overrides)


def import_experiment_module(name: str, *, source: str = "") -> types.ModuleType:
    """Import the experiment module ``name`` and check that it is one: it defines a ``Config``
    class derived from :class:`ExperimentConfig` and callables ``run`` and ``plot``.

    A module that cannot be found or fails to import (a syntax error, a missing optional
    dependency such as brian2), or lacks one of the three names, is reported as a
    :class:`ConfigError` naming ``source`` and the key ``experiment``, so a typo in a config
    reads as a config problem rather than as a traceback.
    """
    where = f"{_where(source)}key 'experiment': "
    if not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", name):
        raise ConfigError(f"{where}{name!r} is not a dotted module path such as 'pkg.module'")
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            raise ConfigError(f"{where}no module named '{name}'") from exc
        raise ConfigError(f"{where}module '{name}' failed to import: {exc}") from exc
    except (ImportError, SyntaxError) as exc:
        raise ConfigError(f"{where}module '{name}' failed to import: {exc}") from exc
    config_cls = getattr(module, "Config", None)
    if not (isinstance(config_cls, type) and issubclass(config_cls, ExperimentConfig)):
        raise ConfigError(
            f"{where}module '{name}' does not define a class Config derived from "
            "pcsim.config.ExperimentConfig"
        )
    missing = [attr for attr in ("run", "plot") if not callable(getattr(module, attr, None))]
    if missing:
        raise ConfigError(
            f"{where}module '{name}' is not a pcsim experiment: "
            f"it defines no {' and no '.join(f'{attr}()' for attr in missing)}"
        )
    return module


def check_device(device: str, *, source: str = "") -> None:
    """Raise :class:`ConfigError` if ``device`` is ``"cuda"`` and torch sees no CUDA device.

    Called at run time (not during validation) so that a config written on a GPU machine
    still validates elsewhere. Torch is imported only when CUDA is requested.
    """
    if device != "cuda":
        return
    import torch

    if not torch.cuda.is_available():
        raise ConfigError(
            f"{_where(source)}key 'device' is 'cuda' but torch finds no CUDA device; "
            "run with --device cpu"
        )


# --------------------------------------------------------------------------- writing


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """Return a config dataclass as plain nested dicts, lists and scalars.

    The inverse of :func:`from_dict`: ``from_dict(type(cfg), config_to_dict(cfg)) == cfg``.
    Tuples become lists and fields holding ``None`` are left out (TOML has no null; an
    absent optional key reads back as ``None``), so the result is also what
    :func:`config_to_toml` writes and ``tomllib`` reads back.
    """
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_to_dict needs a config dataclass instance, got {cfg!r}")
    out: dict[str, Any] = {}
    for name in _init_fields(type(cfg)):
        value = getattr(cfg, name)
        if value is not None:
            out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    return copy.copy(value)


def config_to_toml(cfg: Any) -> str:
    """Return a config dataclass as a TOML document that loads back to the same config.

    Top-level keys come first, then one ``[table]`` per nested section (in field order),
    so ``tomllib.loads(config_to_toml(cfg)) == config_to_dict(cfg)``. Used to store the
    config in a result's attrs and as ``config.toml`` beside the results.
    """
    lines: list[str] = []
    _write_table(config_to_dict(cfg), (), lines)
    return "\n".join(lines) + "\n"


def _write_table(table: Mapping[str, Any], path: tuple[str, ...], lines: list[str]) -> None:
    if path:
        if lines:
            lines.append("")
        lines.append("[" + ".".join(_toml_key(k) for k in path) + "]")
    subtables = []
    for key, value in table.items():
        if isinstance(value, Mapping):
            subtables.append((key, value))
        else:
            lines.append(f"{_toml_key(key)} = {_toml_value(value)}")
    for key, value in subtables:
        _write_table(value, (*path, key), lines)


def _toml_key(key: str) -> str:
    return key if _BARE_KEY.fullmatch(key) else _toml_string(key)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)  # shortest round-tripping form, always valid TOML
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} {value!r} as TOML")


def _toml_string(text: str) -> str:
    chars = []
    for ch in text:
        if ch in _TOML_ESCAPES:
            chars.append(_TOML_ESCAPES[ch])
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            chars.append(f"\\u{ord(ch):04x}")
        else:
            chars.append(ch)
    return '"' + "".join(chars) + '"'


# --------------------------------------------------------------------------- describing


@dataclass(frozen=True)
class ConfigField:
    """One settable key of a config, as ``pcsim show`` prints it: the dotted ``key``, its
    ``value`` written as TOML (``""`` when unset), its ``type`` in words, its ``constraint``
    (range from the field metadata, choices, units), a one-line ``doc`` and the ``units`` alone
    (field metadata ``units``; "" when the field declares none)."""

    key: str
    value: str
    type: str
    constraint: str
    doc: str
    units: str = ""


def config_fields(cfg: Any) -> list[ConfigField]:
    """Every key of the config dataclass instance ``cfg`` (nested sections as dotted keys, in
    field order), derived from the dataclasses themselves: type from the type hint, range and
    units from the field metadata (``ge``/``gt``/``le``/``lt``, ``nonempty``, ``units``), the doc
    from the metadata key ``doc`` or else from the section's docstring (the sentence after
    ``name``:), so every key a ``--set`` accepts is listed and nothing is kept by hand."""
    if not dataclasses.is_dataclass(cfg) or isinstance(cfg, type):
        raise TypeError(f"config_fields needs a config dataclass instance, got {cfg!r}")
    rows: list[ConfigField] = []
    _describe_fields(cfg, "", rows)
    return rows


def _describe_fields(cfg: Any, prefix: str, rows: list[ConfigField]) -> None:
    cls = type(cfg)
    hints = _field_hints(cls)
    for name, fld in _init_fields(cls).items():
        value = getattr(cfg, name)
        hint = hints[name]
        inner = _optional_inner(hint) if _is_optional(hint) else hint
        if value is None and isinstance(inner, type) and dataclasses.is_dataclass(inner):
            value = inner()  # an absent optional table (``[sweep]``): its keys with their defaults
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            _describe_fields(value, f"{prefix}{name}.", rows)
            continue
        rows.append(_field_row(cls, name, fld, hint, value, prefix))


def _field_row(cls: type, name: str, fld: dataclasses.Field[Any], hint: Any, value: Any,
               prefix: str) -> ConfigField:
    """The :class:`ConfigField` row of field ``name`` of ``cls`` holding ``value``."""
    kind = _kind_name(hint)
    limits = [f"{symbol} {fld.metadata[key]!r}" for key, (_, symbol) in _RANGES.items()
              if key in fld.metadata]
    if fld.metadata.get("nonempty"):
        limits.append("non-empty")
    constraint = ", ".join(limits)
    if "units" in fld.metadata:
        constraint = f"{constraint} [{fld.metadata['units']}]".strip()
    shown = "" if value is None or dataclasses.is_dataclass(value) else _toml_value(_plain(value))
    return ConfigField(key=prefix + name, value=shown, type=kind, constraint=constraint,
                       doc=fld.metadata.get("doc") or _docstring_entry(cls, name),
                       units=str(fld.metadata.get("units", "")))


def _kind_name(hint: Any) -> str:
    """A field's type in words for ``pcsim show``: "number", "array of integers",
    "one of 'a', 'b'", "integer (optional)"."""
    if _is_optional(hint):
        return _kind_name(_optional_inner(hint)) + " (optional)"
    if typing.get_origin(hint) is Literal:
        return "one of " + ", ".join(repr(c) for c in typing.get_args(hint))
    if typing.get_origin(hint) in (list, tuple):
        element = _element_type(hint)
        if typing.get_origin(element) is Literal:
            return "array, each " + _kind_name(element)
    return _type_name(hint).split(" ", 1)[-1]


def _docstring_entry(cls: type, name: str) -> str:
    """The sentence a class docstring gives ``name``, in the house style "``name``: text."
    (or "``a``, ``b``: text." for several fields), or "" when it says nothing in that form.
    The sentence ends at the first '.' or ';' outside parentheses and code spans."""
    doc = " ".join((cls.__doc__ or "").split())
    for match in re.finditer(r"((?:``\w+``(?:\s*(?:,|and|/)\s*)?)+)(?:\s*\([^)]*\))?:\s", doc):
        if name in re.findall(r"``(\w+)``", match.group(1)):
            text = doc[match.end():]
            depth, code, end = 0, False, len(text)
            for i, ch in enumerate(text):
                if text.startswith("``", i):
                    code = not code
                elif not code and ch in "([":
                    depth += 1
                elif not code and ch in ")]":
                    if depth == 0:  # the docstring's own parenthesis around the entry closes
                        end = i
                        break
                    depth -= 1
                elif (not code and depth == 0 and ch in ".;" and text[i + 1:i + 2] in ("", " ")
                      and not text[max(i - 3, 0):i + 1].endswith(("e.g.", "i.e."))):
                    end = i
                    break
            text = text[:end]
            return re.sub(r":\w+:`~?([^`<]+?)(?:\s*<[^>]*>)?`", r"\1", text).replace("``", "")
    return ""
