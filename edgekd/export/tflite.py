"""TFLite (LiteRT) export pass through litert-torch; a converted PT2E model becomes a full-int8 TFLite file.

The int8 file keeps the Q/DQ scales of the simulation (QAT or PTQ): litert-torch lowers each quantize/dequantize
pair to TFLite tensor quantization parameters instead of re-calibrating. Files have a fixed batch of 1 (the edge
case; litert-torch exports static shapes): edgekd.runtimes feeds larger batches row by row.
"""
from __future__ import annotations

import contextlib
import io
import logging
import os
from pathlib import Path

from torch import nn

from edgekd.export.common import first_rows, precision_of, prepare_for_export
from edgekd.fileio import atomic_path
from edgekd.formats import Format, register_format
from edgekd.logs import import_quietly
from edgekd.quant.capture import conversion_error
from edgekd.quant.schemes import LITERT_INT8


def _static_quant_config(quantizer=None):
    """litert-torch only reads the quantizer's mode (static vs dynamic) once the Q/DQ graph exists."""
    from edgekd.quant.quantizer import build_quantizer

    QuantConfig = import_quietly("litert_torch.quantize.quant_config").QuantConfig

    return QuantConfig(pt2e_quantizer=quantizer or build_quantizer(LITERT_INT8, is_qat=False))


def export_tflite(model: nn.Module, example_inputs, path: str | os.PathLike, *, quantizer=None,
                  batch_size: int = 1, quiet: bool = True) -> Path:
    """Write `model` (float, or a converted PT2E Q/DQ model) to `path` as .tflite, atomically, with a fixed batch.

    int8 models get int8 input and output tensors (edgekd.runtimes quantizes/dequantizes them). `quantizer` is
    the PT2E quantizer used to prepare the model, when at hand; it is not needed (any static one works).
    Raises ConversionError naming the layer and op that litert-torch cannot lower. Returns `path`.
    """
    litert_torch = import_quietly("litert_torch")  # loads TensorFlow's native libraries: no start-up lines

    model, inputs = prepare_for_export(model, example_inputs)
    if inputs[0].shape[0] < batch_size:
        inputs = tuple(t.repeat(batch_size, *([1] * (t.dim() - 1))) for t in inputs)
    inputs = first_rows(inputs, batch_size)
    precision = precision_of(model)
    path = Path(path)
    kwargs = {"quant_config": _static_quant_config(quantizer)} if precision == "int8" else {}
    out = io.StringIO()
    try:
        with _quiet(quiet, out):
            edge_model = litert_torch.convert(model, inputs, **kwargs)
    except Exception as e:
        raise conversion_error(e, model, "TFLite export (litert-torch)", inputs,
                               way_out="keep that layer in float (fp32 file / keep_float), rewrite it with "
                                       "TFLite builtin ops, or export to ONNX instead") from e
    with atomic_path(path) as tmp:
        with _quiet(quiet, out):
            edge_model.export(str(tmp))
    return path


@contextlib.contextmanager
def _quiet(quiet: bool, sink: io.StringIO):
    """litert-torch prints a progress tree; keep it out of the CLI unless asked for."""
    if not quiet:
        yield
        return
    level = logging.root.level
    logging.root.setLevel(logging.WARNING)
    try:
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield
    finally:
        logging.root.setLevel(level)


def tflite_tensor_quantization(path: str | os.PathLike) -> list[dict]:
    """Name, dtype, scales and zero points of every quantized tensor in a .tflite (for scale checks)."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    rows = []
    for d in interp.get_tensor_details():
        q = d["quantization_parameters"]
        if len(q["scales"]):
            rows.append({"name": d["name"], "dtype": d["dtype"].__name__, "shape": tuple(d["shape"]),
                         "scales": q["scales"].copy(), "zero_points": q["zero_points"].copy(),
                         "axis": int(q["quantized_dimension"])})
    return rows


def describe_tflite(path: Path) -> dict:
    """Precision ("int8" with any quantized int8/uint8 tensor, "fp16" with half tensors, else "fp32"), batch, shape."""
    import numpy as np

    from edgekd.extras import require

    litert = require("ai_edge_litert.interpreter", "litert")
    interp = litert.Interpreter(model_path=str(path))
    kinds = set()
    for d in interp.get_tensor_details():
        dtype = np.dtype(d["dtype"])
        if dtype in (np.int8, np.uint8) and len(d["quantization_parameters"]["scales"]):
            kinds.add("int8")
        elif dtype == np.float16:
            kinds.add("fp16")
    shape = [int(s) for s in interp.get_input_details()[0]["shape"]]
    precision = "int8" if "int8" in kinds else "fp16" if "fp16" in kinds else "fp32"
    return {"precision": precision, "batch": shape[0], "input_shape": shape}


def _write_tflite_metadata(src: Path, dst: Path, info, labels, norm) -> Path:
    from edgekd.bundle.metadata import write_tflite_metadata

    return write_tflite_metadata(src, dst, info, labels, norm)


def _read_tflite_metadata(model: Path | bytes) -> dict:
    from edgekd.bundle.metadata import read_tflite_metadata

    return read_tflite_metadata(model)


TFLITE = register_format(Format("tflite", ".tflite", ("litert",), export=export_tflite, describe=describe_tflite,
                                write_metadata=_write_tflite_metadata, extra="litert",
                                read_metadata=_read_tflite_metadata))
