"""Predictor: per-layer work from ONNX graphs (hand-computed), the fit on synthetic measurements, labelling."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import EdgeKDError
from edgekd.profile.layers import Layer, layers_from_onnx, model_layers
from edgekd.profile.predictor import (Calibration, LayerFeatures, fit_costs, model_time_s, predict, prior_costs)
from edgekd.profile.targets import load_target


def graph(tmp_path):
    """x[1,8,16,16] -> Conv3x3(8->16)+BN+Relu -> DWConv3x3(16) -> Add(x2) -> GAP -> Flatten -> Gemm(16->10)."""
    r = np.random.default_rng(0)
    f = lambda *s: r.standard_normal(s).astype(np.float32)  # noqa: E731
    inits = [numpy_helper.from_array(a, n) for a, n in [
        (f(16, 8, 3, 3), "w1"), (f(16), "b1"), (np.ones(16, np.float32), "g"), (np.zeros(16, np.float32), "be"),
        (np.zeros(16, np.float32), "mu"), (np.ones(16, np.float32), "var"), (f(16, 1, 3, 3), "wd"),
        (f(10, 16), "wf"), (f(10), "bf")]]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1] * 4),
             helper.make_node("BatchNormalization", ["c1", "g", "be", "mu", "var"], ["bn"]),
             helper.make_node("Relu", ["bn"], ["r1"]),
             helper.make_node("Conv", ["r1", "wd"], ["d"], pads=[1] * 4, group=16),
             helper.make_node("Add", ["d", "r1"], ["a"]),
             helper.make_node("GlobalAveragePool", ["a"], ["p"]),
             helper.make_node("Flatten", ["p"], ["fl"]),
             helper.make_node("Gemm", ["fl", "wf", "bf"], ["y"], transB=1)]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 16, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


def test_layers_match_hand_counts(tmp_path):
    layers = layers_from_onnx(graph(tmp_path))
    assert [(ly.op, ly.kind) for ly in layers] == [("Conv", "conv"), ("Conv", "dwconv"), ("Add", "elementwise"),
                                                   ("GlobalAveragePool", "pool"), ("Gemm", "gemm")]
    conv, dw, add, gap, gemm = layers
    assert conv.macs == 16 * 16 * 16 * 8 * 9 and conv.weight_elems == 16 * 8 * 9 + 16  # BN and Relu fused away
    assert conv.in_elems == 8 * 256 and conv.out_elems == 16 * 256
    assert dw.macs == 16 * 256 * 9 and add.ops == 2 * 16 * 256 and gap.ops == 16 * 256
    assert gemm.macs == 160 and gemm.weight_elems == 170
    assert conv.bytes_moved("fp32") == 4 * conv.bytes_moved("int8")
    # the batch dimension was symbolic: it counts as 1 unless given
    assert layers_from_onnx(graph(tmp_path), input_shape=(4, 8, 16, 16))[0].macs == 4 * conv.macs


def synthetic(prior, true_mult, layer_sets):
    true = {k: prior[k] * true_mult.get(k, 1.0) for k in prior}
    return [(LayerFeatures.from_layers(ls, "fp32"), model_time_s(LayerFeatures.from_layers(ls, "fp32"), true)[0])
            for ls in layer_sets], true


def test_fit_recovers_synthetic_costs():
    prior = prior_costs(load_target("cpu-local"), "fp32")
    L = lambda k, m, b=1000: Layer("l", "op", k, m if k != "elementwise" else 0,  # noqa: E731
                                   m if k == "elementwise" else 0, b, 0, 0)
    sets = [[L("conv", 2_000_000)], [L("conv", 8_000_000), L("elementwise", 50_000)],
            [L("gemm", 1_000_000, 1_000_000)], [L("conv", 500_000), L("gemm", 20_000)]]
    samples, true = synthetic(prior, {"rate_conv": 0.5, "t0": 2.0, "rate_gemm": 3.0}, sets)
    costs, sigma, res = fit_costs(samples, prior, p_grid=(2.0, 4.0), cache_grid_mb=(1, 4))
    assert max(abs(r) for r in res) < 0.01 and sigma == 0.03  # exact data: residuals ~0, floor uncertainty
    held_out = LayerFeatures.from_layers([L("conv", 4_000_000)], "fp32")
    assert model_time_s(held_out, costs)[0] == pytest.approx(model_time_s(held_out, true)[0], rel=0.05)
    assert costs["rate_dwconv"] == prior["rate_dwconv"]  # no sample used depthwise: stays at its prior
    with pytest.raises(EdgeKDError, match="at least 3 measured models"):
        fit_costs(samples[:2], prior)


def test_uncalibrated_prediction_is_labelled(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CALIBRATION_DIR", str(tmp_path / "none"))
    p = predict(graph(tmp_path), "pixel-8", "litert")
    assert not p.measured and p.uncertainty == 1.0 and p.basis.startswith("uncalibrated") and p.ms > 0
    r = p.to_result("g")
    assert r.measured is False and r.p50_ms == p.ms and r.uncertainty == 1.0 and r.p90_ms is None
    # int8 is predicted faster than fp32 from pixel-8's published peaks
    assert predict(graph(tmp_path), "pixel-8", "litert", "int8").ms < p.ms


def test_calibrated_prediction_and_int8_scaling(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CALIBRATION_DIR", str(tmp_path / "calib"))
    tgt = load_target("cpu-local")
    prior = prior_costs(tgt, "fp32")
    calib = Calibration("cpu-local", "onnxruntime", "fp32", 1, {k: 1.0 for k in prior}, prior, 0.07,
                        residuals=[{"name": "a"}] * 5)
    path = calib.save(tmp_path / "calib" / "cpu-local" / "onnxruntime-fp32.json")
    assert Calibration.load(path) == calib
    p = predict(graph(tmp_path), "cpu-local", with_layers=True)
    assert p.uncertainty == 0.07 and p.basis.startswith("calibrated on cpu-local") and len(p.layers) == 5
    assert p.ms == pytest.approx(sum(ly["ms"] for ly in p.layers) + prior["t0"] * 1e3)
    q = predict(graph(tmp_path), "cpu-local", precision="int8")
    assert q.uncertainty == 0.5 and "scaled by published int8/fp32" in q.basis
    two = predict(graph(tmp_path), "cpu-local", threads=2)
    assert two.ms < p.ms and "assuming linear scaling" in two.basis and two.uncertainty == 0.3


def test_predictor_input_errors(tmp_path):
    import torch

    with pytest.raises(EdgeKDError, match="needs input_shape"):
        model_layers(torch.nn.Linear(4, 2))
    with pytest.raises(EdgeKDError, match="precision 'int4' unknown"):
        predict(graph(tmp_path), "cpu-local", precision="int4")
    with pytest.raises(EdgeKDError, match="reads .onnx and .tflite"):
        bad = tmp_path / "m.pt"
        bad.write_bytes(b"x")
        predict(bad, "cpu-local")
    bad = tmp_path / "c.json"
    bad.write_text('{"target": "x"}')
    with pytest.raises(EdgeKDError, match="not a latency calibration file"):
        Calibration.load(bad)
