"""The .pt2 format: a torch.export program (edgekd's quantized Q/DQ simulation, or a float model), run by torch.

The quantize stage writes the int8 simulation this way (the reference that int8 .onnx/.tflite files are verified
against); it is also an export format of its own (`export.formats: [pt2]`) for torch-based deployments.
"""
from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from edgekd.export.common import prepare_for_export
from edgekd.formats import Format, register_format
from edgekd.quant.capture import load_program, save_program


def export_pt2(model: nn.Module, example_inputs, path: str | os.PathLike) -> Path:
    """Write `model` (float, or a converted PT2E Q/DQ model) to `path` as a torch.export .pt2, atomically.

    The batch dimension is dynamic when the model allows it; the same model gives the same bytes.
    """
    model, inputs = prepare_for_export(model, example_inputs)
    return save_program(model, inputs, path)


def describe_pt2(path: Path) -> dict:
    """Precision ("int8" when the program quantizes/dequantizes, else "fp32") and batch (None when dynamic)."""
    from edgekd.quant.qat import is_quantized

    gm = load_program(path)
    batch = None
    for node in gm.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        if val is not None and hasattr(val, "shape") and len(val.shape):
            batch = val.shape[0] if isinstance(val.shape[0], int) else None
            break
    return {"precision": "int8" if is_quantized(gm) else "fp32", "batch": batch}


PT2 = register_format(Format("pt2", ".pt2", ("torch",), export=export_pt2, describe=describe_pt2))
