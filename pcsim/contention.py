"""Load for benchmarks: one CPU-bound process beside a measurement, as on a shared cluster node.

Torch-free on purpose, so that a peer library's benchmark running in another environment
(``benchmarks/pc_vs_pcx.py``) competes with exactly the same load as ``pcsim bench --load``.
"""

from __future__ import annotations

import subprocess
import sys
import time
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def competing_process(on: bool) -> Iterator[None]:
    """Run one CPU-bound process (a Python busy loop, one core's worth) beside the body when
    ``on``, started 0.5 s before it and stopped after it, also when the body raises."""
    if not on:
        yield
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # let it reach the run queue
        yield
    finally:
        proc.terminate()
        proc.wait()
