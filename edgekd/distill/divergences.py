"""Token-level divergences for sequence / LLM distillation: forward KL, reverse KL and generalized JSD.

Shapes: student logits (..., V), e.g. (B, V) or (B, T, V); teacher logits either dense (..., V) or a sparse top-k
pair (values, indices), each (..., k). The divergence is summed over the vocabulary at each position, multiplied
by T^2 (Hinton's scaling, so T=1 leaves it unchanged), then averaged over positions; an optional `mask` (...)
(True/1 = real token, False/0 = padding) restricts the average to real tokens. For (B, V) input without a mask
this is the same 'batchmean' as `kd_soft`.

Conventions:
- gjsd(beta) = beta * KL(P || M) + (1 - beta) * KL(Q || M) with M = beta * P + (1 - beta) * Q, P the teacher and
  Q the student distribution (GKD, Agarwal et al. 2024, and TRL's GKDTrainer). The formula vanishes at the
  endpoints, so beta = 0 is defined as forward KL(P || Q) and beta = 1 as reverse KL(Q || P), as TRL does; near the
  endpoints gjsd(beta) / beta -> forward KL and gjsd(beta) / (1 - beta) -> reverse KL.
- Top-k teacher: `values` are the teacher's raw logits at `indices`. The teacher distribution is softmax(values / T)
  over the k indices (the full softmax renormalized over its top-k support). The student's log-probabilities are
  the full-vocabulary log_softmax(student / T) gathered at the indices (not renormalized): with S = the student's
  mass on the support, the loss is D(P~ || Q~) - log S where Q~ is the student renormalized on the support.
  For forward KL this is exactly sum_k P~_k (log P~_k - log q_k) with the gathered log q_k; the -log S term pushes
  student mass onto the teacher's support. All three are >= 0 and equal the dense value when k = V.
- `standardize` (Sun et al., CVPR 2024) z-scores student and teacher logits per position before the temperature;
  it needs every logit, so it is refused with a top-k teacher.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.distill.losses import (LOSSES, TeacherLogits, TopKLogits, as_topk, check_bool, check_number,
                                   check_same_shape, standardize_logits)
from edgekd.errors import EdgeKDError

KINDS = ("forward_kl", "reverse_kl", "gjsd")


def _kl(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(P || Q) summed over the last axis, from log-probabilities."""
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def _pointwise(kind: str, log_teacher: Tensor, log_student: Tensor, beta: float) -> Tensor:
    if kind == "forward_kl" or (kind == "gjsd" and beta == 0.0):
        return _kl(log_teacher, log_student)
    if kind == "reverse_kl" or (kind == "gjsd" and beta == 1.0):
        return _kl(log_student, log_teacher)
    log_mix = torch.logsumexp(torch.stack([log_teacher + math.log(beta), log_student + math.log(1 - beta)]), 0)
    return beta * _kl(log_teacher, log_mix) + (1 - beta) * _kl(log_student, log_mix)


def reduce_positions(per_position: Tensor, mask: Tensor | None) -> Tensor:
    """Mean over positions, or over the positions where `mask` is true (0 when nothing is unmasked)."""
    if mask is None:
        return per_position.mean()
    if mask.shape != per_position.shape:
        raise EdgeKDError(f"mask shape {tuple(mask.shape)} must equal the logits' leading shape "
                          f"{tuple(per_position.shape)} (one flag per token)")
    weights = mask.to(per_position.dtype)
    return (per_position * weights).sum() / weights.sum().clamp(min=1.0)


def divergence(kind: str, student_logits: Tensor, teacher: TeacherLogits, *, temperature: float = 1.0,
               beta: float = 0.5, standardize: bool = False, mask: Tensor | None = None) -> Tensor:
    """Scalar divergence `kind` between teacher and student at temperature T (see the module docstring)."""
    if kind not in KINDS:
        raise ValueError(f"divergence kind must be one of {', '.join(KINDS)}, got {kind!r}")
    t = temperature
    topk = as_topk(teacher)
    if topk is None:
        check_same_shape(kind, student_logits, teacher)
        s, te = student_logits, teacher
        if standardize:
            s, te = standardize_logits(s), standardize_logits(te)
        per_position = _pointwise(kind, F.log_softmax(te / t, -1), F.log_softmax(s / t, -1), beta)
    else:
        if standardize:
            raise EdgeKDError(f"{kind} with standardize: true needs full teacher logits, got top-k (values, indices); "
                              f"set standardize: false or cache full logits (topk: null)")
        values, indices = topk
        if values.shape[:-1] != student_logits.shape[:-1] or values.shape[-1] > student_logits.shape[-1]:
            raise EdgeKDError(f"{kind}: top-k teacher {tuple(values.shape)} does not fit student logits "
                              f"{tuple(student_logits.shape)} (need the same leading shape and k <= V)")
        log_teacher = F.log_softmax(values.to(student_logits.dtype) / t, -1)
        gathered = F.log_softmax(student_logits / t, -1).gather(-1, indices.to(student_logits.device))
        log_support_mass = torch.logsumexp(gathered, -1, keepdim=True)
        per_position = (_pointwise(kind, log_teacher, gathered - log_support_mass, beta)
                        - log_support_mass.squeeze(-1))
    return reduce_positions(per_position, mask) * t * t


class _Divergence(nn.Module):
    """Shared body of the registered divergences: forward(student_logits, teacher_logits, mask=None)."""

    kind = ""
    requires = ("teacher_logits",)
    feature = False

    def __init__(self, temperature: float = 1.0, standardize: bool = False):
        super().__init__()
        self.temperature = check_number("temperature", temperature, gt=0)
        self.standardize = check_bool("standardize", standardize)
        self.accepts_topk = not self.standardize
        self.beta = 0.5

    def forward(self, student_logits: Tensor, teacher_logits: TeacherLogits, mask: Tensor | None = None) -> Tensor:
        return divergence(self.kind, student_logits, teacher_logits, temperature=self.temperature, beta=self.beta,
                          standardize=self.standardize, mask=mask)


@LOSSES.register("forward_kl")
class ForwardKL(_Divergence):
    """KL(teacher || student) per token: mode-covering, the classic KD direction."""

    kind = "forward_kl"


@LOSSES.register("reverse_kl")
class ReverseKL(_Divergence):
    """KL(student || teacher) per token: mode-seeking, favoured for generative students (MiniLLM, GKD)."""

    kind = "reverse_kl"


@LOSSES.register("gjsd")
class GeneralizedJSD(_Divergence):
    """Generalized JSD(beta) of GKD: beta=0 forward KL, beta=1 reverse KL, in between a bounded mixture divergence."""

    kind = "gjsd"

    def __init__(self, beta: float = 0.5, temperature: float = 1.0, standardize: bool = False):
        super().__init__(temperature=temperature, standardize=standardize)
        self.beta = check_number("beta", beta, ge=0.0, le=1.0)


__all__ = ["ForwardKL", "GeneralizedJSD", "ReverseKL", "TopKLogits", "divergence", "reduce_positions"]
