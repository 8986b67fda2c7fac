"""Hostile-input corpus: every file or value a user (or an attacker who shares a run directory) can hand edgekd.

Each case goes through the CLI as a user would. The promise: exit status 2 with exactly one `edgekd: error:` line,
no traceback, no code from the input ever runs (a marker file must never appear), and nothing written outside the
places the command owns.
"""
from __future__ import annotations

import io
import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from edgekd.cli import main


class _Planted:
    """Unpickling this object would create the marker file: proof that code from a file ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle(path: Path, marker: Path) -> Path:
    path.write_bytes(pickle.dumps({"state_dict": _Planted(marker)}))
    return path


def _torch_zip_pickle(path: Path, marker: Path) -> Path:
    """A torch.save-style zip archive whose data.pkl runs code."""
    import torch

    buf = io.BytesIO()
    torch.save({"x": 1}, buf)
    src = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
    with zipfile.ZipFile(path, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            if info.filename.endswith("data.pkl"):
                data = pickle.dumps(_Planted(marker), protocol=2)
            dst.writestr(info, data)
    return path


def _run(args: list[str]) -> tuple[int, str]:
    res = CliRunner().invoke(main, [str(a) for a in args])
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        import traceback

        tb = "".join(traceback.format_exception(type(res.exception), res.exception, res.exception.__traceback__))
        pytest.fail(f"traceback instead of one line for {args}:\n{tb}")
    return res.exit_code, res.output


def _assert_refused(args: list[str], match: str | None = None) -> str:
    code, output = _run(args)
    errors = [ln for ln in output.splitlines() if ln.startswith("edgekd: error:")]
    assert code == 2, f"exit {code} for {args}:\n{output}"
    assert len(errors) == 1 or output.startswith("edgekd: error:"), output
    assert "Traceback" not in output
    if match:
        assert match.lower() in output.lower(), output
    return output


@pytest.fixture
def marker(tmp_path) -> Path:
    m = tmp_path / "PWNED"
    yield m
    assert not m.exists(), "code from a hostile file ran"


# ----------------------------------------------------------------------------------------------- pickles


@pytest.mark.parametrize("maker", [_pickle, _torch_zip_pickle], ids=["raw-pickle", "torch-zip"])
def test_model_file_pickles_never_run(tmp_path, marker, maker):
    evil = maker(tmp_path / "student.pt", marker)
    _assert_refused(["export", evil, "--format", "onnx", "--out", tmp_path / "x.onnx"])
    assert not (tmp_path / "x.onnx").exists()


def test_a_planted_checkpoint_never_runs(tmp_path, marker):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "r", "data": {"dataset": "digits", "batch_size": 32},
        "teacher": {"model": "tiny_cnn", "kwargs": {"width": 4}, "train": {"epochs": 1}}}))
    run_dir = tmp_path / "run"
    (run_dir / "checkpoints").mkdir(parents=True)
    _torch_zip_pickle(run_dir / "checkpoints" / "teacher.pt", marker)
    code, output = _run(["run", recipe, "--run-dir", run_dir, "--until", "teacher", "--no-progress"])
    # Refusing the checkpoint (exit 2, one line) or ignoring it and training afresh are both safe; running it is not.
    assert code in (0, 2) and "Traceback" not in output, output


# ----------------------------------------------------------------------------------------------- YAML


@pytest.mark.parametrize("payload", ["!!python/object/apply:os.system ['touch {m}']",
                                     "!!python/name:os.system", "&a [*a, *a]"])
def test_yaml_tags_in_a_recipe_never_construct_objects(tmp_path, marker, payload):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: r\ndata:\n  root: {payload.format(m=marker)}\n")
    code, output = _run(["validate", recipe])
    assert code == 2 and "Traceback" not in output, output


def test_yaml_tag_through_set_is_one_line(tmp_path, marker):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\n")
    _assert_refused(["run", recipe, "--set", f"data.root=!!python/object/apply:os.system ['touch {marker}']",
                     "--run-dir", tmp_path / "run"])


# ----------------------------------------------------------------------------------------------- archives


def _bomb(path: Path) -> Path:
    """16 MiB of zeros whose central directory declares 1,000 bytes: what a zip bomb looks like to a reader."""
    import struct

    _zip(path, {"manifest.json": b"{}", "models/bomb.onnx": b"\0" * (16 << 20)})
    data = bytearray(path.read_bytes())
    entry = data.find(b"PK\x01\x02")
    while entry != -1:
        name_len = struct.unpack_from("<H", data, entry + 28)[0]
        if data[entry + 46:entry + 46 + name_len] == b"models/bomb.onnx":
            struct.pack_into("<I", data, entry + 24, 1000)
        entry = data.find(b"PK\x01\x02", entry + 4)
    path.write_bytes(bytes(data))
    return path


def _zip(path: Path, members: dict[str, bytes], symlink: str | None = None) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        if symlink:
            info = zipfile.ZipInfo("models/link.tflite")
            info.create_system = 3
            info.external_attr = (0o120777 << 16)
            zf.writestr(info, symlink)
    return path


@pytest.mark.parametrize("members,symlink,why", [
    ({"../../escape.txt": b"x", "manifest.json": b"{}"}, None, "traversal"),
    ({"/abs/escape.txt": b"x", "manifest.json": b"{}"}, None, "absolute"),
    ({"manifest.json": b"{}"}, "/etc/passwd", "symlink"),
    (None, None, "bomb"),
], ids=["traversal", "absolute", "symlink", "bomb"])
def test_hostile_archives_are_refused_and_write_nothing_outside(tmp_path, members, symlink, why):
    archive = _bomb(tmp_path / "evil.zip") if why == "bomb" else _zip(tmp_path / "evil.zip", members, symlink)
    before = set(tmp_path.parent.iterdir())
    code, output = _run(["bundle", "verify", archive])
    assert code == 2 and "Traceback" not in output, output
    assert set(tmp_path.parent.iterdir()) == before
    assert not (tmp_path.parent / "escape.txt").exists()


# ----------------------------------------------------------------------------------------------- targets


@pytest.mark.parametrize("field,value", [("host", "-oProxyCommand=touch {m}"), ("user", "-oProxyCommand=touch {m}"),
                                         ("host", "example.com; touch {m}"), ("host", "a b")])
def test_injection_strings_in_a_target_are_refused(tmp_path, marker, field, value):
    connect = {"host": "127.0.0.1", "user": "edge", "port": 22}
    connect[field] = value.format(m=marker)
    target = tmp_path / "evil.yaml"
    target.write_text(yaml.safe_dump({"name": "evil", "kind": "jetson", "connect": connect,
                                      "runtimes": ["onnxruntime"], "threads": 1,
                                      "peak": {"fp32_gflops": 1.0, "int8_gops": 1.0, "mem_gbps": 1.0}}))
    model = tmp_path / "m.onnx"
    _tiny_onnx(model)
    code, output = _run(["profile", model, "--target", target, "--remote", "measure"])
    assert code == 2 and "Traceback" not in output, output


def _tiny_onnx(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Relu", ["x"], ["y"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


# ----------------------------------------------------------------------------------------------- broken files


@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".onnx", ".tflite"])
@pytest.mark.parametrize("content", [b"", b"\x08\x01\x12\x04trun"], ids=["empty", "truncated"])
def test_empty_and_truncated_model_files(tmp_path, suffix, content):
    bad = tmp_path / f"model{suffix}"
    bad.write_bytes(content)
    if suffix in (".pt", ".pt2"):
        _assert_refused(["export", bad, "--format", "onnx", "--out", tmp_path / "x.onnx"])
        assert not (tmp_path / "x.onnx").exists()
    else:
        _assert_refused(["profile", bad, "--target", "cpu-local"])
        ref = tmp_path / "ref.pt"
        ref.write_bytes(b"")
        _assert_refused(["verify", bad, "--reference", ref])


def test_out_pointing_at_a_directory_is_one_line(tmp_path):
    model = tmp_path / "m.onnx"
    _tiny_onnx(model)
    (tmp_path / "out").mkdir()
    student = tmp_path / "s.pt"
    from edgekd.models import build_model, save_model_file

    save_model_file(build_model("tiny_cnn", num_classes=10, in_channels=1, width=4), "tiny_cnn",
                    {"num_classes": 10, "in_channels": 1, "width": 4}, student)
    _assert_refused(["export", student, "--format", "onnx", "--out", tmp_path / "out"])


@pytest.mark.parametrize("labels", [np.array([0.0, np.nan, 1.0, 2.0]), np.array([1, 2, 3, 4])],
                         ids=["nan", "one-based"])
def test_bad_labels_in_npz_are_one_line(tmp_path, labels):
    data = tmp_path / "d.npz"
    x = np.random.default_rng(0).integers(0, 255, (4, 1, 8, 8)).astype(np.uint8)
    np.savez(data, x_train=x, y_train=labels, x_test=x, y_test=labels)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "data": {"dataset": "npz", "root": str(data)},
                                      "teacher": {"model": "tiny_cnn", "train": {"epochs": 1}}}))
    _assert_refused(["run", recipe, "--run-dir", tmp_path / "run", "--until", "teacher", "--no-progress"])
    assert not (tmp_path / "run" / "teacher").exists()
