"""The LiteRT runtime (ai-edge-litert interpreter, XNNPACK on CPU) for .tflite files."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.formats import Runtime, register_runtime
from edgekd.runtimes.session import Session, package_version


def open_litert(path: Path, threads: int) -> Session:
    """Load `path` in a LiteRT interpreter; int8/uint8 inputs and outputs are (de)quantized with the file's scales."""
    from edgekd.extras import require

    litert = require("ai_edge_litert.interpreter", "litert")
    t0 = time.perf_counter()
    try:
        interp = litert.Interpreter(model_path=str(path), num_threads=threads)
        interp.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        raise EdgeKDError(f"LiteRT cannot load {path.name}: {str(e).splitlines()[0]}") from e
    init_ms = (time.perf_counter() - t0) * 1e3
    inp = interp.get_input_details()[0]
    out = interp.get_output_details()[0]
    in_dtype = np.dtype(inp["dtype"])
    in_scale, in_zp = inp["quantization"]
    out_scale, out_zp = out["quantization"]
    out_dtype = np.dtype(out["dtype"])

    def run(x: np.ndarray) -> np.ndarray:
        if in_dtype.kind in "iu":
            info = np.iinfo(in_dtype)
            x = np.clip(np.round(x / in_scale) + in_zp, info.min, info.max).astype(in_dtype)
        interp.set_tensor(inp["index"], x)
        interp.invoke()
        y = interp.get_tensor(out["index"])
        if out_dtype.kind in "iu":
            y = (y.astype(np.float32) - out_zp) * out_scale
        return y.astype(np.float32)

    version = getattr(litert, "__version__", None) or package_version("ai-edge-litert")
    shape = tuple(int(d) for d in inp["shape"])
    return Session("litert", path, shape, in_dtype.name, threads, init_ms, version, run, shape[0])


# module: the interpreter itself, so that importing it loads the runtime library (the profiler imports it before
# taking its memory baseline; the bare package would leave ~20 MiB of library to be counted as the model's)
LITERT = register_runtime(Runtime("litert", (".tflite",), open_litert, module="ai_edge_litert.interpreter",
                                  extra="litert"))
