"""The causal-LM bundle: written with edgekd.bundle's archive code, checked by its verify_bundle (kind causal_lm)."""
from __future__ import annotations

import json
import zipfile

import pytest

from edgekd.errors import EdgeKDError
from tests.lm_fixtures import tiny_llama, tokenizer_folder

SPECIAL = {"eos_token_ids": [1]}


def _tokenizer(tmp_path):
    tokenizer_folder(tmp_path / "tok")
    return tmp_path / "tok" / "tokenizer.json"


def test_make_lm_bundle_rejects_what_an_app_cannot_use(tmp_path):
    from edgekd.lm.bundle import make_lm_bundle

    tok = _tokenizer(tmp_path)
    with pytest.raises(EdgeKDError, match="no device files"):
        make_lm_bundle({}, tok, {}, tmp_path / "b.zip", name="m", special_tokens=SPECIAL)
    (tmp_path / "x.bin").write_bytes(b"0")
    with pytest.raises(EdgeKDError, match="model suffix"):
        make_lm_bundle({"x.bin": tmp_path / "x.bin"}, tok, {}, tmp_path / "b.zip", name="m", special_tokens=SPECIAL)
    with pytest.raises(EdgeKDError, match="not found"):
        make_lm_bundle({"s.kv.onnx": tmp_path / "missing.onnx"}, tok, {}, tmp_path / "b.zip", name="m",
                       special_tokens=SPECIAL)


def test_unknown_bundle_kind_is_one_clear_problem(tmp_path):
    from edgekd.bundle import verify_bundle
    from edgekd.bundle.archive import BUNDLE_FORMAT, write_archive

    path = write_archive({"README.md": b"hi"}, {"format": BUNDLE_FORMAT, "kind": "speech", "name": "m"},
                         tmp_path / "b.zip")
    report = verify_bundle(path, strict=False)
    assert report.problems == ["manifest.json kind 'speech' unknown; known: causal_lm, image_classifier"]


@pytest.mark.export
def test_tflite_and_litertlm_bundle_verifies(tmp_path):
    """.litertlm (container header checked) + KV-cache .tflite (one prefill and one decode step run)."""
    from edgekd.bundle import verify_bundle
    from edgekd.lm import export as ex
    from edgekd.lm.bundle import make_lm_bundle

    model = tiny_llama(layers=1)
    kv = ex.export_tflite_kv(model, 16, 8, tmp_path / "student.kv.tflite")
    tok = _tokenizer(tmp_path)
    lm = ex.package_litertlm(kv, tok, tmp_path / "student.litertlm", context_length=16, stop_token_ids=[1])
    path = make_lm_bundle({"student.litertlm": lm, "student.kv.tflite": kv}, tok,
                          {"teacher": {"path": "tiny"}, "files": []}, tmp_path / "b.zip", name="tiny",
                          special_tokens=SPECIAL)
    report = verify_bundle(path)
    rows = {m["name"]: m for m in report.models}
    assert rows["models/student.kv.tflite"]["runtime"] == "litert" and rows["models/student.kv.tflite"]["ok"]
    from edgekd.lm import litertlm

    ran = rows["models/student.litertlm"]
    assert ran["ok"] and (ran["runtime"] == "litert-lm" if litertlm.available() else "not run" in ran["runtime"])
    with zipfile.ZipFile(path) as zf:
        config = json.loads(zf.read("lm_config.json"))
    sig = config["files"]["models/student.kv.tflite"]
    assert sig["layout"] == "litert_lm_kv_cache" and sig["prefill_len"] == 8 and sig["cache_len"] == 16
    broken = tmp_path / "broken.zip"  # a .litertlm that is not one, with a manifest that matches it
    (tmp_path / "fake.litertlm").write_bytes(b"NOTLITERTLM")
    make_lm_bundle({"student.litertlm": tmp_path / "fake.litertlm"}, tok, {}, broken, name="tiny",
                   special_tokens=SPECIAL)
    with pytest.raises(EdgeKDError, match="LiteRT-LM magic"):
        verify_bundle(broken)
