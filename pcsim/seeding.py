"""One seeded scope of torch's global random number generators.

Some code draws from torch's global generators because the library it calls takes no
``torch.Generator`` (module initialisers, ``torch.randperm`` inside a training loop, dropout).
:func:`seeded` makes those draws depend on a seed alone and leaves the caller's streams as they
were: it forks the CPU generator (and the device's, on CUDA), seeds it, and restores both after.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch

__all__ = ["seeded"]


@contextmanager
def seeded(seed: int, device: str | torch.device = "cpu") -> Iterator[None]:
    """Run the body with torch's global generators seeded with ``seed`` (an int >= 0): the CPU
    generator, and ``device``'s when it is a CUDA device; both are restored afterwards, so draws
    outside the body are unchanged (:func:`torch.random.fork_rng`)."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)
        yield
