"""Training visibility: TensorBoard event files written by the loop and by the pipeline, read back."""
import pytest
import torch
from torch import nn

from edgekd.train import TrainConfig, train
from edgekd.train.monitor import Monitor, current_log_dir, log_to, read_scalars


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 10))


def test_train_writes_losses_lr_accuracy_and_throughput(tmp_path, digits):
    x, y = digits.x_train[:256], digits.y_train[:256]
    result = train(_net(), x, y, TrainConfig(epochs=2, lr=1e-2), batch_size=32, progress=False,
                   x_test=digits.x_test[:100], y_test=digits.y_test[:100], log_dir=tmp_path / "tb")
    scalars = read_scalars(tmp_path / "tb")
    assert {"train/loss", "train/ce", "train/lr", "train/images_per_s", "epoch/train_accuracy",
            "epoch/test_accuracy", "epoch/loss"} <= set(scalars)
    assert [s for s, _ in scalars["train/loss"]] == [c["step"] for c in result.curve]
    assert [v for _, v in scalars["train/loss"]] == pytest.approx([c["loss"] for c in result.curve], rel=1e-6)
    assert [v for _, v in scalars["epoch/test_accuracy"]] == pytest.approx(
        [h["test_accuracy"] for h in result.history])
    assert all(v > 0 for _, v in scalars["train/images_per_s"])
    assert scalars["train/lr"][0][1] != scalars["train/lr"][-1][1]  # the one-cycle schedule moved


def test_log_to_sets_the_folder_for_runs_inside_it(tmp_path, digits):
    assert current_log_dir() is None
    with log_to(tmp_path / "stage"):
        assert current_log_dir() == tmp_path / "stage"
        train(_net(), digits.x_train[:64], digits.y_train[:64], TrainConfig(epochs=1), batch_size=32,
              progress=False, desc="stage")
        train(_net(), digits.x_train[:64], digits.y_train[:64], TrainConfig(epochs=1), batch_size=32,
              progress=False, desc="born-again gen 2")
    assert current_log_dir() is None
    assert "train/loss" in read_scalars(tmp_path / "stage")
    assert "train/loss" in read_scalars(tmp_path / "stage" / "born-again_gen_2")  # a sub-run: its own folder


def test_no_folder_or_another_rank_writes_nothing(tmp_path):
    assert not Monitor(None).active
    assert not Monitor(tmp_path / "x", enabled=False).active
    assert not (tmp_path / "x").exists()


def test_without_tensorboard_training_says_so_once(tmp_path, monkeypatch):
    import edgekd.train.monitor as monitor

    monkeypatch.setattr(monitor, "tensorboard_available", lambda: False)
    said = []
    m = Monitor(tmp_path / "tb", log=said.append)
    assert not m.active and len(said) == 1 and "pip install 'edgekd[monitor]'" in said[0]


def test_tensorboard_writer_loads_tensorflow_without_its_start_up_lines(tmp_path):
    """torch.utils.tensorboard imports TensorFlow when it is installed, whose native libraries print
    cudart_stub/oneDNN lines to fd 2 at load: the demo printed them between its stages."""
    import importlib.util
    import subprocess
    import sys

    if importlib.util.find_spec("tensorboard") is None or importlib.util.find_spec("tensorflow") is None:
        pytest.skip("needs tensorboard and tensorflow installed (extras monitor, tensorflow)")
    code = ("import sys\nfrom edgekd.train.monitor import Monitor\nm = Monitor(sys.argv[1])\n"
            "print('tensorflow' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "tb")], capture_output=True, text=True,
                         timeout=300)
    assert out.stdout.split() == ["True"], out.stderr  # TensorFlow did load: the lines had a chance to appear
    assert "cudart_stub" not in out.stderr and "oneDNN" not in out.stderr, out.stderr
