"""Backprop twin and gradient alignment.

- the twin's forward pass equals its ``nn.Sequential`` export and the PC network's sweep; its
  gradients pass a finite-difference check of the loss;
- the fixed-prediction rule reproduces backprop exactly at any nudge (Z-IL; Song et al. 2020,
  Millidge et al. 2022), for every activation, so training a PC network with it equals
  training the twin with the same optimiser;
- at equilibrium standard PC's update / beta tends to the backprop gradient as beta -> 0
  (Whittington & Bogacz 2017) with an error proportional to beta;
- ``alignment_sweep`` reports what ``gradient_alignment`` reports for the same steps.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pcsim.alignment import alignment_sweep, compare_gradients, gradient_alignment
from pcsim.energy import value_gradients
from pcsim.errors import DataError
from pcsim.inference import InferenceConfig
from pcsim.network import PCNetwork
from pcsim.optim import SGD, Adam
from pcsim.rules import FixedPredictionPC, StandardPC, nudged
from pcsim.twin import BackpropTwin

ACTS = ["tanh", "relu", "sigmoid", "linear"]
F64 = torch.float64


def make_net(sizes=(4, 6, 5, 3), act="tanh", seed=0, ensemble=1, dtype=F64, **kw):
    net = PCNetwork.init(sizes, act, seed=seed, ensemble=ensemble, dtype=dtype, **kw)
    g = torch.Generator().manual_seed(seed + 3)
    for b in net.biases:
        b.copy_(0.2 * torch.randn(b.shape, generator=g, dtype=dtype))
    return net


def batch(net, n=8, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed + 17)
    return torch.randn(n, net.sizes[0], generator=g, dtype=dtype), torch.randn(n, net.sizes[-1], generator=g, dtype=dtype)


# --------------------------------------------------------------------------- the twin
@pytest.mark.parametrize("act", ACTS)
def test_twin_forward_equals_sequential_export_and_pc_sweep(act):
    net = make_net((5, 7, 6, 3), act, seed=1, ensemble=2)
    twin = BackpropTwin(net)
    a, _ = batch(net, 9, 1)
    out = twin(a)
    assert out.shape == (2, 9, 3)
    torch.testing.assert_close(out, net.forward(a.expand(2, -1, -1))[-1], rtol=1e-14, atol=1e-15)
    for e in range(2):
        seq = twin.to_sequential(e)
        assert all(p.dtype == net.dtype for p in seq.parameters()), "export changed the precision of the weights"
        torch.testing.assert_close(seq(a), out[e], rtol=1e-12, atol=1e-13)


def test_twin_gradients_pass_a_finite_difference_check():
    net = make_net((4, 6, 5, 3), "tanh", seed=2, ensemble=2, precision=[1.0, 1.0, 2.5])
    twin = BackpropTwin(net)
    a, y = batch(net, 6, 2)
    grads = twin.gradients(a, y)
    params = twin.params()
    g = torch.Generator().manual_seed(0)
    h = 1e-6
    for p, gr in zip(params, grads):
        for _ in range(3):
            v = torch.randn(p.shape, generator=g, dtype=F64)
            with torch.no_grad():
                p.add_(h * v)
                up = twin.loss(a, y).sum()
                p.sub_(2 * h * v)
                down = twin.loss(a, y).sum()
                p.add_(h * v)
            fd = float(up - down) / (2 * h)
            assert fd == pytest.approx(float((gr * v).sum()), rel=1e-6, abs=1e-9)


def test_twin_step_and_round_trip():
    net = make_net(seed=3)
    twin = BackpropTwin(net)
    a, y = batch(net, 5, 3)
    before = [p.detach().clone() for p in twin.params()]
    grads = twin.gradients(a, y)
    loss = twin.step(SGD(0.1), a, y)
    torch.testing.assert_close(loss, twin.net.log_precision[-1].new_tensor([0.5]) * ((y - BackpropTwin(net)(a)[0]) ** 2).sum(-1).mean(), rtol=1e-13, atol=0)
    for p, p0, g in zip(twin.params(), before, grads):
        torch.testing.assert_close(p.detach(), p0 - 0.1 * g, rtol=1e-13, atol=1e-15)
    back = twin.to_network()
    torch.testing.assert_close(back.forward(a.unsqueeze(0))[-1], twin(a), rtol=1e-14, atol=1e-15)
    assert not torch.equal(back.weights[0], net.weights[0])  # the twin's weights, not the original's


def test_twin_rejects_bad_input():
    net = make_net()
    with pytest.raises(ValueError, match="discriminative"):
        BackpropTwin(PCNetwork.init([2, 3], mode="generative"))
    twin = BackpropTwin(net)
    a, y = batch(net, 4)
    a[1, 2] = float("nan")
    with pytest.raises(DataError, match="inputs"):
        twin.loss(a, y)
    with pytest.raises(DataError, match="target"):
        twin.loss(batch(net, 4)[0], torch.randn(4, 2, dtype=F64))


# --------------------------------------------------------------------------- 4. exact: fixed prediction
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("sizes", [(4, 3), (4, 6, 5, 3), (3, 5, 6, 4, 2)], ids=["L1", "L3", "L4"])
def test_fixed_prediction_equals_backprop_at_any_nudge(act, sizes):
    net = make_net(sizes, act, seed=4, ensemble=2, precision=[1.0] * (len(sizes) - 2) + [1.7])
    a, y = batch(net, 7, 4)
    bp = BackpropTwin(net).gradients(a, y)
    for beta in (1.0, 0.3, 0.01):
        pc, _ = FixedPredictionPC(nudge=beta).gradients(net, a, y)
        for g_pc, g_bp in zip(pc, bp):
            torch.testing.assert_close(g_pc, beta * g_bp, rtol=1e-10, atol=1e-15)
        ds = gradient_alignment(net, a, y, rule="fpa", nudge=beta)
        assert ds["rel_error"].dims == ("ensemble", "layer") and list(ds["layer"].values) == list(range(1, net.depth + 1))
        assert float(ds["rel_error"].max()) < 1e-10
        assert float(ds["cosine"].min()) > 1 - 1e-12


def test_fixed_prediction_reaches_backprop_with_other_step_sizes_and_hidden_precisions():
    """Another step size or non-unit hidden precisions converge geometrically to the same fixed point."""
    net = make_net((4, 6, 5, 3), "sigmoid", seed=5, precision=[0.5, 2.0, 1.0])
    a, y = batch(net, 6, 5)
    bp = BackpropTwin(net).gradients(a, y)
    pc, _ = FixedPredictionPC(InferenceConfig(steps=300, dt=1.0, tau=3.0)).gradients(net, a, y)
    for g_pc, g_bp in zip(pc, bp):
        torch.testing.assert_close(g_pc, g_bp, rtol=1e-10, atol=1e-14)


@pytest.mark.parametrize("opt", ["sgd", "adam"])
def test_training_with_fixed_prediction_equals_training_the_twin(opt):
    make_opt = (lambda: SGD(0.05, momentum=0.9)) if opt == "sgd" else (lambda: Adam(1e-2))
    net = make_net((4, 6, 5, 3), "tanh", seed=6, ensemble=2)
    twin = BackpropTwin(net)
    o_pc, o_bp = make_opt(), make_opt()
    g = torch.Generator().manual_seed(6)
    for _ in range(5):
        a, y = torch.randn(8, 4, generator=g, dtype=F64), torch.randn(8, 3, generator=g, dtype=F64)
        FixedPredictionPC().step(net, o_pc, a, y)
        twin.step(o_bp, a, y)
    for p, q in zip(net.parameters(), twin.params()):
        torch.testing.assert_close(p, q.detach(), rtol=1e-10, atol=1e-13)


# --------------------------------------------------------------------------- 4. limit: standard PC
def manual_alignment(net, a, y, beta, cfg):
    pc, r = StandardPC(cfg, beta).gradients(net, a, y)
    bp = BackpropTwin(net).gradients(a, y)
    L = net.depth
    cos, rel = [], []
    for k in range(L):
        u = torch.cat([pc[k].flatten(), pc[L + k].flatten()]) / beta
        v = torch.cat([bp[k].flatten(), bp[L + k].flatten()])
        cos.append(float(u @ v / (u.norm() * v.norm())))
        rel.append(float((u - v).norm() / v.norm()))
    return np.array(cos), np.array(rel), r


@pytest.mark.parametrize("act", ["tanh", "sigmoid"])
def test_standard_pc_tends_to_backprop_as_the_nudge_vanishes(act):
    net = make_net((4, 6, 5, 3), act, seed=7)
    a, y = batch(net, 8, 7)
    cfg = InferenceConfig(steps=400, dt=1.0, tau=5.0)
    rels, coss = [], []
    for beta in (0.1, 0.01, 0.001):
        ds = gradient_alignment(net, a, y, rule="pc", inference=cfg, nudge=beta)
        cos, rel, r = manual_alignment(net, a, y, beta, cfg)
        np.testing.assert_allclose(ds["cosine"].values[0], cos, rtol=1e-9)
        np.testing.assert_allclose(ds["rel_error"].values[0], rel, rtol=1e-9)
        # the relaxation is at equilibrium: dE/dx on the free layers is far below the O(beta) effect measured
        grads = value_gradients(nudged(net, beta), r.state.x)
        assert max(float(g.abs().max()) for g in grads[1:-1]) < 1e-8 * beta
        rels.append(rel)
        coss.append(cos)
    rels, coss = np.array(rels), np.array(coss)  # (beta, layer)
    assert np.all(coss[-1] > 0.999)
    assert np.all(np.diff(rels, axis=0) < 0)
    ratio = rels[1:] / rels[:-1]  # beta shrinks tenfold at each step
    assert np.all((ratio > 0.05) & (ratio < 0.2)), ratio
    # the output layer's update is exactly backprop's error times the output activity only in the limit
    assert np.all(rels[-1] < 0.01)


def test_compare_gradients_is_scale_aware():
    net = make_net(seed=8, ensemble=2)
    a, y = batch(net, 5, 8)
    bp = BackpropTwin(net).gradients(a, y)
    cos, rel = compare_gradients(net, [0.5 * g for g in bp], bp, nudge=0.5)
    np.testing.assert_allclose(cos, 1.0, atol=1e-12)
    np.testing.assert_allclose(rel, 0.0, atol=1e-12)
    cos, rel = compare_gradients(net, [-g for g in bp], bp)
    np.testing.assert_allclose(cos, -1.0, atol=1e-12)
    np.testing.assert_allclose(rel, 2.0, atol=1e-12)


def test_alignment_sweep_equals_separate_alignments():
    net = make_net((4, 6, 5, 3), "tanh", seed=9, ensemble=2)
    a, y = batch(net, 6, 9)
    base = InferenceConfig(steps=1, dt=1.0, tau=5.0)
    steps, nudges = [0, 3, 10, 40], [1.0, 0.1]
    ds = alignment_sweep(net, a, y, steps=steps, nudges=nudges, inference=base)
    assert ds["cosine"].dims == ("nudge", "steps", "ensemble", "layer")
    assert ds["cosine"].shape == (2, 4, 2, 3)
    for beta in nudges:
        for s in steps:
            one = gradient_alignment(net, a, y, rule="pc", inference=InferenceConfig(steps=s, dt=1.0, tau=5.0), nudge=beta)
            for var in ("cosine", "rel_error"):
                np.testing.assert_allclose(ds[var].sel(nudge=beta, steps=s).values, one[var].values, rtol=1e-9, atol=1e-12,
                                           err_msg=f"{var} nudge={beta} steps={s}")
    # before any inference step the hidden errors are zero, so the hidden layers' updates vanish
    # (rel_error 1) while the output layer's is exactly beta x backprop's (rel_error 0)
    at0 = ds["rel_error"].sel(steps=0).values  # (nudge, ensemble, layer)
    np.testing.assert_allclose(at0[..., :-1], 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(at0[..., -1], 0.0, rtol=0, atol=1e-12)
