"""Layer sensitivity ranking and the mixed-precision fallback (k layers kept in float)."""
import pytest
import torch

from edgekd.errors import EdgeKDError
from edgekd.quant.ptq import calibration_batches
from edgekd.quant.sensitivity import layer_sensitivity, mixed_precision_fallback, model_bytes, quantizable_layers
from quant_fixtures import TinyNet, separable_task, train_briefly

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::UserWarning")
torch.set_num_threads(1)


def _weight_quant_nodes(q):
    """The quantized weights of the model's own layers (not of a pool rewritten as a depthwise conv)."""
    return [n for n in q.graph.nodes if str(n.target).startswith("quantized_decomposed.quantize_per_channel")
            and not str(n.args[0].target).startswith("_edgekd_avg_pool_weight")]


def test_sensitivity_table_and_fallback_keep_layers_in_float():
    x, y = separable_task(256, size=8)
    torch.manual_seed(0)
    model = train_briefly(TinyNet(), x, y, steps=60)
    calib = calibration_batches(x[:64], 32)
    assert quantizable_layers(model) == ["stem.0", "block.0", "block.3", "head"]
    sens = layer_sensitivity(model, x[:1], "litert_int8", calib, x[:128], y[:128], mode="quantize_one")
    deltas = [r["delta"] for r in sens["table"]]
    assert deltas == sorted(deltas, reverse=True) and len(deltas) == 4
    assert {r["layer"] for r in sens["table"]} == set(quantizable_layers(model))
    result = mixed_precision_fallback(model, x[:1], "litert_int8", calib, x[:128], y[:128], k=2, sensitivity=sens)
    assert result["keep_float"] == [r["layer"] for r in sens["table"][:2]]
    assert len(_weight_quant_nodes(result["model"])) == 2  # two layers left in float
    assert result["int8_bytes"] < result["bytes"] < result["fp32_bytes"]
    # int8 weights: 1 byte per weight + fp32 scale and bias per output channel
    assert model_bytes(model) == sum(m.weight.numel() + 8 * m.weight.shape[0]
                                     for n, m in model.named_modules() if n in quantizable_layers(model))
    with pytest.raises(EdgeKDError, match=r"unknown layer\(s\) \['stem.9'\]"):
        layer_sensitivity(model, x[:1], "litert_int8", calib, x, y, layers=["stem.9"])
    with pytest.raises(ValueError, match="mode must be 'float_one' or 'quantize_one', got 'all'"):
        layer_sensitivity(model, x[:1], "litert_int8", calib, x, y, mode="all")
    with pytest.raises(ValueError, match="k must be an int >= 0, got -1"):
        mixed_precision_fallback(model, x[:1], "litert_int8", calib, x, y, k=-1, sensitivity=sens)
