"""Sequence-level KD (Kim & Rush 2016; the SFT form used by today's distilled LLMs): the teacher writes
continuations of prompts taken from the training text, and the student is trained with CE on the result."""
from __future__ import annotations

import time

import torch
from torch import Tensor


@torch.no_grad()
def teacher_continuations(teacher, blocks: Tensor, prompt_len: int, *, batch_size: int = 16,
                          temperature: float = 0.0, seed: int = 0) -> tuple[Tensor, float]:
    """Blocks of the same shape as `blocks`: the first `prompt_len` tokens kept, the rest written by the teacher
    (greedy at temperature 0, else sampled). Returns (blocks, teacher tokens generated per second)."""
    n, t = blocks.shape
    new = t - prompt_len
    out = blocks.clone()
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for i in range(0, n, batch_size):
        prompt = blocks[i:i + batch_size, :prompt_len]
        kwargs = dict(do_sample=False) if temperature == 0 else dict(do_sample=True, temperature=temperature, top_k=0)
        if temperature:
            torch.manual_seed(int(torch.randint(0, 2**31 - 1, (1,), generator=gen)))
        seq = teacher.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=new,
                               min_new_tokens=new, pad_token_id=teacher.config.eos_token_id, **kwargs)
        out[i:i + batch_size] = seq[:, :t]
    seconds = time.perf_counter() - start
    return out, n * new / max(seconds, 1e-9)
