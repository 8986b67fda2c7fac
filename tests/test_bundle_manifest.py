"""make_bundle / bundle_run on helper-built ONNX files: manifest, metadata_props, card, layouts, errors."""
from __future__ import annotations

import hashlib
import json
import time
import zipfile
from pathlib import Path

import onnx
import pytest
from test_report_synthetic_run import (LABELS, MEAN, ONNX_FILES, STD, onnx_run, tiny_onnx_models,  # noqa: F401
                                       write_run)

from edgekd.bundle import (ModelCard, ModelFile, Normalization, archive_record, bundle_run, make_bundle,
                           read_onnx_metadata)
from edgekd.errors import EdgeKDError


@pytest.fixture
def archive(onnx_run, tmp_path) -> Path:
    return bundle_run(onnx_run, "pixel-8", tmp_path / "out", labels=LABELS, mean=MEAN, std=STD)


def _files(run: Path) -> list[ModelFile]:
    return [ModelFile("student_fp32.onnx", run / "export/student_fp32.onnx", "onnx", "fp32", "onnxruntime"),
            ModelFile("student_int8", run / "export/student_int8.onnx", "onnx", "int8", "onnxruntime")]


def test_archive_holds_models_labels_card_readme_and_app_layouts(archive):
    assert archive.name == "tiny-fmnist-pixel-8.zip"
    names = set(zipfile.ZipFile(archive).namelist())
    models = {"models/student_fp32.onnx", "models/student_int8.onnx"}
    # No .tflite in this run: the app layouts carry the ONNX files (ONNX Runtime Mobile).
    app = {f"{d}/{n}" for d in ("android/app/src/main/assets/tiny-fmnist", "ios/tiny-fmnist/Resources")
           for n in ("student_fp32.onnx", "student_int8.onnx", "labels.txt")}
    assert names == models | app | {"labels.txt", "model_card.md", "model_card.json", "README.md", "manifest.json"}


def test_manifest_lists_every_member_but_itself_with_sha256_and_size(archive):
    with zipfile.ZipFile(archive) as zf:
        manifest = json.loads(zf.read("manifest.json"))
        members = {n: zf.read(n) for n in zf.namelist() if n != "manifest.json"}
        assert zf.testzip() is None
    assert manifest["format"] == "edgekd-bundle/1" and manifest["target"] == "pixel-8"
    assert manifest["name"] == "tiny-fmnist" and manifest["version"] == "0.1.0"
    assert set(manifest["files"]) == set(members)
    for name, blob in members.items():
        assert manifest["files"][name] == {"sha256": hashlib.sha256(blob).hexdigest(), "bytes": len(blob)}, name


def test_onnx_metadata_props_state_the_model_facts(archive, tmp_path):
    with zipfile.ZipFile(archive) as zf:
        (tmp_path / "m.onnx").write_bytes(zf.read("models/student_int8.onnx"))
    onnx.checker.check_model(onnx.load(str(tmp_path / "m.onnx")))
    md = read_onnx_metadata(tmp_path / "m.onnx")
    assert md["labels"] == LABELS and md["name"] == "tiny-fmnist" and md["license"] == "Apache-2.0"
    assert md["author"] == "edgekd" and md["version"] == "0.1.0"
    assert md["norm_mean"] == [72.93] and md["norm_std"] == [90.015]
    assert md["unit_mean"] == pytest.approx([0.286]) and md["pixel_max"] == 255.0
    assert md["normalization"] == "x = (pixel - 72.93) / 90.015 for pixels in 0..255 (= (pixel / 255 - 0.286) / 0.353)"
    assert md["input_tensor"] == {"name": "image", "dtype": "float32", "shape": [1, 1, 8, 8]}
    assert md["input_description"] and md["output_description"].startswith("Logits")


def test_model_card_has_accuracy_latency_kinds_recipe_and_limits(archive):
    with zipfile.ZipFile(archive) as zf:
        card = json.loads(zf.read("model_card.json"))
        md = zf.read("model_card.md").decode()
    files = {f["name"]: f for f in card["files"]}
    assert files["student_fp32.onnx"]["accuracy"] == 0.884 and files["student_fp32.onnx"]["bytes"] > 0
    assert files["student_int8.onnx"]["parity_ok"] is False
    assert card["reference_accuracy"] == {"teacher": 0.912, "student_fp32": 0.884, "fake_quant": 0.880}
    assert card["latency"] == []  # pixel-8 profiled only .tflite files, which this run did not export
    assert card["recommended"] == "student_fp32.onnx"  # the int8 file failed parity
    assert card["recipe"]["distill.losses[0].temperature"] == 4.0
    assert card["input_shape"] == [1, 8, 8] and card["labels"] == LABELS
    assert card["normalization"]["mean"] == [72.93] and card["params"] == {"teacher": 480000, "student": 406}
    assert "| student_int8.onnx | onnxruntime | int8 | 86.10% | FAILED (max diff 2.9 vs fake_quant) |" in md
    assert "No latency figures: the run was not profiled for this target." in md
    assert "## Limitations" in md and "## Intended use" in md and "`distill.train.epochs`: 6" in md


def test_measured_target_card_marks_measured_and_noisy_figures(onnx_run, tmp_path):
    archive = bundle_run(onnx_run, "cpu-local", tmp_path, labels=LABELS, mean=MEAN, std=STD)
    md = zipfile.ZipFile(archive).read("model_card.md").decode()
    assert "| student_int8.onnx | cpu-local | onnxruntime | int8 | 1 | 0.272 | 0.299 | measured on x86_64 AVX2 " \
           "(noisy: CV > 5%) |" in md
    assert "| student_fp32.onnx | cpu-local | onnxruntime | fp32 | 1 | 0.34 | 0.374 | measured on x86_64 AVX2 |" in md


def test_predicted_figures_are_marked_with_their_uncertainty(tiny_onnx_models, tmp_path):
    run = write_run(tmp_path / "r" / "tiny", tiny_onnx_models, files=ONNX_FILES)
    stage = json.loads((run / "profile/stage.json").read_text())
    cpu = next(t for t in stage["metrics"]["targets"] if t["target"] == "cpu-local")
    for r in cpu["results"]:
        r.update(measured=False, uncertainty=0.25)
    (run / "profile/stage.json").write_text(json.dumps(stage))
    md = zipfile.ZipFile(bundle_run(run, "cpu-local", tmp_path, labels=LABELS, mean=MEAN, std=STD)).read(
        "model_card.md").decode()
    assert md.count("| predicted ±25%") == 2 and "measured on x86_64" not in md


def test_same_inputs_give_the_same_archive_bytes(onnx_run, tmp_path, monkeypatch):
    a = bundle_run(onnx_run, "pixel-8", tmp_path / "a", labels=LABELS, mean=MEAN, std=STD)
    real_time = time.time
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)
    b = bundle_run(onnx_run, "pixel-8", tmp_path / "b", labels=LABELS, mean=MEAN, std=STD)
    assert a.read_bytes() == b.read_bytes()


def test_make_bundle_with_explicit_inputs(onnx_run, tmp_path):
    card = ModelCard(name="Fashion", version="2.0", recommended="student_int8")
    out = make_bundle(_files(onnx_run), LABELS, MEAN, STD, card, "cpu-local", tmp_path / "x.zip")
    names = zipfile.ZipFile(out).namelist()
    assert "models/student_int8.onnx" in names and "ios/Fashion/Resources/student_int8.onnx" in names
    readme = zipfile.ZipFile(out).read("README.md").decode()
    assert "Recommended file for cpu-local: `student_int8.onnx`" in readme
    assert "android/app/src/main/assets/Fashion/" in readme


def test_a_failed_bundle_leaves_no_file_behind(onnx_run, tmp_path):
    out = tmp_path / "o" / "x.zip"
    out.parent.mkdir()
    with pytest.raises(EdgeKDError, match="outputs 10 classes but 9 labels were given"):
        make_bundle(_files(onnx_run), LABELS[:9], MEAN, STD, ModelCard(name="m"), "cpu-local", out)
    assert list(out.parent.iterdir()) == []


@pytest.mark.parametrize("kwargs, match", [
    ({"labels": []}, "labels are empty"),
    ({"labels": LABELS[:9] + ["class_0"]}, r"labels must be unique; repeated: \['class_0'\]"),
    ({"labels": LABELS[:9] + ["two\nlines"]}, "non-empty single-line strings"),
    ({"target": "../up"}, "target name '../up' may only use"),
    ({"files": []}, "no model files to bundle"),
])
def test_make_bundle_rejects_bad_inputs(onnx_run, tmp_path, kwargs, match):
    args = dict(files=_files(onnx_run), labels=LABELS, mean=MEAN, std=STD, card=ModelCard(name="m"),
                target="cpu-local", out_path=tmp_path / "x.zip")
    args.update(kwargs)
    with pytest.raises(EdgeKDError, match=match):
        make_bundle(**args)


def test_missing_model_file_and_colliding_names_are_reported(tmp_path):
    gone = ModelFile("a.onnx", tmp_path / "a.onnx", "onnx", "fp32", "onnxruntime")
    with pytest.raises(EdgeKDError, match="model file 'a.onnx' not found"):
        make_bundle([gone], LABELS, MEAN, STD, ModelCard(name="m"), "t", tmp_path / "x.zip")
    (tmp_path / "a.onnx").write_bytes(b"x")
    twins = [gone, ModelFile("a", tmp_path / "a.onnx", "onnx", "int8", "onnxruntime")]
    with pytest.raises(EdgeKDError, match="names collide"):
        make_bundle(twins, LABELS, MEAN, STD, ModelCard(name="m"), "t", tmp_path / "x.zip")
    with pytest.raises(EdgeKDError, match="cannot read ONNX file a.onnx"):
        make_bundle([gone], LABELS, MEAN, STD, ModelCard(name="m"), "t", tmp_path / "x.zip")


@pytest.mark.parametrize("make, match", [
    (lambda: Normalization((72.9,), (90.0, 90.0)), "must be non-empty and of equal length"),
    (lambda: Normalization((72.9,), (0.0,)), r"std must be > 0 per channel, got \(0.0,\)"),
    (lambda: Normalization((72.9,), (90.0,), pixel_max=0), "pixel_max must be > 0"),
    (lambda: Normalization((0.286,), (0.353,)), r"look like 0..1-scale figures; give them on the 0..255 pixel scale"),
    (lambda: ModelCard(name="my model"), "model card name 'my model' must start with a letter"),
    (lambda: ModelCard(name="m", version=" "), "version must not be empty"),
    (lambda: ModelFile("a", Path("a.onnx"), "tflite", "fp32", "litert"), "should end in .tflite"),
    (lambda: ModelFile("a", Path("a.pb"), "pb", "fp32", "tf"), r"format 'pb' is not one of \['onnx', 'tflite'\]"),
    (lambda: ModelFile("../a", Path("a.onnx"), "onnx", "fp32", "onnxruntime"), "may only use letters"),
])
def test_records_validate_themselves(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bundle_run_needs_labels_or_a_loadable_data_set(onnx_run, tmp_path):
    text = (onnx_run / "recipe.yaml").read_text().replace(
        "data: {dataset: fashion_mnist, batch_size: 128}", f"data: {{dataset: fashion_mnist, root: {tmp_path}}}")
    (onnx_run / "recipe.yaml").write_text(text)
    with pytest.raises(EdgeKDError, match="cannot bundle tiny: labels/mean/std were not given and loading the "
                                          "recipe's data set failed"):
        bundle_run(onnx_run, "pixel-8", tmp_path)
    (onnx_run / "recipe.yaml").unlink()  # no recipe: nothing says where the labels are
    with pytest.raises(EdgeKDError, match="labels, mean, std not given and not recorded in the run"):
        bundle_run(onnx_run, "pixel-8", tmp_path)
    archive = bundle_run(onnx_run, "pixel-8", tmp_path, labels=LABELS, mean=MEAN, std=STD)
    assert json.loads(zipfile.ZipFile(archive).read("model_card.json"))["labels"] == LABELS


def test_unit_scale_normalization_converts_to_the_pixel_scale():
    n = Normalization.from_unit_scale((0.5, 0.25, 0.1), (0.2, 0.2, 0.4))
    assert n.mean == (127.5, 63.75, 25.5) and n.std == (51.0, 51.0, 102.0)
    assert n.unit_mean == pytest.approx([0.5, 0.25, 0.1])
    # pixel 255 on channel 0: (255 - 127.5) / 51 = 2.5 = (1.0 - 0.5) / 0.2
    assert (255 - n.mean[0]) / n.std[0] == pytest.approx(2.5)


def test_bundle_run_takes_labels_and_normalization_from_the_recipe_data_set(onnx_run, tmp_path):
    from edgekd.data import load_dataset

    text = (onnx_run / "recipe.yaml").read_text().replace("data: {dataset: fashion_mnist, batch_size: 128}",
                                                           "data: {dataset: digits}")
    text = text.replace("bundle: {targets: [pixel-8], model_name: tiny-fmnist, version: 0.1.0}",
                        "bundle: {model_name: Digits, version: 2.1.0, author: me}")
    (onnx_run / "recipe.yaml").write_text(text)
    archive = bundle_run(onnx_run, "pixel-8", tmp_path)
    digits = load_dataset("digits")
    card = json.loads(zipfile.ZipFile(archive).read("model_card.json"))
    assert archive.name == "Digits-pixel-8.zip" and card["version"] == "2.1.0" and card["author"] == "me"
    assert card["labels"] == list(digits.labels)
    assert card["normalization"]["mean"] == pytest.approx(list(digits.mean))
    assert card["normalization"]["std"] == pytest.approx(list(digits.std))


def test_bundle_run_before_export_says_what_to_do(tmp_path):
    run = write_run(tmp_path / "early", None, until="quantize")
    with pytest.raises(EdgeKDError, match="has no export stage results .* run the export stage first"):
        bundle_run(run, "pixel-8", tmp_path, labels=LABELS, mean=MEAN, std=STD)


def test_archive_record_names_the_published_path_not_the_staging_one(archive, onnx_run):
    staged = onnx_run / ".bundle.staging" / archive.name  # where the stage writes it before publishing
    staged.parent.mkdir()
    staged.write_bytes(archive.read_bytes())
    rec = archive_record(staged, "pixel-8", f"bundle/{archive.name}")
    assert rec == {"target": "pixel-8", "path": f"bundle/{archive.name}",
                   "sha256": hashlib.sha256(archive.read_bytes()).hexdigest(), "bytes": archive.stat().st_size}


def test_bundle_facts_of_a_float_npz_run_use_its_pixel_scale(tmp_path):
    """Float images (0..1) keep mean/std on their own scale and pixel_max 1, instead of failing the 0..255 check."""
    import numpy as np

    from edgekd.bundle.from_run import _data_facts
    from edgekd.config import parse_recipe
    from edgekd.runs import RunRecord

    rng = np.random.default_rng(0)
    x = rng.random((40, 1, 8, 8)).astype(np.float32)
    y = np.arange(40) % 4
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y, x_test=x[:8], y_test=y[:8])
    recipe = parse_recipe({"data": {"dataset": "npz", "root": str(tmp_path / "d.npz")}})
    labels, mean, std, pixel_max = _data_facts(RunRecord(tmp_path, recipe), None, None, None)
    assert pixel_max == 1.0 and labels == ["0", "1", "2", "3"]
    assert 0.4 < mean[0] < 0.6 and 0.2 < std[0] < 0.4
