"""Teacher-logit cache: run the teacher once over a fixed training tensor and reuse its logits every epoch.

The cache file is keyed by sha256 over (teacher fingerprint, data fingerprint, preprocessing string, top-k,
storage dtype, format version). The data fingerprint is the sha256 of the tensor's dtype, shape and raw bytes
(exact, ~0.1-0.2 s per 100 MB here). Any change to teacher weights, data, preprocessing or top-k gives another key,
so another file: the old one is kept (a train and a test cache may share a directory) and can be deleted by hand.
Valid only when the student sees exactly the cached inputs: see `check_cache_allowed`.

For data streamed from disk (`load_or_build_source`) the cache is built in one pass over the un-augmented
`BatchSource` and stored as .npy files that are memory-mapped when read: `teacher-logits-<key>.npy` (float16 by
default, N x classes, or N x k values with top-k) and `teacher-topk-<key>.npy` (int32 indices), plus a .json
written last (a cache without it is incomplete and rebuilt). Lookups read only the rows a batch asks for, so
memory does not grow with N. The key uses the data set's digest (files, splits, transform) instead of the bytes.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from edgekd.distill.losses import TopKLogits
from edgekd.distill.teachers import Teacher, as_teacher
from edgekd.errors import EdgeKDError
from edgekd.fileio import atomic_path

log = logging.getLogger(__name__)

CACHE_FORMAT = 1
STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16}


def tensor_sha256(x: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and raw bytes (CPU, contiguous): an exact data fingerprint."""
    t = x.detach().cpu().contiguous()
    h = hashlib.sha256(f"{t.dtype}|{tuple(t.shape)}|".encode())
    if t.numel():
        h.update(memoryview(t.reshape(-1).view(torch.uint8).numpy()))
    return h.hexdigest()


def cache_key(teacher_fingerprint: str, data_fingerprint: str, preprocessing: str, topk: int | None,
              dtype: str = "float32") -> str:
    payload = {"format": CACHE_FORMAT, "teacher": teacher_fingerprint, "data": data_fingerprint,
               "preprocessing": preprocessing, "topk": topk, "dtype": dtype}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def check_cache_allowed(augment: bool, *, strict: bool = False) -> str | None:
    """None when cached teacher logits are valid for training, else the reason (raised as EdgeKDError if strict).

    With random augmentation every epoch shows the student a different version of each image, so logits cached
    for the un-augmented tensor are the teacher's answer to another input: run the teacher online instead.
    """
    if not augment:
        return None
    reason = ("teacher-logit cache refused: random augmentation changes each input every epoch, so logits cached "
              "for the un-augmented images are wrong for the augmented ones the student sees; the teacher must run "
              "online on each augmented batch (or turn augmentation off to use the cache)")
    if strict:
        raise EdgeKDError(reason)
    return reason


@dataclass
class CachedLogits:
    """Cached teacher outputs for N samples: `cached[idx]` gives float32 logits (or TopKLogits) for those rows."""

    path: Path
    fingerprint: str
    topk: int | None
    logits: Tensor | None = None
    values: Tensor | None = None
    indices: Tensor | None = None
    rebuilt: bool = False
    build_seconds: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.logits if self.logits is not None else self.values)

    @property
    def num_classes(self) -> int:
        return int(self.meta["num_classes"])

    def __getitem__(self, index: Any) -> Tensor | TopKLogits:
        if isinstance(index, Tensor):
            index = index.detach().cpu().long()
        if self.logits is not None:
            return self.logits[index].float()
        return TopKLogits(self.values[index].float(), self.indices[index].long())


@torch.no_grad()
def teacher_outputs(teacher: Teacher, x: Tensor, batch_size: int = 512, topk: int | None = None,
                    progress: bool = True) -> tuple[Tensor | TopKLogits, int]:
    """Run `teacher` over `x` in batches; return float32 logits (N, V) or the top-k (values, indices), and V."""
    from edgekd.logs import progress_bar

    chunks, idx_chunks, num_classes = [], [], 0
    starts = range(0, len(x), batch_size)
    for start in progress_bar(starts, desc="teacher logits", unit="batch", enabled=progress, leave=False):
        z = teacher.logits(x[start:start + batch_size]).detach().float().cpu()
        num_classes = z.shape[-1]
        if topk is not None:
            if topk > z.shape[-1]:
                raise EdgeKDError(f"topk={topk} exceeds the teacher's {z.shape[-1]} classes; use topk <= "
                                  f"{z.shape[-1]} or null (full logits)")
            v, i = torch.topk(z, topk, dim=-1)
            chunks.append(v)
            idx_chunks.append(i)
        else:
            chunks.append(z)
    if topk is None:
        return torch.cat(chunks), num_classes
    return TopKLogits(torch.cat(chunks), torch.cat(idx_chunks)), num_classes


class TeacherCache:
    """A directory of teacher-logit cache files, one per key (see the module docstring)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)

    def path_for(self, key: str) -> Path:
        return self.directory / f"teacher-logits-{key[:16]}.pt"

    def _load(self, path: Path, key: str, n: int) -> CachedLogits | None:
        try:
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # a truncated or foreign file: rebuild rather than fail
            log.warning("ignoring unreadable teacher cache %s (%s); rebuilding", path, str(e).splitlines()[0])
            return None
        meta = blob.get("meta", {}) if isinstance(blob, dict) else {}
        if blob.get("fingerprint") != key or meta.get("n") != n:
            log.warning("teacher cache %s does not match this teacher/data; rebuilding", path)
            return None
        return CachedLogits(path, key, meta.get("topk"), blob.get("logits"), blob.get("values"), blob.get("indices"),
                            rebuilt=False, build_seconds=meta.get("build_seconds"), meta=meta)

    def load_or_build(self, teacher: Teacher, x: Tensor, preprocessing: str, topk: int | None = None,
                      batch_size: int = 512, progress: bool = True, dtype: str = "float32") -> CachedLogits:
        """Reuse the cache file for this (teacher, x, preprocessing, topk) or build it (atomically) and return it."""
        teacher = as_teacher(teacher)
        if not isinstance(x, Tensor) or x.dim() < 2 or len(x) == 0:
            raise EdgeKDError(f"the teacher cache needs the training inputs as one tensor (N, C, H, W), got "
                              f"{type(x).__name__} {tuple(getattr(x, 'shape', ()))}")
        if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
            raise EdgeKDError(f"topk must be a positive integer or null (full logits), got {topk!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise EdgeKDError(f"batch_size must be a positive integer, got {batch_size!r}")
        if dtype not in STORAGE_DTYPES:
            raise EdgeKDError(f"cache dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
        if not isinstance(preprocessing, str):
            raise EdgeKDError(f"preprocessing must be a string describing the input transform, got {preprocessing!r}")
        data_fp = tensor_sha256(x)
        teacher_fp = teacher.fingerprint()
        key = cache_key(teacher_fp, data_fp, preprocessing, topk, dtype)
        path = self.path_for(key)
        if path.is_file():
            cached = self._load(path, key, len(x))
            if cached is not None:
                return cached
        t0 = time.perf_counter()
        out, num_classes = teacher_outputs(teacher, x, batch_size, topk, progress)
        seconds = time.perf_counter() - t0
        store = STORAGE_DTYPES[dtype]
        meta = {"n": len(x), "topk": topk, "num_classes": num_classes, "dtype": dtype, "teacher": teacher_fp,
                "data": data_fp,
                "preprocessing": preprocessing, "build_seconds": seconds, "format": CACHE_FORMAT}
        if topk is None:
            blob: dict[str, Any] = {"logits": out.to(store)}
            cached = CachedLogits(path, key, None, logits=blob["logits"])
        else:
            index_dtype = torch.int32 if int(out.indices.max()) < 2 ** 31 else torch.int64
            blob = {"values": out.values.to(store), "indices": out.indices.to(index_dtype)}
            cached = CachedLogits(path, key, topk, values=blob["values"], indices=blob["indices"])
        blob.update(fingerprint=key, meta=meta)
        self.directory.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            torch.save(blob, tmp)
        cached.rebuilt, cached.build_seconds, cached.meta = True, seconds, meta
        return cached


    def mmap_paths(self, key: str) -> tuple[Path, Path, Path]:
        stem = key[:16]
        return (self.directory / f"teacher-logits-{stem}.npy", self.directory / f"teacher-topk-{stem}.npy",
                self.directory / f"teacher-logits-{stem}.json")

    def _load_mmap(self, key: str, n: int) -> CachedLogits | None:
        values_path, index_path, meta_path = self.mmap_paths(key)
        try:
            meta = json.loads(meta_path.read_text())
            values = np.load(values_path, mmap_mode="c")  # copy-on-write: writable for torch, the file untouched
            indices = np.load(index_path, mmap_mode="c") if meta.get("topk") else None
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable teacher cache %s (%s); rebuilding", values_path, str(e).splitlines()[0])
            return None
        if meta.get("fingerprint") != key or meta.get("n") != n or len(values) != n:
            log.warning("teacher cache %s does not match this teacher/data; rebuilding", values_path)
            return None
        if meta.get("topk"):
            return CachedLogits(values_path, key, meta["topk"], values=torch.from_numpy(values),
                                indices=torch.from_numpy(indices), build_seconds=meta.get("build_seconds"), meta=meta)
        return CachedLogits(values_path, key, None, logits=torch.from_numpy(values),
                            build_seconds=meta.get("build_seconds"), meta=meta)

    def load_or_build_source(self, teacher: Teacher, source: Any, data_fingerprint: str, preprocessing: str,
                             topk: int | None = None, batch_size: int = 256, progress: bool = True,
                             dtype: str = "float16") -> CachedLogits:
        """Memory-mapped teacher logits for every sample of `source` (a BatchSource, read un-shuffled once).

        Rows are indexed by the source's sample index (Batch.idx). `source` must yield the un-augmented inputs the
        student will see; `data_fingerprint` must change whenever they do (StreamingDataset.digest()).
        """
        teacher = as_teacher(teacher)
        if topk is not None and (isinstance(topk, bool) or not isinstance(topk, int) or topk < 1):
            raise EdgeKDError(f"topk must be a positive integer or null (full logits), got {topk!r}")
        if dtype not in STORAGE_DTYPES:
            raise EdgeKDError(f"cache dtype must be one of {', '.join(STORAGE_DTYPES)}, got {dtype!r}")
        n = len(source)
        teacher_fp = teacher.fingerprint()
        key = cache_key(teacher_fp, data_fingerprint, preprocessing, topk, dtype + ":mmap")
        if self.mmap_paths(key)[2].is_file():
            cached = self._load_mmap(key, n)
            if cached is not None:
                return cached
        from edgekd.logs import progress_bar

        values_path, index_path, meta_path = self.mmap_paths(key)
        self.directory.mkdir(parents=True, exist_ok=True)
        store = np.float16 if dtype == "float16" else np.float32
        limit = float(np.finfo(store).max)
        t0 = time.perf_counter()
        values = indices = None
        num_classes = 0
        seen = 0
        with atomic_path(values_path) as vtmp, atomic_path(index_path) as itmp:
            bar = progress_bar(total=source.steps_per_epoch(batch_size), desc="teacher logits", unit="batch",
                               enabled=progress, leave=False)
            with torch.no_grad():
                for batch in source.epoch(0, 0, batch_size, shuffle=False):
                    z = teacher.logits(batch.x).detach().float().cpu()
                    if values is None:
                        num_classes = z.shape[-1]
                        if topk is not None and topk > num_classes:
                            raise EdgeKDError(f"topk={topk} exceeds the teacher's {num_classes} classes; use topk "
                                              f"<= {num_classes} or null (full logits)")
                        width = topk or num_classes
                        values = np.lib.format.open_memmap(vtmp, mode="w+", dtype=store, shape=(n, width))
                        if topk is not None:
                            indices = np.lib.format.open_memmap(itmp, mode="w+", dtype=np.int32, shape=(n, topk))
                    rows = batch.idx.numpy()
                    if topk is not None:
                        v, i = torch.topk(z, topk, dim=-1)
                        values[rows] = v.clamp(-limit, limit).numpy()
                        indices[rows] = i.numpy().astype(np.int32)
                    else:
                        values[rows] = z.clamp(-limit, limit).numpy()
                    seen += len(rows)
                    bar.update(1)
            bar.close()
            if seen != n:
                raise EdgeKDError(f"the teacher cache pass read {seen} samples, the source holds {n}")
            values.flush()
            if indices is not None:
                indices.flush()
            else:
                with open(itmp, "wb") as f:  # a file handle: np.save would append .npy to a path
                    np.save(f, np.zeros((0,), np.int32))
            del values, indices
        seconds = time.perf_counter() - t0
        meta = {"n": n, "topk": topk, "num_classes": num_classes, "dtype": dtype, "teacher": teacher_fp,
                "data": data_fingerprint, "preprocessing": preprocessing, "build_seconds": seconds,
                "format": CACHE_FORMAT, "storage": "mmap", "fingerprint": key}
        with atomic_path(meta_path) as tmp:
            tmp.write_text(json.dumps(meta))
        cached = self._load_mmap(key, n)
        if cached is None:
            raise EdgeKDError(f"the teacher cache written to {values_path} cannot be read back")
        cached.rebuilt, cached.build_seconds = True, seconds
        return cached


def load_or_build_source(teacher: Teacher, source: Any, directory: str | Path, data_fingerprint: str,
                         preprocessing: str, topk: int | None = None, batch_size: int = 256, progress: bool = True,
                         dtype: str = "float16") -> CachedLogits:
    """`TeacherCache(directory).load_or_build_source(...)`: memory-mapped logits for a streamed source.

    Under torch.distributed, rank 0 builds the files while the other ranks wait at a barrier, then every rank maps
    the same files (one teacher pass per run, not per rank; the run directory must be shared by the ranks).
    """
    cache = TeacherCache(directory)

    def build() -> CachedLogits:
        return cache.load_or_build_source(teacher, source, data_fingerprint, preprocessing, topk, batch_size,
                                          progress, dtype)

    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return build()
    if dist.get_rank() == 0:
        cached = build()
        dist.barrier()
        return cached
    dist.barrier()
    return build()  # finds rank 0's files


def load_or_build(teacher: Teacher, x: Tensor, directory: str | Path, preprocessing: str, topk: int | None = None,
                  batch_size: int = 512, progress: bool = True, dtype: str = "float32") -> CachedLogits:
    """`TeacherCache(directory).load_or_build(...)`: cached teacher logits for every row of `x`."""
    return TeacherCache(directory).load_or_build(teacher, x, preprocessing, topk, batch_size, progress, dtype)


__all__ = ["CachedLogits", "TeacherCache", "cache_key", "check_cache_allowed", "load_or_build",
           "load_or_build_source", "teacher_outputs", "tensor_sha256"]
