"""The steps a causal-LM run shares between the recipe stages and tools/bench_lm.py: token data with a held-out
split, the teacher's signals (top-k cache, sequence-level KD text), training one method, evaluating a student."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import Tensor

from edgekd.lm.corpus import load_documents, moby_dick, split_by_year, token_blocks
from edgekd.lm.evaluate import perplexity
from edgekd.lm.methods import Method
from edgekd.lm.objectives import TokenObjective
from edgekd.lm.seqkd import teacher_continuations
from edgekd.lm.student import StudentSpec, build_student, parameter_count
from edgekd.lm.topk_cache import TopKCache, build_topk_cache, tokenizer_fingerprint
from edgekd.lm.train import LMTrainConfig, train_lm


@dataclass
class LMData:
    train: Tensor                 # (N, T) training blocks
    heldout: Tensor               # (M, T) held-out blocks of the same source
    ood: Tensor | None = None     # (M, T) out-of-domain blocks (Moby-Dick), when asked for
    describe: dict[str, Any] | None = None


def load_lm_data(tokenizer, *, source: str | list[str] = "sotu", seq_len: int = 128, train_blocks: int = 64,
                 eval_blocks: int = 8, heldout_last: int = 10, years: tuple[int, int] | None = None,
                 ood: bool = True, max_chars: int | None = 40_000) -> LMData:
    """Blocks from the most recent training documents (newest first, up to `train_blocks`) and from the
    `heldout_last` held-out ones; plus Moby-Dick blocks as out-of-domain text."""
    docs = load_documents(source, years)
    train_docs, held_docs = split_by_year(docs, heldout_last)
    train = token_blocks(tokenizer, list(reversed(train_docs)), seq_len, train_blocks, max_chars)
    held = token_blocks(tokenizer, held_docs, seq_len, eval_blocks, max_chars)
    ood_blocks = token_blocks(tokenizer, moby_dick(), seq_len, eval_blocks, 200_000) if ood else None
    desc = {"source": source, "seq_len": seq_len, "train_blocks": len(train), "train_tokens": train.numel(),
            "train_docs": [d.name for d in train_docs[-3:]], "heldout_docs": [d.name for d in held_docs],
            "eval_blocks": len(held), "heldout_last": heldout_last}
    return LMData(train, held, ood_blocks, desc)


def teacher_signals(teacher, tokenizer, teacher_fp: str, data: LMData, *, topk: int, cache_root: Path,
                    seqkd_prompt: int | None, dtype: torch.dtype = torch.float32,
                    log: Callable[[str], None] = print) -> dict[str, Any]:
    """{cache, seqkd_blocks, cache_meta, seqkd_tokens_per_s}: the teacher run once; students never run it.

    `dtype` is the teacher's compute precision for the top-k cache (bfloat16: CPU autocast). The sequence-level KD
    text is always written in float32: greedy decoding amplifies bf16 rounding (measured: only 65 % of bf16 greedy
    tokens matched fp32 on 16 SOTU prompts, and bf16 cached decoding was not faster at batch 16)."""
    start = time.perf_counter()
    cache = build_topk_cache(teacher, data.train, topk, cache_root, teacher_fp=teacher_fp,
                             tokenizer_fp=tokenizer_fingerprint(tokenizer), dtype=dtype, log_fn=log)
    cache_seconds = time.perf_counter() - start
    out: dict[str, Any] = {"cache": cache, "cache_meta": cache.meta, "seqkd_blocks": None,
                           "cache_open_seconds": round(cache_seconds, 1)}
    if seqkd_prompt:
        start = time.perf_counter()
        blocks, tps = teacher_continuations(teacher, data.train, seqkd_prompt)
        out.update(seqkd_blocks=blocks, seqkd_tokens_per_s=round(tps, 1),
                   seqkd_seconds=round(time.perf_counter() - start, 1))
        log(f"sequence-level KD text: {len(blocks)} continuations at {tps:.1f} teacher tokens/s")
    return out


def train_method(method: Method, teacher, data: LMData, spec: StudentSpec, cfg: LMTrainConfig, *,
                 cache: TopKCache | None, seqkd_blocks: Tensor | None,
                 log: Callable[[str], None] | None = None) -> tuple[Any, dict[str, Any]]:
    """Build the student (seeded by cfg.seed), train it with `method`, return (student, record)."""
    student = build_student(teacher, StudentSpec(**{**spec.to_dict(), "init": method.init}), seed=cfg.seed)
    text = data.train if method.text == "data" else seqkd_blocks
    if text is None:
        raise ValueError(f"method {method.name} needs the sequence-level KD text (seqkd_prompt)")
    result = train_lm(student, text, TokenObjective(list(method.terms)), cfg,
                      cache=cache if method.needs_cache else None, log_fn=log)
    record = {"method": method.name, "init": method.init, "text": method.text,
              "terms": [{"name": t.name, "weight": t.weight, **t.options} for t in method.terms],
              "params": parameter_count(student), "seed": cfg.seed, **evaluate_student(student, data),
              "train": result}
    return student, record


def evaluate_student(model, data: LMData) -> dict[str, float]:
    out = {"ppl_heldout": perplexity(model, data.heldout)}
    if data.ood is not None:
        out["ppl_ood"] = perplexity(model, data.ood)
    return out


