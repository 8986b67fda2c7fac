"""edgekd.formats: the format/runtime registries, .pt2 files that load anywhere and reproducibly, one-line errors
for damaged files, and verify's relative tolerance and exit status."""
from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.formats import (FORMATS, RUNTIMES, Runtime, describe_file, format_for, get_runtime, open_session,
                            register_runtime, runtime_for)

REPO = Path(__file__).resolve().parents[1]


def _sha(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _run_python(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter with this checkout first on the path."""
    env = {"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "TQDM_DISABLE": "1"}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, env=env)


# --- registries --------------------------------------------------------------------------------------------------
def test_builtin_formats_and_runtimes_agree():
    assert FORMATS.names() == ["onnx", "pt2", "tflite"]
    assert RUNTIMES.names() == ["litert", "onnxruntime", "tensorrt", "torch"]
    for name in FORMATS:
        fmt = FORMATS.get(name)
        assert fmt.runtimes and all(r in RUNTIMES for r in fmt.runtimes), fmt
        assert all(fmt.suffix in RUNTIMES.get(r).suffixes for r in fmt.runtimes), fmt
        assert format_for(f"model{fmt.suffix.upper()}") is fmt
    assert [runtime_for(f"m{s}") for s in (".onnx", ".tflite", ".pt2", ".pt")] == [
        "onnxruntime", "litert", "torch", "torch"]
    assert RUNTIMES.get("tensorrt").open is None and not RUNTIMES.get("tensorrt").available()


def test_unknown_names_and_suffixes_are_one_line():
    with pytest.raises(EdgeKDError, match=r"unknown format 'tflit'; did you mean 'tflite'\? known: onnx, pt2, tflite"):
        FORMATS.get("tflit")
    with pytest.raises(EdgeKDError, match=r"unknown runtime 'ort'.* known: litert, onnxruntime, tensorrt, torch"):
        RUNTIMES.get("ort")
    with pytest.raises(EdgeKDError, match=r"cannot tell the format of 'm.bin': expected one of .onnx \(onnx\), "
                                          r".pt2 \(pt2\), .tflite \(tflite\)"):
        format_for("m.bin")
    with pytest.raises(EdgeKDError, match=r"cannot tell the runtime of 'm.bin': expected one of .onnx, .pt, .pt2"):
        runtime_for("m.bin")


def test_runtime_not_runnable_here_or_not_installed(tmp_path):
    f = tmp_path / "m.onnx"
    f.write_bytes(b"x")
    with pytest.raises(EdgeKDError, match=r"runtime 'tensorrt' does not run on this machine.*local runtimes: "
                                          r"litert, onnxruntime, torch"):
        open_session(f, runtime="tensorrt")
    with pytest.raises(EdgeKDError, match=r"runtime 'litert' does not run .onnx files \(it runs .tflite\)"):
        open_session(f, runtime="litert")
    register_runtime(Runtime("fancy_rt", (".onnx",), lambda p, t: None, module="edgekd_no_such_module",
                             extra="fancy"))
    try:
        with pytest.raises(EdgeKDError, match=r"runtime 'fancy_rt' needs the python module 'edgekd_no_such_module'"
                                              r".*pip install 'edgekd\[fancy\]'"):
            get_runtime("fancy_rt")
    finally:
        RUNTIMES.unregister("fancy_rt")


def test_a_new_runtime_never_breaks_schemes_or_bundles():
    from edgekd.bundle.archive import ModelFile, bundle_formats
    from edgekd.quant import scheme_for_runtimes

    register_runtime(Runtime("coreml_test", (".mlpackage",), None))
    try:
        assert scheme_for_runtimes(["coreml_test"]).name == "litert_int8"   # no needs of its own
        assert scheme_for_runtimes(["torch", "onnxruntime"], cpu_has_vnni=True).name == "ort_vnni"
    finally:
        RUNTIMES.unregister("coreml_test")
    assert sorted(bundle_formats()) == ["onnx", "tflite"]   # pt2 carries no metadata: not bundled
    with pytest.raises(ValueError, match=r"format 'pt2' is not one of \['onnx', 'tflite'\]"):
        ModelFile("m", Path("m.pt2"), "pt2", "int8", "torch")


def test_import_edgekd_loads_no_format_or_runtime_module():
    r = _run_python("import sys, edgekd, edgekd.formats, edgekd.runtimes\n"
                    "heavy = [m for m in ('torch', 'onnx', 'onnxruntime', 'edgekd.export', 'edgekd.runtimes.litert')"
                    " if m in sys.modules]\nprint(heavy)")
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]


# --- .pt2: loads in a fresh process, same bytes for the same model ----------------------------------------------
@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    from edgekd.quant import quantize_ptq, save_quantized
    from edgekd.quant.ptq import calibration_batches
    from edgekd.quant.testing import TinyNet, separable_task

    torch.manual_seed(0)
    x, _ = separable_task(128, size=8)
    model = TinyNet().eval()
    q = quantize_ptq(model, x[:1], "litert_int8", calibration_batches(x[:64]), "minmax")
    d = tmp_path_factory.mktemp("pt2")
    return q, x, save_quantized(q, x[:1], d / "student_int8.pt2")


def test_quantized_pt2_loads_in_a_fresh_process(quantized, tmp_path):
    q, x, path = quantized
    np.save(tmp_path / "x.npy", x[:5].numpy())
    with torch.no_grad():
        np.save(tmp_path / "want.npy", q(x[:5]).numpy())
    # Nothing else in that process imports edgekd.quant (whose imports would register the ops as a side effect).
    code = (f"import sys, numpy as np\nfrom edgekd.formats import describe_file, open_session\n"
            f"d = describe_file({str(path)!r}); s = open_session({str(path)!r})\n"
            f"y = s.run(np.load({str(tmp_path / 'x.npy')!r}))\n"
            f"np.testing.assert_array_equal(y, np.load({str(tmp_path / 'want.npy')!r}))\n"
            f"print(d['format'], d['precision'], d['runtime'], d['batch'], 'torchao' in sys.modules)")
    r = _run_python(code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split()[-5:] == ["pt2", "int8", "torch", "None", "False"]


def test_pt_and_pt2_bytes_do_not_depend_on_the_file_name(quantized, tmp_path):
    from edgekd.export import export_pt2
    from edgekd.fileio import torch_save
    from edgekd.models.io import save_model_file
    from edgekd.models.zoo import build_model
    from edgekd.quant import save_quantized

    q, x, _ = quantized
    a, b = save_quantized(q, x[:1], tmp_path / "a.pt2"), save_quantized(q, x[:1], tmp_path / "other_name.pt2")
    assert _sha(a) == _sha(b)
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=3, input_size=8, hidden=8).eval()
    a = export_pt2(model, x[:1], tmp_path / "float_a.pt2")
    assert _sha(a) == _sha(export_pt2(model, x[:1], tmp_path / "float_b.pt2"))
    assert describe_file(a)["precision"] == "fp32"
    a = save_model_file(model, "mlp", {"num_classes": 3}, tmp_path / "m1.pt")
    assert _sha(a) == _sha(save_model_file(model, "mlp", {"num_classes": 3}, tmp_path / "m22.pt"))
    a = torch_save({"w": torch.ones(3)}, tmp_path / "s1.pt")
    assert _sha(a) == _sha(torch_save({"w": torch.ones(3)}, tmp_path / "s2.pt"))


# --- damaged files: one line each ---------------------------------------------------------------------------------
def _onnx_bytes() -> bytes:
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 8, 8])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]).SerializeToString()


def _damaged(tmp_path: Path, kind: str, suffix: str) -> Path:
    valid = {".onnx": _onnx_bytes(), ".tflite": b"\x1c\x00\x00\x00TFL3" + bytes(200),
             ".pt": b"PK\x03\x04" + bytes(60), ".pt2": b"PK\x03\x04" + bytes(60)}[suffix]
    path = tmp_path / f"{kind}{suffix}"
    path.write_bytes(b"" if kind == "empty" else valid[: len(valid) // 2])
    return path


@pytest.mark.parametrize("suffix", [".onnx", ".tflite", ".pt2"])
@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_damaged_model_files_are_one_line_errors(tmp_path, kind, suffix):
    from edgekd.verify import verify_files

    path = _damaged(tmp_path, kind, suffix)
    want = r"empty \(0 bytes\)" if kind == "empty" else r"cannot (read|load) .*(truncated|model file)"
    with pytest.raises(EdgeKDError, match=want):
        describe_file(path)
    with pytest.raises(EdgeKDError, match=want):
        open_session(path)
    files = [{"name": path.name, "path": str(path), "format": "x", "precision": "fp32", "runtime": None}]
    with pytest.raises(EdgeKDError, match=want):
        verify_files(files, nn.Flatten(), None, np.zeros((2, 1, 8, 8), np.float32), np.zeros(2))


@pytest.mark.parametrize("suffix", [".pt", ".pt2", ".onnx", ".tflite"])
@pytest.mark.parametrize("kind", ["empty", "truncated"])
def test_damaged_model_given_to_export_is_one_line(tmp_path, kind, suffix):
    from edgekd.api import export

    path = _damaged(tmp_path, kind, suffix)
    want = r"empty \(0 bytes\)" if kind == "empty" else r"cannot (read|load) "
    with pytest.raises(EdgeKDError, match=want):
        export(path, format="onnx", out=tmp_path / "x.onnx")


def test_export_out_must_be_a_file_of_the_format(tmp_path):
    from edgekd.formats import export_model

    (tmp_path / "d.onnx").mkdir()
    with pytest.raises(EdgeKDError, match=r"d.onnx is a directory; give the file to write"):
        export_model("onnx", _mlp(), torch.zeros(1, 1, 8, 8), tmp_path / "d.onnx")
    with pytest.raises(EdgeKDError, match=r"a tflite file should end in .tflite; got 'm.onnx'"):
        export_model("tflite", _mlp(), torch.zeros(1, 1, 8, 8), tmp_path / "m.onnx")
    with pytest.raises(EdgeKDError, match=r"format 'pt2' takes no option 'opset'; it takes: no options"):
        export_model("pt2", _mlp(), torch.zeros(1, 1, 8, 8), tmp_path / "m.pt2", opset=18)


def test_cli_verify_damaged_file_is_exit_2_without_traceback(tmp_path):
    from edgekd.cli import main

    from edgekd.models.io import save_model_file

    ref = save_model_file(_mlp(), "mlp", {"num_classes": 10, "input_size": 8, "hidden": 32}, tmp_path / "ref.pt")
    res = CliRunner().invoke(main, ["verify", str(_damaged(tmp_path, "truncated", ".onnx")), "--reference", str(ref),
                                    "--dataset", "digits"])
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    assert "truncated.onnx" in res.output and len(res.output.strip().splitlines()) == 1


def test_wrong_size_data_names_both_shapes(tmp_path):
    from edgekd.verify import file_accuracy

    path = tmp_path / "m.onnx"
    path.write_bytes(_onnx_bytes())
    with pytest.raises(EdgeKDError, match=r"m.onnx takes input of shape \(N, 1, 8, 8\); got data of shape "
                                          r"\(4, 3, 32, 32\)"):
        file_accuracy(path, np.zeros((4, 3, 32, 32), np.float32), np.zeros(4))


# --- verify: relative tolerance, overall ok, CLI exit status -------------------------------------------------------
class Scaled(nn.Module):
    """A model whose logits are large (deep nets reach 1e2..1e3), as resnet-like logits are."""

    def __init__(self, inner: nn.Module, scale: float):
        super().__init__()
        self.inner, self.scale = inner, scale

    def forward(self, x):
        return self.inner(x) * self.scale


def _mlp(seed: int = 0) -> nn.Module:
    from edgekd.models.zoo import build_model

    torch.manual_seed(seed)
    return build_model("mlp", num_classes=10, input_size=8, hidden=32).eval()


def test_fp32_tolerance_is_relative_to_the_output_scale(tmp_path):
    from edgekd.export import export_pt2
    from edgekd.verify import allowed_diff, verify_files

    x = torch.randn(64, 1, 8, 8)
    ref = Scaled(_mlp(), 1000.0).eval()
    close = Scaled(_mlp(), 1000.0 * (1 + 2e-6)).eval()    # relative error 2e-6: float rounding of a deep net
    far = Scaled(_mlp(), 1000.0 * (1 + 1e-3)).eval()      # relative error 1e-3: a broken export
    files = [describe_file(export_pt2(m, x[:1], tmp_path / f"{n}.pt2")) for n, m in (("close", close), ("far", far))]
    with torch.no_grad():
        y = ref(x).argmax(1).numpy()
        scale = float(ref(x).abs().max())
    assert scale > 100 and allowed_diff(np.array([scale]), 1e-4, 1e-4) == pytest.approx(1e-4 * scale)
    res = verify_files(files, ref, None, x, y)
    close_row, far_row = res["files"]
    assert close_row["max_abs_diff"] > 1e-4 and close_row["max_rel_diff"] < 1e-5 and close_row["parity_ok"]
    assert not far_row["parity_ok"] and res["ok"] is False
    assert verify_files(files[:1], ref, None, x, y)["ok"] is True
    assert verify_files(files[:1], ref, None, x, y, rtol=0.0)["ok"] is False   # absolute-only, as before
    assert verify_files([], ref, None, x, y)["ok"] is False                     # nothing verified is no pass


def test_cli_verify_exit_status_gates_ci(tmp_path, digits):
    from edgekd.cli import main
    from edgekd.export import export_pt2
    from edgekd.models.io import save_model_file

    model = _mlp(0)
    ref = save_model_file(model, "mlp", {"num_classes": 10, "input_size": 8, "hidden": 32}, tmp_path / "ref.pt")
    x = digits.x_test[:2]
    good = export_pt2(model, x, tmp_path / "good.pt2")
    bad = export_pt2(_mlp(1), x, tmp_path / "bad.pt2")
    args = ["--reference", str(ref), "--dataset", "digits"]
    res = CliRunner().invoke(main, ["verify", str(good), *args])
    assert res.exit_code == 0 and "ok" in res.output, res.output
    res = CliRunner().invoke(main, ["verify", str(good), str(bad), *args])
    assert res.exit_code == 1 and "PARITY FAILED" in res.output and "verify failed: bad.pt2" in res.output, \
        res.output
    res = CliRunner().invoke(main, ["verify", str(bad), *args, "--json"])
    assert res.exit_code == 1 and json.loads(res.output[: res.output.rindex("}") + 1])["ok"] is False


def test_every_scheme_names_registered_runtimes():
    from edgekd.quant import SCHEMES

    for name in SCHEMES:
        assert all(r in RUNTIMES for r in SCHEMES.get(name).runtimes), name
