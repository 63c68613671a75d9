"""How the CLI finds experiments, without pcsim importing ``circuits`` or ``analysis``.

An experiment is any importable module that defines three names::

    Config                      # a frozen dataclass deriving from pcsim.config.ExperimentConfig
    run(config, ctx)            # -> ExperimentResult; ctx is a RunContext
    plot(results)               # xarray.Dataset -> dict[str, matplotlib.figure.Figure]

A config file names its module (``experiment = "circuits.oddball"``), so the registry is
the set of TOML files under ``configs/``, not a list kept in code. ``plot`` receives the
dataset exactly as it is saved, so ``pcsim replot`` can redraw every figure from
``results.nc`` alone.

Optionally, an experiment that can run several configs at once (e.g. one PC ensemble) also
defines::

    BATCHED = ("seed", "training.lr")   # the dotted keys its configs may differ in
    run_batched(configs, ctx)           # -> one ExperimentResult per config, each as run() gives it

and ``pcsim sweep`` runs the points that differ only in those keys as one batch
(:func:`pcsim.cli.run_batch`); ``run`` is then best written as ``run_batched([config], ctx)[0]``,
so the two cannot drift apart.
"""

from __future__ import annotations

import ast
import importlib.util
import math
import os
import re
import tomllib
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xarray as xr

from pcsim.config import import_experiment_module
from pcsim.errors import ConfigError, DataError

__all__ = [
    "ExperimentResult",
    "RunContext",
    "batched_keys",
    "benchmark_summary",
    "default_config_dir",
    "get_experiment",
    "list_experiments",
    "to_jsonable",
]


def batched_keys(module: types.ModuleType) -> tuple[str, ...]:
    """The dotted config keys an experiment ``module`` can run as one batch: its ``BATCHED`` when
    it also defines ``run_batched``, else ``()`` (the one reading of that optional protocol)."""
    return tuple(getattr(module, "BATCHED", ())) if callable(getattr(module, "run_batched", None)) else ()


@dataclass
class RunContext:
    """What a run needs besides its config: where to write, on which device, how verbosely.

    ``out_dir`` exists when ``run`` is called and is held by the run under the protocol of
    :mod:`pcsim.outdir`; an experiment writes no files there itself (the CLI writes what
    ``run`` returns, so the manifest lists every file of the run); ``progress`` says whether to show progress bars (``tqdm(..., disable=not ctx.progress)``);
    ``config_source`` is the config file's path, for messages.
    """

    out_dir: Path
    device: str
    progress: bool = True
    config_source: str = ""


@dataclass
class ExperimentResult:
    """What ``run`` returns: the labelled results and a small JSON-serialisable summary.

    ``summary`` holds the headline numbers (final accuracy, alignment ...) that the CLI
    prints and writes to ``summary.json``. It is converted on construction: numpy and torch
    scalars and arrays become Python numbers and lists, non-finite floats become ``None``.
    """

    dataset: xr.Dataset
    summary: dict[str, Any]

    def __post_init__(self) -> None:
        if not isinstance(self.dataset, xr.Dataset):
            raise DataError(
                f"ExperimentResult.dataset must be an xarray.Dataset, "
                f"got {type(self.dataset).__name__}"
            )
        if not isinstance(self.summary, Mapping):
            raise DataError(
                f"ExperimentResult.summary must be a dict, got {type(self.summary).__name__}"
            )
        self.summary = to_jsonable(self.summary, name="summary")


def to_jsonable(obj: Any, *, name: str = "value") -> Any:
    """Return ``obj`` as JSON-ready builtins: dicts, lists, str, int, float, bool, None.

    Numpy/torch scalars and arrays are converted through their ``tolist()``; tuples become
    lists, paths become strings, mapping keys become strings, and NaN/±Inf become ``None``
    (strict JSON has no spelling for them). Anything else raises
    :class:`~pcsim.errors.DataError` naming the offending entry as ``name['key'][index]``.
    """
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return float(obj) if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v, name=f"{name}[{str(k)!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, name=f"{name}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    tolist = getattr(obj, "tolist", None)  # numpy and torch, without importing torch
    if callable(tolist):
        return to_jsonable(tolist(), name=name)
    raise DataError(
        f"{name} has type {type(obj).__name__}, which is not JSON-serialisable; "
        "store a number, string, list or dict instead"
    )


# the one check that a module is an experiment lives in pcsim.config
get_experiment = import_experiment_module


def default_config_dir() -> Path:
    """``configs/`` in the working directory if it exists, else the one beside the package.

    The second case covers an editable install run from elsewhere: the shipped configs sit
    at the repository root, next to the ``pcsim`` package directory.
    """
    local = Path.cwd() / "configs"
    if local.is_dir():
        return local
    import pcsim

    return Path(pcsim.__file__).resolve().parents[1] / "configs"


def list_experiments(config_dir: str | Path | None = None) -> list[tuple[str, str, str]]:
    """List the experiment configs under ``config_dir`` as (file, module, description) rows.

    Every ``*.toml`` below the directory (default: :func:`default_config_dir`) is one row;
    the file is named relative to the directory. The description is the config's
    ``description`` key, or else the first line of the module's docstring, read from its
    source without importing it (so listing never loads torch or brian2). A config that
    names a file which does not exist (a key ``path`` or ``*_path``/``*_file``, as the
    placeholder of ``fit_recording.toml``) gets the suffix ``(needs --set KEY=FILE)``, derived
    from the config itself. Broken files are listed with the problem as their description
    rather than stopping the listing.
    """
    root = Path(config_dir) if config_dir is not None else default_config_dir()
    if not root.is_dir():
        raise ConfigError(f"{root}: no such configs directory")
    rows = []
    for path in sorted(root.rglob("*.toml")):
        name = path.relative_to(root).as_posix()
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            rows.append((name, "?", f"(invalid TOML: {exc})"))
            continue
        experiment = data.get("experiment")
        if not isinstance(experiment, str):
            rows.append((name, "?", "(no 'experiment' key)"))
            continue
        description = data.get("description")
        if not isinstance(description, str) or not description.strip():
            description = _module_summary(experiment)
        description = (description.strip().splitlines() or [""])[0]
        needs = _missing_files(data, path.parent)
        if needs:
            description += f" (needs {' '.join(f'--set {key}=FILE' for key in needs)})"
        rows.append((name, experiment, description.strip()))
    return rows


def _missing_files(table: Mapping[str, Any], config_dir: Path, prefix: str = "") -> list[str]:
    """Dotted keys of ``table`` that name a file (``path``, ``*_path``, ``*_file``) which exists
    neither as given (relative to the working directory) nor relative to ``config_dir``."""
    missing = []
    for key, value in table.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, Mapping):
            missing += _missing_files(value, config_dir, prefix=dotted + ".")
        elif (isinstance(value, str) and (key == "path" or key.endswith(("_path", "_file")))
              and not Path(value).exists() and not (config_dir / value).exists()):
            missing.append(dotted)
    return missing


def benchmark_summary(name: str, module: str) -> str:
    """One line describing benchmark ``name`` implemented in ``module``, from the module's
    docstring (read from source, not imported): the text of a bullet ``- ``name``: ...`` when
    the module serves several benchmarks, else the docstring's first line."""
    doc = _module_docstring(module)
    if doc.startswith("("):
        return doc
    flat = " ".join(doc.split())
    bullet = re.search(rf"- ``{re.escape(name)}``: (.+?)(?=\s- ``|$)", flat)
    if bullet:
        text = bullet.group(1)
        end = re.search(r"[.;:](\s|$)", text)
        text = text[: end.start()] if end else text
    else:
        text = (doc.strip().splitlines() or [""])[0]
    return re.sub(r":\w+:`~?([^`]+)`", r"\1", text).replace("``", "")  # reST markup, for a terminal


def _module_summary(name: str) -> str:
    """First docstring line of module ``name``, parsed from its source file."""
    doc = _module_docstring(name)
    return doc.strip().splitlines()[0] if doc and doc.strip() else ""


def _module_docstring(name: str) -> str:
    """The docstring of module ``name``, parsed from its source file without importing it, or
    a parenthesised problem ("(module not found)")."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError) as exc:
        return f"(module not found: {exc})"
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return "(module not found)" if spec is None else ""
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError) as exc:
        return f"(cannot read module: {exc})"
    return ast.get_docstring(tree) or ""
