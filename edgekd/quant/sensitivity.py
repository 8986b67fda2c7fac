"""Per-layer sensitivity to int8, and a mixed-precision fallback that keeps the worst layers in float."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.quant.ptq import quantize_ptq
from edgekd.quant.schemes import Scheme, get_scheme

QUANTIZABLE = (nn.Conv2d, nn.Conv1d, nn.Linear)


@dataclass
class LayerSensitivity:
    """Accuracy effect of int8 on one layer: `gain` = accuracy recovered by keeping only it in float
    (mode "float_one") or `drop` = accuracy lost by quantizing only it (mode "quantize_one")."""

    layer: str
    kind: str
    params: int
    accuracy: float
    delta: float

    def to_dict(self) -> dict:
        return asdict(self)


def quantizable_layers(model: nn.Module) -> list[str]:
    """Module paths of the layers PT2E quantizes (conv and linear), in model order."""
    return [name for name, m in model.named_modules() if isinstance(m, QUANTIZABLE) and name]


def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 512) -> float:
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += int((model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum())
    return correct / max(len(x), 1)


def layer_sensitivity(model: nn.Module, example_inputs, scheme: Scheme | str, calibration_batches: list,
                      x: torch.Tensor, y: torch.Tensor, *, method: str = "minmax", mode: str = "float_one",
                      layers: Iterable[str] | None = None,
                      evaluate: Callable[[nn.Module, torch.Tensor, torch.Tensor], float] = _evaluate) -> dict:
    """Rank layers by how much int8 costs them (PTQ with `method`), most sensitive first.

    mode "float_one": quantize everything except one layer; delta = accuracy gained over full int8.
    mode "quantize_one": quantize only one layer; delta = accuracy lost vs fp32.
    Returns {"fp32_accuracy", "int8_accuracy", "mode", "table": [LayerSensitivity dicts, sorted]}.
    """
    if mode not in ("float_one", "quantize_one"):
        raise ValueError(f"mode must be 'float_one' or 'quantize_one', got {mode!r}")
    scheme = get_scheme(scheme)
    names = list(layers) if layers is not None else quantizable_layers(model)
    if not names:
        raise EdgeKDError("the model has no conv or linear layers to rank; nothing is quantized")
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules]
    if unknown:
        raise EdgeKDError(f"unknown layer(s) {unknown}; quantizable layers: {quantizable_layers(model)}")
    model.eval()
    fp32 = evaluate(model, x, y)
    int8 = evaluate(quantize_ptq(model, example_inputs, scheme, calibration_batches, method), x, y)
    rows = []
    for name in names:
        keep = [name] if mode == "float_one" else [n for n in quantizable_layers(model) if n != name]
        acc = evaluate(quantize_ptq(model, example_inputs, scheme, calibration_batches, method, keep_float=keep), x, y)
        delta = acc - int8 if mode == "float_one" else fp32 - acc
        params = sum(p.numel() for p in modules[name].parameters())
        rows.append(LayerSensitivity(name, type(modules[name]).__name__, params, acc, delta))
    rows.sort(key=lambda r: -r.delta)
    return {"fp32_accuracy": fp32, "int8_accuracy": int8, "mode": mode, "method": method, "scheme": scheme.name,
            "table": [r.to_dict() for r in rows]}


def model_bytes(model: nn.Module, keep_float: Iterable[str] = ()) -> int:
    """Estimated weight bytes: int8 weights (1 B) + fp32 per-channel scales and biases, float layers at 4 B."""
    keep = set(keep_float)
    total = 0
    for name, m in model.named_modules():
        if not isinstance(m, QUANTIZABLE) or not name:
            continue
        w = m.weight.numel()
        b = m.bias.numel() if m.bias is not None else m.weight.shape[0]  # BN folds into a bias
        total += 4 * (w + b) if name in keep else w + 4 * (b + m.weight.shape[0])
    return total


def mixed_precision_fallback(model: nn.Module, example_inputs, scheme: Scheme | str, calibration_batches: list,
                             x: torch.Tensor, y: torch.Tensor, k: int = 1, *, method: str = "minmax",
                             sensitivity: dict | None = None) -> dict:
    """Keep the `k` most int8-sensitive layers in float; report accuracy and estimated size vs full int8.

    The kept layers run in float between dequantize/quantize in both exported formats (LiteRT and ORT run such
    mixed graphs). Returns {"keep_float", "model" (the Q/DQ simulation), "accuracy", "int8_accuracy",
    "fp32_accuracy", "bytes", "int8_bytes", "fp32_bytes"}.
    """
    if not isinstance(k, int) or k < 0:
        raise ValueError(f"k must be an int >= 0, got {k!r}")
    sens = sensitivity or layer_sensitivity(model, example_inputs, scheme, calibration_batches, x, y, method=method)
    keep = [row["layer"] for row in sens["table"][:k]]
    q = quantize_ptq(model, example_inputs, scheme, calibration_batches, method, keep_float=keep)
    return {"keep_float": keep, "model": q, "accuracy": _evaluate(q, x, y), "int8_accuracy": sens["int8_accuracy"],
            "fp32_accuracy": sens["fp32_accuracy"], "bytes": model_bytes(model, keep),
            "int8_bytes": model_bytes(model), "fp32_bytes": model_bytes(model, quantizable_layers(model))}
