"""Config tables shared by the circuit experiments: ``[circuit]`` (a tonotopic hierarchy whose
dynamics are :class:`~circuits.laminar.CircuitParams`) and the way a section that derives
from an engine dataclass turns back into that dataclass (:func:`engine_object`)."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np

from pcsim.errors import ConfigError

from ..laminar import CircuitParams, LaminarCircuit


@dataclass(frozen=True, kw_only=True)
class CircuitSection(CircuitParams):
    """A hand-built tonotopic hierarchy: ``areas`` areas (the sensory stage included) of
    ``n_channels`` units each, every area predicting the one below through the identity
    (a tonotopic map predicts the same channel below) with linear transfer. ``precisions``:
    one gain per area, bottom-up, the last being the top-level prior's. Every other key is
    a field of :class:`~circuits.laminar.CircuitParams` (time constants and ``dt`` in ms,
    ``prior_rate`` in 1/ms, ``noise``, ``deep_leak``, ``interneurons``), declared there once
    with its default, range and units."""

    n_channels: int = field(default=24, metadata={"ge": 2})
    areas: int = field(default=3, metadata={"ge": 2})
    precisions: tuple[float, ...] = field(default=(1.0, 1.0, 1.0), metadata={"gt": 0, "nonempty": True})

    def __post_init__(self):
        super().__post_init__()
        if len(self.precisions) not in (1, self.areas):
            raise ConfigError(f"precisions must have 1 or {self.areas} (= areas) entries, got {len(self.precisions)}")

    def params(self) -> CircuitParams:
        """The :class:`CircuitParams` of this section."""
        return self.circuit_params()

    @property
    def area_names(self) -> list[str]:
        """Area labels, bottom-up: 'input' (the sensory stage), then 'area1', 'area2', ..."""
        return ["input"] + [f"area{a}" for a in range(1, self.areas)]

    def check_area(self, name: str, key: str) -> str:
        """``name`` if it is a cortical area of this circuit, else a ConfigError naming ``key``,
        the value and the valid choices (a config's ``__post_init__`` calls it)."""
        if name not in self.area_names[1:]:
            raise ConfigError(f"key '{key}': {name!r} is not a cortical area of the circuit; choose one of "
                              f"{', '.join(repr(a) for a in self.area_names[1:])} (circuit.areas = {self.areas})")
        return name

    def check_oddball(self, standard: float, deviances, table: str) -> None:
        """A ConfigError naming ``{table}.standard`` and/or ``{table}.deviances`` (with the values
        and the valid range) unless the standard tone and every deviant (``standard +
        deviance``, channels) lie on the ``n_channels``-channel tonotopic map."""
        n, biggest = self.n_channels, max(deviances)
        top = n - 1 - biggest
        where = f"the {n}-channel tonotopic map (circuit.n_channels)"
        if not 0 <= standard < n:
            raise ConfigError(f"key '{table}.standard': channel {standard:g} is off {where}: choose "
                              f"0 <= standard <= {max(top, 0):g} (room for deviances up to {biggest:g})")
        if top < 0:
            raise ConfigError(f"key '{table}.deviances': a deviance of {biggest:g} channels does not fit on {where}: "
                              f"choose deviances <= {n - 1 - standard:g} for standard = {standard:g}")
        if standard > top:
            raise ConfigError(f"keys '{table}.standard' and '{table}.deviances': the deviant at channel "
                              f"{standard:g} + {biggest:g} = {standard + biggest:g} is off {where}: choose "
                              f"0 <= standard <= {top:g} or deviances <= {n - 1 - standard:g}")

    def check_record_every(self, every_ms: float, key: str) -> float:
        """``every_ms`` if it is a whole number of Euler steps ``dt``, else a ConfigError naming ``key``."""
        k = round(every_ms / self.dt)
        if k < 1 or abs(k * self.dt - every_ms) > 1e-6 * every_ms:
            raise ConfigError(f"key '{key}': {every_ms} ms must be a positive multiple of circuit.dt ({self.dt} ms)")
        return every_ms

    def build(self, device: str = "cpu") -> LaminarCircuit:
        """The :class:`LaminarCircuit` (identity feedback weights, linear transfer) on ``device``."""
        n = self.n_channels
        precs = list(self.precisions) * (self.areas if len(self.precisions) == 1 else 1)
        return LaminarCircuit((n,) * self.areas, [np.eye(n)] * (self.areas - 1), activations="linear",
                              precisions=precs, area_names=self.area_names, params=self.params(), device=device)


def engine_object(section: Any, cls: type, **given: Any) -> Any:
    """The ``cls`` instance (an engine or paradigm dataclass that ``section`` derives from)
    holding the section's values of every ``cls`` field, except those in ``given`` (fields
    the section leaves to another table, e.g. a tone sequence's ``n_channels``, which is the
    circuit's)."""
    return cls(**{f.name: getattr(section, f.name) for f in fields(cls) if f.init and f.name not in given}, **given)
