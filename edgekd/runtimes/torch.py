"""The torch runtime: torch.export programs (.pt2, edgekd's quantized models) and TorchScript files (.pt)."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.formats import Runtime, register_runtime
from edgekd.runtimes.session import Session


def open_torch(path: Path, threads: int) -> Session:
    """Load a .pt2 (torch.export) or TorchScript file; the input shape is not stored, so it is not checked."""
    import torch

    from edgekd.quant.capture import load_program

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    if path.suffix.lower() == ".pt2":
        module = load_program(path)
    else:
        try:
            module = torch.jit.load(str(path), map_location="cpu").eval()
        except Exception as e:
            raise EdgeKDError(f"torch cannot load {path.name} (expected a torch.export .pt2 or TorchScript file): "
                              f"{str(e).splitlines()[0]}") from e
    init_ms = (time.perf_counter() - t0) * 1e3

    @torch.no_grad()
    def run(x: np.ndarray) -> np.ndarray:
        try:
            return module(torch.from_numpy(x)).float().numpy()
        except (RuntimeError, ValueError, IndexError) as e:  # shape errors surface from inside the graph
            raise EdgeKDError(f"{path.name} cannot run on data of shape {tuple(x.shape)}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__}") from e

    return Session("torch", path, (), "float32", threads, init_ms, torch.__version__, run, None)


TORCH = register_runtime(Runtime("torch", (".pt2", ".pt"), open_torch, module="torch"))
