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
from pcsim.arguments import check_number, check_numbers


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
    rates, counts = poisson_counts(z @ C, bin_width=bin_width, mean_rate_hz=mean_rate_hz, rng=rng)
    B = rng.standard_normal((3, n_behaviour)) / np.sqrt(3)
    behaviour = z @ B + behaviour_noise * rng.standard_normal((n_trials, n_bins, n_behaviour))
    ds = population_dataset(
        counts, rates, z, bin_width=bin_width, mean_rate_hz=mean_rate_hz, source="lorenz_recording", latent_names=["x", "y", "z"],
        latent_long_name="true Lorenz latents (z-scored)", latent_dim_long_name="Lorenz state variable",
        attrs={"seed": seed},
        extra={"behaviour": (("trial", "time", "behaviour_dim"), behaviour,
                             {"long_name": "behavioural readout of the latents", "units": "1"})},
        coords={"behaviour_dim": ("behaviour_dim", np.arange(n_behaviour), {"units": "", "long_name": "behaviour dimension"}),
                "condition": ("trial", condition, {"units": "", "long_name": "trial condition"})})
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
    rates, counts = poisson_counts(log_rate, bin_width=bin_width, mean_rate_hz=mean_rate_hz, rng=rng)
    condition = np.minimum((u.mean(1) / (2 * np.pi) * 4).astype(int), 3)
    ds = population_dataset(
        counts, rates, z, bin_width=bin_width, mean_rate_hz=mean_rate_hz, source="pivae_recording", latent_names=["z1", "z2"],
        latent_long_name="true latent z = mu(u) + sigma(u) e", attrs={"seed": seed},
        extra={"behaviour": (("trial", "time", "behaviour_dim"), u[..., None], {"long_name": "label u", "units": "rad"})},
        coords={"behaviour_dim": ("behaviour_dim", ["u"], {"units": "", "long_name": "label dimension"}),
                "condition": ("trial", condition, {"units": "", "long_name": "trial's mean label, in 4 bins"})})
    return split_recording(ds, heldout_fraction=heldout_fraction, test_fraction=test_fraction, seed=rng)


# ----------------------------------------------------------------------------- further generators
# Ground truths beside the Lorenz one, so that a claim about a latent model is measured on more
# than one kind of latent dynamics: smooth periodic latents, Gaussian-process latents, a noisy
# linear dynamical system and a head-direction ring population. Each is seeded, returns the true
# rates (so the true-rate co-bps ceiling is known) and shares one Poisson population
# (:func:`poisson_population`) and one split policy with :func:`lorenz_recording`.

def poisson_population(latents: np.ndarray, n_neurons: int, *, bin_width: float, mean_rate_hz: float,
                       readout_scale: float, rng: np.random.Generator, log_rate: np.ndarray | None = None,
                       heldout_fraction: float = 0.25, test_fraction: float = 0.2, source: str,
                       latent_names: list[str], latent_long_name: str, attrs: dict | None = None,
                       extra: dict | None = None) -> xr.Dataset:
    """A Poisson population driven by ``latents`` ``(trial, time, K)`` (dimensionless), as a recording Dataset.

    Log rates are ``latents @ C`` with ``C ~ N(0, readout_scale^2 / K)`` ``(K, N)`` (or the given
    ``log_rate`` ``(trial, time, N)``), shifted by one constant so the population's mean rate is
    ``mean_rate_hz``; counts are Poisson draws. Returns ``counts`` and ``rates`` (counts per bin),
    ``latents``, any ``extra`` variables (name -> ``(dims, values, attrs)``), the ``trial``,
    ``time`` (bin centres, s), ``neuron``, ``latent`` coordinates, ``start_time``/``stop_time``
    (s, trials back to back, ``align`` = ``start_time``) and the ``heldout``/``split`` coordinates of
    :func:`analysis.recording.split_recording`, drawn from ``rng`` after the counts.
    """
    n_trials, n_bins, k = latents.shape
    if log_rate is None:
        C = readout_scale / np.sqrt(k) * rng.standard_normal((k, n_neurons))
        log_rate = latents @ C
    rates, counts = poisson_counts(log_rate, bin_width=bin_width, mean_rate_hz=mean_rate_hz, rng=rng)
    ds = population_dataset(counts, rates, latents, bin_width=bin_width, mean_rate_hz=mean_rate_hz, source=source, latent_names=latent_names,
                            latent_long_name=latent_long_name, attrs=attrs, extra=extra)
    return split_recording(ds, heldout_fraction=heldout_fraction, test_fraction=test_fraction, seed=rng)


def poisson_counts(log_rate: np.ndarray, *, bin_width: float, mean_rate_hz: float,
                   rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """True rates and Poisson counts from unnormalised log rates ``(trial, time, N)``: the log rates are
    shifted by one constant so that the population's mean rate is ``mean_rate_hz`` (Hz), i.e.
    ``mean_rate_hz * bin_width`` counts per bin (``bin_width`` in s). Returns ``(rates, counts)``,
    both ``(trial, time, N)`` in counts per bin; the counts are one draw from ``rng``. The one
    rate-and-spike step of every generator in this module."""
    b = np.log(mean_rate_hz * bin_width) - np.log(np.exp(log_rate).mean())
    rates = np.exp(log_rate + b)
    return rates, rng.poisson(rates)


def population_dataset(counts: np.ndarray, rates: np.ndarray, latents: np.ndarray, *, bin_width: float,
                       mean_rate_hz: float, source: str,
                       latent_names: list[str], latent_long_name: str, latent_dim_long_name: str = "latent dimension",
                       attrs: dict | None = None, extra: dict | None = None, coords: dict | None = None) -> xr.Dataset:
    """A synthetic recording Dataset, before its split: ``counts`` and ``rates`` ``(trial, time, neuron)``
    (counts per bin), ``latents`` ``(trial, time, latent)`` and any ``extra`` variables (name ->
    ``(dims, values, attrs)``), with the ``trial``, ``time`` (bin centres, s, bins of ``bin_width`` s),
    ``neuron`` and ``latent`` coordinates, any further ``coords``, and ``start_time``/``stop_time``
    (s; trials back to back from the session start, ``align`` = ``start_time``), attrs ``mean_rate_hz``
    (Hz, the rate asked for) and ``attrs``. The one layout of
    every generator in this module."""
    n_trials, n_bins, n_neurons = counts.shape
    time = (np.arange(n_bins) + 0.5) * bin_width
    start = np.arange(n_trials) * n_bins * bin_width  # trials back to back from the session start
    return xr.Dataset(
        {"counts": (("trial", "time", "neuron"), counts.astype(np.int64), {"long_name": "spike count", "units": "counts/bin"}),
         "rates": (("trial", "time", "neuron"), rates, {"long_name": "true firing rate", "units": "counts/bin"}),
         "latents": (("trial", "time", "latent"), latents, {"long_name": latent_long_name, "units": "1"}),
         **(extra or {})},
        coords={
            "trial": ("trial", np.arange(n_trials), {"units": "", "long_name": "trial id"}),
            "time": ("time", time, {"units": "s", "long_name": "bin centre"}),
            "neuron": ("neuron", np.arange(n_neurons), {"units": "", "long_name": "neuron id"}),
            "latent": ("latent", latent_names, {"units": "", "long_name": latent_dim_long_name}),
            **(coords or {}),
            "start_time": ("trial", start, {"units": "s", "long_name": "trial start (session time)"}),
            "stop_time": ("trial", start + n_bins * bin_width, {"units": "s", "long_name": "trial stop (session time)"}),
        },
        attrs={"bin_width": bin_width, "align": "start_time", "source": source,
               "mean_rate_hz": mean_rate_hz, **(attrs or {})},
    )


def _sizes(n_trials, n_neurons, n_bins, bin_width, mean_rate_hz):
    sizes = [check_number(k, v, integer=True, ge=1) for k, v in
             (("n_trials", n_trials), ("n_neurons", n_neurons), ("n_bins", n_bins))]
    return (*sizes, check_number("bin_width", bin_width, gt=0), check_number("mean_rate_hz", mean_rate_hz, gt=0))


def sinusoid_recording(n_trials: int = 100, n_neurons: int = 40, n_bins: int = 100, *, bin_width: float = 0.01,
                       n_latents: int = 2, frequency_hz: tuple[float, float] = (1.0, 3.0), mean_rate_hz: float = 10.0,
                       readout_scale: float = 1.0, heldout_fraction: float = 0.25, test_fraction: float = 0.2,
                       seed: int = 0) -> xr.Dataset:
    """Smooth periodic latents: latent ``k`` of trial ``i`` is ``sqrt(2) sin(2 pi f_k t + phi_ik)``.

    The frequencies ``f_k`` (Hz, attrs ``frequency_hz``) are drawn once, uniformly in
    ``frequency_hz``, the phases ``phi_ik`` per trial uniformly in ``[0, 2 pi)``; every latent then
    has unit variance over phases and its power spectrum peaks at ``f_k``. Rates and counts as in
    :func:`poisson_population` (``n_neurons`` neurons, mean ``mean_rate_hz``). Same seed, same data.
    """
    n_trials, n_neurons, n_bins, bin_width, mean_rate_hz = _sizes(n_trials, n_neurons, n_bins, bin_width, mean_rate_hz)
    k = check_number("n_latents", n_latents, integer=True, ge=1)
    lo, hi = check_numbers("frequency_hz", frequency_hz, gt=0)
    rng = np.random.default_rng(seed)
    f = rng.uniform(lo, hi, k)
    phase = rng.uniform(0, 2 * np.pi, (n_trials, 1, k))
    t = (np.arange(n_bins) + 0.5)[None, :, None] * bin_width
    z = np.sqrt(2.0) * np.sin(2 * np.pi * f * t + phase)
    return poisson_population(z, n_neurons, bin_width=bin_width, mean_rate_hz=mean_rate_hz, readout_scale=readout_scale,
                              rng=rng, heldout_fraction=heldout_fraction, test_fraction=test_fraction,
                              source="sinusoid_recording", latent_names=[f"sin{j}" for j in range(k)],
                              latent_long_name="true sinusoidal latents", attrs={"seed": seed, "frequency_hz": f})


def squared_exponential(lags_s: np.ndarray, timescale_s: float) -> np.ndarray:
    """The squared-exponential (RBF) correlation ``exp(-lag^2 / (2 tau^2))`` at ``lags_s`` (s) for timescale ``tau`` (s)."""
    return np.exp(-0.5 * (np.asarray(lags_s, float) / timescale_s) ** 2)


def gp_recording(n_trials: int = 100, n_neurons: int = 40, n_bins: int = 100, *, bin_width: float = 0.01,
                 n_latents: int = 3, timescale_ms: float = 100.0, mean_rate_hz: float = 10.0, readout_scale: float = 1.0,
                 heldout_fraction: float = 0.25, test_fraction: float = 0.2, seed: int = 0) -> xr.Dataset:
    """Gaussian-process latents, the generative model of GPFA (Yu et al. 2009).

    Each latent of each trial is an independent draw of a zero-mean, unit-variance GP with the
    squared-exponential kernel :func:`squared_exponential` of timescale ``timescale_ms`` (ms) over the
    bin centres, so the latents' autocorrelation at lag ``s`` is ``exp(-s^2 / (2 tau^2))``. Rates
    and counts as in :func:`poisson_population`. Same seed, same data.
    """
    n_trials, n_neurons, n_bins, bin_width, mean_rate_hz = _sizes(n_trials, n_neurons, n_bins, bin_width, mean_rate_hz)
    k = check_number("n_latents", n_latents, integer=True, ge=1)
    tau = check_number("timescale_ms", timescale_ms, gt=0) / 1e3
    rng = np.random.default_rng(seed)
    t = np.arange(n_bins) * bin_width
    K = squared_exponential(t[:, None] - t[None, :], tau) + 1e-6 * np.eye(n_bins)
    L = np.linalg.cholesky(K)
    z = np.einsum("ts,nsk->ntk", L, rng.standard_normal((n_trials, n_bins, k)))
    return poisson_population(z, n_neurons, bin_width=bin_width, mean_rate_hz=mean_rate_hz, readout_scale=readout_scale,
                              rng=rng, heldout_fraction=heldout_fraction, test_fraction=test_fraction,
                              source="gp_recording", latent_names=[f"gp{j}" for j in range(k)],
                              latent_long_name="true Gaussian-process latents",
                              attrs={"seed": seed, "timescale_ms": timescale_ms})


def rotation_dynamics(n_latents: int, bin_width: float, timescale_ms: float, frequency_hz: float) -> np.ndarray:
    """The per-bin transition matrix ``A`` ``(K, K)`` of :func:`lds_recording`: 2x2 blocks
    ``exp(-dt / tau) R(2 pi f_j dt)`` (damped rotations at frequencies ``f_j = frequency_hz * (j + 1)``,
    one per pair of latents; an odd last latent decays without rotating), column-vector convention ``x_t = A x_{t-1}``."""
    A = np.zeros((n_latents, n_latents))
    rho = np.exp(-bin_width / (timescale_ms / 1e3))
    for j in range(n_latents // 2):
        a = 2 * np.pi * frequency_hz * (j + 1) * bin_width
        A[2 * j:2 * j + 2, 2 * j:2 * j + 2] = rho * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    if n_latents % 2:
        A[-1, -1] = rho
    return A


def lds_recording(n_trials: int = 100, n_neurons: int = 40, n_bins: int = 100, *, bin_width: float = 0.01,
                  n_latents: int = 4, timescale_ms: float = 300.0, frequency_hz: float = 2.0, mean_rate_hz: float = 10.0,
                  readout_scale: float = 1.0, heldout_fraction: float = 0.25, test_fraction: float = 0.2,
                  seed: int = 0) -> xr.Dataset:
    """A noisy linear dynamical system (the Poisson LDS of Macke et al. 2011): ``x_t = A x_{t-1} + w_t``.

    ``A`` = :func:`rotation_dynamics` (attrs ``dynamics``), ``w_t ~ N(0, I - A A^T)`` so that the
    process is stationary with unit variance, and ``x_1`` is drawn from that stationary law:
    ``Cov(x_t) = I`` and ``Cov(x_t, x_{t-1}) = A`` at every bin. Rates and counts as in
    :func:`poisson_population`. Same seed, same data.
    """
    n_trials, n_neurons, n_bins, bin_width, mean_rate_hz = _sizes(n_trials, n_neurons, n_bins, bin_width, mean_rate_hz)
    k = check_number("n_latents", n_latents, integer=True, ge=1)
    check_number("timescale_ms", timescale_ms, gt=0)
    check_number("frequency_hz", frequency_hz, ge=0)
    rng = np.random.default_rng(seed)
    A = rotation_dynamics(k, bin_width, timescale_ms, frequency_hz)
    Q = np.linalg.cholesky(np.eye(k) - A @ A.T + 1e-12 * np.eye(k))
    z = np.empty((n_trials, n_bins, k))
    z[:, 0] = rng.standard_normal((n_trials, k))
    for t in range(1, n_bins):
        z[:, t] = z[:, t - 1] @ A.T + rng.standard_normal((n_trials, k)) @ Q.T
    return poisson_population(z, n_neurons, bin_width=bin_width, mean_rate_hz=mean_rate_hz, readout_scale=readout_scale,
                              rng=rng, heldout_fraction=heldout_fraction, test_fraction=test_fraction,
                              source="lds_recording", latent_names=[f"x{j}" for j in range(k)],
                              latent_long_name="true linear-dynamical latents",
                              attrs={"seed": seed, "dynamics": A.reshape(-1), "timescale_ms": timescale_ms,
                                     "frequency_hz": frequency_hz})


def ring_recording(n_trials: int = 100, n_neurons: int = 40, n_bins: int = 100, *, bin_width: float = 0.01,
                   concentration: float = 2.0, angular_speed_deg_s: float = 90.0, speed_timescale_ms: float = 300.0,
                   mean_rate_hz: float = 10.0, heldout_fraction: float = 0.25, test_fraction: float = 0.2,
                   seed: int = 0) -> xr.Dataset:
    """A head-direction-like ring population: von Mises tuning to an angle that turns smoothly.

    The head direction ``theta_t`` (rad) starts uniformly on the circle and turns with an angular
    velocity that is an Ornstein-Uhlenbeck process (s.d. ``angular_speed_deg_s`` deg/s, timescale
    ``speed_timescale_ms``). Neuron ``n`` prefers direction ``phi_n = 2 pi n / N`` (coordinate
    ``preferred_direction``, rad) with log rate ``concentration * cos(theta - phi_n)`` (plus one
    constant for the mean rate), so its tuning curve peaks at ``phi_n``. The latents are
    ``(cos theta, sin theta)``, the behaviour ``head_direction`` is ``theta`` wrapped to
    ``[-pi, pi)`` (an angular variable). Same seed, same data.
    """
    n_trials, n_neurons, n_bins, bin_width, mean_rate_hz = _sizes(n_trials, n_neurons, n_bins, bin_width, mean_rate_hz)
    kappa = check_number("concentration", concentration, ge=0)
    sd = np.deg2rad(check_number("angular_speed_deg_s", angular_speed_deg_s, ge=0))
    rho = np.exp(-bin_width / (check_number("speed_timescale_ms", speed_timescale_ms, gt=0) / 1e3))
    rng = np.random.default_rng(seed)
    omega = np.empty((n_trials, n_bins))
    omega[:, 0] = sd * rng.standard_normal(n_trials)
    for t in range(1, n_bins):
        omega[:, t] = rho * omega[:, t - 1] + sd * np.sqrt(1 - rho ** 2) * rng.standard_normal(n_trials)
    theta = rng.uniform(0, 2 * np.pi, (n_trials, 1)) + np.cumsum(omega * bin_width, 1)
    preferred = 2 * np.pi * np.arange(n_neurons) / n_neurons
    log_rate = kappa * np.cos(theta[..., None] - preferred)
    z = np.stack([np.cos(theta), np.sin(theta)], -1)
    wrapped = np.angle(np.exp(1j * theta))
    ds = poisson_population(z, n_neurons, bin_width=bin_width, mean_rate_hz=mean_rate_hz, readout_scale=1.0,
                            rng=rng, log_rate=log_rate, heldout_fraction=heldout_fraction, test_fraction=test_fraction,
                            source="ring_recording", latent_names=["cos", "sin"],
                            latent_long_name="true head direction as (cos, sin)",
                            attrs={"seed": seed, "concentration": kappa},
                            extra={"head_direction": (("trial", "time"), wrapped,
                                                      {"long_name": "head direction (behaviour, circular)", "units": "rad"})})
    return ds.assign_coords(preferred_direction=("neuron", preferred, {"units": "rad", "long_name": "preferred direction"}))


def silence_stretch(recording: xr.Dataset, fraction: float = 1.0 / 3.0) -> xr.Dataset:
    """The recording with every unit silent for the last ``fraction`` of the session.

    Trials are ordered by ``start_time`` (session time, s); every bin whose session time lies in the
    last ``fraction`` of the span from the first trial's start to the last trial's stop gets zero
    counts and (when present) zero true rates: the units stop firing, as in a drifting or dying
    recording. Returns a copy; attrs ``silent_from`` holds the session time (s) silence begins.
    """
    frac = check_number("fraction", fraction, gt=0, lt=1)
    out = recording.copy(deep=True)
    begin, end = float(out["start_time"].min()), float(out["stop_time"].max())
    cut = end - frac * (end - begin)
    session_time = out["start_time"] + out["time"] - 0.5 * float(out.attrs["bin_width"])   # bin starts (s)
    silent = (session_time >= cut).transpose("trial", "time").values
    for name in ("counts", "rates"):
        if name in out:
            da = out[name].transpose("trial", "time", ...)
            da.values[silent] = 0
            out[name] = da.transpose(*recording[name].dims)
    out.attrs["silent_from"] = cut
    return out
