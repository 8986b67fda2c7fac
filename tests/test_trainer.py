import pytest
import torch

from edgekd.train import NonFiniteLossError, TrainConfig, evaluate, train
from edgekd.models import build_model


def _run(ds, cfg, ckpt=None, stop=None, key=None):
    torch.manual_seed(0)
    model = build_model("tiny_cnn", width=8)
    result = train(model, ds.x_train[:512], ds.y_train[:512], cfg, seed=1, x_test=ds.x_test, y_test=ds.y_test,
                   batch_size=64, checkpoint=ckpt, checkpoint_key=key, progress=False, stop_after_steps=stop)
    return model, result


def test_killed_run_resumes_to_identical_weights(digits, tmp_path):
    cfg = TrainConfig(epochs=2, lr=1e-2, checkpoint_every=5, augment=True)
    full, r_full = _run(digits, cfg)
    ckpt = tmp_path / "ckpt.pt"
    _run(digits, cfg, ckpt, stop=13)  # "killed" after step 13; last checkpoint at step 10, mid-epoch
    resumed, r_res = _run(digits, cfg, ckpt)
    assert r_res.resumed_from_step == 10
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
    assert r_full.history == r_res.history
    assert r_full.curve == r_res.curve and len(r_full.curve) == 16  # one point per step: 16 steps < 50
    assert set(r_full.curve[0]["parts"]) == {"ce"}


def test_training_learns(digits):
    cfg = TrainConfig(epochs=4, lr=1e-2)
    model, result = _run(digits, cfg)
    assert result.history[-1]["test_accuracy"] > 0.6
    assert evaluate(model, digits.x_test, digits.y_test) == pytest.approx(result.history[-1]["test_accuracy"])


def test_nan_loss_names_step_and_part(digits):
    class Exploding(torch.nn.Module):
        needs_teacher = False
        student_taps = teacher_taps = ()

        def forward(self, logits, targets, *rest):
            kd = logits.sum() * float("nan")
            return {"loss": kd, "kd_soft": kd}

    with pytest.raises(NonFiniteLossError, match="loss part 'loss' is nan at step 0"):
        train(build_model("tiny_cnn", width=8), digits.x_train[:64], digits.y_train[:64], TrainConfig(epochs=1),
              objective=Exploding(), progress=False)


def test_checkpoint_for_other_schedule_is_refused(digits, tmp_path):
    ckpt = tmp_path / "c.pt"
    _run(digits, TrainConfig(epochs=1, checkpoint_every=2), ckpt, stop=3)
    with pytest.raises(Exception, match="written for"):
        _run(digits, TrainConfig(epochs=2, checkpoint_every=2), ckpt)


def test_checkpoint_of_other_inputs_is_not_resumed(digits, tmp_path):
    cfg = TrainConfig(epochs=1, lr=1e-2, checkpoint_every=2)
    ckpt = tmp_path / "c.pt"
    _run(digits, cfg, ckpt, key="recipe-a")  # finished under recipe a
    fresh, r_fresh = _run(digits, cfg, key="recipe-b")
    other, r_other = _run(digits, cfg, ckpt, key="recipe-b")
    assert r_other.resumed_from_step is None
    assert all(torch.equal(a, b) for a, b in zip(fresh.state_dict().values(), other.state_dict().values()))
    _, r_same = _run(digits, cfg, ckpt, key="recipe-b")
    assert r_same.resumed_from_step == 8  # its own finished checkpoint resumes (nothing left to do)
