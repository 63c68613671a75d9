"""The energy and its explicit gradients against independent references.

- ``layer_energies`` equals the DESIGN.md formula evaluated sample by sample in numpy;
- ``value_gradients`` (the explicit local rule for ``dE/dx_l``) equals autograd of the energy
  at random, non-equilibrium states, for every activation, mode and precision setting, with
  and without a sparse (Cauchy or L1) prior on the value nodes;
- every activation's ``df`` equals the autograd derivative of its ``f``;
- the feed-forward sweep is a zero-error state; ``output_loss`` is the output-layer energy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsim import energy
from pcsim.activations import ACTIVATIONS, get_activation
from pcsim.network import PCNetwork

ACTS = ["tanh", "relu", "sigmoid", "linear"]
NP_ACTS = {
    "tanh": np.tanh,
    "relu": lambda a: np.maximum(a, 0.0),
    "sigmoid": lambda a: 1.0 / (1.0 + np.exp(-a)),
    "linear": lambda a: a,
}
SETTINGS = settings(max_examples=25, deadline=None)
SPARSE = st.one_of(st.none(), st.tuples(st.sampled_from(["cauchy", "l1"]), st.floats(0.3, 2.0)))


# --------------------------------------------------------------------------- helpers
def sparse_strengths(n_layers, seed):
    """Sparse-prior strengths of ``n_layers`` value layers, some of them 0 (never all)."""
    return [0.0 if (l + seed) % 3 == 0 else 0.4 + 0.3 * l for l in range(n_layers)]


def random_net(sizes, act, mode, seed, *, ensemble=1, precision="unit", learn=False, sparse=None):
    """A float64 network whose biases, prior mean and precisions are randomised (not at their init values).
    ``sparse = (kind, scale)`` adds a sparse prior of that kind and scale on some layers (:func:`sparse_strengths`)."""
    per_unit = precision == "per_unit"
    kw = {} if sparse is None else dict(sparsity=sparse_strengths(len(sizes), seed), sparse_prior=sparse[0],
                                        sparse_scale=sparse[1])
    net = PCNetwork.init(sizes, act, mode=mode, seed=seed, ensemble=ensemble, dtype=torch.float64,
                         per_unit_precision=per_unit, learn_precision=learn, prior_precision=1.7, **kw)
    g = torch.Generator().manual_seed(seed + 12345)
    for b in net.biases:
        b.copy_(0.5 * torch.randn(b.shape, generator=g, dtype=torch.float64))
    net.prior_mean.copy_(0.5 * torch.randn(net.prior_mean.shape, generator=g, dtype=torch.float64))
    if precision != "unit":
        for lp in net.log_precision:
            lp.copy_(0.6 * torch.randn(lp.shape, generator=g, dtype=torch.float64))
    return net


def random_state(net, batch, seed, scale=1.0):
    g = torch.Generator().manual_seed(seed + 777)
    return [scale * torch.randn(net.ensemble, batch, n, generator=g, dtype=torch.float64) for n in net.sizes]


@st.composite
def architectures(draw, max_depth=4, max_width=10):
    depth = draw(st.integers(1, max_depth))
    sizes = draw(st.lists(st.integers(1, max_width), min_size=depth + 1, max_size=depth + 1))
    act = draw(st.one_of(st.sampled_from(ACTS), st.lists(st.sampled_from(ACTS), min_size=depth, max_size=depth)))
    mode = draw(st.sampled_from(["discriminative", "generative"]))
    seed = draw(st.integers(0, 2**20))
    return sizes, act, mode, seed


def reference_layer_energies(net, x):
    """DESIGN.md's energy, sample by sample in numpy: (E, B, L+1)."""
    L = net.depth
    E, B = x[0].shape[:2]
    out = np.zeros((E, B, L + 1))
    for e in range(E):
        for b in range(B):
            if net.mode == "generative":
                pi0 = float(np.exp(net.prior_log_precision[e, 0, 0].item()))
                d = x[0][e, b].numpy() - net.prior_mean[e, 0].numpy()
                out[e, b, 0] = 0.5 * pi0 * d @ d
            for l in range(1, L + 1):
                W = net.weights[l - 1][e].numpy()
                bias = net.biases[l - 1][e, 0].numpy()
                pre = NP_ACTS[net.activations[l - 1]](x[l - 1][e, b].numpy())
                eps = x[l][e, b].numpy() - (W.T @ pre + bias)
                pi = np.broadcast_to(np.exp(net.log_precision[l - 1][e, 0].numpy()), eps.shape)
                out[e, b, l] = 0.5 * eps @ np.diag(pi) @ eps
                if net.learn_precision:
                    out[e, b, l] -= 0.5 * np.log(np.prod(pi))
            for l in range(L + 1):  # the sparse prior: Rao & Ballard's alpha log(1 + r^2), or L1
                if net.spec.sparsity and net.spec.sparsity[l]:
                    r = x[l][e, b].numpy() / net.spec.sparse_scale
                    cost = np.abs(r) if net.spec.sparse_prior == "l1" else np.log(1.0 + r ** 2)
                    out[e, b, l] += net.spec.sparsity[l] * cost.sum()
    return out


# --------------------------------------------------------------------------- tests
@SETTINGS
@given(arch=architectures(), precision=st.sampled_from(["unit", "scalar", "per_unit"]), learn=st.booleans(),
       ensemble=st.integers(1, 2), sparse=SPARSE)
def test_layer_energies_equal_the_design_formula(arch, precision, learn, ensemble, sparse):
    sizes, act, mode, seed = arch
    net = random_net(sizes, act, mode, seed, ensemble=ensemble, precision=precision, learn=learn, sparse=sparse)
    x = random_state(net, 3, seed)
    got = energy.layer_energies(net, x).numpy()
    want = reference_layer_energies(net, x)
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(energy.energy(net, x).numpy(), want.sum(-1), rtol=1e-12, atol=1e-12)
    if mode == "discriminative" and sparse is None:
        assert np.all(got[..., 0] == 0.0)


@SETTINGS
@given(arch=architectures(), precision=st.sampled_from(["unit", "scalar", "per_unit"]), learn=st.booleans(),
       ensemble=st.integers(1, 2), scale=st.floats(0.1, 3.0), sparse=SPARSE)
def test_value_gradients_equal_autograd(arch, precision, learn, ensemble, scale, sparse):
    sizes, act, mode, seed = arch
    net = random_net(sizes, act, mode, seed, ensemble=ensemble, precision=precision, learn=learn, sparse=sparse)
    x = [t.requires_grad_(True) for t in random_state(net, 4, seed, scale)]
    auto = torch.autograd.grad(energy.energy(net, x).sum(), x)
    with torch.no_grad():
        explicit = energy.value_gradients(net, [t.detach() for t in x])
    assert len(explicit) == net.depth + 1
    for l, (a, b) in enumerate(zip(explicit, auto)):
        assert a.shape == x[l].shape
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12, msg=f"layer {l}")


def test_zero_sparsity_is_the_network_without_a_sparse_prior():
    """``sparsity`` of zeros leaves the spec (what compiled code specialises on) and every number as they were."""
    plain = random_net([3, 4, 2], "tanh", "generative", 5)
    zeros = PCNetwork.init([3, 4, 2], "tanh", mode="generative", seed=5, sparsity=(0, 0, 0), dtype=torch.float64)
    assert zeros.spec == PCNetwork.init([3, 4, 2], "tanh", mode="generative", seed=5, dtype=torch.float64).spec
    x = random_state(plain, 3, 5)
    sparse = random_net([3, 4, 2], "tanh", "generative", 5, sparse=("cauchy", 1.0))
    # the sparse term adds lambda_l sum log(1 + x^2) to its layer's column, nothing else
    diff = energy.layer_energies(sparse, x) - energy.layer_energies(plain, x)
    want = torch.stack([lam * torch.log1p(xl ** 2).sum(-1) for lam, xl in zip(sparse.spec.sparsity, x)], -1)
    torch.testing.assert_close(diff, want, rtol=1e-12, atol=1e-12)


def test_sparse_prior_arguments_are_checked():
    from pcsim.errors import ConfigError

    for kw, key in ((dict(sparsity=(0.1, 0.2)), "sparsity"), (dict(sparsity=(0, -1, 0)), r"sparsity\[1\]"),
                    (dict(sparsity=0.5), "sparsity"), (dict(sparsity=(0, 1, 0), sparse_scale=0), "sparse_scale"),
                    (dict(sparsity=(0, 1, 0), sparse_prior="gauss"), "sparse_prior")):
        with pytest.raises(ConfigError, match=key):
            PCNetwork.init([2, 3, 4], mode="generative", **kw)


@pytest.mark.parametrize("name", ACTS)
def test_activation_derivative_equals_autograd(name):
    act = get_activation(name)
    x = torch.linspace(-4, 4, 101, dtype=torch.float64)
    x = x[x != 0].requires_grad_(True)  # relu is not differentiable at 0
    (auto,) = torch.autograd.grad(act.f(x).sum(), x)
    with torch.no_grad():
        torch.testing.assert_close(act.df(x, act.f(x)), auto, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(act.f(x).numpy(), NP_ACTS[name](x.numpy()), rtol=1e-12, atol=1e-14)


def test_unknown_activation_names_the_known_ones():
    with pytest.raises(ValueError, match="known: " + ", ".join(ACTIVATIONS)):
        get_activation("softplus")
    with pytest.raises(ValueError, match="softplus"):
        PCNetwork.init([2, 3, 4], "softplus")


@SETTINGS
@given(arch=architectures(), precision=st.sampled_from(["unit", "per_unit"]))
def test_feedforward_sweep_has_zero_prediction_error(arch, precision):
    sizes, act, mode, seed = arch
    net = random_net(sizes, act, mode, seed, precision=precision)
    x0 = net.prior_mean.expand(-1, 5, -1) if mode == "generative" else random_state(net, 5, seed)[0]
    xs = net.forward(x0)
    en = energy.layer_energies(net, xs)
    assert torch.all(en == 0)
    eps = energy.prediction_errors(net, xs)
    assert (eps[0] is None) == (mode == "discriminative")
    for l in range(1, net.depth + 1):
        assert torch.all(eps[l] == 0)
    # and the explicit gradient vanishes at every layer above the input there
    for l, g in enumerate(energy.value_gradients(net, xs)):
        assert torch.all(g == 0), l


@pytest.mark.parametrize("precision", ["unit", "scalar", "per_unit"])
def test_output_loss_is_the_batch_mean_output_energy(precision):
    net = random_net([3, 5, 4], "tanh", "discriminative", 3, ensemble=2, precision=precision)
    x = random_state(net, 6, 3)
    xs = net.forward(x[0])
    y = torch.randn(2, 6, 4, dtype=torch.float64)
    loss = energy.output_loss(net, xs[-1], y)
    clamped = xs[:-1] + [y]
    torch.testing.assert_close(loss, energy.layer_energies(net, clamped)[..., -1].mean(-1), rtol=1e-13, atol=0)
    torch.testing.assert_close(loss, energy.energy(net, clamped).mean(-1), rtol=1e-13, atol=0)


def test_learned_precision_energy_is_the_negative_log_density():
    """With learned precisions the energy is -log N(x_l; mu_l, Pi_l^-1) up to n_l/2 log(2 pi)."""
    net = random_net([2, 3, 4], "sigmoid", "discriminative", 8, precision="per_unit", learn=True)
    x = random_state(net, 5, 8)
    mus = energy.predictions(net, x)
    en = energy.layer_energies(net, x)
    for l in (1, 2):
        var = net.log_precision[l - 1].exp().reciprocal().expand_as(mus[l])
        dist = torch.distributions.Normal(mus[l], var.sqrt())
        nll = -dist.log_prob(x[l]).sum(-1) - 0.5 * net.sizes[l] * np.log(2 * np.pi)
        torch.testing.assert_close(en[..., l], nll, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch,n_in,n_out,ensemble", [(256, 512, 10, 1), (64, 128, 10, 3), (8, 16, 4, 2), (64, 128, 128, 1)])
def test_prediction_equals_the_plain_affine_map_for_narrow_and_wide_layers(batch, n_in, n_out, ensemble):
    # narrow layers are computed as a transposed product (energy.predict); the numbers must not change
    g = torch.Generator().manual_seed(batch + n_out)
    fx = torch.randn(ensemble, batch, n_in, generator=g, dtype=torch.float64)
    w = torch.randn(ensemble, n_in, n_out, generator=g, dtype=torch.float64)
    b = torch.randn(ensemble, 1, n_out, generator=g, dtype=torch.float64)
    want = torch.einsum("ebi,eio->ebo", fx, w) + b
    got = energy.predict(fx, w, b)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def test_compiled_tanh_is_tanh_to_float32_rounding():
    # inside a compiled graph tanh is 2 sigmoid(2x) - 1 (activations._tanh): the same function
    f = torch.compile(get_activation("tanh").f, dynamic=False)
    x = torch.cat([torch.linspace(-12, 12, 4001), torch.randn(4000, generator=torch.Generator().manual_seed(0)) * 1e-3])
    err = (f(x).double() - torch.tanh(x.double())).abs()
    assert err.max() < 2e-7
