"""One process at a time in a run directory: an advisory lock file naming its holder (pid, host, start time).

The lock is an fcntl lock on `<run>/.lock`, so the kernel drops it when the holder exits, even on kill -9; the file
itself stays (removing it would let two processes lock two different files) and holds the last holder's facts.
Where the file system has no fcntl locks (some network mounts), the file's own facts decide: a holder on this host
whose pid is gone is stale and is taken over; any other holder refuses the run.
"""
from __future__ import annotations

import contextlib
import errno
import json
import os
import socket
import time
from pathlib import Path
from typing import Iterator

from edgekd.errors import EdgeKDError
from edgekd.process import pid_alive

LOCK_NAME = ".lock"


class RunDirLocked(EdgeKDError):
    """Another process holds the run directory."""


def holder_facts() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime())}


def describe(holder: dict) -> str:
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (since {holder.get('started', '?')})"


def _read(fd: int) -> dict:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        data = json.loads(os.read(fd, 4096).decode() or "{}")
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write(fd: int, facts: dict) -> None:
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(facts) + "\n").encode())
    os.fsync(fd)


def is_stale(holder: dict) -> bool:
    """A holder recorded on this host whose process is gone."""
    pid = holder.get("pid")
    return holder.get("host") == socket.gethostname() and isinstance(pid, int) and not pid_alive(pid)


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[dict]:
    """Hold `run_dir` exclusively for the block; RunDirLocked (one line naming the holder) when another process has it.

    Creates nothing but the lock file, and that only when the run directory is free or was never locked.
    """
    import fcntl

    path = Path(run_dir) / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    flocked = False
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            flocked = True
        except OSError as e:
            if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise RunDirLocked(_refusal(run_dir, _read(fd))) from None
            if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            holder = _read(fd)  # no fcntl locks here: the recorded holder decides
            if holder.get("pid") and holder.get("pid") != os.getpid() and not is_stale(holder):
                raise RunDirLocked(_refusal(run_dir, holder)) from None
        facts = holder_facts()
        _write(fd, facts)
        try:
            yield facts
        finally:
            _write(fd, {})  # released: the next holder finds no facts to report
    finally:
        if flocked:
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _refusal(run_dir: str | Path, holder: dict) -> str:
    gone = " (that process is gone: a process it started still holds the lock)" if is_stale(holder) else ""
    return (f"run directory {run_dir} is in use by another edgekd run: {describe(holder)}{gone}; wait for it to "
            "finish or stop it, or give this run another --run-dir")
