"""What an exported file is (format, precision, runtime, batch, size), read from the file itself."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

from edgekd.errors import EdgeKDError
from edgekd.fileio import existing_model_file

FORMATS = {".onnx": ("onnx", "onnxruntime"), ".tflite": ("tflite", "litert")}


@dataclass
class ExportedFile:
    """One exported model file, as the export stage lists it."""

    name: str
    path: str
    format: str
    precision: str
    runtime: str
    bytes: int
    batch: int | None

    def to_dict(self) -> dict:
        return asdict(self)


def describe_file(path: str | os.PathLike) -> dict:
    """{name, path, format, precision, runtime, bytes, batch} of an .onnx or .tflite file (int8 = has Q/DQ)."""
    path = Path(path)
    if path.suffix.lower() not in FORMATS:
        raise EdgeKDError(f"cannot describe {path.name!r}: expected one of {', '.join(sorted(FORMATS))}")
    existing_model_file(path)
    fmt, runtime = FORMATS[path.suffix.lower()]
    precision, batch = (_onnx_facts if fmt == "onnx" else _tflite_facts)(path)
    return ExportedFile(path.name, str(path), fmt, precision, runtime, path.stat().st_size, batch).to_dict()


def _onnx_facts(path: Path) -> tuple[str, int | None]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    quantized = any(n.op_type in ("QuantizeLinear", "DequantizeLinear", "QLinearConv") for n in m.graph.node)
    dim = m.graph.input[0].type.tensor_type.shape.dim[0]
    return ("int8" if quantized else "fp32"), (dim.dim_value if dim.HasField("dim_value") else None)


def _tflite_facts(path: Path) -> tuple[str, int | None]:
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path))
    quantized = any(np.dtype(d["dtype"]) in (np.int8, np.uint8) and len(d["quantization_parameters"]["scales"])
                    for d in interp.get_tensor_details())
    shape = interp.get_input_details()[0]["shape"]
    return ("int8" if quantized else "fp32"), int(shape[0])
