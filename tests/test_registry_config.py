import pytest

from edgekd.config import load_recipe, parse_recipe
from edgekd.errors import ConfigError, EdgeKDError
from edgekd.registry import Registry


def test_registry_unknown_name_suggests_closest_and_lists_known():
    reg = Registry("loss")
    for name in ("kd_soft", "dkd", "dist"):
        reg.register(name)(object)
    with pytest.raises(EdgeKDError, match=r"unknown loss 'kd_sotf'; did you mean 'kd_soft'\? known: dist, dkd, kd_soft"):
        reg.get("kd_sotf")
    with pytest.raises(ValueError, match="already registered"):
        reg.register("dkd")(int)


def test_defaults_are_a_valid_recipe():
    r = parse_recipe({})
    assert r.student.model == "mobilenet_student" and r.distill.train.epochs == 5


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as err:
        parse_recipe({"data": {"datset": "x", "batch_size": -1}, "student": {"model": "tiny_cn"},
                      "distill": {"train": {"lr": "fast", "optimizer": "adm"}},
                      "quantize": {"freeze_bn_after": 3}})
    text = str(err.value)
    assert len(err.value.problems) == 6
    assert "data.datset: unknown field; did you mean 'dataset'?" in text
    assert "data.batch_size: must be > 0, got -1" in text
    assert "student.model: unknown model 'tiny_cn'; did you mean 'tiny_cnn'?" in text
    assert "distill.train.lr: expected float, got 'fast'" in text
    assert "distill.train.optimizer: 'adm' is not allowed; did you mean 'adamw'?" in text
    assert "quantize.freeze_bn_after: a fraction of the QAT steps in [0, 1], got 3" in text


def test_teacher_file_kinds_need_a_path_and_scientific_notation_parses(tmp_path):
    with pytest.raises(ConfigError, match="teacher.path: a onnx teacher needs the file's path"):
        parse_recipe({"teacher": {"kind": "onnx"}})
    f = tmp_path / "r.yaml"
    f.write_text("distill:\n  train: {lr: 1e-3}\n")
    assert load_recipe(f).distill.train.lr == pytest.approx(1e-3)


def test_load_recipe_errors_are_one_line(tmp_path):
    with pytest.raises(EdgeKDError, match="recipe not found"):
        load_recipe(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [unclosed\n")
    with pytest.raises(EdgeKDError, match="is not valid YAML"):
        load_recipe(bad)
    top = tmp_path / "top.yaml"
    top.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_recipe(top)


def test_overrides_and_relative_paths(tmp_path):
    (tmp_path / "w.pt").write_bytes(b"x")
    f = tmp_path / "r.yaml"
    f.write_text("teacher: {weights: w.pt}\n")
    r = load_recipe(f, {"distill.train.epochs": 2, "seed": 3})
    assert r.distill.train.epochs == 2 and r.seed == 3
    assert r.teacher.weights == str((tmp_path / "w.pt").resolve())


def test_shipped_demo_recipe_validates():
    from edgekd.api import DEMO_RECIPE

    r = load_recipe(DEMO_RECIPE)
    assert r.student.model == "tiny_cnn" and r.quantize.kd
