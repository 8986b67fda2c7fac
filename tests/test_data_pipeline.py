"""`edgekd run` end to end on an image folder streamed from disk (data.stream: true), worker processes included."""
import pytest
import yaml
from click.testing import CliRunner

from data_fixtures import write_folder
from edgekd.cli import main
from edgekd.fileio import read_json


@pytest.fixture(scope="module")
def streamed_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("streamrun")
    write_folder(tmp / "images", per_class=16)
    recipe = {
        "name": "stream-tiny", "seed": 0,
        "data": {"dataset": "image_folder", "root": "images", "stream": True, "resolution": 16, "workers": 1,
                 "batch_size": 16, "eval_batch_size": 32, "val_fraction": 0.1, "mean": "dataset", "std": "dataset"},
        "teacher": {"model": "tiny_cnn", "kwargs": {"width": 8}, "train": {"epochs": 3, "lr": 0.01}},
        "student": {"model": "tiny_cnn", "kwargs": {"width": 4}},
        "distill": {"train": {"epochs": 2, "lr": 0.01}, "baseline": False},
        "quantize": {"enabled": False},
        "export": {"formats": ["onnx"], "precisions": ["fp32"]},
        "verify": {"parity_samples": 8},
        "profile": {"targets": ["cpu-local"], "max_seconds": 0.1, "min_runs": 5},
        "bundle": {"enabled": False},
    }
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    result = CliRunner().invoke(main, ["run", str(tmp / "recipe.yaml"), "--run-dir", str(tmp / "run")])
    assert result.exit_code == 0, result.output
    return tmp / "run", tmp


def test_every_stage_ran_on_streamed_data(streamed_run):
    run_dir, _ = streamed_run
    teacher = read_json(run_dir / "teacher" / "stage.json")["metrics"]
    distill = read_json(run_dir / "distill" / "stage.json")["metrics"]
    assert teacher["source"] == "trained" and 0 <= teacher["test_accuracy"] <= 1
    assert distill["teacher_signal"] == "cache" and distill["data_split"]["val"] > 0
    assert list((run_dir / "cache").glob("teacher-logits-*.npy"))  # the memory-mapped cache of streamed data
    verify = read_json(run_dir / "verify" / "stage.json")["metrics"]
    (f,) = verify["files"]
    assert f["parity_ok"] and abs(f["accuracy"] - distill["test_accuracy"]) < 1e-6


def test_recipe_records_the_stream_fields_and_a_rerun_skips(streamed_run):
    run_dir, tmp = streamed_run
    saved = yaml.safe_load((run_dir / "recipe.yaml").read_text())["data"]
    assert saved["stream"] is True and saved["resolution"] == 16 and saved["workers"] == 1
    before = (run_dir / "distill" / "stage.json").read_text()
    result = CliRunner().invoke(main, ["run", str(tmp / "recipe.yaml"), "--run-dir", str(run_dir)])
    assert result.exit_code == 0, result.output
    assert (run_dir / "distill" / "stage.json").read_text() == before
