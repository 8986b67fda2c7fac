"""verify_bundle: a good bundle passes with every model run; each kind of damage is one clear problem line."""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import onnx
import pytest
from test_report_synthetic_run import LABELS, MEAN, ONNX_FILES, STD, tiny_onnx_models  # noqa: F401

from edgekd.bundle import bundle_run, verify_bundle
from edgekd.errors import EdgeKDError


@pytest.fixture(scope="module")
def good_archive(tiny_onnx_models, tmp_path_factory) -> Path:
    from test_report_synthetic_run import write_run

    run = write_run(tmp_path_factory.mktemp("verify") / "runs" / "tiny", tiny_onnx_models, files=ONNX_FILES)
    return bundle_run(run, "cpu-local", run.parent / "out", labels=LABELS, mean=MEAN, std=STD)


def _members(archive: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(archive) as zf:
        return {n: zf.read(n) for n in zf.namelist()}


def _write(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)
    return path


def _with_manifest_updated(members: dict[str, bytes]) -> dict[str, bytes]:
    manifest = json.loads(members["manifest.json"])
    manifest["files"] = {n: {"sha256": hashlib.sha256(b).hexdigest(), "bytes": len(b)}
                         for n, b in members.items() if n != "manifest.json"}
    return {**members, "manifest.json": json.dumps(manifest).encode()}


def _problems(archive: Path, **kw) -> list[str]:
    with pytest.raises(EdgeKDError) as e:
        verify_bundle(archive, **kw)
    lines = str(e.value).splitlines()
    assert lines[0].startswith(f"bundle {archive.name} failed verification ({len(lines) - 1} problem(s))")
    return [line.removeprefix("  - ") for line in lines[1:]]


def test_a_good_bundle_passes_and_every_model_runs(good_archive):
    report = verify_bundle(good_archive)
    assert report.ok and report.name == "tiny-fmnist" and report.target == "cpu-local"
    assert {m["name"]: (m["runtime"], m["output_shape"], m["ok"]) for m in report.models} == {
        "models/student_fp32.onnx": ("onnxruntime", [1, 10], True),
        "models/student_int8.onnx": ("onnxruntime", [1, 10], True)}
    assert report.metadata["models/student_int8.onnx"]["labels"] == LABELS
    assert report.metadata["models/student_int8.onnx"]["norm_mean"] == pytest.approx([72.93], rel=1e-6)
    assert all(f["ok"] for f in report.files.values()) and "manifest.json" not in report.files


def test_a_tampered_member_is_named(good_archive, tmp_path):
    members = _members(good_archive)
    members["labels.txt"] = members["labels.txt"].replace(b"class_3", b"class_X")
    problems = _problems(_write(tmp_path / "t.zip", members))
    assert problems[0].startswith("labels.txt: sha256/size differ from manifest.json")
    assert problems[0].endswith("tampered or replaced")
    # labels.txt no longer matches what the models carry either: each model says so.
    assert sum("labels in the model metadata" in p for p in problems) == 2 and len(problems) == 3


def test_extra_and_missing_files_are_listed_one_per_line(good_archive, tmp_path):
    members = _members(good_archive)
    members["payload.sh"] = b"rm -rf /"
    del members["model_card.md"]
    assert _problems(_write(tmp_path / "t.zip", members), run_models=False) == [
        "payload.sh: in the archive but not in manifest.json (extra file)",
        "model_card.md: listed in manifest.json but missing from the archive"]


def test_a_truncated_archive_is_not_a_zip(good_archive, tmp_path):
    cut = tmp_path / "cut.zip"
    cut.write_bytes(good_archive.read_bytes()[: good_archive.stat().st_size // 2])
    [problem] = _problems(cut)
    assert "cut.zip is not a readable zip archive" in problem and "truncated" in problem


def test_a_flipped_byte_fails_the_crc_check(good_archive, tmp_path):
    raw = bytearray(good_archive.read_bytes())
    info = next(i for i in zipfile.ZipFile(good_archive).infolist() if i.filename == "models/student_fp32.onnx")
    data_at = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    raw[data_at + info.compress_size // 2] ^= 0xFF
    bad = tmp_path / "bad.zip"
    bad.write_bytes(bytes(raw))
    problems = _problems(bad)
    assert any(p.startswith("member 'models/student_fp32.onnx' cannot be read back") and "corrupt or tampered" in p
               for p in problems)


def test_a_consistent_manifest_does_not_hide_mismatched_labels(good_archive, tmp_path):
    members = _members(good_archive)
    members["labels.txt"] = ("\n".join(LABELS[:9]) + "\n").encode()
    problems = _problems(_write(tmp_path / "m.zip", _with_manifest_updated(members)))
    assert problems == [f"models/{n}: labels in the model metadata differ from labels.txt (10 vs 9 labels)"
                        for n in ("student_fp32.onnx", "student_int8.onnx")]


def test_a_model_that_does_not_load_is_reported(good_archive, tmp_path):
    members = _members(good_archive)
    members["models/student_int8.tflite"] = b"\0\0\0\0TFL3 but not really"
    members["models/student_int8.onnx"] = b"\x08\x07garbage"
    problems = _problems(_write(tmp_path / "m.zip", _with_manifest_updated(members)))
    assert problems[0].startswith("models/student_int8.onnx: not a readable ONNX file")
    assert problems[1].startswith("models/student_int8.tflite: not a TFLite flatbuffer")
    assert len(problems) == 2


def test_a_model_that_reads_but_does_not_run_is_reported(good_archive, tmp_path):
    members = _members(good_archive)
    model = onnx.load_model_from_string(members["models/student_fp32.onnx"])
    model.graph.node[1].op_type = "NoSuchOp"  # metadata still reads; onnxruntime refuses to load it
    members["models/student_fp32.onnx"] = model.SerializeToString()
    [problem] = _problems(_write(tmp_path / "m.zip", _with_manifest_updated(members)))
    assert problem.startswith("models/student_fp32.onnx: onnxruntime cannot load student_fp32.onnx")
    assert verify_bundle(tmp_path / "m.zip", run_models=False).ok


def test_missing_manifest_and_unsafe_members(good_archive, tmp_path):
    members = _members(good_archive)
    del members["manifest.json"]
    assert _problems(_write(tmp_path / "a.zip", members)) == [
        "manifest.json is missing: not an edgekd bundle, or damaged"]
    with zipfile.ZipFile(tmp_path / "b.zip", "w") as zf:
        zf.writestr("../escape.txt", b"x")
    assert _problems(tmp_path / "b.zip") == ["member '../escape.txt': path traversal ('..' component)"]
    assert not (tmp_path.parent / "escape.txt").exists()


def test_non_strict_returns_the_report_with_problems(good_archive, tmp_path):
    members = _members(good_archive)
    members["README.md"] += b"\nedited"
    report = verify_bundle(_write(tmp_path / "r.zip", members), strict=False)
    assert not report.ok and report.problems[0].startswith("README.md: sha256/size differ")
    assert report.files["README.md"]["ok"] is False and report.files["labels.txt"]["ok"] is True


def test_a_missing_archive_is_reported(tmp_path):
    assert _problems(tmp_path / "nope.zip") == [f"archive not found: {tmp_path / 'nope.zip'}"]
