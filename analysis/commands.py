"""``pcsim fit RECORDING.nwb --config CONFIG.toml``: fit latent models to a recording.

Registered with the ``pcsim`` command line through the ``pcsim.commands`` entry point
(pyproject.toml), so the engine never names this package. ``pcsim fit REC --config CFG`` runs
``CFG`` with ``recording.path`` set to ``REC`` (default output ``runs/<recording stem>``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register_fit(commands) -> None:
    """Add the ``fit`` subcommand to ``commands`` (the ``pcsim`` parser's subparsers)."""
    from pcsim.cli import add_run_options

    fit = commands.add_parser("fit", help="fit latent models to a recording (NWB) with a fit config")
    fit.add_argument("recording", type=Path, metavar="RECORDING.nwb")
    fit.add_argument("--config", type=Path, required=True, metavar="CONFIG.toml",
                     help="a config whose experiment reads `recording.path`, e.g. configs/fit_recording.toml")
    add_run_options(fit, default_out="runs/<recording stem>")
    fit.set_defaults(handler=_fit)


def _fit(args: argparse.Namespace, extra: list[str]) -> int:
    from pcsim.cli import run_config
    from pcsim.errors import DataError

    if not args.recording.is_file():
        raise DataError(f"{args.recording}: no such recording file")
    path = json.dumps(str(args.recording.resolve()))  # a TOML basic string
    out = args.out if args.out is not None else Path("runs") / args.recording.stem
    return run_config(args.config, out, device=args.device, overrides=[*args.overrides, f"recording.path={path}"],
                      progress=not args.no_progress, overwrite=args.overwrite)
