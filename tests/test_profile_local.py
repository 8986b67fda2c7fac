"""Local runner on tiny ONNX graphs built with onnx.helper (fast), torch .pt2, and LiteRT (export tier)."""
import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import EdgeKDError
from edgekd.profile import profile_file, profile_files, profile_metrics
from edgekd.profile.result import METRIC_KEYS, detect_precision


def conv_relu_onnx(path, channels=4, weight_elems=None, qdq=False):
    """x[1,1,8,8] -> Conv(3x3) -> Relu [-> Flatten -> MatMul with a big weight]; optional Q/DQ on the input."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((channels, 1, 3, 3)).astype(np.float32), "w")]
    nodes, src = [], "x"
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
                  helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"])]
        src = "xd"
    nodes += [helper.make_node("Conv", [src, "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])]
    out = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 8, 8])
    if weight_elems:
        inits.append(numpy_helper.from_array(
            rng.standard_normal((channels * 64, weight_elems // (channels * 64))).astype(np.float32), "big"))
        nodes += [helper.make_node("Flatten", ["y"], ["f"]), helper.make_node("MatMul", ["f", "big"], ["z2"])]
        out = helper.make_tensor_value_info("z2", TensorProto.FLOAT, [1, weight_elems // (channels * 64)])
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [out], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


FAST = dict(warmup=2, min_runs=20, time_cap_s=0.5, min_time_s=0.05)


def test_onnxruntime_result_has_every_contract_field(tmp_path):
    path = conv_relu_onnx(tmp_path / "tiny_fp32.onnx")
    r = profile_file(path, **FAST)
    m = r.to_metrics()
    assert set(METRIC_KEYS) <= set(m) and json.dumps(m)
    assert m["measured"] is True and m["runtime"] == "onnxruntime" and m["precision"] == "fp32"
    assert m["threads"] == 1 and m["runs"] >= 20 and m["bytes"] == path.stat().st_size
    assert 0 < m["p50_ms"] <= m["p90_ms"] <= m["p99_ms"] and m["init_ms"] > 0 and m["first_ms"] > 0
    assert m["runtime_version"].startswith("1.") and "logical cores" in m["device"] and m["uncertainty"] is None
    assert r.stopped_by in ("stable", "time_cap", "max_runs") and r.mem_method in ("vmhwm", "rss_samples")


def test_peak_memory_sees_a_16_mb_weight(tmp_path):
    small = profile_file(conv_relu_onnx(tmp_path / "small.onnx"), **FAST)
    big = profile_file(conv_relu_onnx(tmp_path / "big.onnx", weight_elems=4 * 64 * 16384), **FAST)  # 16 MiB
    assert big.peak_mem_mb >= 16 > small.peak_mem_mb


def test_precision_detection(tmp_path):
    assert detect_precision(conv_relu_onnx(tmp_path / "q.onnx", qdq=True)) == "int8"
    assert detect_precision(conv_relu_onnx(tmp_path / "f.onnx")) == "fp32"


def test_torch_pt2_needs_input_shape(tmp_path):
    import torch

    path = tmp_path / "m.pt2"
    torch.export.save(torch.export.export(torch.nn.Sequential(torch.nn.Linear(8, 4)).eval(), (torch.randn(1, 8),)),
                      str(path))
    with pytest.raises(EdgeKDError, match="input shape is not stored.*input_shape="):
        profile_file(path, **FAST)
    r = profile_file(path, input_shape=(1, 8), **FAST)
    assert r.runtime == "torch" and r.p50_ms > 0 and r.runtime_version.startswith("2.")


def test_bad_arguments(tmp_path):
    path = conv_relu_onnx(tmp_path / "m.onnx")
    with pytest.raises(EdgeKDError, match="unknown runtime 'onnx'.*known: litert, onnxruntime, torch"):
        profile_file(path, runtime="onnx")
    with pytest.raises(EdgeKDError, match="threads must be an integer >= 1, got 0"):
        profile_file(path, threads=0)
    with pytest.raises(EdgeKDError, match="model file not found"):
        profile_file(tmp_path / "missing.onnx")
    with pytest.raises(EdgeKDError, match="runtime 'torch' is not listed for target pixel-8"):
        profile_files([path], "pixel-8", runtime="torch")
    with pytest.raises(EdgeKDError, match="none of this target's runtimes \\(litert\\) runs .onnx"):
        profile_files([path], "pixel-8")


def test_profile_files_and_stage_metrics(tmp_path):
    paths = [conv_relu_onnx(tmp_path / "net_fp32.onnx"), conv_relu_onnx(tmp_path / "net_int8.onnx", qdq=True)]
    results = profile_files(paths, "cpu-local", progress=True, **FAST)
    assert [r.precision for r in results] == ["fp32", "int8"] and all(r.target == "cpu-local" for r in results)
    metrics = profile_metrics("cpu-local", results)
    assert metrics["target"] == "cpu-local" and len(metrics["results"]) == 2
    (v,) = metrics["verdicts"]
    assert v["runtime"] == "onnxruntime" and v["measured"] and v["text"].startswith("On cpu-local with onnxruntime")


@pytest.mark.export
def test_litert_runner(tmp_path):
    import torch

    import litert_torch

    path = tmp_path / "m.tflite"
    litert_torch.convert(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval(),
                         (torch.randn(1, 1, 8, 8),)).export(str(path))
    r = profile_file(path, threads=1, **FAST)
    assert r.runtime == "litert" and r.precision == "fp32" and r.p50_ms > 0 and r.runs >= 20
