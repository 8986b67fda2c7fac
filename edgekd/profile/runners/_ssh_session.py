"""One SSH connection to a board for the jetson/linux runner: configuration, validation, the shared master,
remote temp folders, and clean-up on success, error, signal and (on the next run) after a kill.

Host keys are always checked (StrictHostKeyChecking=yes) against the target's known_hosts file (or the user's
default one): an unknown key fails with the command to add it, never a silent accept. Host and user are validated
(no leading '-', no whitespace or control characters) and ssh/scp get `--` before the destination, so a target file
cannot smuggle in ssh options such as `-oProxyCommand=...`.

Each session keeps a private local folder `edgekd-ssh-*` in the temp directory: the master's control socket, its log
and `owner.json` (our pid, the destination and the remote temp folders in use). A run killed with SIGKILL leaves that
folder, a live master and the remote folders behind; the next session reaps every folder whose owner is dead: it
removes the recorded remote folders (through the stale master, or through its own connection when the destination
is the same), stops the stale master and deletes the folder.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import EdgeKDError
from edgekd.profile.runners import _process

SSH_TRANSIENT = ("Connection reset", "Connection closed by", "kex_exchange_identification",
                 "ssh_exchange_identification", "Broken pipe")
CLEANUP_TIMEOUT_S = 10.0
_REMOTE_TEMP = re.compile(r"^/[^\s'\"]*/edgekd\.[A-Za-z0-9]{6}$")
_BAD_NAME = re.compile(r"[\s\x00-\x1f\x7f]")


def check_name(field: str, value: object) -> str | None:
    """A problem with an SSH host or user name, or None: it must not start with '-' (ssh would read an option)
    nor contain whitespace or control characters."""
    if not isinstance(value, str) or not value:
        return f"connect.{field}: must be a non-empty string, got {value!r}"
    if value.startswith("-") or _BAD_NAME.search(value) or (field == "user" and "@" in value):
        return (f"connect.{field}: {value!r} is not a valid {field} name (it may not start with '-' or contain "
                f"whitespace, control characters{' or @' if field == 'user' else ''})")
    return None


@dataclass(frozen=True)
class SshConfig:
    """How to reach a board: `ssh -p port -- user@host` with strict host-key checking, timeouts and retries."""

    host: str
    user: str | None = None
    port: int = 22
    known_hosts: str | None = None
    identity_file: str | None = None
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 600.0
    retries: int = 2
    python: str = "python3"
    trtexec: str = "trtexec"
    remote_dir: str = "/tmp"

    def __post_init__(self) -> None:
        for name in ("host", "user"):
            value = getattr(self, name)
            if value is not None and (problem := check_name(name, value)):
                raise EdgeKDError(problem)
        for name in ("connect_timeout_s", "command_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise EdgeKDError(f"connect.{name}: must be a number of seconds > 0, got {value!r}")

    @classmethod
    def from_target(cls, target, timeout_s: float | None = None, **overrides) -> "SshConfig":
        """The target's connect settings with `overrides`; a per-call `timeout_s` replaces the command timeout
        and caps the connect timeout."""
        c = {k: v for k, v in target.connect.items() if v is not None}
        c.update({k: v for k, v in overrides.items() if v is not None})
        if timeout_s is not None:
            c["connect_timeout_s"] = min(float(c.get("connect_timeout_s", cls.connect_timeout_s)), timeout_s)
            c["command_timeout_s"] = timeout_s
        fields = set(cls.__dataclass_fields__)  # type: ignore[attr-defined]
        return cls(**{k: v for k, v in c.items() if k in fields})

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def options(self) -> list[str]:
        opts = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
                "-o", f"ConnectTimeout={max(1, int(round(self.connect_timeout_s)))}",
                "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=3"]
        if self.known_hosts:
            kh = Path(self.known_hosts).expanduser()
            if not kh.is_file():
                raise EdgeKDError(f"known_hosts file not found: {kh}; create it with the board's host key after "
                                  f"checking its fingerprint (ssh-keyscan -p {self.port} {self.host} > {kh})")
            opts += ["-o", f"UserKnownHostsFile={kh}", "-o", "GlobalKnownHostsFile=/dev/null"]
        if self.identity_file:
            key = Path(self.identity_file).expanduser()
            if not key.is_file():
                raise EdgeKDError(f"SSH identity file not found: {key}")
            opts += ["-i", str(key), "-o", "IdentitiesOnly=yes"]
        return opts


def classify(stderr: str, cfg: SshConfig, what: str) -> EdgeKDError | None:
    """Turn ssh/scp's failure text into one clear error (None when it is not an SSH-level failure)."""
    where = f"{cfg.destination}:{cfg.port}"
    kh = cfg.known_hosts or "~/.ssh/known_hosts"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr:
        return EdgeKDError(f"{what}: the host key of {where} CHANGED since it was recorded in {kh}; if the board was "
                           f"reinstalled, check the new fingerprint and replace its line (ssh-keygen -R)")
    if "Host key verification failed" in stderr or re.search(r"No \S+ host key is known", stderr):
        return EdgeKDError(f"{what}: unknown host key for {where} (not in {kh}); check the board's fingerprint "
                           f"and add it: ssh-keyscan -p {cfg.port} {cfg.host} >> {kh}")
    if "Permission denied" in stderr or "Too many authentication failures" in stderr:
        return EdgeKDError(f"{what}: authentication failed for {where}; set connect.identity_file to a key "
                           f"whose public half is in the board's ~/.ssh/authorized_keys (no password prompts)")
    if re.search(r"timed out|Connection timeout", stderr, re.I):
        return EdgeKDError(f"{what}: connection to {where} timed out after {cfg.connect_timeout_s:g} s; is the "
                           f"board on and reachable? (raise connect_timeout_s on slow links)")
    if "Connection refused" in stderr:
        return EdgeKDError(f"{what}: {where} refused the connection; is sshd running on port {cfg.port}?")
    if "Could not resolve hostname" in stderr or "Name or service not known" in stderr:
        return EdgeKDError(f"{what}: cannot resolve host {cfg.host!r}; check connect.host")
    return None


def _run(argv: list[str], timeout_s: float, what: str) -> subprocess.CompletedProcess:
    try:
        return _process.run(argv, timeout_s, what)
    except FileNotFoundError as e:
        raise EdgeKDError(f"{argv[0]} not found on PATH: install the OpenSSH client (Debian: apt-get install "
                          f"openssh-client)") from e


class Ssh:
    """Runs commands on and copies files to one board over one shared connection (ControlMaster), so each step
    costs no new handshake; SSH-level failures become EdgeKDError. Use as a context manager: leaving it (normally,
    by an exception or by SIGTERM/SIGHUP, which raise SystemExit meanwhile) removes the remote temp folders, stops
    the master and deletes the local control folder.

    Retried (at most `retries` more times, 1 s then 2 s apart): opening the connection when ssh fails with a reset
    or closed connection during the handshake (SSH_TRANSIENT). Never retried: timeouts, refused connections, host
    key and authentication failures, and remote commands (a measurement is not repeated behind the user's back).
    """

    def __init__(self, cfg: SshConfig):
        self.cfg = cfg
        self._base = cfg.options()
        self._opts = list(self._base)
        self._control: str | None = None
        self._dir: Path | None = None
        self._remote: list[str] = []
        self._signals = _process.signals_raise()

    # ---- the master connection and its local folder

    def __enter__(self) -> "Ssh":
        self._signals.__enter__()
        try:
            stale = reap_stale(self.cfg)
            self._connect()
            for folder in stale:  # a dead run's remote folders on this same board
                self.run(f"rm -rf -- {shlex.quote(folder)}", "removing a stale temp folder",
                         timeout_s=CLEANUP_TIMEOUT_S)
        except BaseException:
            self.__exit__()
            raise
        return self

    def _connect(self) -> None:
        self._dir = Path(tempfile.mkdtemp(prefix="edgekd-ssh-"))
        self._write_owner()
        control = str(self._dir / "cm")
        log = self._dir / "master.log"
        argv = ["ssh", *self._base, "-p", str(self.cfg.port), "-M", "-N", "-f", "-o", f"ControlPath={control}",
                "--", self.cfg.destination]
        # The master forks into the background; its stderr goes to a file, not a pipe, so no call waits on it. A
        # little over ConnectTimeout lets ssh report its own reason first; the master is then in its own session.
        cap = self.cfg.connect_timeout_s + 2

        def once() -> subprocess.CompletedProcess:
            with open(log, "w") as err:
                try:
                    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                            start_new_session=True)
                except FileNotFoundError as e:
                    raise EdgeKDError("ssh not found on PATH: install the OpenSSH client (Debian: apt-get install "
                                      "openssh-client)") from e
                try:
                    code = proc.wait(timeout=cap)
                except subprocess.TimeoutExpired:
                    _process.kill_group(proc)
                    raise EdgeKDError(f"connecting to {self.cfg.destination}:{self.cfg.port} did not finish within "
                                      f"{cap:g} s; is the board on? (raise connect.connect_timeout_s)") from None
                except BaseException:
                    _process.kill_group(proc)
                    raise
            return subprocess.CompletedProcess(argv, code, "", log.read_text())

        res = _process.with_retries(once, lambda text: any(t in text for t in SSH_TRANSIENT), self.cfg.retries)
        if res.returncode != 0:
            raise classify(res.stderr, self.cfg, "connecting") or EdgeKDError(
                f"ssh to {self.cfg.destination}:{self.cfg.port} failed: {res.stderr.strip()}")
        self._control = control
        self._opts = [*self._base, "-o", f"ControlPath={control}", "-o", "ControlMaster=no"]

    def _write_owner(self) -> None:
        if self._dir is not None:
            (self._dir / "owner.json").write_text(json.dumps(
                {"pid": os.getpid(), "destination": self.cfg.destination, "port": self.cfg.port,
                 "remote": self._remote}))

    def __exit__(self, *exc) -> None:
        try:
            for folder in list(self._remote):
                with contextlib.suppress(EdgeKDError):
                    self.remove_temp(folder)
            if self._control:
                _stop_master(self._control, self.cfg.destination)
                self._control = None
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
                self._dir = None
        finally:
            self._signals.__exit__(None, None, None)

    # ---- commands, copies, temp folders

    def _call(self, argv: list[str], what: str, timeout_s: float | None) -> subprocess.CompletedProcess:
        timeout = timeout_s or self.cfg.command_timeout_s
        try:
            res = _run(argv, timeout, what)
        except _process.DeviceTimeout:
            raise EdgeKDError(f"{what} on {self.cfg.destination} did not finish within {timeout:g} s; raise "
                              f"connect.command_timeout_s (or --timeout) or check the board") from None
        if res.returncode != 0:
            err = classify(res.stderr, self.cfg, what)
            if err is not None:
                raise err
        return res

    def run(self, command: str, what: str = "remote command", timeout_s: float | None = None):
        argv = ["ssh", *self._opts, "-p", str(self.cfg.port), "--", self.cfg.destination, command]
        res = self._call(argv, what, timeout_s)
        if res.returncode == 255:
            raise EdgeKDError(f"{what}: ssh to {self.cfg.destination} failed: {res.stderr.strip()}")
        return res

    def copy(self, local: str | Path, remote: str, timeout_s: float | None = None) -> None:
        argv = ["scp", "-q", *self._opts, "-P", str(self.cfg.port), "--", str(local),
                f"{self.cfg.destination}:{remote}"]
        res = self._call(argv, f"copying {Path(local).name}", timeout_s)
        if res.returncode != 0:
            raise EdgeKDError(f"scp {Path(local).name} -> {self.cfg.destination}:{remote} failed: "
                              f"{res.stderr.strip()}")

    def make_temp(self) -> str:
        """A fresh `mktemp -d` folder under remote_dir, recorded so that every way out removes it."""
        template = self.cfg.remote_dir.rstrip("/") + "/edgekd.XXXXXX"
        res = self.run(f"mktemp -d {shlex.quote(template)}", "creating a temp folder")
        work = res.stdout.strip()
        if res.returncode != 0 or not work.startswith("/"):
            raise EdgeKDError(f"cannot create a temp folder under {self.cfg.remote_dir} on {self.cfg.host}: "
                              f"{res.stderr.strip()}")
        self._remote.append(work)
        self._write_owner()
        return work

    def remove_temp(self, work: str) -> None:
        """Remove a temp folder of ours (briefly: after a failure the board may be why we are here)."""
        try:
            self.run(f"rm -rf -- {shlex.quote(work)}", "removing the temp folder", timeout_s=CLEANUP_TIMEOUT_S)
        finally:
            if work in self._remote:
                self._remote.remove(work)
                self._write_owner()


def _stop_master(control: str, destination: str) -> None:
    with contextlib.suppress(EdgeKDError):
        _run(["ssh", "-o", f"ControlPath={control}", "-O", "exit", "--", destination], 5.0, "stopping the ssh master")


def reap_stale(cfg: SshConfig) -> list[str]:
    """Clean what dead edgekd runs left (see the module docstring); returns remote folders of theirs on this
    same board that only a new connection can remove."""
    leftovers: list[str] = []
    for d in Path(tempfile.gettempdir()).glob("edgekd-ssh-*"):
        try:
            if not d.is_dir() or d.is_symlink() or d.stat().st_uid != os.getuid():
                continue
            owner = json.loads((d / "owner.json").read_text())
            pid, destination, port = int(owner["pid"]), str(owner["destination"]), int(owner.get("port", 22))
            remote = [r for r in owner.get("remote", []) if isinstance(r, str) and _REMOTE_TEMP.match(r)]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if _process.pid_alive(pid) or check_name("host", destination.split("@")[-1]):
            continue
        control = str(d / "cm")
        alive = Path(control).exists() and _master_alive(control, destination)
        if alive:
            for folder in remote:
                with contextlib.suppress(EdgeKDError):
                    _run(["ssh", "-o", f"ControlPath={control}", "--", destination,
                          f"rm -rf -- {shlex.quote(folder)}"], CLEANUP_TIMEOUT_S, "removing a stale temp folder")
            _stop_master(control, destination)
        elif remote and (destination, port) == (cfg.destination, cfg.port):
            leftovers.extend(remote)
        elif remote:
            continue  # another board's folders: kept on record until a session to that board removes them
        shutil.rmtree(d, ignore_errors=True)
    return leftovers


def _master_alive(control: str, destination: str) -> bool:
    try:
        return _run(["ssh", "-o", f"ControlPath={control}", "-O", "check", "--", destination], 5.0,
                    "checking a stale ssh master").returncode == 0
    except EdgeKDError:
        return False
