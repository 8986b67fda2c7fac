"""`edgekd validate` / `edgekd run` dry-run the recipe: every problem at once, before anything trains or is written."""
import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from edgekd.config import load_recipe, parse_overrides, parse_recipe
from edgekd.errors import ConfigError, EdgeKDError
from edgekd.validate import dry_run

SMALL = {"name": "typo", "data": {"dataset": "digits", "batch_size": 64},
         "teacher": {"model": "tiny_cnn", "kwargs": {"width": 4}, "train": {"epochs": 0.2}},
         "student": {"model": "tiny_cnn", "kwargs": {"width": 4}},
         "distill": {"losses": [{"name": "ce", "weight": 0.1},
                                {"name": "kd_soft", "weight": 0.9, "temprature": 2.0}]}}


def _write(tmp_path, recipe, name="r.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_misspelt_loss_option_is_reported_with_the_valid_options():
    with pytest.raises(ConfigError) as err:
        parse_recipe(SMALL)
    assert err.value.problems == ["distill.losses[2] (kd_soft): unknown option(s) 'temprature'; did you mean "
                                  "'temperature'? allowed: temperature, standardize, weight, label"]


def test_run_with_a_misspelt_loss_option_exits_2_before_the_teacher_stage(tmp_path, monkeypatch):
    from edgekd.cli import main

    monkeypatch.chdir(tmp_path)
    _write(tmp_path, SMALL)
    for args in (["validate", "r.yaml"], ["run", "r.yaml", "--no-progress"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert "did you mean 'temperature'?" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "runs").exists()  # nothing was created: no run directory, no teacher stage


def test_dry_run_reports_every_problem_at_once(tmp_path):
    from edgekd.config import Recipe

    r = Recipe()
    r.teacher.kind, r.teacher.members = "ensemble", [{"kind": "torch", "model": "tiny_cn"}, {"model": "tiny_cnn"},
                                                      {"kind": "onnx"}, {"kind": "toch", "model": "x"}]
    r.quantize.kd_losses = [{"name": "kd_soft", "tau": 1}]
    r.quantize.ptq_method, r.quantize.scheme = "minmx", "litert_int9"
    r.quantize.calibration = str(tmp_path / "missing.yaml")
    r.export.formats = ["onnx", "tflte"]
    r.profile.targets = ["pixel-9000"]
    r.distill.cache_topk = 4
    r.distill.losses = [{"name": "dkd"}]
    with pytest.raises(ConfigError) as err:
        dry_run(r)
    text = "\n".join(err.value.problems)
    for expected in ["teacher.members[0].model: unknown model 'tiny_cn'; did you mean 'tiny_cnn'?",
                     "teacher.members[1]: a member is a teacher spec mapping with a 'kind'",
                     "teacher.members[2]: a onnx member needs 'path'",
                     "teacher.members[3].kind: unknown teacher kind 'toch'; did you mean 'torch'?",
                     "quantize.kd_losses[1] (kd_soft): unknown option(s) 'tau'",
                     "quantize.ptq_method: unknown calibration method 'minmx'; did you mean 'minmax'?",
                     "quantize.scheme: unknown quantization scheme 'litert_int9'; did you mean 'litert_int8'?",
                     "export.formats[1]: unknown", "'tflte'; did you mean 'tflite'?",
                     "profile.targets[0]: unknown target 'pixel-9000'",
                     "distill.cache_topk: 4 stores top-k teacher logits, but a loss in distill.losses needs full",
                     "quantize.calibration: calibration recipe not found"]:
        assert expected in text, (expected, text)
    assert len(err.value.problems) == 11, text


def test_teacher_kind_comes_from_the_registry():
    with pytest.raises(ConfigError, match=r"teacher.kind: unknown teacher kind 'onxx'; did you mean 'onnx'\?"):
        parse_recipe({"teacher": {"kind": "onxx", "path": "t.onnx"}})


def test_dry_run_checks_files_that_load_recipe_resolved(tmp_path):
    path = _write(tmp_path, {"teacher": {"weights": "missing.pt"}, "data": {"dataset": "digits"}})
    with pytest.raises(ConfigError, match=r"teacher.weights: file not found: missing.pt"):
        dry_run(path)
    dry_run(_write(tmp_path, {"data": {"dataset": "digits"}, "student": {"model": "tiny_cnn"}}, "ok.yaml"))


def test_yaml_tag_through_set_is_one_line_and_never_constructed(tmp_path, monkeypatch):
    from edgekd.cli import main

    with pytest.raises(EdgeKDError, match=r"--set 'data.root=!!python/object:os.system': the value is not plain YAML"):
        parse_overrides(["data.root=!!python/object:os.system"])
    marker = tmp_path / "marker"
    with pytest.raises(EdgeKDError, match="not plain YAML"):
        load_recipe(_write(tmp_path, {"data": {"dataset": "digits"}}),
                    [f"seed=!!python/object/apply:os.system ['touch {marker}']"])
    assert not marker.exists()
    assert parse_overrides(["distill.train.epochs=2", "profile.targets=[cpu-local]"]) == {
        "distill.train.epochs": 2, "profile.targets": ["cpu-local"]}
    monkeypatch.chdir(tmp_path)
    _write(tmp_path, {"data": {"dataset": "digits"}})
    result = CliRunner().invoke(main, ["run", "r.yaml", "--set", "data.root=!!python/object:os.system"])
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert [line for line in result.output.splitlines() if line.startswith("edgekd: error:")][0].count("\n") == 0
    assert not (tmp_path / "runs").exists()


def test_nan_labels_are_one_line_errors(tmp_path):
    from edgekd.data import load_dataset
    from edgekd.models import build_model
    from edgekd.train import TrainConfig, train

    x = np.zeros((8, 8, 8), np.uint8)
    y = np.array([0, 1, np.nan, 1, 0, 1, 0, 1])
    path = tmp_path / "nan.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x, y_test=np.zeros(8, np.int64))
    with pytest.raises(EdgeKDError, match=r"nan.npz: y_train must hold class indices 0..K-1 .*NaN"):
        load_dataset("npz", str(path))
    with pytest.raises(EdgeKDError, match="must be an integer tensor of class indices, got torch.float"):
        train(build_model("tiny_cnn", width=4), torch.zeros(8, 1, 8, 8), torch.tensor(y), TrainConfig(),
              progress=False)


def test_run_and_api_validate_dry_run_a_recipe_object(tmp_path):
    from edgekd import api
    from edgekd.config import Recipe
    from edgekd.pipeline import run

    r = Recipe(runs_dir=str(tmp_path / "runs"))
    r.distill.losses = [{"name": "kd_soft", "temprature": 2.0}]
    for call in (lambda: run(r), lambda: api.validate(r)):
        with pytest.raises(ConfigError, match="did you mean 'temperature'"):
            call()
    assert not (tmp_path / "runs").exists()
