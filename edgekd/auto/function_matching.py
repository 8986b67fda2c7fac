"""Function matching (Beyer et al., "Knowledge distillation: A good teacher is patient and consistent", CVPR 2022).

The teacher runs online on exactly the batch the student sees, and that batch is aggressively mixed (mixup:
x' = λ·x + (1-λ)·x[perm], λ ~ Beta(a, a) per image), so the student is taught the teacher's function between the
training images too, not only the labels' one-hot points. With mixed inputs the labels are no longer the
targets: function matching trains on the teacher's outputs alone (a loss list without `ce`).

The training loop (edgekd.train) has no batch-transform hook, so the pair below does it without touching the loop:
`MixupSignal` (a TeacherSignal) mixes the batch the loop hands to the teacher and keeps the mixed copy; the student
wrapper `MixedStudent` swaps that copy in when the loop calls the student on the same batch tensor. Any other call
(evaluation, export) passes straight through. The loop's own crop/flip augmentation (`TrainConfig.augment`) comes
first, so both see crop, flip and mixup identically. A loop with a `batch_transform(x, generator) -> x` step
between augmentation and the teacher call would replace this pair by one function (see docs/auto.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.train import TeacherSignal


def mixup(x: torch.Tensor, alpha: float, generator: torch.Generator) -> torch.Tensor:
    """Each image mixed with another of the batch: λ·x + (1-λ)·x[perm], λ ~ Beta(alpha, alpha) per image."""
    if alpha <= 0:
        raise EdgeKDError(f"mixup alpha must be > 0, got {alpha}")
    n = len(x)
    perm = torch.randperm(n, generator=generator)
    # torch.distributions.Beta takes no generator: numpy's, seeded from the torch generator, keeps runs repeatable.
    rng = np.random.default_rng(int(torch.randint(0, 2 ** 31 - 1, (1,), generator=generator)))
    lam = torch.from_numpy(rng.beta(alpha, alpha, n)).to(x.dtype).view((n,) + (1,) * (x.dim() - 1))
    return lam * x + (1 - lam) * x[perm]


@dataclass
class _Shared:
    source: torch.Tensor | None = None
    mixed: torch.Tensor | None = None


@dataclass
class MixupSignal(TeacherSignal):
    """An online teacher that sees the mixed batch; the mixed copy is handed to `MixedStudent`."""

    alpha: float = 1.0
    seed: int = 0
    shared: _Shared = field(default_factory=_Shared)

    def __post_init__(self) -> None:
        if self.teacher is None:
            raise EdgeKDError("function matching runs the teacher online on every mixed batch: it needs the teacher")
        if self.cached is not None:
            raise EdgeKDError("function matching cannot use cached teacher logits (each batch is mixed anew)")
        self.generator = torch.Generator().manual_seed(self.seed)

    def outputs(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor] | None]:
        mixed = mixup(x, self.alpha, self.generator)
        self.shared.source, self.shared.mixed = x, mixed
        return super().outputs(mixed, idx)


class MixedStudent(nn.Module):
    """The student, fed the mixed batch when the loop calls it on the batch the teacher was just given."""

    def __init__(self, student: nn.Module, signal: MixupSignal):
        super().__init__()
        self.student = student
        self._shared = signal.shared

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        sh = self._shared
        if self.training and sh.source is not None and x is sh.source:
            x = sh.mixed
            sh.source = sh.mixed = None
        return self.student(x)


def function_matching(student: nn.Module, teacher: Any, alpha: float = 1.0,
                      seed: int = 0) -> tuple[MixedStudent, MixupSignal]:
    """(wrapped student, teacher signal) to pass to edgekd.train.train; train the wrapper, keep `student`."""
    signal = MixupSignal(teacher=teacher, alpha=alpha, seed=seed)
    return MixedStudent(student, signal), signal
