"""TFLite export pass: fp32 parity, full-int8 files that keep the simulation's scales, errors, atomicity."""
import numpy as np
import pytest
import torch

from edgekd.errors import ConversionError
from edgekd.export import describe_file, export_tflite, tflite_tensor_quantization
from edgekd.quant.ptq import calibration_batches, quantize_ptq
from quant_fixtures import UnconvertibleNet
from edgekd.runtimes import open_session
from edgekd.verify import compare_logits, reference_logits

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
torch.set_num_threads(1)


def test_fp32_tflite_parity(trained, tmp_path):
    model, x, _ = trained
    f = export_tflite(model, x[:4], tmp_path / "student_fp32.tflite")
    d = describe_file(f)
    assert (d["format"], d["precision"], d["runtime"], d["batch"]) == ("tflite", "fp32", "litert", 1)
    session = open_session(f)
    assert session.input_shape == (1, 1, 8, 8) and session.input_dtype == "float32"
    cmp = compare_logits(reference_logits(model, x[:64]), session.run(x[:64].numpy()))
    assert cmp["max_abs_diff"] <= 1e-4 and cmp["top1_agreement"] == 1.0


def _weight_scales(converted):
    """Per-channel weight scales of the Q/DQ simulation, in graph order."""
    out = []
    for n in converted.graph.nodes:
        if str(n.target).startswith("quantized_decomposed.quantize_per_channel"):
            out.append(getattr(converted, n.args[1].target).detach().numpy())
    return out


def _activation_scales(converted):
    return {float(n.args[1]) for n in converted.graph.nodes
            if str(n.target).startswith("quantized_decomposed.quantize_per_tensor")}


def test_int8_tflite_runs_in_litert_and_keeps_simulation_scales(trained, tmp_path):
    model, x, _ = trained
    q = quantize_ptq(model, x[:1], "litert_int8", calibration_batches(x[:128]), "minmax")
    f = export_tflite(q, x[:1], tmp_path / "student_int8.tflite")
    assert describe_file(f)["precision"] == "int8"
    session = open_session(f)
    assert session.input_dtype == "int8"
    cmp = compare_logits(reference_logits(q, x[:64]), session.run(x[:64].numpy()))
    assert cmp["top1_agreement"] >= 0.98 and cmp["max_abs_diff"] < 0.5
    tensors = tflite_tensor_quantization(f)
    int8_weights = [t for t in tensors if t["dtype"] == "int8" and len(t["scales"]) > 1]
    sim = _weight_scales(q)
    # Every per-channel weight scale of the simulation appears unchanged (fp tolerance) in the file.
    for scales in sim:
        assert any(len(t["scales"]) == len(scales) and np.allclose(t["scales"], scales, rtol=1e-6, atol=0)
                   for t in int8_weights), scales
    file_act = {float(t["scales"][0]) for t in tensors if t["dtype"] == "int8" and len(t["scales"]) == 1}
    for s in _activation_scales(q):
        assert any(abs(s - a) <= 1e-6 * s for a in file_act), s


@pytest.mark.export
def test_unconvertible_op_names_layer_and_leaves_no_file(tmp_path):
    with pytest.raises(ConversionError, match=r"TFLite export.*layer 'gaussianize' \(Erfinv\), op aten\.erfinv"
                                              r".*Way out: keep that layer in float"):
        export_tflite(UnconvertibleNet(), torch.randn(1, 1, 8, 8), tmp_path / "bad.tflite")
    assert list(tmp_path.iterdir()) == []


_NATIVE_NOISE = ("absl::InitializeLog", "oneDNN", "cudart_stub", "cpu_feature_guard", "rebuild TensorFlow",
                 "port.cc")


def test_native_startup_lines_are_held_back_and_the_rest_is_kept(capfd):
    import os

    from edgekd.logs import native_startup_filtered

    with native_startup_filtered():
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
        os.write(2, b"I0000 00:00:1796296384.842120    9352 port.cc:153] oneDNN custom operations are on.\n")
        os.write(2, b"I0000 00:00:1796296384.842559    9352 cudart_stub.cc:31] Could not find cuda drivers\n")
        os.write(2, b"a real error line\n")
    err = capfd.readouterr().err
    assert err == "a real error line\n"


def test_cli_tflite_export_prints_no_tensorflow_startup_lines(tmp_path):
    """A fresh process (TensorFlow not yet loaded, no TF_* variables set) exporting through the CLI: the only
    output is edgekd's own line."""
    import os
    import subprocess
    import sys

    from edgekd.models import build_model, save_model_file

    student = tmp_path / "s.pt"
    save_model_file(build_model("tiny_cnn", num_classes=4, in_channels=1, width=4), "tiny_cnn",
                    {"num_classes": 4, "in_channels": 1, "width": 4}, student)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "GLOG_"))}
    result = subprocess.run([sys.executable, "-m", "edgekd", "export", str(student), "--format", "tflite",
                             "--out", str(tmp_path / "s.tflite"), "--input-shape", "1,1,16,16"],
                            capture_output=True, text=True, env=env, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert (tmp_path / "s.tflite").stat().st_size > 0
    noise = [line for line in output.splitlines() if any(n in line for n in _NATIVE_NOISE)]
    assert not noise, noise
