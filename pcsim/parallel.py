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

The cure is to never fork a team wider than the cores that are free *now*: the thread
count of a computation is the smaller of what its size can use (products below
:data:`SERIAL_WORK` multiply-adds run on the calling thread) and :func:`free_cores`, the
cores not taken by other running processes at the moment it starts (Linux: the
instantaneous count of runnable tasks in ``/proc/loadavg`` less this process's own running
threads). On a quiet machine a small network keeps both cores (measured, small case:
32 ms per epoch with 2 threads against 47 ms with 1); beside a CPU-bound process it runs on
one, where no barrier can wait for a descheduled thread. The choice is made per computation
(the relaxation loop, the fused training step, the backprop twin's step), applied for its
duration only by :func:`threads` and baked into the kernels it compiles (one compiled
variant per thread count, made when first needed).
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Iterator, Sequence

import torch

#: matrix products smaller than this many multiply-adds run single-threaded
SERIAL_WORK = 1 << 16


#: seconds a reading of :func:`free_cores` is reused: reading /proc costs ~0.1 ms, a small
#: training step ~1.5 ms, and load changes on the scale of seconds
READING_AGE = 0.1
# (time.monotonic() of the last reading, the last two readings): a cache, not a setting
_reading: list = [-1.0, [1, 1]]


def free_cores() -> int:
    """The CPU cores this process may use that no other process is running on at this moment
    (at least 1): its CPU affinity less the runnable tasks of other processes, read from
    ``/proc/loadavg`` (running tasks system-wide) and ``/proc/self/task/*/stat`` (this
    process's running threads), read at most every :data:`READING_AGE` seconds; a core counts
    as taken once two successive readings say so. Where ``/proc`` is not there, every allowed core."""
    now = time.monotonic()
    if now - _reading[0] > READING_AGE:
        _reading[:] = [now, [_reading[1][1], _read_free_cores()]]
    # the larger of the last two readings: a core counts as taken once two readings agree, so
    # a thread of our own caught between spinning and sleeping does not halve a quiet run
    return max(_reading[1])


def allowed_cores() -> int:
    """The CPU cores this process may run on: its CPU affinity, or every core where the platform
    has no affinity (at least 1)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _read_free_cores() -> int:
    cores = allowed_cores()
    try:
        with open("/proc/loadavg") as fh:
            running = int(fh.read().split()[3].split("/")[0])
        own = 0
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/stat") as fh:
                    own += fh.read().rsplit(")", 1)[1].split()[0] == "R"
            except OSError:  # the thread ended meanwhile
                pass
    except (OSError, ValueError, IndexError):
        return cores
    return max(1, cores - max(0, running - max(own, 1)))


def threads_for(sizes: Sequence[int], batch: int, ensemble: int = 1) -> int:
    """Threads for a network of widths ``sizes`` on ``batch`` samples and ``ensemble`` members:
    1 when its largest layer product (``ensemble * batch * n_{l-1} * n_l`` multiply-adds) is
    below :data:`SERIAL_WORK`, else ``torch.get_num_threads()`` capped at :func:`free_cores`."""
    return threads_for_work(max(ensemble * batch * a * b for a, b in zip(sizes[:-1], sizes[1:])))


def threads_for_work(work: int) -> int:
    """Threads for a computation whose typical parallel region (one batched product) does ``work``
    multiply-adds: 1 below :data:`SERIAL_WORK`, else ``torch.get_num_threads()`` capped at
    :func:`free_cores`. The one rule behind :func:`threads_for` and the dynamical PC engine's choice
    (:func:`pcsim.temporal.inference.relaxation_threads`), whose regions are batched products of
    small blocks rather than of layers."""
    if work < SERIAL_WORK:
        return 1
    return usable()


def usable() -> int:
    """Threads a computation of unknown size may use: ``torch.get_num_threads()`` capped at :func:`free_cores`."""
    return max(1, min(torch.get_num_threads(), free_cores()))


def threads_for_stacks(stacks: Sequence[tuple[Sequence[int], int]]) -> int:
    """Threads for a computation that runs several layer stacks (an encoder and a decoder, a
    flow's conditioners): the most that any ``(sizes, batch)`` of ``stacks`` can use (:func:`threads_for`)."""
    return max(threads_for(sizes, batch) for sizes, batch in stacks)


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
