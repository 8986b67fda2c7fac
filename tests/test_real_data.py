"""Real Fashion-MNIST (Debian dataset-fashion-mnist, installed by tools/setup_env.sh)."""
import pytest

from edgekd.data import load_dataset
from edgekd.train import evaluate
from edgekd.fileio import read_json
from edgekd.models import load_shipped_teacher


@pytest.fixture(scope="module")
def fashion():
    return load_dataset("fashion_mnist")


def test_shipped_teacher_is_the_recorded_one_and_clears_90_percent(fashion):
    teacher, info = load_shipped_teacher()
    assert fashion.x_train.shape == (60000, 1, 28, 28) and len(fashion.x_test) == 10000
    acc = evaluate(teacher, fashion.x_test, fashion.y_test)
    assert acc == pytest.approx(info["test_accuracy"], abs=1e-4)
    assert acc >= 0.90


@pytest.mark.slow
def test_demo_recipe_end_to_end_with_short_training(tmp_path):
    from edgekd import api

    run_dir = api.demo(run_dir=tmp_path / "demo", progress=False,
                       overrides={"distill.train.epochs": 1, "quantize.train.epochs": 0.2,
                                  "profile.max_seconds": 0.5})
    verify = read_json(run_dir / "verify" / "stage.json")["metrics"]
    assert verify["torch_fp32_accuracy"] > 0.8
    for f in verify["files"]:
        assert f["parity_ok"], f
        if f["precision"] == "int8":
            assert abs(f["accuracy"] - verify["fake_quant_accuracy"]) <= 0.003 and f["top1_agreement"] >= 0.99
    assert (run_dir / "report" / "report.html").exists()
    assert list((run_dir / "bundle").glob("*.zip"))
