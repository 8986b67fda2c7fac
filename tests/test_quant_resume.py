"""A QAT run killed mid-way resumes from its checkpoint (weights, observers, fake-quant state, phase) exactly."""
import torch

from edgekd.config import TrainConfig
from edgekd.distill.trainer import train
from edgekd.models import build_model
from edgekd.quant import (convert_qat, eval_mode, load_qat_state, prepare_qat, qat_state_dict, scheme_for_runtimes,
                          set_qat_phase, train_mode)


def _qat(digits, ckpt=None, stop=None):
    torch.manual_seed(0)
    student = build_model("tiny_cnn", width=4)
    gm = prepare_qat(student, (digits.x_test[:2],), scheme_for_runtimes(["litert"]))
    # observers freeze at step 6, BN statistics at step 9: the resume point (step 8) lies between them
    train(gm, digits.x_train[:320], digits.y_train[:320], TrainConfig(epochs=1, lr=1e-3, checkpoint_every=4),
          seed=0, batch_size=32, checkpoint=ckpt, progress=False, stop_after_steps=stop,
          step_hook=lambda m, step, total: set_qat_phase(m, step, 6, 9), set_train=train_mode, set_eval=eval_mode,
          model_state=(qat_state_dict, load_qat_state))
    return gm


def test_killed_qat_resumes_to_the_same_quantized_model(digits, tmp_path):
    full = _qat(digits)
    ckpt = tmp_path / "qat.pt"
    _qat(digits, ckpt, stop=10)  # killed after step 10; last checkpoint at step 8 (observers frozen, BN not yet)
    resumed = _qat(digits, ckpt)
    a, b = qat_state_dict(full), qat_state_dict(resumed)
    assert a["phase"] == b["phase"] == {"observers_frozen": True, "bn_frozen": True}
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    x = digits.x_test[:64]
    assert torch.equal(convert_qat(full)(x), convert_qat(resumed)(x))
