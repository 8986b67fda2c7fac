"""Online and self distillation on the one training loop: deep mutual learning and born-again generations.

DML (Zhang et al., CVPR 2018) trains peers together, each with cross-entropy plus KL(peer || self) to the
others' detached predictions. Rather than a second loop, the peers are wrapped in `MutualPeers`, a module whose
training forward returns every peer's logits stacked, and `MutualObjective` computes each peer's loss; the
trainer optimizes their sum (gradients of one peer's loss reach only that peer, peers are detached).
Born-again networks (Furlanello et al., ICML 2018) train generation k from generation k-1 of the same
architecture, the first generation from the original teacher.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgekd.errors import EdgeKDError
from edgekd.train import TrainConfig


class MutualPeers(nn.Module):
    """Peers trained together: stacked logits (P, B, K) in training, peer `eval_peer`'s logits in eval."""

    def __init__(self, peers: Sequence[nn.Module], eval_peer: int = 0):
        super().__init__()
        if len(peers) < 2:
            raise EdgeKDError(f"mutual learning needs at least 2 peers, got {len(peers)}")
        self.peers = nn.ModuleList(peers)
        self.eval_peer = eval_peer

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            return torch.stack([p(x) for p in self.peers])
        return self.peers[self.eval_peer](x)


class MutualObjective(nn.Module):
    """Sum over peers of CE(peer, y) + weight * T^2 * mean over others of KL(other_T || peer_T), others detached."""

    needs_teacher = False
    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()

    def __init__(self, kl_weight: float = 1.0, temperature: float = 1.0):
        super().__init__()
        if kl_weight < 0 or temperature <= 0:
            raise ValueError(f"kl_weight must be >= 0 and temperature > 0, got {kl_weight}, {temperature}")
        self.kl_weight = kl_weight
        self.temperature = temperature

    def forward(self, logits: Tensor, targets: Tensor, *_unused: Any) -> dict[str, Tensor]:
        if logits.dim() != 3:  # eval-mode call (the trainer's warm-up): one peer's logits
            ce = F.cross_entropy(logits, targets)
            return {"loss": ce, "ce": ce}
        t = self.temperature
        n = logits.shape[0]
        log_p = F.log_softmax(logits / t, -1)
        ce_total = logits.new_zeros(())
        kl_total = logits.new_zeros(())
        for i in range(n):
            ce_total = ce_total + F.cross_entropy(logits[i], targets)
            for j in range(n):
                if j != i:
                    kl = F.kl_div(log_p[i], log_p[j].detach(), reduction="batchmean", log_target=True)
                    kl_total = kl_total + kl * t * t / (n - 1)
        loss = ce_total + self.kl_weight * kl_total
        return {"loss": loss, "ce": ce_total / n, "mutual_kl": kl_total / n}

    def __call__(self, logits, targets, *rest):  # the trainer passes (logits, y, teacher, feats, teacher_feats)
        return super().__call__(logits, targets, *rest)


def train_mutual(peers: Sequence[nn.Module], x: Tensor, y: Tensor, cfg: TrainConfig, *, kl_weight: float = 1.0,
                 temperature: float = 1.0, **train_kwargs: Any):
    """Deep mutual learning of `peers` (trained in place); returns the trainer's result."""
    from edgekd.train import train

    pair = MutualPeers(peers)
    return train(pair, x, y, cfg, objective=MutualObjective(kl_weight, temperature), **train_kwargs)


def born_again(build_student: Callable[[], nn.Module], teacher: Any, generations: int, x: Tensor, y: Tensor,
               cfg: TrainConfig, objective_terms: list[dict[str, Any]], **train_kwargs: Any
               ) -> list[tuple[nn.Module, Any]]:
    """Train `generations` students in sequence, each taught by the previous one (the first by `teacher`).

    Returns [(student, train_result), ...]; the last is the final born-again network.
    """
    from edgekd.distill import TorchTeacher, as_teacher, build_objective
    from edgekd.train import TeacherSignal, train

    if generations < 1:
        raise EdgeKDError(f"born-again needs generations >= 1, got {generations}")
    out = []
    current = as_teacher(teacher)
    for g in range(generations):
        student = build_student()
        result = train(student, x, y, cfg, objective=build_objective(objective_terms),
                       teacher=TeacherSignal(teacher=current), desc=f"born-again gen {g + 1}", **train_kwargs)
        out.append((student, result))
        current = TorchTeacher(student.eval())
    return out
