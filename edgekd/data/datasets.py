"""Dataset sources by name: Fashion-MNIST (IDX files), sklearn digits, CIFAR-10, .npz arrays, an image folder.

A source returns the raw images as `RawImages` (N,C,H,W arrays on their pixel scale, integer labels, class
names); `edgekd.data.prepare.load_dataset` checks the labels, normalizes with the recipe's mean/std (or the
training split's own), takes subsets and carves the validation split, giving an `ImageDataset`. The mean/std
travel with the dataset into the model's metadata so the app normalizes the same way.
"""
from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgekd.data.loader import Augmentation
from edgekd.errors import EdgeKDError
from edgekd.registry import Registry

DATASETS: Registry[Callable[..., "RawImages"]] = Registry("dataset")

FASHION_LABELS = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                  "Ankle boot"]
FASHION_DIRS = ("/usr/share/datasets/fashion-mnist",)


@dataclass
class RawImages:
    """What a dataset source returns: un-normalized N,C,H,W images on their pixel scale and their labels."""

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    labels: list[str] | None = None        # class names in label order; None = "0".."K-1"
    scale: float = 255.0                    # the pixel scale's maximum (255 for uint8, 1 for float 0..1)
    source: str = ""


@dataclass
class ImageDataset:
    """Train/validation/test tensors (N,C,H,W float32, normalized), int64 labels, class names and normalization.

    mean/std are on the pixel scale (0..255 for 8-bit images). x_val/y_val are carved from the training data
    (stratified, seeded; `split` records sizes and the indices' digest) and x_train/y_train are the rest.
    """

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    labels: list[str]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    split: dict = field(default_factory=dict)
    pixel_max: float = 255.0               # the pixel scale mean/std are on (255 for 8-bit images, 1 for 0..1)
    augmentation: Augmentation = field(default_factory=Augmentation)   # what train_source(augment=True) applies
    _digest: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.x_val is None:
            self.x_val = self.x_train[:0]
            self.y_val = self.y_train[:0]

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def digest(self) -> str:
        """A stable fingerprint of the data and its preprocessing (for caches and stage skipping)."""
        if self._digest is None:
            h = hashlib.sha256()
            for t in (self.x_train, self.y_train, self.x_test, self.y_test, self.x_val, self.y_val):
                h.update(t.numpy().tobytes())
            h.update(repr((self.mean, self.std, self.labels)).encode())
            self._digest = h.hexdigest()[:16]
        return self._digest

    streamed = False  # held in memory (edgekd.data.streaming.StreamingDataset streams from disk)

    def train_source(self, augment: bool = False):
        """Training batches sliced from memory; with `augment`, the data section's augmentation per batch."""
        from edgekd.data.source import TensorSource

        active = augment and self.augmentation.active
        return TensorSource(self.x_train, self.y_train, self.augmentation if active else None)

    def test_source(self):
        from edgekd.data.source import TensorSource

        return TensorSource(self.x_test, self.y_test)

    def val_source(self):
        from edgekd.data.source import TensorSource

        return TensorSource(self.x_val, self.y_val)

    def test_tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first `limit` test images and labels (all when None)."""
        return (self.x_test, self.y_test) if limit is None else (self.x_test[:limit], self.y_test[:limit])

    def val_tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.x_val, self.y_val) if limit is None else (self.x_val[:limit], self.y_val[:limit])

    def describe(self) -> str:
        val = f" / {len(self.x_val)} validation" if len(self.x_val) else ""
        return (f"{self.name}: {len(self.x_train)} train{val} / {len(self.x_test)} test, input {self.input_shape}, "
                f"{self.num_classes} classes")


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally .gz): magic gives dtype and rank, then big-endian dims, then data."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise EdgeKDError(f"cannot read IDX file {path}: {e}; the file is corrupt or truncated: re-install it") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise EdgeKDError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    rank = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(rank)]
    header = 4 + 4 * rank
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise EdgeKDError(f"{path} holds {len(raw) - header} bytes of data, its header says {expected}: "
                          "the file is truncated or corrupt; re-install or re-download it")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def find_fashion_mnist(root: str | os.PathLike | None) -> Path:
    candidates = [Path(root)] if root else []
    if not root and os.environ.get("EDGEKD_DATA"):
        candidates.append(Path(os.environ["EDGEKD_DATA"]))
    if not root:
        candidates += [Path(d) for d in FASHION_DIRS]
    for c in candidates:
        for sub in (c, c / "fashion-mnist", c / "FashionMNIST" / "raw"):
            if (sub / "train-images-idx3-ubyte.gz").exists() or (sub / "train-images-idx3-ubyte").exists():
                return sub
    where = ", ".join(str(c) for c in candidates) or "(nowhere)"
    raise EdgeKDError(f"Fashion-MNIST IDX files not found (looked in {where}); install Debian package "
                      "'dataset-fashion-mnist' (apt-get install dataset-fashion-mnist) or point --data-dir / "
                      "EDGEKD_DATA at a folder holding train-images-idx3-ubyte.gz and friends")


def _idx(folder: Path, stem: str) -> np.ndarray:
    gz = folder / f"{stem}.gz"
    return read_idx(gz if gz.exists() else folder / stem)


@DATASETS.register("fashion_mnist")
def fashion_mnist(root: str | None = None) -> RawImages:
    """Fashion-MNIST from its original IDX files: 60k train / 10k test, 28x28 grey, 10 classes."""
    folder = find_fashion_mnist(root)
    xtr = _idx(folder, "train-images-idx3-ubyte")[:, None]
    ytr = _idx(folder, "train-labels-idx1-ubyte")
    xte = _idx(folder, "t10k-images-idx3-ubyte")[:, None]
    yte = _idx(folder, "t10k-labels-idx1-ubyte")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise EdgeKDError(f"Fashion-MNIST in {folder}: image and label counts differ; the files are mismatched")
    return RawImages("fashion_mnist", xtr, ytr, xte, yte, FASHION_LABELS, 255.0, str(folder))


@DATASETS.register("digits")
def digits(root: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> RawImages:
    """sklearn's 8x8 digits (1,797 images, always available): a fixed stratified split for tiny runs."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images[:, None] * (255.0 / 16.0)).astype(np.float32)
    rng = np.random.default_rng(seed)
    test_idx = np.concatenate([rng.permutation(np.flatnonzero(d.target == c))[: int(round(test_fraction *
                               np.sum(d.target == c)))] for c in range(10)])
    mask = np.zeros(len(x), bool)
    mask[test_idx] = True
    return RawImages("digits", x[~mask], d.target[~mask], x[mask], d.target[mask], [str(i) for i in range(10)],
                     255.0, "sklearn.datasets.load_digits")


@DATASETS.register("cifar10")
def cifar10(root: str | None = None) -> RawImages:
    """CIFAR-10 (50k train / 10k test, 3x32x32, 10 classes) from its offline cache (edgekd.data.cifar10)."""
    from edgekd.data.cifar10 import load_cifar10

    return load_cifar10(root)


@DATASETS.register("npz")
def npz(root: str | None = None, labels: list[str] | None = None) -> RawImages:
    """An .npz with x_train, y_train, x_test, y_test (images N,H,W / N,H,W,C / N,C,H,W; labels 0..K-1).

    uint8 images are on the 0..255 scale, float images on 0..1.
    """
    if not root:
        raise EdgeKDError("dataset 'npz' needs data.root: the path of an .npz file with x_train, y_train, x_test, y_test")
    path = Path(root)
    if not path.is_file():
        raise EdgeKDError(f"npz dataset file not found: {path}")
    try:
        arrays = np.load(path)
        x_tr, y_tr, x_te, y_te = (arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    except KeyError as e:
        raise EdgeKDError(f"{path} lacks array {e}; it needs x_train, y_train, x_test, y_test") from e
    except (OSError, ValueError) as e:
        raise EdgeKDError(f"cannot read {path} as .npz: {e}") from e
    x_tr, x_te = _to_nchw(x_tr, path), _to_nchw(x_te, path)
    return RawImages(path.stem, x_tr, y_tr, x_te, y_te, labels, 255.0 if x_tr.dtype == np.uint8 else 1.0, str(path))


def _to_nchw(x: np.ndarray, path: Path) -> np.ndarray:
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4 and x.shape[-1] in (1, 3) and x.shape[1] not in (1, 3):
        return x.transpose(0, 3, 1, 2)
    if x.ndim == 4:
        return x
    raise EdgeKDError(f"{path}: images must be N,H,W or N,H,W,C or N,C,H,W; got shape {x.shape}")


@DATASETS.register("image_folder")
def image_folder(root: str | None = None, size: int = 32, grayscale: bool = False,
                 test_fraction: float = 0.2, seed: int = 0) -> RawImages:
    """root/<class>/*.png|jpg (or root/train and root/test each so), resized to size x size."""
    from PIL import Image

    if not root or not Path(root).is_dir():
        raise EdgeKDError(f"image_folder needs data.root: a folder with one sub-folder per class; got {root!r}")
    base = Path(root)

    def read(folder: Path, classes: list[str]):
        xs, ys = [], []
        for ci, c in enumerate(classes):
            for f in sorted((folder / c).iterdir()):
                if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
                    img = Image.open(f).convert("L" if grayscale else "RGB").resize((size, size))
                    a = np.asarray(img, np.uint8)
                    xs.append(a[None] if a.ndim == 2 else a.transpose(2, 0, 1))
                    ys.append(ci)
        if not xs:
            raise EdgeKDError(f"no images found under {folder}")
        return np.stack(xs), np.asarray(ys)

    if (base / "train").is_dir() and (base / "test").is_dir():
        classes = sorted(p.name for p in (base / "train").iterdir() if p.is_dir())
        xtr, ytr = read(base / "train", classes)
        xte, yte = read(base / "test", classes)
    else:
        classes = sorted(p.name for p in base.iterdir() if p.is_dir())
        x, y = read(base, classes)
        perm = np.random.default_rng(seed).permutation(len(x))
        n_test = max(1, int(len(x) * test_fraction))
        xte, yte, xtr, ytr = x[perm[:n_test]], y[perm[:n_test]], x[perm[n_test:]], y[perm[n_test:]]
    return RawImages(base.name, xtr, ytr, xte, yte, classes, 255.0, str(base))


@DATASETS.register("manifest")
def manifest(root: str | None = None, **_: object) -> RawImages:
    """A CSV/JSONL manifest of image paths and labels: streamed only (edgekd.data.streaming)."""
    raise EdgeKDError("dataset 'manifest' streams its images from disk: set data.stream: true")


@DATASETS.register("shards")
def shards(root: str | None = None, **_: object) -> RawImages:
    """WebDataset-layout tar shards: streamed only (edgekd.data.streaming)."""
    raise EdgeKDError("dataset 'shards' streams its images from disk: set data.stream: true")


def stratified_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """`n` indices with classes in proportion, drawn with `seed`, sorted."""
    if n >= len(y):
        return torch.arange(len(y))
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(y), generator=g)
    classes = torch.unique(y)
    per_class = max(1, n // len(classes))
    picked = [perm[y[perm] == c][:per_class] for c in classes]
    idx = torch.cat(picked)
    if len(idx) < n:  # top up with the rest of the permutation
        rest = perm[~torch.isin(perm, idx)][: n - len(idx)]
        idx = torch.cat([idx, rest])
    return torch.sort(idx[:n]).values
