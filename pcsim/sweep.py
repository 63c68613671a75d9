"""``pcsim sweep``: run a grid of config values on a Dask cluster and combine the points.

::

    pcsim sweep CONFIG --grid KEY=V1,V2,... [--grid KEY=...] [--seeds N] [--out DIR]
                [--scheduler local|ADDRESS] [--workers N] [--retries N] [--overwrite]
                [--device cpu|cuda] [--set KEY=VALUE ...] [--no-batch] [--no-progress]

or the same in the config's ``[sweep]`` table (:class:`~pcsim.config.SweepSection`; each
option given replaces its own key of the table). A grid point *is* a set of ``--set`` overrides, so

1. **Validation.** Every point is validated by :func:`~pcsim.config.load_experiment` (and its
   config's ``check_inputs``) before anything runs or is written: a bad key or value in any
   point is the usual :class:`~pcsim.errors.ConfigError` naming the key and the point.
2. **Execution.** Each point runs :func:`pcsim.cli.run_config`, the same function as ``pcsim
   run``, on a worker of a Dask ``LocalCluster`` of processes (default: one per free core) or of
   the cluster whose scheduler is at ``--scheduler ADDRESS`` (e.g. a dask-jobqueue SLURMCluster's
   ``cluster.scheduler_address``; the config and ``--out`` must then be on a file system the
   workers share). Each point writes ``DIR/<key=value_key=value...>/`` under the output-directory
   protocol of :mod:`pcsim.outdir` (lock, manifest, atomic files), so a point is either complete
   or says it is not. A progress bar counts the points.
3. **Resume.** A point whose directory holds a complete run *of the same config* (its
   ``config.toml`` equals the point's) is not run again; a failed, interrupted or missing one is
   run. A complete point of a different config is refused before anything runs (``--overwrite``
   reruns it). A point that fails (an error of its run, or its worker process dying more than
   ``--retries`` times: Dask's allowed-failures) is recorded and the other points go on.
4. **Combination.** ``DIR/sweep.nc`` has one dimension per swept key (in grid order; ``seed``
   last), holding each point's headline numbers (the numeric scalars of its ``summary.json``,
   NaN where the point failed), its ``state``, ``error``, ``directory`` and ``point_seconds``;
   ``DIR/failures.json`` lists the failed points with their errors; ``DIR/sweep_NAME.png`` plots
   each headline number that varies against the swept keys (mean and spread over seeds).

5. **Batches.** An experiment module may list in ``BATCHED`` the keys its ``run_batched(configs,
   ctx)`` runs together (``pc_vs_bp_digits``: ``seed``, ``training.lr`` and
   ``network.precision``, one PC ensemble with its own weights, batch order, learning rate and
   precision per member). Points that differ only in those keys
   then form one group, run as one task (:func:`run_group`), each point still written to its
   own directory and equal to it run alone to float rounding; a group whose batch fails runs its
   points one by one, so each point's own error is recorded. ``--no-batch`` (``[sweep] batch =
   false``) runs every point alone.

The exit status of ``pcsim sweep`` is the number of failed points (capped at 125); 0 when all
finished. The sweep directory itself is held by a :class:`~pcsim.outdir.RunDirectory`
(``command = "sweep"``), so two sweeps never write into one directory at once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import json
import math
import os
import re
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pcsim.config import (ConfigField, SweepSection, batch_signature, check_device, config_to_toml, key_field,
                          load_experiment, parse_grid)
from pcsim import parallel
from pcsim.arguments import check_number
from pcsim.errors import ConfigError, OutputError

__all__ = ["FAILURES_FILE", "SWEEP_FILE", "SweepOutcome", "SweepPlan", "SweepPoint", "combine_points",
           "plan_sweep", "plot_sweep", "register_sweep", "run_group", "run_point", "run_sweep", "sweep"]

SWEEP_FILE = "sweep.nc"
FAILURES_FILE = "failures.json"
#: exit statuses above this are the shell's own (signals); more failures still exit with it
_MAX_STATUS = 125
_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]")


@dataclass(frozen=True)
class SweepPoint:
    """One point of the grid: ``values`` ``((key, value), ...)`` in grid order, the ``overrides``
    (``"key=value"`` strings, the base ``--set`` overrides first) that make its config, the
    directory ``name`` inside the sweep's directory, and its validated config as TOML
    (``config_toml``, what its run writes as ``config.toml``)."""

    values: tuple[tuple[str, Any], ...]
    overrides: tuple[str, ...]
    name: str
    config_toml: str


@dataclass(frozen=True)
class SweepPlan:
    """A validated sweep: the ``config_path``, the ``axes`` ``{key: values}`` (grid order, ``seed``
    last), the swept keys' descriptions ``fields`` (units and meaning, for ``sweep.nc``), every
    ``points`` in C order of the axes, the output directory ``out``, the ``device`` override and
    the settings of :class:`~pcsim.config.SweepSection` (``scheduler``, ``workers``, ``retries``);
    ``groups``: the indices into ``points`` that run together, one Dask task each (a batch of
    points differing only in the experiment's ``BATCHED`` keys, or one point)."""

    config_path: Path
    experiment: str
    axes: dict[str, tuple[Any, ...]]
    fields: dict[str, ConfigField]
    points: tuple[SweepPoint, ...]
    out: Path
    device: str | None
    scheduler: str
    workers: int | None
    retries: int
    base_toml: str
    grid: tuple[str, ...] = ()
    groups: tuple[tuple[int, ...], ...] = ()


@dataclass
class SweepOutcome:
    """What :func:`run_sweep` did: the combined ``dataset`` (as written to ``sweep.nc``), the
    ``failures`` (one dict per failed point), the number of points ``ran`` now and ``resumed``
    (found complete), and the ``paths`` written ``{file name: path}``."""

    dataset: Any
    failures: list[dict[str, Any]]
    ran: int
    resumed: int
    paths: dict[str, Path] = field(default_factory=dict)


# --------------------------------------------------------------------------- planning


def plan_sweep(config_path: str | Path, *, grid: Sequence[str] = (), seeds: int | None = None,
               overrides: Sequence[str] = (), device: str | None = None, out: str | Path | None = None,
               scheduler: str | None = None, workers: int | None = None,
               retries: int | None = None, batch: bool | None = None) -> SweepPlan:
    """Validate a sweep of the config at ``config_path`` and return its :class:`SweepPlan`.

    ``grid`` holds ``"KEY=V1,V2,..."`` axes (:func:`~pcsim.config.parse_grid`) and ``seeds`` adds
    a ``seed`` axis ``seed .. seed+seeds-1``; both, and ``out``, ``scheduler``, ``workers`` and
    ``retries``, default to the config's ``[sweep]`` table. ``overrides`` (``--set``) and
    ``device`` apply to every point. Every point's config is validated (and its ``check_inputs``
    run) here, so nothing runs unless all of them are valid: a problem raises
    :class:`~pcsim.errors.ConfigError` naming the key and, for a value, the point. With
    ``batch`` (default: the table's, true) the points that differ only in keys the experiment
    module lists in ``BATCHED`` form one group, run as one batch (:func:`run_group`).
    """
    config_path = Path(config_path)
    source = str(config_path)
    module, base = load_experiment(config_path, overrides, device=device)
    check_device(base.device, source=source)
    section = base.sweep if base.sweep is not None else SweepSection()
    from_table = not grid
    grid = tuple(grid) if grid else section.grid
    seeds = seeds if seeds is not None else section.seeds
    where = f"{source}: key 'sweep.grid'" if from_table and grid else "--grid"
    axes: dict[str, tuple[Any, ...]] = {}
    texts: dict[str, tuple[str, ...]] = {}
    for text in grid:
        key, values, axis_overrides = parse_grid(text, where)
        if key in axes:
            raise ConfigError(f"{where}: key '{key}' is swept twice; give all its values in one KEY=V1,V2,...")
        if key == "experiment" or key.split(".")[0] == "sweep":
            raise ConfigError(f"{where}: key '{key}' cannot be swept (a sweep varies one experiment's settings)")
        key_field(type(base), key)  # an unknown key is named now, before any value is tried
        axes[key], texts[key] = values, axis_overrides
    if seeds is not None:
        seeds = check_number("--seeds", seeds, integer=True, ge=1)
        if "seed" in axes:
            raise ConfigError(f"{where}: key 'seed' is swept by the grid and by --seeds; give one of them")
        axes["seed"] = tuple(range(base.seed, base.seed + seeds))
        texts["seed"] = tuple(f"seed={s}" for s in axes["seed"])
    if not axes:
        raise ConfigError(f"{source}: nothing to sweep: give --grid KEY=V1,V2,... or --seeds N "
                          "(or a [sweep] table with grid or seeds)")
    if "seed" in axes:  # the seed dimension goes last, as the figures and sweep.nc expect
        axes = {k: v for k, v in axes.items() if k != "seed"} | {"seed": axes["seed"]}
    fields = {key: key_field(type(base), key) for key in axes}

    batch = section.batch if batch is None else batch
    from pcsim.registry import batched_keys

    batched = batched_keys(module) if batch else ()
    groups: dict[str, list[int]] = {}
    points: list[SweepPoint] = []
    names: dict[str, str] = {}
    for index in itertools.product(*(range(len(v)) for v in axes.values())):
        values = tuple((key, axes[key][i]) for key, i in zip(axes, index))
        point_overrides = (*overrides, *(texts[key][i] for key, i in zip(axes, index)))
        name = _point_name(values)
        try:
            _, config = load_experiment(config_path, point_overrides, device=device)
            config.check_inputs()
        except ConfigError as exc:
            raise ConfigError(f"sweep point {name}: {exc}") from None
        if name in names:
            raise ConfigError(f"sweep points {names[name]} and {values} would share the directory {name}; "
                              "give values that differ in letters or digits")
        names[name] = repr(values)
        signature = batch_signature(config, batched) if set(batched) & set(axes) else name
        groups.setdefault(signature, []).append(len(points))
        points.append(SweepPoint(values=values, overrides=point_overrides, name=name,
                                 config_toml=config_to_toml(config)))

    out_dir = Path(out) if out is not None else Path(section.out) if section.out else \
        Path("runs") / f"{config_path.stem}_sweep"
    retries = section.retries if retries is None else retries
    workers = section.workers if workers is None else workers
    retries = None if retries is None else check_number("--retries", retries, integer=True, ge=0)
    workers = None if workers is None else check_number("--workers", workers, integer=True, ge=1)
    return SweepPlan(config_path=config_path, experiment=base.experiment, axes=axes, fields=fields,
                     points=tuple(points), out=out_dir, device=device,
                     scheduler=scheduler or section.scheduler, workers=workers, retries=retries,
                     base_toml=config_to_toml(base), grid=tuple(grid),
                     groups=tuple(tuple(g) for g in groups.values()))


def _point_name(values: Sequence[tuple[str, Any]]) -> str:
    """The directory of a point: ``key=value`` joined by ``_``, values as TOML (strings bare),
    every character outside letters, digits and ``._+=-`` replaced by ``_``."""
    from pcsim.config import _toml_value  # the one spelling of a value as TOML

    parts = [f"{key}={value if isinstance(value, str) else _toml_value(value)}" for key, value in values]
    return _UNSAFE.sub("_", ",".join(parts).replace(" ", ""))


# --------------------------------------------------------------------------- one point


def run_point(config_path: str, overrides: Sequence[str], out_dir: str, *, device: str | None = None,
              overwrite: bool = False, config_toml: str | None = None) -> dict[str, Any]:
    """Run one sweep point where a worker calls it: :func:`pcsim.cli.run_config` of
    ``config_path`` with ``overrides`` into ``out_dir`` (no progress bars, its table not printed).
    When ``out_dir`` already holds a complete run whose ``config.toml`` is ``config_toml`` the
    point is not run again and its summary is returned: Dask recomputes a finished task whose
    result was lost with a dying worker, and that must neither rerun nor fail the point.

    Returns ``{"state": "complete", "summary": <its summary.json>, "seconds": wall s}``, or for a
    point whose run raised, ``{"state": "failed", "error": "<Type>: <message>", "traceback": ...,
    "seconds": ...}`` (the traceback only for errors that are not :class:`~pcsim.errors.PCSimError`,
    i.e. bugs): a failing point is a result of the sweep, not an error of the worker."""
    from pcsim.cli import run_config
    from pcsim.errors import PCSimError
    from pcsim.results import load_summary

    started = time.perf_counter()
    found = _found_complete(out_dir, config_toml)
    if found is not None:
        return found
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            run_config(Path(config_path), Path(out_dir), device=device, overrides=list(overrides),
                       progress=False, overwrite=overwrite)
        summary = load_summary(out_dir)
    except Exception as exc:  # noqa: BLE001 - every failure of a point is recorded, the sweep goes on
        message = (str(exc) or type(exc).__name__).strip()
        return {"state": "failed", "error": f"{type(exc).__name__}: {message}",
                "traceback": "" if isinstance(exc, PCSimError) else traceback.format_exc(),
                "seconds": time.perf_counter() - started}
    return {"state": "complete", "summary": summary, "seconds": time.perf_counter() - started}


def _found_complete(out_dir: str, config_toml: str | None) -> dict[str, Any] | None:
    """The record of a point whose ``out_dir`` already holds a complete run of ``config_toml``
    (``"resumed": True``), else None."""
    from pcsim.results import load_summary

    if config_toml is None or not _is_complete(Path(out_dir), config_toml):
        return None
    return {"state": "complete", "summary": load_summary(out_dir), "seconds": math.nan, "resumed": True}


def run_group(config_path: str, members: Sequence[tuple[Sequence[str], str, bool, str | None]], *,
              device: str | None = None) -> list[dict[str, Any]]:
    """Run one group of a plan where a worker calls it: ``members`` are ``(overrides, out_dir,
    overwrite, config_toml)`` of points that differ only in the experiment's ``BATCHED`` keys.
    Members found complete are not run again (as in :func:`run_point`); two or more others run
    as one batch (:func:`pcsim.cli.run_batch`, e.g. one PC ensemble), each record's ``seconds``
    the batch's wall time and ``batched_with`` its size. If the batch fails, its points run one
    by one (:func:`run_point`), so that each point's own error is recorded and the others
    finish: one learning rate too large fails its point, not its batch (each record then
    carries the batch's error as ``batch_error``, which the sweep reports once). One record per member,
    in order, as :func:`run_point` returns them."""
    from pcsim.cli import run_batch
    from pcsim.results import load_summary

    records: list[dict[str, Any] | None] = [_found_complete(out_dir, toml) for _, out_dir, _, toml in members]
    todo = [i for i, record in enumerate(records) if record is None]
    if len(todo) > 1:
        started = time.perf_counter()
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                run_batch(Path(config_path), [(members[i][0], Path(members[i][1]), members[i][2]) for i in todo],
                          device=device, progress=False)
        except Exception as exc:  # noqa: BLE001 - each point is run alone below and records its own error
            batch_error = f"{type(exc).__name__}: {(str(exc) or type(exc).__name__).strip()}"
        else:
            seconds = time.perf_counter() - started
            for i in todo:
                records[i] = {"state": "complete", "summary": load_summary(members[i][1]), "seconds": seconds,
                              "batched_with": len(todo)}
            return records  # type: ignore[return-value]
    for i in todo:
        overrides, out_dir, overwrite, toml = members[i]
        records[i] = run_point(config_path, overrides, out_dir, device=device, overwrite=overwrite, config_toml=toml)
        if len(todo) > 1:
            records[i]["batch_error"] = batch_error  # said once per group by the sweep
    return records  # type: ignore[return-value]


# --------------------------------------------------------------------------- running


def run_sweep(plan: SweepPlan, *, overwrite: bool = False, progress: bool = True) -> SweepOutcome:
    """Run the points of ``plan`` that are not finished and combine all of them into ``sweep.nc``.

    The sweep's directory ``plan.out`` is held for the whole sweep (a second sweep there is
    refused); a directory holding a complete ``pcsim run`` is refused unless ``overwrite``.
    Points found complete with the same config are read, not run; complete points of another
    config are refused before anything runs unless ``overwrite`` (then they are rerun). The
    others run on the Dask cluster of ``plan.scheduler`` with a progress bar over points. Writes
    ``sweep.nc``, ``failures.json`` and the figures of :func:`plot_sweep`; returns the
    :class:`SweepOutcome`. A point's failure never stops the others; Ctrl-C stops the cluster,
    and the points that finished are kept for the next run of the same sweep.
    """
    from pcsim.outdir import RunDirectory, run_status
    from pcsim.results import figure_writers, load_summary, netcdf_writer

    out = plan.out
    previous = run_status(out) if out.is_dir() else None
    if previous is not None and previous.state == "complete" and previous.manifest.get("command") != "sweep" \
            and not overwrite:
        raise OutputError(f"output directory {out} already holds {previous.describe()}; "
                          "pass --overwrite to replace it, or choose another --out")
    records: dict[str, dict[str, Any]] = {}
    todo: list[tuple[SweepPoint, bool]] = []  # (point, overwrite its complete run)
    for point in plan.points:
        directory = out / point.name
        status = run_status(directory) if directory.is_dir() else None
        if status is not None and status.state == "complete":
            if _is_complete(directory, point.config_toml):
                records[point.name] = {"state": "complete", "summary": load_summary(directory),
                                       "seconds": math.nan, "resumed": True}
                continue
            if not overwrite:
                raise OutputError(f"{directory} holds a complete run of another config than this sweep's "
                                  "point (its config.toml differs); pass --overwrite to rerun it, or "
                                  "choose another --out")
        todo.append((point, status is not None and status.state == "complete"))
    try:
        out.mkdir(parents=True, exist_ok=True)  # ours, not the RunDirectory's: a failed sweep keeps its points
    except OSError as exc:
        raise OutputError(f"output directory {out} cannot be created: {exc.strerror or exc}") from None
    with RunDirectory(out, experiment=plan.experiment, overwrite=True, command="sweep",
                      config_source=str(plan.config_path.resolve()), names=(SWEEP_FILE, FAILURES_FILE)) as run:
        records.update(_execute(plan, todo, progress))
        dataset = combine_points(plan, records)
        failures = [{"point": point.name, "values": dict(point.values), "directory": str(out / point.name),
                     "error": records[point.name]["error"], "traceback": records[point.name].get("traceback", "")}
                    for point in plan.points if records[point.name]["state"] != "complete"]
        failures_text = json.dumps(failures, indent=2, default=str) + "\n"
        writers = figure_writers(plot_sweep(dataset))
        writers[SWEEP_FILE] = netcdf_writer(dataset, what=f"pcsim sweep of {plan.experiment}")
        writers[FAILURES_FILE] = lambda path: path.write_text(failures_text, encoding="utf-8")
        stale = [name for name in run.files if name.endswith(".png") and name not in writers]
        paths = run.write(writers)
        run.remove(stale)
    resumed = sum(1 for r in records.values() if r.get("resumed"))
    return SweepOutcome(dataset=dataset, failures=failures, ran=len(todo), resumed=resumed, paths=paths)


def _is_complete(directory: Path, config_toml: str) -> bool:
    """Whether ``directory`` holds a complete run (its manifest says so) of exactly the config
    ``config_toml`` (its ``config.toml``): the one test of a finished point."""
    from pcsim.outdir import run_status
    from pcsim.results import CONFIG_FILE

    if not directory.is_dir():
        return False
    status = run_status(directory)
    if status is None or status.state != "complete":
        return False
    try:
        return (directory / CONFIG_FILE).read_text(encoding="utf-8") == config_toml
    except OSError:
        return False


def _execute(plan: SweepPlan, todo: Sequence[tuple[SweepPoint, bool]], progress: bool) -> dict[str, dict[str, Any]]:
    """Run the points ``todo`` on the plan's Dask cluster; ``{point name: record of run_point}``.
    A point whose worker died more than ``plan.retries`` times (``KilledWorker``), or whose
    future failed otherwise, gets a failed record saying so."""
    from tqdm.auto import tqdm

    if not todo:
        return {}
    from distributed import as_completed

    records: dict[str, dict[str, Any]] = {}
    rerun = {point.name: again for point, again in todo}
    groups = plan.groups or tuple((i,) for i in range(len(plan.points)))
    tasks = [members for members in ([plan.points[i] for i in g if plan.points[i].name in rerun] for g in groups)
             if members]
    with contextlib.ExitStack() as stack:
        client = _client(plan, len(tasks), stack)
        futures = {}
        for members in tasks:
            future = client.submit(run_group, str(plan.config_path.resolve()),
                                   [(p.overrides, str((plan.out / p.name).resolve()), rerun[p.name], p.config_toml)
                                    for p in members], device=plan.device,
                                   key=f"pcsim-point-{members[0].name}-{os.urandom(4).hex()}", pure=False)
            futures[future] = members
        bar = stack.enter_context(tqdm(total=len(todo), desc=f"sweep {plan.config_path.stem}", unit="point",
                                       disable=not progress, mininterval=0.5))
        try:
            for future in as_completed(futures):
                members = futures[future]
                try:
                    got = future.result()
                except Exception as exc:  # noqa: BLE001 - KilledWorker, a lost scheduler: reported per point
                    got = [{"state": "failed", "seconds": math.nan, "traceback": "",
                            "error": _future_error(exc, plan.retries)} for _ in members]
                if got and got[0].get("batch_error"):
                    bar.write(f"pcsim: the batch of {len(members)} points from {members[0].name} failed "
                              f"({got[0]['batch_error'].splitlines()[0]}); its points ran one by one",
                              file=sys.stderr)
                for point, record in zip(members, got):
                    records[point.name] = record
                    bar.update()
                    if record["state"] != "complete":
                        bar.write(f"pcsim: point {point.name} failed: {record['error'].splitlines()[0]}",
                                  file=sys.stderr)
        except KeyboardInterrupt:
            done = sum(1 for r in records.values() if r["state"] == "complete")
            print(f"pcsim: sweep interrupted: {done} point(s) of this run finished and are kept in {plan.out}; "
                  "run the same command again to run the rest", file=sys.stderr)
            raise
    return records


def _future_error(exc: Exception, retries: int) -> str:
    name = type(exc).__name__
    if name == "KilledWorker":
        return (f"KilledWorker: every worker process that ran this point died (killed, out of memory or "
                f"crashed), more often than the scheduler allows (--retries {retries} on a local cluster; "
                f"a remote scheduler's own distributed.scheduler.allowed-failures): {str(exc).strip()}")
    return f"{name}: {str(exc).strip() or 'the Dask task failed'}"


#: scheduler options of the sweep's LocalCluster: its HTTP server on any free port
HTTP_ANY_PORT = {"dashboard_address": ":0"}

def _client(plan: SweepPlan, n_points: int, stack: contextlib.ExitStack):
    """A Dask client for the plan: a LocalCluster of single-threaded worker processes (one per
    core this process may use, :func:`pcsim.parallel.allowed_cores`, whether or not another process
    runs there now; at most one per point, unless ``plan.workers``) whose scheduler allows
    ``plan.retries`` worker deaths per point, or the scheduler at ``plan.scheduler``."""
    import logging

    import dask
    from distributed import Client, LocalCluster

    if plan.scheduler == "local":
        workers = plan.workers or max(1, min(n_points, parallel.allowed_cores()))
        # saturation 1: a worker holds only the point it runs, so a worker that dies takes no
        # queued point with it (each death counts against every point the worker held).
        # MALLOC_TRIM_THRESHOLD_ unset: Dask's nanny sets it (65536) in every worker, and setting
        # it fixes glibc's mmap threshold at 128 KiB, so every tensor above that is mmapped and
        # page-faulted afresh at each allocation (torch's CPU tensors come straight from malloc):
        # a batched 8-member PC ensemble ran 2.4x slower in a worker than in a plain process
        # (0.62 vs 0.25 s per epoch, one thread each; the same in a plain process with it set)
        with dask.config.set({"distributed.scheduler.allowed-failures": plan.retries,
                              "distributed.scheduler.worker-saturation": 1.0,
                              "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
            # no dashboard; the scheduler's HTTP server (health and metrics routes), which starts
            # even without one, on a free port rather than 8787, which a second cluster finds taken
            cluster = stack.enter_context(LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                                       dashboard_address=None, scheduler_kwargs=HTTP_ANY_PORT,
                                                       silence_logs=logging.ERROR))
        return stack.enter_context(Client(cluster))
    try:
        return stack.enter_context(Client(plan.scheduler, timeout=30))
    except (OSError, ValueError, TypeError) as exc:
        raise ConfigError(f"--scheduler {plan.scheduler}: cannot connect to a Dask scheduler there ({exc}); "
                          "give 'local' or the address of a running scheduler, e.g. tcp://host:8786") from None


# --------------------------------------------------------------------------- combining


def combine_points(plan: SweepPlan, records: Mapping[str, Mapping[str, Any]]):
    """The ``sweep.nc`` dataset of ``records`` (``{point name: run_point record}``): dimensions
    the swept keys (grid order, ``seed`` last) with their values as coordinates (units and
    long_name from the config fields; a value that is not a number, e.g. a list, is a label);
    one float variable per headline number (each numeric scalar of a point's ``summary.json``,
    named by its dotted key, NaN where the point failed or lacks it), and ``state``
    ("complete"/"failed"), ``error`` ("" when none), ``directory`` and ``point_seconds`` (s; NaN
    for a point found complete). summary.json holds no units, so a headline number is in s
    when its name says seconds/time and dimensionless ("1") otherwise."""
    import xarray as xr

    from pcsim.cli import _flatten  # the one flattening of a summary (the table pcsim run prints)

    dims = tuple(plan.axes)
    shape = tuple(len(values) for values in plan.axes.values())
    index = {point.name: np.unravel_index(i, shape) for i, point in enumerate(plan.points)}
    coords = {}
    for key, values in plan.axes.items():
        info = plan.fields[key]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        data = np.asarray(values) if numeric else np.asarray([_label(v) for v in values], dtype=object)
        units = info.units or ("1" if numeric and key != "seed" else "")
        coords[key] = (key, data, {"units": units, "long_name": info.doc or key, "config_key": key})

    headline: dict[str, np.ndarray] = {}
    for name, record in records.items():
        if record["state"] != "complete":
            continue
        for key, value in _flatten(record["summary"]).items():
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                if key in plan.axes or key in ("state", "error", "directory", "point_seconds", "batched_with"):
                    key = f"summary.{key}"
                headline.setdefault(key, np.full(shape, np.nan))[index[name]] = float(value)
    state = np.full(shape, "missing", dtype=object)
    error = np.full(shape, "", dtype=object)
    directory = np.full(shape, "", dtype=object)
    seconds = np.full(shape, np.nan)
    batched = np.ones(shape, dtype=np.int64)
    for point in plan.points:
        record = records.get(point.name, {"state": "missing", "error": "not run"})
        i = index[point.name]
        state[i], error[i] = record["state"], record.get("error", "") or ""
        directory[i] = point.name
        seconds[i] = record.get("seconds", math.nan)
        batched[i] = record.get("batched_with", 1)
    variables = {
        name: (dims, values, {"units": _summary_units(name), "long_name": f"{name} (from each point's summary.json)"})
        for name, values in sorted(headline.items())}
    variables["state"] = (dims, state, {"units": "", "long_name": "state of the point's run (complete or failed)"})
    variables["error"] = (dims, error, {"units": "", "long_name": "error of a failed point (empty when it finished)"})
    variables["directory"] = (dims, directory, {"units": "", "long_name": "the point's run directory, inside the sweep's"})
    variables["point_seconds"] = (dims, seconds, {"units": "s", "long_name": "wall time of the run that computed the "
                                                                               "point in this sweep, shared by a batch "
                                                                               "(NaN: found complete, not rerun)"})
    variables["batched_with"] = (dims, batched, {"units": "1", "long_name": "points computed in the same run "
                                                                             "(1: run alone; see run_group)"})
    dataset = xr.Dataset(variables, coords=coords)
    dataset.attrs.update(experiment=plan.experiment, config=plan.base_toml, grid=list(plan.grid),
                         swept_keys=list(dims), headline=sorted(headline), n_points=len(plan.points),
                         n_failed=int(sum(1 for p in plan.points if records.get(p.name, {}).get("state") != "complete")))
    return dataset


def _label(value: Any) -> str:
    from pcsim.config import _toml_value

    return value if isinstance(value, str) else _toml_value(value)


def _summary_units(name: str) -> str:
    last = name.rsplit(".", 1)[-1]
    return "s" if "seconds" in last or last == "time" or last.endswith("_time") else "1"


# --------------------------------------------------------------------------- figures


def plot_sweep(dataset) -> dict[str, Any]:
    """One figure per headline number of a ``sweep.nc`` dataset that is not the same at every
    point: the number against the first swept key other than ``seed`` (log axis when its
    values are positive and span a factor of 10 or more), one line per combination of the other
    swept keys, the mean over seeds with a bar of ±1 standard deviation and every seed as a dot.
    Names ``sweep_<number>``; reads only the dataset, so the figures can be redrawn from the file."""
    from matplotlib.figure import Figure

    dims = list(dataset.attrs.get("swept_keys") or [d for d in dataset.dims])
    dims = [d for d in dims if d in dataset.dims]
    x_key = next((d for d in dims if d != "seed"), dims[0])
    others = [d for d in dims if d not in (x_key, "seed")]
    seeds = "seed" in dataset.dims and x_key != "seed"
    names = [n for n in dataset.data_vars if dataset[n].dtype.kind == "f" and n != "point_seconds"]
    x = dataset[x_key].values
    numeric = x.dtype.kind in "iuf"
    positions = x.astype(float) if numeric else np.arange(len(x))
    figures = {}
    for name in names:
        values = dataset[name]
        finite = values.values[np.isfinite(values.values)]
        if finite.size == 0 or np.all(finite == finite[0]):
            continue
        figure = Figure(figsize=(5.5, 3.8), layout="constrained")
        ax = figure.add_subplot()
        combos = list(itertools.product(*(range(dataset.sizes[d]) for d in others)))
        for combo in combos:
            line = values.isel(dict(zip(others, combo))) if others else values
            label = ", ".join(f"{d}={_label(dataset[d].values[i].item())}" for d, i in zip(others, combo))
            if seeds:
                data = line.transpose(x_key, "seed").values
                with np.errstate(all="ignore"), _quiet_nan_warnings():
                    mean, spread = np.nanmean(data, axis=1), np.nanstd(data, axis=1)
                drawn = ax.errorbar(positions, mean, yerr=spread, marker="o", capsize=3, label=label or None)
                for s in range(data.shape[1]):
                    ax.plot(positions, data[:, s], ".", color=drawn[0].get_color(), alpha=0.35)
            else:
                ax.plot(positions, line.transpose(x_key, ...).values.reshape(len(x), -1), marker="o",
                        label=label or None)
        if numeric and np.all(positions > 0) and positions.max() >= 10 * positions.min():
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(positions, [str(v) for v in x])
        x_units = dataset[x_key].attrs.get("units", "")
        ax.set_xlabel(x_key + (f" [{x_units}]" if x_units not in ("", "1") else ""))
        units = values.attrs.get("units", "")
        ax.set_ylabel(name + (f" [{units}]" if units not in ("", "1") else ""))
        failed = int((dataset["state"] != "complete").sum()) if "state" in dataset else 0
        title = f"{name}: mean ± sd over {dataset.sizes['seed']} seeds" if seeds else name
        ax.set_title(title + (f" ({failed} point(s) failed)" if failed else ""), fontsize=9)
        if others and len(combos) > 1:
            ax.legend(fontsize=7, loc="best")
        ax.grid(alpha=0.3)
        figures[f"sweep_{_UNSAFE.sub('_', name)}"] = figure
    return figures


@contextlib.contextmanager
def _quiet_nan_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all seeds of a point failed: NaN is the answer
        yield


# --------------------------------------------------------------------------- command line


def sweep(config_path: str | Path, *, grid: Sequence[str] = (), seeds: int | None = None,
          out: str | Path | None = None, scheduler: str | None = None, workers: int | None = None,
          retries: int | None = None, overrides: Sequence[str] = (), device: str | None = None,
          overwrite: bool = False, progress: bool = True, batch: bool | None = None) -> int:
    """``pcsim sweep`` from Python: :func:`plan_sweep` (validates every point) then
    :func:`run_sweep`; prints what ran, what failed and where the files are, and returns the exit
    status: the number of failed points (at most 125), 0 when every point finished. Input errors
    raise :class:`~pcsim.errors.PCSimError` before anything runs."""
    plan = plan_sweep(config_path, grid=grid, seeds=seeds, overrides=overrides, device=device, out=out,
                      scheduler=scheduler, workers=workers, retries=retries, batch=batch)
    shape = " x ".join(f"{len(v)} {k}" for k, v in plan.axes.items())
    runs = f", {len(plan.groups)} runs (points differing only in batched keys run together)" \
        if len(plan.groups) < len(plan.points) else ""
    print(f"pcsim sweep: {len(plan.points)} points ({shape}){runs} of {plan.experiment} into {plan.out}",
          file=sys.stderr)
    outcome = run_sweep(plan, overwrite=overwrite, progress=progress)
    n_failed = len(outcome.failures)
    print(f"{plan.experiment}: {len(plan.points)} points, {outcome.ran} run now, {outcome.resumed} found "
          f"complete, {n_failed} failed")
    for failure in outcome.failures:
        print(f"  failed {failure['point']}: {failure['error'].splitlines()[0]}")
    print("wrote")
    for path in outcome.paths.values():
        print(f"  {path}")
    return min(n_failed, _MAX_STATUS)


def register_sweep(commands) -> None:
    """Add the ``sweep`` subcommand to ``commands`` (the ``pcsim`` parser's subparsers); listed
    under the ``pcsim.commands`` entry points in pyproject.toml."""
    from pcsim.cli import add_run_options

    parser = commands.add_parser(
        "sweep", help="run a grid of config values on a Dask cluster and combine the points",
        description="Run every point of a grid of config values (each a set of --set overrides) on a "
                    "Dask cluster; skip points already complete; write sweep.nc, failures.json and a "
                    "figure per headline number. Exit status: the number of failed points.")
    parser.add_argument("config", type=Path, metavar="CONFIG.toml")
    parser.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                        help="a swept key and its values, each a TOML literal (repeatable; default: [sweep] grid)")
    parser.add_argument("--seeds", type=int, metavar="N", help="also sweep seed over seed .. seed+N-1")
    parser.add_argument("--scheduler", metavar="local|ADDRESS",
                        help="'local' (a LocalCluster of worker processes, the default) or a Dask scheduler address")
    parser.add_argument("--workers", type=int, metavar="N", help="worker processes of the local cluster "
                                                                 "(default: the free cores)")
    parser.add_argument("--retries", type=int, metavar="N",
                        help="restarts of a point whose worker process died (default 2)")
    parser.add_argument("--no-batch", dest="batch", action="store_false", default=None,
                        help="run every point on its own, even those the experiment could batch (default: [sweep] batch)")
    add_run_options(parser, default_out="runs/<config stem>_sweep")
    parser.set_defaults(handler=_cmd_sweep)


def _cmd_sweep(args: argparse.Namespace, extra: list[str]) -> int:
    return sweep(args.config, grid=args.grid, seeds=args.seeds, out=args.out, scheduler=args.scheduler,
                 workers=args.workers, retries=args.retries, overrides=args.overrides, device=args.device,
                 overwrite=args.overwrite, progress=not args.no_progress, batch=args.batch)
