"""``pcsim fit RECORDING.nwb --config CONFIG.toml``: fit latent models to a recording.

Registered with the ``pcsim`` command line through the ``pcsim.commands`` entry point
(pyproject.toml), so the engine never names this package. ``pcsim fit REC --config CFG`` runs
``CFG`` with ``recording.path`` set to ``REC`` (default output ``runs/<recording stem>``).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
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


def fit(recording: str | Path, config: str | Path, out: str | Path | None = None, *, overrides: Sequence[str] = (),
        device: str | None = None, progress: bool = True, overwrite: bool = False, resume: bool = False) -> int:
    """``pcsim fit`` from Python: run the fit config ``config`` on the NWB file ``recording``.

    ``recording`` is an NWB file with spike times (binned here) or a binned recording written
    by :func:`analysis.nwb.write_nwb`; ``config`` a config whose experiment reads
    ``recording.path`` (e.g. ``configs/fit_recording.toml``); ``out`` the run directory
    (default ``runs/<recording stem>``); ``overrides`` ``"key=value"`` strings as ``--set``
    takes them; ``overwrite`` replaces a previous complete run in ``out``, ``resume`` continues an
    interrupted one from its checkpoint (:func:`pcsim.cli.run_config`). Writes
    ``results.nc``, ``summary.json`` and the figures into ``out``, prints the summary table and
    returns 0; bad input raises a :class:`~pcsim.errors.PCSimError`.
    """
    from pcsim.cli import run_config
    from pcsim.errors import DataError

    recording = Path(recording)
    if not recording.is_file():
        raise DataError(f"{recording}: no such recording file")
    path = json.dumps(str(recording.resolve()))  # a TOML basic string
    out = Path(out) if out is not None else Path("runs") / recording.stem
    command = ["pcsim", "fit", str(recording), "--config", str(config), "--out", str(out),
               *(["--device", device] if device else []), *(w for text in overrides for w in ("--set", text))]
    return run_config(Path(config), out, device=device, overrides=[*overrides, f"recording.path={path}"],
                      progress=progress, overwrite=overwrite, resume=resume, command=command)


def _fit(args: argparse.Namespace, extra: list[str]) -> int:
    return fit(args.recording, args.config, args.out, overrides=args.overrides, device=args.device,
               progress=not args.no_progress, overwrite=args.overwrite, resume=args.resume)
