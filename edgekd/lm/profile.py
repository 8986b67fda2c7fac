"""Time an LM file (or the torch reference) on this CPU: time to first token, prefill tokens/s, decode tokens/s,
as p50/p90 over repeats.

KV-cache sessions: TTFT = prefill of the prompt + argmax; decode = one cached step per token. Fixed-length
sessions have no cache: TTFT is one full forward over the window, and each further token costs another full
forward (`decode_kind: "full_recompute"`), which is what such a file costs on a device.
"""
from __future__ import annotations

import time
from typing import Any

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.lm.runtime import empty_cache


def _pct(xs: list[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(xs, 50)), "p90": float(np.percentile(xs, 90))}


def profile_session(session, prompt_len: int, decode_tokens: int = 16, repeats: int = 5, warmup: int = 1,
                    vocab_guard: int = 0) -> dict[str, Any]:
    """{ttft_ms, prefill_tokens_per_s, decode_tokens_per_s} each as {p50, p90}, plus what was timed."""
    prompt_len = session.prefill_len or session.seq_len or prompt_len
    ids = np.full((1, prompt_len), vocab_guard, np.int64)
    ttft, decode = [], []
    for r in range(warmup + repeats):
        if session.kind == "fixed":
            t0 = time.perf_counter()
            int(session.forward(ids)[0, -1].argmax())
            first = time.perf_counter() - t0
            steps = []
            for _ in range(decode_tokens):
                t0 = time.perf_counter()
                int(session.forward(ids)[0, -1].argmax())
                steps.append(time.perf_counter() - t0)
        else:
            k, v = empty_cache(session)
            t0 = time.perf_counter()
            logits, k, v = session.step(ids, np.arange(prompt_len), k, v)
            int(logits[0, -1].argmax())
            first = time.perf_counter() - t0
            steps, cap = [], session.max_len or prompt_len + decode_tokens
            for i in range(min(decode_tokens, cap - prompt_len)):
                t0 = time.perf_counter()
                logits, k, v = session.step(ids[:, :1], np.asarray([prompt_len + i]), k, v)
                int(logits[0, -1].argmax())
                steps.append(time.perf_counter() - t0)
        if r >= warmup:
            ttft.append(first)
            decode.append(float(np.median(steps)) if steps else float("nan"))
    return {"runtime": session.runtime, "kind": session.kind, "prompt_len": prompt_len, "decode_tokens": decode_tokens,
            "repeats": repeats, "decode_kind": "kv_cache" if session.kind == "kv" else "full_recompute",
            "ttft_ms": {k: v * 1e3 for k, v in _pct(ttft).items()},
            "prefill_tokens_per_s": {k: prompt_len / v for k, v in _pct(ttft).items()},
            "decode_tokens_per_s": {k: 1.0 / v for k, v in _pct(decode).items()}}


def peak_memory(path, prompt_len: int, decode_tokens: int = 16, threads: int = 1,
                timeout_s: float = 300.0) -> dict[str, Any]:
    """Peak resident memory of running one file, measured in a fresh child process (so the parent's torch,
    teacher and other sessions do not count): the child's `VmHWM` (peak RSS of its address space since exec, from
    /proc/self/status) after it opened the file and ran one prefill of `prompt_len` tokens and `decode_tokens`
    decode steps. (Not `getrusage().ru_maxrss`: Linux carries the parent's RSS at fork into an exec'ed child's
    ru_maxrss, which made a 60 KB model read 430 MB under pytest.)

    Returns {peak_rss_mb, baseline_rss_mb, session_peak_mb, method}: baseline = RSS once python, numpy and the
    runtime's package are imported; session_peak_mb = peak - baseline (weights, arena, activations, KV cache).
    """
    import json
    import subprocess
    import sys

    code = "from edgekd.lm.profile import _memory_probe; _memory_probe()"
    proc = subprocess.run([sys.executable, "-c", code, str(path), str(prompt_len), str(decode_tokens), str(threads)],
                          capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"memory probe exited {proc.returncode}: {tail}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB (kB in the file)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise EdgeKDError(f"/proc/self/status has no {field}: peak memory is measured on Linux only")


def _memory_probe() -> None:
    """Child side of `peak_memory` (argv: path prompt_len decode_tokens threads); prints one JSON line."""
    import json
    import sys
    from pathlib import Path

    from edgekd.lm.runtime import open_lm_session

    path, prompt_len, decode_tokens, threads = Path(sys.argv[1]), *map(int, sys.argv[2:5])
    if path.suffix == ".litertlm":  # LiteRT-LM's own benchmark: engine, prefill, decode
        from edgekd.lm import litertlm

        litertlm._lm()
        baseline = _status_mb("VmRSS")
        litertlm.profile_litertlm(path, prompt_len, decode_tokens, repeats=1, threads=threads)
        peak = _status_mb("VmHWM")
        print(json.dumps({"peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(baseline, 1),
                          "session_peak_mb": round(peak - baseline, 1),
                          "method": "child process VmHWM after litert_lm.Benchmark (engine + prefill + decode)"}))
        return
    if path.suffix == ".onnx":
        import onnxruntime  # noqa: F401  (library load is baseline, not the model's cost)
    else:
        import ai_edge_litert.interpreter  # noqa: F401
    baseline = _status_mb("VmRSS")
    session = open_lm_session(path, threads)
    profile_session(session, prompt_len, decode_tokens=decode_tokens, repeats=1, warmup=0)
    peak = _status_mb("VmHWM")
    print(json.dumps({"peak_rss_mb": round(peak, 1), "baseline_rss_mb": round(baseline, 1),
                      "session_peak_mb": round(peak - baseline, 1),
                      "method": "child process VmHWM (/proc/self/status) after open + prefill + decode"}))
