"""The output-directory protocol: a run directory holds exactly one run's complete output, or
says plainly that it does not.

Every command that writes a run (``pcsim run``, ``pcsim fit``, ``pcsim replot``, and
:func:`pcsim.results.write_results` called from Python) goes through :class:`RunDirectory`:

1. **Lock.** ``DIR/.pcsim.lock`` is held with ``fcntl.flock`` for the whole run; a second
   writer is refused at once with the holder's pid (the kernel drops the lock when the holder
   dies, even by SIGKILL, so a stale lock never blocks anyone).
2. **Manifest.** ``DIR/pcsim_run.json`` is written first (``state: "running"``, pid, host,
   start time, experiment, command) and completed last (``state: "complete"``, end time and
   the files pcsim wrote). A failed run records ``"failed"`` and the error; a ``"running"``
   manifest whose writer is gone is reported as an interrupted run.
3. **Ownership.** An existing complete run is replaced only with ``overwrite``, and then only
   the files its manifest lists are removed; a file pcsim did not write that has a name pcsim
   wants to write is never touched: the run is refused, naming it.
4. **Atomic files.** Each file is written under a temporary name (``.NAME.<12 hex>.tmp``) and
   renamed into place once all of them were written; temporaries are removed on any error we
   can catch, and stale ones (after a SIGKILL) are removed by the next writer.
5. **No debris.** A run that fails removes the directory if it created it (and the parents it
   created); in a directory that existed before, it leaves the manifest in state ``"failed"``.
6. **Checkpoints.** A run's training state is saved to ``DIR/checkpoint.pt``
   (:meth:`RunDirectory.write_checkpoint`: temporary file, fsync, rename, fsync of the
   directory; :mod:`pcsim.checkpoint` says what it holds) and described in the manifest's
   ``checkpoint`` entry. A run stopped by Ctrl-C (``KeyboardInterrupt``) keeps its checkpoint
   and records ``state: "interrupted"``; so does a SIGKILLed one (its ``"running"`` manifest
   reads as interrupted). ``resume=True`` continues such a run in place (refused for a
   complete or failed run, or without a checkpoint); a complete run removes its checkpoint.

Every problem with the directory itself (a file in the way, read-only, full, in use, holding
another result) is an :class:`~pcsim.errors.OutputError` naming the path and the cause.
"""

from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import re
import shutil
import socket
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal

from pcsim import __version__
from pcsim.errors import OutputError

__all__ = ["CHECKPOINT_FILE", "LOCK_FILE", "MANIFEST_FILE", "RunDirectory", "RunStatus", "run_status"]

MANIFEST_FILE = "pcsim_run.json"
LOCK_FILE = ".pcsim.lock"
CHECKPOINT_FILE = "checkpoint.pt"
_FORMAT = 1  # version of the manifest layout
_TEMPORARY = re.compile(r"\..+\.[0-9a-f]{12}\.tmp")

State = Literal["running", "complete", "failed", "interrupted"]


@dataclass(frozen=True)
class RunStatus:
    """What a directory's manifest says: ``state`` (``"interrupted"`` for a ``"running"``
    manifest whose process is gone, or a run stopped by Ctrl-C), and the manifest itself as a
    dict (``pid``, ``host``, ``started``, ``ended``, ``experiment``, ``command``, ``files``,
    ``error``; ``checkpoint``: None or the last checkpoint's ``file``, ``stage``, ``desc``,
    ``epoch``, ``epochs``, ``complete``, ``config_hash``, ``saved``; ``resumed``: the times the
    run was resumed)."""

    state: State
    manifest: dict[str, Any] = field(repr=False)

    def describe(self) -> str:
        """One phrase for messages: 'a complete run of X (pid 12 on h, started T, ended T)'."""
        m = self.manifest
        what = {"running": "a run in progress", "complete": "a complete run",
                "failed": "a failed run", "interrupted": "an interrupted run"}[self.state]
        times = f"started {m.get('started', '?')}"
        if m.get("ended"):
            times += f", ended {m['ended']}"
        text = f"{what} of {m.get('experiment', '?')} (pid {m.get('pid', '?')} on {m.get('host', '?')}, {times})"
        if self.state == "failed" and m.get("error"):
            text += f": {m['error']}"
        if self.state == "interrupted":
            text += (" stopped by an interrupt (Ctrl-C)" if m.get("state") == "interrupted"
                     else " that never finished: its process is gone")
            ckpt = m.get("checkpoint")
            if isinstance(ckpt, Mapping):
                text += (f"; its checkpoint holds epoch {ckpt.get('epoch', '?')} of {ckpt.get('epochs', '?')} "
                         f"of training {ckpt.get('desc', '?')!r}")
        return text


def run_status(directory: str | Path) -> RunStatus | None:
    """The :class:`RunStatus` of the run directory ``directory``, or None when it has no
    manifest. A ``"running"`` manifest is reported as ``"interrupted"`` when its process is
    gone: no process holds the directory's lock (or, on the manifest's own host, its pid is
    dead). A manifest that is not valid JSON raises :class:`OutputError` naming it."""
    directory = Path(directory)
    manifest = _read_manifest(directory)
    if manifest is None:
        return None
    state = manifest.get("state")
    if state == "running" and not _writer_alive(directory, manifest):
        state = "interrupted"
    if state not in ("running", "complete", "failed", "interrupted"):
        raise OutputError(f"{directory / MANIFEST_FILE}: unknown run state {state!r}")
    return RunStatus(state=state, manifest=manifest)


class RunDirectory:
    """One run's hold on its output directory; use as a context manager.

    ``RunDirectory(path, experiment=..., overwrite=False, command="run", names=...)`` creates
    ``path`` if needed (remembering which directories it created), takes the lock, removes
    stale temporaries, checks that the directory may take the run (see the module docstring;
    ``names`` are file names the run will write, checked now, before a long computation) and
    writes the ``"running"`` manifest; ``config_source`` (the config file) goes into it.
    :meth:`claim` checks further file names; :meth:`write` writes files atomically. Leaving the block
    normally completes the manifest; leaving it by an exception marks the run failed (or
    removes the directories it created) and re-raises. ``command="replot"`` instead updates a
    complete run in place: the run's manifest stays ``"complete"``, and its figure files may
    be replaced. ``resume=True`` continues an interrupted run that left a checkpoint, in place
    (its files and manifest kept, the manifest's ``resumed`` list extended).
    """

    def __init__(self, path: str | Path, *, experiment: str, overwrite: bool = False,
                 command: str = "run", config_source: str = "", names: Iterable[str] = (),
                 resume: bool = False) -> None:
        if resume and overwrite:
            raise OutputError(f"output directory {path}: resume and overwrite exclude each other "
                              "(--resume continues the run there, --overwrite replaces it)")
        self.path = Path(path)
        self.resume = resume
        self.names = tuple(names)
        self.experiment = experiment
        self.overwrite = overwrite
        self.command = command
        self.config_source = config_source
        self._created: list[Path] = []  # directories this run created, top-most first
        self._lock_fd: int | None = None
        self._manifest: dict[str, Any] = {}
        self._previous: RunStatus | None = None
        self._files: list[str] = []  # files (names) of this run, written or kept
        self._resumed_from: dict[str, Any] | None = None  # the interrupted run's manifest, until we write anything

    # ----------------------------------------------------------------- entering

    def __enter__(self) -> RunDirectory:
        self._create()
        try:
            self._lock()
            self._remove_stale_temporaries()
            self._previous = _status_under_lock(self.path)
            if self.command == "replot":
                self._adopt_complete_run()
            elif self.resume:
                self._resume_previous_run()
                self._save_manifest()
            else:
                self._clear_previous_run()
                self._manifest = {
                    "pcsim_run": _FORMAT, "state": "running", "experiment": self.experiment,
                    "command": self.command, "config": self.config_source, "pid": os.getpid(),
                    "host": socket.gethostname(), "started": _now(), "ended": None,
                    "pcsim_version": __version__, "files": [], "error": None,
                    "checkpoint": None, "resumed": [],
                }
                self._save_manifest()
        except BaseException:
            self._abandon()
            raise
        return self

    def _create(self) -> None:
        path = self.path
        if path.exists() and not path.is_dir():
            raise OutputError(f"output directory {path} is a file, not a directory")
        missing = [p for p in (path, *path.parents) if not p.exists()]
        blocker = next((p for p in (path, *path.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise OutputError(f"output directory {path} cannot be created: {blocker} is a file")
        if self.command == "replot" and missing:
            raise OutputError(f"{path}: no such run directory")
        for directory in reversed(missing):  # top-most first
            try:
                directory.mkdir()
            except FileExistsError:
                continue  # another process made it meanwhile: not ours to remove
            except OSError as exc:
                self._remove_created()
                raise _output_error(exc, f"output directory {path} cannot be created") from None
            self._created.append(directory)
        if not path.is_dir():
            self._remove_created()
            raise OutputError(f"output directory {path} cannot be created: a file took its place")

    def _remove_created(self) -> None:
        """Remove the directories this run created: the run directory with its content only
        while we hold its lock (else it may be another writer's by now), parents only if empty."""
        for directory in reversed(self._created):  # deepest first
            if directory == self.path and self._lock_fd is not None:
                shutil.rmtree(directory, ignore_errors=True)
            else:
                try:
                    directory.rmdir()
                except OSError:
                    pass  # not empty: someone else's files are in it now
        self._created = []

    def _lock(self) -> None:
        lock_path = self.path / LOCK_FILE
        while True:
            try:
                fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as exc:
                raise _output_error(exc, f"output directory {self.path} is not writable") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_lock(fd)
                os.close(fd)
                status = run_status(self.path)
                what = status.describe() if status is not None and status.state == "running" else f"pid {holder}"
                raise OutputError(
                    f"output directory {self.path} is in use by another pcsim process "
                    f"({what}); wait for it to finish or choose another --out") from None
            # The holder before us may have removed the lock file after we opened it: then
            # our lock is on a file nobody else will see. Try again on the current file.
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        self._lock_fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
        except OSError as exc:
            raise _output_error(exc, f"output directory {self.path} is not writable") from None

    def _remove_stale_temporaries(self) -> None:
        for entry in self.path.iterdir():
            if _TEMPORARY.fullmatch(entry.name) and entry.is_file():
                entry.unlink(missing_ok=True)

    @property
    def previous(self) -> RunStatus | None:
        """The status of the run the directory held before this one (None: no manifest)."""
        return self._previous

    def _clear_previous_run(self) -> None:
        previous = self._previous
        if previous is not None and previous.state == "complete" and not self.overwrite:
            raise OutputError(
                f"output directory {self.path} already holds {previous.describe()}; "
                "pass --overwrite to replace it, or choose another --out")
        # the previous run's files (per its manifest) are pcsim's own: they may be replaced,
        # but are removed only once every name of this run is known to be free of user files
        self._files = _listed_files(previous.manifest) if previous is not None else []
        self.claim(self.names)
        for name in self._files:
            (self.path / name).unlink(missing_ok=True)
        self._files = []

    def _resume_previous_run(self) -> None:
        previous = self._previous
        if previous is None:
            raise OutputError(f"{self.path} holds no run to resume (no {MANIFEST_FILE}); run without --resume")
        if previous.state == "complete":
            raise OutputError(f"{self.path} holds {previous.describe()}: it already finished, there is nothing to "
                              "resume; pass --overwrite (not --resume) to run it again, or choose another --out")
        if previous.state == "failed":
            raise OutputError(f"{self.path} holds {previous.describe()}; a failed run keeps no checkpoint: "
                              "run it again without --resume")
        if previous.manifest.get("experiment") != self.experiment:
            raise OutputError(f"{self.path} holds {previous.describe()}, not a run of {self.experiment}; "
                              "resume it with its own config, or choose another --out")
        files = _listed_files(previous.manifest)
        if CHECKPOINT_FILE not in files or not (self.path / CHECKPOINT_FILE).is_file():
            raise OutputError(f"{self.path} holds {previous.describe()} but no checkpoint ({CHECKPOINT_FILE}): it "
                              "stopped before its first checkpoint was written; run it again without --resume")
        self._files = [name for name in files if (self.path / name).exists()]
        self._resumed_from = {**previous.manifest, "state": "interrupted"}
        self._manifest = dict(previous.manifest)
        self._manifest.update(state="running", pid=os.getpid(), host=socket.gethostname(), ended=None, error=None,
                              files=list(self._files), pcsim_version=__version__,
                              resumed=[*(self._manifest.get("resumed") or []), _now()])

    @property
    def checkpoint(self) -> dict[str, Any] | None:
        """The manifest's description of the run's last checkpoint (see :class:`RunStatus`), or None."""
        info = self._manifest.get("checkpoint")
        return dict(info) if isinstance(info, Mapping) else None

    def write_checkpoint(self, write: Callable[[Path], None], info: Mapping[str, Any]) -> Path:
        """Replace ``checkpoint.pt`` durably by ``write(temporary_path)``: the file is written
        under a temporary name, fsynced, renamed over the previous checkpoint and the directory
        fsynced, so a crash at any moment leaves the previous or the new checkpoint, whole.
        Then ``info`` becomes the manifest's ``checkpoint`` entry. Returns the file's path; an
        ``OSError`` is raised as :class:`OutputError` naming it."""
        final = self.path / CHECKPOINT_FILE
        self._resumed_from = None  # from now on the directory holds this run's work
        if CHECKPOINT_FILE not in self._files:  # listed before it exists: a crash leaves pcsim's file
            self.claim([CHECKPOINT_FILE])
            self._files = [*self._files, CHECKPOINT_FILE]
            self._manifest["files"] = list(self._files)
            self._save_manifest()
        temporary = self.path / f".{CHECKPOINT_FILE}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            write(temporary)
            _fsync(temporary)
            os.replace(temporary, final)
            _fsync(self.path)
        except OSError as exc:
            raise _output_error(exc, f"cannot write {final}") from exc
        finally:
            temporary.unlink(missing_ok=True)
        self._manifest["checkpoint"] = dict(info)
        self._save_manifest()
        return final

    def _adopt_complete_run(self) -> None:
        previous = self._previous
        if previous is None:
            raise OutputError(f"{self.path} has no {MANIFEST_FILE}: it is not a run directory written by pcsim")
        if previous.state != "complete":
            raise OutputError(f"{self.path} holds {previous.describe()}, not a complete run")
        self._manifest = dict(previous.manifest)
        self._files = _listed_files(previous.manifest)

    # ----------------------------------------------------------------- writing

    def claim(self, names: Iterable[str]) -> None:
        """Refuse (OutputError naming the file) if any of ``names`` (file names in the
        directory) exists and was not written by pcsim for this directory's run."""
        for name in names:
            target = self.path / name
            if name not in self._files and (target.exists() or target.is_symlink()):
                raise OutputError(
                    f"{target} exists and was not written by pcsim (no {MANIFEST_FILE} lists it); "
                    "pcsim will not replace it (move it away or choose another --out)")

    def write(self, writers: Mapping[str, Callable[[Path], None]]) -> dict[str, Path]:
        """Run each ``writers[name](temporary_path)``, then rename every temporary file to
        ``name`` in the directory, all or none; return ``{name: final path}``.

        The names are claimed first (:meth:`claim`) and recorded in the manifest before any
        rename, so even a SIGKILL between renames leaves files the next run knows to be
        pcsim's. On any error, this call's temporaries and already renamed files are removed;
        an ``OSError`` (disk full, read-only) is raised as :class:`OutputError` naming the file.
        """
        self.claim(writers)
        self._resumed_from = None
        staged: list[tuple[Path, Path]] = []
        renamed: list[Path] = []
        try:
            for name, write in writers.items():
                temporary = self.path / f".{name}.{uuid.uuid4().hex[:12]}.tmp"
                staged.append((temporary, self.path / name))
                try:
                    write(temporary)
                    _fsync(temporary)
                except OSError as exc:
                    raise _output_error(exc, f"cannot write {self.path / name}") from exc
            self._files = [*self._files, *(n for n in writers if n not in self._files)]
            self._manifest["files"] = list(self._files)
            self._save_manifest()
            for temporary, final in staged:
                try:
                    os.replace(temporary, final)
                except OSError as exc:
                    raise _output_error(exc, f"cannot write {final}") from exc
                renamed.append(final)
            _fsync(self.path)
        except BaseException:
            for temporary, _ in staged:
                temporary.unlink(missing_ok=True)
            if self.command != "replot":  # a replot's earlier files are still the run's own
                for final in renamed:
                    final.unlink(missing_ok=True)
            raise
        return {final.name: final for _, final in staged}

    def remove(self, names: Iterable[str]) -> None:
        """Delete files of this run (names listed in its manifest) that a replot no longer makes."""
        gone = [n for n in names if n in self._files]
        for name in gone:
            (self.path / name).unlink(missing_ok=True)
        self._files = [n for n in self._files if n not in gone]
        self._manifest["files"] = list(self._files)

    @property
    def files(self) -> list[str]:
        """Names of the files this run wrote (or, for a replot, the run holds)."""
        return list(self._files)

    # ----------------------------------------------------------------- leaving

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 traceback: TracebackType | None) -> None:
        try:
            if error is None:
                if CHECKPOINT_FILE in self._files and self.command != "replot":
                    # gone before the manifest says complete: a crash in between reads as an interrupted
                    # run without checkpoint, never as a complete one
                    (self.path / CHECKPOINT_FILE).unlink(missing_ok=True)
                    self._files = [n for n in self._files if n != CHECKPOINT_FILE]
                    self._manifest["checkpoint"] = None
                self._manifest.update(state="complete", ended=_now(), files=list(self._files))
                if self.command == "replot":
                    self._manifest["replotted"] = _now()
                self._resumed_from = None
                self._save_manifest()
            elif isinstance(error, KeyboardInterrupt) and self.command != "replot" and self._keeps_checkpoint():
                self._interrupt()
            else:
                self._abandon(error)
        finally:
            self._unlock()

    def _keeps_checkpoint(self) -> bool:
        return CHECKPOINT_FILE in self._files and (self.path / CHECKPOINT_FILE).is_file()

    def _interrupt(self) -> None:
        """Ctrl-C with a checkpoint: keep it (and the directory), drop the run's other files
        (written only at its end, so never complete here), record ``"interrupted"``."""
        for name in self._files:
            if name != CHECKPOINT_FILE:
                (self.path / name).unlink(missing_ok=True)
        self._files = [CHECKPOINT_FILE]
        self._created = []  # the directory holds the checkpoint now: it stays
        self._manifest.update(state="interrupted", ended=_now(), files=list(self._files), error=None)
        try:
            self._save_manifest()
        except OutputError:
            pass  # the manifest stays "running", which reads as interrupted once we are gone

    def _abandon(self, error: BaseException | None = None) -> None:
        """Undo a run that failed: remove what it created, else mark it failed (a failed
        replot leaves the complete run as it was, its manifest listing the files that exist)."""
        if self._resumed_from is not None and self._lock_fd is not None:
            # a resume that failed before it saved anything (a config that differs from the
            # checkpoint's, say): the interrupted run and its checkpoint stay as they were
            self._manifest = self._resumed_from
            try:
                self._save_manifest()
            except OutputError:
                pass
        elif self._created:
            self._remove_created()
        elif self.command == "replot" and self._manifest and self._lock_fd is not None:
            self._files = [name for name in self._files if (self.path / name).exists()]
            self._manifest["files"] = list(self._files)
            try:
                self._save_manifest()
            except OutputError:
                pass
        elif self._manifest and self._lock_fd is not None:
            for name in self._files:
                (self.path / name).unlink(missing_ok=True)
            message = (str(error) or type(error).__name__) if error is not None else "unknown error"
            if isinstance(error, KeyboardInterrupt):
                self._manifest.update(state="interrupted", ended=_now(), files=[], checkpoint=None, error=None)
            else:
                self._manifest.update(state="failed", ended=_now(), files=[], checkpoint=None,
                                      error=message.splitlines()[0])
            try:
                self._save_manifest()
            except OutputError:
                pass  # the directory cannot take even the manifest (full): the original error says why
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is None:
            return
        if self.path.is_dir():  # unlink while holding: a waiter re-checks the inode (see _lock)
            (self.path / LOCK_FILE).unlink(missing_ok=True)
        os.close(self._lock_fd)
        self._lock_fd = None

    def _save_manifest(self) -> None:
        text = json.dumps(self._manifest, indent=2) + "\n"
        final = self.path / MANIFEST_FILE
        temporary = self.path / f".{MANIFEST_FILE}.{uuid.uuid4().hex[:12]}.tmp"
        try:
            temporary.write_text(text, encoding="utf-8")
            _fsync(temporary)
            os.replace(temporary, final)
        except OSError as exc:
            temporary.unlink(missing_ok=True)
            raise _output_error(exc, f"cannot write {final}") from None


# --------------------------------------------------------------------------- helpers


def _status_under_lock(directory: Path) -> RunStatus | None:
    """:func:`run_status` for a caller that holds the directory's lock: a "running" manifest
    then cannot belong to a live writer."""
    manifest = _read_manifest(directory)
    if manifest is None:
        return None
    state = manifest.get("state")
    if state == "running":
        state = "interrupted"
    if state not in ("complete", "failed", "interrupted"):
        raise OutputError(f"{directory / MANIFEST_FILE}: unknown run state {state!r}")
    return RunStatus(state=state, manifest=manifest)


def _read_manifest(directory: Path) -> dict[str, Any] | None:
    path = directory / MANIFEST_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _output_error(exc, f"cannot read {path}") from None
    try:
        manifest = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise OutputError(f"{path} is not a pcsim run manifest ({exc}); remove it if the "
                          "directory holds no run you want to keep") from None
    if not isinstance(manifest, dict):
        raise OutputError(f"{path} is not a pcsim run manifest (not a JSON object)")
    return manifest


def _listed_files(manifest: Mapping[str, Any]) -> list[str]:
    """The manifest's file names that are plain names inside the directory (never a path
    that could reach outside it)."""
    files = manifest.get("files") or []
    return [f for f in files if isinstance(f, str) and f and "/" not in f and "\\" not in f
            and f not in (".", "..", MANIFEST_FILE, LOCK_FILE)]


def _writer_alive(directory: Path, manifest: Mapping[str, Any]) -> bool:
    """Whether the process of a "running" manifest still holds the directory: on its own
    host, whether its pid lives; elsewhere, whether someone holds the lock."""
    lock_path = directory / LOCK_FILE
    if not lock_path.exists():
        return False  # a writer never runs without its lock file
    pid = manifest.get("pid")
    if manifest.get("host") == socket.gethostname() and isinstance(pid, int):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    try:
        fd = os.open(lock_path, os.O_RDONLY)
    except OSError:
        return False  # no lock file: its writer is gone (it never runs without one)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _fsync(path: Path) -> None:
    """Flush ``path`` (a file, or a directory after a rename in it) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lock(fd: int) -> str:
    try:
        text = os.pread(fd, 200, 0).decode(errors="replace").split()
    except OSError:
        return "unknown"
    return " on ".join(text[:2]) if text else "unknown"


def _output_error(exc: OSError, what: str) -> OutputError:
    cause = exc.strerror or str(exc)
    if exc.errno == errno.ENOSPC:
        cause = "no space left on device"
    return OutputError(f"{what}: {cause}")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
