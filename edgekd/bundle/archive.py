"""One zip per target: model files with metadata, labels, model card, manifest, and app-ready layouts."""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from edgekd.bundle.card import ModelCard, card_json, card_markdown
from edgekd.bundle.metadata import LABELS_NAME, Normalization, dequantize_formula, quantize_formula
from edgekd.bundle.signing import SIGNATURE
from edgekd.errors import EdgeKDError
from edgekd.fileio import atomic_path, sha256_file
from edgekd.formats import FORMATS, Format

BUNDLE_FORMAT = "edgekd-bundle/1"
MANIFEST = "manifest.json"
_ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # fixed member times: the same inputs give the same archive bytes
_SAFE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,127}$")


@dataclass(frozen=True)
class ModelFile:
    """An exported model file to bundle, as the export stage records it."""

    name: str
    path: Path
    format: str
    precision: str
    runtime: str

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        bundled = bundle_formats()
        if self.format not in bundled:
            raise ValueError(f"model file {self.name!r}: format {self.format!r} is not one of {sorted(bundled)} "
                             "(the formats that carry bundle metadata)")
        if self.path.suffix != bundled[self.format].suffix:
            raise ValueError(f"model file {self.name!r}: path {self.path.name!r} should end in "
                             f"{bundled[self.format].suffix} for format {self.format!r}")
        if not _SAFE.match(self.name):
            raise ValueError(f"model file name {self.name!r} may only use letters, digits, '_', '.', '+', '-'")

    @property
    def arcname(self) -> str:
        suffix = FORMATS.get(self.format).suffix
        return self.name if self.name.endswith(suffix) else self.name + suffix


def make_bundle(files: Sequence[ModelFile], labels: Sequence[str], mean: Sequence[float], std: Sequence[float],
                card: ModelCard, target: str, out_path: str | Path, *, pixel_max: float = 255.0,
                signing_key: str | Path | None = None) -> Path:
    """Write the bundle zip for `target` at `out_path` (atomically) and return its path.

    With `signing_key` (an Ed25519 private key PEM), the archive also holds manifest.sig (see bundle.signing).

    Raises:
        EdgeKDError: a missing model file, labels that do not match the model output, bad names.
    """
    norm = Normalization(tuple(mean), tuple(std), pixel_max)
    labels = _check_labels(labels)
    if not _SAFE.match(target or ""):
        raise EdgeKDError(f"target name {target!r} may only use letters, digits, '_', '.', '+', '-'")
    if not files:
        raise EdgeKDError("no model files to bundle: run the export stage first (or pass files=[ModelFile(...)])")
    names = [f.arcname for f in files]
    if len(set(names)) != len(names):
        raise EdgeKDError(f"model file names collide in the bundle: {names}; give each file a unique name")
    for f in files:
        if not f.path.is_file():
            raise EdgeKDError(f"model file {f.name!r} not found at {f.path}; re-run the export stage")
    info = card.info()
    with tempfile.TemporaryDirectory(prefix="edgekd-bundle-") as tmp:
        staged: dict[str, Path] = {}
        described: list[dict[str, Any]] = []
        for f in files:
            dst = Path(tmp) / f.arcname
            fmt = FORMATS.get(f.format)
            fmt.write_metadata(f.path, dst, info, labels, norm)
            md = fmt.read_metadata(dst)
            io = {"input": md.get("input_tensor", {}), "output": md.get("output_tensor", {})}
            classes = (io.get("output", {}).get("shape") or [None])[-1]
            if isinstance(classes, int) and classes > 0 and classes != len(labels):
                raise EdgeKDError(f"{f.name}: the model outputs {classes} classes but {len(labels)} labels were "
                                  f"given; pass the labels of the data set the model was trained on")
            staged[f"models/{f.arcname}"] = dst
            described.append({"name": f.name, "path": f"models/{f.arcname}", "format": f.format,
                              "precision": f.precision, "runtime": f.runtime, "bytes": dst.stat().st_size,
                              "sha256": _sha256(dst.read_bytes()), "io": io})
        if not card.input_shape:
            shape = described[0]["io"].get("input", {}).get("shape") or []
            card.input_shape = tuple(int(d) for d in shape[1:] if isinstance(d, int))
        entries: dict[str, bytes | Path] = {LABELS_NAME: ("\n".join(labels) + "\n").encode()}
        entries.update(staged)
        for app_dir in app_layouts(card.name).values():
            for f in mobile_files(files):
                entries[f"{app_dir}/{f.arcname}"] = staged[f"models/{f.arcname}"]
            entries[f"{app_dir}/{LABELS_NAME}"] = entries[LABELS_NAME]
        cj = card_json(card, described, labels, norm, target)
        entries["model_card.json"] = (json.dumps(cj, indent=2, default=str) + "\n").encode()
        entries["model_card.md"] = card_markdown(cj).encode()
        entries["README.md"] = bundle_readme(card, target, files, norm, described).encode()
        head = {"format": BUNDLE_FORMAT, "name": card.name, "version": str(card.version), "target": target}
        return write_archive(entries, head, out_path, signing_key=signing_key)


def write_archive(entries: dict[str, bytes | Path], head: dict[str, Any], out_path: str | Path, *,
                  signing_key: str | Path | None = None) -> Path:
    """The archive every bundle kind shares: `entries` (archive name -> bytes or file), manifest.json = `head`
    (format, name, version, target, and `kind` for non-image bundles) + the sha256 and size of every entry, an
    optional Ed25519 manifest.sig, fixed member times (same inputs, same bytes); written atomically.

    Entries are read one at a time while hashing and writing, so memory stays bounded by the largest file.
    """
    for name in entries:
        if name in (MANIFEST, SIGNATURE) or name.startswith("/") or ".." in name.split("/"):
            raise EdgeKDError(f"bundle entry name {name!r} is reserved or unsafe")
    manifest = {**head, "files": {}}
    for k in sorted(entries):
        v = entries[k]
        manifest["files"][k] = ({"sha256": sha256_file(v), "bytes": v.stat().st_size} if isinstance(v, Path)
                                else {"sha256": _sha256(v), "bytes": len(v)})
    blobs: dict[str, bytes | Path] = dict(entries)
    blobs[MANIFEST] = (json.dumps(manifest, indent=2) + "\n").encode()
    if signing_key is not None:
        from edgekd.bundle.signing import sign_manifest

        blobs[SIGNATURE] = sign_manifest(blobs[MANIFEST], signing_key)
    out_path = Path(out_path)
    with atomic_path(out_path) as tmp_zip:
        with zipfile.ZipFile(tmp_zip, "w", zipfile.ZIP_DEFLATED) as zf:
            for name in [MANIFEST, "README.md"] + sorted(k for k in blobs if k not in (MANIFEST, "README.md")):
                if name not in blobs:
                    continue
                zi = zipfile.ZipInfo(name, date_time=_ZIP_TIME)
                zi.compress_type = zipfile.ZIP_DEFLATED
                zi.external_attr = 0o100644 << 16
                zi.create_system = 3
                v = blobs[name]
                if isinstance(v, Path):
                    zi.file_size = v.stat().st_size  # as writestr sets it: same header, same bytes
                    with v.open("rb") as src, zf.open(zi, "w") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                else:
                    zf.writestr(zi, v)
    return out_path


def bundle_formats() -> dict[str, Format]:
    """The registered formats a bundle can carry: those that write and read metadata, by name."""
    return {n: f for n in FORMATS if (f := FORMATS.get(n)).write_metadata and f.read_metadata}


def app_layouts(name: str) -> dict[str, str]:
    """Where model and labels go in an Android app (assets) and an iOS app (bundle resources)."""
    return {"android": f"android/app/src/main/assets/{name}", "ios": f"ios/{name}/Resources"}


def mobile_files(files: Sequence[ModelFile]) -> list[ModelFile]:
    """The files an app ships: LiteRT .tflite files (Android and iOS), else the ONNX files (ONNX Runtime Mobile)."""
    tflite = [f for f in files if f.format == "tflite"]
    return tflite or list(files)


def bundle_readme(card: ModelCard, target: str, files: Sequence[ModelFile], norm: Normalization,
                  described: list[dict[str, Any]]) -> str:
    """README.md inside the archive: contents, how to drop the layouts into apps, how to feed the model."""
    mobile = mobile_files(files)
    first = card.recommended if card.recommended in {f.name for f in mobile} else mobile[0].name
    first_file = next(f.arcname for f in mobile if f.name == first)
    quant = [d for d in described if d["io"].get("input", {}).get("scale") is not None]
    lines = [
        f"# {card.name} {card.version} for {target}", "",
        f"{card.description} Details, accuracy and latency: model_card.md (model_card.json for "
        f"scripts). Every file's sha256 and size: {MANIFEST}.", "",
        "## Contents", "",
        "- `models/`: every exported file, with metadata inside (TFLite metadata; ONNX metadata_props).",
        f"- `{LABELS_NAME}`: one label per line, in the order of the model outputs.",
        *app_instructions(card.name, first_file),
        f"- Recommended file for {target}: `{first_file}`.", "",
        "## Feeding the model", "",
        f"- Input shape {list(card.input_shape)} (C, H, W) with a batch dimension first, NCHW, as in the model file.",
        f"- Normalization: {norm.formula()}.",
        "- Output: logits, one per label; the highest is the predicted class (softmax gives probabilities).",
    ]
    for d in quant:
        i, o = d["io"]["input"], d["io"]["output"]
        lines.append(f"- `{d['path']}` has {i['dtype']} input: after normalizing, {quantize_formula(i)}; output "
                     f"{dequantize_formula(o)}. (The TFLite Task Library runs float32/uint8 inputs only; call the "
                     f"Interpreter directly for int8 files.)")
    lines += ["", "Check an archive with `edgekd.bundle.verify_bundle(path)`: checksums, metadata, one inference "
              "per model.", ""]
    return "\n".join(lines)


def app_instructions(name: str, first_file: str) -> list[str]:
    """README lines saying how the Android and iOS layouts are used, for LiteRT or ONNX Runtime Mobile files."""
    lay = app_layouts(name)
    stem, ext = Path(first_file).stem, Path(first_file).suffix[1:]
    if ext == "tflite":
        android = (f"Load with LiteRT: `Interpreter(FileUtil.loadMappedFile(context, \"{name}/{first_file}\"))`; keep "
                   f"assets uncompressed (`androidResources {{ noCompress += \"tflite\" }}`).")
        ios = "load it with the LiteRT (TensorFlowLiteSwift) `Interpreter(modelPath:)`."
    else:
        android = (f"Load with ONNX Runtime Mobile: `env.createSession(context.assets.open(\"{name}/{first_file}\")"
                   f".readBytes())`.")
        ios = "load it with ONNX Runtime Mobile (onnxruntime-objc) `ORTSession(env:modelPath:sessionOptions:)`."
    return [f"- `{lay['android']}/`: copy `android/app` over your Android app module: model and labels land in "
            f"`src/main/assets/{name}/`. {android}",
            f"- `{lay['ios']}/`: drag `ios/{name}` into your Xcode project (create folder references, target "
            f"membership on); find the file with `Bundle.main.path(forResource: \"{stem}\", ofType: \"{ext}\")` and "
            f"{ios}"]


def _check_labels(labels: Sequence[str]) -> list[str]:
    labels = [str(x) for x in labels]
    if not labels:
        raise EdgeKDError("labels are empty; pass the data set's class names in output order")
    bad = [x for x in labels if not x.strip() or "\n" in x or "\r" in x]
    if bad:
        raise EdgeKDError(f"labels must be non-empty single-line strings; bad: {bad[:5]}")
    if len(set(labels)) != len(labels):
        dup = sorted({x for x in labels if labels.count(x) > 1})
        raise EdgeKDError(f"labels must be unique; repeated: {dup}")
    return labels


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
