"""How many CPU threads a PC computation uses, chosen by the size of its matrix products.

Why this exists. torch's CPU intra-op parallelism is one OpenMP team (MKL's products, ATen's
kernels and the C++ kernels ``torch.compile`` generates all run in it). Every parallel region
ends at a barrier that waits for *every* thread of the team, and idle team threads spin while
they wait. A small network's training step is thousands of regions of a few microseconds
each. On a quiet machine that costs little, but as soon as another process uses a core, a
team thread is often descheduled: each region then waits a scheduler time slice (~ms) for
it, and the spinning threads burn the slices the working thread needs. That is what made the
small case 5-30x slower on a shared machine (measured: matrix products alone, 2 threads vs 1,
under load: 1.0-1.6 vs 9 GFLOP/s; ``OMP_WAIT_POLICY=passive`` alone recovers most of it,
which identifies the spinning barrier as the cause).

The cure is to not fork a team for work too small to need one: products below
:data:`SERIAL_WORK` multiply-adds (about a tenth of a millisecond on one core) run on the
calling thread only, where no barrier can wait for a descheduled thread; large products
keep every thread. The choice is made per computation (the relaxation loop, the fused
training step, the backprop twin's step) from its shapes, applied for its duration only by
:func:`threads` and baked into the kernels it compiles.

Large products keep the whole team, and with it the spinning barrier: on a shared machine
they still lose time to it. OpenMP reads its wait policy only when it starts, before any
library code runs, so it cannot be set from here: the ``pcsim`` command line sets
``OMP_WAIT_POLICY=PASSIVE`` (unless the user set it) before torch loads, so idle team threads
sleep instead (measured on the wide case beside a competing process: 10.8 -> 2.1 s per
epoch); a Python user gets the same by exporting it before starting Python.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

#: matrix products smaller than this many multiply-adds run single-threaded
SERIAL_WORK = 1 << 22


def threads_for(sizes: Sequence[int], batch: int, ensemble: int = 1) -> int:
    """Threads for a network of widths ``sizes`` on ``batch`` samples and ``ensemble`` members:
    1 when its largest layer product (``ensemble * batch * n_{l-1} * n_l`` multiply-adds) is
    below :data:`SERIAL_WORK`, else ``torch.get_num_threads()``."""
    work = max(ensemble * batch * a * b for a, b in zip(sizes[:-1], sizes[1:]))
    return 1 if work < SERIAL_WORK else torch.get_num_threads()


@contextmanager
def threads(n: int) -> Iterator[None]:
    """Run the body with ``n`` intra-op threads, restoring the previous count afterwards (no-op when equal)."""
    old = torch.get_num_threads()
    if n == old:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
