"""Continuous NWB sessions built with pynwb's own API (no pcsim writer), for the session tests and demo.

:func:`head_direction_session` writes a session without a trials table: a ring of
head-direction-like units (von Mises tuning to an angle that wraps around), a few untuned
``"mua"`` units, an ``epochs`` table (``wake`` and ``sleep``), and in the ``behavior``
processing module a ``CompassDirection`` series ``head_direction`` (radians) and a
``Position`` series ``position`` (m, x and y), both sampled during wake only. Run it from the
command line to build the demo file::

    PYTHONPATH=tests/analysis python -c "from session_files import head_direction_session as h; h('hd.nwb')"
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from pynwb import NWBHDF5IO, NWBFile
from pynwb.behavior import CompassDirection, Position, SpatialSeries
from pynwb.file import Subject

START = datetime(2024, 5, 1, 9, 30, tzinfo=timezone.utc)


def head_direction(t: np.ndarray, seed: int = 0) -> np.ndarray:
    """A smooth head-direction trajectory (rad, wrapped to [-pi, pi)) at times ``t`` (s): a slow
    drift plus sinusoidal turns of random phase, so that it wraps around many times."""
    rng = np.random.default_rng(seed)
    freqs, amps, phases = rng.uniform(0.05, 0.4, 4), rng.uniform(1.0, 3.0, 4), rng.uniform(0, 2 * np.pi, 4)
    t = np.asarray(t, np.float64)
    theta = 0.6 * t + (amps * np.sin(2 * np.pi * freqs * t[..., None] + phases)).sum(-1)
    return np.mod(theta + np.pi, 2 * np.pi) - np.pi


def ring_rates(theta: np.ndarray, preferred: np.ndarray, peak_hz: float = 30.0, base_hz: float = 1.0,
               kappa: float = 2.5) -> np.ndarray:
    """Rates (Hz) ``(time, unit)`` of von Mises head-direction tuning curves."""
    return base_hz + peak_hz * np.exp(kappa * (np.cos(theta[:, None] - preferred[None, :]) - 1.0))


def head_direction_session(path: str | Path, *, n_tuned: int = 24, n_mua: int = 4, wake: float = 120.0,
                           sleep: float = 40.0, gap: float = 5.0, seed: int = 0, sampling_hz: float = 50.0) -> Path:
    """Write the session to ``path`` and return it. Wake lasts ``wake`` s from t = 1 s, then
    ``gap`` s without an epoch, then ``sleep`` s (units fire at their base rate, no behaviour).
    Spikes are Poisson (drawn at 1 ms resolution); behaviour is sampled at ``sampling_hz``."""
    rng = np.random.default_rng(seed)
    dt = 1e-3
    wake_start, wake_stop = 1.0, 1.0 + wake
    sleep_start, sleep_stop = wake_stop + gap, wake_stop + gap + sleep
    t = np.arange(0.0, sleep_stop + 1.0, dt)
    theta = head_direction(t, seed)
    preferred = np.linspace(-np.pi, np.pi, n_tuned, endpoint=False)
    rates = np.concatenate([ring_rates(theta, preferred), np.full((t.size, n_mua), 8.0)], axis=1)
    awake = (t >= wake_start) & (t < wake_stop)
    rates[~awake, :n_tuned] = 2.0
    spikes = rng.random(rates.shape) < rates * dt
    nwb = NWBFile(session_description="simulated head-direction session without trials (pcsim tests)",
                  identifier=f"hd-session-{seed}", session_start_time=START,
                  subject=Subject(subject_id="sim-hd", species="Mus musculus", sex="U", age="P90D"))
    nwb.add_unit_column(name="quality", description="curation label")
    nwb.add_unit_column(name="region", description="brain region")
    nwb.add_unit_column(name="preferred_direction", description="preferred direction (rad; NaN: untuned)")
    for u in range(n_tuned + n_mua):
        times = t[spikes[:, u]] + rng.uniform(0, dt, spikes[:, u].sum())
        nwb.add_unit(spike_times=np.sort(times), quality="good" if u < n_tuned else "mua",
                     region="ADN" if u % 2 == 0 else "PoS",
                     preferred_direction=float(preferred[u]) if u < n_tuned else float("nan"))
    nwb.add_epoch(start_time=wake_start, stop_time=wake_stop, tags=["wake"])
    nwb.add_epoch(start_time=sleep_start, stop_time=sleep_stop, tags=["sleep"])
    stamps = np.arange(wake_start - 0.5, wake_stop + 0.5, 1 / sampling_hz)
    module = nwb.create_processing_module(name="behavior", description="tracked head direction and position")
    module.add(CompassDirection(spatial_series=SpatialSeries(
        name="head_direction", data=head_direction(stamps, seed), timestamps=stamps, reference_frame="arena north",
        unit="radians", description="head direction, wrapped to [-pi, pi)")))
    position = np.stack([0.4 * np.cos(0.05 * stamps), 0.3 * np.sin(0.07 * stamps)], axis=1)
    module.add(Position(spatial_series=SpatialSeries(
        name="position", data=position, timestamps=stamps, reference_frame="arena centre", unit="m",
        description="head position (x, y)")))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with NWBHDF5IO(str(path), mode="w") as io:
        io.write(nwb)
    return path
