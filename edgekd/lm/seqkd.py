"""Sequence-level KD (Kim & Rush 2016; the SFT form used by today's distilled LLMs): the teacher writes
continuations of prompts taken from the training text, and the student is trained with CE on the result."""
from __future__ import annotations

import time

import torch
from torch import Tensor


@torch.no_grad()
def _continue(teacher, prompt: Tensor, new: int, temperature: float, gen: torch.Generator) -> Tensor:
    """(b, new) tokens: one prefill, then one cached step per token (greedy, or sampled at `temperature`)."""
    out = teacher(prompt, use_cache=True)
    past, tokens = out.past_key_values, []
    logits = out.logits[:, -1].float()
    for i in range(new):
        if temperature:
            nxt = torch.multinomial(torch.softmax(logits / temperature, -1), 1, generator=gen)
        else:
            nxt = logits.argmax(-1, keepdim=True)
        tokens.append(nxt)
        if i + 1 < new:
            out = teacher(nxt, past_key_values=past, use_cache=True)
            past, logits = out.past_key_values, out.logits[:, -1].float()
    return torch.cat(tokens, 1)


@torch.no_grad()
def teacher_continuations(teacher, blocks: Tensor, prompt_len: int, *, batch_size: int = 32,
                          temperature: float = 0.0, seed: int = 0) -> tuple[Tensor, float]:
    """Blocks of the same shape as `blocks`: the first `prompt_len` tokens kept, the rest written by the teacher
    (greedy at temperature 0, else sampled). Returns (blocks, teacher tokens generated per second).

    Batch 32 (fp32) wrote the same tokens as batch 16 and was 1.17x faster (32 medium blocks, 96-token prompts, 32
    new tokens: 13.1 s vs 15.4 s); bf16 prefill + fp32 steps was 1.8x faster but changed 4.4 % of the tokens."""
    teacher.eval()
    n, t = blocks.shape
    new = t - prompt_len
    out = blocks.clone()
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for i in range(0, n, batch_size):
        out[i:i + batch_size, prompt_len:] = _continue(teacher, blocks[i:i + batch_size, :prompt_len], new,
                                                       temperature, gen)
    seconds = time.perf_counter() - start
    return out, n * new / max(seconds, 1e-9)
