"""Training checkpoints hold tensors and plain data only; a planted pickle that would run code is never run."""
import builtins
import pickle

import pytest
import torch
import yaml
from click.testing import CliRunner

from edgekd.errors import EdgeKDError
from edgekd.models import build_model
from edgekd.train import TrainConfig, load_checkpoint, train


class Payload:
    """Unpickling this object runs code: it writes the marker file (what an attacker's pickle would do)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return builtins.exec, (f"open({self.marker!r}, 'w').write('pwned')",)


def _plant(path, marker, as_torch: bool):
    path.parent.mkdir(parents=True, exist_ok=True)
    blob = {"model": Payload(marker), "key": None, "step": 0}
    if as_torch:
        torch.save(blob, path)
    else:
        path.write_bytes(pickle.dumps(blob))


def _train(digits, ckpt, **kwargs):
    torch.manual_seed(0)
    return train(build_model("tiny_cnn", width=4), digits.x_train[:64], digits.y_train[:64],
                 TrainConfig(epochs=1, checkpoint_every=1), batch_size=32, checkpoint=ckpt, progress=False, **kwargs)


@pytest.mark.parametrize("as_torch", [True, False], ids=["torch.save", "raw-pickle"])
def test_planted_pickle_is_refused_and_never_run(digits, tmp_path, as_torch):
    marker, ckpt = tmp_path / "marker", tmp_path / "checkpoints" / "distill.pt"
    _plant(ckpt, marker, as_torch)
    with pytest.raises(EdgeKDError) as err:
        _train(digits, ckpt)
    message = str(err.value)
    assert "\n" not in message
    assert str(ckpt) in message and "could run code" in message and "delete it" in message
    assert not marker.exists()
    assert ckpt.exists()  # left for the user to inspect and delete, never overwritten silently


def test_damaged_and_foreign_checkpoints_are_refused(digits, tmp_path):
    damaged = tmp_path / "damaged.pt"
    damaged.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(EdgeKDError, match=r"damaged.pt cannot be read .*delete it"):
        _train(digits, damaged)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, foreign)  # safe to load, but not a training checkpoint
    with pytest.raises(EdgeKDError, match=r"foreign.pt is not an edgekd training checkpoint.*delete it"):
        _train(digits, foreign)


def _plain(obj, where="checkpoint"):
    """Assert `obj` is built from tensors and plain data only."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, (str, int)), f"{where}: key {k!r}"
            _plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _plain(v, f"{where}[{i}]")
    else:
        assert obj is None or isinstance(obj, (torch.Tensor, str, int, float, bool)), f"{where}: {type(obj)}"


def test_checkpoints_hold_tensors_and_plain_data_only(digits, tmp_path):
    from edgekd.distill import TorchTeacher, build_objective
    from edgekd.quant import qat_finetune
    from edgekd.train import TeacherSignal

    ckpt = tmp_path / "kd.pt"
    teacher = TeacherSignal(teacher=TorchTeacher(build_model("tiny_cnn", width=8).eval()))
    objective = build_objective([{"name": "kd_soft"}, {"name": "hint", "student": "features.0",
                                                        "teacher": "features.0"}])
    _train(digits, ckpt, objective=objective, teacher=teacher, stop_after_steps=1)
    state = load_checkpoint(ckpt)
    _plain(state)
    assert {"model", "objective", "optimizer", "scheduler", "rng"} <= set(state)
    assert any(k.startswith("losses.hint") for k in state["objective"]["tensors"])  # the hint adapter
    qat = tmp_path / "qat.pt"
    qat_finetune(build_model("tiny_cnn", width=4), (digits.x_test[:2],), scheme="litert_int8",
                 train_config=TrainConfig(epochs=1, checkpoint_every=1), x=digits.x_train[:64],
                 y=digits.y_train[:64], batch_size=32, checkpoint=qat, progress=False)
    state = load_checkpoint(qat)
    _plain(state)
    assert state["model"]["metadata"]  # the per-module versions torchao observers need, as plain data


def test_cli_run_refuses_a_planted_checkpoint_with_exit_2(tmp_path, monkeypatch):
    from edgekd.cli import main

    monkeypatch.chdir(tmp_path)
    recipe = {"name": "planted", "data": {"dataset": "digits", "batch_size": 64},
              "teacher": {"model": "tiny_cnn", "kwargs": {"width": 4}, "train": {"epochs": 0.2}},
              "student": {"model": "tiny_cnn", "kwargs": {"width": 4}},
              "distill": {"train": {"epochs": 0.2}}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    marker, ckpt = tmp_path / "marker", tmp_path / "runs" / "planted" / "checkpoints" / "distill.pt"
    _plant(ckpt, marker, as_torch=True)
    result = CliRunner().invoke(main, ["run", "r.yaml", "--until", "distill", "--no-progress"])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("edgekd: error:")]
    assert len(errors) == 1 and "checkpoints/distill.pt" in errors[0] and "delete it" in errors[0]
    assert "Traceback" not in result.output
    assert not marker.exists()
    assert not (tmp_path / "runs" / "planted" / "distill").exists()
