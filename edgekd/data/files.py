"""Where streamed images live: an image folder, a manifest (CSV/JSONL), or WebDataset-style tar shards.

A store lists its samples without decoding any image: paths (or shard positions) and integer labels. Paths are kept
in one NumPy byte-string array, not a Python list of str: worker processes forked from the loader then share the
pages instead of copying them as reference counts change (the list-of-objects copy-on-read growth), so peak memory
does not grow with the number of files.
"""
from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgekd.data.transforms import IMAGE_SUFFIXES
from edgekd.errors import EdgeKDError

SHARD_IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


@dataclass
class FileStore:
    """Image files under `root`: relative paths (bytes) and int64 labels, plus the class names."""

    root: Path
    paths: np.ndarray          # dtype 'S': paths relative to root, utf-8
    labels: np.ndarray         # int64
    classes: list[str]
    where: str = ""

    def __len__(self) -> int:
        return len(self.labels)

    def name(self, i: int) -> str:
        return str(self.root / self.paths[i].decode())

    def read(self, i: int) -> bytes:
        path = self.name(i)
        try:
            with open(path, "rb") as f:
                return f.read()
        except OSError as e:
            raise EdgeKDError(f"cannot read image {path}: {e.strerror or e}; the file list changed since the data "
                              f"were indexed, or the file is unreadable") from None

    def subset(self, idx: np.ndarray) -> "FileStore":
        return FileStore(self.root, self.paths[idx], self.labels[idx], self.classes, self.where)

    def fingerprint(self) -> str:
        """sha256 of the paths, labels, sizes and modification times (no image is read)."""
        h = hashlib.sha256(str(self.root.resolve()).encode())
        h.update(self.paths.tobytes())
        h.update(self.labels.astype("<i8").tobytes())
        for p in self.paths:
            st = os.stat(self.root / p.decode())
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
        return h.hexdigest()[:16]


def _as_paths(names: Sequence[str]) -> np.ndarray:
    return np.array([n.encode() for n in names], dtype=bytes) if names else np.zeros(0, "S1")


def scan_folder(root: str | os.PathLike, classes: list[str] | None = None) -> FileStore:
    """root/<class>/**/<image> (JPEG, PNG, WebP, BMP), classes in sorted folder order (or `classes` given)."""
    base = Path(root)
    if not base.is_dir():
        raise EdgeKDError(f"image folder not found: {base} (data.root is a folder with one sub-folder per class)")
    found = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    classes = list(classes) if classes is not None else found
    if not classes:
        raise EdgeKDError(f"{base} has no class sub-folders; put each class's images in root/<class>/")
    names, labels = [], []
    for ci, c in enumerate(classes):
        folder = base / c
        if not folder.is_dir():
            continue
        for dirpath, dirnames, files in os.walk(folder):
            dirnames.sort()
            rel = os.path.relpath(dirpath, base)
            for f in sorted(files):
                if f.lower().endswith(IMAGE_SUFFIXES):
                    names.append(os.path.join(rel, f))
                    labels.append(ci)
    if not names:
        raise EdgeKDError(f"no images (.jpg, .jpeg, .png, .webp, .bmp) found under {base}/<class>/")
    return FileStore(base, _as_paths(names), np.asarray(labels, np.int64), classes, str(base))


def read_manifest(path: str | os.PathLike, class_names: list[str] | None = None) -> FileStore:
    """A CSV (header path,label) or JSONL ({"path": ..., "label": ...}) file; paths relative to the manifest.

    Labels are integers 0..K-1 (K = len(class_names) when given, else max + 1) or class names (mapped through
    class_names, else sorted). Missing files are reported when the manifest is read.
    """
    p = Path(path)
    if not p.is_file():
        raise EdgeKDError(f"manifest not found: {p} (data.root is a .csv with columns path,label or a .jsonl file)")
    rows: list[tuple[str, object]] = []
    try:
        if p.suffix.lower() in (".jsonl", ".ndjson"):
            for n, line in enumerate(p.read_text().splitlines(), 1):
                if not line.strip():
                    continue
                rec = json.loads(line)
                if not isinstance(rec, dict) or "path" not in rec or "label" not in rec:
                    raise EdgeKDError(f"{p}:{n}: each line must be an object with 'path' and 'label'")
                rows.append((str(rec["path"]), rec["label"]))
        else:
            with open(p, newline="") as f:
                reader = csv.DictReader(f)
                if not reader.fieldnames or not {"path", "label"} <= set(reader.fieldnames):
                    raise EdgeKDError(f"{p}: the CSV header must name columns 'path' and 'label', got "
                                      f"{reader.fieldnames}")
                for row in reader:
                    rows.append((row["path"], row["label"]))
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as e:
        raise EdgeKDError(f"{p} is not a readable manifest: {type(e).__name__}: {e}") from None
    if not rows:
        raise EdgeKDError(f"manifest {p} lists no images")
    labels, classes = _manifest_labels(p, [r[1] for r in rows], class_names)
    base = p.parent
    missing = [r[0] for r in rows if not (base / r[0]).is_file()]
    if missing:
        raise EdgeKDError(f"{p}: {len(missing)} listed file(s) do not exist, e.g. {base / missing[0]} (paths are "
                          f"relative to the manifest's folder)")
    return FileStore(base, _as_paths([r[0] for r in rows]), labels, classes, str(p))


def _manifest_labels(p: Path, raw: list, class_names: list[str] | None) -> tuple[np.ndarray, list[str]]:
    ints = []
    for v in raw:
        if isinstance(v, bool):
            ints = None
            break
        if isinstance(v, int) or (isinstance(v, str) and re.fullmatch(r"-?\d+", v.strip())):
            ints.append(int(v))
        else:
            ints = None
            break
    if ints is not None:
        y = np.asarray(ints, np.int64)
        k = len(class_names) if class_names is not None else int(y.max()) + 1
        bad = np.flatnonzero((y < 0) | (y >= k))
        if len(bad):
            i = int(bad[0])
            raise EdgeKDError(f"{p}: label {int(y[i])} of row {i + 1} ({raw[i]!r}) is out of range; labels must be "
                              f"0..{k - 1}" + (" (one per data.class_names entry)" if class_names else ""))
        return y, list(class_names) if class_names is not None else [str(c) for c in range(k)]
    names = [str(v) for v in raw]
    classes = list(class_names) if class_names is not None else sorted(set(names))
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = [n for n in names if n not in lookup]
    if unknown:
        raise EdgeKDError(f"{p}: label {unknown[0]!r} is not one of the class names {classes[:10]}")
    return np.asarray([lookup[n] for n in names], np.int64), classes


# --------------------------------------------------------------------------------------------------- shards


def expand_shards(pattern: str) -> list[Path]:
    """Shard files from a brace pattern (`train-{0000..0099}.tar`, `{a,b}.tar`) or a glob (`train-*.tar`)."""
    names = _expand_braces(pattern)
    out: list[Path] = []
    for n in names:
        out += [Path(m) for m in sorted(glob.glob(n))] if any(c in n for c in "*?[") else [Path(n)]
    missing = [p for p in out if not p.is_file()]
    if not out or missing:
        raise EdgeKDError(f"shards not found: {missing[0] if missing else pattern} (data.root names tar shards by "
                          f"brace pattern, e.g. train-{{0000..0009}}.tar, or by glob, e.g. train-*.tar)")
    return out


def _expand_braces(pattern: str) -> list[str]:
    m = re.search(r"\{([^{}]*)\}", pattern)
    if not m:
        return [pattern]
    body, head, tail = m.group(1), pattern[:m.start()], pattern[m.end():]
    r = re.fullmatch(r"(\d+)\.\.(\d+)", body)
    if r:
        lo, hi = r.group(1), r.group(2)
        width = len(lo) if lo.startswith("0") else 0
        parts = [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]
    else:
        parts = body.split(",")
    return [x for part in parts for x in _expand_braces(head + part + tail)]


def split_key(member: str) -> tuple[str, str]:
    """WebDataset convention: the key is the path up to the first dot of the basename; the rest is the field."""
    d, _, base = member.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{d}/{stem}" if d else stem), ext.lower()


@dataclass
class ShardStore:
    """Tar shards in the WebDataset layout ({key}.jpg|png|webp + {key}.cls), indexed without decoding images.

    Sample i is the i-th image sample in shard order; `offsets[s]` is the index of shard s's first sample.
    """

    shards: list[Path]
    counts: np.ndarray          # samples per shard
    labels: np.ndarray          # int64, all samples
    classes: list[str]
    where: str = ""
    offsets: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)[:-1]]).astype(np.int64)

    def __len__(self) -> int:
        return int(self.counts.sum())

    def fingerprint(self) -> str:
        h = hashlib.sha256()
        for p, c in zip(self.shards, self.counts):
            st = p.stat()
            h.update(f"{p.resolve()}:{st.st_size}:{st.st_mtime_ns}:{c}".encode())
        h.update(self.labels.astype("<i8").tobytes())
        return h.hexdigest()[:16]


def iter_shard(path: Path, images: bool = True):
    """(key, image bytes, image ext, label) for each sample of one shard, in file order (images=False: b"")."""
    try:
        # Reading images: streaming mode (one sequential pass). Indexing (images=False): random-access mode, which
        # seeks over the image data of an uncompressed tar and reads only headers and the small .cls members.
        with tarfile.open(path, "r|*" if images else "r:*") as tf:
            key, fields = None, {}
            for m in tf:
                if not m.isfile():
                    continue
                k, ext = split_key(m.name)
                if key is not None and k != key:
                    sample = _sample(path, key, fields)
                    if sample is not None:
                        yield sample
                    fields = {}
                key = k
                if ext == "cls" or (ext in SHARD_IMAGE_EXTS and images):
                    fields[ext] = tf.extractfile(m).read()
                elif ext in SHARD_IMAGE_EXTS:
                    fields[ext] = b""
            if key is not None:
                sample = _sample(path, key, fields)
                if sample is not None:
                    yield sample
    except (tarfile.TarError, OSError, EOFError) as e:
        raise EdgeKDError(f"cannot read shard {path}: {type(e).__name__}: {e}; the archive is damaged or not a "
                          f"tar file") from None


def _sample(path: Path, key: str, fields: dict):
    img_ext = next((e for e in SHARD_IMAGE_EXTS if e in fields), None)
    if img_ext is None:
        return None  # a key without an image (e.g. metadata only) is not a sample
    if "cls" not in fields:
        raise EdgeKDError(f"shard {path}: sample {key!r} has an image but no {key}.cls label file")
    text = fields["cls"].decode("utf-8", "replace").strip()
    if not re.fullmatch(r"\d+", text):
        raise EdgeKDError(f"shard {path}: {key}.cls holds {text[:20]!r}; it must be an integer class index 0..K-1")
    return key, fields[img_ext], img_ext, int(text)


def index_shards(pattern: str, class_names: list[str] | None = None) -> ShardStore:
    """Read every shard's headers and labels once (images are skipped, not decoded)."""
    shards = expand_shards(pattern)
    counts, labels = [], []
    for p in shards:
        n = 0
        for _key, _img, _ext, label in iter_shard(p, images=False):
            labels.append(label)
            n += 1
        if n == 0:
            raise EdgeKDError(f"shard {p} holds no samples ({{key}}.jpg|png|webp with {{key}}.cls); remove it from "
                              f"the shard list or rebuild it")
        counts.append(n)
    y = np.asarray(labels, np.int64)
    k = len(class_names) if class_names is not None else int(y.max()) + 1
    if int(y.max()) >= k:
        raise EdgeKDError(f"shards {pattern}: label {int(y.max())} is out of range; labels must be 0..{k - 1}")
    classes = list(class_names) if class_names is not None else [str(c) for c in range(k)]
    return ShardStore(shards, np.asarray(counts, np.int64), y, classes, pattern)


def write_shards(store: FileStore, out_dir: str | os.PathLike, per_shard: int = 1000, prefix: str = "shard") -> str:
    """Pack a folder or manifest's images into WebDataset tars ({key}.<ext> + {key}.cls); returns the brace pattern."""
    import io

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n_shards = max(1, -(-len(store) // per_shard))
    width = max(4, len(str(n_shards - 1)))
    for s in range(n_shards):
        with tarfile.open(out / f"{prefix}-{s:0{width}d}.tar", "w") as tf:
            for i in range(s * per_shard, min(len(store), (s + 1) * per_shard)):
                ext = Path(store.paths[i].decode()).suffix.lower().lstrip(".")
                for name, data in ((f"{i:09d}.{'jpg' if ext == 'jpeg' else ext}", store.read(i)),
                                   (f"{i:09d}.cls", str(int(store.labels[i])).encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(data)
                    tf.addfile(info, io.BytesIO(data))
    return str(out / f"{prefix}-{{{0:0{width}d}..{n_shards - 1:0{width}d}}}.tar")


__all__ = ["FileStore", "ShardStore", "expand_shards", "index_shards", "iter_shard", "read_manifest", "scan_folder",
           "split_key", "write_shards"]
