"""Checks of public functions' numeric arguments, with the messages of a config file's keys.

A config dataclass states its ranges once, in field metadata, and :func:`pcsim.config.check_ranges`
reads them; a plain function argument (``PCNetwork.init(precision=...)``, ``Adam(lr=...)``)
states its range once, at the call of :func:`check_number`, with the same bound names
(``gt``, ``ge``, ``lt``, ``le``) and the same wording. Every failure is a
:class:`~pcsim.errors.ConfigError` naming the argument and the value.
"""

from __future__ import annotations

import math
from typing import Any

from .config import _range_problem
from .errors import ConfigError


def check_number(name: str, value: Any, *, integer: bool = False, **bounds: float) -> float | int:
    """Return ``value`` as a float (``int`` with ``integer``) after checking that it is a finite
    real number (not a bool, not NaN/Inf) within ``bounds`` (``gt``/``ge``/``lt``/``le``);
    else raise :class:`ConfigError` ``"{name} must be ..., got {value!r}"``. A 0-dim tensor or
    numpy scalar counts as its number; an integer argument must hold an integral value
    (``32.7`` is refused, not truncated)."""
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0 and not isinstance(value, bool):
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        kind = "an integer" if integer else "a number"
        raise ConfigError(f"{name} must be {kind}, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if integer:
        if value != int(value):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        value = int(value)
    else:
        value = float(value)
    problem = _range_problem(value, bounds)
    if problem:
        raise ConfigError(f"{name} {problem}")
    return value


def check_numbers(name: str, values: Any, *, integer: bool = False, **bounds: float) -> tuple:
    """:func:`check_number` on each element of the sequence ``values`` (named ``name[i]``); a
    tuple of the checked numbers. A string or a non-sequence is refused naming ``name``."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise ConfigError(f"{name} must be a sequence of numbers, got {values!r}")
    return tuple(check_number(f"{name}[{i}]", v, integer=integer, **bounds) for i, v in enumerate(values))
