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
            steps, cap = [], session.cache_shape[2]
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
