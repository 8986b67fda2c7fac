"""Perplexity and greedy generation of a torch causal LM (the reference the exported files are compared with)."""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def nll_sum(logits: Tensor, blocks: Tensor) -> tuple[float, int]:
    """Summed next-token negative log-likelihood of `blocks` (B, T) under `logits` (B, T, V), and the count."""
    logp = F.log_softmax(logits[:, :-1].float(), -1).gather(-1, blocks[:, 1:, None]).squeeze(-1)
    return float(-logp.sum()), logp.numel()


def perplexity_from(logits_fn: Callable[[Tensor], Tensor], blocks: Tensor, batch_size: int = 8) -> float:
    """exp(mean NLL) of next-token prediction over (N, T) blocks; `logits_fn` maps (b, T) ids to (b, T, V) logits."""
    total, count = 0.0, 0
    for i in range(0, len(blocks), batch_size):
        s, c = nll_sum(logits_fn(blocks[i:i + batch_size]), blocks[i:i + batch_size])
        total, count = total + s, count + c
    return math.exp(total / max(count, 1))


@torch.no_grad()
def perplexity(model, blocks: Tensor, batch_size: int = 8) -> float:
    """Perplexity of a transformers causal LM on (N, T) token blocks (each block scored on its own)."""
    model.eval()
    return perplexity_from(lambda x: model(x).logits, blocks, batch_size)


@torch.no_grad()
def greedy(model, prompt: Tensor, new_tokens: int) -> Tensor:
    """(1, P + new_tokens) greedy continuation with the model's own KV cache."""
    model.eval()
    return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new_tokens,
                          min_new_tokens=new_tokens, do_sample=False, pad_token_id=model.config.eos_token_id)
