"""int8 coverage on real architectures (issue 11): each int8 file agrees with its own fake-quant simulation.

The default tier runs resnet18, mobilenet_v3_small and squeezenet1_0 (64 px, the benchmark's settings) through PTQ
to int8 ONNX and TFLite and asserts >= 99% top-1 agreement (at int8 output resolution) of each file, in its own
runtime, with the simulation (evaluated in float64); mobilenet_v2 and efficientnet_b0, measured below that gate,
are strict xfails in the `slow` tier. The
helpers that make random weights a fair judge (edgekd.quant.agreement) are tested on tiny models. The full
15-architecture table with QAT+KD, latency and the runtimes' own quantizers is tools/bench_coverage.py (marked
`slow` here).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.quant.agreement import (compare_top1, input_quantization, layer_divergence, logit_diversity,
                                    make_input_dependent, output_quantization, rounding_jitter,
                                    simulate_integer_kernels, synthetic_images)

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")

ROOT = Path(__file__).resolve().parents[1]


def test_synthetic_images_are_normalised_and_low_frequency():
    x = synthetic_images(8, 32, seed=3)
    assert x.shape == (8, 3, 32, 32) and x.dtype == torch.float32
    assert torch.equal(x, synthetic_images(8, 32, seed=3))  # seeded
    assert -3 < float(x.mean()) < 3 and 0.3 < float(x.std()) < 3
    # Natural-image statistics: neighbouring pixels are correlated (white noise would give ~0).
    a, b = x[..., :, :-1].flatten(), x[..., :, 1:].flatten()
    assert float(torch.corrcoef(torch.stack([a, b]))[0, 1]) > 0.8


class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(8, 5)
        nn.init.zeros_(self.head.weight)  # flat logits, as torchvision's ViT head at init
        nn.init.zeros_(self.head.bias)

    def forward(self, x):
        return self.head(self.features(x))


def test_make_input_dependent_gives_varied_logits_and_recalibrates_batchnorm():
    torch.manual_seed(0)
    model, x = _Tiny(), synthetic_images(64, 16, seed=1)
    assert logit_diversity(model(x).detach().numpy())["distinct_top1"] == 1
    info = make_input_dependent(model, x, rank=4, logit_std=4.0)
    assert info["batchnorm_recalibrated"] == 1 and info["head"]["name"] == "head"
    with torch.no_grad():
        logits = model(x).numpy()
        pre_bn = model.features[0](x)
    assert logit_diversity(logits)["distinct_top1"] >= 3
    assert abs(float(logits.std()) - 4.0) < 1.0
    assert np.abs(logits.mean(0)).max() < 1e-3  # every class centred: argmax follows the input, not a bias
    bn = model.features[1]
    assert torch.allclose(bn.running_mean, pre_bn.mean((0, 2, 3)), atol=1e-4)
    assert not model.training and not bn.training and bn.momentum == 0.1  # QAT's export needs a momentum


def test_make_input_dependent_replaces_a_zero_head():
    torch.manual_seed(0)
    model, x = _Tiny(), synthetic_images(64, 16, seed=1)
    make_input_dependent(model, x)
    with torch.no_grad():
        assert logit_diversity(model(x).numpy())["distinct_top1"] >= 3


def test_compare_top1_tells_near_ties_from_gaps():
    ref = np.array([[3.0, 0.0, 0.0], [1.0, 0.99, 0.0], [2.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    out = ref + 0.01
    out[1] = [0.99, 1.0, 0.01]  # a flip of a 0.01 margin by a 0.01 error: a near-tie
    c = compare_top1(ref, out)
    assert c["agreement"] == 0.75 and c["disagreements"] == 1
    (d,) = c["disagreeing"]
    assert d["row"] == 1 and d["margin"] == pytest.approx(0.01) and d["margin_percentile"] == 0
    assert c["near_ties"] == 1
    gap = ref.copy()
    gap[0] = [0.0, 4.0, 0.0]  # a large error on a decisive row: a real gap
    c = compare_top1(ref, gap)
    assert c["near_ties"] == 0 and c["disagreeing"][0]["error_over_median"] > 3
    assert c["rel_error"] == pytest.approx(np.linalg.norm(gap - ref) / np.linalg.norm(ref))


def test_compare_top1_at_int8_resolution_counts_one_step_ties_as_agreeing():
    step = 0.25
    ref = np.array([[1.0, 1.0, 0.0], [1.0, 0.75, 0.0], [1.0, 0.5, 0.0], [2.0, 0.0, 0.0]])
    out = np.array([[1.0, 1.25, 0.0], [0.75, 1.0, 0.0], [0.75, 1.0, 0.0], [2.0, 0.0, 0.0]])
    c = compare_top1(ref, out, resolution=step)
    assert c["agreement"] == 0.25  # rows 0-2 flip
    assert c["agreement_at_resolution"] == 0.75  # rows 0 (tie) and 1 (one step) are ties at int8 precision
    assert c["ties_at_resolution"] == 2


def test_layer_divergence_names_the_first_layer_that_parts():
    rng = np.random.default_rng(0)
    sim = [{"node": f"q{i}", "layer": f"l{i}", "op": "conv2d", "scale": 0.1 * (i + 1), "zero_point": -3,
            "q": rng.integers(-128, 127, (1, 4, 2, 2)).astype(np.int32)} for i in range(3)]
    file = [{"name": f"t{i}", "scale": r["scale"], "zero_point": r["zero_point"] + 128,  # onnx: uint8
             "q": r["q"].copy() + 128} for i, r in enumerate(sim)]
    file[1]["q"][0, 0, 0, 0] += 1  # rounding: 1 LSB
    file[2]["q"][0, 1, 0, 0] += 5
    file[2]["q"] = file[2]["q"].transpose(0, 2, 3, 1)  # NHWC, as TFLite keeps it
    dv = layer_divergence(sim, file)
    assert dv["matched"] == 3 and [r["max_lsb"] for r in dv["layers"]] == [0, 1, 5]
    assert dv["first_over_lsb"]["layer"] == "l2"


def test_integer_kernel_simulation_requantizes_as_the_kernels_do(tmp_path):
    """A linear layer's int8 output, computed by hand as the kernels do: the exact int32 sum of (q_x - z_x) * q_w
    plus the int32 bias, times the float32 multiplier f32(s_x * s_w) / f32(s_out), rounded half to even. The
    integer-kernel simulation gives it on every value, and so does onnxruntime's int8 file; the float32 module
    rounds some near-ties the other way (its sum of 512 dequantized products is off by ~1e-7 relative)."""
    from edgekd.export import export_onnx
    from edgekd.quant import quantize_ptq
    from edgekd.quant.quantizer import _attr, _dequant_scale
    from edgekd.runtimes import open_session

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 64)).eval()
    x = torch.randn(4096, 512)
    q = quantize_ptq(model, (x[:1],), "ort_vnni", [x[:256]], "minmax")
    (linear,) = [n for n in q.graph.nodes if n.target == torch.ops.aten.linear.default]
    s_x, s_w = float(_dequant_scale(q, linear.args[0])[0]), _dequant_scale(q, linear.args[1])
    z_x = int(linear.args[0].args[2])
    q_w = torch.round(_attr(q, linear.args[1].args[0].args[0].target).double() / s_w[:, None]).long()
    k_b = torch.round(_attr(q, linear.args[2].target).double() / (s_x * s_w)).long()  # on the int32 grid
    s_out, z_out = output_quantization(q)
    q_x = torch.clamp(torch.round(x.double() / s_x) + z_x, -128, 127).long()
    acc = (q_x - z_x) @ q_w.T + k_b  # exact int64
    multiplier = torch.tensor(s_x * s_w).float() / torch.tensor(s_out, dtype=torch.float32)
    expected = torch.clamp(torch.round(acc.float() * multiplier).double() + z_out, -128, 127)

    def as_int(logits):
        return torch.round(torch.as_tensor(logits).double() / s_out) + z_out

    assert torch.equal(as_int(simulate_integer_kernels(q, x)), expected)
    onnx = export_onnx(q, (x[:1],), tmp_path / "linear.onnx")
    assert torch.equal(as_int(open_session(onnx).run(x.numpy())), expected)


def test_rounding_jitter_moves_a_fraction_by_one_step():
    x = torch.zeros(10000)
    j = rounding_jitter(x, 0.5, fraction=0.1, seed=0)
    moved = j != 0
    assert 0.08 < float(moved.float().mean()) < 0.12 and set(j[moved].abs().tolist()) == {0.5}


# --- real architectures ---------------------------------------------------------------------------------------------

# Judged as the benchmark judges (256 images, the integer-kernel simulation). mobilenet_v2 was below the gate (0.980
# in both files) until the simulation requantized convs with the kernels' float32 multiplier; efficientnet_b0
# (0.977) until its squeeze-excitation global pools became depthwise convs (each runtime had rounded its float mean
# its own way). Both now pass, in the `slow` tier; squeezenet1_0 (1.000 in both files) is the third default-tier
# architecture.
DEFAULT_ARCHS = ("resnet18", "mobilenet_v3_small", "squeezenet1_0",
                 pytest.param("mobilenet_v2", marks=pytest.mark.slow),
                 pytest.param("efficientnet_b0", marks=pytest.mark.slow))
# The benchmark's defaults (tools/bench_coverage.py): the same seeds give the same files and verdicts.
SIZE, CLASSES, N_CALIB, N_EVAL = 64, 10, 64, 256


@pytest.fixture(scope="module")
def torchvision_models():
    from edgekd.models.vision import import_torchvision

    return import_torchvision().models


@pytest.mark.parametrize("arch", DEFAULT_ARCHS)
def test_ptq_files_agree_with_their_simulation(arch, torchvision_models, tmp_path):
    from edgekd.export import export_onnx, export_tflite
    from edgekd.quant import quantize_ptq, scheme_for_runtimes
    from edgekd.runtimes import open_session

    torch.manual_seed(0)
    model = getattr(torchvision_models, arch)(num_classes=CLASSES).eval()
    x = synthetic_images(N_CALIB + N_EVAL, SIZE, seed=0)
    calib, x_eval = x[:N_CALIB], x[N_CALIB:]
    make_input_dependent(model, calib)
    q = quantize_ptq(model, (x[:1],), scheme_for_runtimes(["litert", "onnxruntime"]), [calib[:32], calib[32:]],
                     "minmax")
    assert input_quantization(q) is not None
    step = output_quantization(q)[0]
    sim = simulate_integer_kernels(q, x_eval)  # the benchmark's judge: the int8 kernels' arithmetic
    assert logit_diversity(sim)["distinct_top1"] >= 2  # the judge is not a constant
    for path in (export_onnx(q, (x[:1],), tmp_path / f"{arch}.onnx", dynamic_batch=False),
                 export_tflite(q, (x[:1],), tmp_path / f"{arch}.tflite")):
        out = open_session(path).run(x_eval.numpy())
        c = compare_top1(sim, out, resolution=step)
        assert c["agreement_at_resolution"] >= 0.99, \
            f"{path.name}: {c['agreement']:.2f} agree, {c['ties_at_resolution']} ties at int8: {c['disagreeing']}"


@pytest.mark.slow
def test_bench_coverage_writes_the_table(tmp_path):
    sys.path.insert(0, str(ROOT / "tools"))
    import bench_coverage

    out = tmp_path / "coverage.json"
    assert bench_coverage.main(["--archs", "resnet18", "--size", "32", "--calib", "16", "--eval", "16",
                                "--qat-steps", "2", "--qat-batch", "8", "--latency-s", "0.05",
                                "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    (rec,) = data["results"]
    assert data["complete"] and not rec.get("errors"), rec.get("errors")
    for key in ("ptq_onnx", "ptq_tflite", "qat_kd_onnx", "qat_kd_tflite"):
        assert rec[key]["bytes"] > 0 and rec[key]["p50_ms_1t"] > 0 and "speedup_1t" in rec[key]
    assert rec["own_onnx"]["tool"].startswith("onnxruntime") and rec["own_tflite"]["tool"].startswith("ai_edge")
    assert "| resnet18 | qat_kd | tflite |" in bench_coverage.table(data["results"])
