"""A data set whose images stay on disk: an image folder, a manifest or tar shards, read as `BatchSource`s.

`StreamingDataset` answers what the stages ask of an `ImageDataset` (input shape, class names, normalization,
labels, split record, digest) without loading images: training and evaluation read `train_source(augment)`,
`test_source()` and `val_source()`; code that needs a bounded number of tensors (calibration picks, example
inputs, a validation slice) indexes `x_train` / `x_val` / `x_test`, which are `ImageView`s that decode just the
images asked for. Peak memory depends on the batch size, workers and prefetch, not on the number of images.

Splits: the test split is root/test beside root/train (image folders), `data.test_root`, or a seeded
`data.test_fraction` of the files; the validation split is carved from the training files by the same
stratified, seeded rule as in-memory data (`validation_indices`), from labels alone.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgekd.data.datasets import stratified_subset
from edgekd.data.files import FileStore, ShardStore, index_shards, read_manifest, scan_folder
from edgekd.data.prepare import read_class_names, stats_values, validation_indices
from edgekd.data.source import BatchSource
from edgekd.data.stream import FileSource, ImageView, ShardSource
from edgekd.data.transforms import ImageTransform, check_decoder
from edgekd.errors import EdgeKDError

STREAM_KINDS = ("image_folder", "manifest", "shards")
STATS_SAMPLE = 512   # images whose pixels give mean/std when data.mean/std is "dataset"


@dataclass
class StreamOptions:
    """The streaming fields of the data section (edgekd.config.DataConfig documents each)."""

    resolution: int = 224
    channels: int = 3
    augment: str = "standard"
    shift_pixels: int = 2
    crop_scale: tuple[float, float] = (0.08, 1.0)
    workers: int = 2
    prefetch: int = 2
    shuffle_buffer: int = 2000
    decoder: str = "auto"
    pin_memory: bool | None = None


@dataclass
class _Split:
    store: FileStore | ShardStore
    select: np.ndarray          # indices into the store

    @property
    def labels(self) -> np.ndarray:
        return self.store.labels[self.select]


@dataclass
class StreamingDataset:
    """Train/validation/test splits of images on disk, with the metadata an `ImageDataset` carries."""

    name: str
    kind: str
    train: _Split
    val: _Split
    test: _Split
    labels: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    options: StreamOptions
    source: str = ""
    split: dict = field(default_factory=dict)
    pixel_max: float = 255.0
    streamed = True
    _sources: dict = field(default_factory=dict, repr=False)
    _digest: str | None = field(default=None, repr=False)

    # ------------------------------------------------------------------ what stages read
    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.options.channels, self.options.resolution, self.options.resolution)

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def transform(self, policy: str) -> ImageTransform:
        o = self.options
        return ImageTransform(o.resolution, o.channels, policy, tuple(o.crop_scale), tuple(self.mean),
                              tuple(self.std), o.decoder, o.shift_pixels)

    def _source(self, split: str, policy: str) -> BatchSource:
        key = (split, policy)
        if key not in self._sources:
            s, o = getattr(self, split), self.options
            common = dict(workers=o.workers, prefetch=o.prefetch, pin_memory=o.pin_memory)
            if isinstance(s.store, ShardStore):
                self._sources[key] = ShardSource(s.store, self.transform(policy), select=s.select,
                                                 shuffle_buffer=o.shuffle_buffer, **common)
            else:
                self._sources[key] = FileSource(s.store.subset(s.select), self.transform(policy), **common)
        return self._sources[key]

    def train_source(self, augment: bool = False) -> BatchSource:
        """Training batches: the recipe's augment policy when `augment`, else the un-augmented eval view."""
        return self._source("train", self.options.augment if augment else "none")

    def test_source(self) -> BatchSource:
        return self._source("test", "none")

    def val_source(self) -> BatchSource:
        return self._source("val", "none")

    def _view(self, split: str) -> ImageView:
        src = self._source(split, "none")
        return ImageView(src.images, len(src), self.input_shape)

    @property
    def x_train(self) -> ImageView:
        return self._view("train")

    @property
    def x_val(self) -> ImageView:
        return self._view("val")

    @property
    def x_test(self) -> ImageView:
        return self._view("test")

    @property
    def y_train(self) -> torch.Tensor:
        return torch.from_numpy(self.train.labels)

    @property
    def y_val(self) -> torch.Tensor:
        return torch.from_numpy(self.val.labels)

    @property
    def y_test(self) -> torch.Tensor:
        return torch.from_numpy(self.test.labels)

    def test_tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `limit` test images (all when None) decoded un-augmented, and their labels."""
        n = len(self.test.select) if limit is None else min(int(limit), len(self.test.select))
        return self.x_test[:n], self.y_test[:n]

    def val_tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self.val.select) if limit is None else min(int(limit), len(self.val.select))
        return self.x_val[:n], self.y_val[:n]

    def digest(self) -> str:
        """Fingerprint of the files (paths, sizes, times, labels), the splits and the transforms."""
        if self._digest is None:
            h = hashlib.sha256()
            stores = {id(s.store): s.store for s in (self.train, self.val, self.test)}
            for st in stores.values():
                h.update(st.fingerprint().encode())
            for s in (self.train, self.val, self.test):
                h.update(s.select.astype("<i8").tobytes())
            h.update(repr((self.mean, self.std, self.labels, self.options)).encode())
            self._digest = h.hexdigest()[:16]
        return self._digest

    def describe(self) -> str:
        val = f" / {len(self.val.select)} validation" if len(self.val.select) else ""
        o = self.options
        return (f"{self.name}: {len(self.train.select)} train{val} / {len(self.test.select)} test, streamed "
                f"({self.kind}, {o.workers} workers), input {self.input_shape}, {self.num_classes} classes")


def _open_store(kind: str, root: str, classes: list[str] | None) -> FileStore | ShardStore:
    if kind == "image_folder":
        return scan_folder(root, classes)
    if kind == "manifest":
        return read_manifest(root, classes)
    return index_shards(root, classes)


def _dataset_stats(split: _Split, options: StreamOptions, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std (pixel scale) over up to STATS_SAMPLE un-augmented training images."""
    n = len(split.select)
    if isinstance(split.store, ShardStore):
        picks = np.arange(min(n, STATS_SAMPLE))  # the first shards: no random access into tars
        src = ShardSource(split.store, ImageTransform(options.resolution, options.channels, "none",
                                                      decoder=options.decoder, mean=(0.0,), std=(1.0,)),
                          select=split.select, workers=0)
    else:
        picks = np.sort(np.random.default_rng(seed).permutation(n)[:STATS_SAMPLE])
        src = FileSource(split.store.subset(split.select),
                         ImageTransform(options.resolution, options.channels, "none", decoder=options.decoder,
                                        mean=(0.0,), std=(1.0,)), workers=0)
    x = src.images(picks).double()
    return x.mean(dim=(0, 2, 3)).numpy(), (x.std(dim=(0, 2, 3)) + 1e-8 * 255).numpy()


def load_streaming(kind: str, root: str | None, *, test_root: str | None = None, test_fraction: float = 0.2,
                   subset_train: int | None = None, subset_test: int | None = None, seed: int = 0,
                   mean: Any = None, std: Any = None, class_names: Any = None, val_fraction: float = 0.0,
                   val_size: int | None = None, options: StreamOptions | None = None) -> StreamingDataset:
    """Index a streamed data set (no image is decoded except a small sample for 'dataset' statistics)."""
    o = options or StreamOptions()
    if kind not in STREAM_KINDS:
        raise EdgeKDError(f"data.stream: true reads {', '.join(STREAM_KINDS)}; dataset {kind!r} is in-memory only "
                          f"(set data.stream: false)")
    if not root:
        raise EdgeKDError(f"dataset {kind!r} needs data.root: "
                          + {"image_folder": "a folder with one sub-folder per class",
                             "manifest": "a .csv (path,label) or .jsonl manifest",
                             "shards": "tar shards by brace pattern or glob"}[kind])
    check_decoder(o.decoder)
    names = read_class_names(class_names) if class_names is not None else None
    base = Path(root)
    if kind == "image_folder" and test_root is None and (base / "train").is_dir() and (base / "test").is_dir():
        root, test_root = str(base / "train"), str(base / "test")
    store = _open_store(kind, root, names)
    classes = store.classes
    if test_root is not None:
        test_store = _open_store(kind, test_root, classes)
        test, pool = _Split(test_store, np.arange(len(test_store))), np.arange(len(store))
    else:
        if not 0 < float(test_fraction) < 1:
            raise EdgeKDError(f"data.test_fraction: a fraction in (0, 1) of the files held out for testing, got "
                              f"{test_fraction!r} (or give data.test_root)")
        perm = np.random.default_rng(seed).permutation(len(store))
        n_test = max(1, int(len(store) * float(test_fraction)))
        test, pool = _Split(store, np.sort(perm[:n_test])), np.sort(perm[n_test:])
    if subset_train:
        pool = pool[stratified_subset(torch.from_numpy(store.labels[pool]), subset_train, seed).numpy()]
    if subset_test:
        test = _Split(test.store, test.select[stratified_subset(torch.from_numpy(test.labels), subset_test,
                                                                seed + 1).numpy()])
    if len(pool) == 0:
        raise EdgeKDError(f"{root}: no training images are left after the test split")
    val_idx = validation_indices(torch.from_numpy(store.labels[pool]), val_fraction, val_size, seed).numpy()
    keep = np.ones(len(pool), bool)
    keep[val_idx] = False
    train, val = _Split(store, pool[keep]), _Split(store, pool[val_idx])
    top = int(max(train.labels.max(initial=-1), test.labels.max(initial=-1)))
    if top >= len(classes):
        raise EdgeKDError(f"{root}: labels go up to {top} but there are {len(classes)} classes")
    m = stats_values(mean, "mean", o.channels, 255.0)
    s = stats_values(std, "std", o.channels, 255.0)
    if m is None or s is None:
        dm, ds_ = _dataset_stats(train, o, seed)
        m = dm if m is None else m
        s = ds_ if s is None else s
    split = {"train": len(train.select), "val": len(val.select), "test": len(test.select),
             "val_fraction": float(val_fraction), "val_size": val_size, "seed": seed,
             "val_indices_sha256": hashlib.sha256(np.sort(val_idx).astype("<i8").tobytes()).hexdigest()[:16]}
    return StreamingDataset(Path(str(root).rstrip("/")).stem or kind, kind, train, val, test, list(classes),
                            tuple(round(float(v), 4) for v in m), tuple(round(float(v), 4) for v in s), o,
                            store.where, split)


def streaming_from_config(d: dict[str, Any], seed: int = 0) -> StreamingDataset:
    """The streamed data set a recipe's `data` section (as a dict) describes."""
    scale = d.get("crop_scale") or (0.08, 1.0)
    options = StreamOptions(resolution=int(d.get("resolution") or 224), channels=int(d.get("channels") or 3),
                            augment=d.get("augment") or "standard", shift_pixels=int(d.get("shift_pixels", 2)),
                            crop_scale=(float(scale[0]), float(scale[1])),
                            workers=int(d.get("workers", 2)), prefetch=int(d.get("prefetch") or 2),
                            shuffle_buffer=int(d.get("shuffle_buffer") or 2000), decoder=d.get("decoder") or "auto")
    return load_streaming(d.get("dataset", "image_folder"), d.get("root"), test_root=d.get("test_root"),
                          test_fraction=d.get("test_fraction", 0.2), subset_train=d.get("subset_train"),
                          subset_test=d.get("subset_test"), seed=seed, mean=d.get("mean"), std=d.get("std"),
                          class_names=d.get("class_names"), val_fraction=d.get("val_fraction", 0.0) or 0.0,
                          val_size=d.get("val_size"), options=options)


__all__ = ["STREAM_KINDS", "StreamOptions", "StreamingDataset", "load_streaming", "streaming_from_config"]
