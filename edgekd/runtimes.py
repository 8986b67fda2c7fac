"""Run an exported model file in its own runtime: one `Session` idiom for onnxruntime, LiteRT and torch.

A session takes and returns float32 numpy arrays; quantized inputs/outputs (int8/uint8 TFLite tensors) are
quantized and dequantized with the file's own scale and zero point, so callers compare like with like.
Heavy runtime imports live inside the functions that need them.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.fileio import existing_model_file
from edgekd.registry import Registry

RUNTIMES: Registry[Callable[..., "Session"]] = Registry("runtime")

RUNTIME_BY_SUFFIX = {".onnx": "onnxruntime", ".tflite": "litert", ".pt2": "torch", ".pt": "torch"}


@dataclass
class Session:
    """A loaded model: `run(x)` maps a float32 batch to float32 outputs (first output only)."""

    runtime: str
    path: Path
    input_shape: tuple[int, ...]
    input_dtype: str
    threads: int
    init_ms: float
    version: str
    _run: Callable[[np.ndarray], np.ndarray] = field(repr=False)
    fixed_batch: int | None = None

    def run(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        if self.fixed_batch is None or x.shape[0] == self.fixed_batch:
            return self._run(x)
        # Files exported with a fixed batch size are fed one fixed-size chunk at a time.
        b = self.fixed_batch
        if x.shape[0] % b:
            raise EdgeKDError(f"{self.path.name} takes batches of {b}; got {x.shape[0]} rows (use a multiple of {b})")
        return np.concatenate([self._run(x[i:i + b]) for i in range(0, x.shape[0], b)], axis=0)


def runtime_for(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in RUNTIME_BY_SUFFIX:
        raise EdgeKDError(f"cannot tell the runtime of {Path(path).name!r}: expected one of "
                          f"{', '.join(sorted(RUNTIME_BY_SUFFIX))}")
    return RUNTIME_BY_SUFFIX[suffix]


def open_session(path: str | Path, runtime: str | None = None, threads: int = 1) -> Session:
    """Load `path` in `runtime` (guessed from the suffix when None) with `threads` CPU threads."""
    path = existing_model_file(path)
    runtime = runtime or runtime_for(path)
    return RUNTIMES.get(runtime)(path, threads)


@RUNTIMES.register("onnxruntime")
def _onnxruntime(path: Path, threads: int) -> Session:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise EdgeKDError(f"onnxruntime cannot load {path.name}: {str(e).splitlines()[0]}") from e
    init_ms = (time.perf_counter() - t0) * 1e3
    inp = sess.get_inputs()[0]
    out_name = sess.get_outputs()[0].name
    shape = tuple(d if isinstance(d, int) else -1 for d in inp.shape)

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run([out_name], {inp.name: x})[0].astype(np.float32)

    fixed = shape[0] if shape and shape[0] > 0 else None
    return Session("onnxruntime", path, shape, inp.type, threads, init_ms, ort.__version__, run, fixed)


@RUNTIMES.register("litert")
def _litert(path: Path, threads: int) -> Session:
    from ai_edge_litert import interpreter as litert

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

    version = getattr(litert, "__version__", None) or _pkg_version("ai-edge-litert")
    shape = tuple(int(d) for d in inp["shape"])
    return Session("litert", path, shape, in_dtype.name, threads, init_ms, version, run, shape[0])


@RUNTIMES.register("torch")
def _torch(path: Path, threads: int) -> Session:
    import torch

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    try:
        if path.suffix == ".pt2":
            module = torch.export.load(str(path)).module()
        else:
            module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as e:
        raise EdgeKDError(f"torch cannot load {path.name} (expected a torch.export .pt2 or TorchScript file): "
                          f"{str(e).splitlines()[0]}") from e
    init_ms = (time.perf_counter() - t0) * 1e3

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        return module(torch.from_numpy(x)).float().numpy()

    return Session("torch", path, (), "float32", threads, init_ms, torch.__version__, run, None)


def _pkg_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"
