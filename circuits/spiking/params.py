"""The parameters of the spiking translation: how rate units become LIF neurons."""

from __future__ import annotations

from dataclasses import dataclass, field

from pcsim.config import check_ranges
from pcsim.errors import ConfigError


__all__ = ["SpikingParams"]


@dataclass(frozen=True)
class SpikingParams:
    """How rate units become LIF neurons (see :mod:`circuits.spiking`); also the ``[spiking]``
    table of a config, its field metadata giving ranges and units.

    ``neurons_per_unit``: ``N`` neurons per group. ``dt_ms``: Brian2 time step (ms).
    ``update_ms``: interval (ms, a multiple of ``dt_ms``) at which the membrane noise kicks
    (uniform, standard deviation ``noise * sqrt(1 - exp(-2 update / tau_m))``, so the free
    membrane's standard deviation is ``noise``) and the external input (stimulus, cue-gated
    prior) is refreshed: a Gaussian number and the TimedArray look-ups for every neuron at
    every step cost Brian2's runtime targets about twice the rest of the simulation.
    ``tau_m_ms``: membrane time constant (ms); ``refractory_ms``: absolute refractory period
    (ms). ``noise``: standard deviation of the free membrane potential (threshold units).
    ``floor_hz``: rate of a group at zero input; ``gain_hz``: rate increase per rate unit
    (Hz), i.e. a group fires ``floor_hz + gain_hz`` at activity 1. ``lag_ms``: the response
    lag of a LIF group, subtracted from the synaptic time constant of every non-integrating
    population so that synapse plus membrane delay the input by the rate unit's ``tau`` on
    average. ``smooth_ms``: standard deviation of the Gaussian kernel that turns binned spike
    counts into population rates.
    """

    neurons_per_unit: int = field(default=40, metadata={"ge": 1})
    dt_ms: float = field(default=0.1, metadata={"gt": 0, "units": "ms"})
    update_ms: float = field(default=0.5, metadata={"gt": 0, "units": "ms"})
    tau_m_ms: float = field(default=10.0, metadata={"gt": 0, "units": "ms"})
    refractory_ms: float = field(default=0.5, metadata={"ge": 0, "units": "ms"})
    noise: float = field(default=0.15, metadata={"gt": 0, "units": "threshold units"})
    floor_hz: float = field(default=2.0, metadata={"gt": 0, "units": "Hz"})
    gain_hz: float = field(default=200.0, metadata={"gt": 0, "units": "Hz per rate unit"})
    lag_ms: float = field(default=1.0, metadata={"ge": 0, "units": "ms"})
    smooth_ms: float = field(default=5.0, metadata={"gt": 0, "units": "ms"})

    def __post_init__(self):
        check_ranges(self)  # the fields' metadata, as a config file is checked
        ratio = self.update_ms / self.dt_ms
        if abs(ratio - round(ratio)) > 1e-6:
            raise ConfigError(f"SpikingParams.update_ms ({self.update_ms}) must be a multiple of dt_ms ({self.dt_ms})")
        if self.update_ms > self.tau_m_ms / 10:
            raise ConfigError(f"SpikingParams.update_ms = {self.update_ms} ms is too coarse for tau_m = {self.tau_m_ms} ms")
        if self.dt_ms > self.tau_m_ms / 10:
            raise ConfigError(f"SpikingParams.dt_ms = {self.dt_ms} ms is too coarse for tau_m = {self.tau_m_ms} ms "
                             f"(use dt <= {self.tau_m_ms / 10} ms)")
        ceiling = 1000.0 / max(self.refractory_ms, 1e-9)
        if self.floor_hz + 1.5 * self.gain_hz > 0.5 * ceiling:
            raise ConfigError(f"SpikingParams: floor_hz + 1.5 * gain_hz = {self.floor_hz + 1.5 * self.gain_hz} Hz is "
                             f"too close to the refractory ceiling {ceiling:.0f} Hz; lower gain_hz or refractory_ms")
