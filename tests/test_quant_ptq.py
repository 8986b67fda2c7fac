"""PTQ: calibration methods differ as they should, representative-set recipes, validation."""
from pathlib import Path

import pytest
import torch

from edgekd.errors import ConfigError, EdgeKDError
from edgekd.quant.ptq import (CALIBRATION_METHODS, CalibrationRecipe, calibration_batches, calibration_indices,
                              load_calibration_recipe, quantize_ptq, select_calibration)
from quant_fixtures import TinyNet, separable_task, train_briefly

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _observer(method, data, **kw):
    obs = CALIBRATION_METHODS.get(method)(**kw)(dtype=torch.int8, quant_min=-128, quant_max=127)
    for batch in data:
        obs(batch)
    return obs


def _observer_range(method, data, **kw):
    scale, _ = _observer(method, data, **kw).calculate_qparams()
    return float(scale)


def _quant_mse(scale, zp, x):
    q = torch.clamp(torch.round(x / scale) + zp, -128, 127)
    return float(((q - zp) * scale - x).pow(2).mean())


def test_percentile_and_histogram_clip_outliers_that_minmax_keeps():
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(4096, generator=g) for _ in range(4)]
    data[1][7] = 80.0  # one outlier
    s_minmax = _observer_range("minmax", data)
    s_pct = _observer_range("percentile", data, percentile=99.9)
    assert s_minmax == pytest.approx((80.0 - float(min(d.min() for d in data))) / 255, rel=1e-4)
    assert s_pct < s_minmax / 4
    # MSE search: never worse than min-max on the data it saw (at 8 bits it rarely clips: far outliers cost more
    # squared error clipped than the rounding noise they cause).
    tail = [torch.tan(torch.pi * (torch.rand(4096, generator=g) - 0.5)) for _ in range(4)]  # Cauchy
    for d in (data, tail):
        mse, minmax = _observer("mse", d), _observer("minmax", d)
        x = torch.cat(d)
        assert _quant_mse(*mse.calculate_qparams(), x) <= _quant_mse(*minmax.calculate_qparams(), x) * 1.001
        assert float(mse.max_val) <= float(minmax.max_val)
    assert _observer_range("histogram", data) <= s_minmax
    # Percentile at 100 is min-max of each batch, averaged over batches: never wider than global min-max.
    assert _observer_range("percentile", data, percentile=100.0) <= s_minmax
    with pytest.raises(ValueError, match=r"percentile must be in \(50, 100\], got 20"):
        CALIBRATION_METHODS.get("percentile")(percentile=20)
    with pytest.raises(EdgeKDError, match="unknown calibration method 'minmx'; did you mean 'minmax'"):
        CALIBRATION_METHODS.get("minmx")


def test_quantize_ptq_methods_keep_accuracy_and_scheme_ranges():
    x, y = separable_task(512, size=8)
    xt, yt = separable_task(512, size=8, seed=1)
    torch.manual_seed(0)
    model = train_briefly(TinyNet(), x, y, steps=100)
    with torch.no_grad():
        fp32 = (model(xt).argmax(1) == yt).float().mean().item()
    assert fp32 > 0.85
    for method in ("minmax", "percentile", "mse", "histogram"):
        q = quantize_ptq(model, x[:1], "ort_x86_novnni", calibration_batches(x[:128], 64), method)
        assert q.meta["edgekd_method"] == f"ptq_{method}"
        with torch.no_grad():
            acc = (q(xt).argmax(1) == yt).float().mean().item()
        assert acc >= fp32 - 0.03, method
        w = [n for n in q.graph.nodes if str(n.target).startswith("quantized_decomposed.quantize_per_channel")]
        # three convs, the head and the global pool (a depthwise conv of weight 1/(h*w): avg_pools_as_depthwise_conv)
        assert len(w) == 5 and all(n.args[4:6] == (-64, 63) for n in w)
        assert not any("batch_norm" in str(n.target) for n in q.graph.nodes)
    with pytest.raises(EdgeKDError, match="got no calibration batches"):
        quantize_ptq(model, x[:1], "litert_int8", [], "minmax")


def test_calibration_selection_is_balanced_seeded_and_validated(tmp_path):
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    recipe = CalibrationRecipe(size=30, balanced=True, seed=0)
    idx = calibration_indices(y, recipe)
    counts = torch.bincount(y[idx], minlength=3).tolist()
    assert len(idx) == 30 and counts[2] == 5 and abs(counts[0] - counts[1]) <= 1  # rare class gives its share
    assert torch.equal(idx, calibration_indices(y, recipe))
    assert not torch.equal(idx, calibration_indices(y, CalibrationRecipe(size=30, seed=1)))
    x = torch.arange(len(y)).float()
    assert torch.equal(select_calibration(x, y, recipe), x[idx])
    assert len(calibration_indices(y, CalibrationRecipe(size=1000))) == len(y)
    default = load_calibration_recipe(REPO / "calibration" / "default.yaml")
    assert default == CalibrationRecipe(size=512, balanced=True, seed=0, batch_size=64, split="train")
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: 0\nsplit: test\nsed: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'sed'"):
        load_calibration_recipe(bad)
    bad.write_text("size: 0\nsplit: test\n")
    with pytest.raises(ConfigError, match=r"(?s)size must be an int >= 1, got 0.*split must be 'train' or 'val'"):
        load_calibration_recipe(bad)
    with pytest.raises(EdgeKDError, match="x has 3 rows but y has 85"):
        select_calibration(x[:3], y, recipe)


class _Patterns(torch.nn.Module):
    """The patterns that made int8 files part from their simulation on torchvision models (docs/coverage.md):
    conv -> ReLU6, two branches concatenated and channel-shuffled (shufflenet), a sigmoid gate (squeeze-excitation),
    flatten -> dropout -> linear head (mobilenet_v2)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU6())
        self.left = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 1), torch.nn.ReLU())
        self.right = torch.nn.Sequential(torch.nn.Conv2d(8, 8, 3, padding=1), torch.nn.ReLU())
        self.gate = torch.nn.Conv2d(16, 16, 1)
        self.head = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Dropout(0.2), torch.nn.Linear(16, 5))

    def forward(self, x):
        x = self.stem(x)
        x = torch.cat((self.left(x), self.right(x)), dim=1)
        b, c, h, w = x.shape
        x = x.view(b, 2, c // 2, h, w).transpose(1, 2).contiguous().view(b, c, h, w)
        a, z = x.chunk(2, dim=1)
        x = torch.cat((a, z), dim=1)
        x = x * torch.sigmoid(self.gate(torch.nn.functional.adaptive_avg_pool2d(x, 1)))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 1))


def test_simulation_has_no_requantization_the_files_lack_and_int32_biases():
    from edgekd.quant.quantizer import _attr, _dequant_scale

    torch.manual_seed(0)
    x = torch.randn(16, 3, 8, 8)
    q = quantize_ptq(_Patterns().eval(), (x[:1],), "ort_vnni", [x], "minmax")
    aten = torch.ops.aten
    ops = [n for n in q.graph.nodes if n.op == "call_function"]

    def of(*targets):
        found = [n for n in ops if n.target in targets]
        assert found, targets
        return found

    # nothing runs in float between int8 ops: concatenations, the shuffle, the gate and the head read dequantized
    # int8 tensors (before: cat and shuffle in float, shufflenet's TFLite file at 60%)
    for n in of(aten.cat.default, aten.transpose.int, aten.contiguous.default, aten.mul.Tensor, aten.linear.default):
        assert all(_dequant_scale(q, a) is not None for a in n.all_input_nodes if a.op != "get_attr"), n
    # ReLU6 is observed after the clamp: its grid starts at 0 (zero point -128), not at the conv's minimum
    (relu6,) = of(aten.hardtanh.default)
    assert [int(u.args[2]) for u in relu6.users] == [-128]
    # the gate is read on the sigmoid's fixed 1/256 grid, not requantized to the mul's own range
    (mul,) = of(aten.mul.Tensor)
    assert 1 / 256 in [float(_dequant_scale(q, a)[0]) for a in mul.all_input_nodes]
    # flatten -> dropout -> linear: the head reads the tensor at the dropout's input scale (mobilenet_v2's bug)
    (dropout,) = of(aten.dropout.default)
    (linear,) = of(aten.linear.default)
    assert float(_dequant_scale(q, dropout.args[0])[0]) == float(_dequant_scale(q, linear.args[0])[0])
    # every bias lies on the int32 grid of input scale x weight scale, as the files store it
    for n in of(aten.conv2d.default, aten.linear.default):
        if n.args[2] is None:  # a pool rewritten as a depthwise conv has no bias
            continue
        step = _dequant_scale(q, n.args[0]) * _dequant_scale(q, n.args[1])
        k = _attr(q, n.args[2].target).double() / step
        assert torch.allclose(k, k.round(), atol=1e-3), n


class _Residual(torch.nn.Module):
    """Two residual blocks in a row (the first add feeds the second, as in mobilenet_v2), a ReLU after an add and a
    squeeze-excitation mul."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.block1 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.block2 = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.gate = torch.nn.Conv2d(8, 8, 1)
        self.head = torch.nn.Linear(8, 5)

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(x + self.block1(x))
        x = x + self.block2(x)
        x = x * torch.sigmoid(self.gate(torch.nn.functional.adaptive_avg_pool2d(x, 1)))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1))


def test_residual_adds_and_gates_are_int8_ops():
    """litert-torch finds add/mul/relu by the `source_fn_stack` the tracer used to record; torch.export 2.13 records
    none, and every add and mul ran in float between dequantized inputs, the first add passing an unquantized
    tensor to the second (no int8 file has one). record_source_fns restores the metadata: each add, relu and mul
    output is quantized."""
    from edgekd.quant.quantizer import record_source_fns

    torch.manual_seed(0)
    x = torch.randn(16, 3, 8, 8)
    q = quantize_ptq(_Residual().eval(), (x[:1],), "ort_vnni", [x], "minmax")
    aten = torch.ops.aten
    elementwise = [n for n in q.graph.nodes if n.op == "call_function" and n.target in (
        aten.add.Tensor, aten.add_.Tensor, aten.mul.Tensor, aten.relu.default, aten.relu_.default)]
    assert len([n for n in elementwise if n.target in (aten.add.Tensor, aten.add_.Tensor)]) == 2
    def quantized(n):  # its value goes to a quantize node, or through a fused relu (add + relu is one int8 op)
        return n.users and all(("quantize_per_tensor" in str(u.target) and "dequantize" not in str(u.target))
                               or (u.target in (aten.relu.default, aten.relu_.default) and quantized(u))
                               for u in n.users)

    for n in elementwise:
        assert quantized(n), f"{n.name} runs in float: its users are {list(n.users)}"
    assert record_source_fns(q) == 0  # everything it would mark already carries the metadata


def test_patterns_export_to_int8_files_that_compute_their_simulation(tmp_path):
    from edgekd.export import export_onnx, export_tflite
    from edgekd.quant.agreement import compare_top1
    from edgekd.runtimes import open_session

    torch.manual_seed(0)
    x = torch.randn(48, 3, 8, 8)
    q = quantize_ptq(_Patterns().eval(), (x[:1],), "ort_vnni", [x[:32]], "minmax")
    with torch.no_grad():
        sim = q(x[32:]).numpy()
    for path in (export_onnx(q, (x[:1],), tmp_path / "p.onnx", dynamic_batch=False),
                 export_tflite(q, (x[:1],), tmp_path / "p.tflite")):
        c = compare_top1(sim, open_session(path).run(x[32:].numpy()))
        assert c["rel_error"] < 0.02 and c["agreement"] == 1.0, (path.suffix, c["rel_error"], c["agreement"])


class _Pools(torch.nn.Module):
    """densenet's transition (2x2 average pool) and a global average pool over a 2x2 map (N = 4 each)."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.pool = torch.nn.AvgPool2d(2)
        self.mix = torch.nn.Conv2d(16, 16, 1)
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x):
        x = self.mix(self.pool(torch.relu(self.conv(x))))
        return self.head(torch.nn.functional.adaptive_avg_pool2d(torch.relu(x), 1).flatten(1))


def _pool_steps(q, x):
    """(input record, output record) of each pool of `q`'s simulation: its 2x2 average pool, rewritten as a
    depthwise conv, and its global pool."""
    from edgekd.quant.agreement import simulation_activations

    recs = simulation_activations(q, x)
    conv_in = next(r for r in recs if r["op"] == "relu" and r["q"].shape[-1] == 4)
    pooled = recs[recs.index(conv_in) + 1]
    global_in = next(r for r in recs if r["op"] == "relu" and r["q"].shape[-1] == 2)
    global_out = recs[recs.index(global_in) + 1]
    return [(conv_in, pooled), (global_in, global_out)]


def test_global_pools_up_to_8x8_become_depthwise_convs():
    """A global pool (adaptive to 1x1, or mean over H, W with or without keepdim) over at most 8x8 values becomes the
    depthwise conv it equals, an exact integer op in both runtimes; a larger one stays a mean (LiteRT runs large
    depthwise windows several times slower than MEAN)."""
    from edgekd.quant.quantizer import GLOBAL_POOL_MAX_WINDOW, avg_pools_as_depthwise_conv

    class Pools(torch.nn.Module):
        def forward(self, x):
            return (torch.nn.functional.adaptive_avg_pool2d(x, 1).flatten(1) + x.mean((2, 3))
                    + x.mean((-1, -2), keepdim=True).flatten(1))

    assert GLOBAL_POOL_MAX_WINDOW == 64
    for size, rewritten in ((8, 3), (9, 0)):
        x = torch.randn(2, 3, size, size)
        gm = torch.export.export(Pools(), (x,)).module()
        expected = gm(x)
        assert avg_pools_as_depthwise_conv(gm) == rewritten, size
        assert torch.allclose(gm(x), expected, atol=1e-6)
        convs = [n for n in gm.graph.nodes if n.target == torch.ops.aten.conv2d.default]
        assert len(convs) == rewritten and all(n.args[-1] == 3 for n in convs)  # depthwise: groups = channels


def test_average_pools_round_once_at_their_own_scale():
    """Hand-computed: each pooled int8 value is round(S * s_in / (4 * s_out)) + z_out, S the exact integer sum of
    its four inputs' (q - z_in) — also where S = 2 mod 4, the half steps that a pool sharing its input's scale
    rounds differently in every runtime (LiteRT: half away from zero on the stored sum; onnxruntime: half to even
    on its uint8 value; the float simulation: by its rounding error)."""
    from edgekd.quant.quantizer import avg_pools_as_depthwise_conv

    # the rewrite: a 2x2 average pool is the depthwise conv with weight 1/4, exactly
    gm = torch.export.export(torch.nn.AvgPool2d(2), (torch.zeros(2, 3, 4, 4),)).module()
    assert avg_pools_as_depthwise_conv(gm) == 1
    assert not any(n.target == torch.ops.aten.avg_pool2d.default for n in gm.graph.nodes)
    x = torch.arange(2 * 3 * 16, dtype=torch.float32).reshape(2, 3, 4, 4)
    assert gm(x)[0, 0].tolist() == [[2.5, 4.5], [10.5, 12.5]]  # (0+1+4+5)/4, (2+3+6+7)/4, ...
    assert torch.equal(gm(x), torch.nn.functional.avg_pool2d(x, 2))

    torch.manual_seed(0)
    x = torch.randn(64, 3, 4, 4)
    q = quantize_ptq(_Pools().eval(), (x[:1],), "ort_vnni", [x[:32]], "minmax")
    assert not any(n.target == torch.ops.aten.avg_pool2d.default for n in q.graph.nodes)
    ties = 0
    for pool_in, pool_out in _pool_steps(q, x[32:]):
        assert pool_out["scale"] != pool_in["scale"]  # own output parameters: one rounding, ties as rare as float error
        qi = torch.as_tensor(pool_in["q"]).double() - pool_in["zero_point"]
        n, c, h, w = qi.shape
        s = qi.reshape(n, c, h // 2, 2, w // 2, 2).sum((3, 5))
        expected = torch.clamp(torch.round(s * pool_in["scale"] / (4 * pool_out["scale"])) + pool_out["zero_point"],
                               -128, 127)
        got = torch.as_tensor(pool_out["q"]).double().reshape(expected.shape)
        assert torch.equal(got, expected)
        ties += int((s.remainder(4) == 2).sum())
    assert ties > 100  # the half steps of the shared-scale pools are among the values checked


@pytest.mark.export
def test_pooled_values_of_both_int8_files_equal_the_simulation(tmp_path):
    """Every pooled int8 value onnxruntime and LiteRT compute equals the simulation's (before: LiteRT rounded the
    2x2 pool twice, AVERAGE_POOL_2D at the input's scale then QUANTIZE, 55% of the values off; the global pool
    sharing its input's scale broke half-step ties unlike the simulation in 1.6% (onnxruntime) / 2.5% (LiteRT))."""
    from edgekd.export import export_onnx, export_tflite
    from edgekd.quant.agreement import layer_divergence, onnx_activations, simulation_activations, tflite_activations

    torch.manual_seed(0)
    x = torch.randn(48, 3, 4, 4)
    q = quantize_ptq(_Pools().eval(), (x[:1],), "ort_vnni", [x[:32]], "minmax")
    onnx_path = export_onnx(q, (x[:1],), tmp_path / "p.onnx", dynamic_batch=False)
    tflite_path = export_tflite(q, (x[:1],), tmp_path / "p.tflite")
    pooled = {r["node"] for pair in _pool_steps(q, x[:2]) for r in pair[1:]}
    assert len(pooled) == 2
    for i in range(32, 48):
        xi = x[i:i + 1]
        sim = simulation_activations(q, xi)
        for name, acts in (("onnx", onnx_activations(onnx_path, xi.numpy())[0]),
                           ("tflite", tflite_activations(tflite_path, xi.numpy()))):
            rows = {r["node"]: r for r in layer_divergence(sim, acts)["layers"]}
            for node in pooled:
                assert rows[node]["matched"] and rows[node]["max_lsb"] == 0, (name, i, rows[node])
