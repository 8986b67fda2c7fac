"""One process at a time in a run directory: a second `edgekd run` is refused with one line naming the holder."""
from __future__ import annotations

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import yaml

from edgekd.errors import EdgeKDError
from edgekd.runlock import LOCK_NAME, RunDirLocked, run_lock

RECIPE = {"name": "r", "data": {"dataset": "digits", "batch_size": 32},
          "teacher": {"model": "tiny_cnn", "kwargs": {"width": 8}, "train": {"epochs": 1, "lr": 0.01}},
          "student": {"model": "tiny_cnn", "kwargs": {"width": 4}}}
HOLD = """
import sys, time
from edgekd.runlock import run_lock
with run_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """A second process holding tmp_path/run, as a running `edgekd run` does."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        yield run_dir, proc
    finally:
        proc.kill()
        proc.wait()


def test_a_second_run_is_refused_naming_the_holder_and_leaves_nothing(holder, tmp_path):
    run_dir, proc = holder
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    before = sorted(p.name for p in run_dir.iterdir())
    t0 = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "edgekd.cli", "run", str(recipe), "--run-dir", str(run_dir),
                             "--no-progress"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"edgekd: error: run directory {run_dir} is in use by another "
                                                   f"edgekd run: pid {proc.pid} on {socket.gethostname()} (since ")
    assert sorted(p.name for p in run_dir.iterdir()) == before == [LOCK_NAME]  # no stage, staging or recipe file
    assert time.perf_counter() - t0 < 60  # refused at once, not after waiting


def test_the_lock_is_free_again_when_the_holder_is_killed(holder):
    run_dir, proc = holder
    with pytest.raises(RunDirLocked, match=f"pid {proc.pid} on "):
        with run_lock(run_dir):
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stale = json.loads((run_dir / LOCK_NAME).read_text())
    assert stale["pid"] == proc.pid  # kill -9 left its facts behind; the kernel dropped the lock itself
    with run_lock(run_dir) as facts:
        assert facts["pid"] == os.getpid()
        assert json.loads((run_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert (run_dir / LOCK_NAME).read_text().strip() == "{}"


def test_without_fcntl_locks_a_dead_holder_on_this_host_is_stale(tmp_path, monkeypatch):
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    lock = tmp_path / LOCK_NAME
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": "then"}))
    with run_lock(tmp_path) as facts:  # its pid is gone: taken over
        assert facts["pid"] == os.getpid()
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": "now"}))
    with pytest.raises(EdgeKDError, match=f"in use by another edgekd run: pid {os.getppid()} on "):
        with run_lock(tmp_path):
            pass
    lock.write_text(json.dumps({"pid": 1, "host": "another-host", "started": "now"}))
    with pytest.raises(RunDirLocked, match="pid 1 on another-host"):  # another host's pid cannot be checked
        with run_lock(tmp_path):
            pass
