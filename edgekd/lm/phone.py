"""An LM file's speed on a phone target: measured over adb when a phone is attached, else PREDICTED from the
target YAML's peak figures, and labelled so (`source: "predicted"`, with the assumptions) — never as measured.

Measured: LiteRT's `benchmark_model` through edgekd.profile.runners.adb on the fixed-length .tflite files (one
invocation = one full forward over the window, i.e. the TTFT of that file). benchmark_model times whole-graph
invocations, so KV-cache decode steps are still predicted even with a phone attached.

Predicted (batch 1, the file's precision):
- decode, one token with a KV cache, is memory-bound: every weight byte is read once per token, plus the KV cache
  up to the position: t_mem = (file bytes + KV bytes) / (mem_gbps x MEM_EFFICIENCY); compute bounds it from
  below: t_ops = 2 x MACs per token / (peak ops/s x GEMV_EFFICIENCY); t = max of the two + the per-invocation
  overhead of the project's latency predictor priors (T0 + 3 us per matmul + 1.5 us per cheap op: 7 matmuls and
  ~15 cheap ops per layer, plus the LM head).
- prefill of P tokens is compute-bound: t = P x 2 x MACs per token / (peak ops/s x GEMM_EFFICIENCY) + one weight
  read + the same overhead; TTFT = prefill time.
The file size stands for the weight bytes read per token (an upper bound: a file holding the tied embedding as a
separate gather table counts it, though decode reads one row of it).
"""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

from edgekd.profile.predict.predictor import PRIOR_EFFICIENCY, PRIOR_MEM_EFFICIENCY, PRIOR_OVERHEAD_S, PRIOR_T0_S

MEM_EFFICIENCY = PRIOR_MEM_EFFICIENCY     # fraction of the YAML's DRAM bandwidth reached (the predictor's prior)
GEMM_EFFICIENCY = PRIOR_EFFICIENCY["gemm"]  # fraction of peak ops in prefill GEMMs (the predictor's gemm prior)
GEMV_EFFICIENCY = 0.1   # fraction of peak ops in batch-1 GEMVs (assumption)
MATMULS_PER_LAYER, CHEAP_OPS_PER_LAYER = 7, 15


def overhead_s(config: dict[str, Any]) -> float:
    """Fixed cost of one invocation: the predictor's T0 plus its per-op overheads for a Llama's ops."""
    layers = config["num_hidden_layers"]
    return (PRIOR_T0_S + (layers * MATMULS_PER_LAYER + 1) * PRIOR_OVERHEAD_S["mac"]
            + layers * CHEAP_OPS_PER_LAYER * PRIOR_OVERHEAD_S["cheap"])


def macs_per_token(config: dict[str, Any], position: int = 0) -> int:
    """Multiply-accumulates to process one token of a Llama config (projections, MLP, LM head, attention over
    `position` earlier tokens)."""
    h, layers, v = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads, kv = config["num_attention_heads"], config["num_key_value_heads"]
    hd = config.get("head_dim") or h // heads
    inter = config["intermediate_size"]
    per_layer = h * heads * hd * 2 + h * kv * hd * 2 + 3 * h * inter + 2 * heads * hd * (position + 1)
    return layers * per_layer + h * v


def kv_bytes(config: dict[str, Any], position: int, dtype_bytes: int = 4) -> int:
    hd = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * hd * position * dtype_bytes


def predict_lm_speed(target, file_bytes: int, config: dict[str, Any], *, precision: str, prompt_len: int,
                     decode_tokens: int) -> dict[str, Any]:
    """PREDICTED TTFT, prefill and decode tokens/s of a KV-cache file on `target` (an edgekd Target)."""
    ops = target.peak.ops_per_s(precision)
    bandwidth = target.peak.mem_gbps * 1e9 * MEM_EFFICIENCY
    fixed = overhead_s(config)
    prefill_s = prompt_len * 2 * macs_per_token(config, prompt_len // 2) / (ops * GEMM_EFFICIENCY) \
        + file_bytes / bandwidth + fixed
    mid = prompt_len + decode_tokens // 2
    t_mem = (file_bytes + kv_bytes(config, mid)) / bandwidth
    t_ops = 2 * macs_per_token(config, mid) / (ops * GEMV_EFFICIENCY)
    decode_s = max(t_mem, t_ops) + fixed
    return {"source": "predicted", "target": target.name, "precision": precision, "threads": target.threads,
            "prompt_len": prompt_len, "decode_tokens": decode_tokens,
            "ttft_ms": prefill_s * 1e3, "prefill_tokens_per_s": prompt_len / prefill_s,
            "decode_tokens_per_s": 1.0 / decode_s, "decode_bound": "memory" if t_mem >= t_ops else "compute",
            "assumptions": (f"decode = max((file bytes + KV bytes) / ({target.peak.mem_gbps} GB/s x "
                            f"{MEM_EFFICIENCY}), 2 x MACs / ({ops / 1e9:.0f} G{precision} op/s x {GEMV_EFFICIENCY})) + "
                            f"{fixed * 1e6:.0f} us op overhead; prefill = P x 2 x MACs / (peak x {GEMM_EFFICIENCY}) "
                            f"+ one weight read + overhead; peak figures "
                            f"from targets/{target.name}.yaml (estimates, see its comments); not measured")}


def attached_phone(adb: str = "adb") -> str | None:
    """The serial of an attached Android device in state 'device', or None (no adb, no phone)."""
    exe = shutil.which(adb)
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "devices"], capture_output=True, text=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in out.splitlines()[1:]:
        parts = line.split()
        if len(parts) >= 2 and parts[1] == "device":
            return parts[0]
    return None


def phone_figures(target_name: str, files: dict[str, Path], config: dict[str, Any], *, prompt_len: int,
                  decode_tokens: int, serial: str | None = None) -> dict[str, dict[str, Any]]:
    """{file name: record} for the .tflite files on one phone target: KV-cache files predicted; fixed-length
    files measured over adb when `serial` names an attached phone (without one they are left out: their cost is
    a full forward per token, which the KV-cache prediction does not model)."""
    from edgekd.profile.targets import load_target

    target = load_target(target_name)
    out: dict[str, dict[str, Any]] = {}
    for name, path in files.items():
        if not name.endswith(".tflite"):
            continue
        precision = "int8" if ".int8." in name else "fp32"
        if ".kv." in name:
            out[name] = predict_lm_speed(target, path.stat().st_size, config, precision=precision,
                                         prompt_len=prompt_len, decode_tokens=decode_tokens)
        elif serial is not None:
            from edgekd.profile.runners.adb import profile_android

            r = profile_android(path, target, serial=serial, precision=precision, name=name)
            out[name] = {"source": "measured", "target": target.name, "device": r.device, "precision": precision,
                         "threads": r.threads, "full_forward_ms": {"p50": r.p50_ms, "p90": r.p90_ms}, "ttft_ms": r.p50_ms,
                         "peak_mem_mb": r.peak_mem_mb,
                         "note": "benchmark_model over adb: one full forward over the fixed window (= TTFT)"}
    return out
