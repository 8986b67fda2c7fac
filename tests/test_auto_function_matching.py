"""Function matching: mixup batches shared by the online teacher and the student, without changing the loop."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.auto.function_matching import MixedStudent, MixupSignal, function_matching, mixup
from edgekd.distill import TorchTeacher, build_objective
from edgekd.errors import EdgeKDError
from edgekd.train import TrainConfig, train


def test_mixup_is_a_convex_mix_of_two_images_of_the_batch_and_repeatable():
    x = torch.arange(4, dtype=torch.float32).view(4, 1, 1, 1).expand(4, 1, 2, 2).clone()
    a = mixup(x, 1.0, torch.Generator().manual_seed(3))
    b = mixup(x, 1.0, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
    # every pixel of an image carries the same mixed value, inside [min, max] of the batch
    assert torch.all(a.amin((1, 2, 3)) == a.amax((1, 2, 3)))
    assert a.min() >= 0 and a.max() <= 3
    with pytest.raises(EdgeKDError, match="alpha must be > 0"):
        mixup(x, 0.0, torch.Generator())


class Recorder(nn.Module):
    """Identity-like teacher/student head that records what it was fed."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 3)
        self.seen: list[torch.Tensor] = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.lin(x.flatten(1))


def test_teacher_and_student_see_the_same_mixed_batch_and_evaluation_passes_through():
    teacher, student = Recorder(), Recorder()
    wrapped, signal = function_matching(student, TorchTeacher(teacher), alpha=0.4, seed=0)
    x = torch.randn(8, 1, 2, 2)
    wrapped.train()
    signal.outputs(x, torch.arange(8))
    wrapped(x)
    assert torch.equal(teacher.seen[-1], student.seen[-1]) and not torch.equal(student.seen[-1], x)
    wrapped(x)  # a second call on the same tensor (no new teacher call) is not mixed again
    assert torch.equal(student.seen[-1], x)
    wrapped.eval()
    signal.outputs(x, torch.arange(8))
    wrapped(x)
    assert torch.equal(student.seen[-1], x)  # evaluation never sees mixed inputs


def test_function_matching_trains_through_the_unchanged_loop():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).eval()
    student = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    wrapped, signal = function_matching(student, TorchTeacher(teacher), seed=0)
    x, y = torch.randn(64, 1, 2, 2), torch.randint(0, 3, (64,))
    objective = build_objective([{"name": "kd_soft", "weight": 1.0, "temperature": 1.0}])
    before = objective(student(x), y, teacher(x))["loss"].item()
    train(wrapped, x, y, TrainConfig(epochs=30, lr=0.05, checkpoint_every=10 ** 9), objective=objective,
          teacher=signal, batch_size=16, progress=False)
    after = objective(student(x), y, teacher(x))["loss"].item()
    assert after < 0.5 * before  # the student matched the teacher's function, on clean inputs too


def test_function_matching_refuses_cached_logits_and_a_missing_teacher():
    with pytest.raises(EdgeKDError, match="needs the teacher"):
        MixupSignal()
    with pytest.raises(EdgeKDError, match="cannot use cached"):
        MixupSignal(teacher=object(), cached=torch.zeros(2, 3))
    assert isinstance(MixedStudent(nn.Linear(2, 2), MixupSignal(teacher=object())), nn.Module)
