"""pcsim.seeding.seeded: draws inside depend on the seed alone; the caller's stream is untouched."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pcsim.seeding import seeded


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), before=st.integers(0, 2**31 - 1))
def test_seeded_draws_depend_on_the_seed_alone_and_leave_the_global_stream(seed, before):
    torch.manual_seed(before)
    with seeded(seed):
        inside = torch.rand(5)
    after = torch.rand(5)
    torch.manual_seed(before + 1)                       # another global state before the scope
    with seeded(seed):
        again = torch.rand(5)
    torch.manual_seed(before)
    assert torch.equal(inside, again)                   # the seed alone decides the draws
    assert torch.equal(after, torch.rand(5))            # as if the scope had never drawn
    torch.manual_seed(seed)
    assert torch.equal(inside, torch.rand(5))           # exactly torch.manual_seed(seed)'s stream
