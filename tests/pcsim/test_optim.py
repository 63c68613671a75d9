"""pcsim's optimisers equal torch.optim's on the same parameters and gradients.

The PC rules hand explicit gradient lists to ``pcsim.optim``; the claim is that SGD (with
and without heavy-ball momentum) and Adam are the textbook algorithms, i.e. step for step
what ``torch.optim.SGD`` / ``torch.optim.Adam`` do with ``.grad`` set to the same gradients,
and that a per-member learning rate is the same as separate optimisers per member.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsim.optim import SGD, Adam, make_optimizer

F64 = torch.float64
SHAPES = [(3, 4, 5), (3, 1, 5), (3, 1, 1), (3, 1, 4)]  # (E, ...) like weights, biases, precisions, prior mean


def random_problem(seed, steps, shapes=SHAPES):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=F64) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=F64) * (1 + t) for s in shapes] for t in range(steps)]
    return params, grads


def run_pcsim(opt, params, grads):
    params = [p.clone() for p in params]
    for gs in grads:
        opt.step(params, gs)
    return params


def run_torch(make, params, grads):
    params = [p.clone().requires_grad_(True) for p in params]
    opt = make(params)
    for gs in grads:
        for p, g in zip(params, gs):
            p.grad = g.clone()
        opt.step()
    return [p.detach() for p in params]


OPTIMISERS = [
    ("sgd", lambda: SGD(0.1), lambda ps: torch.optim.SGD(ps, lr=0.1)),
    ("sgd_momentum", lambda: SGD(0.05, momentum=0.9), lambda ps: torch.optim.SGD(ps, lr=0.05, momentum=0.9)),
    ("adam", lambda: Adam(1e-2), lambda ps: torch.optim.Adam(ps, lr=1e-2)),
    ("adam_custom", lambda: Adam(3e-3, betas=(0.8, 0.99), eps=1e-6),
     lambda ps: torch.optim.Adam(ps, lr=3e-3, betas=(0.8, 0.99), eps=1e-6)),
]


@pytest.mark.parametrize("name,ours,theirs", OPTIMISERS, ids=[o[0] for o in OPTIMISERS])
@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**20), steps=st.integers(1, 8))
def test_optimiser_equals_torch_optim(name, ours, theirs, seed, steps):
    params, grads = random_problem(seed, steps)
    got = run_pcsim(ours(), params, grads)
    want = run_torch(theirs, params, grads)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    # and the parameters did move
    assert not torch.equal(got[0], params[0])


@pytest.mark.parametrize("kind", ["sgd", "sgd_momentum", "adam"])
def test_per_member_learning_rate_equals_separate_optimisers(kind):
    lrs = [1e-3, 1e-2, 3e-3]
    params, grads = random_problem(7, 5)
    make = {
        "sgd": lambda lr: SGD(lr),
        "sgd_momentum": lambda lr: SGD(lr, momentum=0.9),
        "adam": lambda lr: Adam(lr),
    }[kind]
    got = run_pcsim(make(lrs), params, grads)
    for e, lr in enumerate(lrs):
        member = run_pcsim(make(lr), [p[e:e + 1] for p in params], [[g[e:e + 1] for g in gs] for gs in grads])
        for a, b in zip(got, member):
            torch.testing.assert_close(a[e:e + 1], b, rtol=1e-12, atol=1e-15)
    # a tensor of learning rates works the same as a list
    again = run_pcsim(make(torch.tensor(lrs, dtype=F64)), params, grads)
    for a, b in zip(got, again):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)


def test_sgd_with_per_member_lr_is_one_plain_step():
    params, grads = random_problem(3, 1)
    lrs = torch.tensor([0.5, 0.0, 2.0], dtype=F64)
    got = run_pcsim(SGD(lrs), params, grads)
    for a, p, g in zip(got, params, grads[0]):
        torch.testing.assert_close(a, p - lrs.reshape(-1, *[1] * (p.dim() - 1)) * g, rtol=1e-15, atol=0)
        assert torch.equal(a[1], p[1])  # lr = 0 leaves that member alone


def test_make_optimizer():
    assert isinstance(make_optimizer("sgd", 0.1, 0.9), SGD) and make_optimizer("sgd", 0.1, 0.9).momentum == 0.9
    assert isinstance(make_optimizer("adam", 1e-3), Adam)
    with pytest.raises(ValueError, match="rmsprop.*known: sgd, adam"):
        make_optimizer("rmsprop", 0.1)
