"""LIF rate theory: the Siegert rate of a noisy LIF neuron and the rate code it implies."""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from pcsim.errors import ConfigError
from pcsim.arguments import check_number

from .params import SpikingParams

__all__ = ["RateCode", "lif_rate", "rate_code"]

_OVERSHOOT_UNIFORM = 0.5161  # Siegmund's threshold correction for uniform random-walk steps (see lif_rate)


def lif_rate(mu, *, tau_m_ms: float, refractory_ms: float, noise: float, kick_ms: float = 0.0) -> np.ndarray:
    """Stationary firing rate (Hz) of a LIF neuron (threshold 1, reset 0) with mean input
    ``mu`` (array, threshold units) and membrane noise of free standard deviation ``noise``.

    The Siegert formula ``1 / (t_ref + tau_m sqrt(pi) int_{-mu/s}^{(th-mu)/s} erfcx(-u) du)``
    with ``s = sqrt(2) * noise`` (Brunel 2000, whose ``sigma`` is sqrt(2) times the free
    standard deviation; the scaled complementary error function keeps it finite far below
    threshold). When the noise arrives as kicks every ``kick_ms``, uniformly distributed with
    standard deviation ``q = noise * sqrt(1 - exp(-2 kick / tau_m))`` (what
    :class:`SpikingCircuit` does), the membrane overshoots the threshold between looks, which
    acts as a higher threshold ``th = 1 + 0.5161 q``: Siegmund's (1979) corrected diffusion
    approximation, with the constant ``-1/pi int_0^inf l^-2 log(2 (1 - phi(l)) / l^2) dl``
    of the uniform step distribution (0.5826 for Gaussian steps). ``kick_ms = 0`` is white
    noise (``th = 1``). Returns an array of ``mu``'s shape.
    """
    from scipy.integrate import quad
    from scipy.special import erfcx

    tau_m_ms, noise = check_number("lif_rate: tau_m_ms", tau_m_ms, gt=0), check_number("lif_rate: noise", noise, gt=0)
    refractory_ms = check_number("lif_rate: refractory_ms", refractory_ms, ge=0)
    kick_ms = check_number("lif_rate: kick_ms", kick_ms, ge=0)
    mu = np.asarray(mu, dtype=np.float64)
    if not np.isfinite(mu).all():
        raise ConfigError("lif_rate: mu contains NaN or Inf")
    sd = math.sqrt(2) * noise
    th = 1.0 + _OVERSHOOT_UNIFORM * noise * math.sqrt(1.0 - math.exp(-2.0 * kick_ms / tau_m_ms))
    out = np.empty(mu.shape)
    for idx, m in np.ndenumerate(mu):
        val = quad(lambda u: erfcx(-u), -m / sd, (th - m) / sd, limit=200)[0]
        out[idx] = 1.0 / (refractory_ms * 1e-3 + tau_m_ms * 1e-3 * math.sqrt(math.pi) * val)
    return out


@dataclass(frozen=True)
class RateCode:
    """The operating point of every group: mean input ``mu0`` (threshold units) at which a group
    fires ``floor_hz`` (``s = 0``), and the gain ``k`` (threshold units per rate unit) whose
    Siegert rates lie closest (least squares) to ``floor_hz + gain_hz * x`` for ``0 <= x <= 1``;
    a group's activity is read out as ``(R - floor_hz) / gain_hz``."""

    mu0: float
    k: float
    floor_hz: float
    gain_hz: float


@lru_cache(maxsize=32)
def _rate_code(tau_m_ms: float, refractory_ms: float, noise: float, kick_ms: float, floor_hz: float,
               gain_hz: float) -> RateCode:
    from scipy.optimize import brentq, minimize_scalar

    def f(m: float) -> float:
        return float(lif_rate(m, tau_m_ms=tau_m_ms, refractory_ms=refractory_ms, noise=noise, kick_ms=kick_ms))

    lo = -10.0 * noise
    if f(lo) > floor_hz:
        raise ConfigError(f"floor_hz = {floor_hz} Hz is below the rate reachable with noise = {noise}")
    mu0 = brentq(lambda m: f(m) - floor_hz, lo, 1.0 + 10 * noise, xtol=1e-10)
    # k: least-squares fit of the rate to the line floor + gain * x over 0 <= x <= 1, the range
    # the circuit's activities live in (the LIF curve is convex at threshold, concave near the
    # refractory ceiling; a fit spreads the residual over both ends)
    xs = np.linspace(0.0, 1.0, 21)
    line = floor_hz + gain_hz * xs

    def misfit(kk):
        rates = lif_rate(mu0 + kk * xs, tau_m_ms=tau_m_ms, refractory_ms=refractory_ms, noise=noise, kick_ms=kick_ms)
        return float(np.sum((rates - line) ** 2))

    hi = 1.0
    while f(mu0 + hi) < floor_hz + gain_hz:
        hi *= 2
        if hi > 1e3:
            raise ConfigError(f"gain_hz = {gain_hz} Hz is out of reach of the LIF neuron (refractory ceiling)")
    k = minimize_scalar(misfit, bounds=(hi / 8, 2 * hi), method="bounded", options={"xatol": 1e-6}).x
    return RateCode(float(mu0), float(k), float(floor_hz), float(gain_hz))


def rate_code(params: SpikingParams) -> RateCode:
    """The :class:`RateCode` (operating point ``mu0`` and input gain ``k``) that ``params``
    ask for, solved from the Siegert rate :func:`lif_rate`."""
    return _rate_code(float(params.tau_m_ms), float(params.refractory_ms), float(params.noise),
                      float(params.update_ms), float(params.floor_hz), float(params.gain_hz))
