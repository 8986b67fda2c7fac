"""Streaming `BatchSource`s: image files read and augmented by DataLoader worker processes, and tar shards.

`FileSource` (an image folder or a manifest) is map-style: the epoch's order is a permutation drawn from
(seed, epoch), exactly as `TensorSource` draws it, and each global batch is cut into rank shares the same way. The
main process hands whole batches (sample positions + seed + epoch) to persistent worker processes; a worker reads,
decodes, crops, flips and normalizes the batch and returns float32 N,C,H,W. Augmentation is drawn per (seed, epoch,
sample index), so the number of workers never changes a batch.

`ShardSource` (WebDataset-layout tars) is iterable: shards (or, when there are fewer shards than ranks x workers,
interleaved parts of shards) are shuffled per (seed, epoch), dealt to ranks and then to workers; each worker reads
its shards in order through a seeded shuffle buffer and serves the global batches b with b % workers == its id,
repeating its shards when they run out, so every rank takes the same number of batches per epoch. The batches
depend on (seed, epoch, world, workers). Resume at `start` is exact: a worker replays its stream up to batch
`start` without decoding (tar reads only) and the main process puts the workers' batches back in order.
"""
from __future__ import annotations

import random
from dataclasses import replace
from typing import Any, Callable, Iterator

import numpy as np
import torch

from edgekd.data.files import FileStore, ShardStore, iter_shard
from edgekd.data.source import Batch, BatchSource, derived_seed
from edgekd.data.transforms import ImageTransform
from edgekd.errors import EdgeKDError

_BUFFER_SALT = 7919  # separates the shuffle buffer's seed from the augmentation seeds


def _identity(x: Any) -> Any:
    return x


def _worker_init(_worker_id: int) -> None:
    """Fixed glibc malloc thresholds in each worker, so freed image buffers go back to the system.

    glibc raises its mmap threshold after large blocks are freed; decode/resize buffers then come from the heap,
    which fragments and never shrinks: measured here, each worker grew by ~2.5 MB per batch (32 images at 112 px)
    without bound. Setting the thresholds (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD = 64 KiB) keeps workers flat.
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 * 1024)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to tune
        pass


def _error(e: EdgeKDError) -> tuple[str, str]:
    return ("__edgekd_error__", str(e).splitlines()[0])


def _to_batch(out: Any) -> Batch:
    """A worker's (x, y, idx) as a Batch; a worker's error marker raised here as one-line EdgeKDError."""
    if isinstance(out, (tuple, list)) and len(out) == 2 and out[0] == "__edgekd_error__":
        raise EdgeKDError(out[1])
    x, y, idx = out[-3:]
    return Batch(x, y, idx)


def rank_batch_size(b: int, n: int, batch_size: int, rank: int, world: int) -> int:
    """Samples rank `rank` of `world` takes from global batch `b` (its share of order[b*bs:(b+1)*bs][rank::world])."""
    return len(range(rank, max(0, min(batch_size, n - b * batch_size)), world))


class _FileReader(torch.utils.data.Dataset):
    """Worker side of FileSource: a key (positions, seed, epoch, policy) -> one normalized batch."""

    def __init__(self, store: FileStore, transform: ImageTransform):
        self.store, self.transform = store, transform

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: tuple[np.ndarray, int, int, bool]) -> Any:
        positions, seed, epoch, augment = key
        t = self.transform if augment else replace(self.transform, policy="none")
        try:
            images = [t.apply(self.store.read(int(i)), self.store.name(int(i)), seed, epoch, int(i))
                      for i in positions]
        except EdgeKDError as e:
            return _error(e)
        return t.normalize(images), torch.from_numpy(self.store.labels[positions]), torch.from_numpy(positions)


class _KeySampler(torch.utils.data.Sampler):
    """The keys of one epoch, replaced before each pass (the loader and its workers persist across epochs)."""

    def __init__(self) -> None:
        self.keys: list = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


def _pin(pin_memory: bool | None) -> bool:
    return torch.cuda.is_available() if pin_memory is None else bool(pin_memory)


class FileSource(BatchSource):
    """Image files (folder or manifest) decoded and augmented in `workers` persistent worker processes.

    workers=0 reads in the calling process (tests, tiny sets). pin_memory None = when CUDA is available.
    prefetch: batches each worker keeps ready.
    """

    def __init__(self, store: FileStore, transform: ImageTransform, *, workers: int = 2, prefetch: int = 2,
                 pin_memory: bool | None = None):
        self.store, self.transform = store, transform
        self.reader = _FileReader(store, transform)
        self.workers, self.prefetch, self.pin_memory = int(workers), int(prefetch), _pin(pin_memory)
        self._loader: torch.utils.data.DataLoader | None = None
        self.y = torch.from_numpy(store.labels)

    def __len__(self) -> int:
        return len(self.store)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_loader"] = None  # worker handles never travel
        return state

    def loader(self) -> torch.utils.data.DataLoader:
        if self._loader is None:
            self._loader = torch.utils.data.DataLoader(
                self.reader, batch_size=None, sampler=_KeySampler(), num_workers=self.workers,
                collate_fn=_identity, pin_memory=self.pin_memory, prefetch_factor=self.prefetch,
                persistent_workers=True, worker_init_fn=_worker_init)
        return self._loader

    def epoch(self, epoch: int, seed: int, batch_size: int, *, start: int = 0, rank: int = 0, world: int = 1,
              shuffle: bool = True) -> Iterator[Batch]:
        n = len(self)
        if shuffle:
            order = torch.randperm(n, generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))
        else:
            order = torch.arange(n)
        augment = shuffle and self.transform.random
        keys = [(order[b * batch_size:(b + 1) * batch_size][rank::world].numpy(), seed, epoch, augment)
                for b in range(start, self.steps_per_epoch(batch_size))]
        yield from self.run(keys)

    def run(self, keys: list) -> Iterator[Batch]:
        if self.workers == 0 or len(keys) <= 1:
            for key in keys:
                yield _to_batch(self.reader[key])
            return
        loader = self.loader()
        loader.sampler.keys = keys
        for out in loader:
            yield _to_batch(out)

    def first_batch(self, batch_size: int) -> Batch:
        """The first un-shuffled batch, read in this process (no worker start-up for one batch)."""
        return _to_batch(self.reader[(np.arange(min(batch_size, len(self)), dtype=np.int64), 0, 0, False)])

    def images(self, positions: np.ndarray) -> torch.Tensor:
        """The un-augmented (eval-transform) images at `positions`, read in this process."""
        positions = np.asarray(positions, np.int64)
        if len(positions) == 0:
            return torch.zeros(0, self.transform.channels, self.transform.resolution, self.transform.resolution)
        return _to_batch(self.reader[(positions, 0, 0, False)]).x


class _ShardPlan(torch.utils.data.IterableDataset):
    """One rank's epoch over its shard units; each worker serves its own global batch numbers."""

    def __init__(self, source: "ShardSource", units: list[tuple[int, int, int]], seed: int, epoch: int,
                 batch_size: int, start: int, rank: int, world: int, shuffle: bool):
        self.source, self.units = source, units
        self.seed, self.epoch, self.batch_size, self.start = seed, epoch, batch_size, start
        self.rank, self.world, self.shuffle = rank, world, shuffle

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        try:
            yield from self.serve(wid, nw)
        except EdgeKDError as e:
            yield _error(e)

    def samples(self, units: list[tuple[int, int, int]], images: bool = True) -> Iterator[tuple[int, bytes, str]]:
        """(source position, image bytes, name) of each selected sample of `units`, in file order."""
        st, pos = self.source.store, self.source.pos
        for s, part, parts in units:
            base = int(st.offsets[s])
            for p, (key, data, ext, _label) in enumerate(iter_shard(st.shards[s], images)):
                if p % parts != part:
                    continue
                q = int(pos[base + p])
                if q >= 0:
                    yield q, data, f"{st.shards[s]}:{key}.{ext}"

    def serve(self, wid: int, nw: int) -> Iterator[Any]:
        mine = self.units[wid::nw]
        if not mine:
            return
        src, t = self.source, self.source.transform
        if not self.shuffle:  # evaluation: every selected sample of these units exactly once
            share = len(range(self.rank, self.batch_size, self.world))
            chunk: list = []
            for item in self.samples(mine):
                chunk.append(item)
                if len(chunk) == share:
                    yield (-1, *self.decode(chunk, replace(t, policy="none"), False))
                    chunk = []
            if chunk:
                yield (-1, *self.decode(chunk, replace(t, policy="none"), False))
            return
        if sum(src.unit_count(u) for u in mine) == 0:
            raise EdgeKDError(f"shards {src.store.where}: a worker's share of the shards holds no sample of this "
                              f"split; use fewer workers or ranks, or more shards")
        stream = self.buffered(mine, wid)
        n = len(src)
        for b in range(wid, src.steps_per_epoch(self.batch_size), nw):
            size = rank_batch_size(b, n, self.batch_size, self.rank, self.world)
            chunk = [next(stream) for _ in range(size)]
            if b >= self.start:
                yield (b, *self.decode(chunk, t, t.random))

    def buffered(self, units: list[tuple[int, int, int]], wid: int) -> Iterator[tuple[int, bytes, str]]:
        """The worker's samples through a seeded shuffle buffer, pass after pass (each pass: every sample once)."""
        rng = random.Random(derived_seed(self.seed, self.epoch, self.rank, wid, _BUFFER_SALT))
        size = max(1, self.source.shuffle_buffer)
        while True:  # one pass over the units per loop; the buffer drains at the end of a pass
            buf: list = []
            for item in self.samples(units):
                if len(buf) < size:
                    buf.append(item)
                    continue
                j = rng.randrange(size)
                out, buf[j] = buf[j], item
                yield out
            rng.shuffle(buf)
            yield from buf

    def decode(self, chunk: list, t: ImageTransform, augment: bool):
        images = [t.apply(data, name, self.seed, self.epoch, q) for q, data, name in chunk]
        idx = torch.tensor([q for q, _, _ in chunk], dtype=torch.int64)
        return t.normalize(images), self.source.y[idx], idx


class ShardSource(BatchSource):
    """WebDataset-layout tar shards streamed by `workers` worker processes (module docstring: order and resume).

    select: the store's sample indices in this split (sorted; None = all); a sample's source index is its
    position in `select`. shuffle_buffer: samples each worker holds to mix the order within and across shards.
    """

    def __init__(self, store: ShardStore, transform: ImageTransform, *, select: np.ndarray | None = None,
                 workers: int = 2, prefetch: int = 2, pin_memory: bool | None = None, shuffle_buffer: int = 2000):
        self.store, self.transform = store, transform
        select = np.arange(len(store)) if select is None else np.asarray(select, np.int64)
        self.pos = np.full(len(store), -1, np.int64)
        self.pos[select] = np.arange(len(select))
        self.select = select
        self.y = torch.from_numpy(store.labels[select])
        self.workers, self.prefetch, self.pin_memory = int(workers), int(prefetch), _pin(pin_memory)
        self.shuffle_buffer = int(shuffle_buffer)

    def __len__(self) -> int:
        return len(self.select)

    def units(self, world: int, workers: int) -> list[tuple[int, int, int]]:
        """(shard, part, parts): whole shards, or interleaved parts when shards are fewer than ranks x workers."""
        n = len(self.store.shards)
        parts = max(1, -(-world * max(1, workers) // n))
        return [(s, k, parts) for s in range(n) for k in range(parts)]

    def unit_count(self, unit: tuple[int, int, int]) -> int:
        s, part, parts = unit
        lo = int(self.store.offsets[s])
        return int((self.pos[lo + part:lo + int(self.store.counts[s]):parts] >= 0).sum())

    def epoch(self, epoch: int, seed: int, batch_size: int, *, start: int = 0, rank: int = 0, world: int = 1,
              shuffle: bool = True) -> Iterator[Batch]:
        units = self.units(world, self.workers)
        if shuffle:
            perm = torch.randperm(len(units), generator=torch.Generator().manual_seed(derived_seed(seed, epoch)))
            units = [units[i] for i in perm.tolist()]
        plan = _ShardPlan(self, units[rank::world], seed, epoch, batch_size, start, rank, world, shuffle)
        if self.workers == 0:
            outputs: Iterator[Any] = iter(plan)
        else:
            outputs = iter(torch.utils.data.DataLoader(
                plan, batch_size=None, num_workers=self.workers, collate_fn=_identity, pin_memory=self.pin_memory,
                prefetch_factor=self.prefetch, worker_init_fn=_worker_init))
        if not shuffle:
            for out in outputs:
                yield _to_batch(out)
            return
        pending: dict[int, Batch] = {}
        expected = start
        for out in outputs:  # workers answer round-robin from worker 0; put batches back in global order
            batch = _to_batch(out)
            pending[int(out[0])] = batch
            while expected in pending:
                yield pending.pop(expected)
                expected += 1
        if pending:
            raise RuntimeError(f"shard batches {sorted(pending)} arrived without batch {expected}")

    def first_batch(self, batch_size: int) -> Batch:
        plan = _ShardPlan(self, self.units(1, 1), 0, 0, batch_size, 0, 0, 1, False)
        return _to_batch(next(iter(plan)))

    def images(self, positions: np.ndarray) -> torch.Tensor:
        """The un-augmented images at source `positions` (reads only the shards that hold them)."""
        positions = np.asarray(positions, np.int64)
        t = replace(self.transform, policy="none")
        if len(positions) == 0:
            return torch.zeros(0, t.channels, t.resolution, t.resolution)
        wanted = set(positions.tolist())
        shards = sorted({int(np.searchsorted(self.store.offsets, g, side="right") - 1)
                         for g in self.select[positions]})
        plan = _ShardPlan(self, [(s, 0, 1) for s in shards], 0, 0, 1, 0, 0, 1, False)
        found: dict[int, np.ndarray] = {}
        for q, data, name in plan.samples(plan.units):
            if q in wanted:
                found[q] = t.apply(data, name, 0, 0, q)
                if len(found) == len(wanted):
                    break
        return t.normalize([found[int(q)] for q in positions])


def make_view(read: Callable[[np.ndarray], torch.Tensor], n: int, shape: tuple[int, int, int]) -> "ImageView":
    return ImageView(read, n, shape)


class ImageView:
    """An array-like over a streamed split: `view[i]`, `view[a:b]`, `view[index_tensor]` decode just those images.

    Lets code written for in-memory tensors (calibration picks, a few example inputs, a validation slice) read a
    bounded part of a streamed split without holding the whole split in memory.
    """

    dtype = torch.float32

    def __init__(self, read: Callable[[np.ndarray], torch.Tensor], n: int, shape: tuple[int, int, int]):
        self._read, self._n, self._shape = read, n, tuple(shape)

    def __len__(self) -> int:
        return self._n

    @property
    def shape(self) -> torch.Size:
        return torch.Size((self._n, *self._shape))

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, (int, np.integer)):
            i = int(key) + (self._n if key < 0 else 0)
            if not 0 <= i < self._n:
                raise IndexError(f"index {key} out of range for {self._n} images")
            return self._read(np.asarray([i]))[0]
        if isinstance(key, slice):
            return self._read(np.arange(self._n)[key])
        idx = np.asarray(key.cpu() if isinstance(key, torch.Tensor) else key)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return self._read(idx.astype(np.int64))

    def __repr__(self) -> str:
        return f"ImageView({self._n} images of {self._shape}, decoded on access)"


__all__ = ["FileSource", "ImageView", "ShardSource", "rank_batch_size"]
