"""Feature distillation: forward-hook taps on named submodules and the feature losses hint, attention, rkd, sp.

Feature losses take (student_feature, teacher_feature) tensors with the batch first and return a scalar.
"""
from __future__ import annotations

import difflib
from typing import Any, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.distill.losses import LOSSES, check_number
from edgekd.errors import EdgeKDError


class FeatureTap:
    """Capture the outputs of named submodules (names as in `model.named_modules()`) with forward hooks.

    >>> with FeatureTap(model, ["features.3"]) as tap:
    ...     logits = model(x)
    >>> tap.features["features.3"].shape
    A module returning a tuple or list contributes its first element. Hooks stay until `remove()` / the `with` ends.
    """

    def __init__(self, model: nn.Module, names: Iterable[str]):
        self.names = list(dict.fromkeys(names))
        modules = dict(model.named_modules())
        for name in self.names:
            if name not in modules:
                raise EdgeKDError(unknown_module_message(name, modules, type(model).__name__))
        self.features: dict[str, Tensor] = {}
        self._handles = [modules[name].register_forward_hook(self._hook(name)) for name in self.names]

    def _hook(self, name: str):
        def store(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if isinstance(output, (tuple, list)):
                output = output[0]
            self.features[name] = output

        return store

    def run(self, model: nn.Module, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Forward `x` through `model`; return its output and the tapped features of this call."""
        self.features = {}
        out = model(x)
        missing = [n for n in self.names if n not in self.features]
        if missing:
            raise EdgeKDError(f"submodule(s) {', '.join(missing)} did not run in forward(); tap a module on the "
                              f"forward path of {type(model).__name__}")
        return out, dict(self.features)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> "FeatureTap":
        self.features = {}
        return self

    def __exit__(self, *exc: Any) -> None:
        self.remove()


def unknown_module_message(name: str, modules: dict[str, nn.Module] | Sequence[str], model: str = "model") -> str:
    names = [n for n in modules if n]
    close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}? close names: {', '.join(close)}" if close else ""
    shown = ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
    return (f"{model} has no submodule {name!r}{hint}. Feature taps use the dotted names of "
            f"model.named_modules(): {shown}")


def _match_spatial(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """Average-pool the larger of two (N, C, H, W) maps to the smaller spatial size, per axis."""
    if a.dim() != 4 or a.shape[-2:] == b.shape[-2:]:
        return a, b
    hw = (min(a.shape[-2], b.shape[-2]), min(a.shape[-1], b.shape[-1]))
    return (F.adaptive_avg_pool2d(a, hw) if a.shape[-2:] != hw else a,
            F.adaptive_avg_pool2d(b, hw) if b.shape[-2:] != hw else b)


@LOSSES.register("hint")
class HintLoss(nn.Module):
    """FitNets hint: MSE(adapter(student_feature), teacher_feature).

    The adapter is a learned 1x1 conv (4-D maps) or linear layer (last axis otherwise) mapping student channels
    to teacher channels, created only when they differ, eagerly when both shapes are given or lazily from the
    first batch. It is a submodule of this loss (so of the objective): put `objective.parameters()` in the
    optimizer, after `Objective.build_adapters(...)` or eager shapes when the adapter is lazy. When H, W differ the
    larger map is adaptive-average-pooled to the smaller size (the teacher map pooled without parameters).
    """

    requires = ("student_feature", "teacher_feature")
    feature = True
    accepts_topk = True

    def __init__(self, student_shape: Sequence[int] | None = None, teacher_shape: Sequence[int] | None = None):
        super().__init__()
        self.adapter: nn.Module | None = None
        if (student_shape is None) != (teacher_shape is None):
            raise ValueError("hint: give both student_shape and teacher_shape (per-sample, e.g. [16, 14, 14]) "
                             "or neither (the adapter is then built from the first batch)")
        if student_shape is not None:
            for field, shape in (("student_shape", student_shape), ("teacher_shape", teacher_shape)):
                if not isinstance(shape, (list, tuple)) or not shape or not all(
                        isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
                    raise ValueError(f"hint: {field} must be a list of positive ints without the batch axis, "
                                     f"got {shape!r}")
            self.build((1, *student_shape), (1, *teacher_shape))

    @property
    def built(self) -> bool:
        return self.adapter is not None

    def build(self, student_shape: Sequence[int], teacher_shape: Sequence[int],
              device: torch.device | None = None, dtype: torch.dtype | None = None) -> nn.Module:
        """Create the adapter for batch shapes (N, ...) of student and teacher features (idempotent)."""
        if self.adapter is not None:
            return self.adapter
        s, t = tuple(student_shape), tuple(teacher_shape)
        if len(s) != len(t):
            raise EdgeKDError(f"hint: student feature {s} and teacher feature {t} have different ranks; "
                              f"tap layers of the same kind (both conv maps or both vectors)")
        if len(s) == 4:
            adapter: nn.Module = nn.Identity() if s[1] == t[1] else nn.Conv2d(s[1], t[1], 1, bias=False)
        elif len(s) >= 2:
            adapter = nn.Identity() if s[-1] == t[-1] else nn.Linear(s[-1], t[-1], bias=False)
        else:
            raise EdgeKDError(f"hint: features need a batch axis and a feature axis, got shape {s}")
        if len(s) != 4 and s[1:-1] != t[1:-1]:
            raise EdgeKDError(f"hint: student feature {s} and teacher feature {t} differ in their middle axes")
        self.adapter = adapter.to(device=device, dtype=dtype)
        return self.adapter

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        adapter = self.build(student_feature.shape, teacher_feature.shape, student_feature.device,
                             student_feature.dtype)
        s, t = _match_spatial(adapter(student_feature), teacher_feature.detach())
        if s.shape != t.shape:
            raise EdgeKDError(f"hint: adapted student feature {tuple(s.shape)} does not match teacher feature "
                              f"{tuple(t.shape)}; the adapter was built for other shapes")
        return F.mse_loss(s, t)


def attention_map(feature: Tensor, p: float = 2.0) -> Tensor:
    """Zagoruyko & Komodakis spatial attention: mean over channels of |F|^p, flattened and L2-normalized."""
    return F.normalize(feature.abs().pow(p).mean(1).flatten(1), dim=1)


@LOSSES.register("attention")
class AttentionTransfer(nn.Module):
    """Attention transfer: mean squared difference of normalized attention maps (official code's at_loss).

    The paper's training weight is beta/2 = 500 per layer pair (beta = 1000). Maps of different spatial size are
    average-pooled to the smaller one; channel counts may differ (they are averaged away).
    """

    requires = ("student_feature", "teacher_feature")
    feature = True
    accepts_topk = True

    def __init__(self, p: float = 2.0):
        super().__init__()
        self.p = check_number("p", p, gt=0)

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        if student_feature.dim() != 4 or teacher_feature.dim() != 4:
            raise EdgeKDError(f"attention: needs 4-D (N, C, H, W) feature maps, got student "
                              f"{tuple(student_feature.shape)} and teacher {tuple(teacher_feature.shape)}")
        s, t = _match_spatial(student_feature, teacher_feature.detach())
        return (attention_map(s, self.p) - attention_map(t, self.p)).pow(2).mean()


def pairwise_distances(e: Tensor, eps: float = 1e-12) -> Tensor:
    """Euclidean distance matrix of the rows of `e` with a zero diagonal (RKD official pdist)."""
    sq = e.pow(2).sum(1)
    d = (sq.unsqueeze(1) + sq.unsqueeze(0) - 2 * e @ e.T).clamp(min=eps).sqrt()
    return d * (1 - torch.eye(len(e), dtype=d.dtype, device=d.device))


def _normalized_distances(e: Tensor) -> Tensor:
    d = pairwise_distances(e)
    positive = d[d > 0]
    return d / positive.mean() if positive.numel() else d


def _angles(e: Tensor) -> Tensor:
    """cos of the angle at e_i between e_j and e_k, for all triplets (i, j, k), as in the RKD official code."""
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


@LOSSES.register("rkd")
class RelationalKD(nn.Module):
    """Relational KD (Park et al., CVPR 2019): distance_weight * RKD-D + angle_weight * RKD-A (smooth L1).

    Features are flattened per sample; distances are normalized by their mean over distinct pairs.
    Paper defaults: distance_weight 25, angle_weight 50.
    """

    requires = ("student_feature", "teacher_feature")
    feature = True
    accepts_topk = True

    def __init__(self, distance_weight: float = 25.0, angle_weight: float = 50.0):
        super().__init__()
        self.distance_weight = check_number("distance_weight", distance_weight, ge=0)
        self.angle_weight = check_number("angle_weight", angle_weight, ge=0)

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        s, t = student_feature.flatten(1), teacher_feature.detach().flatten(1)
        if len(s) != len(t) or len(s) < 2:
            raise EdgeKDError(f"rkd: needs the same batch of >= 2 samples from student and teacher, got "
                              f"{len(s)} and {len(t)}")
        loss = s.new_zeros(())
        if self.distance_weight:
            loss = loss + self.distance_weight * F.smooth_l1_loss(_normalized_distances(s), _normalized_distances(t))
        if self.angle_weight:
            loss = loss + self.angle_weight * F.smooth_l1_loss(_angles(s), _angles(t))
        return loss


@LOSSES.register("sp")
class SimilarityPreserving(nn.Module):
    """Similarity-preserving KD (Tung & Mori, ICCV 2019): ||norm(G_s) - norm(G_t)||_F^2 / b^2.

    G = F F^T over per-sample flattened features (b x b), each row L2-normalized. The paper / RepDistiller
    weight is about 3000.
    """

    requires = ("student_feature", "teacher_feature")
    feature = True
    accepts_topk = True

    def forward(self, student_feature: Tensor, teacher_feature: Tensor) -> Tensor:
        s, t = student_feature.flatten(1), teacher_feature.detach().flatten(1)
        if len(s) != len(t):
            raise EdgeKDError(f"sp: student and teacher batches differ: {len(s)} vs {len(t)}")
        gs, gt = F.normalize(s @ s.T, dim=1), F.normalize(t @ t.T, dim=1)
        return (gt - gs).pow(2).sum() / (len(s) ** 2)


__all__ = ["AttentionTransfer", "FeatureTap", "HintLoss", "RelationalKD", "SimilarityPreserving", "attention_map",
           "pairwise_distances"]
