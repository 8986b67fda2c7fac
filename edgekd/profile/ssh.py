"""Measure an .onnx file on a Jetson or Linux board over SSH: TensorRT's trtexec, or onnxruntime through
tools/remote_ort_bench.py.

Host keys are always checked (StrictHostKeyChecking=yes) against the target's known_hosts file (or the user's
default one): an unknown key fails with the command to add it, never a silent accept. The model and script go into
a fresh `mktemp -d` folder on the device, removed afterwards whatever happened.
"""
from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from edgekd.errors import EdgeKDError
from edgekd.fileio import existing_model_file
from edgekd.profile.result import LatencyResult, detect_precision, file_bytes, model_files
from edgekd.profile.stats import summarize
from edgekd.resources import shipped_path

REMOTE_SCRIPT = shipped_path("tools/remote_ort_bench.py")
TRTEXEC_FLAGS = {"fp32": [], "fp16": ["--fp16"], "int8": ["--int8", "--fp16"]}


@dataclass(frozen=True)
class SshConfig:
    """How to reach a board: `ssh -p port user@host` with strict host-key checking and timeouts."""

    host: str
    user: str | None = None
    port: int = 22
    known_hosts: str | None = None
    identity_file: str | None = None
    connect_timeout_s: float = 10.0
    command_timeout_s: float = 600.0
    python: str = "python3"
    trtexec: str = "trtexec"
    remote_dir: str = "/tmp"

    @classmethod
    def from_target(cls, target, **overrides) -> "SshConfig":
        c = {k: v for k, v in target.connect.items() if v is not None}
        c.update({k: v for k, v in overrides.items() if v is not None})
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


def _classify(stderr: str, cfg: SshConfig, what: str) -> EdgeKDError | None:
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


class Ssh:
    """Runs commands on and copies files to one board over one shared connection (ControlMaster), so each step
    costs no new handshake; SSH-level failures become EdgeKDError. Use as a context manager."""

    def __init__(self, cfg: SshConfig):
        self.cfg = cfg
        self._base = cfg.options()
        self._opts = list(self._base)
        self._control: str | None = None

    def __enter__(self) -> "Ssh":
        import tempfile

        # The master runs in the background; its stderr goes to a file, not a pipe, so no call waits on it.
        self._dir = tempfile.mkdtemp(prefix="edgekd-ssh-")
        control = f"{self._dir}/cm"
        log = Path(self._dir) / "master.log"
        argv = ["ssh", *self._base, "-p", str(self.cfg.port), "-M", "-N", "-f", "-o", f"ControlPath={control}",
                self.cfg.destination]
        with open(log, "w") as err:
            try:
                res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
                                     timeout=self.cfg.connect_timeout_s + 30)
            except FileNotFoundError as e:
                raise EdgeKDError("ssh not found on PATH: install the OpenSSH client (Debian: apt-get install "
                                  "openssh-client)") from e
            except subprocess.TimeoutExpired as e:
                raise EdgeKDError(f"connecting to {self.cfg.destination}:{self.cfg.port} did not finish within "
                                  f"{e.timeout:g} s") from e
        if res.returncode != 0:
            text = log.read_text()
            shutil.rmtree(self._dir, ignore_errors=True)
            raise _classify(text, self.cfg, "connecting") or EdgeKDError(
                f"ssh to {self.cfg.destination}:{self.cfg.port} failed: {text.strip()}")
        self._control = control
        self._opts = [*self._base, "-o", f"ControlPath={control}", "-o", "ControlMaster=no"]
        return self

    def __exit__(self, *exc) -> None:
        if self._control:
            subprocess.run(["ssh", "-o", f"ControlPath={self._control}", "-O", "exit", self.cfg.destination],
                           capture_output=True, timeout=30)
            self._control = None
        shutil.rmtree(self._dir, ignore_errors=True)

    def _call(self, argv: list[str], what: str, timeout_s: float | None) -> subprocess.CompletedProcess:
        timeout = timeout_s or self.cfg.command_timeout_s
        try:
            res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
        except FileNotFoundError as e:
            raise EdgeKDError(f"{argv[0]} not found on PATH: install the OpenSSH client (Debian: "
                              f"apt-get install openssh-client)") from e
        except subprocess.TimeoutExpired as e:
            raise EdgeKDError(f"{what} on {self.cfg.destination} did not finish within {timeout:g} s; raise "
                              f"connect.command_timeout_s or check the board") from e
        if res.returncode != 0:
            err = _classify(res.stderr, self.cfg, what)
            if err is not None:
                raise err
        return res

    def run(self, command: str, what: str = "remote command", timeout_s: float | None = None):
        argv = ["ssh", *self._opts, "-p", str(self.cfg.port), self.cfg.destination, command]
        res = self._call(argv, what, timeout_s)
        if res.returncode == 255:
            raise EdgeKDError(f"{what}: ssh to {self.cfg.destination} failed: {res.stderr.strip()}")
        return res

    def copy(self, local: str | Path, remote: str, timeout_s: float | None = None) -> None:
        argv = ["scp", "-q", *self._opts, "-P", str(self.cfg.port), str(local), f"{self.cfg.destination}:{remote}"]
        res = self._call(argv, f"copying {Path(local).name}", timeout_s)
        if res.returncode != 0:
            raise EdgeKDError(f"scp {Path(local).name} -> {self.cfg.destination}:{remote} failed: "
                              f"{res.stderr.strip()}")


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


def profile_ssh(path: str | Path, target, runtime: str = "onnxruntime", threads: int | None = None, *,
                precision: str | None = None, name: str | None = None, host: str | None = None,
                port: int | None = None, user: str | None = None, known_hosts: str | None = None,
                identity_file: str | None = None, python: str | None = None, trtexec: str | None = None,
                connect_timeout_s: float | None = None, command_timeout_s: float | None = None,
                time_cap_s: float = 10.0, min_runs: int = 30, warmup: int = 10,
                trtexec_duration_s: float = 3.0) -> LatencyResult:
    """Copy `path` to the target board, time it there (trtexec or onnxruntime), clean up, return the result.

    Keyword options override the target's connect settings. For tensorrt, `precision` picks the engine:
    fp32, fp16 (the usual baseline, default for float files) or int8 (--int8 --fp16; QDQ files carry scales).
    """
    from edgekd.profile.targets import load_target

    tgt = load_target(target)
    path = existing_model_file(path)
    if path.suffix.lower() != ".onnx":
        raise EdgeKDError(f"{path.name}: the SSH runner times .onnx files (trtexec / onnxruntime)")
    if runtime not in ("onnxruntime", "tensorrt"):
        raise EdgeKDError(f"runtime {runtime!r} cannot run over SSH; allowed: onnxruntime, tensorrt")
    cfg = SshConfig.from_target(tgt, host=host, port=port, user=user, known_hosts=known_hosts,
                                identity_file=identity_file, python=python, trtexec=trtexec,
                                connect_timeout_s=connect_timeout_s, command_timeout_s=command_timeout_s)
    threads = threads or tgt.threads
    file_precision = precision or detect_precision(path)
    with Ssh(cfg) as ssh:
        result = _profile_on(ssh, cfg, path, runtime, threads, precision, file_precision, time_cap_s, min_runs,
                             warmup, trtexec_duration_s)
    result.name, result.target, result.bytes = name or path.stem, tgt.name, file_bytes(path)
    return result


def _profile_on(ssh: Ssh, cfg: SshConfig, path: Path, runtime: str, threads: int, precision: str | None,
                file_precision: str, time_cap_s: float, min_runs: int, warmup: int,
                trtexec_duration_s: float) -> LatencyResult:
    res = ssh.run(f"mktemp -d {shlex.quote(cfg.remote_dir.rstrip('/') + '/edgekd.XXXXXX')}", "creating a temp folder")
    work = res.stdout.strip()
    if res.returncode != 0 or not work.startswith("/"):
        raise EdgeKDError(f"cannot create a temp folder under {cfg.remote_dir} on {cfg.host}: {res.stderr.strip()}")
    try:
        remote_model = f"{work}/{path.name}"
        for f in model_files(path):  # the .onnx and its external-data files, side by side as on the host
            ssh.copy(f, f"{work}/{f.name}")
        if runtime == "onnxruntime":
            result = _run_ort(ssh, cfg, work, remote_model, threads, time_cap_s, min_runs, warmup)
            result.precision = file_precision
        else:
            trt_precision = precision or ("int8" if file_precision == "int8" else "fp16")
            result = _run_trtexec(ssh, cfg, remote_model, trt_precision, trtexec_duration_s)
    except BaseException:
        try:  # clean up, but keep the error that brought us here
            ssh.run(f"rm -rf {shlex.quote(work)}", "removing the temp folder", timeout_s=60)
        except EdgeKDError:
            pass
        raise
    ssh.run(f"rm -rf {shlex.quote(work)}", "removing the temp folder", timeout_s=60)
    return result


def _run_ort(ssh: Ssh, cfg: SshConfig, work: str, remote_model: str, threads: int, time_cap_s: float,
             min_runs: int, warmup: int) -> LatencyResult:
    script = f"{work}/remote_ort_bench.py"
    ssh.copy(REMOTE_SCRIPT, script)
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
