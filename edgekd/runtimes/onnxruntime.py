"""The onnxruntime runtime (CPU execution provider) for .onnx files."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.formats import Runtime, register_runtime
from edgekd.runtimes.session import Session


def open_onnxruntime(path: Path, threads: int) -> Session:
    """Load `path` in an onnxruntime CPU session with `threads` intra-op threads."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph/InvalidProtobuf types
        raise EdgeKDError(f"onnxruntime cannot load {path.name}: {str(e).splitlines()[0]}") from e
    init_ms = (time.perf_counter() - t0) * 1e3
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name
    shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run([out_name], {inp.name: x})[0].astype(np.float32)

    fixed = shape[0] if shape and shape[0] > 0 else None
    return Session("onnxruntime", path, shape, inp.type, threads, init_ms, ort.__version__, run, fixed)


ONNXRUNTIME = register_runtime(Runtime("onnxruntime", (".onnx",), open_onnxruntime, module="onnxruntime"))
