"""Data-parallel training under torchrun: the process group, one writer, and metrics reduced across ranks.

edgekd does not launch processes; `torchrun` does (single node: `torchrun --nproc-per-node N -m edgekd run ...`;
several nodes: `--nnodes`, `--node-rank`, `--rdzv-backend c10d --rdzv-endpoint host:port`). `init_from_env()`
joins the process group torchrun describes in the environment (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT):
NCCL for CUDA tensors and gloo for CPU tensors (`cpu:gloo,cuda:nccl` on GPU machines, plain gloo otherwise).

Every rank trains; rank 0 alone writes checkpoints, stage records, published files and TensorBoard events, and the
other ranks wait for it at a barrier where they read what it wrote (`rank_zero_first`).
"""
from __future__ import annotations

import contextlib
import datetime
import os
from typing import Iterator

import torch
import torch.distributed as dist

from edgekd.errors import EdgeKDError


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and not _LOCAL[0]


_LOCAL = [False]


def world_and_rank() -> tuple[int, int]:
    """(world size, rank) of the process group, (1, 0) outside one or inside `local_only()`."""
    if dist.is_available() and dist.is_initialized() and not _LOCAL[0]:
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def global_rank() -> int:
    """This process's rank in the group (0 outside one), also inside `local_only()`."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextlib.contextmanager
def local_only() -> Iterator[None]:
    """Work that rank 0 does alone (export, profiling, proxy training runs): training inside is not distributed."""
    previous = _LOCAL[0]
    _LOCAL[0] = True
    try:
        yield
    finally:
        _LOCAL[0] = previous


def is_main_process() -> bool:
    return world_and_rank()[1] == 0


def init_from_env(timeout_s: float | None = None) -> bool:
    """Join torchrun's process group if this process was launched by torchrun; True when it did (or already was).

    The backend follows the machine: `cpu:gloo,cuda:nccl` where CUDA is available (each process pinned to the GPU
    of its LOCAL_RANK), gloo otherwise. A no-op outside torchrun or when a group already exists (a caller that
    built its own group keeps it).

    Raises:
        EdgeKDError: torchrun's environment is incomplete, or the group cannot be formed.
    """
    if dist.is_available() and dist.is_initialized():
        return True
    if not launched_by_torchrun():
        return False
    if not dist.is_available():
        raise EdgeKDError("WORLD_SIZE > 1 but this torch build has no torch.distributed; run one process")
    missing = [k for k in ("MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK") if k not in os.environ]
    if missing:
        raise EdgeKDError(f"WORLD_SIZE > 1 but {', '.join(missing)} is not set: launch with torchrun "
                          f"(torchrun --nproc-per-node N -m edgekd run recipe.yaml)")
    # Ranks other than 0 wait at barriers while rank 0 alone writes (a teacher cache, a stage's files): allow long.
    timeout_s = timeout_s or float(os.environ.get("EDGEKD_DIST_TIMEOUT_S", 4 * 3600))
    backend = "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        backend = "cpu:gloo,cuda:nccl"
    try:
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    except (RuntimeError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeKDError(f"cannot join the torchrun process group ({backend}): {first}") from None
    return True


@contextlib.contextmanager
def session() -> Iterator[bool]:
    """Join torchrun's process group for the block (if launched by torchrun) and leave it after; yields whether
    this process is one of several. A group the caller created already is used and left as it was."""
    created = not (dist.is_available() and dist.is_initialized()) and init_from_env()
    try:
        yield is_distributed()
    finally:
        if created:
            shutdown()


def shutdown() -> None:
    """Leave the process group (after the last barrier) if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def rank_zero_first() -> Iterator[bool]:
    """Rank 0 runs the block first (e.g. builds a cache file), the others run it after; yields whether main.

    Used for work whose result rank 0 writes to disk and every rank then reads: the others find the file and load
    it instead of building it again. Outside a process group it just runs the block.
    """
    main = is_main_process()
    if not main:
        barrier()
    try:
        yield main
    finally:
        if main:
            barrier()


def all_reduce_sums(sums: dict[str, float], device: torch.device | None = None) -> dict[str, float]:
    """The element-wise sum over ranks of a dict of numbers with the same keys on every rank."""
    if not is_distributed() or not sums:
        return dict(sums)
    keys = sorted(sums)
    device = device or torch.device("cpu")
    t = torch.tensor([float(sums[k]) for k in keys], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return dict(zip(keys, t.tolist()))


def broadcast_object(obj):
    """Rank 0's `obj` on every rank (a decision every rank must take the same way)."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]
