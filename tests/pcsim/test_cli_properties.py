"""A property over every shipped config: a bad ``--set`` (wrong type, out of range, NaN/inf,
unknown key) for any key makes ``pcsim run`` exit 2 with one line naming the key, before
anything is written (validation precedes the output directory)."""

import dataclasses
import math
import tempfile
import typing
from functools import cache
from pathlib import Path
from typing import Any, Literal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pcsim.cli import main
from pcsim.config import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.toml"))
RANGES = ("ge", "gt", "le", "lt")


@cache
def keys_of(path: Path) -> tuple[tuple[str, Any, dict], ...]:
    """(dotted key, type hint, field metadata) of every scalar/array key of a shipped config."""
    rows: list[tuple[str, Any, dict]] = []

    def walk(obj: Any, prefix: str) -> None:
        hints = typing.get_type_hints(type(obj))
        for fld in dataclasses.fields(obj):
            if not fld.init:
                continue
            value = getattr(obj, fld.name)
            inner = strip_optional(hints[fld.name])
            if value is None and dataclasses.is_dataclass(inner):
                value = inner()  # an absent optional table ([sweep]): its keys, as `pcsim show` lists them
            if dataclasses.is_dataclass(value):
                walk(value, f"{prefix}{fld.name}.")
            else:
                rows.append((prefix + fld.name, hints[fld.name], dict(fld.metadata)))

    walk(load_config(path), "")
    return tuple(rows)


def tables_of(path: Path) -> list[str]:
    return sorted({key.rpartition(".")[0] for key, _, _ in keys_of(path)})


def strip_optional(hint):
    if typing.get_origin(hint) in (typing.Union, getattr(__import__("types"), "UnionType")):
        return next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def toml(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf") if math.isinf(value) else repr(value)
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(toml(v) for v in value) + "]"
    return str(value)


@pytest.fixture(scope="module", autouse=True)
def experiments_imported():
    """Import every shipped experiment once, outside the timed property (torch, Brian2)."""
    for path in CONFIGS:
        keys_of(path)


@st.composite
def bad_override(draw):
    """(config path, override text, the key the message must name)."""
    path = draw(st.sampled_from(CONFIGS))
    kind = draw(st.sampled_from(["type", "range", "nonfinite", "unknown"]))
    if kind == "unknown":
        table = draw(st.sampled_from(tables_of(path)))
        name = "zz_" + draw(st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True))
        key = f"{table}.{name}" if table else name
        return path, f"{key}=1", key
    key, hint, meta = draw(st.sampled_from(keys_of(path)))
    hint = strip_optional(hint)
    array = typing.get_origin(hint) in (list, tuple)
    element = typing.get_args(hint)[0] if array else hint
    ranged = [r for r in RANGES if r in meta] if element in (int, float) else []
    if kind == "range" and ranged:
        bound = meta[draw(st.sampled_from(ranged))]
        which = next(r for r in ranged if meta[r] == bound)
        below = which in ("ge", "gt")
        if element is int:
            value = draw(st.integers(max_value=bound - (1 if which == "ge" else 0)) if below
                         else st.integers(min_value=bound + (1 if which == "le" else 0)))
        else:
            value = draw(st.floats(max_value=bound, exclude_max=which == "ge", allow_nan=False, allow_infinity=False)
                         if below else
                         st.floats(min_value=bound, exclude_min=which == "le", allow_nan=False, allow_infinity=False))
            if value == 0.0 and which in ("ge", "le") and bound == 0:  # -0.0 == 0.0 satisfies >= 0
                value = -1.0 if below else 1.0
    elif kind == "nonfinite" and element is float:
        value = draw(st.sampled_from([math.nan, math.inf, -math.inf] if ranged else [math.nan]))
    else:  # a value of the wrong type
        if typing.get_origin(element) is Literal:
            choices = typing.get_args(element)
            value = draw(st.sampled_from(["not_a_choice", 7]).filter(lambda v: v not in choices))
        elif element is bool:
            value = draw(st.sampled_from([3, "yes", 0.5]))
        elif element is str:
            value = draw(st.sampled_from([7, 1.5, True]))
        else:  # int or float
            value = draw(st.sampled_from(["oops", True] + ([1.5] if element is int else [])))
        if array and draw(st.booleans()):
            return path, f"{key}={toml(value if isinstance(value, str) else 7)}", key  # a scalar for an array
    if array:
        value = [value]
    return path, f"{key}={toml(value)}", key


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(case=bad_override())  # capsys is read (so reset) on every example
def test_every_bad_override_is_one_line_naming_the_key_and_writes_nothing(capsys, case):
    path, override, key = case
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "runs" / "out"
        code = main(["run", str(path), "--out", str(out), "--no-progress", "--set", override])
        printed = capsys.readouterr()
        assert code == 2, (override, printed.err)
        lines = printed.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"pcsim: error: {path}"), (override, printed.err)
        assert f"'{key}" in lines[0], (override, lines[0])
        assert printed.out == ""
        assert list(Path(tmp).iterdir()) == []  # no directory, no file


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates_and_shows_every_key(path, capsys):
    """`pcsim show` lists exactly the keys the config dataclasses define (the battery's keys)."""
    assert main(["show", str(path)]) == 0  # also a config whose file is not given yet (check_inputs is run's)
    shown = [line.split()[0] for line in capsys.readouterr().out.splitlines()[1:]]
    assert shown == [key for key, _, _ in keys_of(path)]
