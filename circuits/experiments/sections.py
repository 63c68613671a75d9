"""Config sections shared by the circuit experiments (TOML table ``[circuit]``)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..laminar import CircuitParams, LaminarCircuit


@dataclass(frozen=True, kw_only=True)
class CircuitSection:
    """A hand-built tonotopic hierarchy: ``areas`` areas (the sensory stage included) of
    ``n_channels`` units each, every area predicting the one below through the identity
    (a tonotopic map predicts the same channel below) with linear transfer. ``precisions``:
    one gain per area, bottom-up, the last being the top-level prior's. Time constants and
    ``dt`` in ms; ``prior_rate`` (1/ms) is the learning rate of the top-level expectation;
    ``noise``: stationary std of each population's private noise (rate units);
    ``deep_leak``: leak of the representation units (dimensionless)."""

    n_channels: int = field(default=24, metadata={"ge": 2})
    areas: int = field(default=3, metadata={"ge": 2})
    precisions: tuple[float, ...] = field(default=(1.0, 1.0, 1.0), metadata={"gt": 0, "nonempty": True})
    dt: float = field(default=0.5, metadata={"gt": 0})
    tau_l4: float = field(default=5.0, metadata={"gt": 0})
    tau_error: float = field(default=5.0, metadata={"gt": 0})
    tau_deep: float = field(default=10.0, metadata={"gt": 0})
    tau_inh: float = field(default=5.0, metadata={"gt": 0})
    interneurons: bool = False
    deep_leak: float = field(default=0.0, metadata={"ge": 0})
    prior_rate: float = field(default=0.01, metadata={"ge": 0})
    noise: float = field(default=0.0, metadata={"ge": 0})

    def __post_init__(self):
        if len(self.precisions) not in (1, self.areas):
            raise ValueError(f"precisions must have 1 or {self.areas} (= areas) entries, got {len(self.precisions)}")
        self.params()  # CircuitParams checks dt against the fastest time constant

    def params(self) -> CircuitParams:
        """The :class:`CircuitParams` of this section."""
        return CircuitParams(dt=self.dt, tau_l4=self.tau_l4, tau_error=self.tau_error, tau_deep=self.tau_deep,
                             tau_inh=self.tau_inh, interneurons=self.interneurons, deep_leak=self.deep_leak,
                             prior_rate=self.prior_rate, noise=self.noise)

    @property
    def area_names(self) -> list[str]:
        """Area labels, bottom-up: 'input' (the sensory stage), then 'area1', 'area2', ..."""
        return ["input"] + [f"area{a}" for a in range(1, self.areas)]

    def check_area(self, name: str, key: str) -> str:
        """``name`` if it is a cortical area of this circuit, else a ValueError naming ``key``."""
        if name not in self.area_names[1:]:
            raise ValueError(f"{key} {name!r} is not a cortical area of the circuit ({', '.join(self.area_names[1:])})")
        return name

    def build(self, device: str = "cpu") -> LaminarCircuit:
        """The :class:`LaminarCircuit` (identity feedback weights, linear transfer) on ``device``."""
        n = self.n_channels
        precs = list(self.precisions) * (self.areas if len(self.precisions) == 1 else 1)
        return LaminarCircuit((n,) * self.areas, [np.eye(n)] * (self.areas - 1), activations="linear",
                              precisions=precs, area_names=self.area_names, params=self.params(), device=device)
