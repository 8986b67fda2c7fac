"""Signed bundles: an Ed25519 signature over the manifest catches a tampered file whose sha256 was recomputed."""
from __future__ import annotations

import json
import tracemalloc
import zipfile
from pathlib import Path

import onnx
import pytest
from test_bundle_verify import _members, _problems, _with_manifest_updated, _write
from test_report_synthetic_run import LABELS, MEAN, ONNX_FILES, STD, tiny_onnx_models  # noqa: F401

from edgekd.bundle import bundle_run, verify_bundle
from edgekd.bundle.signing import SIGNATURE, generate_keypair
from edgekd.errors import EdgeKDError


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> tuple[Path, Path]:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "release.pem")


@pytest.fixture(scope="module")
def signed_archive(tiny_onnx_models, keys, tmp_path_factory) -> Path:
    from test_report_synthetic_run import write_run

    run = write_run(tmp_path_factory.mktemp("signed") / "runs" / "tiny", tiny_onnx_models, files=ONNX_FILES)
    return bundle_run(run, "cpu-local", run.parent / "out", labels=LABELS, mean=MEAN, std=STD, signing_key=keys[0])


def test_keypair_files_are_pem_and_the_private_key_is_private(keys):
    private, public = keys
    assert private.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    assert public.read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    assert private.stat().st_mode & 0o077 == 0
    with pytest.raises(EdgeKDError, match="exists; refusing to overwrite"):
        generate_keypair(private)


def test_a_signed_bundle_verifies_with_its_public_key(signed_archive, keys):
    report = verify_bundle(signed_archive, key=keys[1], run_models=False)
    assert report.ok and report.signature == "valid"
    assert SIGNATURE not in report.files and "signature: valid" in report.summary()
    assert verify_bundle(signed_archive, run_models=False).signature == "signed, not checked"


def test_tampered_model_with_recomputed_checksums_passes_unsigned_but_fails_the_signature(signed_archive, keys,
                                                                                         tmp_path):
    members = _members(signed_archive)
    name = "models/student_fp32.onnx"
    model = onnx.load_model_from_string(members[name])
    model.graph.initializer[0].raw_data = bytes(len(model.graph.initializer[0].raw_data))  # zeroed weights
    members[name] = model.SerializeToString()  # still a valid model with its metadata; sha256 changes
    forged = _with_manifest_updated({k: v for k, v in members.items() if k != SIGNATURE})
    forged[SIGNATURE] = members[SIGNATURE]
    forged_path = _write(tmp_path / "forged.zip", forged)
    # Without a key the recomputed checksums hide the change: what an unsigned bundle cannot prove.
    assert verify_bundle(forged_path, run_models=False).ok
    assert _problems(forged_path, key=keys[1], run_models=False) == [
        "manifest.sig does not match manifest.json: the manifest was changed after signing"]


def test_another_key_or_a_missing_signature_fails(signed_archive, keys, tmp_path):
    _, other_public = generate_keypair(tmp_path / "other.pem")
    (problem,) = _problems(signed_archive, key=other_public, run_models=False)
    assert "signed by someone else" in problem
    unsigned = _write(tmp_path / "unsigned.zip",
                      {k: v for k, v in _members(signed_archive).items() if k != SIGNATURE})
    assert _problems(unsigned, key=keys[1], run_models=False) == [
        "manifest.sig is missing: the archive is unsigned, but a key was given to check it"]
    assert verify_bundle(unsigned, run_models=False).signature == "unsigned"


def test_a_key_that_is_not_ed25519_or_not_pem_is_one_clear_error(signed_archive, tmp_path):
    junk = tmp_path / "junk.pem"
    junk.write_text("not a key\n")
    with pytest.raises(EdgeKDError, match="is not a PEM public key"):
        verify_bundle(signed_archive, key=junk, run_models=False)
    with pytest.raises(EdgeKDError, match="public key not found"):
        verify_bundle(signed_archive, key=tmp_path / "missing.pem", run_models=False)


def test_verify_streams_large_members_instead_of_holding_them(tmp_path, signed_archive):
    # A 64 MiB member (highly compressible) must not be held in memory while it is hashed.
    members = _members(signed_archive)
    members["docs/big.bin"] = b"\0" * (64 << 20)
    archive = _write(tmp_path / "big.zip", _with_manifest_updated({k: v for k, v in members.items()
                                                                     if k != SIGNATURE}))
    del members
    tracemalloc.start()
    report = verify_bundle(archive, run_models=False)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert report.ok and report.files["docs/big.bin"]["bytes"] == 64 << 20
    assert peak < 16 << 20, f"peak {peak >> 20} MiB while verifying a 64 MiB member"


def test_cli_keygen_sign_and_verify(signed_archive, tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["bundle", "keygen", str(tmp_path / "k.pem")])
    assert res.exit_code == 0 and (tmp_path / "k.pub.pem").is_file(), res.output
    res = runner.invoke(main, ["bundle", "verify", str(signed_archive), "--no-run", "--key", str(tmp_path / "k.pub.pem")])
    assert res.exit_code == 2 and "signed by someone else" in res.output
    assert "Traceback" not in res.output
