"""Check an exported LM file against the torch student it came from, in the file's own runtime:
logit parity, greedy-generation agreement over N tokens, and perplexity on held-out token blocks."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from edgekd.lm.runtime import TorchSession, block_logits, greedy_generate


def _nll(logits: np.ndarray, block: np.ndarray) -> tuple[float, int]:
    z = torch.from_numpy(np.asarray(logits, np.float32))[:-1]
    y = torch.from_numpy(np.asarray(block, np.int64))[1:]
    return float(torch.nn.functional.cross_entropy(z, y, reduction="sum")), len(y)


def session_perplexity(session, blocks: np.ndarray) -> float:
    """Perplexity of next-token prediction over (N, T) blocks run one at a time in `session`."""
    total, count = 0.0, 0
    for block in blocks:
        s, c = _nll(block_logits(session, block), block)
        total, count = total + s, count + c
    return math.exp(total / max(count, 1))


def fit_blocks(session, blocks: torch.Tensor) -> np.ndarray:
    """The blocks cut to the length the session takes (its fixed length, or its prefill length)."""
    length = session.seq_len or session.prefill_len or blocks.shape[1]
    return blocks[:, :length].numpy()


def verify_file(session, reference: TorchSession, blocks: torch.Tensor, *, new_tokens: int = 16,
                prompt_len: int = 16, pad_id: int = 0) -> dict[str, Any]:
    """{max_abs_logit_diff, greedy_agreement, greedy_prefix, perplexity, reference_perplexity} for one file.

    Parity and perplexity use `blocks`; generation starts from each block's first `prompt_len` tokens (the
    prefill length for a fixed-prefill KV file) and compares `new_tokens` greedy tokens position by position
    (`greedy_prefix`: tokens identical before the first difference, averaged).
    """
    data = fit_blocks(session, blocks)
    diffs = [float(np.abs(block_logits(session, b) - block_logits(reference, b)).max()) for b in data[:2]]
    prompt_len = session.prefill_len or prompt_len
    agree, prefix = [], []
    for b in data[:2]:
        a = greedy_generate(session, b[:prompt_len], new_tokens, pad_id)
        r = greedy_generate(reference, b[:prompt_len], new_tokens, pad_id)
        agree.append(float(np.mean(np.asarray(a) == np.asarray(r))))
        prefix.append(next((i for i, (x, y) in enumerate(zip(a, r)) if x != y), len(a)))
    return {"runtime": session.runtime, "kind": session.kind, "blocks": list(data.shape),
            "max_abs_logit_diff": max(diffs), "greedy_agreement": float(np.mean(agree)),
            "greedy_prefix": float(np.mean(prefix)), "new_tokens": new_tokens,
            "perplexity": session_perplexity(session, data),
            "reference_perplexity": session_perplexity(reference, data)}
