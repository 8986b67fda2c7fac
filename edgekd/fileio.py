"""Atomic writes and checksums: a killed process never leaves a half-written file under its final name."""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is renamed onto `path`, on error removed."""
    from edgekd.errors import EdgeKDError

    final = Path(path)
    if final.is_dir():
        raise EdgeKDError(f"{final} is a folder; give a file path to write (e.g. {final / 'model'}{final.suffix})")
    if final.parent.exists() and not final.parent.is_dir():
        raise EdgeKDError(f"cannot write {final}: {final.parent} is a file, not a folder")
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; finished files get the usual mode
        os.replace(tmp_path, final)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def existing_model_file(path: str | os.PathLike) -> Path:
    """`path` as a Path, or EdgeKDError when it is not a file ("model file not found: PATH") or is empty."""
    from edgekd.errors import EdgeKDError

    path = Path(path)
    if not path.is_file():
        raise EdgeKDError(f"model file not found: {path}")
    if path.stat().st_size == 0:
        raise EdgeKDError(f"model file is empty (0 bytes): {path}; it was not written completely, write it again")
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON: NaN and infinities are written as null (bare NaN is not JSON, and strict readers reject it)."""
    return write_text(path, json.dumps(finite(obj), indent=2, sort_keys=False, default=str, allow_nan=False) + "\n")


def finite(obj: Any) -> Any:
    """`obj` with every non-finite float (NaN, inf) replaced by None, through dicts, lists and tuples."""
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """torch.save through a temporary file, renamed into place; the same object gives the same bytes.

    torch.save given a path names the zip records after the file (here the random temporary name); given an open
    file it names them "archive/...", so sha256 identifies the content whatever the file is called.
    """
    import torch

    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.save(obj, f)
    return Path(path)
