"""The Brian2 spiking translation: the LIF rate code matches its Siegert calibration, the E/I
split keeps every signed weight, the population rates follow the rate circuit and carry its
mismatch negativity, runs repeat exactly, and the labelled output is consistent.

Everything runs on Brian2's numpy target with small circuits, except one check that
cpp_standalone runs interleave with runtime runs (skipped without a C++ compiler)."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter1d

from circuits.laminar import CircuitParams, LaminarCircuit
from circuits.paradigms import Oddball, Stimulus
from circuits.spiking import (TARGETS, SpikingCircuit, SpikingParams, cut_epochs, lif_rate, rate_code,
                              spike_trains)
from pcsim.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
ODDBALL = CircuitParams(dt=0.5, tau_deep=20.0, prior_rate=0.01, deep_leak=0.05)


def tonotopic(n: int, areas: int = 3, params: CircuitParams = ODDBALL, **kw) -> LaminarCircuit:
    return LaminarCircuit([n] * areas, [np.eye(n)] * (areas - 1), precisions=[1.0] * areas, params=params, **kw)


def held(x, ms: float) -> Stimulus:
    """Patterns ``x`` (B, n) each held on from t = 0 for ``ms``, cue always on."""
    x = np.atleast_2d(np.asarray(x, float))
    return Stimulus(x, np.arange(x.shape[0])[:, None], np.array([0.0]), ms, ms, cue=False)


@pytest.fixture(scope="module")
def oddball():
    """A 3-area, 6-channel oddball circuit, 20 tones, run by the rate circuit and (numpy
    target, 40 neurons per unit) by its spiking translation."""
    circ = tonotopic(6)
    stim = Oddball(n_channels=6, standard=1.0, deviances=(3.0,), p_deviants=(0.3,), n_tones=20, duration_ms=100.0,
                   soa_ms=300.0, lead_standards=6, seeds=(0,)).build()
    ref = circ.run(stim, record_every_ms=1.0)
    spk = SpikingCircuit(circ, SpikingParams(neurons_per_unit=40, smooth_ms=10.0))
    ds = spk.run(stim, target="numpy", seed=0, count_bin_ms=50.0, spike_neurons=2)
    return circ, stim, ref, spk, ds


def test_lif_rate_code_matches_a_simulated_population():
    """A constant input ``x`` held on the input layer makes its ON group fire at the Siegert
    rate of ``mu0 + k x`` (the kicked-noise correction included), and the decoded activity
    recovers ``x``: rate code, noise implementation and input path agree."""
    xs = np.array([0.0, 0.25, 0.5, 1.0])
    circ = tonotopic(len(xs), areas=1)
    p = SpikingParams(neurons_per_unit=150, smooth_ms=1.0)
    ds = SpikingCircuit(circ, p).run(held(xs, 1500.0), target="numpy", seed=1, count_bin_ms=None, spike_neurons=0)
    late = ds.time >= 0.3  # s
    hz = ds.firing_rate.sel(area="input", population="l4", polarity="on").isel(trial=0).where(late).mean("time").values
    c = rate_code(p)
    expect = lif_rate(c.mu0 + c.k * xs, tau_m_ms=p.tau_m_ms, refractory_ms=p.refractory_ms, noise=p.noise,
                      kick_ms=p.update_ms)
    assert expect[0] == pytest.approx(p.floor_hz, rel=1e-6)
    assert np.all(np.abs(hz - expect) <= np.maximum(0.25 * expect, 1.0)), (hz, expect)
    assert np.all(np.abs(hz[1:] - expect[1:]) <= 0.06 * expect[1:]), (hz, expect)
    decoded = ds.rate.sel(area="input", population="l4").isel(trial=0).where(late).mean("time").values
    # threshold-linear code: exact at 0 and 1, within the soft threshold's sag in between
    assert np.all(np.abs(decoded - xs) <= 0.06), decoded
    # the OFF group of a non-negative input stays at or below its floor
    off = ds.firing_rate.sel(area="input", population="l4", polarity="off").isel(trial=0).where(late).mean("time")
    assert float(off.max()) <= p.floor_hz * 1.25


def test_lif_rate_is_the_white_noise_siegert_limit():
    """Without kicks the threshold correction vanishes; with kicks it lowers every rate."""
    mu = np.array([0.5, 0.8, 1.2])
    white = lif_rate(mu, tau_m_ms=10.0, refractory_ms=0.5, noise=0.15)
    kicked = lif_rate(mu, tau_m_ms=10.0, refractory_ms=0.5, noise=0.15, kick_ms=0.5)
    assert np.all(np.diff(white) > 0) and np.all(kicked < white)
    # deterministic limit far above threshold: 1 / (t_ref + tau ln(mu / (mu - 1)))
    hi = lif_rate(np.array([3.0]), tau_m_ms=10.0, refractory_ms=0.5, noise=0.01)[0]
    assert hi == pytest.approx(1.0 / (0.5e-3 + 10e-3 * np.log(3.0 / 2.0)), rel=1e-3)


def test_ei_split_preserves_every_signed_weight():
    """Excitatory synapses carry positive, inhibitory negative jumps, and summing them over a
    unit pair (times the rate-code scale, with each source group's polarity) gives back the
    projection's signed weight; the floor correction of paired sources cancels, so the
    constant input is the graph's bias."""
    g = torch.Generator().manual_seed(3)
    sizes = (3, 4, 2)
    weights = [torch.randn(sizes[k + 1], sizes[k], generator=g) for k in range(2)]
    biases = [0.3 * torch.randn(sizes[k], generator=g) for k in range(2)]
    circ = LaminarCircuit(sizes, weights, biases, precisions=[0.7, 1.3, 2.0], params=ODDBALL)
    p = SpikingParams(neurons_per_unit=3)
    spk = SpikingCircuit(circ, p)
    conn = spk.connectivity(trials=2)
    assert (conn["exc"]["weight"] > 0).all() and (conn["inh"]["weight"] < 0).all()
    pre = np.concatenate([conn["exc"]["pre"], conn["inh"]["pre"]])
    post = np.concatenate([conn["exc"]["post"], conn["inh"]["post"]])
    w = np.concatenate([conn["exc"]["weight"], conn["inh"]["weight"]])
    M, N = spk.neurons_per_trial, p.neurons_per_unit
    assert np.array_equal(pre // M, post // M)  # copies never talk to each other
    groups = spk.groups()
    first, n_units = groups.first_neuron.values, groups.n_units.values
    pol = np.where(groups.polarity.values == "on", 1.0, -1.0)
    name = [f"{a}.{q}" for a, q in zip(groups.area.values, groups.population.values)]

    def locate(idx):
        i = idx % M
        gi = np.searchsorted(first, i, side="right") - 1
        return gi, (i - first[gi]) // N

    gs, us = locate(pre)
    gt, ut = locate(post)
    pops = {pp.name: pp for pp in spk.graph.populations}
    expected: dict = {}
    for pr in spk.graph.projections:
        W = pr.weight.double().numpy()
        expected[(pr.source, pr.target)] = expected.get((pr.source, pr.target), 0) + W
    checked = 0
    for (src, dst), W in expected.items():
        tau = pops[dst].tau_ms - (0.0 if pops[dst].kind == "integrator" else p.lag_ms)
        n_src_groups = 1 if pops[src].kind == "rectified" else 2
        # one target neuron (the first of its group's first trial) per target unit
        for j in range(W.shape[1]):
            tgt_group = [k for k in range(len(name)) if name[k] == dst][0]
            sel = (np.array(name)[gs] == src) & (gt == tgt_group) & (ut == j) & (post % M == first[tgt_group] + j * N) \
                & (pre < M)
            rec = np.zeros(W.shape[0])
            np.add.at(rec, us[sel], pol[gs[sel]] * w[sel])
            rec *= p.gain_hz * tau / 1000.0 / n_src_groups
            np.testing.assert_allclose(rec, W[:, j], atol=1e-9)
            checked += 1
    assert checked >= 10
    bias = np.zeros(M)
    for pname, b in spk.graph.bias.items():
        for k in np.flatnonzero(np.array(name) == pname):
            bias[first[k]:first[k] + n_units[k] * N] = np.repeat(b.double().numpy(), N)
    np.testing.assert_allclose(conn["bias"], np.tile(bias, 2), atol=1e-12)


def test_spiking_rates_follow_the_rate_circuit(oddball):
    """Over the whole block, the smoothed spiking activity of every population whose rate
    activity varies by at least 0.02 correlates >= 0.9 with the rate circuit (both smoothed
    with the same 10 ms Gaussian), and the activity levels agree."""
    circ, stim, ref, spk, ds = oddball
    checked = 0
    for a in ds.area.values:
        for q in ds.population.values:
            y = ref.rate.sel(area=a, population=q).values
            if np.isnan(y).all():
                assert np.isnan(ds.rate.sel(area=a, population=q).values).all()
                continue
            y = gaussian_filter1d(y, 10.0, axis=1, mode="nearest")
            if y.std() < 0.02:
                continue
            x = ds.rate.sel(area=a, population=q).values
            r = np.corrcoef(x.ravel(), y.ravel())[0, 1]
            assert r >= 0.9, f"{a}.{q}: r = {r:.3f}"
            assert abs(x.mean() - y.mean()) < 0.25 * y.std() + 0.01, f"{a}.{q}: mean {x.mean():.3f} vs {y.mean():.3f}"
            checked += 1
    assert checked >= 9


def test_spiking_circuit_has_a_mismatch_negativity(oddball):
    """Summed L2/3 error activity 50-250 ms after onset is larger for deviants than for
    standards in every cortical area of the spiking circuit, as in the rate circuit."""
    circ, stim, ref, spk, ds = oddball
    keep = np.arange(stim.slots)[None, :] >= 6
    for d in (ds, ref):
        ep = cut_epochs(d, stim, 50.0, 250.0, keep=keep)
        err = ep.rate.sel(population=["l23_pos", "l23_neg"]).sum(("population", "unit")).sel(time=slice(0.05, 0.25)).mean("time")
        kind = np.asarray(ep.kind.values).astype(str)
        assert (kind == "deviant").sum() >= 2
        mmn = err.isel(trial=np.flatnonzero(kind == "deviant")).mean("trial") - \
            err.isel(trial=np.flatnonzero(kind == "standard")).mean("trial")
        assert (mmn.sel(area=["area1", "area2"]) > 0.02).all(), mmn.values


def test_prior_is_integrated_from_spikes(oddball):
    """The prior m rebuilt from the saved spikes ends where Brian2's prior group ended, moved
    toward the standard tone (it learned the regularity), and the cue gates it."""
    circ, stim, ref, spk, ds = oddball
    np.testing.assert_allclose(ds.prior_mean.isel(time=-1).values, ds.final_prior.values, atol=1e-9)
    m = ds.final_prior.values[0]
    assert m[1] > 0.3 and m[1] == m.max()  # the standard sits on channel 1
    off = ds.cue.values == 0
    assert np.all(ds.prior.values[off] == 0)
    # the rate circuit learns the same prior
    np.testing.assert_allclose(m, ref.attrs["final_prior"], atol=0.12)


def test_outputs_are_labelled_and_consistent(oddball):
    """Spike counts, spike times, firing rates and decoded activity describe the same spikes."""
    circ, stim, ref, spk, ds = oddball
    N = ds.attrs["neurons_per_unit"]
    assert ds.rate.dims == ("trial", "time", "area", "population", "unit")
    assert ds.spike_count.dims == ("trial", "count_time", "group", "neuron")
    assert ds.sizes["group"] == 16 and ds.sizes["neuron"] == 6 * N
    assert (ds.spike_count.values >= 0).all()  # all groups have 6 units: no padding
    # decoded activity = (R_on - R_off) / gain for signed, (R - floor) / gain for rectified populations
    fr = ds.firing_rate
    dec = (fr.sel(area="area1", population="l56", polarity="on") - fr.sel(area="area1", population="l56", polarity="off")) \
        / ds.attrs["gain_hz"]
    np.testing.assert_allclose(ds.rate.sel(area="area1", population="l56"), dec, atol=1e-9)
    assert np.isnan(fr.sel(population="l23_pos", polarity="off")).all()
    # spike times of the recorded neurons give their counts
    trains, table = spike_trains(ds)
    assert len(trains) == 16 * 6 * 2 == table.sizes["unit_id"]
    bins = ds.count_time.values  # s
    width = float(bins[1] - bins[0])
    for u in (0, 37, len(trains) - 1):
        g, n = int(np.flatnonzero(ds.group.values == table.group.values[u])[0]), int(table.neuron.values[u])
        assert n % N < 2
        counts = np.histogram(trains[u], bins=np.r_[bins, bins[-1] + width])[0]
        np.testing.assert_array_equal(counts, ds.spike_count.isel(trial=0, group=g, neuron=n).values)
        assert np.all(np.diff(trains[u]) > 0)
    assert table.trial_stop.values[0] == pytest.approx(stim.total_ms / 1000.0)
    # every population group spikes, the firing rates stay in the LIF's range
    assert np.all(ds.spike_count.sum(("trial", "count_time", "neuron")).values > 0)
    assert float(fr.max()) < 1000.0 / ds.attrs["refractory_ms"]


def test_cut_epochs_matches_the_rate_circuits_own_epochs():
    """Epochs cut from a continuous recording equal the rate circuit's epoched run."""
    circ = tonotopic(4, params=CircuitParams(dt=0.5, tau_deep=20.0, prior_rate=0.01))
    stim = Oddball(n_channels=4, standard=1.0, deviances=(2.0,), p_deviants=(0.3,), n_tones=8, lead_standards=2,
                   duration_ms=50.0, soa_ms=200.0, seeds=(0, 1)).build()
    keep = np.zeros((stim.blocks, stim.slots), bool)
    keep[:, 3:] = True
    keep[1, 5] = False
    cont = circ.run(stim, record_every_ms=1.0)
    ep = circ.run(stim, record_every_ms=1.0, epochs=(20.0, 150.0), keep=keep)
    cut = cut_epochs(cont, stim, 20.0, 150.0, keep=keep)
    np.testing.assert_array_equal(cut.time.values, ep.time.values)
    np.testing.assert_array_equal(cut.block.values, ep.block.values)
    np.testing.assert_array_equal(cut.slot.values, ep.slot.values)
    np.testing.assert_array_equal(np.asarray(cut.kind.values).astype(str), np.asarray(ep.kind.values).astype(str))
    np.testing.assert_allclose(cut.rate.values, ep.rate.values, atol=1e-6, equal_nan=True)
    with pytest.raises(ValueError, match="blocks"):
        cut_epochs(cont.isel(trial=[0]), stim, 20.0, 150.0)
    with pytest.raises(ValueError, match="outside"):
        cut_epochs(cont, stim, 1000.0, 150.0, keep=keep)


def test_repeated_runs_in_one_process_are_identical():
    """Two runs with the same seed give the same spikes (Brian2 scopes and names do not leak
    from one network into the next); another seed gives other spikes."""
    circ = tonotopic(2, areas=2)
    spk = SpikingCircuit(circ, SpikingParams(neurons_per_unit=6))
    stim = held([[1.0, 0.3]], 150.0)
    a = spk.run(stim, target="numpy", seed=5, count_bin_ms=None)
    b = spk.run(stim, target="numpy", seed=5, count_bin_ms=None)
    c = spk.run(stim, target="numpy", seed=6, count_bin_ms=None)
    assert a.spike_time.size > 100
    for v in ("spike_time", "spike_group", "spike_neuron"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    assert a.spike_time.size != c.spike_time.size or not np.array_equal(a.spike_time.values, c.spike_time.values)
    # a second, different network in the same process runs too
    other = SpikingCircuit(tonotopic(3, areas=2), SpikingParams(neurons_per_unit=4))
    d = other.run(held([[0.5, 0.5, 0.5]], 50.0), target="numpy", seed=5, count_bin_ms=None)
    assert d.sizes["unit"] == 3


@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_standalone_runs_interleave_with_runtime_runs(tmp_path):
    """cpp_standalone switches Brian2's global device: a standalone run, a runtime (numpy)
    run and a second standalone run of another network in one process all work, and the
    standalone spikes equal the numpy target's for the same seed (the device is reset)."""
    circ = tonotopic(2, areas=2)
    spk = SpikingCircuit(circ, SpikingParams(neurons_per_unit=6))
    stim = held([[1.0, 0.3]], 100.0)
    a = spk.run(stim, target="cpp_standalone", seed=3, count_bin_ms=None, directory=str(tmp_path / "a"))
    b = spk.run(stim, target="numpy", seed=3, count_bin_ms=None)
    assert a.spike_time.size > 50
    for v in ("spike_time", "spike_group", "spike_neuron"):
        np.testing.assert_array_equal(a[v].values, b[v].values)
    other = SpikingCircuit(tonotopic(3, areas=2), SpikingParams(neurons_per_unit=4))
    c = other.run(held([[0.5, 0.5, 0.5]], 50.0), target="cpp_standalone", seed=3, count_bin_ms=None,
                  directory=str(tmp_path / "c"))
    assert c.sizes["unit"] == 3 and c.spike_time.size > 0


def test_bad_input_is_refused():
    circ = tonotopic(2, areas=2)
    spk = SpikingCircuit(circ, SpikingParams(neurons_per_unit=2))
    with pytest.raises(ValueError, match="unknown Brian2 target 'cuda'"):
        spk.run(held([[1.0, 0.0]], 10.0), target="cuda")
    assert TARGETS == ("numpy", "cython", "cpp_standalone")
    with pytest.raises(ValueError, match="3 input channels"):
        spk.run(held([[1.0, 0.0, 0.0]], 10.0))
    noisy = Stimulus(np.ones((1, 2)), np.zeros((1, 1), int), np.array([0.0]), 10.0, 10.0, noise_std=0.1)
    with pytest.raises(ValueError, match="noise_std"):
        spk.run(noisy)
    with pytest.raises(ConfigError, match="Stimulus"):
        spk.run(np.ones((1, 2)))
    with pytest.raises(ValueError, match="record_every_ms"):
        spk.run(held([[1.0, 0.0]], 10.0), record_every_ms=0.0)
    with pytest.raises(ValueError, match="linear"):
        SpikingCircuit(LaminarCircuit([2, 2], [np.eye(2)], activations="tanh", params=ODDBALL))
    with pytest.raises(ValueError, match="neurons_per_unit"):
        SpikingParams(neurons_per_unit=0)
    with pytest.raises(ValueError, match="update_ms"):
        SpikingParams(update_ms=0.25 + 0.01)
    with pytest.raises(ValueError, match="refractory ceiling"):
        SpikingParams(gain_hz=900.0)
    with pytest.raises(ValueError, match="lag_ms"):
        SpikingCircuit(circ, SpikingParams(lag_ms=4.0))
    with pytest.raises(ConfigError, match="LaminarCircuit or CircuitGraph"):
        SpikingCircuit("circuit")


def test_spiking_oddball_experiment_runs_and_replots(tmp_path):
    """The shipped config validates; a shrunken run writes a summary with per-population
    correlations and the spiking MMN, and its figures redraw from the saved file alone."""
    from pcsim.config import load_config
    from pcsim.registry import RunContext
    from pcsim.results import convention_problems, open_results, write_results

    from circuits.experiments import spiking_oddball as exp

    cfg = load_config(ROOT / "configs" / "spiking_oddball.toml")
    assert cfg.spiking.target in ("cython", "numpy") and cfg.circuit.tau_deep == 20.0
    small = load_config(ROOT / "configs" / "spiking_oddball.toml", overrides=[
        "spiking.target=numpy", "spiking.neurons_per_unit=8", "stimulus.n_tones=10", "stimulus.seeds=[0]",
        "stimulus.lead_standards=3", "stimulus.p_deviants=[0.3]", "analysis.skip_tones=3"])
    res = exp.run(small, RunContext(tmp_path, "cpu", progress=False))
    s = res.summary
    assert set(s["correlation"]) == {"input", "area1", "area2"} and "l56" in s["correlation"]["area1"]
    assert s["n_deviants"] >= 1 and set(s["mmn_spiking"]) == {"input", "area1", "area2"}
    assert -1 <= s["min_validated_correlation"] <= 1
    assert convention_problems(res.dataset) == []
    write_results(res, {}, tmp_path / "out", small)
    ds = open_results(tmp_path / "out")
    assert convention_problems(ds) == [] and ds.spike_time.attrs["units"] == ds.time.attrs["units"] == "s"
    assert ds.rate.dims[:2] == ("model", "trial")
    figs = exp.plot(ds)
    assert {"traces", "correlation", "mmn", "raster"} <= set(figs)
    with pytest.raises(ConfigError, match="stimulus.deviances"):
        load_config(ROOT / "configs" / "spiking_oddball.toml", overrides=["stimulus.deviances=[9.0]"])


def test_benchmark_reports_the_real_time_factor():
    """``benchmark`` (what ``pcsim bench circuits`` calls) sizes the circuit to the requested
    neuron count and reports simulated over wall seconds and the one-off cost apart."""
    from circuits.bench import spiking_benchmark as benchmark

    r = benchmark("numpy", n_neurons=1300, sim_seconds=0.05, params=SpikingParams(neurons_per_unit=20))
    assert r["target"] == "numpy" and r["neurons_per_unit"] == 20
    assert r["n_neurons"] == 16 * r["n_units"] * 20 and abs(r["n_neurons"] - 1300) <= 16 * 20 / 2
    assert r["realtime_factor"] == pytest.approx(r["sim_seconds"] / r["wall_seconds"])
    assert r["compile_seconds"] > 0 and r["n_synapses"] > 0 and r["n_spikes"] > 0
    with pytest.raises(ValueError, match="unknown Brian2 target"):
        benchmark("gpu")


def test_a_compiling_run_says_so_before_it_starts(monkeypatch):
    """With progress on, a cython run prints the compile note before Brian2 builds the network
    (setting its groups' variables already generates and compiles code); a numpy run, which
    compiles nothing, does not. The first NeuronGroup stops the run, so nothing is compiled here."""
    import gc
    import io

    import brian2
    from brian2.utils.logger import catch_logs

    from circuits.spiking import runner

    class Started(Exception):
        pass

    err = io.StringIO()

    def build(*args, **kwargs):
        err.write("<brian2 run>")
        raise Started

    monkeypatch.setattr(runner.sys, "stderr", err)
    monkeypatch.setattr(brian2, "NeuronGroup", build)
    spk = SpikingCircuit(tonotopic(2, areas=1), SpikingParams(neurons_per_unit=2))
    with catch_logs():  # the never-run network's objects warn when collected
        for target, noted in (("cython", True), ("numpy", False)):
            err.seek(0)
            err.truncate()
            with pytest.raises(Started):
                spk.run(held([[1.0, 0.0]], 10.0), target=target, progress=True)
            text = err.getvalue()
            assert (runner.COMPILE_NOTE["cython"] in text) is noted, text
            if noted:
                assert text.index(runner.COMPILE_NOTE["cython"]) < text.index("<brian2 run>")
        gc.collect()
