"""The laminar rate circuit: fixed points equal predictive-coding inference, the graph form
equals the simulated dynamics, errors are rectified and precision-weighted, trials batch."""

import math

import numpy as np
import pytest
import torch

from circuits.laminar import CircuitParams, LaminarCircuit
from circuits.paradigms import Oddball, Stimulus, tone
from pcsim.activations import get_activation
from pcsim.energy import value_gradients
from pcsim.inference import InferenceConfig, init_state, relax
from pcsim.network import PCNetwork


def constant_stimulus(x: np.ndarray, ms: float) -> Stimulus:
    """Each row of ``x`` (B, n) held on for ``ms`` from t = 0, cue always on."""
    B = x.shape[0]
    return Stimulus(x, np.arange(B)[:, None], np.array([0.0]), ms, ms, cue=False)


def trained_like_network(seed=0, act="tanh", sizes=(3, 5, 6)):
    net = PCNetwork.init(sizes, act, mode="generative", seed=seed, precision=[0.7, 1.6])
    g = torch.Generator().manual_seed(seed + 100)
    net.biases = [0.2 * torch.randn(b.shape, generator=g) for b in net.biases]
    net.prior_mean = 0.5 * torch.randn(net.prior_mean.shape, generator=g)
    net.prior_log_precision = torch.full_like(net.prior_log_precision, math.log(2.0))
    return net


@pytest.mark.parametrize("interneurons", [False, True])
@pytest.mark.parametrize("act", ["tanh", "linear"])
def test_fixed_point_is_a_pc_equilibrium(interneurons, act):
    """With no leak, the circuit settles where dE/dx = 0 for the same network's energy; for
    a linear network (one minimum) that is exactly where pcsim's relaxation goes. (Slow
    interneurons, or fast representations, add loop delay and can turn the fixed point into
    a limit cycle, the circuit's rhythm; the time constants here keep it stable.)"""
    net = trained_like_network(act=act)
    data = torch.randn(4, net.sizes[-1], generator=torch.Generator().manual_seed(3))
    params = CircuitParams(dt=0.25, tau_deep=20.0, tau_inh=1.0, interneurons=interneurons)
    circ = LaminarCircuit.from_network(net, params=params)
    ds = circ.run(constant_stimulus(data.numpy(), 4000.0), record_every_ms=50.0)
    last = ds.rate.isel(time=-1)
    xs = [torch.as_tensor(last.sel(area=circ.area_names[net.depth - l], population="l56").values[:, : net.sizes[l]])[None]
          for l in range(net.depth)] + [data[None]]
    grads = value_gradients(net, xs)
    for l in range(net.depth):
        assert float(grads[l].abs().max()) < 2e-3, f"layer {l} is not at rest: |dE/dx| = {float(grads[l].abs().max())}"
    # the error populations hold the precision-weighted prediction errors of that state
    for a in range(1, circ.n_areas):
        layer = net.depth - a
        below = last.sel(area=circ.area_names[a - 1])
        eps = (below.sel(population="l23_pos") - below.sel(population="l23_neg")).values[:, : circ.sizes[a - 1]]
        pred = get_activation(net.activations[layer]).f(xs[layer][0]) @ net.weights[layer][0] + net.biases[layer][0]
        want = (xs[layer + 1][0] - pred) * net.precision()[layer][0]
        np.testing.assert_allclose(eps, want.numpy(), atol=2e-3)
    if act == "linear":
        state = init_state(net, data=data)
        relax(net, state, InferenceConfig(steps=4000, dt=1.0, tau=10.0))
        for l in range(net.depth):
            np.testing.assert_allclose(xs[l][0].numpy(), state.x[l][0].numpy(), atol=2e-3)


def test_from_network_maps_areas_to_layers():
    net = trained_like_network()
    circ = LaminarCircuit.from_network(net, area_names=("LGN", "V1", "V2"))
    assert circ.sizes == (6, 5, 3)
    torch.testing.assert_close(circ.weights[0], net.weights[1][0])  # V1 predicts LGN with W_2
    torch.testing.assert_close(circ.weights[1], net.weights[0][0])  # V2 predicts V1 with W_1
    torch.testing.assert_close(circ.precisions[0], torch.full((6,), 1.6))
    torch.testing.assert_close(circ.precisions[2], torch.full((3,), 2.0))
    with pytest.raises(ValueError, match="generative"):
        LaminarCircuit.from_network(PCNetwork.init((3, 4), "tanh"))


def reference_graph_run(circ: LaminarCircuit, stim: Stimulus, seconds_steps: int):
    """Integrate the CircuitGraph with a generic population/projection loop (float64)."""
    g = circ.graph()
    p = g.params
    pops = {q.name: q for q in g.populations}
    x = {}
    init = circ.initial_state(stim.blocks)
    for q in g.populations:
        x[q.name] = init[q.population][circ.area_names.index(q.area)].double().clone()
    m = init["m"].double().clone()
    t_ms = np.arange(seconds_steps) * p.dt
    drive, cue = stim.render(t_ms)
    out = []
    for i in range(seconds_steps):
        c = float(cue[0, i])
        u = {n: torch.zeros_like(v) for n, v in x.items()}
        ug = {n: torch.zeros_like(v) for n, v in x.items()}
        for pr in g.projections:
            src = get_activation(pr.transfer).f(x[pr.source])
            (ug if pr.gated else u)[pr.target] += src @ pr.weight.double()
        for n, b in g.bias.items():
            u[n] += b.double()
        for n, gain in g.prior_inputs.items():
            u[n] += gain.double() * c * m
        new = {}
        for n, q in pops.items():
            k = p.dt / q.tau_ms
            if q.kind == "input":
                new[n] = x[n] + k * (torch.as_tensor(drive[:, i]) - x[n])
            elif q.kind == "relay":
                new[n] = x[n] + k * (u[n] - x[n])
            elif q.kind == "rectified":
                new[n] = x[n] + k * (torch.relu(u[n]) - x[n])
            else:
                act = get_activation(q.activation)
                fx = act.f(x[n])
                new[n] = x[n] + k * (act.df(x[n], fx) * ug[n] + u[n] - q.leak * x[n])
        pos, neg = g.prior_errors
        m = m + p.dt * g.prior_rate * c * (x[pos] - x[neg])
        x = new
        out.append({n: v.clone() for n, v in x.items()})
    return out


@pytest.mark.parametrize("interneurons", [False, True])
def test_graph_form_reproduces_the_dynamics(interneurons):
    """A generic population/projection integrator of ``graph()`` (what the spiking
    translation consumes) reproduces ``run`` step by step, prior learning and cue included."""
    net = trained_like_network(seed=2)
    params = CircuitParams(dt=0.5, interneurons=interneurons, deep_leak=0.1, prior_rate=0.02)
    circ = LaminarCircuit.from_network(net, params=params).to("cpu")
    circ.weights = [w.double() for w in circ.weights]
    circ.biases = [b.double() for b in circ.biases]
    circ.precisions = [q.double() for q in circ.precisions]
    circ.prior_mean = circ.prior_mean.double()
    circ.dtype = torch.float64
    rng = np.random.default_rng(0)
    stim = Stimulus(rng.normal(size=(2, 6)), np.array([[0, 1, -1], [1, 0, 0]]), np.array([5.0, 45.0, 85.0]), 20.0, 120.0)
    ds = circ.run(stim, record_every_ms=0.5)
    ref = reference_graph_run(circ, stim, 240)
    for i in (10, 60, 150, 239):
        for a, area in enumerate(circ.area_names):
            for pop in circ.populations:
                if pop == "l56" and a == 0:
                    continue
                got = ds.rate.isel(time=i + 1 if i + 1 < ds.sizes["time"] else -1).sel(area=area, population=pop).values
                # run() records the state before step i; the reference stores it after
                if i + 1 >= ds.sizes["time"]:
                    continue
                np.testing.assert_allclose(got[:, : circ.sizes[a]], ref[i][f"{area}.{pop}"].numpy(), atol=1e-5,
                                           err_msg=f"{area}.{pop} at step {i}")


def test_errors_are_rectified_and_precision_is_their_gain():
    """One sensory area under a fixed prior: e+ and e- are non-negative and at rest equal
    [±Pi (s - m)]_+ for any precision."""
    s = np.array([[1.0, -0.5, 0.2]])
    for Pi in (0.5, 1.0, 3.0):
        circ = LaminarCircuit((3,), [], precisions=[Pi], prior_mean=[0.2, 0.1, 0.2], params=CircuitParams(dt=0.5))
        ds = circ.run(constant_stimulus(s, 200.0), record_every_ms=0.5)
        r = ds.rate.sel(area="input")
        assert float(r.sel(population=["l23_pos", "l23_neg"]).min()) >= 0
        last = r.isel(trial=0, time=-1)
        want = Pi * (s[0] - np.array([0.2, 0.1, 0.2]))
        np.testing.assert_allclose(last.sel(population="l23_pos"), np.maximum(want, 0), atol=1e-5)
        np.testing.assert_allclose(last.sel(population="l23_neg"), np.maximum(-want, 0), atol=1e-5)


def test_prior_learns_the_stimulus_mean_by_the_local_rule():
    """With a constant input the learned top-level expectation converges to it."""
    circ = LaminarCircuit((4, 4), [np.eye(4)], params=CircuitParams(dt=0.5, prior_rate=0.01))
    s = np.array([[0.8, 0.1, -0.3, 0.5]])
    ds = circ.run(constant_stimulus(s, 3000.0), record_every_ms=10.0)
    np.testing.assert_allclose(ds.prior.isel(trial=0, time=-1), s[0], atol=1e-3)


def test_trials_batch_like_separate_runs_and_noise_is_seeded():
    circ = LaminarCircuit((6, 6, 6), [np.eye(6), 0.5 * np.eye(6)], params=CircuitParams(dt=0.5, noise=0.05, prior_rate=0.01))
    stim = Oddball(n_channels=6, standard=1.0, deviances=(3.0,), p_deviants=(0.25,), n_tones=6, soa_ms=100.0,
                   duration_ms=30.0, lead_standards=1, seeds=(0, 1)).build()
    a = circ.run(stim, record_every_ms=1.0, seed=7)
    b = circ.run(stim, record_every_ms=1.0, seed=7)
    np.testing.assert_array_equal(a.rate.values, b.rate.values)
    c = circ.run(stim, record_every_ms=1.0, seed=8)
    assert not np.allclose(a.rate.values, c.rate.values, equal_nan=True)
    quiet = circ.with_params(noise=0.0)
    both = quiet.run(stim, record_every_ms=1.0)
    for blk in range(2):
        one = Stimulus(stim.patterns, stim.schedule[blk:blk + 1], stim.onsets_ms, stim.duration_ms, stim.total_ms)
        alone = quiet.run(one, record_every_ms=1.0)
        np.testing.assert_allclose(both.rate.isel(trial=blk).values, alone.rate.isel(trial=0).values, atol=1e-6)


def test_epochs_equal_slices_of_the_continuous_run():
    circ = LaminarCircuit((8, 8), [np.eye(8)], params=CircuitParams(dt=0.5, prior_rate=0.01))
    stim = Oddball(n_channels=8, standard=2.0, deviances=(3.0,), p_deviants=(0.2,), n_tones=8, soa_ms=100.0,
                   duration_ms=40.0, lead_standards=2, seeds=(0, 3)).build()
    cont = circ.run(stim, record_every_ms=1.0)
    keep = np.zeros(stim.schedule.shape, bool)
    keep[0, [1, 4]] = True
    keep[1, [0, 7]] = True
    ep = circ.run(stim, record_every_ms=1.0, epochs=(20.0, 70.0), keep=keep)
    assert ep.sizes["trial"] == 4 and ep.sizes["time"] == 90
    for i in range(4):
        b, j = int(ep.block[i]), int(ep.slot[i])
        onset = stim.onsets_ms[j]
        ref = cont.rate.isel(trial=b).sel(time=slice((onset - 20) / 1000 - 1e-9, (onset + 69) / 1000 + 1e-9))  # time in s
        np.testing.assert_allclose(ep.rate.isel(trial=i).values, ref.values, atol=0, equal_nan=True)
        assert ep.kind.values[i] == stim.labels["kind"][b, j]


def test_lfp_proxy_is_the_summed_absolute_synaptic_input():
    """Without interneurons, L2/3 pyramidal error cells receive Pi*r and Pi*p (once each on
    e+ and e-): the proxy equals 2 * sum(|Pi r| + |Pi p|) computed from the recorded rates."""
    W = np.random.default_rng(1).normal(size=(5, 5)) * 0.4
    circ = LaminarCircuit((5, 5), [W], precisions=[2.0, 1.0], params=CircuitParams(dt=0.5))
    stim = constant_stimulus(np.random.default_rng(2).normal(size=(2, 5)), 100.0)
    ds = circ.run(stim, record_every_ms=0.5)
    r = ds.rate.sel(area="area1", population="l56").values
    p = r @ W
    s = ds.rate.sel(area="input", population="l4").values
    want = 2 * (np.abs(2.0 * s) + np.abs(2.0 * p)).sum(-1)
    np.testing.assert_allclose(ds.lfp.sel(area="input", lfp_layer="L2/3").values, want, rtol=1e-5, atol=1e-6)
    assert np.isnan(ds.lfp.sel(area="input", lfp_layer="L5/6").values).all()


def test_bad_input_is_refused_with_a_clear_message():
    circ = LaminarCircuit((4, 4), [np.eye(4)])
    with pytest.raises(ValueError, match="input channels"):
        circ.run(constant_stimulus(np.ones((1, 3)), 10.0))
    with pytest.raises(ValueError, match="too coarse"):
        CircuitParams(dt=4.0)
    with pytest.raises(ValueError, match=r"weights\[0\]"):
        LaminarCircuit((4, 3), [np.eye(4)])
    with pytest.raises(ValueError, match="NaN"):
        LaminarCircuit((2, 2), [np.array([[1.0, np.nan], [0, 1]])])
    stim = Oddball(n_channels=4, standard=0.0, deviances=(2.0,), n_tones=4, soa_ms=100.0, duration_ms=30.0,
                   lead_standards=1).build()
    with pytest.raises(ValueError, match="overlap"):
        circ.run(stim, epochs=(50.0, 80.0))
    with pytest.raises(ValueError, match="multiple of dt"):
        circ.run(stim, record_every_ms=0.3)


def test_divergence_is_reported_with_the_area():
    circ = LaminarCircuit((3, 3), [-8.0 * np.eye(3)], precisions=[1.0, 1.0], params=CircuitParams(dt=2.0, tau_deep=2.0,
                          tau_l4=4.0, tau_error=4.0))
    with pytest.raises(FloatingPointError, match="area1"):
        circ.run(constant_stimulus(np.ones((1, 3)), 2000.0), record_every_ms=None)


def test_tone_is_a_normalised_bump():
    t = tone(5.0, 11, width=1.0, amplitude=2.0)
    assert t.argmax() == 5 and math.isclose(t.max(), 2.0)
    np.testing.assert_allclose(t[4], 2.0 * math.exp(-0.5))


def test_recording_a_subset_of_populations():
    circ = LaminarCircuit((5, 4), [np.random.default_rng(0).normal(size=(4, 5))], params=CircuitParams(dt=0.5))
    stim = constant_stimulus(np.random.default_rng(1).normal(size=(2, 5)), 60.0)
    full = circ.run(stim, record_every_ms=1.0)
    some = circ.run(stim, record_every_ms=1.0, populations=("l23_neg", "l56"))
    assert list(some.population.values) == ["l23_neg", "l56"]
    np.testing.assert_array_equal(some.rate.values, full.rate.sel(population=["l23_neg", "l56"]).values)
    np.testing.assert_array_equal(some.lfp.values, full.lfp.values)
    with pytest.raises(ValueError, match="subset"):
        circ.run(stim, populations=("inh_pos",))
