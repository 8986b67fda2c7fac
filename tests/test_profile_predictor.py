"""Predictor: per-layer work from ONNX graphs (hand-computed), the fit on synthetic measurements, labelling."""
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekd.errors import EdgeKDError
from edgekd.profile.predict.layers import (Layer, OrtNode, _im2col_cols, _window_stats, layers_from_onnx, model_layers,
                                          ort_nodes)
from edgekd.profile.predict.predictor import (NODE_FEATURES, Calibration, LayerFeatures, fit_costs, fit_node_costs,
                                      model_time_s, node_features, node_model_time_s, predict, prior_costs)
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


def test_ort_nodes_read_the_optimized_graph(tmp_path):
    """ORT fuses BN+Relu into the conv and the Add into the depthwise conv, runs both in the NCHWc layout (the
    first reading the plain NCHW input) and reorders back once before Flatten/Gemm."""
    nodes = ort_nodes(graph(tmp_path))
    assert [(n.op.split(".")[-1], n.kind) for n in nodes] == [
        ("Conv", "convin"), ("Conv", "dw"), ("GlobalAveragePool", "pool"), ("ReorderOutput", "reorder"),
        ("Flatten", "free"), ("Gemm", "gemm"), ("run", "io")]
    conv, dw, gap, reorder, _, gemm, call = nodes
    assert call.in_elems == 8 * 256 and call.out_elems == 10
    assert conv.macs == 16 * 256 * 8 * 9 and conv.taps == 9 and conv.out_channels == 16
    assert conv.in_elems == 8 * 256 and conv.weight_elems == 16 * 8 * 9 + 16  # BN folded into weights + bias
    assert dw.macs == 16 * 256 * 9 and dw.sum_elems == 16 * 256  # the residual Add, fused
    assert gap.in_elems == 16 * 256 and reorder.in_elems == reorder.out_elems == 16
    assert gemm.macs == 160 and gemm.weight_elems == 170
    assert ort_nodes(graph(tmp_path), input_shape=(2, 8, 16, 16))[0].macs == 2 * conv.macs


def test_im2col_columns_are_what_mlas_writes(tmp_path):
    """MLAS expands a plain conv into input channels x taps rows by output positions columns (per group, so
    depthwise is C groups of taps rows), whatever the stride; a 1x1, stride-1, unpadded conv is a GEMM on the input
    (no columns)."""
    assert _im2col_cols(18, 9, 7 * 7, [2, 2], [1, 1, 1, 1]) == 18 * 9 * 49  # not 18 * 14 * 14 * 9, 4x that
    assert _im2col_cols(18, 9, 14 * 14, [1, 1], [1, 1, 1, 1]) == 18 * 14 * 14 * 9
    assert _im2col_cols(18, 1, 14 * 14, [1, 1], [0, 0, 0, 0]) == 0
    assert _im2col_cols(18, 1, 7 * 7, [2, 2], [0, 0, 0, 0]) == 18 * 49
    # two stride-2 convs on x[1,18,14,14], dense 3x3 to 36 channels and depthwise 3x3: 18 channels are not a
    # multiple of 4, so ORT keeps both out of NCHWc
    w = numpy_helper.from_array(np.ones((36, 18, 3, 3), np.float32), "w")
    wd = numpy_helper.from_array(np.ones((18, 1, 3, 3), np.float32), "wd")
    g = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 4, strides=[2, 2]),
                           helper.make_node("Conv", ["x", "wd"], ["z"], pads=[1] * 4, strides=[2, 2], group=18)],
                          "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 18, 14, 14])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 36, 7, 7]),
                           helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 18, 7, 7])], [w, wd])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(tmp_path / "s2.onnx"))
    dense, dw = [n for n in ort_nodes(tmp_path / "s2.onnx") if n.kind == "im2col"]
    assert (dense.cols, dense.macs) == (18 * 9 * 49, 36 * 49 * 18 * 9) and dw.cols == dw.macs == 18 * 49 * 9
    row = dict(zip(NODE_FEATURES, node_features([dense], 2**20, 2**24)[0]))
    assert row["im2col_cols"] == 18 * 9 * 49 and row["im2col_macs"] == dense.macs and row["n_im2col"] == 1


def node_sets():
    def conv(kind, cin, cout, hw, taps=9):
        return OrtNode("c", "Conv", kind, cout * hw * hw * cin * taps, cin * hw * hw, cout * hw * hw,
                       cout * cin * taps, taps, 0, cout)

    def gemm(fin, fout):
        return OrtNode("g", "Gemm", "gemm", fin * fout, fin, fout, fin * fout + fout)

    def light(kind, elems):
        return OrtNode("x", "Op", kind, 0, elems, elems, 0)

    call = OrtNode("(session run)", "run", "io", 0, 1000, 10, 0)
    return [[*ns, call] for ns in [[conv("conv", 16, 16, 32)], [conv("conv", 64, 64, 16)], [conv("conv", 16, 128, 16)],
            [conv("convin", 3, 32, 32), light("reorder", 32 * 1024)], [conv("pw", 32, 64, 16, 1)],
            [conv("pw", 128, 16, 16, 1), light("pool", 4096)], [gemm(1024, 1024)], [gemm(4096, 4096)],
            [gemm(2048, 3072)], [gemm(3072, 3072)],
            [gemm(64, 64), gemm(64, 64), light("free", 64)], [light("elementwise", 50_000)],
            [conv("conv", 32, 32, 8), conv("pw", 32, 32, 8, 1), light("reorder", 2048)], [gemm(256, 10)]]]


def test_node_features_hand_counts():
    n = OrtNode("c", "Conv", "conv", 16 * 100 * 32 * 9, 32 * 100, 16 * 100, 16 * 32 * 9, 9, 7, 16)
    row = dict(zip(NODE_FEATURES, node_features([n], 2**20, 2**24)[0]))
    assert row["conv_macs"] == n.macs and row["conv_out"] == 1600 and row["sum_elems"] == 7
    assert row["conv_loads"] == n.macs / 16 and row["n_conv"] == 1 and row["n_light"] == 0
    wide = OrtNode("c", "Conv", "pw", 256 * 100 * 32, 32 * 100, 256 * 100, 256 * 32, 1, 0, 256)
    assert dict(zip(NODE_FEATURES, node_features([wide], 1, 1)[0]))["pw_loads"] == wide.macs / 64
    # Gemm weights past the caches: 64 MiB of weights counts ~all its bytes as L3- and DRAM-bound
    big = OrtNode("g", "Gemm", "gemm", 4096 * 4096, 4096, 4096, 4096 * 4096)
    row = dict(zip(NODE_FEATURES, node_features([big], 2**20, 16 * 2**20)[0]))
    assert row["gemm_dram_bytes"] == pytest.approx(4 * big.weight_elems * 16 / 17)  # 1 / (1 + (16/64)^2)


def test_fit_node_costs_recovers_synthetic_costs():
    true = {k: 0.0 for k in NODE_FEATURES}
    true.update(t0=5e-6, n_conv=2e-6, n_pw=1.5e-6, n_light=1e-6, conv_macs=1e-11, conv_loads=4e-11,
                convin_macs=3e-11, pw_macs=1.5e-11, reorder_in_elems=2e-10, pool_elems=3e-10, elt_elems=5e-10,
                gemm_macs=1e-11, gemm_dram_bytes=4e-11, l2_bytes=2**20, l3_bytes=16 * 2**20)
    samples = [(ns, node_model_time_s(ns, true)[0]) for ns in node_sets()]
    costs, sigma, res = fit_node_costs(samples, l2_grid_mb=(1.0, 2.0), l3_grid_mb=(16.0, 32.0))
    assert max(abs(r) for r in res) < 1e-6 and costs["l3_bytes"] == 16 * 2**20
    assert all(costs[k] >= 0 for k in NODE_FEATURES)
    held_out = [OrtNode("c", "Conv", "conv", 48 * 400 * 48 * 9, 48 * 400, 48 * 400, 48 * 48 * 9, 9, 0, 48),
                node_sets()[0][-1]]  # + the session call: per-call and per-node costs trade off in the fit
    assert node_model_time_s(held_out, costs)[0] == pytest.approx(node_model_time_s(held_out, true)[0], rel=0.02)
    with pytest.raises(EdgeKDError, match="at least 3 measured models"):
        fit_node_costs(samples[:2])
    with pytest.raises(EdgeKDError, match="must be > 0"):
        fit_node_costs([(ns, 0.0) for ns in node_sets()])


def test_calibrated_onnxruntime_prediction_uses_the_node_model(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CALIBRATION_DIR", str(tmp_path / "calib"))
    prior = prior_costs(load_target("cpu-local"), "fp32")
    nc = {k: 1e-9 for k in NODE_FEATURES}
    nc.update(t0=1e-5, l2_bytes=2**20, l3_bytes=2**24)
    calib = Calibration("cpu-local", "onnxruntime", "fp32", 1, {k: 1.0 for k in prior}, prior, 0.06,
                        residuals=[{"name": "a"}] * 4, node_costs=nc)
    path = calib.save(tmp_path / "calib" / "cpu-local" / "onnxruntime-fp32.json")
    assert Calibration.load(path) == calib
    stale = Calibration(**{**calib.__dict__, "node_costs": {k: v for k, v in nc.items() if k != "n_dw"}})
    with pytest.raises(EdgeKDError, match="older edgekd.*n_dw.*edgekd calibrate --target cpu-local"):
        Calibration.load(stale.save(tmp_path / "stale.json"))
    p = predict(graph(tmp_path), "cpu-local", with_layers=True)
    assert "node model" in p.basis and p.uncertainty == 0.06 and len(p.layers) == 7
    assert p.ms == pytest.approx(sum(ly["ms"] for ly in p.layers)) and p.layers[-1]["kind"] == "io"
    assert p.layers[-1]["ms"] == pytest.approx(1e-2 + 1e-6 * (8 * 256 + 10))  # t0 + input and output elements
    assert [ly["kind"] for ly in p.layers][:2] == ["convin", "dw"]
    two = predict(graph(tmp_path), "cpu-local", threads=2)
    assert two.ms < p.ms and two.uncertainty == 0.3
    # int8 and LiteRT fall back to the per-layer model
    assert "node model" not in predict(graph(tmp_path), "cpu-local", precision="int8").basis


def test_conv_window_padding_shares():
    # 7-tap window, 8 inputs, pad 3, stride 1: only outputs 3 and 4 stay inside; 44 of 56 taps read real input
    assert _window_stats(8, 8, 7, 1, 3, 1) == pytest.approx((6 / 8, 44 / 56))
    assert _window_stats(16, 8, 1, 2, 0, 1) == (0.0, 1.0)  # strided 1x1: no padding at all
    # 3-tap window, stride 2, pad 1 on 8 inputs -> 4 outputs: only the first reaches the padding
    assert _window_stats(8, 4, 3, 2, 1, 1) == pytest.approx((1 / 4, 11 / 12))


def test_calibrate_target_measures_fits_and_writes(tmp_path):
    """A real (short) calibration: micro-models exported, timed on this CPU, both models fitted, file written."""
    from torch import nn

    from edgekd.profile.predict.calibrate import calibrate_target

    family = [(f"fc_{w}", lambda w=w: nn.Sequential(nn.Linear(w, w), nn.ReLU()), (1, w)) for w in (16, 64, 256)]
    family += [(f"pw_{c}", lambda c=c: nn.Conv2d(c, c, 1), (1, c, 8, 8)) for c in (8, 32)]
    out = tmp_path / "calib.json"
    path = calibrate_target("cpu-local", models=family, rounds=1, time_cap_s=0.1, out_path=out, log=None)
    calib = Calibration.load(path)
    assert path == out and calib.target == "cpu-local" and calib.threads == 1
    assert [r["name"] for r in calib.residuals] == [n for n, _, _ in family]
    assert all(r["measured_ms"] > 0 and r["predicted_ms"] > 0 for r in calib.residuals)
    assert calib.node_costs and calib.node_costs["t0"] >= 0 and 0.03 <= calib.uncertainty
    p = predict(graph(tmp_path), "cpu-local", calibration=calib)
    assert "node model" in p.basis and "5 micro-benchmarks" in p.basis and p.ms > 0


def test_calibrate_target_refuses_what_it_cannot_measure(tmp_path):
    from edgekd.profile.predict.calibrate import calibrate_target

    with pytest.raises(EdgeKDError, match="fp32 micro-models only"):
        calibrate_target("cpu-local", precision="int8", out_path=tmp_path / "c.json", log=None)
    with pytest.raises(EdgeKDError, match="not listed for target"):
        calibrate_target("cpu-local", runtime="tensorrt", out_path=tmp_path / "c.json", log=None)
    assert not (tmp_path / "c.json").exists()
