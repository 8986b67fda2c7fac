"""Token-level objectives for causal-LM distillation: CE on the data, forward KL, reverse KL and generalized
JSD(beta) against a (top-k sparse) teacher, at a temperature, and weighted mixtures of them.

The divergences are edgekd.distill's registered losses (the same code the image pipeline uses): the (B, T, V)
student logits and (B, T, k) teacher top-k are flattened to (N, V) / (N, k) over the positions the padding mask
keeps, so every position counts once and padding never does. Sequence-level KD is not a loss here: it is CE on
teacher-generated text (`edgekd.lm.seqkd`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from edgekd.distill.losses import LOSSES, TopKLogits
from edgekd.errors import EdgeKDError

DIVERGENCES = ("forward_kl", "reverse_kl", "gjsd")
TERMS = ("ce",) + DIVERGENCES


@dataclass(frozen=True)
class Term:
    """One weighted term: `name` in TERMS, `weight`, and the loss's options (temperature, beta)."""

    name: str
    weight: float = 1.0
    options: dict[str, Any] = field(default_factory=dict)


def parse_terms(spec: list[dict[str, Any]] | str) -> list[Term]:
    """Recipe form `[{name: forward_kl, weight: 1, temperature: 1}, {name: ce, weight: 0.5}]` or one name."""
    items = [{"name": spec}] if isinstance(spec, str) else spec
    terms = []
    for item in items:
        item = dict(item)
        name = item.pop("name", None)
        if name not in TERMS:
            raise EdgeKDError(f"LM loss {name!r} unknown; choose from {', '.join(TERMS)} "
                              f"(sequence-level KD is `method: seqkd`, CE on teacher-generated text)")
        weight = item.pop("weight", 1.0)
        if name == "ce" and item:
            raise EdgeKDError(f"LM loss 'ce' takes no options, got {sorted(item)}")
        if name != "ce":
            try:  # validates option names and values now, with the loss's own message
                LOSSES.get(name)(**item)
            except (TypeError, ValueError) as e:
                raise EdgeKDError(f"LM loss {name!r}: {e}") from e
        terms.append(Term(name, float(weight), item))
    if not terms:
        raise EdgeKDError("an LM objective needs at least one loss term")
    return terms


def flatten(student_logits: Tensor, mask: Tensor | None, *others: Tensor | None) -> tuple[Tensor, ...]:
    """(B, T, ...) tensors -> (N, ...) over the positions where `mask` (B, T) is true (all when None)."""
    if mask is None:
        return tuple(None if t is None else t.reshape(-1, *t.shape[2:]) for t in (student_logits, *others))
    if mask.shape != student_logits.shape[:2]:
        raise EdgeKDError(f"padding mask {tuple(mask.shape)} must be (B, T) = {tuple(student_logits.shape[:2])}")
    keep = mask.bool()
    return tuple(None if t is None else t[keep] for t in (student_logits, *others))


class TokenObjective(torch.nn.Module):
    """Sum of weighted terms on next-token predictions: forward(logits, targets, teacher, mask) -> (loss, parts).

    `logits` (B, T, V) predict `targets` (B, T); `teacher` is TopKLogits of (B, T, k) (or dense (B, T, V)) for the
    same positions, or None when only CE is used; `mask` (B, T) marks real tokens.
    """

    def __init__(self, terms: list[Term]):
        super().__init__()
        self.terms = terms
        self.losses = torch.nn.ModuleList(LOSSES.get(t.name)(**t.options) if t.name != "ce" else torch.nn.Identity()
                                          for t in terms)

    @property
    def needs_teacher(self) -> bool:
        return any(t.name != "ce" for t in self.terms)

    def forward(self, logits: Tensor, targets: Tensor, teacher: TopKLogits | Tensor | None = None,
                mask: Tensor | None = None) -> tuple[Tensor, dict[str, float]]:
        if isinstance(teacher, TopKLogits):
            s, y, tv, ti = flatten(logits, mask, targets, teacher.values, teacher.indices)
            t_flat: TopKLogits | Tensor | None = TopKLogits(tv, ti)
        else:
            s, y, t_flat = flatten(logits, mask, targets, teacher)
        total = logits.new_zeros(())
        parts = {}
        for term, loss in zip(self.terms, self.losses):
            if term.name == "ce":
                value = F.cross_entropy(s.float(), y)
            else:
                if t_flat is None:
                    raise EdgeKDError(f"LM loss {term.name!r} needs teacher logits (build the teacher cache)")
                value = loss(s.float(), t_flat)
            parts[term.name] = float(value.detach())
            total = total + term.weight * value
        return total, parts
