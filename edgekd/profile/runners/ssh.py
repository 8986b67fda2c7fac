"""The jetson/linux runner: measure .onnx files on a board over SSH with TensorRT's trtexec, or with onnxruntime
through tools/remote_ort_bench.py.

The connection (host-key checking, option-injection guards, timeouts, retries, clean-up after errors, signals and
kills) is `_ssh_session.Ssh`'s. One connection serves every file of a `measure` call; each file goes into a fresh
`mktemp -d` folder on the device, removed afterwards whatever happened.
"""
from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from edgekd.errors import EdgeKDError
from edgekd.fileio import existing_model_file
from edgekd.profile.result import LatencyResult, detect_precision, file_bytes, model_files
from edgekd.profile.runners import Job, Runner, _process, register_runner
from edgekd.profile.runners._ssh_session import Ssh, SshConfig, check_name
from edgekd.profile.stats import summarize

SSH_RUNTIMES = ("onnxruntime", "tensorrt")  # remote_ort_bench.py and trtexec
TRTEXEC_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}


@dataclass
class TrtexecOutput:
    """trtexec's summary: host latency statistics in ms (TensorRT 8+ one-line form or 7.x block form)."""

    latency_ms: dict[str, float]
    throughput_qps: float | None = None
    gpu_compute_ms: dict[str, float] | None = None
    engine_build_s: float | None = None
    trt_version: str | None = None
    device: str | None = None
    queries: int | None = None


_N = r"([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)"


def _one_line_stats(text: str, label: str) -> dict[str, float] | None:
    m = re.search(r"(?:^|\]\s)" + re.escape(label) + r": (min = .*)$", text, re.M)
    if not m:
        return None
    out = {}
    for key, val in re.findall(r"(min|max|mean|median|percentile\(\d+(?:\.\d+)?%\)) = " + _N + " ms", m.group(1)):
        pm = re.match(r"percentile\((\d+(?:\.\d+)?)%\)", key)
        out[f"p{float(pm.group(1)):g}" if pm else key] = float(val)
    return out


def _block_stats(text: str, header: str) -> dict[str, float] | None:
    """TensorRT 7.x: a `Host Latency` / `GPU Compute` header line, then `min: X ms ...` lines."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.search(r"\]\s" + re.escape(header) + r"\s*$", line):
            out = {}
            for nxt in lines[i + 1:i + 8]:
                m = re.search(r"\]\s(min|max|mean|median): " + _N + " ms", nxt)
                p = re.search(r"\]\spercentile: " + _N + r" ms at (\d+(?:\.\d+)?)%", nxt)
                if m:
                    out[m.group(1)] = float(m.group(2))
                elif p:
                    out[f"p{float(p.group(2)):g}"] = float(p.group(1))
                elif out:
                    break
            return out or None
    return None


def parse_trtexec_output(text: str) -> TrtexecOutput:
    """Parse trtexec's log; raise EdgeKDError with its [E] lines when it failed."""
    if "&&&& FAILED" in text or not re.search(r"Latency|GPU Compute", text):
        errors = [ln.split("] ", 2)[-1].strip() for ln in text.splitlines() if "[E]" in ln]
        raise EdgeKDError("trtexec failed: " + (" | ".join(errors[-3:]) or text.strip()[-300:] or "(no output)"))
    latency = _one_line_stats(text, "Latency") or _block_stats(text, "Host Latency")
    if not latency:
        raise EdgeKDError("trtexec output has no latency summary (neither 'Latency: min = ...' nor a "
                          "'Host Latency' block); was it run with --skipInference?")
    gpu = _one_line_stats(text, "GPU Compute Time") or _block_stats(text, "GPU Compute")
    out = TrtexecOutput(latency, gpu_compute_ms=gpu)
    if m := re.search(r"\]\s[Tt]hroughput: " + _N + " qps", text):
        out.throughput_qps = float(m.group(1))
    if m := re.search(r"Engine built in " + _N + " sec", text):
        out.engine_build_s = float(m.group(1))
    if m := re.search(r"TensorRT version: (\S+)", text) or re.search(r"\[TensorRT v(\d+)\]", text):
        out.trt_version = m.group(1)
    if m := re.search(r"Selected Device: (.+)$", text, re.M):
        out.device = m.group(1).strip()
    if m := re.search(r"Timing trace has (\d+) queries", text):
        out.queries = int(m.group(1))
    return out


def remote_script() -> Path:
    """The device-side ONNX Runtime benchmark copied to the board."""
    from edgekd.resources import shipped_path

    return shipped_path("tools/remote_ort_bench.py")


def profile_ssh(path: str | Path, target, runtime: str = "onnxruntime", threads: int | None = None, *,
                precision: str | None = None, name: str | None = None, host: str | None = None,
                port: int | None = None, user: str | None = None, known_hosts: str | None = None,
                identity_file: str | None = None, python: str | None = None, trtexec: str | None = None,
                connect_timeout_s: float | None = None, command_timeout_s: float | None = None,
                timeout_s: float | None = None, time_cap_s: float = 10.0, min_runs: int = 30, warmup: int = 10,
                trtexec_duration_s: float = 3.0) -> LatencyResult:
    """Copy `path` to the target board, time it there (trtexec or onnxruntime), clean up, return the result.

    Keyword options override the target's connect settings; `timeout_s` bounds every remote command (and caps the
    connect timeout). For tensorrt, `precision` picks the engine: fp32, fp16 (the usual baseline, default for
    float files) or int8 (--int8 --fp16; QDQ files carry scales).
    """
    from edgekd.profile.targets import load_target

    tgt = load_target(target)
    path = existing_model_file(path)
    overrides = dict(host=host, port=port, user=user, known_hosts=known_hosts, identity_file=identity_file,
                     python=python, trtexec=trtexec, connect_timeout_s=connect_timeout_s,
                     command_timeout_s=command_timeout_s)
    return measure(tgt, [Job(path, runtime, name or path.stem)], threads=threads or tgt.threads, timeout_s=timeout_s,
                   precision=precision, time_cap_s=time_cap_s, min_runs=min_runs, warmup=warmup,
                   trtexec_duration_s=trtexec_duration_s, connect=overrides)[0]


def measure(target, jobs: Sequence[Job], *, threads: int, progress: bool = False, timeout_s: float | None = None,
            precision: str | None = None, time_cap_s: float = 10.0, min_runs: int = 30, warmup: int = 10,
            trtexec_duration_s: float = 3.0, connect: dict | None = None) -> list[LatencyResult]:
    """The jetson/linux runner: every job over one SSH connection (`connect` overrides the target's settings)."""
    from edgekd.formats import RUNTIMES

    for job in jobs:
        if job.runtime not in SSH_RUNTIMES:
            raise EdgeKDError(f"runtime {job.runtime!r} cannot run over SSH; allowed: {', '.join(SSH_RUNTIMES)}")
        suffixes = RUNTIMES.get(job.runtime).suffixes
        if job.path.suffix.lower() not in suffixes:
            raise EdgeKDError(f"{job.path.name}: {job.runtime} over SSH times {', '.join(suffixes)} files "
                              f"(trtexec / remote_ort_bench.py)")
    cfg = SshConfig.from_target(target, timeout_s, **(connect or {}))
    results = []
    with Ssh(cfg) as ssh:
        for job in jobs:
            file_precision = precision or detect_precision(job.path)
            work = ssh.make_temp()
            try:
                result = _profile_on(ssh, cfg, work, job, threads, precision, file_precision, time_cap_s,
                                     min_runs, warmup, trtexec_duration_s)
            finally:
                ssh.remove_temp(work)
            result.name, result.target, result.bytes = job.name, target.name, file_bytes(job.path)
            results.append(result)
    return results


def _profile_on(ssh: Ssh, cfg: SshConfig, work: str, job: Job, threads: int, precision: str | None,
                file_precision: str, time_cap_s: float, min_runs: int, warmup: int,
                trtexec_duration_s: float) -> LatencyResult:
    remote_model = f"{work}/{job.path.name}"
    for f in model_files(job.path):  # the .onnx and its external-data files, side by side as on the host
        ssh.copy(f, f"{work}/{f.name}")
    if job.runtime == "onnxruntime":
        result = _run_ort(ssh, cfg, work, remote_model, threads, time_cap_s, min_runs, warmup)
        result.precision = file_precision
        return result
    trt_precision = precision or ("int8" if file_precision == "int8" else "fp16")
    return _run_trtexec(ssh, cfg, remote_model, trt_precision, trtexec_duration_s)


def _run_ort(ssh: Ssh, cfg: SshConfig, work: str, remote_model: str, threads: int, time_cap_s: float,
             min_runs: int, warmup: int) -> LatencyResult:
    script = f"{work}/remote_ort_bench.py"
    ssh.copy(remote_script(), script)
    cmd = " ".join(shlex.quote(a) for a in [cfg.python, script, remote_model, "--threads", str(threads),
                                             "--time-cap", str(time_cap_s), "--min-runs", str(min_runs),
                                             "--warmup", str(warmup)])
    res = ssh.run(cmd, "remote onnxruntime benchmark")
    if res.returncode == 127:
        raise EdgeKDError(f"python not found on {cfg.host} ({cfg.python!r}): install python3 there or set "
                          f"connect.python to its path")
    last = (res.stdout.strip().splitlines() or [""])[-1]
    try:
        data = json.loads(last)
    except json.JSONDecodeError:
        raise EdgeKDError(f"remote_ort_bench.py on {cfg.host} exited {res.returncode} without a JSON result: "
                          f"{(res.stderr.strip() or res.stdout.strip())[-300:]}") from None
    if "error" in data:
        hint = " (set connect.python to an interpreter that has it)" if data.get("kind") == "missing_onnxruntime" \
            else ""
        raise EdgeKDError(f"on {cfg.host}: {data['error']}{hint}")
    s = summarize(data["samples_ms"])
    return LatencyResult(
        name="", runtime="onnxruntime", precision="", threads=threads, measured=True, p50_ms=s.p50_ms,
        p90_ms=s.p90_ms, p99_ms=s.p99_ms, mean_ms=s.mean_ms, std_ms=s.std_ms, cv=s.cv, cv_flag=s.cv_flag,
        init_ms=data["init_ms"], first_ms=data["first_ms"], peak_mem_mb=data.get("peak_mem_mb"), runs=s.runs,
        runtime_version=f"onnxruntime {data['runtime_version']}", device=f"{data['device']} [{cfg.host}]",
        min_ms=s.min_ms, max_ms=s.max_ms, stopped_by=data.get("stopped_by", ""),
        mem_method=data.get("mem_method", ""), extra={"providers": data.get("providers")})


def _run_trtexec(ssh: Ssh, cfg: SshConfig, remote_model: str, precision: str, duration_s: float) -> LatencyResult:
    if precision not in TRTEXEC_FLAGS:
        raise EdgeKDError(f"TensorRT precision {precision!r} unknown; allowed: {', '.join(TRTEXEC_FLAGS)}")
    args = [cfg.trtexec, f"--onnx={remote_model}", *TRTEXEC_FLAGS[precision], "--avgRuns=100",
            f"--duration={max(1, int(round(duration_s)))}", "--warmUp=500"]
    res = ssh.run(" ".join(shlex.quote(a) for a in args), "trtexec")
    if res.returncode == 127:
        raise EdgeKDError(f"trtexec not found on {cfg.host} at {cfg.trtexec!r}: install TensorRT (JetPack) or set "
                          f"connect.trtexec (usually /usr/src/tensorrt/bin/trtexec)")
    out = parse_trtexec_output(res.stdout + "\n" + res.stderr)
    lat = out.latency_ms
    extra = {"throughput_qps": out.throughput_qps, "engine_build_s": out.engine_build_s,
             "gpu_compute_ms": out.gpu_compute_ms, "latency_kind": "trtexec host latency (H2D + compute + D2H)"}
    if "p95" in lat:
        extra["p95_ms"] = lat["p95"]
    return LatencyResult(
        name="", runtime="tensorrt", precision=precision, threads=1, measured=True,
        p50_ms=lat.get("median", lat.get("mean")), p90_ms=lat.get("p90"), p99_ms=lat.get("p99"),
        mean_ms=lat.get("mean"), init_ms=out.engine_build_s * 1e3 if out.engine_build_s else None,
        runs=out.queries or 0, runtime_version=f"TensorRT {out.trt_version or 'unknown'}",
        device=f"{out.device or 'Jetson'} [{cfg.host}]", min_ms=lat.get("min"), max_ms=lat.get("max"),
        stopped_by="trtexec", extra=extra)


def _check_connect(connect: dict) -> list[str]:
    if not isinstance(connect.get("host"), str) or not connect.get("host"):
        problems = ["connect.host: a jetson/linux target needs the SSH host name or address"]
    else:
        problems = [p for p in (check_name("host", connect["host"]),) if p]
    if connect.get("user") is not None and (p := check_name("user", connect["user"])):
        problems.append(p)
    port = connect.get("port", 22)
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        problems.append(f"connect.port: must be an integer 1..65535, got {port!r}")
    return problems + _process.check_timeouts(connect)


register_runner(Runner(
    kinds=("jetson", "linux"), measure=measure, check_connect=_check_connect,
    connect_keys=frozenset({"host", "user", "port", "known_hosts", "identity_file", "python", "trtexec", "remote_dir",
                            "connect_timeout_s", "command_timeout_s", "retries"})))
