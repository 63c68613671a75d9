"""Local learning rules against autograd, against reference loops, and across ensembles.

- ``energy.parameter_gradients`` (the explicit Hebbian products) equals autograd of the batch-mean
  energy w.r.t. ``net.parameters()`` at random non-equilibrium states: weights, biases,
  learned log-precisions (scalar and per unit) and, in generative mode, the prior mean;
- standard PC's update is the gradient of the (nudged) energy at the relaxed state;
- incremental PC equals a reference loop in which values and parameters take simultaneous
  autograd gradient steps; with lr = 0 it is standard PC; for small lr its weight change is
  lr x the sum of standard PC's per-step updates (error O(lr^2)); its energy decreases;
- an ensemble of E networks equals E separate runs (init, relaxation, training with every
  rule and optimiser, per-member learning rates); runs are bitwise reproducible under a seed;
- a linear generative network trained on low-rank Gaussian data lowers its energy.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsim import energy
from pcsim.errors import ConfigError, DataError
from pcsim.inference import InferenceConfig, PCState, init_state, relax
from pcsim.network import PCNetwork
from pcsim.optim import SGD, Adam
from pcsim.rules import FixedPredictionPC, IncrementalPC, StandardPC, make_rule, nudged
from pcsim.twin import BackpropTwin

ACTS = ["tanh", "relu", "sigmoid", "linear"]
F64 = torch.float64
PRECISIONS = ["unit", "fixed", "learned_scalar", "learned_per_unit"]


# --------------------------------------------------------------------------- helpers
def make_net(sizes, act="tanh", mode="discriminative", seed=0, precision="unit", ensemble=1, dtype=F64):
    net = PCNetwork.init(sizes, act, mode=mode, seed=seed, ensemble=ensemble, dtype=dtype,
                         learn_precision=precision.startswith("learned"),
                         per_unit_precision=precision == "learned_per_unit",
                         precision=1.0 if precision == "unit" else [0.5 + 0.5 * k for k in range(len(sizes) - 1)],
                         prior_precision=1.3)
    g = torch.Generator().manual_seed(seed + 31)
    for b in net.biases:
        b.copy_(0.3 * torch.randn(b.shape, generator=g, dtype=dtype))
    net.prior_mean.copy_(0.3 * torch.randn(net.prior_mean.shape, generator=g, dtype=dtype))
    if precision.startswith("learned"):
        for lp in net.log_precision:
            lp.add_(0.4 * torch.randn(lp.shape, generator=g, dtype=dtype))
    return net


def data_for(net, batch, seed, dtype=F64):
    g = torch.Generator().manual_seed(seed + 5)
    return torch.randn(batch, net.sizes[0], generator=g, dtype=dtype), torch.randn(batch, net.sizes[-1], generator=g, dtype=dtype)


def train_kwargs(net, a, y):
    return {"inputs": a, "target": y} if net.mode == "discriminative" else {"data": y}


def autograd_param_grads(net, x, weights=None):
    """Autograd of sum_e mean_b E (optionally with per-layer weights on the layer energies) w.r.t. net.parameters()."""
    params = [p.detach().clone().requires_grad_(True) for p in net.parameters()]
    L = net.depth
    view = net.clone()
    view.weights, view.biases = params[:L], params[L:2 * L]
    i = 2 * L
    if net.learn_precision:
        view.log_precision, i = params[i:i + L], i + L
    if net.mode == "generative":
        view.prior_mean = params[i]
    en = energy.layer_energies(view, [t.detach() for t in x])
    if weights is not None:
        en = en * torch.as_tensor(weights, dtype=en.dtype)
    return list(torch.autograd.grad(en.sum(-1).mean(-1).sum(), params))


def assert_lists_close(a, b, rtol=1e-10, atol=1e-12, what=""):
    assert len(a) == len(b)
    for i, (u, v) in enumerate(zip(a, b)):
        assert u.shape == v.shape, (what, i, u.shape, v.shape)
        torch.testing.assert_close(u, v, rtol=rtol, atol=atol, msg=f"{what} #{i}")


@st.composite
def architectures(draw, max_depth=4, max_width=8):
    depth = draw(st.integers(1, max_depth))
    sizes = draw(st.lists(st.integers(1, max_width), min_size=depth + 1, max_size=depth + 1))
    return (sizes, draw(st.sampled_from(ACTS)), draw(st.sampled_from(["discriminative", "generative"])),
            draw(st.integers(0, 2**20)))


# --------------------------------------------------------------------------- 3. local = autograd
@settings(max_examples=25, deadline=None)
@given(arch=architectures(), precision=st.sampled_from(PRECISIONS), ensemble=st.integers(1, 2), batch=st.integers(1, 5))
def test_local_gradients_equal_autograd_of_the_batch_mean_energy(arch, precision, ensemble, batch):
    sizes, act, mode, seed = arch
    net = make_net(sizes, act, mode, seed, precision, ensemble)
    g = torch.Generator().manual_seed(seed)
    x = [torch.randn(ensemble, batch, n, generator=g, dtype=F64) for n in sizes]  # not an equilibrium
    want = autograd_param_grads(net, x)
    # quantities as the relaxation hands them to the rule (steps=0 leaves x where it is)
    clamped = (mode == "discriminative",) + (False,) * (len(sizes) - 2) + (True,)
    r = relax(net, PCState([t.clone() for t in x], clamped), InferenceConfig(steps=0))
    assert_lists_close(energy.parameter_gradients(net.spec, r.peps, r.fx, r.eps), want, what="from relax")
    # and computed by hand from the prediction errors
    eps = energy.prediction_errors(net, x)
    pis = [net.prior_log_precision.exp()] + net.precision()
    peps = [None if e is None else pis[l] * e for l, e in enumerate(eps)]
    fx = [net.activation(l).f(x[l]) for l in range(net.depth)]
    assert_lists_close(energy.parameter_gradients(net.spec, peps, fx, eps), want, what="by hand")


def test_precision_learning_needs_the_unweighted_errors():
    net = make_net([2, 3], precision="learned_scalar")
    r = relax(net, init_state(net, *data_for(net, 4, 0)), InferenceConfig(steps=0))
    with pytest.raises(ValueError, match="eps"):
        energy.parameter_gradients(net.spec, r.peps, r.fx)


@pytest.mark.parametrize("mode", ["discriminative", "generative"])
@pytest.mark.parametrize("nudge", [1.0, 0.25])
def test_standard_pc_update_is_the_nudged_energy_gradient_at_the_relaxed_state(mode, nudge):
    net = make_net([3, 5, 4, 2], "tanh", mode, 2, "fixed", ensemble=2)
    a, y = data_for(net, 6, 2)
    cfg = InferenceConfig(steps=30, dt=1.0, tau=5.0)
    before = [p.clone() for p in net.parameters()]
    grads, r = StandardPC(cfg, nudge).gradients(net, **train_kwargs(net, a, y))
    assert r.steps == 30
    weights = [1.0] * net.depth + [nudge]  # beta scales the output layer's energy
    assert_lists_close(grads, autograd_param_grads(net, r.state.x, weights))
    # the relaxation itself descended the nudged energy from the feed-forward state
    start = init_state(net, a, y) if mode == "discriminative" else init_state(net, data=y)
    w = torch.tensor(weights, dtype=F64)
    e0 = (energy.layer_energies(net, start.x) * w).sum(-1)
    e1 = (energy.layer_energies(net, r.state.x) * w).sum(-1)
    assert bool((e1 <= e0 + 1e-12).all()) and float(e1.sum()) < float(e0.sum())
    # a step with SGD moves every parameter by -lr x that gradient
    StandardPC(cfg, nudge).step(net, SGD(0.1), **train_kwargs(net, a, y))
    for p, p0, gr in zip(net.parameters(), before, grads):
        torch.testing.assert_close(p, p0 - 0.1 * gr, rtol=1e-12, atol=1e-14)


def test_nudge_validation():
    net = make_net([2, 3])
    with pytest.raises(ValueError, match="nudge"):
        nudged(net, 0.0)
    with pytest.raises(ValueError, match="precision learning"):
        nudged(make_net([2, 3], precision="learned_scalar"), 0.5)
    view = nudged(net, 0.5)
    assert view.weights[0] is net.weights[0]  # shares the weights, so updates reach net
    torch.testing.assert_close(view.precision()[-1], 0.5 * net.precision()[-1])
    with pytest.raises(ValueError, match="known: pc, ipc, fpa"):
        make_rule("bp", InferenceConfig())
    with pytest.raises(DataError, match="target"):
        StandardPC().gradients(net, torch.randn(3, 2))


# --------------------------------------------------------------------------- 10. incremental PC
def reference_ipc(net, state, steps, eta, lr, nudge=1.0):
    """Incremental PC by definition: at every step, values and parameters take simultaneous
    gradient steps on the same (nudged) energy, dE/dx per sample and dE/dtheta of the batch mean."""
    net = net.clone()
    x = [t.clone() for t in state.x]
    weights = [1.0] * net.depth + [nudge]
    w = torch.tensor(weights, dtype=x[0].dtype)
    for _ in range(steps):
        xr = [t.clone().requires_grad_(True) for t in x]
        gx = torch.autograd.grad((energy.layer_energies(net, xr) * w).sum(), xr)
        gp = autograd_param_grads(net, x, weights)
        x = [t if c else t - eta * g for t, g, c in zip(x, gx, state.clamped)]
        for p, g in zip(net.parameters(), gp):
            p.sub_(lr * g)
    return net, x


@pytest.mark.parametrize(
    "mode,precision,nudge",
    [("discriminative", "unit", 1.0), ("discriminative", "fixed", 0.5), ("generative", "fixed", 1.0),
     ("discriminative", "learned_scalar", 1.0), ("discriminative", "learned_per_unit", 1.0),
     ("generative", "learned_per_unit", 1.0)],
)
def test_incremental_pc_equals_the_reference_loop(mode, precision, nudge):
    net = make_net([3, 4, 5, 2], "tanh", mode, 1, precision)
    a, y = data_for(net, 6, 1)
    state = init_state(net, a, y) if mode == "discriminative" else init_state(net, data=y)
    ref_net, ref_x = reference_ipc(net, state, steps=10, eta=0.1, lr=0.05, nudge=nudge)
    r = IncrementalPC(InferenceConfig(steps=10, dt=1.0, tau=10.0), nudge).step(net, SGD(0.05), **train_kwargs(net, a, y))
    assert_lists_close(net.parameters(), ref_net.parameters(), what="parameters")
    assert_lists_close(r.state.x, ref_x, what="values")


@pytest.mark.parametrize("mode", ["discriminative", "generative"])
def test_incremental_pc_with_zero_learning_rate_is_standard_pc(mode):
    net = make_net([3, 4, 5, 2], "sigmoid", mode, 3, "fixed", ensemble=2)
    a, y = data_for(net, 5, 3)
    kw = train_kwargs(net, a, y)
    cfg = InferenceConfig(steps=25, dt=1.0, tau=4.0)
    before = [p.clone() for p in net.parameters()]
    r_ipc = IncrementalPC(cfg).step(net, SGD(0.0), **kw)
    for p, q in zip(net.parameters(), before):
        assert torch.equal(p, q)
    _, r_pc = StandardPC(cfg).gradients(net, **kw)
    assert_lists_close(r_ipc.state.x, r_pc.state.x, rtol=1e-13, atol=1e-15, what="state")
    torch.testing.assert_close(r_ipc.energy, r_pc.energy, rtol=1e-13, atol=1e-15)


def test_incremental_pc_is_first_order_the_sum_of_standard_pc_updates():
    """d theta_iPC = -lr sum_t g_t + O(lr^2), g_t the local update at standard PC's t-th state."""
    net = make_net([3, 5, 4, 2], "tanh", "discriminative", 4, "unit")
    a, y = data_for(net, 8, 4)
    T, cfg = 15, InferenceConfig(steps=15, dt=1.0, tau=5.0, record=True)
    r = relax(net, init_state(net, a, y), cfg)
    summed = None
    for t in range(T):
        x = [torch.from_numpy(r.trace[f"x{l}"][t]) for l in range(net.depth + 1)]
        g = autograd_param_grads(net, x)
        summed = g if summed is None else [s + u for s, u in zip(summed, g)]
    errors = []
    for lr in (1e-3, 1e-4):
        n = net.clone()
        IncrementalPC(InferenceConfig(steps=T, dt=1.0, tau=5.0)).step(n, SGD(lr), a, y)
        delta = torch.cat([(p - q).flatten() for p, q in zip(n.parameters(), net.parameters())]) / -lr
        want = torch.cat([s.flatten() for s in summed])
        errors.append(float((delta - want).norm() / want.norm()))
    assert errors[0] < 0.05
    assert 5 < errors[0] / errors[1] < 20  # the discrepancy is O(lr)


@pytest.mark.parametrize("mode", ["discriminative", "generative"])
def test_incremental_pc_descends_the_energy(mode):
    net = make_net([4, 6, 5, 3], "tanh", mode, 6, "unit")
    a, y = data_for(net, 8, 6)
    r = IncrementalPC(InferenceConfig(steps=40, dt=1.0, tau=10.0, record=True)).step(net, SGD(0.02), **train_kwargs(net, a, y))
    # values and parameters follow the gradient of the batch energy with small steps: it never rises
    total = r.trace["energy"].sum(-1).sum(-1)  # (T+1, E), weights at the time of each step
    assert np.all(np.diff(total, axis=0) <= 1e-9 * total[:-1])
    assert total[-1, 0] < total[0, 0]


# --------------------------------------------------------------------------- 5. ensembles
SEEDS = [5, 9, 11]


def ensemble_and_members(act="tanh", mode="discriminative", dtype=F64, precision=1.0):
    ens = PCNetwork.init([4, 6, 5, 3], act, mode=mode, ensemble=3, seed=SEEDS, dtype=dtype, precision=precision)
    singles = [PCNetwork.init([4, 6, 5, 3], act, mode=mode, seed=s, dtype=dtype, precision=precision) for s in SEEDS]
    return ens, singles


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_ensemble_initialisation_equals_separate_networks(dtype):
    ens, singles = ensemble_and_members(dtype=dtype)
    assert ens.seeds == tuple(SEEDS) and ens.ensemble == 3
    for e, single in enumerate(singles):
        for p, q in zip(ens.member(e).parameters(), single.parameters()):
            assert torch.equal(p, q)
        assert ens.member(e).seeds == (SEEDS[e],)
    # an int seed means seed, seed+1, ...
    for p, q in zip(PCNetwork.init([4, 3], ensemble=2, seed=7).member(1).parameters(), PCNetwork.init([4, 3], seed=8).parameters()):
        assert torch.equal(p, q)
    # concat joins separately made networks into that ensemble, tensor for tensor, and
    # keeps each member's own precision; a network of another architecture is refused
    joined = PCNetwork.concat(singles)
    assert joined.seeds == ens.seeds
    for p, q in zip(joined.parameters(), ens.parameters()):
        assert torch.equal(p, q)
    mixed = PCNetwork.concat([singles[0], PCNetwork.init([4, 6, 5, 3], seed=9, dtype=dtype, precision=3.0)])
    assert [float(p[1].flatten()[0]) for p in mixed.precision()] == pytest.approx([3.0] * 3)
    with pytest.raises(ConfigError, match="differ in architecture"):
        PCNetwork.concat([singles[0], PCNetwork.init([4, 6, 3], seed=0, dtype=dtype)])
    # different seeds draw different weights, inside the Glorot bound
    assert not torch.equal(ens.weights[0][0], ens.weights[0][1])
    for k, w in enumerate(ens.weights):
        assert float(w.abs().max()) <= np.sqrt(6.0 / (ens.sizes[k] + ens.sizes[k + 1]))


def test_member_is_a_copy():
    ens, _ = ensemble_and_members()
    m = ens.member(1)
    m.weights[0].add_(1.0)
    assert not torch.equal(m.weights[0][0], ens.weights[0][1])


@pytest.mark.parametrize("mode", ["discriminative", "generative"])
def test_ensemble_relaxation_equals_separate_relaxations(mode):
    ens, singles = ensemble_and_members("tanh", mode)
    a, y = data_for(ens, 7, 0)
    cfg = InferenceConfig(steps=20, dt=1.0, tau=5.0, momentum=0.3, record=True)
    r = relax(ens, init_state(ens, a, y) if mode == "discriminative" else init_state(ens, data=y), cfg)
    for e, single in enumerate(singles):
        rs = relax(single, init_state(single, a, y) if mode == "discriminative" else init_state(single, data=y), cfg)
        for l in range(ens.depth + 1):
            torch.testing.assert_close(r.state.x[l][e:e + 1], rs.state.x[l], rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(r.trace["energy"][:, e:e + 1], rs.trace["energy"], rtol=1e-12, atol=1e-14)


def _rule(name):
    cfg = InferenceConfig(steps=12, dt=1.0, tau=5.0)
    return {"pc": StandardPC(cfg), "ipc": IncrementalPC(cfg), "fpa": FixedPredictionPC(), "pc_nudged": StandardPC(cfg, 0.1)}[name]


@pytest.mark.parametrize("rule", ["pc", "ipc", "fpa", "pc_nudged"])
@pytest.mark.parametrize("opt", ["adam", "sgd"])
def test_ensemble_training_equals_separate_training(rule, opt):
    ens, singles = ensemble_and_members("tanh", precision=[1.0, 0.5, 2.0])
    make_opt = (lambda lr: Adam(lr)) if opt == "adam" else (lambda lr: SGD(lr, momentum=0.9))
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randn(6, 4, generator=g, dtype=F64), torch.randn(6, 3, generator=g, dtype=F64)) for _ in range(4)]
    o = make_opt(0.01)
    for a, y in batches:
        _rule(rule).step(ens, o, a, y)
    for e, single in enumerate(singles):
        o = make_opt(0.01)
        for a, y in batches:
            _rule(rule).step(single, o, a, y)
        assert_lists_close(ens.member(e).parameters(), single.parameters(), rtol=1e-11, atol=1e-13, what=f"member {e}")
    # and training moved the weights
    assert not torch.equal(ens.weights[0], PCNetwork.init([4, 6, 5, 3], "tanh", ensemble=3, seed=SEEDS, dtype=F64).weights[0])


@pytest.mark.parametrize("opt", ["adam", "sgd"])
@pytest.mark.parametrize("mode", ["discriminative", "generative"])
def test_per_member_learning_rates_equal_separate_runs(opt, mode):
    lrs = [1e-3, 1e-2, 3e-3]
    make_opt = (lambda lr: Adam(lr)) if opt == "adam" else (lambda lr: SGD(lr))
    ens, singles = ensemble_and_members("sigmoid", mode)
    g = torch.Generator().manual_seed(2)
    batches = [(torch.randn(5, 4, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)) for _ in range(3)]
    rule = StandardPC(InferenceConfig(steps=10, dt=1.0, tau=5.0))
    o = make_opt(lrs)
    for a, y in batches:
        rule.step(ens, o, **train_kwargs(ens, a, y))
    for e, single in enumerate(singles):
        o = make_opt(lrs[e])
        for a, y in batches:
            rule.step(single, o, **train_kwargs(single, a, y))
        assert_lists_close(ens.member(e).parameters(), single.parameters(), rtol=1e-11, atol=1e-13, what=f"member {e}")


# --------------------------------------------------------------------------- 6. determinism
def full_run(seed):
    net = PCNetwork.init([6, 8, 5, 3], "tanh", seed=seed, ensemble=2)
    g = torch.Generator().manual_seed(seed)
    opt = Adam(1e-2)
    for rule in (StandardPC(InferenceConfig(steps=8)), IncrementalPC(InferenceConfig(steps=5)), FixedPredictionPC()):
        for _ in range(2):
            a, y = torch.randn(10, 6, generator=g), torch.randn(10, 3, generator=g)
            rule.step(net, opt, a, y)
    return net


def test_same_seed_same_weights_bitwise_and_other_seed_differs():
    a, b, c = full_run(3), full_run(3), full_run(4)
    for p, q in zip(a.parameters(), b.parameters()):
        assert p.dtype == torch.float32
        assert torch.equal(p, q)
    assert not torch.equal(a.weights[0], c.weights[0])


# --------------------------------------------------------------------------- 11. generative learning
@pytest.mark.parametrize("act", ["tanh", "sigmoid", "relu"])
def test_every_parameter_of_a_fresh_generative_network_gets_a_learning_signal(act):
    """Data clamped at x_L must drive learning in every layer, whatever the activation.

    (At init the prior mean and biases are 0, so the generative sweep puts every node at 0;
    for relu, f(0) = f'(0) = 0 then blocks both inference and learning below the output bias.)
    """
    net = PCNetwork.init([2, 4, 5], act, mode="generative", seed=0, dtype=F64)
    data = torch.rand(16, 5, generator=torch.Generator().manual_seed(0), dtype=F64) + 0.5
    grads, r = StandardPC(InferenceConfig(steps=30, dt=1.0, tau=5.0)).gradients(net, data=data)
    names = ["W1", "W2", "b1", "b2", "prior_mean"]
    for name, g in zip(names, grads):
        assert float(g.abs().max()) > 1e-6, f"{name} gets no gradient with {act}"


def test_linear_generative_network_learns_low_rank_gaussian_data():
    """Factor-analysis-like model x = A z + noise: standard PC lowers the relaxed energy epoch by epoch.

    (MAP learning with fixed precisions keeps lowering the energy by growing W, which stiffens
    inference: dt/tau is chosen below 2 / (1 + |W|^2) for the weights reached here.)
    """
    g = torch.Generator().manual_seed(0)
    A = 0.7 * torch.randn(6, 2, generator=g, dtype=F64)
    data = torch.randn(256, 2, generator=g, dtype=F64) @ A.T + 0.1 * torch.randn(256, 6, generator=g, dtype=F64)
    net = PCNetwork.init([2, 6], "linear", mode="generative", seed=1, dtype=F64)
    W0 = net.weights[0][0].T.clone()  # (6, 2): x ~ W z
    rule, opt = StandardPC(InferenceConfig(steps=50, dt=1.0, tau=8.0)), SGD(0.05)
    means = []
    for epoch in range(12):
        perm = torch.randperm(256, generator=g)
        means.append(np.mean([float(rule.step(net, opt, data=data[perm[i:i + 32]]).energy.sum(-1).mean()) for i in range(0, 256, 32)]))
    assert means[-1] < 0.6 * means[0]
    assert all(later <= earlier * 1.02 for earlier, later in zip(means, means[1:])), means
    # the learned loadings span the true factor subspace better: the residual of A off span(W) shrinks

    def residual(W):
        return float(((torch.eye(6, dtype=F64) - W @ torch.linalg.pinv(W)) @ A).norm())

    assert residual(net.weights[0][0].T) < 0.7 * residual(W0)


@pytest.mark.parametrize("precision", [[2.0, 0.5, 1.0], [0.3, 3.0, 0.7]])
def test_fixed_prediction_rule_is_exact_for_any_precisions(precision):
    """Preconditioned Z-IL steps (each layer's step divided by its precision) make the
    precision-weighted errors equal backprop's deltas after L-1 steps, whatever Pi_l."""
    net = PCNetwork.init([5, 7, 6, 3], "tanh", seed=2, precision=precision, dtype=F64)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(9, 5, generator=g, dtype=F64), torch.randn(9, 3, generator=g, dtype=F64)
    pc, _ = FixedPredictionPC().gradients(net, x, y)
    bp = BackpropTwin(net).gradients(x, y)
    for a, b in zip(pc, bp):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


def test_gradient_alignment_rejects_rules_it_cannot_compare():
    from pcsim.alignment import gradient_alignment

    net = PCNetwork.init([3, 4, 2], "tanh", seed=0)
    with pytest.raises(ValueError, match="'ipc'"):
        gradient_alignment(net, torch.zeros(2, 3), torch.zeros(2, 2), rule="ipc")


# The fused path compiles one graph for the module: one network shape, step count, step size
# and learning rate; the diverging case differs only in tensor values (a large precision).
FUSED = InferenceConfig(steps=5, dt=1.0, tau=5.0, compile=True)


def fused_case(diverge: bool, sparsity=0.0):
    net = PCNetwork.init([4, 6, 5, 3], "tanh", seed=4, dtype=F64, precision=[1.0, 2.0, 1.5], sparsity=sparsity)
    if diverge:
        net.log_precision[1].fill_(math.log(40.0))  # dt/tau * Pi = 8 on layer 2: unstable
    return net


def test_fused_compiled_training_step_equals_the_stepped_one():
    """StandardPC with inference.compile runs sweep + relaxation + local rule + Adam as one
    compiled graph of the same functions: same weights, Adam moments and relaxed state as the eager path."""
    g = torch.Generator().manual_seed(3)
    a = fused_case(False)
    b = a.clone()
    eager, fused = StandardPC(replace(FUSED, compile=False)), StandardPC(FUSED)
    oa, ob = Adam(1e-2), Adam(1e-2)
    for _ in range(3):
        x, y = torch.randn(7, 4, generator=g, dtype=F64), torch.randn(7, 3, generator=g, dtype=F64)
        ra, rb = eager.step(a, oa, x, y), fused.step(b, ob, x, y)
    for p, q in zip(a.parameters() + oa.state.m + oa.state.v, b.parameters() + ob.state.m + ob.state.v):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    for s, t in zip(ra.state.x, rb.state.x):
        torch.testing.assert_close(s, t, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ra.energy, rb.energy, rtol=1e-9, atol=1e-12)
    assert ob.t == oa.t == 3


def test_fused_training_step_includes_the_sparse_prior():
    """The function the fused path compiles (rules.training_step, run here uncompiled: compiling
    it is checked above) relaxes with the sparse prior of the network's spec: it equals the eager
    StandardPC step with that prior, and differs from the step without it."""
    from pcsim.inference import StepPlan
    from pcsim.rules import _run_fused, training_step

    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(7, 4, generator=g, dtype=F64), torch.randn(7, 3, generator=g, dtype=F64)
    cfg = replace(FUSED, compile=False)
    a = fused_case(False, (0.0, 0.5, 0.8, 0.0))
    b, plain = a.clone(), fused_case(False)
    oa, ob = Adam(1e-2), Adam(1e-2)
    ra = StandardPC(cfg).step(a, oa, x, y)
    plan = StepPlan(b.spec, (1, 2), cfg.step_size, cfg.momentum, cfg.precondition, b.unit_precision(), cfg.max_growth)
    rb = _run_fused(plan, cfg, (True, False, False, True), b, ob, x[None], y[None], training_step)
    for p, q in zip(a.parameters() + oa.state.m, b.parameters() + ob.state.m):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(ra.energy, rb.energy, rtol=1e-9, atol=1e-12)
    StandardPC(cfg).step(plain, Adam(1e-2), x, y)
    assert (plain.weights[1] - a.weights[1]).abs().max() > 1e-6  # the prior changed the relaxed state, so the update


def test_fused_step_that_diverges_changes_nothing_and_names_the_step():
    from pcsim.errors import InferenceDivergenceError

    net = fused_case(True)
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(7, 4, generator=g, dtype=F64), torch.randn(7, 3, generator=g, dtype=F64)
    with pytest.raises(InferenceDivergenceError) as eager:
        StandardPC(replace(FUSED, compile=False, check_every=1)).step(net.clone(), Adam(1e-2), x, y)
    before = [p.clone() for p in net.parameters()]
    opt = Adam(1e-2)
    with pytest.raises(InferenceDivergenceError) as info:
        StandardPC(FUSED).step(net, opt, x, y)
    assert (info.value.step, info.value.layer) == (eager.value.step, eager.value.layer)
    assert str(info.value).split("; likely cause: ")[1] == str(eager.value).split("; likely cause: ")[1]  # same cause named
    assert opt.t == 0 and opt.state is None
    for p, q in zip(before, net.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_fixed_prediction_rule_refuses_a_sparse_prior():
    # its exact-backprop claim holds for the Gaussian energy only
    from pcsim.errors import ConfigError

    net = PCNetwork.init([4, 5, 3], "tanh", seed=0, sparsity=[0.0, 0.5, 0.0])
    x, y = torch.randn(2, 4), torch.randn(2, 3)
    with pytest.raises(ConfigError, match="sparse prior"):
        FixedPredictionPC().gradients(net, x, y)
