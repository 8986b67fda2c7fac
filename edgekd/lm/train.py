"""The LM training loop: AdamW with warm-up and cosine decay over a fixed number of steps, batches drawn from the
token blocks (and the matching rows of the teacher top-k cache), so methods compared at the same `steps` and
`batch_size` see the same number of tokens."""
from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import torch
from torch import Tensor

from edgekd.lm.objectives import TokenObjective
from edgekd.lm.topk_cache import TopKCache


@dataclass(frozen=True)
class LMTrainConfig:
    steps: int = 200
    batch_size: int = 8
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup: int = 20
    grad_clip: float = 1.0
    seed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def lr_at(step: int, cfg: LMTrainConfig) -> float:
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def train_lm(student, blocks: Tensor, objective: TokenObjective, cfg: LMTrainConfig, *,
             cache: TopKCache | None = None, mask: Tensor | None = None,
             log_fn: Callable[[str], None] | None = None, log_every: int = 50) -> dict[str, Any]:
    """Train `student` in place on (N, T) `blocks`; returns {curve, tokens, seconds, tokens_per_s, final_loss}.

    Position t's logits predict token t+1; the teacher cache row t holds the teacher's top-k for the same
    prediction, so both are cut to the first T-1 positions. `mask` (N, T) marks real tokens (targets' side).
    """
    if objective.needs_teacher and cache is None:
        raise ValueError("this objective needs the teacher top-k cache")
    gen = torch.Generator().manual_seed(cfg.seed)
    decay = [p for n, p in student.named_parameters() if p.ndim >= 2]
    other = [p for n, p in student.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay}, {"params": other, "weight_decay": 0}],
                            lr=cfg.lr)
    student.train()
    curve, start = [], time.perf_counter()
    for step in range(cfg.steps):
        rows = torch.randint(0, len(blocks), (cfg.batch_size,), generator=gen)
        x = blocks[rows]
        teacher = None
        if objective.needs_teacher:
            top = cache[rows.numpy()]
            teacher = type(top)(top.values[:, :-1], top.indices[:, :-1])
        m = None if mask is None else mask[rows][:, 1:]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, cfg)
        logits = student(x).logits[:, :-1]
        loss, parts = objective(logits, x[:, 1:], teacher, m)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), cfg.grad_clip)
        opt.step()
        curve.append(round(float(loss.detach()), 4))
        if log_fn and (step % log_every == 0 or step == cfg.steps - 1):
            log_fn(f"step {step}/{cfg.steps} loss {curve[-1]:.3f} {parts}")
    seconds = time.perf_counter() - start
    tokens = cfg.steps * cfg.batch_size * blocks.shape[1]
    student.eval()
    return {"curve": curve, "tokens": tokens, "seconds": round(seconds, 2),
            "tokens_per_s": round(tokens / max(seconds, 1e-9), 1), "final_loss": curve[-1] if curve else None}
