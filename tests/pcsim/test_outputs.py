"""The output-directory protocol (pcsim.outdir), through the command line: a directory holds
exactly one run's complete output or says plainly that it does not."""

import errno
import fcntl
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import xarray as xr
from matplotlib.figure import Figure

from pcsim.cli import main
from pcsim.errors import OutputError
from pcsim.outdir import LOCK_FILE, MANIFEST_FILE, RunDirectory, run_status

from .conftest import TINY_EXPERIMENT

REPO = str(Path(__file__).resolve().parents[2])

CONFIG = """\
experiment = "{module}"
seed = 1

[training]
lr = 0.5
epochs = 3
"""

# the tiny experiment drawing another figure, and one that fails when lr > 100
OTHER_EXPERIMENT = TINY_EXPERIMENT.replace('return {"loss": figure}', 'return {"curve": figure}')
FAILING_EXPERIMENT = TINY_EXPERIMENT.replace(
    "def run(config, ctx):\n",
    "def run(config, ctx):\n"
    "    if config.training.lr > 100:\n"
    "        from pcsim.errors import DataError\n"
    "        raise DataError(f'lr {config.training.lr} blew the loss up')\n")


@pytest.fixture
def config(tiny_experiment, write_config):
    return write_config(CONFIG.format(module=tiny_experiment))


def run(config, out, *args):
    return main(["run", str(config), "--out", str(out), "--no-progress", *args])


def manifest(out):
    return json.loads((out / MANIFEST_FILE).read_text())


def listing(directory):
    return sorted(p.name for p in directory.iterdir())


def one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pcsim: error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_manifest_records_the_run(config, tmp_path):
    out = tmp_path / "out"
    assert run(config, out) == 0
    m = manifest(out)
    assert m["state"] == "complete" and m["pid"] == os.getpid() and m["experiment"].startswith("pcsim_test")
    assert m["started"] <= m["ended"] and m["config"] == str(config)
    assert sorted(m["files"]) == ["config.toml", "loss.png", "results.nc", "summary.json"]
    assert listing(out) == sorted([*m["files"], MANIFEST_FILE])  # no lock, no temporaries
    assert run_status(out).state == "complete"


def test_rerun_needs_overwrite(config, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(config, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    capsys.readouterr()
    assert run(config, out, "--set", "training.epochs=5") == 2
    line = one_line(capsys.readouterr().err)
    assert str(out) in line and "already holds a complete run" in line and "--overwrite" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert run(config, out, "--set", "training.epochs=5", "--overwrite") == 0
    with xr.open_dataset(out / "results.nc") as ds:
        assert ds.sizes["epoch"] == 5


def test_another_experiment_replaces_every_file_of_the_previous_run(config, write_module, write_config, tmp_path):
    out = tmp_path / "out"
    assert run(config, out) == 0
    (out / "notes.md").write_text("my notes")  # the user's own file
    other = write_config(CONFIG.format(module=write_module(OTHER_EXPERIMENT)), "other.toml")
    assert run(other, out, "--overwrite") == 0
    assert listing(out) == ["config.toml", "curve.png", "notes.md", MANIFEST_FILE, "results.nc", "summary.json"]
    assert (out / "notes.md").read_text() == "my notes"
    assert "loss.png" not in manifest(out)["files"]


def test_user_file_with_a_pcsim_name_is_never_replaced(config, tmp_path, capsys, monkeypatch):
    own = tmp_path / "config.toml"  # `--out .` in a folder holding the user's own config.toml
    own.write_text("# my commented config\nseed = 3\n")
    monkeypatch.chdir(tmp_path)
    before = listing(tmp_path)
    for extra in ((), ("--overwrite",)):
        assert run(config, ".", *extra) == 2
        line = one_line(capsys.readouterr().err)
        assert "config.toml exists and was not written by pcsim (no pcsim_run.json lists it)" in line
        assert own.read_text() == "# my commented config\nseed = 3\n"
        assert listing(tmp_path) == before  # no manifest, lock or temporary left behind


def test_user_figure_name_is_refused_at_write_time(config, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "loss.png").write_bytes(b"my own picture")
    assert run(config, out, "--overwrite") == 2
    line = one_line(capsys.readouterr().err)
    assert f"{out / 'loss.png'} exists and was not written by pcsim" in line
    assert (out / "loss.png").read_bytes() == b"my own picture"
    assert listing(out) == ["loss.png", MANIFEST_FILE]
    assert manifest(out)["state"] == "failed" and "loss.png" in manifest(out)["error"]


def test_second_writer_is_refused_naming_the_first(config, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    holder = subprocess.Popen(  # another process holds the lock, as a running pcsim does
        [sys.executable, "-c",
         "import fcntl, os, sys, time\n"
         f"fd = os.open({str(out / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)\n"
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, f'{os.getpid()} host\\n'.encode())\n"
         "print('locked', flush=True); sys.stdin.read()\n"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        assert run(config, out) == 2
        line = one_line(capsys.readouterr().err)
        assert f"{out} is in use by another pcsim process (pid {holder.pid}" in line
        assert listing(out) == [LOCK_FILE]  # the first writer's files are untouched
    finally:
        holder.communicate("")
    assert run(config, out) == 0  # its death released the lock


def test_lock_is_exclusive_within_one_process_too(tmp_path):
    out = tmp_path / "out"
    with RunDirectory(out, experiment="a"):
        with pytest.raises(OutputError, match=f"pid {os.getpid()}"):
            RunDirectory(out, experiment="b").__enter__()
        assert run_status(out).state == "running"


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_killed_run_reads_as_interrupted_and_its_debris_is_cleaned(config, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(config, out) == 0
    # what a SIGKILL during the write phase of an --overwrite rerun leaves behind
    m = manifest(out)
    m.update(state="running", pid=dead_pid(), ended=None)
    (out / MANIFEST_FILE).write_text(json.dumps(m))
    (out / ".loss.png.0123456789ab.tmp").write_bytes(b"half a png")
    (out / ".results.nc.ba9876543210.tmp").write_bytes(b"half a netcdf")
    status = run_status(out)
    assert status.state == "interrupted" and "interrupted run" in status.describe()

    capsys.readouterr()
    assert main(["replot", str(out)]) == 2
    line = one_line(capsys.readouterr().err)
    assert "holds an interrupted run" in line and f"pid {m['pid']}" in line

    assert run(config, out) == 0  # no result to lose: replaced, with a note
    assert "held an interrupted run" in capsys.readouterr().err
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert manifest(out)["state"] == "complete"


def test_failed_run_leaves_no_directory_it_created(write_module, write_config, tmp_path, capsys):
    failing = write_config(CONFIG.format(module=write_module(FAILING_EXPERIMENT)))
    out = tmp_path / "a" / "b" / "out"
    assert run(failing, out, "--set", "training.lr=1000") == 2
    assert "lr 1000.0 blew the loss up" in one_line(capsys.readouterr().err)
    assert listing(tmp_path) == ["modules", "tiny.toml"]  # neither out/ nor the a/b/ above it


def test_failed_run_in_an_existing_directory_says_failed(write_module, write_config, tmp_path, capsys):
    failing = write_config(CONFIG.format(module=write_module(FAILING_EXPERIMENT)))
    out = tmp_path / "out"
    assert run(failing, out) == 0
    assert run(failing, out, "--set", "training.lr=1000", "--overwrite") == 2
    assert listing(out) == [MANIFEST_FILE]  # the replaced run's files are gone, no new ones
    m = manifest(out)
    assert m["state"] == "failed" and "blew the loss up" in m["error"] and m["ended"]
    assert run_status(out).state == "failed"
    capsys.readouterr()
    assert main(["replot", str(out)]) == 2
    assert "holds a failed run" in one_line(capsys.readouterr().err)


def test_interrupt_leaves_nothing(tiny_experiment, config, tmp_path, monkeypatch, capsys):
    module = __import__(tiny_experiment)

    def interrupted(config, ctx):
        raise KeyboardInterrupt

    monkeypatch.setattr(module, "run", interrupted)
    assert run(config, tmp_path / "out") == 130
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------ item 2: one clear line


def test_replot_of_a_corrupt_or_truncated_results_file(config, tmp_path, capsys):
    out = tmp_path / "out"
    assert run(config, out) == 0
    results = out / "results.nc"
    data = results.read_bytes()
    for broken in (data[: len(data) // 2], b"not netcdf at all", b""):
        results.write_bytes(broken)
        capsys.readouterr()
        assert main(["replot", str(out)]) == 2
        line = one_line(capsys.readouterr().err)
        assert f"{results}: cannot be read as a pcsim results file" in line
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp") or p.name == LOCK_FILE]
        assert manifest(out)["state"] == "complete"  # a failed replot does not touch the run


def test_out_is_a_file_or_under_a_file(config, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for out, expected in ((blocker, f"output directory {blocker} is a file"),
                          (blocker / "sub" / "out", f"cannot be created: {blocker} is a file")):
        assert run(config, out) == 2
        assert expected in one_line(capsys.readouterr().err)
        assert blocker.read_text() == "x" and listing(tmp_path) == ["afile", "modules", "tiny.toml"]


def test_read_only_directory(config, tmp_path, capsys):
    ro = tmp_path / "ro"
    ro.mkdir(mode=0o500)
    try:
        probe = ro / "probe"
        try:
            probe.write_text("")
        except PermissionError:
            pass
        else:
            probe.unlink()
            pytest.skip("running as root: a 0o500 directory is still writable")
        for out in (ro, ro / "out"):
            assert run(config, out) == 2
            line = one_line(capsys.readouterr().err)
            assert str(out) in line and "Permission denied" in line
        assert listing(ro) == []
    finally:
        ro.chmod(0o700)


def test_not_writable_simulated(config, tmp_path, capsys, monkeypatch):
    """Root writes everywhere: simulate a read-only file system where mkdir and open fail."""
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
        return real_open(path, flags, *args)

    existing = tmp_path / "existing"
    existing.mkdir()
    monkeypatch.setattr(os, "open", read_only)
    assert run(config, existing) == 2
    line = one_line(capsys.readouterr().err)
    assert f"output directory {existing} is not writable: Read-only file system" in line
    assert listing(existing) == []

    def no_mkdir(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(type(tmp_path), "mkdir", no_mkdir)
    assert run(config, tmp_path / "new") == 2
    line = one_line(capsys.readouterr().err)
    assert f"output directory {tmp_path / 'new'} cannot be created: Read-only file system" in line


@pytest.mark.parametrize("pre_existing", [False, True])
def test_disk_full(config, tmp_path, capsys, monkeypatch, pre_existing):
    out = tmp_path / "out"
    if pre_existing:
        out.mkdir()

    def full(self, path, **kwargs):
        with open(path, "wb") as fh:
            fh.write(b"\x89PNG partial")  # a partial file, then the disk is full
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", full)
    assert run(config, out) == 2
    line = one_line(capsys.readouterr().err)
    assert f"cannot write {out / 'loss.png'}: no space left on device" in line
    if pre_existing:
        assert listing(out) == [MANIFEST_FILE] and manifest(out)["state"] == "failed"
    else:
        assert not out.exists()


def test_manifest_cannot_point_outside_the_directory(config, tmp_path):
    out = tmp_path / "out"
    assert run(config, out) == 0
    victim = tmp_path / "precious.txt"
    victim.write_text("keep")
    m = manifest(out)
    m["files"] += ["../precious.txt", str(victim)]
    (out / MANIFEST_FILE).write_text(json.dumps(m))
    assert run(config, out, "--overwrite") == 0
    assert victim.read_text() == "keep"


def test_unreadable_manifest_is_one_line(config, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / MANIFEST_FILE).write_text("{not json")
    assert run(config, out) == 2
    assert f"{out / MANIFEST_FILE} is not a pcsim run manifest" in one_line(capsys.readouterr().err)


def test_sigkill_during_the_write_phase(config, tmp_path, capsys):
    """A writer killed by SIGKILL holding the directory: the kernel frees the lock, the
    manifest reads as interrupted, and the next run removes the killed run's temporaries."""
    import signal

    out = tmp_path / "out"
    writer = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time\n"
         "from pcsim.outdir import RunDirectory\n"
         f"run = RunDirectory({str(out)!r}, experiment='killed').__enter__()\n"
         "(run.path / '.accuracy.png.0123456789ab.tmp').write_bytes(b'half')\n"
         "print('writing', flush=True); time.sleep(60)\n"],
        stdout=subprocess.PIPE, text=True, cwd=REPO)  # this checkout's pcsim
    try:
        assert writer.stdout.readline() == "writing\n"
        assert run_status(out).state == "running"
        assert run(config, out) == 2
        assert f"pid {writer.pid}" in one_line(capsys.readouterr().err)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait()
    status = run_status(out)
    assert status.state == "interrupted" and status.manifest["pid"] == writer.pid
    assert run(config, out) == 0
    assert "held an interrupted run of killed" in capsys.readouterr().err
    assert listing(out) == ["config.toml", "loss.png", MANIFEST_FILE, "results.nc", "summary.json"]


def test_refused_writer_never_removes_the_directory_it_raced_to_create(tmp_path, monkeypatch):
    """B creates out/, A takes the lock before B does: B is refused and must leave out/ (now
    A's run) alone, although B made the directory."""
    out = tmp_path / "out"
    first = RunDirectory(out, experiment="a")
    real_lock = RunDirectory._lock

    def lock_after_the_other_writer(self):
        if self is not first:
            first.__enter__()  # out/ exists now (B made it): A does not own it, but locks it
        real_lock(self)

    monkeypatch.setattr(RunDirectory, "_lock", lock_after_the_other_writer)
    with pytest.raises(OutputError, match="in use by another pcsim process"):
        RunDirectory(out, experiment="b").__enter__()
    assert run_status(out).state == "running" and run_status(out).manifest["experiment"] == "a"
    first.__exit__(None, None, None)
    assert run_status(out).state == "complete" and listing(out) == [MANIFEST_FILE]


def test_refused_overwrite_keeps_the_previous_run(config, tmp_path, capsys):
    """--overwrite refused for a user file must not have removed the previous run first."""
    out = tmp_path / "out"
    assert run(config, out) == 0
    m = manifest(out)
    m["files"].remove("config.toml")  # as if config.toml were the user's own
    (out / MANIFEST_FILE).write_text(json.dumps(m))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert run(config, out, "--overwrite") == 2
    assert "config.toml exists and was not written by pcsim (no pcsim_run.json lists it)" in one_line(capsys.readouterr().err)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
