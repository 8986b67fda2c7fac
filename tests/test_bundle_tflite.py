"""Bundles of converted litert-torch/torch.onnx files: TFLite metadata, int8 I/O, every model runs (export tier)."""
from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from test_report_synthetic_run import LABELS, MEAN, STD, synthetic_run, tiny_models  # noqa: F401

from edgekd.bundle import bundle_run, read_onnx_metadata, read_tflite_metadata, verify_bundle
from edgekd.runtimes import open_session

pytestmark = pytest.mark.export


@pytest.fixture
def archive(synthetic_run, tmp_path) -> Path:
    return bundle_run(synthetic_run, "pixel-8", tmp_path / "out", labels=LABELS, mean=MEAN, std=STD)


def test_archive_holds_models_labels_card_readme_and_tflite_app_layouts(archive):
    assert archive.name == "tiny-fmnist-pixel-8.zip"
    names = set(zipfile.ZipFile(archive).namelist())
    models = {f"models/{n}" for n in ("student_fp32.tflite", "student_int8.tflite", "student_fp32.onnx",
                                      "student_int8.onnx")}
    app = {f"{d}/{n}" for d in ("android/app/src/main/assets/tiny-fmnist", "ios/tiny-fmnist/Resources")
           for n in ("student_fp32.tflite", "student_int8.tflite", "labels.txt")}
    assert names == models | app | {"labels.txt", "model_card.md", "model_card.json", "README.md", "manifest.json"}


def test_tflite_metadata_reads_back_with_labels_and_pixel_scale_normalization(archive):
    with zipfile.ZipFile(archive) as zf:
        fp32 = read_tflite_metadata(zf.read("models/student_fp32.tflite"))
        int8 = read_tflite_metadata(zf.read("models/student_int8.tflite"))
    for md in (fp32, int8):
        assert md["labels"] == LABELS and md["associated_files"] == ["labels.txt"]
        assert md["name"] == "tiny-fmnist" and md["version"] == "0.1.0"
        assert md["author"] == "edgekd" and md["license"] == "Apache-2.0"
        assert md["norm_mean"] == pytest.approx([72.93], rel=1e-6)
        assert md["norm_std"] == pytest.approx([90.015], rel=1e-6)
        assert md["color_space"] == "GRAYSCALE"
    # int8 I/O from litert-torch: the descriptions carry the tensor's own scale and zero point.
    assert int8["input_tensor"]["dtype"] == "int8" and fp32["input_tensor"]["dtype"] == "float32"
    scale, zp = int8["input_tensor"]["scale"], int8["input_tensor"]["zero_point"]
    assert f"round(x / {scale:.8g}) + ({zp})" in int8["input_description"]
    assert "logits = (q - (" in int8["output_description"]
    assert "quantize" not in fp32["input_description"]
    readme = zipfile.ZipFile(archive).read("README.md").decode()
    assert f"`models/student_int8.tflite` has int8 input: after normalizing, q = clip(round(x / {scale:.8g})" in readme


def test_bundled_models_compute_what_the_exported_ones_did(archive, synthetic_run, tmp_path):
    x = np.random.default_rng(1).standard_normal((1, 1, 8, 8)).astype(np.float32)
    with zipfile.ZipFile(archive) as zf:
        for name in ("student_fp32.tflite", "student_int8.tflite", "student_fp32.onnx", "student_int8.onnx"):
            (tmp_path / name).write_bytes(zf.read(f"models/{name}"))
            np.testing.assert_array_equal(open_session(tmp_path / name).run(x),
                                          open_session(synthetic_run / "export" / name).run(x))


def test_dynamo_external_data_is_folded_into_one_onnx_file(archive, synthetic_run, tmp_path):
    assert (synthetic_run / "export" / "student_fp32.onnx.data").exists()  # what torch.onnx dynamo wrote
    with zipfile.ZipFile(archive) as zf:
        (tmp_path / "m.onnx").write_bytes(zf.read("models/student_fp32.onnx"))
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    assert read_onnx_metadata(tmp_path / "m.onnx")["labels"] == LABELS


def test_verify_runs_every_model_in_its_runtime(archive):
    report = verify_bundle(archive)
    assert {m["name"]: (m["runtime"], m["output_shape"], m["ok"]) for m in report.models} == {
        "models/student_fp32.tflite": ("litert", [1, 10], True), "models/student_int8.tflite": ("litert", [1, 10], True),
        "models/student_fp32.onnx": ("onnxruntime", [1, 10], True),
        "models/student_int8.onnx": ("onnxruntime", [1, 10], True)}
    assert report.metadata["models/student_int8.tflite"]["norm_std"] == pytest.approx([90.015], rel=1e-6)


def test_card_recommends_the_int8_tflite_on_the_predicted_target(archive):
    card = json.loads(zipfile.ZipFile(archive).read("model_card.json"))
    assert card["recommended"] == "student_int8.tflite"
    assert {r["name"] for r in card["latency"]} == {"student_fp32.tflite", "student_int8.tflite"}
    files = {f["name"]: f for f in card["files"]}
    assert files["student_int8.tflite"]["io"]["input"]["dtype"] == "int8"
    assert files["student_int8.tflite"]["accuracy"] == 0.879
