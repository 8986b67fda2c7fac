"""Check a bundle: checksums against the manifest, metadata read back, every model loaded and run once."""
from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from edgekd.bundle.archive import BUNDLE_FORMAT, MANIFEST, bundle_formats
from edgekd.bundle.metadata import LABELS_NAME
from edgekd.bundle.safe_zip import ExtractLimits, member_problems, safe_extract
from edgekd.errors import EdgeKDError
from edgekd.formats import format_for, open_session


@dataclass
class BundleReport:
    """What verify_bundle found: per-file checks, metadata read back, model runs, and every problem."""

    archive: Path
    name: str | None = None
    target: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line per model run plus a verdict line (for the CLI)."""
        lines = [f"{self.archive.name}: {self.name or '?'} for {self.target or '?'}; {len(self.files)} files match "
                 f"the manifest; metadata read back from {len(self.metadata)} model(s)"]
        for m in self.models:
            lines.append(f"  {m['name']:<40} {m.get('runtime', '?'):<12} "
                         f"{'ran ' + str(m.get('input_shape')) + ' -> ' + str(m.get('output_shape')) if m.get('ok') else 'FAILED'}")
        lines.append("ok" if self.ok else f"{len(self.problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in self.problems))
        return "\n".join(lines)

    def raise_for_problems(self) -> "BundleReport":
        if self.problems:
            raise EdgeKDError(f"bundle {self.archive.name} failed verification ({len(self.problems)} problem(s)):\n"
                              + "\n".join(f"  - {p}" for p in self.problems))
        return self


def verify_bundle(archive_path: str | Path, *, run_models: bool = True, strict: bool = True,
                  limits: ExtractLimits = ExtractLimits()) -> BundleReport:
    """Verify a bundle zip; with strict (default) any problem raises EdgeKDError listing all of them, one per line."""
    report = BundleReport(Path(archive_path))
    _check(report, run_models, limits)
    return report.raise_for_problems() if strict else report


def _check(report: BundleReport, run_models: bool, limits: ExtractLimits) -> None:
    path = report.archive
    if not path.is_file():
        report.problems.append(f"archive not found: {path}")
        return
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        report.problems.append(f"{path.name} is not a readable zip archive ({e}): truncated or not a bundle")
        return
    with zf:
        infos = zf.infolist()
        unsafe = member_problems(infos, limits)
        if unsafe:
            report.problems.extend(unsafe)
            return
        blobs: dict[str, bytes] = {}
        for info in infos:
            if info.is_dir():
                continue
            try:
                blobs[info.filename] = _read_member(zf, info, limits)
            except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, EdgeKDError) as e:
                report.problems.append(f"member {info.filename!r} cannot be read back ({e}): corrupt or tampered")
    manifest = _manifest(report, blobs)
    if manifest is None:
        return
    listed = manifest.get("files", {})
    for name, blob in sorted(blobs.items()):
        if name == MANIFEST:
            continue
        digest = hashlib.sha256(blob).hexdigest()
        entry = listed.get(name)
        ok = isinstance(entry, dict) and entry.get("sha256") == digest and entry.get("bytes") == len(blob)
        report.files[name] = {"sha256": digest, "bytes": len(blob), "ok": ok}
        if entry is None:
            report.problems.append(f"{name}: in the archive but not in {MANIFEST} (extra file)")
        elif not ok:
            report.problems.append(f"{name}: sha256/size differ from {MANIFEST} ({len(blob)} B, {digest[:12]}... vs "
                                   f"{entry.get('bytes')} B, {str(entry.get('sha256'))[:12]}...): tampered or replaced")
    unreadable = {i.filename for i in infos} - set(blobs)
    for name in sorted(set(listed) - set(blobs) - unreadable):
        report.problems.append(f"{name}: listed in {MANIFEST} but missing from the archive")
    labels = blobs.get(LABELS_NAME, b"").decode(errors="replace").splitlines()
    if LABELS_NAME not in blobs:
        report.problems.append(f"{LABELS_NAME} is missing")
    suffixes = tuple(f.suffix for f in bundle_formats().values())
    models = sorted(n for n in blobs if n.startswith("models/") and n.lower().endswith(suffixes))
    if not models:
        report.problems.append("no model files under models/")
    for name in models:
        _check_metadata(report, name, blobs[name], labels, manifest)
    if run_models and models and not report.problems:
        _run_models(report, models, labels, limits)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ExtractLimits) -> bytes:
    out = bytearray()
    with zf.open(info) as f:
        while block := f.read(1 << 16):
            out += block
            if len(out) > min(info.file_size, limits.max_member_bytes):
                raise EdgeKDError("decompresses past its declared size (zip bomb?)")
    return bytes(out)


def _manifest(report: BundleReport, blobs: dict[str, bytes]) -> dict[str, Any] | None:
    if MANIFEST not in blobs:
        report.problems.append(f"{MANIFEST} is missing: not an edgekd bundle, or damaged")
        return None
    try:
        manifest = json.loads(blobs[MANIFEST])
    except ValueError as e:
        report.problems.append(f"{MANIFEST} is not valid JSON ({e})")
        return None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        report.problems.append(f"{MANIFEST} has no 'files' mapping")
        return None
    if manifest.get("format") != BUNDLE_FORMAT:
        report.problems.append(f"{MANIFEST} format is {manifest.get('format')!r}; expected {BUNDLE_FORMAT!r}")
    report.name, report.target = manifest.get("name"), manifest.get("target")
    return manifest


def _check_metadata(report: BundleReport, name: str, blob: bytes, labels: list[str], manifest: dict) -> None:
    try:
        md = format_for(name).read_metadata(blob)
    except EdgeKDError as e:
        report.problems.append(f"{name}: {e}")
        return
    report.metadata[name] = md
    meta_labels = md.get("labels") or []
    if meta_labels != labels:
        diff = next((f"#{i}: {a!r} vs {b!r}" for i, (a, b) in enumerate(zip(meta_labels, labels)) if a != b),
                    f"{len(meta_labels)} vs {len(labels)} labels")
        report.problems.append(f"{name}: labels in the model metadata differ from {LABELS_NAME} ({diff})")
    if not md.get("norm_mean") or not md.get("norm_std"):
        report.problems.append(f"{name}: metadata has no normalization (mean/std)")
    if md.get("name") != manifest.get("name"):
        report.problems.append(f"{name}: metadata names the model {md.get('name')!r}, the manifest "
                               f"{manifest.get('name')!r}")


def _run_models(report: BundleReport, models: list[str], labels: list[str], limits: ExtractLimits) -> None:
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory(prefix="edgekd-verify-") as tmp:
        root = Path(tmp) / "bundle"
        try:
            safe_extract(report.archive, root, limits)
        except EdgeKDError as e:
            report.problems.append(str(e))
            return
        for name in models:
            row: dict[str, Any] = {"name": name, "ok": False}
            report.models.append(row)
            try:
                session = open_session(root.joinpath(*PurePosixPath(name).parts))
                shape = tuple(d if d > 0 else 1 for d in session.input_shape)
                y = session.run(rng.standard_normal(shape).astype(np.float32))
            except EdgeKDError as e:
                report.problems.append(f"{name}: {e}")
                continue
            except Exception as e:  # a runtime's own error types: report, keep checking the others
                report.problems.append(f"{name}: inference failed ({type(e).__name__}: {str(e).splitlines()[0]})")
                continue
            row.update(runtime=session.runtime, input_shape=list(shape), output_shape=list(y.shape))
            if y.shape[-1] != len(labels):
                report.problems.append(f"{name}: output has {y.shape[-1]} classes, {LABELS_NAME} {len(labels)}")
            elif not np.all(np.isfinite(y)):
                report.problems.append(f"{name}: output has NaN or inf on a random input")
            else:
                row["ok"] = True
