"""The whole pipeline on a tiny subset: real training, QAT, converters, runtimes, profiling, bundle, report."""
import json
import zipfile

import pytest
import yaml

from edgekd.fileio import read_json
from edgekd.pipeline import run

RECIPE = {
    "name": "tiny", "seed": 0,
    "data": {"dataset": "digits", "batch_size": 64},
    "teacher": {"model": "tiny_cnn", "kwargs": {"width": 16}, "train": {"epochs": 4, "lr": 0.01}},
    "student": {"model": "tiny_cnn", "kwargs": {"width": 8}},
    "distill": {"train": {"epochs": 3, "lr": 0.01}},
    "quantize": {"train": {"epochs": 1, "lr": 0.0005}},
    "verify": {"parity_samples": 64},
    "profile": {"targets": ["cpu-local"], "max_seconds": 0.3, "min_runs": 10},
    "bundle": {"targets": ["cpu-local"], "model_name": "digits-tiny"},
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pipeline")
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    return run(recipe, run_dir=tmp / "run", progress=False, log=lambda m: None)


def test_every_stage_recorded_with_outputs(tiny_run):
    for stage in ("teacher", "distill", "quantize", "export", "verify", "profile", "bundle", "report"):
        rec = read_json(tiny_run / stage / "stage.json")
        for out in rec["outputs"].values():
            assert (tiny_run / out["path"]).exists()
        assert rec["versions"]["torch"].startswith("2.13")


def test_exported_files_match_the_trained_model(tiny_run):
    verify = read_json(tiny_run / "verify" / "stage.json")["metrics"]
    files = {f["name"]: f for f in verify["files"]}
    assert set(files) == {"student_fp32.onnx", "student_fp32.tflite", "student_int8.onnx", "student_int8.tflite"}
    for name in ("student_fp32.onnx", "student_fp32.tflite"):
        assert files[name]["max_abs_diff"] <= 1e-4 and files[name]["parity_ok"], files[name]
        assert abs(files[name]["accuracy"] - verify["torch_fp32_accuracy"]) < 0.01
    for name in ("student_int8.onnx", "student_int8.tflite"):
        assert files[name]["reference"] == "fake_quant"
        assert files[name]["top1_agreement"] >= 0.95, files[name]
    assert verify["torch_fp32_accuracy"] > 0.5


def test_profile_measures_every_file(tiny_run):
    prof = read_json(tiny_run / "profile" / "stage.json")["metrics"]
    results = prof["results"] if "results" in prof else prof["targets"][0]["results"]
    assert len(results) == 4
    for r in results:
        assert r["measured"] is True and r["p50_ms"] > 0 and r["p99_ms"] >= r["p50_ms"]


def test_bundle_and_report(tiny_run):
    from edgekd.bundle import verify_bundle

    archive = next((tiny_run / "bundle").glob("*.zip"))
    names = zipfile.ZipFile(archive).namelist()
    assert any(n.endswith(".tflite") for n in names) and any(n.endswith("manifest.json") for n in names)
    report = verify_bundle(archive)
    assert report.ok, report
    results = json.loads((tiny_run / "report" / "results.json").read_text())
    assert results
    html = (tiny_run / "report" / "report.html").read_text()
    assert "data:image/png;base64," in html
