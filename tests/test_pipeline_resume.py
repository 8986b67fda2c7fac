"""Run directory contract: stages skip when unchanged, re-run when inputs change, and a killed run resumes."""
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from edgekd.fileio import read_json
from edgekd.models import load_model_file
from edgekd.pipeline import run

RECIPE = {
    "name": "r", "data": {"dataset": "digits", "batch_size": 32},
    "teacher": {"model": "tiny_cnn", "kwargs": {"width": 8}, "train": {"epochs": 1, "lr": 0.01}},
    "student": {"model": "tiny_cnn", "kwargs": {"width": 4}},
    "distill": {"train": {"epochs": 2, "lr": 0.01, "checkpoint_every": 10}},
}


def write_recipe(tmp_path, **changes):
    recipe = yaml.safe_load(yaml.safe_dump(RECIPE))
    for key, value in changes.items():
        node = recipe
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_finished_stages_are_skipped_and_changed_ones_rerun(tmp_path):
    logs = []
    recipe = write_recipe(tmp_path)
    run_dir = run(recipe, run_dir=tmp_path / "run", until="distill", progress=False, log=logs.append)
    first = read_json(run_dir / "distill" / "stage.json")
    logs.clear()
    run(recipe, run_dir=run_dir, until="distill", progress=False, log=logs.append)
    assert logs == ["teacher: up to date, skipped", "baseline: up to date, skipped", "distill: up to date, skipped"]
    recipe = write_recipe(tmp_path, **{"distill.train.lr": 0.02})
    logs.clear()
    run(recipe, run_dir=run_dir, until="distill", progress=False, log=logs.append)
    assert logs[0] == "teacher: up to date, skipped" and not logs[1].endswith("skipped")
    assert read_json(run_dir / "distill" / "stage.json")["fingerprint"] != first["fingerprint"]


def test_tampered_output_reruns_the_stage(tmp_path):
    recipe = write_recipe(tmp_path)
    run_dir = run(recipe, run_dir=tmp_path / "run", until="teacher", progress=False, log=lambda m: None)
    (run_dir / "teacher" / "teacher.pt").write_bytes(b"broken")
    logs = []
    run(recipe, run_dir=run_dir, until="teacher", progress=False, log=logs.append)
    assert not logs[0].endswith("skipped")
    load_model_file(run_dir / "teacher" / "teacher.pt")


def test_killed_training_resumes_with_the_same_result(tmp_path):
    recipe = write_recipe(tmp_path, **{"distill.train.epochs": 30})
    reference = run(recipe, run_dir=tmp_path / "ref", until="distill", progress=False, log=lambda m: None)
    run_dir = tmp_path / "killed"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "edgekd.cli", "run", str(recipe), "--run-dir", str(run_dir),
                             "--until", "distill", "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    ckpt = run_dir / "checkpoints" / "distill.pt"
    deadline = time.time() + 120
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (run_dir / "distill" / "stage.json").exists(), "the run finished before it could be killed"
    assert not (run_dir / "distill" / "student.pt").exists()
    run(recipe, run_dir=run_dir, until="distill", progress=False, log=lambda m: None)
    metrics = read_json(run_dir / "distill" / "stage.json")["metrics"]
    assert metrics["resumed_from_step"] and metrics["resumed_from_step"] > 0
    a = load_model_file(reference / "distill" / "student.pt")[0].state_dict()
    b = load_model_file(run_dir / "distill" / "student.pt")[0].state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert metrics["test_accuracy"] == read_json(reference / "distill" / "stage.json")["metrics"]["test_accuracy"]


def test_a_failing_stage_leaves_the_previous_outputs_untouched(tmp_path, monkeypatch):
    import dataclasses

    from edgekd.errors import EdgeKDError
    from edgekd.stages import STAGES

    recipe = write_recipe(tmp_path)
    run_dir = run(recipe, run_dir=tmp_path / "run", until="distill", progress=False, log=lambda m: None)
    before = (run_dir / "distill" / "student.pt").read_bytes()
    record = (run_dir / "distill" / "stage.json").read_text()

    def failing(ctx):
        (ctx.stage_dir("distill") / "student.pt").write_bytes(b"half-written")
        raise EdgeKDError("boom")

    monkeypatch.setitem(STAGES._stages, (None, "distill"), dataclasses.replace(STAGES.get("distill"), run=failing))
    with pytest.raises(EdgeKDError, match="boom"):
        run(recipe, run_dir=run_dir, until="distill", force=True, progress=False, log=lambda m: None)
    assert (run_dir / "distill" / "student.pt").read_bytes() == before
    assert (run_dir / "distill" / "stage.json").read_text() == record
    assert not (run_dir / ".distill.staging").exists()  # the failed stage's half-written files are gone


def test_unknown_stage_name_suggests_the_closest(tmp_path):
    from edgekd.errors import EdgeKDError

    from edgekd.stages import STAGES

    with pytest.raises(EdgeKDError, match="unknown stage 'distil'; did you mean 'distill'"):
        STAGES.get("distil")
    with pytest.raises(EdgeKDError, match="unknown stage 'distil'; did you mean 'distill'"):
        run(write_recipe(tmp_path), until="distil", run_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()
