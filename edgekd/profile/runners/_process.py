"""Child processes of the device runners (adb, ssh, scp): hard timeouts, whole-group kills, bounded retries.

Each child starts in its own session (`start_new_session=True`), so on a timeout, an error or a signal the whole
process group is killed, grandchildren included (adb and ssh fork helpers that would otherwise keep our pipes open
and make the wait for output last until they exit). A timeout is never retried: it already cost the configured
time, and a hung device does not recover by asking again.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
from time import sleep
from typing import Callable, Iterator, Sequence

from edgekd.errors import EdgeKDError


class DeviceTimeout(EdgeKDError):
    """A device command did not finish within its timeout; its process group was killed."""

    def __init__(self, message: str, timeout_s: float):
        super().__init__(message)
        self.timeout_s = timeout_s


def run(argv: Sequence[str], timeout_s: float, what: str) -> subprocess.CompletedProcess:
    """Run `argv` (no shell) and capture its text output; kill its process group after `timeout_s` seconds.

    Raises:
        DeviceTimeout: the command ran past `timeout_s` (message: "<what> did not finish within N s").
        FileNotFoundError: the executable does not exist (callers turn it into an install hint).
    """
    proc = subprocess.Popen(list(argv), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(proc)
        raise DeviceTimeout(f"{what} did not finish within {timeout_s:g} s", timeout_s) from None
    except BaseException:  # a signal or Ctrl-C while waiting: leave no child behind
        kill_group(proc)
        raise
    return subprocess.CompletedProcess(list(argv), proc.returncode, out, err)


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the child's whole process group and reap the child without waiting on escaped grandchildren."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    try:
        proc.communicate(timeout=2)
    except (subprocess.TimeoutExpired, ValueError):
        # a grandchild that left the group (setsid) still holds a pipe: stop reading rather than wait for it
        for pipe in (proc.stdout, proc.stderr):
            if pipe is not None:
                with contextlib.suppress(OSError):
                    pipe.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=2)


def with_retries(call: Callable[[], subprocess.CompletedProcess], transient: Callable[[str], bool],
                 retries: int, delay_s: float = 1.0) -> subprocess.CompletedProcess:
    """Call `call()` again (at most `retries` more times, waiting 1 s, 2 s, ...) while it fails transiently.

    A failure is transient when the exit status is non-zero and `transient(stderr + stdout)` is true. Timeouts
    (DeviceTimeout) propagate at once.
    """
    for attempt in range(retries + 1):
        res = call()
        if res.returncode == 0 or attempt == retries or not transient((res.stderr or "") + (res.stdout or "")):
            return res
        sleep(delay_s * (attempt + 1))
    return res  # pragma: no cover (the loop always returns)


def pid_alive(pid: int) -> bool:
    """Whether process `pid` exists (and is not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


@contextlib.contextmanager
def signals_raise() -> Iterator[None]:
    """While a device run is in progress, SIGTERM and SIGHUP raise SystemExit(128 + signal) in the main thread,
    so the runner's cleanup (remote temp folder, SSH master, local sockets) runs before the process ends.

    Handlers an application installed itself are left alone; only the default (terminate at once) is replaced.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        raise SystemExit(128 + signum)

    old = {}
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) is signal.SIG_DFL:
            old[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def check_timeouts(connect: dict) -> list[str]:
    """Problems with a target's `connect:` timeouts (seconds > 0) and retries (0..10)."""
    problems = []
    for key in ("connect_timeout_s", "command_timeout_s"):
        v = connect.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0):
            problems.append(f"connect.{key}: must be a number of seconds > 0, got {v!r}")
    v = connect.get("retries")
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= 10):
        problems.append(f"connect.retries: must be an integer 0..10, got {v!r}")
    return problems
