"""Check a bundle: checksums against the manifest, metadata read back, every model loaded and run once."""
from __future__ import annotations

import hashlib
import json
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Callable

import numpy as np

from edgekd.bundle.archive import BUNDLE_FORMAT, MANIFEST, bundle_formats
from edgekd.bundle.metadata import LABELS_NAME
from edgekd.bundle.safe_zip import ExtractLimits, member_problems, safe_extract
from edgekd.bundle.signing import SIGNATURE, check_signature
from edgekd.errors import EdgeKDError
from edgekd.formats import format_for, open_session


@dataclass
class BundleReport:
    """What verify_bundle found: per-file checks, signature, metadata read back, model runs, and every problem."""

    archive: Path
    name: str | None = None
    target: str | None = None
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)
    signature: str = "unsigned"   # "unsigned" | "signed, not checked" | "valid" | "invalid"
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        """One line per model run, the signature's state, and a verdict line (for the CLI)."""
        lines = [f"{self.archive.name}: {self.name or '?'} for {self.target or '?'}; {len(self.files)} files match "
                 f"the manifest; metadata read back from {len(self.metadata)} model(s)"]
        for m in self.models:
            lines.append(f"  {m['name']:<40} {m.get('runtime', '?'):<12} "
                         f"{'ran ' + str(m.get('input_shape')) + ' -> ' + str(m.get('output_shape')) if m.get('ok') else 'FAILED'}")
        lines.append(f"signature: {self.signature}" + {
            "unsigned": " (checksums catch damage, not tampering: sign with --sign-key, check with --key)",
            "signed, not checked": " (pass --key PUBLIC.pem to check who signed it)"}.get(self.signature, ""))
        lines.append("ok" if self.ok else f"{len(self.problems)} problem(s):\n" + "\n".join(f"  - {p}" for p in self.problems))
        return "\n".join(lines)

    def raise_for_problems(self) -> "BundleReport":
        if self.problems:
            raise EdgeKDError(f"bundle {self.archive.name} failed verification ({len(self.problems)} problem(s)):\n"
                              + "\n".join(f"  - {p}" for p in self.problems))
        return self


# Members kept in memory while checking: the manifest, its signature and the labels. Everything else is hashed in
# chunks straight from the archive, so memory stays bounded by one model file (read back for its metadata).
_SMALL_MEMBERS = (MANIFEST, SIGNATURE, LABELS_NAME)
_SMALL_MAX = 16 * 2**20
_CHUNK = 1 << 20


def verify_bundle(archive_path: str | Path, *, run_models: bool = True, strict: bool = True,
                  key: str | Path | None = None, limits: ExtractLimits = ExtractLimits()) -> BundleReport:
    """Verify a bundle zip; with strict (default) any problem raises EdgeKDError listing all of them, one per line.

    key: an Ed25519 public key PEM; the archive must then carry a valid manifest.sig made with its private half.
    """
    report = BundleReport(Path(archive_path))
    _check(report, run_models, limits, key)
    return report.raise_for_problems() if strict else report


def _check(report: BundleReport, run_models: bool, limits: ExtractLimits, key: str | Path | None) -> None:
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
        infos = [i for i in zf.infolist() if not i.is_dir()]
        unsafe = member_problems(zf.infolist(), limits)
        if unsafe:
            report.problems.extend(unsafe)
            return
        digests, small = _hash_members(report, zf, infos, limits)
        manifest = _manifest(report, small)
        if manifest is None:
            return
        _check_signature(report, small, key)
        _compare_manifest(report, manifest, digests, {i.filename for i in infos})
        kind = bundle_kind(report, manifest)
        if kind is None:
            return
        state = kind.check_members(report, zf, digests, small, manifest, limits)
    if run_models and state and not report.problems:
        with tempfile.TemporaryDirectory(prefix="edgekd-verify-") as tmp:
            root = Path(tmp) / "bundle"
            try:
                safe_extract(report.archive, root, limits)
            except EdgeKDError as e:
                report.problems.append(str(e))
                return
            kind.run_models(report, root, state)


@dataclass(frozen=True)
class BundleKind:
    """What a bundle of one kind (manifest `kind`) must hold beyond the shared manifest, checksums and signature.

    check_members(report, zf, digests, small, manifest, limits) -> state | None: checks the members inside the
    open zip (appending to report.problems); a falsy state means there is nothing to run.
    run_models(report, root, state): runs the models of the archive safely extracted at `root`.
    """

    check_members: Callable[..., Any]
    run_models: Callable[[BundleReport, Path, Any], None]


IMAGE_KIND = "image_classifier"  # bundles whose manifest has no `kind` (the first bundle format) are this kind
_KINDS: dict[str, BundleKind] = {}
_KIND_MODULES = {"causal_lm": "edgekd.lm.bundle"}  # registers on import; loaded only for such an archive


def register_bundle_kind(name: str, kind: BundleKind) -> BundleKind:
    _KINDS[name] = kind
    return kind


def bundle_kind(report: BundleReport, manifest: dict[str, Any]) -> BundleKind | None:
    """The checks for the manifest's `kind`; an unknown kind is a problem (listing the known ones)."""
    name = manifest.get("kind") or IMAGE_KIND
    if name not in _KINDS and name in _KIND_MODULES:
        import importlib

        importlib.import_module(_KIND_MODULES[name])
    if name not in _KINDS:
        known = sorted({*_KINDS, *_KIND_MODULES})
        report.problems.append(f"{MANIFEST} kind {name!r} unknown; known: {', '.join(known)}")
        return None
    return _KINDS[name]


def _check_image_members(report: BundleReport, zf: zipfile.ZipFile, digests: dict[str, tuple[str, int]],
                         small: dict[str, bytes], manifest: dict[str, Any], limits: ExtractLimits):
    labels = small.get(LABELS_NAME, b"").decode(errors="replace").splitlines()
    if LABELS_NAME not in small:
        report.problems.append(f"{LABELS_NAME} is missing")
    suffixes = tuple(f.suffix for f in bundle_formats().values())
    models = sorted(n for n in digests if n.startswith("models/") and n.lower().endswith(suffixes))
    if not models:
        report.problems.append("no model files under models/")
    for name in models:  # one model in memory at a time
        _check_metadata(report, name, _read_member(zf, zf.getinfo(name), limits), labels, manifest)
    return (models, labels) if models else None


def _hash_members(report: BundleReport, zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo], limits: ExtractLimits
                  ) -> tuple[dict[str, tuple[str, int]], dict[str, bytes]]:
    """sha256 and size of every readable member, streamed; the bytes of the few small members checks need."""
    digests: dict[str, tuple[str, int]] = {}
    small: dict[str, bytes] = {}
    for info in infos:
        h, size, keep = hashlib.sha256(), 0, info.filename in _SMALL_MEMBERS
        kept = bytearray()
        try:
            with zf.open(info) as f:
                while block := f.read(_CHUNK):
                    size += len(block)
                    if size > min(info.file_size, limits.max_member_bytes):
                        raise EdgeKDError("decompresses past its declared size (zip bomb?)")
                    h.update(block)
                    if keep:
                        if size > _SMALL_MAX:
                            raise EdgeKDError(f"is over {_SMALL_MAX >> 20} MiB, too large for a {info.filename}")
                        kept += block
        except (zipfile.BadZipFile, EOFError, zlib.error, NotImplementedError, EdgeKDError) as e:
            report.problems.append(f"member {info.filename!r} cannot be read back ({e}): corrupt or tampered")
            continue
        digests[info.filename] = (h.hexdigest(), size)
        if keep:
            small[info.filename] = bytes(kept)
    return digests, small


def _compare_manifest(report: BundleReport, manifest: dict[str, Any], digests: dict[str, tuple[str, int]],
                      members: set[str]) -> None:
    listed = manifest.get("files", {})
    for name, (digest, size) in sorted(digests.items()):
        if name in (MANIFEST, SIGNATURE):
            continue
        entry = listed.get(name)
        ok = isinstance(entry, dict) and entry.get("sha256") == digest and entry.get("bytes") == size
        report.files[name] = {"sha256": digest, "bytes": size, "ok": ok}
        if entry is None:
            report.problems.append(f"{name}: in the archive but not in {MANIFEST} (extra file)")
        elif not ok:
            report.problems.append(f"{name}: sha256/size differ from {MANIFEST} ({size} B, {digest[:12]}... vs "
                                   f"{entry.get('bytes')} B, {str(entry.get('sha256'))[:12]}...): tampered or replaced")
    unreadable = members - set(digests)
    for name in sorted(set(listed) - set(digests) - unreadable):
        report.problems.append(f"{name}: listed in {MANIFEST} but missing from the archive")


def _check_signature(report: BundleReport, small: dict[str, bytes], key: str | Path | None) -> None:
    signature = small.get(SIGNATURE)
    if key is None:
        report.signature = "unsigned" if signature is None else "signed, not checked"
        return
    if signature is None:
        report.signature = "invalid"
        report.problems.append(f"{SIGNATURE} is missing: the archive is unsigned, but a key was given to check it")
        return
    problem = check_signature(small[MANIFEST], signature, key)
    report.signature = "valid" if problem is None else "invalid"
    if problem:
        report.problems.append(problem)


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limits: ExtractLimits) -> bytes:
    out = bytearray()
    with zf.open(info) as f:
        while block := f.read(_CHUNK):
            out += block
            if len(out) > min(info.file_size, limits.max_member_bytes):
                raise EdgeKDError("decompresses past its declared size (zip bomb?)")
    return bytes(out)


def _manifest(report: BundleReport, small: dict[str, bytes]) -> dict[str, Any] | None:
    if MANIFEST not in small:
        report.problems.append(f"{MANIFEST} is missing: not an edgekd bundle, or damaged")
        return None
    try:
        manifest = json.loads(small[MANIFEST])
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


def _run_image_models(report: BundleReport, root: Path, state: tuple[list[str], list[str]]) -> None:
    models, labels = state
    rng = np.random.default_rng(0)
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


register_bundle_kind(IMAGE_KIND, BundleKind(_check_image_members, _run_image_models))
