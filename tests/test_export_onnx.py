"""ONNX export pass: fp32 parity, a clean int8 QDQ graph that onnxruntime runs with int8 kernels, errors, atomicity."""
import numpy as np
import pytest
import torch

from edgekd.errors import ConversionError, EdgeKDError
from edgekd.export import describe_file, INT8_ORT_OPS, export_onnx, onnx_op_types
from edgekd.quant.ptq import calibration_batches, quantize_ptq
from quant_fixtures import UnconvertibleNet
from edgekd.runtimes import open_session
from edgekd.verify import compare_logits, reference_logits

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
torch.set_num_threads(1)


def test_fp32_onnx_parity_and_dynamic_batch(trained, tmp_path):
    model, x, _ = trained
    f = describe_file(export_onnx(model, x[:1], tmp_path / "student_fp32.onnx"))
    assert (f["format"], f["precision"], f["runtime"], f["batch"]) == ("onnx", "fp32", "onnxruntime", None)
    assert f["bytes"] == (tmp_path / "student_fp32.onnx").stat().st_size
    out = open_session(f["path"]).run(x[:64].numpy())
    cmp = compare_logits(reference_logits(model, x[:64]), out)
    assert cmp["max_abs_diff"] <= 1e-4 and cmp["top1_agreement"] == 1.0


def test_int8_onnx_is_qdq_with_int8_weights_and_runs_int8_kernels(trained, tmp_path):
    model, x, _ = trained
    q = quantize_ptq(model, x[:1], "ort_x86_novnni", calibration_batches(x[:128]), "minmax")
    f = export_onnx(q, x[:1], tmp_path / "student_int8.onnx")
    assert describe_file(f)["precision"] == "int8"
    raw = onnx_op_types(f, optimized=False)
    # three convs and the global pool, exported as the depthwise conv it equals (avg_pools_as_depthwise_conv)
    assert raw.get("QuantizeLinear") and raw.get("DequantizeLinear") and raw.get("Conv") == 4
    import onnx
    from onnx import numpy_helper

    m = onnx.load(f)
    weights = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer if i.dims and len(i.dims) >= 2}
    assert weights and all(w.dtype == np.int8 and w.min() >= -64 and w.max() <= 63 for w in weights.values())
    optimized = onnx_op_types(f)
    assert optimized.get("QLinearConv") == 4 and optimized.get("QGemm") == 1  # every conv/linear/pool in int8
    assert "Conv" not in optimized and "Gemm" not in optimized
    assert set(optimized) & set(INT8_ORT_OPS)
    out = open_session(f).run(x[:64].numpy())
    cmp = compare_logits(reference_logits(q, x[:64]), out)
    assert cmp["top1_agreement"] >= 0.98 and cmp["max_abs_diff"] < 0.5


@pytest.mark.export  # a converter error path (pyproject.toml: markers)
def test_unconvertible_op_names_layer_and_leaves_no_file(tmp_path):
    target = tmp_path / "bad.onnx"
    with pytest.raises(ConversionError, match=r"layer 'gaussianize' \(Erfinv\), op (aten|prims)\.erf_?inv.*Way out"):
        export_onnx(UnconvertibleNet(), torch.randn(1, 1, 8, 8), target)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(EdgeKDError, match="activation_dtype must be 'auto', 'int8' or 'uint8', got 'int4'"):
        export_onnx(UnconvertibleNet(), torch.randn(1, 1, 8, 8), target, activation_dtype="int4")
    with pytest.raises(EdgeKDError, match="opset 13 is not supported"):
        export_onnx(UnconvertibleNet(), torch.randn(1, 1, 8, 8), target, opset=13)
