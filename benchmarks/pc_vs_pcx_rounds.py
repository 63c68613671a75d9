"""pcsim against the peer JAX library pcx on the bench's small case, alternated round by round.

This machine's speed drifts by up to 1.6x between runs a minute apart (a shared virtual
machine), so one pcsim run and one pcx run taken at different moments do not give a ratio.
Each round here runs ``python -m pcsim bench pc-vs-bp --json --cases small`` and then
``benchmarks/pc_vs_pcx.py`` (in the peer's own environment, see its docstring), both with or
both without ``--load`` (one CPU-bound competing process started by each measurement), and
reports that round's ratio pcsim/pcx of seconds per epoch; the summary is the median and the
range of the ratios over the rounds (below 1: pcsim is faster)::

    python benchmarks/pc_vs_pcx_rounds.py --peer-python /tmp/peer/bin/python --rounds 5 --load

It prints one JSON object: per round the two epoch times (s), their ratio, and the summary.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _json_tail(cmd: list[str]) -> dict:
    """The JSON object printed on the last line of ``cmd``'s standard output."""
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, cwd=HERE.parent).stdout
    return json.loads(out.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Alternate the two measurements ``--rounds`` times and print their per-round ratios as JSON."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-python", required=True, help="the python of the environment that has pcx installed")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5, help="epochs per measurement (median)")
    p.add_argument("--load", action="store_true", help="one CPU-bound competing process beside each measurement")
    a = p.parse_args(argv)
    load = ["--load"] if a.load else []
    rounds = []
    for r in range(a.rounds):
        ours = _json_tail([sys.executable, "-m", "pcsim", "bench", "pc-vs-bp", "--json", "--cases", "small",
                           "--repeats", str(a.repeats), *load])["small"]
        peer = _json_tail([a.peer_python, str(HERE / "pc_vs_pcx.py"), "--repeats", str(a.repeats), *load])
        rounds.append({"pcsim_s": ours["pc_s_per_epoch"], "pcsim_threads": ours["threads"],
                       "pcx_s": peer["pcx_s_per_epoch"], "ratio": ours["pc_s_per_epoch"] / peer["pcx_s_per_epoch"]})
        print(f"round {r + 1}/{a.rounds}: pcsim {1e3 * rounds[-1]['pcsim_s']:.1f} ms, pcx {1e3 * rounds[-1]['pcx_s']:.1f} "
              f"ms, ratio {rounds[-1]['ratio']:.2f}", file=sys.stderr)
    ratios = [r["ratio"] for r in rounds]
    print(json.dumps({"load": a.load, "rounds": rounds, "median_ratio": statistics.median(ratios),
                      "min_ratio": min(ratios), "max_ratio": max(ratios)}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
