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
