"""Parity and accuracy of exported files run in their own runtime, against the torch model they came from."""
from __future__ import annotations

import os
import time
from typing import Callable

import numpy as np
import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.formats import open_session

# fp32 parity: max|file - torch| <= max(FP32_MAX_ABS_DIFF, FP32_RTOL * max|torch|). The absolute floor is the
# published fp32 export tolerance (litert-torch docs 1e-5 .. onnx2tf 1e-4); the relative part lets it grow with the
# output scale (deep nets' logits reach 1e2..1e3, where float32 rounding alone exceeds 1e-4).
FP32_MAX_ABS_DIFF = 1e-4
FP32_RTOL = 1e-4


def allowed_diff(reference: np.ndarray, atol: float = FP32_MAX_ABS_DIFF, rtol: float = FP32_RTOL) -> float:
    """The largest max|diff| an fp32 file may show against `reference`: max(atol, rtol * max|reference|)."""
    scale = float(np.abs(reference).max()) if reference.size else 0.0
    return max(atol, rtol * scale)


def _as_numpy(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().float().numpy()
    return np.asarray(x, dtype=np.float32)


def reference_logits(reference: nn.Module | Callable, x, batch_size: int = 256) -> np.ndarray:
    """Run a torch module (or any float32 array -> array callable) over `x` in batches."""
    x = _as_numpy(x)
    outs = []
    for i in range(0, len(x), batch_size):
        chunk = x[i:i + batch_size]
        try:
            if isinstance(reference, nn.Module):
                with torch.no_grad():
                    outs.append(_as_numpy(reference(torch.from_numpy(chunk))))
            else:
                outs.append(_as_numpy(reference(chunk)))
        except (RuntimeError, ValueError, IndexError) as e:  # shape mismatches surface from inside the model
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise EdgeKDError(f"the reference model cannot run on data of shape {tuple(x.shape)} ({first[:200]}); "
                              "pass data of the size the model was trained on") from e
    return np.concatenate(outs, axis=0)


def file_logits(path: str | os.PathLike, x, batch_size: int = 256, runtime: str | None = None,
                threads: int = 1, session=None) -> tuple[np.ndarray, dict]:
    """Outputs of the file at `path` for `x`, and timing info (files with a fixed batch are fed row by row).

    `session`: an already opened Session of that file (else one is opened).
    """
    x = _as_numpy(x)
    session = session or open_session(path, runtime=runtime, threads=threads)
    t0 = time.perf_counter()
    outs = [session.run(x[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    seconds = time.perf_counter() - t0
    info = {"runtime": session.runtime, "runtime_version": session.version, "file_batch": session.fixed_batch,
            "seconds": round(seconds, 3), "ms_per_image": round(1e3 * seconds / max(len(x), 1), 4),
            "init_ms": round(session.init_ms, 2)}
    return np.concatenate(outs, axis=0), info


def compare_logits(reference: np.ndarray, outputs: np.ndarray) -> dict:
    """max/mean absolute logit difference and top-1 agreement of two output arrays."""
    if reference.shape != outputs.shape:
        raise EdgeKDError(f"reference outputs {reference.shape} and file outputs {outputs.shape} differ in shape; "
                          "check the model and the file take the same input and produce the same classes")
    diff = np.abs(reference.astype(np.float64) - outputs.astype(np.float64))
    return {"max_abs_diff": float(diff.max()) if diff.size else 0.0,
            "mean_abs_diff": float(diff.mean()) if diff.size else 0.0,
            "top1_agreement": float((reference.argmax(-1) == outputs.argmax(-1)).mean()), "n": int(len(outputs))}


def parity(reference_fn: nn.Module | Callable, path: str | os.PathLike, inputs, runtime: str | None = None,
           batch_size: int = 256) -> dict:
    """How closely the file at `path` reproduces `reference_fn` on `inputs`: max/mean abs diff, top-1 agreement."""
    ref = reference_logits(reference_fn, inputs, batch_size)
    out, _ = file_logits(path, inputs, batch_size, runtime)
    return compare_logits(ref, out)


def accuracy(logits: np.ndarray, y) -> float:
    y = _as_numpy(y).astype(np.int64) if not isinstance(y, np.ndarray) else y.astype(np.int64)
    return float((logits.argmax(-1) == y).mean())


def file_accuracy(path: str | os.PathLike, x, y, batch_size: int = 256, runtime: str | None = None) -> dict:
    """Top-1 accuracy of the file at `path` on (x, y) in its own runtime, with the time it took."""
    if len(x) != len(y):
        raise EdgeKDError(f"x has {len(x)} rows but y has {len(y)}; pass matching images and labels")
    out, info = file_logits(path, x, batch_size, runtime)
    return {"accuracy": accuracy(out, np.asarray(y)), "n": int(len(y)), **info}
