"""Writing and reopening a run's output: ``results.nc``, ``summary.json``, ``config.toml``, PNGs.

What is written lives here; how it is written (lock, manifest, temporary names renamed into
place only once *all* files were written, ownership of files, cleanup of failed runs) is the
output-directory protocol of :mod:`pcsim.outdir`, so a failed run (a plot that raises, a
full disk) leaves neither half-written files nor a mix of old and new results. The netCDF
file carries the config that produced it in its attrs, so it is self-describing:
``xarray.open_dataset("runs/x/results.nc").attrs["config"]`` is the TOML text.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from pcsim import __version__
from pcsim.config import ExperimentConfig, config_to_toml
from pcsim.errors import ConfigError, FileFormatError
from pcsim.outdir import RunDirectory
from pcsim.registry import ExperimentResult, to_jsonable

__all__ = ["convention_problems", "figure_writers", "load_summary", "netcdf_ready", "netcdf_writer", "open_results",
           "write_figures", "write_results"]

RESULTS_FILE = "results.nc"
SUMMARY_FILE = "summary.json"
CONFIG_FILE = "config.toml"
#: the files every run writes besides its figures
FIXED_FILES = (RESULTS_FILE, SUMMARY_FILE, CONFIG_FILE)
FIGURE_DPI = 120

_FIGURE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def write_results(
    result: ExperimentResult,
    figures: Mapping[str, Figure],
    out_dir: str | Path | RunDirectory,
    config: ExperimentConfig,
    *,
    overwrite: bool = False,
) -> dict[str, Path]:
    """Write a run's dataset, summary, config and figures into ``out_dir``, atomically.

    Writes ``results.nc`` (the dataset, with the config's TOML, the pcsim version and the
    experiment module in its attrs; attrs made netCDF-serialisable), ``summary.json`` (indent
    2, sorted keys), ``config.toml`` and ``NAME.png`` for each figure (dpi 120). ``out_dir`` is
    a :class:`~pcsim.outdir.RunDirectory` the caller holds (the CLI holds one for the whole
    run), or a path, which is then held for the write alone under the same protocol (lock,
    manifest, ``overwrite`` to replace a complete run, never a file pcsim did not write).
    Nothing is renamed into place until every file was written; on any error the temporary
    files are removed and the error re-raised (an OSError as OutputError naming the file).
    A dataset that breaks :func:`convention_problems` is refused (ValueError) before anything
    is written. Returns ``{file name: path}`` for the files written.
    """
    if not isinstance(out_dir, RunDirectory):
        with RunDirectory(out_dir, experiment=config.experiment, overwrite=overwrite,
                          names=FIXED_FILES) as run:
            return write_results(result, figures, run, config)
    toml_text = config_to_toml(config)
    results = netcdf_writer(result.dataset, what=config.experiment,
                            attrs=dict(config=toml_text, pcsim_version=__version__, experiment=config.experiment))
    summary = json.dumps(result.summary, indent=2,  # made JSON-ready once, by ExperimentResult
                         sort_keys=True, allow_nan=False) + "\n"
    writers = figure_writers(figures)
    writers[CONFIG_FILE] = lambda path: path.write_text(toml_text, encoding="utf-8")
    writers[SUMMARY_FILE] = lambda path: path.write_text(summary, encoding="utf-8")
    writers[RESULTS_FILE] = results
    return out_dir.write(writers)


def netcdf_writer(dataset: xr.Dataset, *, what: str, attrs: Mapping[str, Any] | None = None) -> Callable[[Path], None]:
    """A writer for :meth:`RunDirectory.write <pcsim.outdir.RunDirectory.write>` that saves
    ``dataset`` as netCDF (``attrs`` added to its own, every attr made netCDF-ready by
    :func:`netcdf_ready`, large numeric variables compressed). A dataset that breaks
    :func:`convention_problems` is refused now (ValueError naming ``what``, the experiment or
    command that made it), before anything is written: such a dataset is a bug of its maker."""
    problems = convention_problems(dataset)
    if problems:  # a bug of the experiment module, not of the user's input: nothing is written
        raise ValueError(f"{what}: its results dataset breaks pcsim's result conventions "
                         f"(pcsim.results.convention_problems): {'; '.join(problems)}")
    ready = netcdf_ready(dataset)
    ready.attrs.update(_clean_attrs(attrs or {}))
    engine = _netcdf_engine()
    return lambda path: ready.to_netcdf(path, engine=engine, encoding=_compression(ready, engine))


#: the unit of every time coordinate or variable named ``time`` in pcsim results (SI, as NWB)
TIME_UNITS = "s"


def convention_problems(dataset: xr.Dataset) -> list[str]:
    """What makes ``dataset`` mislead a reader who reopens it, one sentence each (empty: none).

    The conventions of every pcsim result: each data variable and each coordinate carries the
    attrs ``units`` (a string; "1" for a dimensionless number, "" only for labels and
    categories) and ``long_name``; two different data variables never share a long_name; every
    variable or coordinate whose name is or ends in ``time`` is in :data:`TIME_UNITS` (seconds).
    """
    problems = []
    names: dict[str, str] = {}
    for kind, items in (("coordinate", dataset.coords.items()), ("variable", dataset.data_vars.items())):
        for name, var in items:
            for attr in ("units", "long_name"):
                if not isinstance(var.attrs.get(attr), str):
                    problems.append(f"{kind} {name!r} has no {attr!r} attribute")
            if (str(name) == "time" or str(name).endswith("_time")) and var.attrs.get("units") != TIME_UNITS:
                problems.append(f"{kind} {name!r} is in {var.attrs.get('units')!r}, not {TIME_UNITS!r}")
            long_name = var.attrs.get("long_name")
            if kind == "variable" and isinstance(long_name, str):
                if long_name in names:
                    problems.append(f"variables {names[long_name]!r} and {name!r} share the long_name {long_name!r}")
                names.setdefault(long_name, str(name))
    return problems


def _compression(dataset: xr.Dataset, engine: str) -> dict[str, dict[str, Any]]:
    """zlib (level 4) for numeric variables above 1 MB where the backend supports it: circuit
    recordings are mostly silence and NaN padding and shrink several-fold."""
    if engine not in ("netcdf4", "h5netcdf"):
        return {}
    return {name: {"zlib": True, "complevel": 4} for name, var in dataset.data_vars.items()
            if var.dtype.kind in "fiu" and var.nbytes > 2**20}


def write_figures(figures: Mapping[str, Figure], out_dir: str | Path | RunDirectory) -> dict[str, Path]:
    """Save each figure as ``out_dir/NAME.png`` (dpi 120), all or none, into a complete run.

    Used by ``pcsim replot`` to redraw a finished run's figures from its ``results.nc``.
    ``out_dir`` is a complete run's directory (or a ``RunDirectory(..., command="replot")``
    held by the caller): the figures replace the run's own PNGs, PNGs of the run that the
    experiment no longer draws are removed, a file pcsim did not write is never replaced, and
    the manifest's file list is updated. Names must be plain file stems (letters, digits,
    ``_``, ``-``, ``.``). Returns ``{file name: path}``.
    """
    if not isinstance(out_dir, RunDirectory):
        with RunDirectory(out_dir, experiment="", command="replot") as run:
            return write_figures(figures, run)
    paths = out_dir.write(figure_writers(figures))
    out_dir.remove([name for name in out_dir.files if name.endswith(".png") and name not in paths])
    return paths


def open_results(out_dir: str | Path) -> xr.Dataset:
    """Load a run's ``results.nc`` fully into memory and close the file.

    ``out_dir`` is a run directory (or the ``.nc`` file itself). Loading eagerly means the
    file is not held open, so the run can be rewritten or deleted afterwards. A missing,
    truncated or non-netCDF file raises :class:`~pcsim.errors.FileFormatError` naming it.
    """
    path = Path(out_dir)
    if path.is_dir() or path.suffix != ".nc":
        path = path / RESULTS_FILE
    if not path.is_file():
        raise FileFormatError(f"{path}: no such results file (is {out_dir} a pcsim run?)")
    try:
        with xr.open_dataset(path) as dataset:
            return dataset.load()
    except (OSError, ValueError, RuntimeError, KeyError, IndexError, TypeError) as exc:
        # netCDF4/HDF5 say "NetCDF: HDF error", xarray "did not find a match in any of
        # xarray's currently installed IO backends": the file is not (all) netCDF
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise FileFormatError(f"{path}: cannot be read as a pcsim results file (truncated or "
                              f"not netCDF): {reason}") from None


def load_summary(out_dir: str | Path) -> dict[str, Any]:
    """Return the ``summary.json`` of the run in ``out_dir`` as a dict (a missing or
    unreadable file raises :class:`~pcsim.errors.FileFormatError` naming it)."""
    path = Path(out_dir) / SUMMARY_FILE
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileFormatError(f"{path}: no such summary file (is {out_dir} a pcsim run?)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FileFormatError(f"{path}: cannot be read as a pcsim summary ({exc})") from None
    if not isinstance(summary, dict):
        raise FileFormatError(f"{path}: a pcsim summary is a JSON object, got {type(summary).__name__}")
    return summary


def netcdf_ready(dataset: xr.Dataset) -> xr.Dataset:
    """Return a shallow copy of ``dataset`` whose attrs netCDF can store.

    In the dataset's attrs and in every variable's and coordinate's: booleans become 0/1,
    ``None`` entries are dropped, dicts (and lists that are not all numbers) become JSON
    strings, paths become strings. The input is not modified.
    """
    out = dataset.copy(deep=False)
    out.attrs = _clean_attrs(dataset.attrs)
    for variable in out.variables.values():
        variable.attrs = _clean_attrs(variable.attrs)
    return out


def _clean_attrs(attrs: Mapping[Any, Any]) -> dict[str, Any]:
    return {str(k): _attr_value(v) for k, v in attrs.items() if v is not None}


def _attr_value(value: Any) -> Any:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (str, int, float, np.number)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, np.ndarray):
        if value.dtype == bool:
            return value.astype(np.int8)
        if value.dtype.kind in "iuf" and value.ndim == 1 and value.size:
            return value
        return json.dumps(to_jsonable(value, name="attribute"))
    if isinstance(value, (list, tuple)) and value and all(
        isinstance(v, (int, float, np.number)) and not isinstance(v, (bool, np.bool_))
        for v in value
    ):
        return np.asarray(value)
    return json.dumps(to_jsonable(value, name="attribute"), sort_keys=True)


def _netcdf_engine() -> str:
    for module, engine in (("netCDF4", "netcdf4"), ("h5netcdf", "h5netcdf"), ("scipy", "scipy")):
        if importlib.util.find_spec(module) is not None:
            return engine
    raise RuntimeError("no netCDF backend: install netCDF4 (or h5netcdf, or scipy)")


def figure_writers(figures: Mapping[str, Figure]) -> dict[str, Callable[[Path], None]]:
    """``{"NAME.png": writer}`` for :meth:`RunDirectory.write <pcsim.outdir.RunDirectory.write>`,
    one per figure (dpi :data:`FIGURE_DPI`); a name that is not a plain file stem, or an object
    that is not a Figure, raises :class:`ConfigError` naming it."""
    writers: dict[str, Callable[[Path], None]] = {}
    for name, figure in figures.items():
        if not isinstance(name, str) or not _FIGURE_NAME.fullmatch(name):
            raise ConfigError(f"figures: figure name {name!r} is not a plain file stem")
        if not callable(getattr(figure, "savefig", None)):
            raise ConfigError(f"figures[{name!r}] is a {type(figure).__name__}, not a Figure")
        # Bind figure now: a lambda closing over the loop variable would save the last one.
        writers[f"{name}.png"] = lambda path, fig=figure: fig.savefig(
            path, format="png", dpi=FIGURE_DPI
        )
    return writers
