"""From a source's raw images to an `ImageDataset`: label checks, normalization, class names, subsets, validation.

Order (docs/byo.md): load raw -> check images and labels (0..K-1, finite integers) -> normalize with the given
mean/std or the whole training split's own -> optional stratified subsets -> carve the stratified, seeded
validation split from the (subset) training split.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from edgekd.data.datasets import DATASETS, ImageDataset, RawImages, stratified_subset
from edgekd.data.loader import Augmentation
from edgekd.errors import EdgeKDError

# Presets on the 0..1 scale, multiplied by the data's pixel scale: what torchvision/timm ImageNet weights expect.
NORMALIZATION_PRESETS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def check_labels(y: Any, split: str, source: str, n_images: int) -> np.ndarray:
    """Labels as int64, refusing NaN/inf, non-integers, negatives, non-numbers and a count that is not the images'."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise EdgeKDError(f"{source}: {split} labels must be one integer class index per image, got shape {y.shape}"
                          f" (one-hot labels? use y.argmax(1))")
    if len(y) != n_images:
        raise EdgeKDError(f"{source}: {split} has {n_images} images but {len(y)} labels; they must pair up")
    if y.dtype.kind not in "iuf":
        raise EdgeKDError(f"{source}: {split} labels have dtype {y.dtype}; labels must be integer class indices "
                          f"0..K-1: map names to indices and give the names as data.class_names")
    if y.dtype.kind == "f":
        bad = np.flatnonzero(~np.isfinite(y))
        if len(bad):
            raise EdgeKDError(f"{source}: {split} labels hold NaN or inf ({len(bad)} of them, first at index "
                              f"{bad[0]}); every label must be an integer class index 0..K-1")
        frac = np.flatnonzero(y != np.round(y))
        if len(frac):
            raise EdgeKDError(f"{source}: {split} labels hold non-integer values ({float(y[frac[0]]):g} at index "
                              f"{frac[0]}); labels must be integer class indices 0..K-1")
    y = y.astype(np.int64)
    if len(y) and y.min() < 0:
        raise EdgeKDError(f"{source}: {split} labels hold negative values (min {y.min()}); labels must be 0..K-1")
    return y


def _check_images(x: np.ndarray, split: str, source: str) -> None:
    if x.dtype.kind not in "iuf":
        raise EdgeKDError(f"{source}: {split} images have dtype {x.dtype}; give uint8 (0..255) or float (0..1)")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        raise EdgeKDError(f"{source}: {split} images hold NaN or inf values; clean them before training")


def read_class_names(class_names: Sequence[str] | str | Path) -> list[str]:
    """A list as given, or a labels file: one class name per line, in label order (blank lines skipped)."""
    if isinstance(class_names, (str, Path)):
        p = Path(class_names).expanduser()
        if not p.is_file():
            raise EdgeKDError(f"class names file not found: {p} (data.class_names is a list of names or a text "
                              f"file with one name per line, in label order)")
        return [line.strip() for line in p.read_text().splitlines() if line.strip()]
    return [str(c) for c in class_names]


def class_names_for(raw: RawImages, ytr: np.ndarray, yte: np.ndarray,
                    class_names: Sequence[str] | str | None) -> list[str]:
    """The K class names; labels must be 0..K-1 (with K from the names, else max label + 1, all present in train)."""
    if len(ytr) == 0:
        raise EdgeKDError(f"{raw.source}: the training split holds no images")
    names = read_class_names(class_names) if class_names is not None else raw.labels
    top = int(max(ytr.max(initial=-1), yte.max(initial=-1)))
    if names is not None:
        if top >= len(names):
            raise EdgeKDError(f"{raw.source}: labels go up to {top} but {len(names)} class names are given; labels "
                              f"must be 0..{len(names) - 1} (one name per class, in label order)")
        if len(set(names)) != len(names):
            raise EdgeKDError(f"{raw.source}: class names repeat: {sorted({n for n in names if names.count(n) > 1})}")
        return list(names)
    present = set(np.unique(ytr).tolist())
    absent = [c for c in range(top + 1) if c not in present]
    if absent:
        lo = int(ytr.min())
        fix = (f"subtract {lo} (y - {lo})" if absent == list(range(lo)) else
               "renumber the classes 0..K-1, or give data.class_names to declare K classes")
        raise EdgeKDError(f"{raw.source}: training labels run {lo}..{top} ({len(present)} distinct) but class(es) "
                          f"{absent[:5]} never appear: labels must be 0..K-1; {fix}")
    return [str(i) for i in range(top + 1)]


def stats_values(spec: Any, what: str, channels: int, scale: float = 255.0,
                 where: str = "data") -> np.ndarray | None:
    """mean or std on the pixel scale from a recipe value: None/'dataset' (compute), a preset name, or numbers."""
    if spec is None or spec == "dataset":
        return None
    if isinstance(spec, str):
        if spec not in NORMALIZATION_PRESETS:
            raise EdgeKDError(f"{where}.{what}: {spec!r} is not known; give 'dataset' (the training split's own), "
                              f"{', '.join(map(repr, NORMALIZATION_PRESETS))}, or numbers on the pixel scale "
                              f"(0..{scale:g}), one per channel")
        values = np.array(NORMALIZATION_PRESETS[spec][0 if what == "mean" else 1]) * scale
    else:
        values = np.asarray(spec, dtype=np.float64).reshape(-1)
    if len(values) == 1:
        values = np.repeat(values, channels)
    if len(values) != channels:
        raise EdgeKDError(f"{where}.{what}: {len(values)} values for images with {channels} channel(s); give one "
                          f"per channel (or one for all)")
    if what == "std" and (values <= 0).any():
        raise EdgeKDError(f"{where}.std: every value must be > 0, got {values.tolist()}")
    return values.astype(np.float32)


def normalize(raw: RawImages, ytr: np.ndarray, yte: np.ndarray, labels: list[str], mean: Any = None,
              std: Any = None) -> ImageDataset:
    """(x - mean) / std per channel, mean/std on the pixel scale; missing ones from the training split."""
    channels = raw.x_train.shape[1]
    m, s = stats_values(mean, "mean", channels, raw.scale), stats_values(std, "std", channels, raw.scale)
    tr = raw.x_train.astype(np.float32)
    te = raw.x_test.astype(np.float32)
    if m is None:
        m = tr.mean(axis=(0, 2, 3), dtype=np.float64).astype(np.float32)
    if s is None:
        s = (tr.std(axis=(0, 2, 3), dtype=np.float64) + 1e-8 * raw.scale).astype(np.float32)
    for x in (tr, te):
        x -= m[None, :, None, None]
        x /= s[None, :, None, None]
    return ImageDataset(raw.name, torch.from_numpy(tr), torch.from_numpy(ytr), torch.from_numpy(te),
                        torch.from_numpy(yte), labels, tuple(round(float(v), 4) for v in m),
                        tuple(round(float(v), 4) for v in s), raw.source, pixel_max=float(raw.scale))


def validation_indices(y: torch.Tensor, fraction: float = 0.1, size: int | None = None,
                       seed: int = 0) -> torch.Tensor:
    """Sorted indices of a stratified, seeded validation split of labels `y`.

    `size` (when given) is the total, else round(fraction * len(y)); it is shared among the classes in
    proportion to their counts (largest remainders first), and every class keeps at least one training image.
    """
    n = len(y)
    total = int(size) if size is not None else int(round(float(fraction) * n))
    if total <= 0:
        return torch.zeros(0, dtype=torch.int64)
    classes, counts = torch.unique(y, return_counts=True)
    if total > n - len(classes):
        raise EdgeKDError(f"a validation split of {total} images leaves too few of the {n} training images (each "
                          f"of the {len(classes)} classes keeps one); lower data.val_size / data.val_fraction")
    share = counts.double() * total / n
    take = torch.minimum(share.floor().long(), counts - 1)
    order = torch.argsort(share - share.floor(), descending=True, stable=True)
    for i in order.tolist():  # largest remainders get the leftover images
        if int(take.sum()) >= total:
            break
        if take[i] < counts[i] - 1:
            take[i] += 1
    g = torch.Generator().manual_seed(seed)
    picked = []
    for c, k in zip(classes.tolist(), take.tolist()):
        members = torch.nonzero(y == c).flatten()
        picked.append(members[torch.randperm(len(members), generator=g)[:k]])
    return torch.sort(torch.cat(picked)).values


def carve_validation(ds: ImageDataset, fraction: float = 0.1, size: int | None = None, seed: int = 0) -> None:
    """Move a validation split out of ds.x_train/y_train into ds.x_val/y_val and record it in ds.split."""
    if size is not None and (isinstance(size, bool) or int(size) != size or size < 0):
        raise EdgeKDError(f"data.val_size: a number of images >= 0, got {size!r}")
    if not 0 <= float(fraction) < 1:
        raise EdgeKDError(f"data.val_fraction: a fraction in [0, 1) of the training images, got {fraction!r}")
    idx = validation_indices(ds.y_train, fraction, size, seed)
    keep = torch.ones(len(ds.y_train), dtype=torch.bool)
    keep[idx] = False
    ds.x_val, ds.y_val = ds.x_train[idx], ds.y_train[idx]
    ds.x_train, ds.y_train = ds.x_train[keep], ds.y_train[keep]
    ds.split = {"train": len(ds.y_train), "val": len(idx), "val_fraction": float(fraction),
                "val_size": size, "seed": seed,
                "val_indices_sha256": hashlib.sha256(idx.numpy().astype("<i8").tobytes()).hexdigest()[:16]}
    ds._digest = None


def load_dataset(name: str, root: str | None = None, subset_train: int | None = None,
                 subset_test: int | None = None, seed: int = 0, *, mean: Any = None, std: Any = None,
                 class_names: Sequence[str] | str | None = None, val_fraction: float = 0.0,
                 val_size: int | None = None, **kwargs: Any) -> ImageDataset:
    """Load dataset `name` and prepare it (module docstring); same seed -> same subsets and validation split.

    Args:
        mean, std: normalization on the pixel scale (0..255 for 8-bit images), one value per channel, a preset
            ('imagenet'), or None / 'dataset' for the training split's own statistics.
        class_names: names in label order (a list, or a file with one per line); labels must be 0..K-1.
        val_fraction, val_size: the validation split carved from the training split (val_size wins); 0 = none.
        kwargs: the source's own options (e.g. image_folder's size, grayscale).
    """
    raw = DATASETS.get(name)(root=root, **kwargs)
    if isinstance(raw, ImageDataset):  # a source registered before RawImages existed: already normalized
        if mean is not None or std is not None or class_names is not None:
            raise EdgeKDError(f"dataset {name!r} returns normalized data, so data.mean/std/class_names cannot apply")
        ds = raw
    else:
        for split, x in (("x_train", raw.x_train), ("x_test", raw.x_test)):
            _check_images(x, split, raw.source or name)
        ytr = check_labels(raw.y_train, "y_train", raw.source or name, len(raw.x_train))
        yte = check_labels(raw.y_test, "y_test", raw.source or name, len(raw.x_test))
        labels = class_names_for(raw, ytr, yte, class_names)
        ds = normalize(raw, ytr, yte, labels, mean, std)
    if subset_train:
        idx = stratified_subset(ds.y_train, subset_train, seed)
        ds.x_train, ds.y_train = ds.x_train[idx], ds.y_train[idx]
    if subset_test:
        idx = stratified_subset(ds.y_test, subset_test, seed + 1)
        ds.x_test, ds.y_test = ds.x_test[idx], ds.y_test[idx]
    carve_validation(ds, val_fraction, val_size, seed)
    return ds


def dataset_from_config(data: Any, seed: int = 0) -> Any:
    """The dataset a recipe's `data` section describes (a DataConfig, or its dict as written in recipe.yaml).

    An `ImageDataset` in memory, or with `stream: true` an `edgekd.data.streaming.StreamingDataset` (same
    metadata and `train_source` / `test_source` / `val_source`, images read from disk by worker processes).
    """
    d = data if isinstance(data, dict) else vars(data)
    if d.get("stream"):
        from edgekd.data.streaming import streaming_from_config

        return streaming_from_config(d, seed)
    ds = load_dataset(d.get("dataset", "fashion_mnist"), d.get("root"), d.get("subset_train"),
                      d.get("subset_test"), seed, mean=d.get("mean"), std=d.get("std"),
                      class_names=d.get("class_names"), val_fraction=d.get("val_fraction", 0.0) or 0.0,
                      val_size=d.get("val_size"), **(d.get("kwargs") or {}))
    ds.augmentation = Augmentation(d.get("augment") or "standard", int(d.get("shift_pixels", 2)))
    return ds
