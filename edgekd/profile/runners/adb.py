"""The android runner: measure .tflite files on an Android phone over adb with LiteRT's `benchmark_model` binary.

We push the model (and the binary when the user gives a local copy) into a fresh folder under the target's
remote_dir, run `benchmark_model --graph=... --num_threads=N` with the chosen delegate, parse its log, and remove
the folder whatever happened. The log format is benchmark_model.cc / benchmark_tflite_model.cc's (see
tests/data/profile/README.md).
"""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from edgekd.errors import EdgeKDError
from edgekd.fileio import existing_model_file
from edgekd.profile.result import LatencyResult, detect_precision, file_bytes
from edgekd.profile.runners import Job, Runner, _process, register_runner

DELEGATES = {"cpu": ["--use_xnnpack=false"], "xnnpack": ["--use_xnnpack=true"], "gpu": ["--use_gpu=true"],
             "nnapi": ["--use_nnapi=true"]}

_NUM = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"
_TIMINGS = re.compile(r"Inference timings in us: Init: " + _NUM + r", First inference: " + _NUM +
                      r", Warmup \(avg\): " + _NUM + r", Inference \(avg\): " + _NUM)
# "Memory footprint delta from the start of the tool (MB)" since TF 2.6; "Peak memory footprint (MB)" before
_MEM_DELTA = re.compile(r"(?:Memory footprint delta from the start of the tool|Peak memory footprint)"
                        r" \(MB\): init=" + _NUM + r" overall=" + _NUM)
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring: " + _NUM)
_SIZE = re.compile(r"The input model file size \(MB\): " + _NUM)
_STAT = re.compile(r"\bcount=(\d+)((?:\s+\w+=" + _NUM + r")*)")
_DELEGATE_FAIL = re.compile(r"Failed to apply (\w+) delegate")


@dataclass
class RunStat:
    """One `count=... first=... curr=... min=... max=... avg=... std=...` line (microseconds)."""

    count: int
    values: dict[str, float] = field(default_factory=dict)

    def get(self, key: str) -> float | None:
        return self.values.get(key)


@dataclass
class BenchmarkModelOutput:
    """What benchmark_model reported: timings in microseconds, memory in MB."""

    init_us: float
    first_us: float
    warmup_avg_us: float
    inference_avg_us: float
    warmup: RunStat | None = None
    inference: RunStat | None = None
    mem_init_mb: float | None = None
    mem_overall_mb: float | None = None
    peak_mem_mb: float | None = None
    model_size_mb: float | None = None


def parse_benchmark_model_output(text: str) -> BenchmarkModelOutput:
    """Parse a benchmark_model log (with or without `INFO: ` / logcat prefixes); raise EdgeKDError on failure."""
    fail = _DELEGATE_FAIL.search(text)
    if fail:
        raise EdgeKDError(f"benchmark_model could not apply the {fail.group(1)} delegate on the device "
                          f"({_error_lines(text)}); run with delegate='xnnpack' (CPU) or check that the model's ops "
                          f"are supported by that delegate")
    m = _TIMINGS.search(text)
    if not m:
        raise EdgeKDError(f"benchmark_model printed no 'Inference timings in us' line: {_error_lines(text)}")
    stats = []
    for sm in _STAT.finditer(text):
        values = {k: float(v) for k, v in re.findall(r"(\w+)=" + _NUM, sm.group(2))}
        stats.append(RunStat(int(sm.group(1)), values))
    out = BenchmarkModelOutput(*(float(g) for g in m.groups()))
    # Run() logs the warm-up block first, then the timed block.
    if len(stats) >= 2:
        out.warmup, out.inference = stats[-2], stats[-1]
    elif stats:
        out.inference = stats[-1]
    if md := _MEM_DELTA.search(text):
        out.mem_init_mb, out.mem_overall_mb = float(md.group(1)), float(md.group(2))
    if mp := _PEAK.search(text):
        out.peak_mem_mb = float(mp.group(1))
    if ms := _SIZE.search(text):
        out.model_size_mb = float(ms.group(1))
    return out


def _error_lines(text: str, n: int = 3) -> str:
    lines = [ln.strip() for ln in text.splitlines() if re.search(r"ERROR|Error|error|failed|not found", ln)]
    return " | ".join(lines[-n:]) or (text.strip().splitlines() or ["(no output)"])[-1]


ADB_TRANSIENT = ("protocol fault", "device offline", "connection reset", "Connection reset", "closed",
                 "daemon not running", "cannot connect to daemon", "failed to start daemon", "device still connecting")
DEFAULT_CONNECT_TIMEOUT_S = 30.0
DEFAULT_COMMAND_TIMEOUT_S = 600.0
DEFAULT_RETRIES = 2


@dataclass(frozen=True)
class AdbTimeouts:
    """How long adb may take: `connect_timeout_s` for device listing, folder and property commands and clean-up;
    `command_timeout_s` for pushing files and the benchmark run; `retries` for transient adb failures."""

    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    command_timeout_s: float = DEFAULT_COMMAND_TIMEOUT_S
    retries: int = DEFAULT_RETRIES

    @classmethod
    def from_target(cls, target, timeout_s: float | None = None) -> "AdbTimeouts":
        """The target's connect settings; a per-call `timeout_s` replaces the command timeout and caps the other."""
        c = target.connect
        connect = float(c.get("connect_timeout_s") or DEFAULT_CONNECT_TIMEOUT_S)
        command = float(c.get("command_timeout_s") or DEFAULT_COMMAND_TIMEOUT_S)
        retries = c.get("retries")
        if timeout_s is not None:
            connect, command = min(connect, timeout_s), timeout_s
        return cls(connect, command, DEFAULT_RETRIES if retries is None else int(retries))


class Adb:
    """Thin adb wrapper: picks the device, runs commands with hard timeouts, turns adb's failures into EdgeKDError.

    Every adb call runs in its own process group, killed whole on a timeout (adb forks helpers that would keep its
    output open). Retried (at most `retries` more times, 1 s then 2 s apart) when adb exits non-zero saying the
    device or its daemon is momentarily unavailable (ADB_TRANSIENT: protocol fault, device offline, connection
    reset/closed, daemon (re)starting): `adb devices`, `mkdir`, `push`, `ls`, `chmod`, `getprop` and `rm`. Never
    retried: timeouts, and the benchmark run itself (a measurement is not repeated behind the user's back).
    """

    def __init__(self, serial: str | None = None, adb: str = "adb", timeouts: AdbTimeouts | None = None):
        exe = shutil.which(adb)
        if exe is None:
            raise EdgeKDError(f"adb not found on PATH ({adb!r}): install Android platform-tools (Debian: "
                              f"apt-get install adb) or pass adb='/path/to/adb'")
        self.exe = exe
        self.timeouts = timeouts or AdbTimeouts()
        self.serial = self._select(serial)

    def _call(self, args: list[str], timeout_s: float | None = None, retry: bool = True
              ) -> subprocess.CompletedProcess:
        timeout = timeout_s or self.timeouts.connect_timeout_s
        words = " ".join(args[2:] if args[:1] == ["-s"] else args)
        what = f"adb {words[:60]}{'...' if len(words) > 60 else ''}"

        def once() -> subprocess.CompletedProcess:
            try:
                return _process.run([self.exe, *args], timeout, what)
            except _process.DeviceTimeout as e:
                raise EdgeKDError(f"{e}; check the USB connection, or raise connect.connect_timeout_s / "
                                  f"connect.command_timeout_s in the target YAML (or --timeout)") from None

        transient = lambda text: any(t in text for t in ADB_TRANSIENT)  # noqa: E731
        return _process.with_retries(once, transient, self.timeouts.retries if retry else 0)

    def devices(self) -> list[tuple[str, str]]:
        """(serial, state) for every attached device, as `adb devices` lists them."""
        res = self._call(["devices"])
        if res.returncode != 0:
            raise EdgeKDError(f"'adb devices' failed: {(res.stderr or res.stdout).strip()}")
        out = []
        for line in res.stdout.splitlines():
            parts = line.split()
            if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
                out.append((parts[0], parts[1]))
        return out

    def _select(self, serial: str | None) -> str:
        devices = self.devices()
        if not devices:
            raise EdgeKDError("no Android device attached (adb devices lists none): connect the phone with USB "
                              "debugging on, or `adb connect HOST:PORT` for wireless debugging")
        states = dict(devices)
        if serial is None:
            if len(devices) > 1:
                raise EdgeKDError(f"several devices attached ({', '.join(s for s, _ in devices)}): set "
                                  f"connect.adb_serial in the target YAML or pass serial=")
            serial = devices[0][0]
        if serial not in states:
            raise EdgeKDError(f"device {serial!r} is not attached; adb lists: "
                              f"{', '.join(f'{s} ({st})' for s, st in devices)}")
        state = states[serial]
        if state == "unauthorized":
            raise EdgeKDError(f"device {serial} is unauthorized: unlock the phone and accept the 'Allow USB "
                              f"debugging' prompt for this computer, then retry")
        if state != "device":
            raise EdgeKDError(f"device {serial} is {state}: reconnect it (adb reconnect) until `adb devices` "
                              f"shows it as 'device'")
        return serial

    def shell(self, command: str, timeout_s: float | None = None, retry: bool = True
              ) -> subprocess.CompletedProcess:
        return self._call(["-s", self.serial, "shell", command], timeout_s, retry)

    def push(self, local: str | Path, remote: str) -> None:
        res = self._call(["-s", self.serial, "push", str(local), remote], self.timeouts.command_timeout_s)
        if res.returncode != 0:
            raise EdgeKDError(f"adb push {Path(local).name} -> {remote} failed: {(res.stderr or res.stdout).strip()}")

    def getprop(self, key: str) -> str:
        res = self.shell(f"getprop {key}")
        return res.stdout.strip() if res.returncode == 0 else ""


def profile_android(path: str | Path, target, threads: int | None = None, *, delegate: str = "xnnpack",
                    serial: str | None = None, benchmark_binary: str | Path | None = None,
                    remote_binary: str | None = None, warmup_runs: int = 10, num_runs: int = 50,
                    min_secs: float = 1.0, max_secs: float | None = None, timeout_s: float | None = None,
                    adb: str = "adb", precision: str | None = None, name: str | None = None) -> LatencyResult:
    """Run benchmark_model on the target's phone and return its timings as a measured LatencyResult.

    Args:
        delegate: cpu (no XNNPACK), xnnpack, gpu or nnapi.
        benchmark_binary: local path of an Android benchmark_model build to push; when None, the binary must be
            on the device already at `remote_binary` (default: the target's connect.benchmark_binary).
        timeout_s: the longest any one adb command may take (default: the target's connect.command_timeout_s,
            600 s, and connect.connect_timeout_s, 30 s, for the short ones).
    """
    from edgekd.profile.targets import load_target

    tgt = load_target(target)
    path = existing_model_file(path)
    return _measure(tgt, [Job(path, "litert", name or path.stem)], threads or tgt.threads, timeout_s,
                    dict(delegate=delegate, serial=serial, benchmark_binary=benchmark_binary,
                         remote_binary=remote_binary, warmup_runs=warmup_runs, num_runs=num_runs, min_secs=min_secs,
                         max_secs=max_secs, adb=adb, precision=precision))[0]


def measure(target, jobs: Sequence[Job], *, threads: int, progress: bool = False, timeout_s: float | None = None,
            time_cap_s: float | None = None, min_runs: int | None = None, **options) -> list[LatencyResult]:
    """The android runner: every job on one phone (time_cap_s -> --max_secs, min_runs -> --num_runs)."""
    if time_cap_s is not None:
        options.setdefault("max_secs", time_cap_s)
        options.setdefault("min_secs", min(1.0, time_cap_s))
    if min_runs is not None:
        options.setdefault("num_runs", min_runs)
    return _measure(target, jobs, threads, timeout_s, options)


def _measure(tgt, jobs: Sequence[Job], threads: int, timeout_s: float | None, opts: dict) -> list[LatencyResult]:
    delegate = opts.get("delegate", "xnnpack")
    from edgekd.formats import RUNTIMES

    suffixes = RUNTIMES.get("litert").suffixes  # benchmark_model is LiteRT's
    for job in jobs:
        if job.path.suffix.lower() not in suffixes:
            raise EdgeKDError(f"{job.path.name}: benchmark_model on Android runs {', '.join(suffixes)} files; "
                              f"export one first")
    if delegate not in DELEGATES:
        raise EdgeKDError(f"unknown delegate {delegate!r}; allowed: {', '.join(DELEGATES)}")
    binary = opts.get("benchmark_binary")
    if binary is not None and not Path(binary).is_file():
        raise EdgeKDError(f"benchmark_model binary not found: {binary} (give the path of the Android "
                          f"arm64 build, e.g. android_aarch64_benchmark_model)")
    device = Adb(opts.get("serial") or tgt.connect.get("adb_serial"), adb=opts.get("adb", "adb"),
                 timeouts=AdbTimeouts.from_target(tgt, timeout_s))
    remote_root = tgt.connect.get("remote_dir") or "/data/local/tmp"
    work = f"{remote_root.rstrip('/')}/edgekd-{uuid.uuid4().hex[:8]}"
    with _process.signals_raise():
        try:
            results = _run_jobs(device, tgt, work, jobs, threads, delegate, opts)
        except BaseException:
            try:  # remove what we pushed (briefly: the device may be the reason we are here), keep the error
                device.shell(f"rm -rf {shlex.quote(work)}", timeout_s=min(10.0, device.timeouts.connect_timeout_s),
                             retry=False)
            except EdgeKDError:
                pass
            raise
        device.shell(f"rm -rf {shlex.quote(work)}")
    return results


def _run_jobs(device: Adb, tgt, work: str, jobs: Sequence[Job], threads: int, delegate: str, opts: dict
              ) -> list[LatencyResult]:
    mk = device.shell(f"mkdir -p {shlex.quote(work)}")
    if mk.returncode != 0:
        raise EdgeKDError(f"cannot create {work} on {device.serial}: {(mk.stderr or mk.stdout).strip()}")
    local_binary = opts.get("benchmark_binary")
    if local_binary is not None:
        binary = f"{work}/benchmark_model"
        device.push(local_binary, binary)
        device.shell(f"chmod 755 {shlex.quote(binary)}")
        version = "benchmark_model (pushed " + Path(local_binary).name + ")"
    else:
        binary = opts.get("remote_binary") or tgt.connect.get("benchmark_binary") or "/data/local/tmp/benchmark_model"
        if device.shell(f"ls {shlex.quote(binary)}").returncode != 0:
            raise EdgeKDError(f"benchmark_model not found on {device.serial} at {binary}: pass "
                              f"benchmark_binary=<local Android build> to push it, or set "
                              f"connect.benchmark_binary to where it is")
        version = f"benchmark_model ({binary})"
    model = device.getprop("ro.product.model") or "android device"
    soc = device.getprop("ro.soc.model") or device.getprop("ro.board.platform")
    where = f"{model} ({soc}) [{device.serial}]" if soc else f"{model} [{device.serial}]"
    results = []
    for job in jobs:
        remote_model = f"{work}/{job.path.name}"
        device.push(job.path, remote_model)
        args = [binary, f"--graph={remote_model}", f"--num_threads={threads}",
                f"--warmup_runs={opts.get('warmup_runs', 10)}", f"--num_runs={opts.get('num_runs', 50)}",
                f"--min_secs={opts.get('min_secs', 1.0)}", "--report_peak_memory_footprint=true",
                *([f"--max_secs={opts['max_secs']}"] if opts.get("max_secs") is not None else []),
                *DELEGATES[delegate]]
        res = device.shell(" ".join(shlex.quote(a) for a in args), timeout_s=device.timeouts.command_timeout_s,
                           retry=False)
        text = res.stdout + "\n" + res.stderr
        parsed = parse_benchmark_model_output(text)  # delegate failures raise here, with their reason
        if res.returncode != 0:
            raise EdgeKDError(f"benchmark_model exited with status {res.returncode} on {device.serial}: "
                              f"{_error_lines(text)}")
        results.append(_to_result(parsed, job.path, tgt.name, threads, delegate, where, version,
                                  opts.get("precision"), job.name))
    return results


register_runner(Runner(kinds=("android",), measure=measure, check_connect=_process.check_timeouts,
                       connect_keys=frozenset({"adb_serial", "benchmark_binary", "remote_dir", "connect_timeout_s",
                                               "command_timeout_s", "retries"})))


def _to_result(p: BenchmarkModelOutput, path: Path, target: str, threads: int, delegate: str, device: str,
               version: str, precision: str | None, name: str | None) -> LatencyResult:
    inf = p.inference
    median = inf.get("median") if inf else None
    std = inf.get("std") if inf else None
    avg_ms = p.inference_avg_us / 1e3
    extra = {"delegate": delegate, "warmup_avg_ms": p.warmup_avg_us / 1e3,
             "p50_source": "median" if median is not None else "mean (benchmark_model printed no median)"}
    if inf and inf.get("p95") is not None:
        extra["p95_ms"] = inf.get("p95") / 1e3
    if p.mem_overall_mb is not None:
        extra["mem_overall_delta_mb"] = p.mem_overall_mb
    return LatencyResult(
        name=name or path.stem, runtime="litert", precision=precision or detect_precision(path), threads=threads,
        measured=True, p50_ms=(median if median is not None else p.inference_avg_us) / 1e3, p90_ms=None,
        p99_ms=None, mean_ms=avg_ms, std_ms=std / 1e3 if std is not None else None,
        cv=(std / p.inference_avg_us) if std is not None and p.inference_avg_us > 0 else None,
        cv_flag=bool(std is not None and p.inference_avg_us > 0 and std / p.inference_avg_us > 0.05),
        init_ms=p.init_us / 1e3, first_ms=p.first_us / 1e3,
        peak_mem_mb=p.peak_mem_mb if p.peak_mem_mb is not None else p.mem_overall_mb, bytes=file_bytes(path),
        runs=inf.count if inf else 0, runtime_version=version, device=device, target=target,
        min_ms=inf.get("min") / 1e3 if inf and inf.get("min") is not None else None,
        max_ms=inf.get("max") / 1e3 if inf and inf.get("max") is not None else None,
        stopped_by="benchmark_model", mem_method="benchmark_model" if p.peak_mem_mb or p.mem_overall_mb else "",
        extra=extra)
