"""The causal_lm recipe end to end on a tiny HF-format teacher folder and the user's own text files."""
from __future__ import annotations

import json

import pytest

from edgekd.errors import ConfigError
from tests.lm_fixtures import WORDS, tiny_llama, tokenizer_folder


@pytest.fixture(scope="module")
def lm_project(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    teacher = root / "teacher"
    tiny_llama(layers=2).save_pretrained(teacher)
    tokenizer_folder(teacher)
    texts = root / "texts"
    texts.mkdir()
    for i in range(6):
        (texts / f"{i}.txt").write_text(" ".join(WORDS[(i + j) % len(WORDS)] for j in range(120)))
    return root


def _recipe(root, **overrides):
    from edgekd.config import parse_recipe

    data = {"name": "tiny_lm", "task": "causal_lm", "runs_dir": str(root / "runs"),
            "data": {"source": str(root / "texts"), "seq_len": 16, "train_blocks": 8, "eval_blocks": 2,
                     "heldout_last": 2, "ood": False},
            "teacher": {"path": str(root / "teacher"), "topk": 8},
            "student": {"layers": 1, "hidden": 16, "init": "teacher"},
            "distill": {"losses": [{"name": "gjsd", "beta": 0.5}, {"name": "ce", "weight": 0.5}], "steps": 6,
                        "batch_size": 4, "lr": 1e-2, "warmup": 1},
            "export": {"formats": ["onnx"], "cache_len": 24, "prefill_len": 8},
            "verify": {"new_tokens": 4, "prompt_len": 8},
            "profile": {"prompt_len": 8, "decode_tokens": 2, "repeats": 2}}
    data.update(overrides)
    return parse_recipe(data)


def test_lm_recipe_reports_every_problem():
    with pytest.raises(ConfigError) as e:
        _recipe_bad = {"task": "causal_lm", "student": {"layrs": 2}, "distill": {"method": "nope"}}
        from edgekd.config import parse_recipe

        parse_recipe(_recipe_bad)
    text = str(e.value)
    assert "student.layrs" in text and "did you mean 'layers'" in text and "nope" in text


def test_causal_lm_run_end_to_end_and_resume(lm_project, tmp_path, monkeypatch):
    from edgekd.pipeline import run
    from edgekd.stages import recipe_stages

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    recipe = _recipe(lm_project)
    assert [s.name for s in recipe_stages(recipe)] == ["teacher", "distill", "export", "verify", "profile", "report"]
    logs: list[str] = []
    run_dir = run(recipe, progress=False, log=logs.append)
    files = json.loads((run_dir / "verify" / "verify.json").read_text())
    assert set(files) == {"student.onnx", "student.kv.onnx", "student.int8.onnx", "student.int8.kv.onnx"}
    assert files["student.onnx"]["max_abs_logit_diff"] < 1e-4 and files["student.kv.onnx"]["greedy_agreement"] == 1
    report = (run_dir / "report" / "report.md").read_text()
    assert "student.int8.onnx" in report and "teacher" in report
    logs.clear()
    run(recipe, progress=False, log=logs.append)
    assert any("distill: up to date" in line for line in logs)


def test_cli_validate_and_run_print_the_lm_recipe_and_report(lm_project, tmp_path, monkeypatch):
    import yaml
    from click.testing import CliRunner

    from edgekd.cli import main

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(_recipe(lm_project).to_dict()))
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 0 and "causal_lm" in res.output, res.output
    res = CliRunner().invoke(main, ["run", str(path), "--no-progress", "--set", "distill.steps=2"])
    assert res.exit_code == 0, res.output
    assert "| student.onnx |" in res.output
