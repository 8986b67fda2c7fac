"""Logit distillation losses (CE, Hinton KD, DKD, DIST) and the one registry every recipe loss name resolves in.

Every loss is an `nn.Module` whose forward returns a scalar tensor. Class attributes tell the objective what to
feed it: `requires` names the forward inputs after `student_logits` ("teacher_logits", "targets"), `feature`
marks feature losses (forward(student_feature, teacher_feature)), and `accepts_topk` says whether teacher logits
may come as a sparse top-k `(values, indices)` pair from the teacher cache.
"""
from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.errors import EdgeKDError
from edgekd.registry import Registry

LOSSES: Registry[type[nn.Module]] = Registry("loss")

# Sun et al. (CVPR 2024) official code: (z - mean) / (1e-7 + std) with the unbiased std.
STANDARDIZE_EPS = 1e-7


class TopKLogits(NamedTuple):
    """A sparse teacher: its `k` largest logits per position (`values`, raw logits) and their class `indices`."""

    values: Tensor
    indices: Tensor


TeacherLogits = Tensor | TopKLogits | tuple[Tensor, Tensor]


def as_topk(teacher: Any) -> TopKLogits | None:
    """Return `teacher` as TopKLogits when it is a (values, indices) pair, else None (a dense tensor)."""
    if isinstance(teacher, TopKLogits):
        return teacher
    if isinstance(teacher, (tuple, list)) and len(teacher) == 2 and all(isinstance(t, Tensor) for t in teacher):
        values, indices = teacher
        if values.shape != indices.shape:
            raise EdgeKDError(f"top-k teacher values {tuple(values.shape)} and indices {tuple(indices.shape)} "
                              f"must have the same shape")
        return TopKLogits(values, indices.long())
    if isinstance(teacher, Tensor):
        return None
    raise EdgeKDError(f"teacher logits must be a tensor or a (values, indices) top-k pair, got {type(teacher).__name__}")


def standardize_logits(logits: Tensor, eps: float = STANDARDIZE_EPS) -> Tensor:
    """Logit standardization (Sun et al., CVPR 2024): z-score each row over the class axis before the temperature."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)  # unbiased, as in the paper's code
    return (logits - mean) / (std + eps)


def check_number(field: str, value: Any, *, gt: float | None = None, ge: float | None = None,
                 le: float | None = None) -> float:
    """Validate a numeric recipe option; the ValueError names the field, the value and the allowed range."""
    allowed = " and ".join(s for s in (f"> {gt}" if gt is not None else "", f">= {ge}" if ge is not None else "",
                                       f"<= {le}" if le is not None else "") if s) or "finite"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{field} must be a finite number ({allowed}), got {value!r}")
    if (gt is not None and not value > gt) or (ge is not None and not value >= ge) or (le is not None and not value <= le):
        raise ValueError(f"{field} must be {allowed}, got {value!r}")
    return float(value)


def check_bool(field: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{field} must be true or false, got {value!r}")
    return value


def check_same_shape(loss: str, student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape:
        raise EdgeKDError(f"{loss}: student logits {tuple(student.shape)} and teacher logits {tuple(teacher.shape)} "
                          f"differ in shape; student and teacher must predict the same classes for the same batch")


def dense_teacher(loss: str, teacher: Any) -> Tensor:
    """Refuse top-k teacher logits for losses that need every class's logit."""
    if as_topk(teacher) is not None:
        raise EdgeKDError(f"loss {loss!r} needs full teacher logits, but got top-k (values, indices) from the "
                          f"teacher cache; rebuild the cache with topk=None (full logits), run the teacher online, "
                          f"or use a loss that accepts top-k: forward_kl, reverse_kl, gjsd, kd_soft")
    return teacher


def check_targets(loss: str, student_logits: Tensor, targets: Tensor | None) -> Tensor:
    if targets is None:
        raise EdgeKDError(f"loss {loss!r} needs class targets (integer labels)")
    if targets.dtype.is_floating_point or targets.shape != student_logits.shape[:-1]:
        raise EdgeKDError(f"{loss}: targets must be integer class indices of shape {tuple(student_logits.shape[:-1])}, "
                          f"got {targets.dtype} {tuple(targets.shape)}")
    return targets


@LOSSES.register("ce")
class CrossEntropy(nn.Module):
    """Cross-entropy on the hard labels, with optional label smoothing; logits (..., V), targets (...)."""

    requires = ("targets",)
    feature = False
    accepts_topk = True  # does not read teacher logits at all

    def __init__(self, label_smoothing: float = 0.0, ignore_index: int = -100):
        super().__init__()
        self.label_smoothing = check_number("label_smoothing", label_smoothing, ge=0.0, le=1.0)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, int):
            raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}")
        self.ignore_index = ignore_index

    def forward(self, student_logits: Tensor, targets: Tensor) -> Tensor:
        targets = check_targets("ce", student_logits, targets)
        return F.cross_entropy(student_logits.reshape(-1, student_logits.shape[-1]), targets.reshape(-1),
                               label_smoothing=self.label_smoothing, ignore_index=self.ignore_index)


@LOSSES.register("kd_soft")
class SoftTargetKD(nn.Module):
    """Hinton soft-target loss: KL(teacher_T || student_T) * T^2, averaged over the batch rows.

    With top-k teacher logits this is the sparse forward KL of `edgekd.distill.divergences` (same convention).
    """

    requires = ("teacher_logits",)
    feature = False

    def __init__(self, temperature: float = 4.0, standardize: bool = False):
        super().__init__()
        self.temperature = check_number("temperature", temperature, gt=0)
        self.standardize = check_bool("standardize", standardize)
        # z-scoring needs every class's logit, so top-k teachers only work without it.
        self.accepts_topk = not self.standardize

    def forward(self, student_logits: Tensor, teacher_logits: TeacherLogits) -> Tensor:
        t = self.temperature
        topk = as_topk(teacher_logits)
        if topk is not None:
            if self.standardize:
                dense_teacher("kd_soft with standardize: true", teacher_logits)
            from edgekd.distill.divergences import divergence

            return divergence("forward_kl", student_logits, topk, temperature=t)
        check_same_shape("kd_soft", student_logits, teacher_logits)
        if self.standardize:
            student_logits, teacher_logits = standardize_logits(student_logits), standardize_logits(teacher_logits)
        s = F.log_softmax(student_logits.reshape(-1, student_logits.shape[-1]) / t, -1)
        q = F.log_softmax(teacher_logits.reshape(-1, teacher_logits.shape[-1]) / t, -1)
        return F.kl_div(s, q, reduction="batchmean", log_target=True) * t * t


@LOSSES.register("dkd")
class DecoupledKD(nn.Module):
    """Decoupled KD (Zhao et al., CVPR 2022): alpha * TCKD + beta * NCKD, both KL terms scaled by T^2.

    TCKD compares the binary (target, all-others) probabilities; NCKD compares the distributions over the
    non-target classes only (the target class masked out before the softmax), as in the paper's code.
    The paper's linear warm-up of the loss over the first epochs is the trainer's job (a weight schedule).
    """

    requires = ("teacher_logits", "targets")
    feature = False
    accepts_topk = False

    def __init__(self, alpha: float = 1.0, beta: float = 8.0, temperature: float = 4.0, standardize: bool = False):
        super().__init__()
        self.alpha = check_number("alpha", alpha, ge=0)
        self.beta = check_number("beta", beta, ge=0)
        self.temperature = check_number("temperature", temperature, gt=0)
        self.standardize = check_bool("standardize", standardize)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor, targets: Tensor) -> Tensor:
        teacher_logits = dense_teacher("dkd", teacher_logits)
        check_same_shape("dkd", student_logits, teacher_logits)
        targets = check_targets("dkd", student_logits, targets)
        v = student_logits.shape[-1]
        s, t = student_logits.reshape(-1, v), teacher_logits.reshape(-1, v)
        if self.standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        temp = self.temperature
        s, t = s / temp, t / temp
        gt = F.one_hot(targets.reshape(-1), v).bool()

        def binary_log_probs(z: Tensor) -> Tensor:
            """log [p_target, 1 - p_target], the second computed stably as logsumexp(others) - logsumexp(all)."""
            lse = torch.logsumexp(z, -1)
            target = z.masked_select(gt) - lse
            others = torch.logsumexp(z.masked_fill(gt, -math.inf), -1) - lse
            return torch.stack([target, others], -1)

        def non_target_log_probs(z: Tensor) -> Tensor:
            """log-softmax over the non-target classes; the target entry is set to 0 (it never contributes)."""
            masked = z.masked_fill(gt, -math.inf)
            return (masked - torch.logsumexp(masked, -1, keepdim=True)).masked_fill(gt, 0.0)

        n = s.shape[0]
        bs, bt = binary_log_probs(s), binary_log_probs(t)
        tckd = (bt.exp() * (bt - bs)).sum() / n
        if v > 2:
            ns, nt = non_target_log_probs(s), non_target_log_probs(t)
            nckd = (nt.exp().masked_fill(gt, 0.0) * (nt - ns)).sum() / n
        else:  # one non-target class: its distribution is a point mass, nothing to match
            nckd = s.new_zeros(())
        return (self.alpha * tckd + self.beta * nckd) * temp * temp


def _pearson_rows(a: Tensor, b: Tensor, eps: float = 1e-8) -> Tensor:
    """Pearson correlation of each row of `a` with the same row of `b` (official DIST code, eps 1e-8)."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


@LOSSES.register("dist")
class DIST(nn.Module):
    """DIST (Huang et al., NeurIPS 2022): beta * inter-class + gamma * intra-class relation loss, times tau^2.

    Inter-class: 1 - mean Pearson correlation between student and teacher probability rows (per sample);
    intra-class: the same over columns (per class, across the batch). Probabilities are softmax(z / tau).
    """

    requires = ("teacher_logits",)
    feature = False
    accepts_topk = False

    def __init__(self, beta: float = 1.0, gamma: float = 1.0, tau: float = 1.0, standardize: bool = False):
        super().__init__()
        self.beta = check_number("beta", beta, ge=0)
        self.gamma = check_number("gamma", gamma, ge=0)
        self.tau = check_number("tau", tau, gt=0)
        self.standardize = check_bool("standardize", standardize)

    def forward(self, student_logits: Tensor, teacher_logits: Tensor) -> Tensor:
        teacher_logits = dense_teacher("dist", teacher_logits)
        check_same_shape("dist", student_logits, teacher_logits)
        v = student_logits.shape[-1]
        s, t = student_logits.reshape(-1, v), teacher_logits.reshape(-1, v)
        if self.standardize:
            s, t = standardize_logits(s), standardize_logits(t)
        ys, yt = (s / self.tau).softmax(-1), (t / self.tau).softmax(-1)
        inter = 1 - _pearson_rows(ys, yt).mean()
        intra = 1 - _pearson_rows(ys.T, yt.T).mean()
        return self.tau ** 2 * (self.beta * inter + self.gamma * intra)
