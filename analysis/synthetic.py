"""Synthetic recordings with known latents: the ground truth latent models are validated on.

:func:`lorenz_recording` follows the benchmark the field uses for latent-variable models of
spiking (Sussillo et al. 2016, LFADS; Zhao & Park 2017; Pei et al. 2021, NLB): a 3-D Lorenz
system is integrated, cut into trials, normalised, mapped through a random readout and an
exponential link to the log firing rates of N neurons, and Poisson spike counts are drawn.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from analysis.recording import split_recording
from pcsim.errors import ConfigError
from pcsim.arguments import check_number


def lorenz_trajectory(n_steps: int, dt: float = 0.01, start: np.ndarray | None = None,
                      sigma: float = 10.0, rho: float = 28.0, beta: float = 8.0 / 3.0) -> np.ndarray:
    """Integrate the Lorenz system with 4th-order Runge-Kutta; returns ``(n_steps, 3)`` states (dimensionless time step ``dt``)."""
    def f(s):
        x, y, z = s[..., 0], s[..., 1], s[..., 2]
        return np.stack([sigma * (y - x), x * (rho - z) - y, x * y - beta * z], -1)

    s = np.array([1.0, 1.0, 25.0]) if start is None else np.asarray(start, float)
    out = np.empty(s.shape[:-1] + (n_steps, 3))
    for i in range(n_steps):
        out[..., i, :] = s
        k1 = f(s)
        k2 = f(s + 0.5 * dt * k1)
        k3 = f(s + 0.5 * dt * k2)
        k4 = f(s + dt * k3)
        s = s + dt / 6.0 * (k1 + 2 * k2 + 2 * k3 + k4)
    return out


def lorenz_recording(
    n_trials: int = 100,
    n_neurons: int = 30,
    n_bins: int = 50,
    *,
    bin_width: float = 0.01,
    mean_rate_hz: float = 8.0,
    readout_scale: float = 0.6,
    steps_per_bin: int = 1,
    dt: float = 0.01,
    n_conditions: int = 0,
    condition_jitter: float | None = 0.5,
    n_behaviour: int = 2,
    behaviour_noise: float = 0.05,
    heldout_fraction: float = 0.25,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> xr.Dataset:
    """A Lorenz-driven Poisson population as a recording Dataset (see :mod:`analysis`).

    Each trial starts at a random point of the attractor (or, with ``n_conditions > 0``, near
    one of ``n_conditions`` shared starting points, jittered by ``condition_jitter``, so that
    condition-averaged PSTHs exist; with ``condition_jitter=None`` trials keep their random
    starts and are labelled by the nearest of the ``n_conditions`` points) and runs ``n_bins`` bins of ``steps_per_bin`` Lorenz steps
    of ``dt``. Latents are z-scored over the whole data set; log rates are
    ``C z + b`` with ``C ~ N(0, readout_scale^2)`` per neuron and ``b`` set so the population
    mean rate is ``mean_rate_hz``. Returns ``counts`` (trial, time, neuron; counts per bin),
    ``rates`` (counts per bin), ``latents`` (trial, time, latent; z-scored), ``behaviour``
    (trial, time, behaviour_dim: a random linear readout of the latents, e.g. a 2-D velocity,
    plus Gaussian noise), coordinates ``heldout`` (neuron) and ``split``/``condition``
    and ``start_time``/``stop_time`` (trial; session s, trials back to back, aligned at
    ``start_time`` as attrs ``align`` says), the first two drawn by :func:`analysis.recording.split_recording` (``heldout_fraction``
    of the neurons, ``test_fraction`` of the trials). Same seed, same data.
    """
    n_trials, n_neurons, n_bins = (check_number(key, value, integer=True, ge=1) for key, value in
                                   (("n_trials", n_trials), ("n_neurons", n_neurons), ("n_bins", n_bins)))
    bin_width, mean_rate_hz, dt = (check_number(key, value, gt=0) for key, value in
                                   (("bin_width", bin_width), ("mean_rate_hz", mean_rate_hz), ("dt", dt)))
    rng = np.random.default_rng(seed)
    with np.errstate(over="ignore", invalid="ignore"):
        burn = lorenz_trajectory(2000 + 50 * n_trials, dt)[1000:]  # on the attractor
    if not np.isfinite(burn).all():
        raise ConfigError(f"dt = {dt!r} is too coarse for the Lorenz system: its RK4 integration diverged "
                          "(use dt <= 0.02, Lorenz time units)")
    if n_conditions > 0 and condition_jitter is None:  # random starts, labelled by the nearest centre
        centres = burn[rng.choice(len(burn), n_conditions, replace=False)]
        starts = burn[rng.choice(len(burn), n_trials, replace=False)]
        condition = np.argmin(((starts[:, None] - centres[None]) ** 2).sum(-1), 1)
    elif n_conditions > 0:
        centres = burn[rng.choice(len(burn), n_conditions, replace=False)]
        condition = np.arange(n_trials) % n_conditions
        starts = centres[condition] + condition_jitter * rng.standard_normal((n_trials, 3))
    else:
        condition = np.zeros(n_trials, int)
        starts = burn[rng.choice(len(burn), n_trials, replace=False)]
    traj = lorenz_trajectory(n_bins * steps_per_bin, dt, start=starts)[:, ::steps_per_bin]  # (trial, bin, 3)
    z = (traj - traj.reshape(-1, 3).mean(0)) / traj.reshape(-1, 3).std(0)
    C = readout_scale * rng.standard_normal((3, n_neurons))
    log_rate = z @ C
    target = mean_rate_hz * bin_width  # counts per bin
    b = np.log(target) - np.log(np.exp(log_rate).mean())
    rates = np.exp(log_rate + b)
    counts = rng.poisson(rates)
    B = rng.standard_normal((3, n_behaviour)) / np.sqrt(3)
    behaviour = z @ B + behaviour_noise * rng.standard_normal((n_trials, n_bins, n_behaviour))
    time = (np.arange(n_bins) + 0.5) * bin_width
    start = np.arange(n_trials) * n_bins * bin_width  # trials back to back from the session start
    ds = xr.Dataset(
        {
            "counts": (("trial", "time", "neuron"), counts.astype(np.int64), {"long_name": "spike count", "units": "counts/bin"}),
            "rates": (("trial", "time", "neuron"), rates, {"long_name": "true firing rate", "units": "counts/bin"}),
            "latents": (("trial", "time", "latent"), z, {"long_name": "true Lorenz latents (z-scored)", "units": "1"}),
            "behaviour": (("trial", "time", "behaviour_dim"), behaviour, {"long_name": "behavioural readout of the latents", "units": "1"}),
        },
        coords={
            "trial": ("trial", np.arange(n_trials), {"units": "", "long_name": "trial id"}),
            "time": ("time", time, {"units": "s", "long_name": "bin centre"}),
            "neuron": ("neuron", np.arange(n_neurons), {"units": "", "long_name": "neuron id"}),
            "latent": ("latent", ["x", "y", "z"], {"units": "", "long_name": "Lorenz state variable"}),
            "behaviour_dim": ("behaviour_dim", np.arange(n_behaviour), {"units": "", "long_name": "behaviour dimension"}),
            "condition": ("trial", condition, {"units": "", "long_name": "trial condition"}),
            "start_time": ("trial", start, {"units": "s", "long_name": "trial start (session time)"}),
            "stop_time": ("trial", start + n_bins * bin_width, {"units": "s", "long_name": "trial stop (session time)"}),
        },
        attrs={"bin_width": bin_width, "align": "start_time", "source": "lorenz_recording", "seed": seed,
               "mean_rate_hz": mean_rate_hz},
    )
    # held-out neurons and test trials by the one split policy, drawn from the same generator
    return split_recording(ds, heldout_fraction=heldout_fraction, test_fraction=test_fraction, seed=rng)


def pivae_recording(
    n_trials: int = 100,
    n_neurons: int = 50,
    n_bins: int = 50,
    *,
    bin_width: float = 0.05,
    mean_rate_hz: float = 20.0,
    noise_correlation: float = 0.8,
    hidden: int = 20,
    heldout_fraction: float = 0.25,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> xr.Dataset:
    """pi-VAE's synthetic benchmark as a recording Dataset: a 2-D latent tied to a continuous
    label, mixed non-linearly into Poisson spikes (after Zhou & Wei 2020, section 3.1).

    The label of every bin is an angle-like variable ``u(t) = pi (1 + sin(phi + omega t))`` in
    ``[0, 2 pi]`` (a random phase ``phi`` per trial and angular speed ``omega`` in 1-3 rad/s, so
    it sweeps smoothly like a position or a heading). The latent is ``z = mu(u) + sigma(u) * e``
    with ``mu(u) = (u, 2 sin u)``, ``sigma(u) = (0.6 - 0.3 |sin u|, 0.3 |sin u|)`` (the label
    sets the mean and the spread) and ``e`` unit-variance AR(1) noise with lag-one correlation
    ``noise_correlation`` per bin (0: independent bins as in the paper). Log rates are a random
    one-hidden-layer tanh network of the standardised ``z`` (``hidden`` units, weights
    ``N(0, 1/fan_in)``, readout scaled to 1.2), offset so the population mean rate is
    ``mean_rate_hz``. Returns ``counts`` (trial, time, neuron), ``rates`` (counts per bin),
    ``latents`` (trial, time, latent; ``z``), ``behaviour`` (trial, time, behaviour_dim = 1;
    ``u``, rad), coordinates ``heldout``/``split`` (:func:`analysis.recording.split_recording`),
    ``condition`` (the trial's mean label in 4 bins) and ``start_time``/``stop_time``. Same
    seed, same data."""
    n_trials, n_neurons, n_bins, hidden = (check_number(key, value, integer=True, ge=1) for key, value in
                                           (("n_trials", n_trials), ("n_neurons", n_neurons), ("n_bins", n_bins),
                                            ("hidden", hidden)))
    bin_width, mean_rate_hz = (check_number(key, value, gt=0) for key, value in
                               (("bin_width", bin_width), ("mean_rate_hz", mean_rate_hz)))
    rho = check_number("noise_correlation", noise_correlation, ge=0, lt=1)
    rng = np.random.default_rng(seed)
    time = (np.arange(n_bins) + 0.5) * bin_width
    phase = rng.uniform(0, 2 * np.pi, (n_trials, 1))
    omega = rng.uniform(1.0, 3.0, (n_trials, 1)) * rng.choice([-1, 1], (n_trials, 1))
    u = np.pi * (1.0 + np.sin(phase + omega * time))                                  # (trial, time)
    e = np.empty((n_trials, n_bins, 2))
    e[:, 0] = rng.standard_normal((n_trials, 2))
    for t in range(1, n_bins):
        e[:, t] = rho * e[:, t - 1] + np.sqrt(1 - rho ** 2) * rng.standard_normal((n_trials, 2))
    s = np.abs(np.sin(u))
    z = np.stack([u, 2 * np.sin(u)], -1) + np.stack([0.6 - 0.3 * s, 0.3 * s], -1) * e
    zs = (z - z.reshape(-1, 2).mean(0)) / z.reshape(-1, 2).std(0)
    W1 = rng.standard_normal((2, hidden)) / np.sqrt(2)
    b1 = 0.5 * rng.standard_normal(hidden)
    W2 = rng.standard_normal((hidden, n_neurons)) / np.sqrt(hidden)
    log_rate = 1.2 * np.tanh(zs @ W1 + b1) @ W2
    target = mean_rate_hz * bin_width
    rates = np.exp(log_rate + np.log(target) - np.log(np.exp(log_rate).mean()))
    counts = rng.poisson(rates)
    condition = np.minimum((u.mean(1) / (2 * np.pi) * 4).astype(int), 3)
    start = np.arange(n_trials) * n_bins * bin_width
    ds = xr.Dataset(
        {
            "counts": (("trial", "time", "neuron"), counts.astype(np.int64), {"long_name": "spike count", "units": "counts/bin"}),
            "rates": (("trial", "time", "neuron"), rates, {"long_name": "true firing rate", "units": "counts/bin"}),
            "latents": (("trial", "time", "latent"), z, {"long_name": "true latent z = mu(u) + sigma(u) e", "units": "1"}),
            "behaviour": (("trial", "time", "behaviour_dim"), u[..., None], {"long_name": "label u", "units": "rad"}),
        },
        coords={
            "trial": ("trial", np.arange(n_trials), {"units": "", "long_name": "trial id"}),
            "time": ("time", time, {"units": "s", "long_name": "bin centre"}),
            "neuron": ("neuron", np.arange(n_neurons), {"units": "", "long_name": "neuron id"}),
            "latent": ("latent", ["z1", "z2"], {"units": "", "long_name": "latent dimension"}),
            "behaviour_dim": ("behaviour_dim", ["u"], {"units": "", "long_name": "label dimension"}),
            "condition": ("trial", condition, {"units": "", "long_name": "trial's mean label, in 4 bins"}),
            "start_time": ("trial", start, {"units": "s", "long_name": "trial start (session time)"}),
            "stop_time": ("trial", start + n_bins * bin_width, {"units": "s", "long_name": "trial stop (session time)"}),
        },
        attrs={"bin_width": bin_width, "align": "start_time", "source": "pivae_recording", "seed": seed,
               "mean_rate_hz": mean_rate_hz},
    )
    return split_recording(ds, heldout_fraction=heldout_fraction, test_fraction=test_fraction, seed=rng)
