"""What the training loop reads: a `BatchSource` of (images, labels, sample indices) batches, one epoch at a time.

The loop never indexes a tensor itself. A source decides how batches are made — slicing an in-memory tensor
(`TensorSource`, fastest for small arrays) or decoding files in worker processes (the streaming sources) — and
the loop asks for one epoch at a time:

    source.epoch(epoch, seed, batch_size, start=k, rank=r, world=w)

Contract every source keeps, so that runs are reproducible, resumable and shardable:

- **Deterministic order**: the batches of an epoch depend only on (seed, epoch) — never on an RNG state the loop
  carries — so a run resumed at batch `start` of an epoch sees exactly the batches an uninterrupted run saw.
- **Random augmentation** is seeded per (seed, epoch, batch) (or per sample), for the same reason.
- **Distributed**: every rank gets the same number of batches per epoch; rank r of w trains on its own disjoint
  share of each global batch (about batch_size / w samples), so gradients averaged over ranks are those of the
  global batch.
- `Batch.idx` are the samples' indices in the source (0..len-1): cached teacher outputs are looked up by them.
"""
from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Iterator

import torch

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


@dataclass
class Batch:
    """One training batch: normalized images (N,C,H,W float32), int64 labels, and the samples' source indices."""

    x: torch.Tensor
    y: torch.Tensor
    idx: torch.Tensor


def derived_seed(*parts: int) -> int:
    """A 63-bit seed derived from integers (seed, epoch, batch, ...): stable across processes and platforms."""
    digest = hashlib.sha256(",".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class BatchSource(ABC):
    """A training or evaluation split, read as batches (module docstring: the contract)."""

    @abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    @abstractmethod
    def epoch(self, epoch: int, seed: int, batch_size: int, *, start: int = 0, rank: int = 0, world: int = 1,
              shuffle: bool = True) -> Iterator[Batch]:
        """The batches of epoch `epoch` for `rank`, skipping the first `start` batches (resume mid-epoch)."""

    def steps_per_epoch(self, batch_size: int) -> int:
        """Optimizer steps per epoch (every rank takes the same number)."""
        return max(1, -(-len(self) // batch_size))

    def first_batch(self, batch_size: int) -> Batch:
        """The first un-shuffled batch (for warm-up passes that build lazy modules)."""
        return next(iter(self.epoch(0, 0, batch_size, shuffle=False)))


class TensorSource(BatchSource):
    """Images already in memory as one tensor: batches are slices by a permuted index (no copies, no workers).

    `augment(x, generator)` (e.g. `edgekd.data.loader.augment_batch`) runs on each training batch with a generator
    seeded per (seed, epoch, batch).
    """

    def __init__(self, x: torch.Tensor, y: torch.Tensor, augment: Augment | None = None):
        if len(x) != len(y):
            raise ValueError(f"{len(x)} images but {len(y)} labels")
        self.x, self.y, self.augment = x, y, augment

    def __len__(self) -> int:
        return len(self.x)

    def epoch(self, epoch: int, seed: int, batch_size: int, *, start: int = 0, rank: int = 0, world: int = 1,
              shuffle: bool = True) -> Iterator[Batch]:
        n = len(self.x)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))
        else:
            order = torch.arange(n)
        for b in range(start, self.steps_per_epoch(batch_size)):
            idx = order[b * batch_size:(b + 1) * batch_size][rank::world]
            x = self.x[idx]
            if self.augment is not None and shuffle:
                x = self.augment(x, torch.Generator().manual_seed(derived_seed(seed, epoch, b, rank)))
            yield Batch(x, self.y[idx], idx)
