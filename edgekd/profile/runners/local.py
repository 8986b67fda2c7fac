"""The cpu runner: measure model files on this machine's CPU with onnxruntime, LiteRT (XNNPACK) or torch (any
runtime of edgekd.formats.RUNTIMES that runs here), in this process.

Peak memory method: the process RSS is read with psutil just before the model is loaded (the runtime library is
imported first, so its own code pages are not counted); on Linux the kernel's RSS high-water mark (VmHWM) is
reset at that point (`echo 5 > /proc/self/clear_refs`) and read after the timed runs. peak_mem_mb is
max(VmHWM, RSS after load, after the first run, after the timed runs) - baseline RSS, in MiB; `mem_method` says
"vmhwm" or "rss_samples" (when the high-water mark cannot be reset, e.g. non-Linux). It is the model's share of
one process's resident memory (weights, arenas, activations), not an isolated allocation count.
"""
from __future__ import annotations

import difflib
import os
import platform
from pathlib import Path
from typing import Sequence

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.profile.result import LatencyResult, detect_precision, file_bytes
from edgekd.profile.runners import Job, Runner, register_runner
from edgekd.profile.stats import StopRule, summarize, time_until_stable
from edgekd.formats import RUNTIMES, get_runtime, open_session, runtime_for


def cpu_device_name(cpuinfo: str | Path = "/proc/cpuinfo") -> str:
    """A readable name for this CPU as detected: model name (from /proc/cpuinfo on Linux) and logical cores."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model} ({os.cpu_count()} logical cores, {platform.system()} {platform.machine()})"


def interactive() -> bool:
    """Whether a carriage-return progress bar may be drawn: stdout and stderr are both terminals (not a log)."""
    import sys

    return all(getattr(s, "isatty", lambda: False)() for s in (sys.stdout, sys.stderr))


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _release_free_heap() -> None:
    """Give memory freed earlier in this process back to the OS (glibc malloc_trim), so that a model loaded into
    heap pages that are still resident is counted: without it a second profile in one process can read 0 MiB."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline may then include reusable free pages
        pass


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_mb() -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _local_runtime(name: str):
    """The Runtime `name`, runnable here; unknown names fail with the closest runnable one, in one line."""
    if name not in RUNTIMES:
        local = [n for n in RUNTIMES.names() if RUNTIMES.get(n).open is not None]
        close = difflib.get_close_matches(str(name), local, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise EdgeKDError(f"unknown runtime {name!r}{hint} known: {', '.join(local)} (runnable here)")
    return get_runtime(name)


def make_input(shape: Sequence[int], seed: int = 0) -> np.ndarray:
    """A fixed random float32 batch; unknown (-1) dimensions become 1."""
    shape = tuple(1 if int(d) <= 0 else int(d) for d in shape)
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def profile_file(path: str | Path, runtime: str | None = None, threads: int = 1, *, warmup: int = 10,
                 min_runs: int = 30, max_runs: int = 5000, time_cap_s: float = 10.0, min_time_s: float = 0.5,
                 rel_tol: float = 0.01, block: int = 20, input_shape: Sequence[int] | None = None,
                 precision: str | None = None, name: str | None = None, progress: bool = False,
                 target: str = "cpu-local") -> LatencyResult:
    """Measure one file here: warm-up, then timed runs until the running median is stable (see StopRule).

    Args:
        runtime: a runtime runnable here (edgekd.formats.RUNTIMES: onnxruntime, litert, torch, ...); from the
            suffix when None.
        input_shape: needed for torch files (their input shape is not stored); else read from the file.
        precision: fp32 | int8 | fp16; detected from the file when None.
    """
    path = Path(path)
    runtime = runtime or runtime_for(path)
    rt = _local_runtime(runtime)
    if not isinstance(threads, int) or threads < 1:
        raise EdgeKDError(f"threads must be an integer >= 1, got {threads!r}")
    if warmup < 0:
        raise EdgeKDError(f"warmup must be >= 0 runs, got {warmup}")
    rule = StopRule(min_runs=min_runs, max_runs=max_runs, block=block, rel_tol=rel_tol, time_cap_s=time_cap_s,
                    min_time_s=min_time_s)
    if rt.module:
        __import__(rt.module)  # load the library before the memory baseline
    _release_free_heap()
    baseline = _rss_mb()
    hwm_ok = _reset_hwm()
    session = open_session(path, runtime=runtime, threads=threads)
    mem = [_rss_mb()]
    shape = tuple(input_shape) if input_shape is not None else session.input_shape
    if not shape:
        raise EdgeKDError(f"{path.name}: the input shape is not stored in a {runtime} file; pass input_shape, "
                          f"e.g. input_shape=(1, 1, 28, 28)")
    x = make_input(shape)
    import time

    t0 = time.perf_counter()
    session.run(x)
    first_ms = (time.perf_counter() - t0) * 1e3
    mem.append(_rss_mb())
    for _ in range(warmup):
        session.run(x)

    bar = None
    if progress and interactive():
        from edgekd.logs import progress_bar

        bar = progress_bar(total=None, unit="run", desc=f"{path.name} [{runtime}, {threads}t]", leave=False)
    try:
        samples, stopped_by = time_until_stable(lambda: session.run(x), rule,
                                                 bar.update if bar is not None else None)
    finally:
        if bar is not None:
            bar.close()
    mem.append(_rss_mb())
    hwm = _hwm_mb() if hwm_ok else None
    peak = max(mem + ([hwm] if hwm is not None else [])) - baseline
    s = summarize(samples)
    return LatencyResult(
        name=name or path.stem, runtime=runtime, precision=precision or detect_precision(path), threads=threads,
        measured=True, p50_ms=s.p50_ms, p90_ms=s.p90_ms, p99_ms=s.p99_ms, mean_ms=s.mean_ms, std_ms=s.std_ms,
        cv=s.cv, cv_flag=s.cv_flag, init_ms=session.init_ms, first_ms=first_ms, peak_mem_mb=max(peak, 0.0),
        bytes=file_bytes(path), runs=s.runs, runtime_version=session.version, device=cpu_device_name(),
        target=target, min_ms=s.min_ms, max_ms=s.max_ms, stopped_by=stopped_by,
        mem_method="vmhwm" if hwm is not None else "rss_samples")


def measure(target, jobs: Sequence[Job], *, threads: int, progress: bool = False, timeout_s: float | None = None,
            input_shape: Sequence[int] | None = None, **options) -> list[LatencyResult]:
    """The cpu runner: each job timed in this process (timeout_s does not apply: nothing can hang on a device).

    `input_shape` is used for torch files only, which do not store it; options go to profile_file.
    """
    return [profile_file(job.path, runtime=job.runtime, threads=threads, progress=progress, target=target.name,
                         name=job.name, input_shape=input_shape if job.runtime == "torch" else None, **options)
            for job in jobs]


register_runner(Runner(kinds=("cpu",), measure=measure, local=True, describe_host=cpu_device_name))
