"""Extract a zip without trusting it: no path traversal, absolute names, links, duplicates or zip bombs.

Everything is checked before anything is written; members are then streamed into a fresh temporary folder beside
`dest` while counting the bytes actually decompressed, and that folder is renamed onto `dest` only when all
members came out whole. A rejected archive therefore leaves nothing at `dest` and nothing outside it.
"""
from __future__ import annotations

import os
import shutil
import stat
import tempfile
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from edgekd.errors import EdgeKDError

_CHUNK = 1 << 16


@dataclass(frozen=True)
class ExtractLimits:
    """Caps on what an archive may unpack to (bytes are decompressed sizes, counted as they are written)."""

    max_member_bytes: int = 512 * 2**20
    max_total_bytes: int = 2 * 2**30
    max_members: int = 10_000

    def __post_init__(self) -> None:
        for name in ("max_member_bytes", "max_total_bytes", "max_members"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")


def member_problems(infos: list[zipfile.ZipInfo], limits: ExtractLimits = ExtractLimits()) -> list[str]:
    """Every reason not to extract these members, judged from the central directory alone."""
    problems: list[str] = []
    if len(infos) > limits.max_members:
        problems.append(f"archive has {len(infos)} members; the limit is {limits.max_members}")
    seen: dict[str, str] = {}
    total = 0
    for info in infos:
        name = info.filename
        why = unsafe_name(name)
        if why:
            problems.append(f"member {name!r}: {why}")
            continue
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if kind == stat.S_IFLNK:
            problems.append(f"member {name!r} is a symbolic link; links are not extracted")
        elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            problems.append(f"member {name!r} is a special file (mode {oct(mode)}); only files and folders are allowed")
        if info.flag_bits & 0x1:
            problems.append(f"member {name!r} is encrypted; encrypted archives are not supported")
        key = str(PurePosixPath(name)).rstrip("/").lower()
        if key in seen:
            problems.append(f"member {name!r} duplicates {seen[key]!r}; names must be unique (case-insensitive)")
        seen.setdefault(key, name)
        if info.file_size > limits.max_member_bytes:
            problems.append(f"member {name!r} declares {info.file_size} bytes; the per-member limit is "
                            f"{limits.max_member_bytes}")
        total += info.file_size
    if total > limits.max_total_bytes:
        problems.append(f"archive declares {total} bytes in all; the limit is {limits.max_total_bytes}")
    return problems


def unsafe_name(name: str) -> str | None:
    """Why a member name could land outside the destination (or be ambiguous), or None when it is safe."""
    if not name or name in (".", "./"):
        return "empty name"
    if "\x00" in name:
        return "name contains a NUL byte"
    if "\\" in name:
        return "name contains a backslash (a Windows path separator); use '/'"
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    parts = PurePosixPath(name).parts
    if ".." in parts:
        return "path traversal ('..' component)"
    if any(p in ("", ".") for p in name.rstrip("/").split("/")):
        return "name has empty or '.' components"
    return None


def safe_extract(archive: str | Path, dest: str | Path, limits: ExtractLimits = ExtractLimits()) -> list[Path]:
    """Extract `archive` into `dest` (which must not exist, or be an empty folder); returns the files written.

    Raises:
        EdgeKDError: listing every problem, one per line, when the archive is unreadable or unsafe.
    """
    archive, dest = Path(archive), Path(dest)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise EdgeKDError(f"extraction target {dest} exists and is not an empty folder; give a new path")
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise EdgeKDError(f"{archive.name} is not a readable zip archive ({e})") from e
    with zf:
        infos = zf.infolist()
        problems = member_problems(infos, limits)
        if problems:
            raise EdgeKDError(f"refusing to extract {archive.name}:\n" + "\n".join(f"  - {p}" for p in problems))
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".extract", dir=dest.parent))
        try:
            written = _extract_all(zf, infos, staging, limits)
            if dest.exists():
                dest.rmdir()
            os.replace(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return [dest / p.relative_to(staging) for p in written]


def _extract_all(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], root: Path, limits: ExtractLimits) -> list[Path]:
    root_real = root.resolve()
    total = 0
    written = []
    for info in infos:
        target = root.joinpath(*PurePosixPath(info.filename).parts)
        if not target.resolve().is_relative_to(root_real):  # belt and braces over unsafe_name
            raise EdgeKDError(f"refusing to extract {info.filename!r}: it resolves outside the destination")
        if info.is_dir():
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        size = 0
        try:
            with zf.open(info) as src, open(target, "xb") as out:
                while block := src.read(_CHUNK):
                    size += len(block)
                    total += len(block)
                    if size > min(limits.max_member_bytes, info.file_size):
                        raise EdgeKDError(f"refusing to extract {info.filename!r}: it decompresses to more than "
                                          f"its declared {info.file_size} bytes or the member limit (zip bomb?)")
                    if total > limits.max_total_bytes:
                        raise EdgeKDError(f"refusing to extract: members decompress to more than "
                                          f"{limits.max_total_bytes} bytes in all (zip bomb?)")
                    out.write(block)
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError) as e:
            raise EdgeKDError(f"member {info.filename!r} is corrupt ({e}); the archive is damaged or tampered with") from e
        written.append(target)
    return written
