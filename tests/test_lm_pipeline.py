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


@pytest.fixture(scope="module")
def lm_run(lm_project, tmp_path_factory):
    """One tiny causal_lm run (teacher -> ... -> bundle -> report), shared by the tests that read it."""
    from edgekd.bundle.signing import generate_keypair
    from edgekd.pipeline import run

    root = tmp_path_factory.mktemp("lmrun")
    private, public = generate_keypair(root / "release.pem")
    mp = pytest.MonkeyPatch()
    mp.setenv("EDGEKD_CACHE", str(root / "cache"))
    recipe = _recipe(lm_project, runs_dir=str(root / "runs"), bundle={"signing_key": str(private)})
    logs: list[str] = []
    run_dir = run(recipe, progress=False, log=logs.append)
    yield recipe, run_dir, logs, public
    mp.undo()


def test_causal_lm_run_end_to_end_and_resume(lm_run, monkeypatch, tmp_path):
    from edgekd.pipeline import run
    from edgekd.stages import recipe_stages

    recipe, run_dir, logs, _ = lm_run
    assert [s.name for s in recipe_stages(recipe)] == ["teacher", "distill", "export", "verify", "profile", "bundle",
                                                      "report"]
    files = json.loads((run_dir / "verify" / "verify.json").read_text())
    assert set(files) == {"student.onnx", "student.kv.onnx", "student.int8.onnx", "student.int8.kv.onnx"}
    assert files["student.onnx"]["max_abs_logit_diff"] < 1e-4 and files["student.kv.onnx"]["greedy_agreement"] == 1
    report = (run_dir / "report" / "report.md").read_text()
    assert "student.int8.onnx" in report and "teacher" in report
    prof = json.loads((run_dir / "profile" / "profile.json").read_text())["files"]
    for name in ("student.kv.onnx", "student.onnx"):
        mem = prof[name]["memory"]
        assert 0 < mem["session_peak_mb"] < mem["peak_rss_mb"] < 2000, mem  # a child's own high-water, not ours
    assert prof["student.kv.onnx"]["decode_kind"] == "kv_cache" and prof["student.kv.onnx"]["decode_tokens"] == 2
    monkeypatch.setenv("EDGEKD_CACHE", str(run_dir.parent.parent / "cache"))
    logs = []
    run(recipe, progress=False, log=logs.append)
    assert any("distill: up to date" in line for line in logs)


def test_lm_bundle_verifies_signed_and_catches_tampering(lm_run, tmp_path):
    import zipfile

    from edgekd.bundle import verify_bundle
    from edgekd.errors import EdgeKDError

    _, run_dir, _, public = lm_run
    (archive,) = (run_dir / "bundle").glob("*.zip")
    with zipfile.ZipFile(archive) as zf:
        names = set(zf.namelist())
        manifest = json.loads(zf.read("manifest.json"))
        config = json.loads(zf.read("lm_config.json"))
        card = zf.read("model_card.md").decode()
    assert manifest["kind"] == "causal_lm" and "manifest.sig" in names
    assert {"models/student.kv.onnx", "models/student.int8.kv.onnx", "tokenizer.json", "lm_config.json",
            "model_card.json", "model_card.md", "README.md"} <= names
    assert "models/student.onnx" not in names  # fixed-length files are not what a phone generates with
    assert config["files"]["models/student.kv.onnx"]["inputs"][:4] == ["input_ids", "attention_mask", "position_ids",
                                                                      "past_key_values.0.key"]
    assert "held-out perplexity" in card and "student.kv.onnx" in card
    report = verify_bundle(archive, key=public)
    assert report.signature == "valid" and [m["ok"] for m in report.models] == [True, True]
    assert all(m["output_shape"][-1] == 61 for m in report.models)
    tampered = tmp_path / "tampered.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(tampered, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            dst.writestr(info, data.replace(b'"</s>"', b'"<x>"') if info.filename == "tokenizer.json" else data)
    with pytest.raises(EdgeKDError, match="tokenizer.json: sha256/size differ"):
        verify_bundle(tampered, key=public)


def test_cli_bundle_verify_and_bundle_of_an_lm_run_dir(lm_run, tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    _, run_dir, _, public = lm_run
    res = CliRunner().invoke(main, ["bundle", str(run_dir), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    (archive,) = tmp_path.glob("*.zip")
    res = CliRunner().invoke(main, ["bundle", "verify", str(archive), "--key", str(public)])
    assert res.exit_code == 0 and "signature: valid" in res.output, res.output  # the recipe's key signed it
    assert "models/student.kv.onnx" in res.output and "onnxruntime" in res.output
    res = CliRunner().invoke(main, ["bundle", "verify", str(tmp_path / "nope.zip")])
    assert res.exit_code == 2 and "archive not found" in res.output and "Traceback" not in res.output


def test_cli_validate_and_run_print_the_lm_recipe_and_report(lm_project, tmp_path, monkeypatch):
    import yaml
    from click.testing import CliRunner

    from edgekd.cli import main

    monkeypatch.setenv("EDGEKD_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "lm.yaml"
    path.write_text(yaml.safe_dump(_recipe(lm_project).to_dict()))
    res = CliRunner().invoke(main, ["validate", str(path)])
    assert res.exit_code == 0 and "causal_lm" in res.output, res.output
    res = CliRunner().invoke(main, ["run", str(path), "--no-progress", "--set", "distill.steps=2", "--set",
                                    "profile.memory=false", "--set", "bundle.enabled=false"])
    assert res.exit_code == 0, res.output
    assert "| student.onnx |" in res.output


def test_lm_recipe_checks_phone_targets_and_signing_key(lm_project, tmp_path):
    with pytest.raises(ConfigError) as e:
        _recipe(lm_project, profile={"phones": ["pixel-9x"]}, bundle={"signing_key": str(tmp_path / "no.pem")})
    text = str(e.value)
    assert "profile.phones: unknown target 'pixel-9x'" in text and "pixel-8" in text
    assert "bundle.signing_key" in text and "no.pem not found" in text
