"""A loaded model file, whatever runs it: `Session.run` maps a float32 batch to float32 outputs.

Runtimes (edgekd/runtimes/<name>.py) build sessions; quantized inputs/outputs (int8/uint8 TFLite tensors) are
quantized and dequantized with the file's own scale and zero point inside the runtime, so callers compare like
with like.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekd.errors import EdgeKDError


@dataclass
class Session:
    """A loaded model: `run(x)` maps a float32 batch to float32 outputs (first output only).

    `input_shape` is the file's input shape (-1 for a dynamic dimension, () when the file does not store it);
    `run` checks the data against it so a wrong-size batch is one clear line, not a runtime traceback.
    """

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
        self.check_input(x.shape)
        if self.fixed_batch is None or x.shape[0] == self.fixed_batch:
            return self._run(x)
        # Files exported with a fixed batch size are fed one fixed-size chunk at a time.
        b = self.fixed_batch
        if x.shape[0] % b:
            raise EdgeKDError(f"{self.path.name} takes batches of {b}; got {x.shape[0]} rows (use a multiple of {b})")
        return np.concatenate([self._run(x[i:i + b]) for i in range(0, x.shape[0], b)], axis=0)

    def check_input(self, shape: tuple[int, ...]) -> None:
        """EdgeKDError naming the file's input shape when data of `shape` cannot go in (batch size aside)."""
        want = tuple(self.input_shape)
        if not want:
            return
        fits = len(shape) == len(want) and all(w <= 0 or w == s for w, s in zip(want[1:], shape[1:]))
        if not fits:
            shown = "(N, " + ", ".join("?" if w <= 0 else str(w) for w in want[1:]) + ")"
            raise EdgeKDError(f"{self.path.name} takes input of shape {shown}; got data of shape {tuple(shape)}: "
                              "pass data of the size the model was exported for")


def package_version(name: str) -> str:
    """The installed version of distribution `name`, or "unknown"."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"
