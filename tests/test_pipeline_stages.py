"""The stage registry (order, tasks), strict stage.json, parity failures, disk full: with a toy task, no training."""
from __future__ import annotations

import errno
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from edgekd.config import Recipe, parse_recipe
from edgekd.errors import EdgeKDError
from edgekd.pipeline import run, staging_dir
from edgekd.stages import STAGES, Stage, StageRecord, recipe_stages, register_stage, stage_names

DEFAULT_ORDER = ["teacher", "baseline", "tune", "distill", "quantize", "export", "verify", "profile", "bundle", "search",
                 "kd_gain", "report"]
OFF_BY_DEFAULT = ("tune", "search")  # distill.auto and search.enabled are false by default
TOY = "toy_task"  # a task registered by this test module, as a task package would register its own stages
CALLS: list[str] = []


def toy_teacher(ctx):
    CALLS.append("teacher")
    path = ctx.stage_dir("teacher") / "teacher.txt"
    path.write_text("a teacher")
    return {"model": path}, {"test_accuracy": 0.5, "params": 10}


def toy_distill(ctx):
    CALLS.append("distill")
    assert ctx.record("teacher").metrics["params"] == 10
    path = ctx.stage_dir("distill") / "student.txt"
    from edgekd import fileio

    fileio.write_text(path, "a student")
    return {"model": path}, {"test_accuracy": float("nan"), "params": 2, "loss": [1.0, float("inf"), -math.inf]}


def toy_extra(ctx):
    CALLS.append("toy_extra")
    return {}, {"student_params": ctx.record("distill").metrics["params"]}


def never(ctx):
    raise AssertionError("a disabled stage ran")


def off(recipe):
    return False


register_stage(Stage("teacher", toy_teacher, sections=("teacher",), task=TOY))
register_stage(Stage("distill", toy_distill, sections=("student",), upstream=("teacher",), task=TOY))
register_stage(Stage("toy_extra", toy_extra, upstream=("distill",), task=TOY))
for _name in ("quantize", "export", "verify", "profile", "bundle"):
    register_stage(Stage(_name, never, task=TOY, enabled=off))


def toy_recipe(**sections) -> Recipe:
    recipe = parse_recipe({"name": "toy", **sections})
    recipe.task = TOY  # until Recipe has a `task` field: the registry reads the attribute
    return recipe


def test_default_stages_in_order_and_the_cli_reads_them():
    from edgekd.cli import STAGES as CLI_CHOICE

    assert stage_names() == DEFAULT_ORDER
    assert [s.name for s in STAGES] == DEFAULT_ORDER
    assert list(CLI_CHOICE.choices)[:len(DEFAULT_ORDER)] == DEFAULT_ORDER and "toy_extra" in CLI_CHOICE.choices
    assert STAGES.get("quantize").upstream == ("teacher", "distill")


def test_a_task_replaces_stages_and_adds_its_own():
    assert stage_names(TOY) == ["teacher", "distill", "quantize", "export", "verify", "profile", "bundle",
                                "baseline", "tune", "search", "kd_gain", "toy_extra",
                                "report"]  # the report reads every stage: last
    assert STAGES.get("distill", TOY).run is toy_distill
    assert STAGES.get("distill").run is not toy_distill  # other tasks keep the default
    assert STAGES.get("report", TOY) is STAGES.get("report")
    assert [s.name for s in recipe_stages(toy_recipe())] == ["teacher", "distill", "toy_extra", "report"]
    assert [s.name for s in recipe_stages(parse_recipe({"bundle": {"enabled": False}}))] == \
        [n for n in DEFAULT_ORDER if n != "bundle" and n not in OFF_BY_DEFAULT]


def test_registry_refuses_a_second_stage_under_one_name_and_a_cycle():
    with pytest.raises(ValueError, match="stage 'distill' is already registered for task 'toy_task'"):
        register_stage(Stage("distill", never, task=TOY))
    register_stage(Stage("loop_a", never, upstream=("loop_b",), task="cyclic"))
    register_stage(Stage("loop_b", never, upstream=("loop_a",), task="cyclic"))
    try:
        with pytest.raises(EdgeKDError, match="depend on each other in a cycle"):
            stage_names("cyclic")
    finally:
        STAGES.unregister("loop_a", "cyclic")
        STAGES.unregister("loop_b", "cyclic")


def test_a_toy_task_runs_end_to_end_and_stage_json_is_strict(tmp_path):
    CALLS.clear()
    logs: list[str] = []
    run_dir = run(toy_recipe(), run_dir=tmp_path / "run", progress=False, log=logs.append)
    assert CALLS == ["teacher", "distill", "toy_extra"]
    text = (run_dir / "distill" / "stage.json").read_text()
    record = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in stage.json"))
    assert record["metrics"]["test_accuracy"] is None and record["metrics"]["loss"] == [1.0, None, None]
    assert json.loads((run_dir / "toy_extra" / "stage.json").read_text())["metrics"] == {"student_params": 2}
    assert (run_dir / "report" / "report.md").is_file()
    CALLS.clear()
    run(toy_recipe(), run_dir=run_dir, progress=False, log=logs.append)
    assert CALLS == [] and "toy_extra: up to date, skipped" in logs


def test_disk_full_in_a_stage_is_one_line_and_leaves_nothing(tmp_path, monkeypatch):
    from edgekd import fileio

    run_dir = tmp_path / "run"

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fileio, "write_text", full)  # fails the teacher's stage.json, after its folder is in place
    with pytest.raises(EdgeKDError) as info:
        run(toy_recipe(), run_dir=run_dir, progress=False, log=lambda m: None)
    message = str(info.value)
    assert message.startswith("teacher: the disk is full writing ") and "teacher/stage.json" in message
    assert "MiB free on" in message and "\n" not in message
    assert not (run_dir / "teacher").exists() and not staging_dir(run_dir, "teacher").exists()
    monkeypatch.undo()
    run(toy_recipe(), run_dir=run_dir, until="teacher", progress=False, log=lambda m: None)

    def distill_full(path, text):  # the toy distill stage writes through fileio.write_text
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fileio, "write_text", distill_full)
    with pytest.raises(EdgeKDError, match=r"^distill: the disk is full writing .*student.txt \(.* MiB free on .*"
                                          r"nothing of this stage was kept") as info:
        run(toy_recipe(), run_dir=run_dir, progress=False, log=lambda m: None)
    assert "\n" not in str(info.value)
    assert not (run_dir / "distill").exists() and not staging_dir(run_dir, "distill").exists()
    assert (run_dir / "teacher" / "stage.json").is_file()


def test_disk_full_in_the_report_stage_publishes_nothing(tmp_path, monkeypatch):
    import edgekd.report.build as build

    run_dir = run(toy_recipe(), run_dir=tmp_path / "run", until="toy_extra", progress=False, log=lambda m: None)

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(build, "write_json", full)
    with pytest.raises(EdgeKDError, match=r"^report: the disk is full writing .*results.json"):
        run(toy_recipe(), run_dir=run_dir, progress=False, log=lambda m: None)
    assert not (run_dir / "report").exists() and not staging_dir(run_dir, "report").exists()


def test_disk_full_wrapped_by_a_library_is_still_found(tmp_path):
    from edgekd.pipeline import disk_full_as_error

    with pytest.raises(EdgeKDError, match="^export: the disk is full"):
        with disk_full_as_error("export", tmp_path):
            try:
                raise OSError(errno.ENOSPC, "No space left on device")
            except OSError as e:
                raise RuntimeError("converter failed") from e
    with pytest.raises(EdgeKDError, match="^distill: the disk is full \\("):  # torch.save says so in words
        with disk_full_as_error("distill", tmp_path):
            raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
                               "data/0: file write failed")
    with pytest.raises(OSError, match="Permission"):  # other OS errors are not disk full
        with disk_full_as_error("export", tmp_path):
            raise OSError(errno.EACCES, "Permission denied")


# --------------------------------------------------------------------------------------------- parity


def _verify_ctx(recipe: Recipe, tmp_path: Path):
    records = {"distill": StageRecord("distill", "f", {"model": {"path": "distill/student.pt"}}),
               "export": StageRecord("export", "f", metrics={"files": [
                   {"name": "student_int8.onnx", "path": "export/student_int8.onnx"}]})}
    ds = SimpleNamespace(x_test=torch.zeros(4, 1, 8, 8), y_test=torch.zeros(4, dtype=torch.long))
    return SimpleNamespace(recipe=recipe, dataset=ds, records=records, record=records.__getitem__, run_dir=tmp_path,
                           progress=False, log=lambda m: None)


@pytest.fixture
def failing_parity(monkeypatch, tmp_path):
    import edgekd.models
    import edgekd.verify

    monkeypatch.setattr(edgekd.models, "load_model_file", lambda path: (torch.nn.Identity(), {}))
    failed = {"name": "student_int8.onnx", "path": str(tmp_path / "export/student_int8.onnx"), "accuracy": 0.5,
              "reference": "torch_fp32", "max_abs_diff": 2.9, "top1_agreement": 0.93, "parity_ok": False}
    monkeypatch.setattr(edgekd.verify, "verify_files", lambda *a, **k: {"files": [dict(failed)]})


def test_a_parity_failure_stops_the_run_naming_the_files(failing_parity, tmp_path):
    from edgekd.verify.stage import run_verify

    with pytest.raises(EdgeKDError, match=r"^verify: parity failed for student_int8.onnx \(max\|diff\| 2.9 vs "
                                          r"torch_fp32, top-1 agreement 0.930\); .*verify.fail_on_parity: false"):
        run_verify(_verify_ctx(parse_recipe({}), tmp_path))


def test_fail_on_parity_false_records_the_failure_and_goes_on(failing_parity, tmp_path):
    from edgekd.verify.stage import run_verify

    recipe = parse_recipe({"verify": {"fail_on_parity": False}})
    outputs, metrics = run_verify(_verify_ctx(recipe, tmp_path))
    assert metrics["files"][0]["parity_ok"] is False and metrics["files"][0]["path"] == "export/student_int8.onnx"


def test_sensitivity_images_are_the_validation_split():
    from edgekd.data import load_dataset
    from edgekd.quant.stage import held_out

    ds = load_dataset("digits", val_fraction=0.2)
    x_held, y_held = held_out(ds)
    assert len(y_held) == len(ds.y_val) > 0
    train_rows = {tuple(r) for r in ds.x_train.flatten(1).tolist()}
    assert not {tuple(r) for r in x_held.flatten(1).tolist()} & train_rows
    with pytest.raises(EdgeKDError, match="needs a validation split"):
        held_out(load_dataset("digits"))


def test_disk_full_while_a_training_stage_checkpoints(tmp_path, monkeypatch):
    """The real teacher stage on a tiny data set: torch.save fails with ENOSPC at the first checkpoint."""
    recipe = parse_recipe({"name": "t", "data": {"dataset": "digits", "batch_size": 64},
                           "teacher": {"model": "tiny_cnn", "kwargs": {"width": 4},
                                       "train": {"epochs": 1, "checkpoint_every": 2}}})

    def full(obj, path, *args, **kwargs):
        # torch.save is given an open file (reproducible archives): a real ENOSPC names the file behind it
        raise OSError(errno.ENOSPC, "No space left on device", str(getattr(path, "name", path)))

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(EdgeKDError, match=r"^teacher: the disk is full writing .*\.tmp \(.* MiB free on "):
        run(recipe, run_dir=tmp_path / "run", until="teacher", progress=False, log=lambda m: None)
    assert not (tmp_path / "run" / "teacher").exists() and not staging_dir(tmp_path / "run", "teacher").exists()
