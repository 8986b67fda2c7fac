"""Run a `.litertlm` in the LiteRT-LM runtime (PyPI `litert-lm-api`, `pip install 'edgekd[litertlm]'`; a
manylinux x86-64 wheel with the runtime's C library): verify it against the torch student and profile it with the
runtime's own benchmark (time to first token, prefill and decode tokens/s).

LiteRT-LM takes text, not token ids, so each held-out block is scored through a detokenize -> tokenize round trip
and only blocks whose ids survive it are scored (`blocks_scored`; the rest are counted in `blocks_skipped`):
the first two tokens are prefilled and `Session.run_text_scoring` returns the log-likelihood of every further
token, compared with the torch student's log-probabilities of the same ids. (Two, because after a one-token
prefill LiteRT-LM 0.18.1 scores the first target token as NaN: it holds the prompt's last token back.) Greedy
agreement compares the runtime's greedy continuation (sampler top_k = 1) of a prompt with the torch student's, token
by token after tokenizing the runtime's text.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.errors import EdgeKDError

INSTALL_HINT = "pip install 'edgekd[litertlm]' (PyPI litert-lm-api, the LiteRT-LM runtime)"


def available() -> bool:
    """Whether the LiteRT-LM Python runtime (`litert_lm`, from litert-lm-api) is importable."""
    return importlib.util.find_spec("litert_lm") is not None


def _lm():
    if not available():
        raise EdgeKDError(f"the LiteRT-LM runtime is not installed: {INSTALL_HINT}")
    import litert_lm

    litert_lm.set_min_log_severity(litert_lm.LogSeverity.ERROR)
    return litert_lm


def xnnpack_cache_dir() -> str:
    """Where LiteRT-LM keeps its XNNPACK weight caches: by default it writes them beside the .litertlm, i.e. into
    a run's published export folder."""
    from edgekd.lm.assets import work_cache

    folder = work_cache() / "litertlm-xnnpack"
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)


def open_engine(path: str | Path, threads: int = 1):
    """A LiteRT-LM Engine on the CPU backend for a .litertlm file."""
    lm = _lm()
    try:
        return lm.Engine(str(path), backend=lm.Backend.CPU(thread_count=threads), cache_dir=xnnpack_cache_dir(),
                         activation_data_type=lm.ActivationDataType.FLOAT32)
    except RuntimeError as e:
        raise EdgeKDError(f"LiteRT-LM could not load {Path(path).name}: {e}") from e


HEAD = 2  # prompt tokens prefilled before scoring (see the module docstring)


def _log_probs(reference, ids: np.ndarray) -> np.ndarray:
    """log p(ids[t] | ids[:t]) for t >= HEAD from a torch reference session (edgekd.lm.runtime)."""
    import torch

    from edgekd.lm.runtime import block_logits

    logits = torch.from_numpy(np.asarray(block_logits(reference, ids), np.float32))[HEAD - 1:-1]
    lp = torch.log_softmax(logits, -1).gather(1, torch.from_numpy(np.asarray(ids[HEAD:], np.int64))[:, None])
    return lp[:, 0].numpy()


def verify_litertlm(path: str | Path, reference, blocks, *, new_tokens: int = 16, prompt_len: int = 16,
                    threads: int = 1) -> dict[str, Any]:
    """{perplexity, reference_perplexity, max_abs_logprob_diff, greedy_agreement, greedy_prefix, blocks_scored,
    blocks_skipped} of a .litertlm run in LiteRT-LM, against `reference` (a KV-cache session: the torch student, or
    the LiteRT Interpreter on the .tflite inside the container, whose prefill length then sets the prompt)."""
    from edgekd.lm.runtime import greedy_generate

    lm = _lm()
    engine = open_engine(path, threads)
    data = np.asarray(blocks)[:, :reference.max_len] if reference.max_len else np.asarray(blocks)
    nll, ref_nll, count, diffs, skipped = 0.0, 0.0, 0, [], 0
    for ids in data:
        want_head, want_tail = [int(t) for t in ids[:HEAD]], [int(t) for t in ids[HEAD:]]
        head, tail = engine.detokenize(want_head), engine.detokenize(want_tail)
        if engine.tokenize(head) != want_head or engine.tokenize(tail) != want_tail:
            skipped += 1
            continue
        session = engine.create_session(apply_prompt_template=False)
        session.run_prefill([head])
        scores = np.asarray(session.run_text_scoring([tail]).token_scores[0], np.float64)
        session.close()
        ref = _log_probs(reference, ids).astype(np.float64)
        if scores.shape != ref.shape or not np.all(np.isfinite(scores)):
            raise EdgeKDError(f"LiteRT-LM scored {Path(path).name} badly: {scores.shape[0]} scores for a "
                              f"{ref.shape[0]}-token target, finite: {bool(np.all(np.isfinite(scores)))}")
        nll, ref_nll, count = nll - scores.sum(), ref_nll - ref.sum(), count + len(ref)
        diffs.append(float(np.abs(scores - ref).max()))
    agree, prefix = [], []
    prompt_len = getattr(reference, "prefill_len", None) or prompt_len   # a fixed-prefill reference takes only that
    greedy = lm.SamplerConfig(top_k=1)
    for ids in data[:2]:
        prompt = [int(t) for t in ids[:prompt_len]]
        session = engine.create_session(apply_prompt_template=False, sampler_config=greedy)
        session.run_prefill([engine.detokenize(prompt)])
        text = session.run_decode().texts[0]
        session.close()
        got = engine.tokenize(text)[:new_tokens]
        want = greedy_generate(reference, np.asarray(prompt), new_tokens)
        agree.append(sum(a == b for a, b in zip(got, want)) / new_tokens)
        prefix.append(next((i for i, (a, b) in enumerate(zip(got, want)) if a != b), min(len(got), len(want))))
    engine.close()
    if not count:
        raise EdgeKDError(f"no held-out block of {Path(path).name} survived the LiteRT-LM tokenizer round trip")
    return {"runtime": "litert-lm", "kind": "kv", "blocks_scored": len(diffs), "blocks_skipped": skipped,
            "max_abs_logprob_diff": max(diffs), "greedy_agreement": float(np.mean(agree)),
            "greedy_prefix": float(np.mean(prefix)), "new_tokens": new_tokens,
            "perplexity": math.exp(nll / count), "reference_perplexity": math.exp(ref_nll / count)}


def profile_litertlm(path: str | Path, prompt_len: int, decode_tokens: int = 16, repeats: int = 5,
                     threads: int = 1) -> dict[str, Any]:
    """LiteRT-LM's own benchmark (`litert_lm.Benchmark`: a prompt of `prompt_len` tokens, then `decode_tokens`
    decode steps), `repeats` times: {ttft_ms, prefill_tokens_per_s, decode_tokens_per_s} as {p50, p90} (p90 of a
    rate = its slow tail), plus the engine's init time."""
    lm = _lm()
    infos = []
    for _ in range(repeats):
        try:
            infos.append(lm.Benchmark(str(path), backend=lm.Backend.CPU(thread_count=threads),
                                      prefill_tokens=prompt_len, decode_tokens=decode_tokens,
                                      cache_dir=xnnpack_cache_dir()).run())
        except RuntimeError as e:
            raise EdgeKDError(f"LiteRT-LM benchmark of {Path(path).name} failed: {e}") from e

    def pct(xs, slow_high: bool):
        return {"p50": float(np.percentile(xs, 50)), "p90": float(np.percentile(xs, 90 if slow_high else 10))}

    return {"runtime": "litert-lm", "kind": "kv", "prompt_len": prompt_len, "decode_tokens": decode_tokens,
            "repeats": repeats, "decode_kind": "kv_cache", "threads": threads,
            "ttft_ms": pct([i.time_to_first_token_in_second * 1e3 for i in infos], True),
            "prefill_tokens_per_s": pct([i.last_prefill_tokens_per_second for i in infos], False),
            "decode_tokens_per_s": pct([i.last_decode_tokens_per_second for i in infos], False),
            "init_s": pct([i.init_time_in_second for i in infos], True),
            "timed_tokens": {"prefill": infos[-1].last_prefill_token_count,
                             "decode": infos[-1].last_decode_token_count},
            "method": "litert_lm.Benchmark (the runtime's own timers)"}


__all__ = ["INSTALL_HINT", "available", "open_engine", "profile_litertlm", "verify_litertlm"]
