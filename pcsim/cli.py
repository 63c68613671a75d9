"""The ``pcsim`` command line: run, list, replot and benchmark experiments.

::

    pcsim run configs/NAME.toml [--out DIR] [--overwrite | --resume] [--device cpu|cuda] [--set key=value ...]
    pcsim list [--configs DIR]
    pcsim show configs/NAME.toml [--set key=value ...]
    pcsim replot OUT_DIR
    pcsim bench NAME [--json] [extra args]

Every command that writes a run directory (``run``, ``fit``, ``replot``) goes through the one
output-directory protocol of :mod:`pcsim.outdir` (lock, manifest, ``--overwrite``).

Further commands (``pcsim fit``, ``pcsim sweep`` of :mod:`pcsim.sweep`) and every benchmark are registered where they are defined,
as package entry points (pyproject.toml): group ``pcsim.commands`` names functions
``register(commands)`` that add a subparser whose ``handler(args, extra)`` runs it, group
``pcsim.benchmarks`` names functions ``main(name, as_json, args) -> int``. So pcsim never
names ``circuits`` or ``analysis``.

Errors in the user's input (config, data, a diverging inference) are printed as
``pcsim: error: <message>`` with exit status 2 and no traceback; anything else is a bug and
keeps its traceback. Ctrl-C (SIGINT) stops a run cleanly with exit status 130: its last
checkpoint stays in the run directory, whose manifest then says ``"interrupted"``, and the
message names the checkpoint and the exact ``pcsim run ... --resume`` command that continues it.
SIGTERM (what a cluster's batch scheduler sends at a job's time limit, and ``kill``'s default)
stops it the same way with exit status 143.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pcsim import __version__
from pcsim.errors import ConfigError, FileFormatError, OutputError, PCSimError

if TYPE_CHECKING:
    from pcsim.outdir import RunDirectory

__all__ = ["add_run_options", "main", "run_config"]

_LIST_SHOWN = 4  # list items printed before "..."


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``pcsim`` command line on ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Exit status is 0 on success, 2 for a usage error or an invalid config/data/diverging
    run (reported on stderr as ``pcsim: error: ...``), 130 when interrupted (Ctrl-C), 143 when
    terminated (SIGTERM, handled as :class:`Terminated` while ``main`` runs in the main thread).
    """
    with _sigterm_stops():
        return _main(argv)


class Terminated(KeyboardInterrupt):
    """SIGTERM received: stops a run like Ctrl-C (its checkpoint kept), exit status 143."""


@contextlib.contextmanager
def _sigterm_stops():
    """Turn SIGTERM into :class:`Terminated` in the main thread for the body's duration."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminated(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _main(argv: Sequence[str] | None) -> int:
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
    except KeyboardInterrupt as exc:
        detail = str(exc)
        word = "terminated (SIGTERM)" if isinstance(exc, Terminated) else "interrupted"
        print(f"pcsim: {word}{': ' + detail if detail else ''}", file=sys.stderr)
        return 143 if isinstance(exc, Terminated) else 130
    except BrokenPipeError:  # `pcsim show CONFIG | head`: the reader left; not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
        return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pcsim", description="Predictive-coding simulator: run and inspect experiments."
    )
    parser.add_argument("--version", action="version", version=f"pcsim {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run an experiment config and write its results")
    run.add_argument("config", type=Path, metavar="CONFIG.toml")
    add_run_options(run, default_out="runs/<config stem>")
    run.set_defaults(handler=_cmd_run)

    lister = commands.add_parser("list", help="list the shipped experiment configs")
    lister.add_argument("--configs", type=Path, metavar="DIR",
                        help="configs directory (default: ./configs or the shipped one)")
    lister.set_defaults(handler=_cmd_list)

    show = commands.add_parser("show", help="list every key of a config: value, type, range, units, meaning")
    show.add_argument("config", type=Path, metavar="CONFIG.toml")
    show.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="show the config with this override applied (repeatable)")
    show.set_defaults(handler=_cmd_show)

    replot = commands.add_parser("replot", help="redraw a finished run's figures")
    replot.add_argument("out_dir", type=Path, metavar="OUT_DIR")
    replot.set_defaults(handler=_cmd_replot)

    bench = commands.add_parser("bench", help="run a named benchmark (extra args pass through)",
                                epilog=_benchmarks_epilog(),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_argument("name", metavar="NAME")
    bench.add_argument("--json", action="store_true", help="print results as JSON")
    bench.set_defaults(handler=_cmd_bench)
    for entry in _entry_points("pcsim.commands"):
        entry.load()(commands)
    return parser


def add_run_options(parser: argparse.ArgumentParser, *, default_out: str) -> None:
    """The options of every command that runs a config: ``--out``, ``--overwrite``, ``--resume``,
    ``--device``, ``--set``, ``--no-progress``."""
    parser.add_argument("--out", type=Path, help=f"output directory (default: {default_out})")
    again = parser.add_mutually_exclusive_group()
    again.add_argument("--overwrite", action="store_true",
                       help="replace a complete earlier run in --out (only the files pcsim wrote there)")
    again.add_argument("--resume", action="store_true",
                       help="continue the interrupted run in --out from its checkpoint (same config and --set)")
    parser.add_argument("--device", choices=("cpu", "cuda"), help="override the config's device")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config value, e.g. --set training.lr=1e-3 (repeatable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _entry_points(group: str) -> list:
    """The installed entry points of ``group``, sorted by name."""
    from importlib.metadata import entry_points

    return sorted(entry_points(group=group), key=lambda e: e.name)


def _cmd_run(args: argparse.Namespace, extra: list[str]) -> int:
    out = args.out if args.out is not None else Path("runs") / args.config.stem
    return run_config(args.config, out, device=args.device, overrides=args.overrides,
                      progress=not args.no_progress, overwrite=args.overwrite, resume=args.resume)


def run_config(config_path: Path, out_dir: Path, *, device: str | None = None, overrides: Sequence[str] = (),
               progress: bool = True, overwrite: bool = False, resume: bool = False,
               command: Sequence[str] | None = None) -> int:
    """Validate the config at ``config_path`` (with ``overrides``, ``"key=value"`` strings, and
    ``device``), run its experiment, write the results into ``out_dir`` and print the summary
    table; returns the exit status 0. Input errors raise :class:`~pcsim.errors.PCSimError`.

    The config is validated before ``out_dir`` is touched; ``out_dir`` is then held for the
    whole run under the protocol of :mod:`pcsim.outdir` (a complete earlier run is replaced
    only with ``overwrite``; a failed run leaves no directory it created).

    Its trainings checkpoint into ``out_dir`` (:mod:`pcsim.checkpoint`, ``[checkpoint] every``);
    ``resume`` continues an interrupted run there from its checkpoint, refused (naming the keys)
    when the config differs from the checkpoint's, and when there is no checkpoint or the run
    finished. A ``KeyboardInterrupt`` keeps the last checkpoint and is re-raised with a message
    naming it and the command that resumes the run: ``command`` (the words that ran this one,
    default ``pcsim run CONFIG --out DIR [--device D] [--set ...]``) with ``--resume``.
    """
    from pcsim.checkpoint import Checkpoints
    from pcsim.outdir import RunDirectory
    from pcsim.registry import ExperimentResult, RunContext
    from pcsim.results import FIXED_FILES, write_results

    source = str(config_path)
    module, config = _load_checked(config_path, overrides, device)
    if command is None:
        command = ["pcsim", "run", source, "--out", str(out_dir), *(["--device", device] if device else []),
                   *(word for text in overrides for word in ("--set", text))]
    run = RunDirectory(out_dir, experiment=config.experiment, overwrite=overwrite, command="run",
                       config_source=str(Path(source).resolve()), names=FIXED_FILES, resume=resume)
    try:
        with run:
            checkpoints = Checkpoints(run, config, resume=resume, source=source)  # a refused resume says why first
            _note_previous(run, resume)
            ctx = RunContext(out_dir=out_dir, device=config.device, progress=progress, config_source=source)
            with checkpoints.active():
                result = module.run(config, ctx)
            if not isinstance(result, ExperimentResult):
                raise TypeError(f"{config.experiment}.run returned {type(result).__name__}, "
                                "not an ExperimentResult")
            paths = write_results(result, module.plot(result.dataset), run, config)
    except KeyboardInterrupt as exc:  # Ctrl-C, or SIGTERM (Terminated): the same message, the same type
        raise type(exc)(_interrupted(run, command)) from None
    _print_table(_flatten(result.summary), title=f"{config.experiment} (seed {config.seed})")
    _print_paths(paths)
    return 0


def _load_checked(config_path: Path, overrides: Sequence[str], device: str | None):
    """``(module, config)`` of the config at ``config_path`` with ``overrides`` and ``device``,
    validated with its ``check_inputs``; a problem is the ConfigError naming the file."""
    from pcsim.config import check_device, load_experiment

    source = str(config_path)
    module, config = load_experiment(config_path, overrides, device=device)
    check_device(config.device, source=source)
    try:
        config.check_inputs()
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    return module, config


def run_batch(config_path: Path, points: Sequence[tuple[Sequence[str], Path, bool]], *,
              device: str | None = None, progress: bool = True) -> None:
    """Run several configs of one experiment as one batch: ``points`` are ``(overrides,
    out_dir, overwrite)``, one per config, which may differ only in the keys the experiment
    module lists in ``BATCHED`` (else :class:`~pcsim.errors.ConfigError`); its
    ``run_batched(configs, ctx)`` runs them together (e.g. one PC ensemble) and each result is
    written into its own ``out_dir`` exactly as :func:`run_config` writes a run (every
    directory held under :mod:`pcsim.outdir` for the whole batch, so none looks complete
    before its files are). No checkpoints: a batch is rerun whole. Used by ``pcsim sweep``."""
    from pcsim.config import batch_signature
    from pcsim.outdir import RunDirectory
    from pcsim.registry import ExperimentResult, RunContext, batched_keys
    from pcsim.results import FIXED_FILES, write_results

    loaded = [_load_checked(config_path, overrides, device) for overrides, _, _ in points]
    module, configs = loaded[0][0], [config for _, config in loaded]
    keys = batched_keys(module)
    if not keys:
        raise ConfigError(f"{config_path}: experiment {configs[0].experiment} runs no batches (it defines no "
                          "BATCHED keys and run_batched)")
    signatures = {batch_signature(config, keys) for config in configs}
    if len(signatures) > 1:
        raise ConfigError(f"{config_path}: a batch of {configs[0].experiment} may differ only in {', '.join(keys)}")
    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(RunDirectory(out_dir, experiment=config.experiment, overwrite=overwrite,
                                                 command="run", config_source=str(Path(config_path).resolve()),
                                                 names=FIXED_FILES))
                for (_, out_dir, overwrite), config in zip(points, configs)]
        ctx = RunContext(out_dir=points[0][1], device=configs[0].device, progress=progress,
                         config_source=str(config_path))
        results = module.run_batched(configs, ctx)
        if len(results) != len(configs) or not all(isinstance(r, ExperimentResult) for r in results):
            raise TypeError(f"{configs[0].experiment}.run_batched must return one ExperimentResult per config")
        for result, run, config in zip(results, runs, configs):
            write_results(result, module.plot(result.dataset), run, config)


def _note_previous(run: RunDirectory, resume: bool = False) -> None:
    """Say on stderr when a run replaces (or resumes) an earlier run directory's content."""
    previous = run.previous
    if previous is None:
        return
    if resume:
        print(f"pcsim: note: {run.path} holds {previous.describe()}; resuming it", file=sys.stderr)
        return
    hint = " (--resume would have continued it from its checkpoint)" \
        if previous.state == "interrupted" and previous.manifest.get("checkpoint") else ""
    print(f"pcsim: note: {run.path} held {previous.describe()}; replacing it{hint}", file=sys.stderr)


def _interrupted(run: RunDirectory, command: Sequence[str]) -> str:
    """The message of a Ctrl-C: where the last checkpoint is and the command that resumes from it."""
    import shlex

    from pcsim.outdir import CHECKPOINT_FILE

    info = run.checkpoint
    if info is None or not (run.path / CHECKPOINT_FILE).is_file():
        return (f"no checkpoint was written yet (the first is saved after [checkpoint] every epochs of a "
                f"training); run the command again to start over")
    words = [w for w in command if w != "--overwrite"]
    if "--resume" not in words:
        words.append("--resume")
    return (f"the last checkpoint, {run.path / CHECKPOINT_FILE}, holds epoch {info['epoch']} of {info['epochs']} "
            f"of training {info['stage'] + 1} ({info['desc']!r}); continue the run with\n  "
            + shlex.join(words))


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
    from pcsim.outdir import RunDirectory
    from pcsim.registry import get_experiment
    from pcsim.results import RESULTS_FILE, open_results, write_figures

    out_dir: Path = args.out_dir
    results_path = out_dir / RESULTS_FILE
    if not out_dir.is_dir():
        raise OutputError(f"{out_dir}: no such run directory")
    with RunDirectory(out_dir, experiment="", command="replot") as run:
        dataset = open_results(out_dir)
        experiment = dataset.attrs.get("experiment")
        if not isinstance(experiment, str):
            raise FileFormatError(f"{results_path}: attribute 'experiment' is missing, so the "
                                  "experiment that can plot it is unknown")
        module = get_experiment(experiment, source=str(results_path))
        paths = write_figures(module.plot(dataset), run)
    _print_paths(paths)
    return 0


def _cmd_show(args: argparse.Namespace, extra: list[str]) -> int:
    from pcsim.config import config_fields, load_config

    config = load_config(args.config, args.overrides)
    rows = [(f.key, _shorten(f.value), f.type, f.constraint, f.doc) for f in config_fields(config)]
    header = ("KEY", "VALUE", "TYPE", "RANGE/UNITS", "MEANING")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(4)]
    for row in [header, *rows]:
        print("  ".join(f"{cell:<{width}}" for cell, width in zip(row, (*widths, 0))).rstrip())
    return 0


def _shorten(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _benchmarks_epilog() -> str:
    """The ``pcsim bench --help`` list of installed benchmarks, one line each from its module."""
    from pcsim.registry import benchmark_summary

    entries = _entry_points("pcsim.benchmarks")
    if not entries:
        return "no benchmarks installed"
    width = max(len(e.name) for e in entries)
    lines = [f"  {e.name:<{width}}  {benchmark_summary(e.name, e.module)}".rstrip() for e in entries]
    return "benchmarks:\n" + "\n".join(lines)


def _cmd_bench(args: argparse.Namespace, extra: list[str]) -> int:
    benches = {e.name: e for e in _entry_points("pcsim.benchmarks")}
    if args.name not in benches:
        raise ConfigError(f"unknown benchmark {args.name!r}; known: {', '.join(benches) or 'none installed'}")
    entry = benches[args.name]
    try:
        bench = entry.load()
    except ImportError as exc:
        raise ConfigError(f"benchmark {args.name!r} is not available: {entry.value} cannot be imported ({exc})") from None
    status = bench(args.name, args.json, list(extra))
    return status if isinstance(status, int) else 0


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
