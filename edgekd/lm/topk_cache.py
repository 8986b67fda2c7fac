"""The teacher's top-k next-token logits for a fixed set of token blocks, computed once and memory-mapped.

Layout of one cache (a folder named by its key): `values.npy` float16 (N, T, k) raw logits, `indices.npy` int32
(N, T, k) token ids, `meta.json`. The key is sha256 over (format, teacher fingerprint, tokenizer fingerprint, the
token blocks' bytes — which fix the text and sequence length —, k). Any change gives another folder; students read
the arrays with `np.load(mmap_mode="r")`, so training never runs the teacher and never holds the whole cache in memory.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from edgekd.distill.cache import tensor_sha256
from edgekd.distill.losses import TopKLogits
from edgekd.errors import EdgeKDError

log = logging.getLogger(__name__)
FORMAT = 1


def tokenizer_fingerprint(tokenizer) -> str:
    """sha256 of the tokenizer's vocabulary (token -> id), special tokens included."""
    vocab = sorted(tokenizer.get_vocab().items())
    return hashlib.sha256(json.dumps(vocab).encode()).hexdigest()[:16]


def cache_key(teacher_fp: str, tokenizer_fp: str, blocks: Tensor, k: int,
              dtype: torch.dtype = torch.float32) -> str:
    payload = {"format": FORMAT, "teacher": teacher_fp, "tokenizer": tokenizer_fp, "blocks": tensor_sha256(blocks),
               "k": k}
    if dtype != torch.float32:  # the teacher's compute precision changes its logits: another cache
        payload["dtype"] = str(dtype).removeprefix("torch.")
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:24]


@dataclass
class TopKCache:
    """Memory-mapped top-k teacher logits; `cache[rows]` gives TopKLogits (float32 values, int64 indices)."""

    path: Path
    values: np.ndarray
    indices: np.ndarray
    meta: dict

    def __len__(self) -> int:
        return self.values.shape[0]

    def __getitem__(self, rows) -> TopKLogits:
        rows = np.asarray(rows)
        return TopKLogits(torch.from_numpy(np.ascontiguousarray(self.values[rows])).float(),
                          torch.from_numpy(np.ascontiguousarray(self.indices[rows])).long())

    @classmethod
    def open(cls, path: Path) -> "TopKCache":
        meta = json.loads((path / "meta.json").read_text())
        return cls(path, np.load(path / "values.npy", mmap_mode="r"), np.load(path / "indices.npy", mmap_mode="r"),
                   meta)


@torch.no_grad()
def build_topk_cache(teacher, blocks: Tensor, k: int, root: Path, *, teacher_fp: str, tokenizer_fp: str,
                     batch_size: int = 8, dtype: torch.dtype = torch.float32, log_fn=log.info) -> TopKCache:
    """Open the cache for (teacher, tokenizer, blocks, k, dtype) under `root`, running the teacher only if it is
    missing (so `teacher` may be None when the cache exists). dtype bfloat16 runs the teacher under CPU autocast."""
    if dtype not in (torch.float32, torch.bfloat16):
        raise EdgeKDError(f"teacher cache dtype must be float32 or bfloat16, got {dtype}")
    key = cache_key(teacher_fp, tokenizer_fp, blocks, k, dtype)
    path = Path(root) / key
    if (path / "meta.json").is_file():
        return TopKCache.open(path)
    if not 1 <= k <= teacher.config.vocab_size:
        raise EdgeKDError(f"teacher top-k must be between 1 and the vocabulary size {teacher.config.vocab_size}, "
                          f"got {k}")
    tmp = Path(root) / f".{key}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    n, t = blocks.shape
    values = np.lib.format.open_memmap(tmp / "values.npy", "w+", np.float16, (n, t, k))
    indices = np.lib.format.open_memmap(tmp / "indices.npy", "w+", np.int32, (n, t, k))
    start = time.perf_counter()
    for i in range(0, n, batch_size):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            logits = teacher(blocks[i:i + batch_size]).logits.float()
        top = logits.topk(k, dim=-1)
        values[i:i + batch_size] = top.values.numpy().astype(np.float16)
        indices[i:i + batch_size] = top.indices.numpy().astype(np.int32)
    seconds = time.perf_counter() - start
    values.flush(), indices.flush()
    del values, indices
    meta = {"format": FORMAT, "key": key, "teacher": teacher_fp, "tokenizer": tokenizer_fp, "blocks": [n, t],
            "k": k, "dtype": str(dtype).removeprefix("torch."), "seconds": round(seconds, 2), "tokens_per_s": round(n * t / max(seconds, 1e-9), 1)}
    (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    try:
        tmp.rename(path)
    except OSError:  # another process published the same key first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    log_fn(f"teacher top-{k} cache: {n}x{t} tokens in {seconds:.1f}s ({meta['tokens_per_s']} tokens/s) -> {path}")
    return TopKCache.open(path)
