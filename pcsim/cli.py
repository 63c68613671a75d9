"""The ``pcsim`` command line: run, list, replot and benchmark experiments.

::

    pcsim run configs/NAME.toml [--out DIR] [--device cpu|cuda] [--set key=value ...]
    pcsim list [--configs DIR]
    pcsim replot OUT_DIR
    pcsim bench NAME [--json] [extra args]

Errors in the user's input (config, data, a diverging inference) are printed as
``pcsim: error: <message>`` with exit status 2 and no traceback; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pcsim import __version__
from pcsim.errors import ConfigError, DataError, PCSimError

__all__ = ["main"]

_LIST_SHOWN = 4  # list items printed before "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pcsim`` command line on ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Exit status is 0 on success, 2 for a usage error or an invalid config/data/diverging
    run (reported on stderr as ``pcsim: error: ...``), 130 when interrupted.
    """
    parser = _build_parser()
    try:
        args, extra = parser.parse_known_args(argv)
        if extra and args.command != "bench":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    except SystemExit as exc:  # argparse exits on --help and on usage errors
        return exc.code if isinstance(exc.code, int) else 2
    try:
        return int(args.handler(args, extra))
    except PCSimError as exc:
        print(f"pcsim: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("pcsim: interrupted", file=sys.stderr)
        return 130


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcsim", description="Predictive-coding simulator: run and inspect experiments."
    )
    parser.add_argument("--version", action="version", version=f"pcsim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run an experiment config and write its results")
    run.add_argument("config", type=Path, metavar="CONFIG.toml")
    run.add_argument("--out", type=Path, help="output directory (default: runs/<config stem>)")
    run.add_argument("--device", choices=("cpu", "cuda"), help="override the config's device")
    run.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.lr=1e-3 (repeatable)",
    )
    run.add_argument("--no-progress", action="store_true", help="hide progress bars")
    run.set_defaults(handler=_cmd_run)

    fit = commands.add_parser("fit", help="fit latent models to a recording (NWB) with a fit config")
    fit.add_argument("recording", type=Path, metavar="RECORDING.nwb")
    fit.add_argument("--config", type=Path, required=True, metavar="CONFIG.toml",
                     help="a config whose experiment reads `recording.path`, e.g. configs/fit_recording.toml")
    fit.add_argument("--out", type=Path, help="output directory (default: runs/<recording stem>)")
    fit.add_argument("--device", choices=("cpu", "cuda"), help="override the config's device")
    fit.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="override a config value (repeatable)")
    fit.add_argument("--no-progress", action="store_true", help="hide progress bars")
    fit.set_defaults(handler=_cmd_fit)

    lister = commands.add_parser("list", help="list the shipped experiment configs")
    lister.add_argument("--configs", type=Path, metavar="DIR",
                        help="configs directory (default: ./configs or the shipped one)")
    lister.set_defaults(handler=_cmd_list)

    replot = commands.add_parser("replot", help="redraw a finished run's figures")
    replot.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    replot.set_defaults(handler=_cmd_replot)

    bench = commands.add_parser("bench", help="run a named benchmark (extra args pass through)")
    bench.add_argument("name", metavar="NAME")
    bench.add_argument("--json", action="store_true", help="print results as JSON")
    bench.set_defaults(handler=_cmd_bench)
    return parser


def _cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    from pcsim.config import check_device, load_config
    from pcsim.registry import ExperimentResult, RunContext, get_experiment
    from pcsim.results import write_results

    source = str(args.config)
    config = load_config(args.config, args.overrides, device=args.device)
    check_device(config.device, source=source)
    module = get_experiment(config.experiment, source=source)
    out_dir = args.out if args.out is not None else Path("runs") / args.config.stem
    out_dir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(out_dir=out_dir, device=config.device, progress=not args.no_progress,
                     config_source=source)
    result = module.run(config, ctx)
    if not isinstance(result, ExperimentResult):
        raise TypeError(f"{config.experiment}.run returned {type(result).__name__}, "
                        "not an ExperimentResult")
    figures = module.plot(result.dataset)
    try:
        paths = write_results(result, figures, out_dir, config)
    finally:
        _close(figures)
    _print_table(_flatten(result.summary), title=f"{config.experiment} (seed {config.seed})")
    _print_paths(paths)
    return 0


def _cmd_fit(args: argparse.Namespace, extra: list[str]) -> int:
    """``pcsim fit REC --config CFG`` is ``pcsim run CFG --set recording.path=REC``."""
    if not args.recording.is_file():
        raise DataError(f"{args.recording}: no such recording file")
    path = json.dumps(str(args.recording.resolve()))  # a TOML basic string
    run_args = argparse.Namespace(
        config=args.config, out=args.out if args.out is not None else Path("runs") / args.recording.stem,
        device=args.device, overrides=[*args.overrides, f"recording.path={path}"], no_progress=args.no_progress)
    return _cmd_run(run_args, extra)


def _cmd_list(args: argparse.Namespace, extra: list[str]) -> int:
    from pcsim.registry import default_config_dir, list_experiments

    config_dir = args.configs if args.configs is not None else default_config_dir()
    rows = list_experiments(config_dir)
    if not rows:
        print(f"no experiment configs in {config_dir}")
        return 0
    header = ("CONFIG", "EXPERIMENT", "DESCRIPTION")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(2)]
    for row in [header, *rows]:
        print(f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]}".rstrip())
    return 0


def _cmd_replot(args: argparse.Namespace, extra: list[str]) -> int:
    from pcsim.registry import get_experiment
    from pcsim.results import RESULTS_FILE, open_results, write_figures

    out_dir: Path = args.out_dir
    results_path = out_dir / RESULTS_FILE
    if not results_path.is_file():
        raise DataError(f"{results_path}: no such results file (is {out_dir} a pcsim run?)")
    dataset = open_results(out_dir)
    experiment = dataset.attrs.get("experiment")
    if not isinstance(experiment, str):
        raise DataError(f"{results_path}: attribute 'experiment' is missing, so the "
                        "experiment that can plot it is unknown")
    module = get_experiment(experiment, source=str(results_path))
    figures = module.plot(dataset)
    try:
        paths = write_figures(figures, out_dir)
    finally:
        _close(figures)
    _print_paths(paths)
    return 0


# benchmark name -> the module whose ``main(name, as_json, args)`` runs it; named by string,
# like experiments, so that pcsim never imports circuits or analysis
BENCHMARKS = {"pc-vs-bp": "pcsim.bench", "latents": "analysis.bench", "gpfa": "analysis.bench",
              "circuits": "circuits.bench"}


def _cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    if args.name not in BENCHMARKS:
        raise ConfigError(f"unknown benchmark {args.name!r}; known: {', '.join(BENCHMARKS)}")
    module = BENCHMARKS[args.name]
    try:
        bench = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        raise ConfigError(f"benchmark {args.name!r} is not available: module {module} is missing") from None
    status = bench.main(args.name, args.json, list(extra))
    return status if isinstance(status, int) else 0


def _close(figures: Mapping[str, Any]) -> None:
    """Release pyplot-managed figures (a no-op for Figures made without pyplot)."""
    import matplotlib.pyplot as plt

    for figure in figures.values():
        plt.close(figure)


def _flatten(summary: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level with dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, prefix=f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _format(value: Any) -> str:
    """A summary value for the table: floats to 4 significant digits, long lists cut."""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (list, tuple)):
        shown = [_format(item) for item in value[:_LIST_SHOWN]]
        if len(value) > _LIST_SHOWN:
            shown.append(f"... ({len(value)} items)")
        return "[" + ", ".join(shown) + "]"
    if isinstance(value, Mapping):
        return "{}"
    return str(value)


def _print_table(rows: Mapping[str, Any], title: str) -> None:
    print(title)
    if not rows:
        print("  (empty summary)")
        return
    width = max(len(key) for key in rows)
    for key, value in rows.items():
        print(f"  {key:<{width}}  {_format(value)}")


def _print_paths(paths: Mapping[str, Path]) -> None:
    print("wrote")
    for path in paths.values():
        print(f"  {path}")
