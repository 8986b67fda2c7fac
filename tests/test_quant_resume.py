"""A QAT(+KD) run killed mid-way resumes from its checkpoint (weights, observers, fake-quant state, phase) exactly."""
import pytest
import torch
import torch.nn.functional as F

from edgekd.errors import EdgeKDError
from edgekd.models import build_model
from edgekd.quant import qat_finetune, qat_freeze_steps, scheme_for_runtimes
from edgekd.train import TrainConfig


class Killed(Exception):
    """Stands for SIGKILL: training stops between two steps, leaving only the last checkpoint behind."""


class KilledAfter(torch.nn.Module):
    """Cross-entropy that stops the run at its `calls`-th call (the first call is the loop's warm-up)."""

    needs_teacher = False
    student_taps = teacher_taps = ()

    def __init__(self, calls: int | None):
        super().__init__()
        self.calls, self.seen = calls, 0

    def forward(self, logits, targets, *rest):
        self.seen += 1
        if self.calls is not None and self.seen > self.calls:
            raise Killed
        ce = F.cross_entropy(logits, targets)
        return {"loss": ce, "ce": ce}


def _qat(digits, ckpt=None, kill_after_steps=None, **kwargs):
    torch.manual_seed(0)
    student = build_model("tiny_cnn", width=4)
    # 320 samples / batch 32 = 10 steps: observers freeze at step 6, BN statistics at step 9, so the resume point
    # (the checkpoint at step 8) lies between them
    objective = KilledAfter(None if kill_after_steps is None else kill_after_steps + 1)
    return qat_finetune(student, (digits.x_test[:2],), scheme=scheme_for_runtimes(["litert"]),
                        train_config=TrainConfig(epochs=1, lr=1e-3, checkpoint_every=4), x=digits.x_train[:320],
                        y=digits.y_train[:320], objective=objective, freeze_observers_after=0.6,
                        freeze_bn_after=0.9, batch_size=32, checkpoint=ckpt, progress=False, **kwargs)


def test_killed_qat_resumes_to_the_same_quantized_model(digits, tmp_path):
    assert qat_freeze_steps(TrainConfig(epochs=1), 320, 32, 0.6, 0.9) == (10, 6, 9)
    full, _ = _qat(digits)
    ckpt = tmp_path / "qat.pt"
    with pytest.raises(Killed):
        _qat(digits, ckpt, kill_after_steps=9)  # killed in the last step (10 of 10); last checkpoint at step 8
    resumed, result = _qat(digits, ckpt)
    assert result.resumed_from_step == 8
    assert full.meta["edgekd_qat_phase"] == resumed.meta["edgekd_qat_phase"] == {"observers_frozen": True,
                                                                                 "bn_frozen": True}
    a, b = full.state_dict(), resumed.state_dict()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    x = digits.x_test[:64]
    assert torch.equal(full(x), resumed(x))


def test_checkpoint_of_another_run_is_not_resumed(digits, tmp_path):
    ckpt = tmp_path / "qat.pt"
    with pytest.raises(Killed):
        _qat(digits, ckpt, kill_after_steps=5, checkpoint_key="recipe-a")
    _, result = _qat(digits, ckpt, checkpoint_key="recipe-b")
    assert result.resumed_from_step is None


def test_qat_with_kd_and_self_kd(digits):
    from edgekd.distill import TorchTeacher, build_objective

    torch.manual_seed(0)
    teacher = build_model("tiny_cnn", width=8).eval()
    for who in (TorchTeacher(teacher), "self"):
        torch.manual_seed(0)
        model, result = qat_finetune(build_model("tiny_cnn", width=4), (digits.x_test[:2],), scheme="litert_int8",
                                     train_config=TrainConfig(epochs=0.5, lr=1e-3), x=digits.x_train[:256],
                                     y=digits.y_train[:256], teacher=who, batch_size=64, progress=False)
        assert set(result.history[-1]["parts"]) == {"ce", "kd_soft"}  # the default QAT+KD objective
        assert model(digits.x_test[:3]).shape == (3, 10)
    objective = build_objective([{"name": "kd_soft", "weight": 1.0}])
    with pytest.raises(EdgeKDError, match="losses need a teacher, but none was given"):
        _, _ = qat_finetune(build_model("tiny_cnn", width=4), (digits.x_test[:2],), scheme="litert_int8",
                            train_config=TrainConfig(epochs=0.5), x=digits.x_train[:64], y=digits.y_train[:64],
                            objective=objective, progress=False)
    with pytest.raises(EdgeKDError, match="'me'.*'self'"):
        qat_finetune(build_model("tiny_cnn", width=4), (digits.x_test[:2],), scheme="litert_int8",
                     train_config=TrainConfig(), x=digits.x_train[:64], y=digits.y_train[:64], teacher="me")
    with pytest.raises(EdgeKDError, match=r"freeze_bn_after is a fraction of the QAT steps in \[0, 1\].*got 1.5"):
        qat_finetune(build_model("tiny_cnn", width=4), (digits.x_test[:2],), scheme="litert_int8",
                     train_config=TrainConfig(), x=digits.x_train[:64], y=digits.y_train[:64], freeze_bn_after=1.5)
