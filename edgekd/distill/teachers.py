"""Teachers: one small interface over a torch module, a TorchScript file, an ONNX file and a weighted ensemble.

Every teacher gives logits without gradients in eval mode and a fingerprint (sha256 of weights or file bytes)
that keys the teacher-logit cache. Only a torch module teacher can give intermediate features.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import Tensor, nn

from edgekd.errors import EdgeKDError
from edgekd.fileio import sha256_file
from edgekd.registry import Registry

TEACHER_KINDS: Registry[Callable[[dict], "Teacher"]] = Registry("teacher kind")


class Teacher:
    """Base of all teachers: `logits(x)` without gradients in eval mode, `fingerprint()` for the cache."""

    supports_features = False
    kind = "teacher"

    def logits(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def forward_with_features(self, x: Tensor, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        """Logits and the outputs of the named submodules; only torch module teachers support it."""
        raise EdgeKDError(f"a {self.kind} teacher gives logits only, but a feature loss (hint, attention, rkd, sp) "
                          f"needs teacher features {list(names)}: use a torch teacher "
                          f"({{'kind': 'torch', 'model': ..., 'weights': ...}}) or only logit losses")

    def fingerprint(self) -> str:
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        return self.logits(x)


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 over the class name and every state_dict entry (name, dtype, shape, bytes) in name order."""
    h = hashlib.sha256(type(module).__qualname__.encode())
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class TorchTeacher(Teacher):
    """A torch nn.Module teacher; supports feature taps on its named submodules."""

    supports_features = True
    kind = "torch"

    def __init__(self, module: nn.Module):
        if not isinstance(module, nn.Module):
            raise EdgeKDError(f"TorchTeacher needs an nn.Module, got {type(module).__name__}")
        self.module = module

    def _device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        with _eval_mode(self.module):
            return self.module(x.to(self._device()))

    @torch.no_grad()
    def forward_with_features(self, x: Tensor, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        from edgekd.distill.features import FeatureTap

        with _eval_mode(self.module), FeatureTap(self.module, names) as tap:
            return tap.run(self.module, x.to(self._device()))

    def fingerprint(self) -> str:
        return state_dict_sha256(self.module)


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Run in eval mode and restore the previous mode, so a module shared with training is left as it was."""
    was_training = module.training
    module.eval()
    try:
        yield
    finally:
        module.train(was_training)


class TorchScriptTeacher(Teacher):
    """A TorchScript file run with torch.jit.load (logits only)."""

    kind = "torchscript"

    def __init__(self, path: str | Path):
        self.path = _existing_file(path, "torchscript teacher")
        try:
            self.module = torch.jit.load(str(self.path), map_location="cpu").eval()
        except Exception as e:  # torch raises RuntimeError/ValueError variants for non-TorchScript files
            raise EdgeKDError(f"cannot load TorchScript teacher {self.path}: {str(e).splitlines()[0]}; "
                              f"save it with torch.jit.save(torch.jit.script(model), path)") from e
        self._sha = sha256_file(self.path)

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        return self.module(x)

    def fingerprint(self) -> str:
        return self._sha


class OnnxTeacher(Teacher):
    """An ONNX file run as a black box in onnxruntime (first output = logits; logits only)."""

    kind = "onnx"

    def __init__(self, path: str | Path, threads: int = 1):
        from edgekd.runtimes import open_session

        self.path = _existing_file(path, "onnx teacher")
        self.session = open_session(self.path, "onnxruntime", threads=threads)
        self._sha = sha256_file(self.path)

    def logits(self, x: Tensor) -> Tensor:
        out = self.session.run(x.detach().cpu().numpy())
        return torch.from_numpy(out).to(x.device)

    def fingerprint(self) -> str:
        return self._sha


class EnsembleTeacher(Teacher):
    """Weighted average of member teachers' logits: sum_i w_i z_i / sum_i w_i.

    Averaging logits (not probabilities) keeps the result a logit tensor that temperatures, standardization and
    top-k caching treat like any single teacher's; at T = 1 it is a normalized weighted geometric mean of the
    members' probabilities (a product of experts), sharper than the arithmetic mean where members agree.
    """

    kind = "ensemble"

    def __init__(self, members: Sequence[tuple[Teacher, float]]):
        if not members:
            raise EdgeKDError("an ensemble teacher needs at least one (teacher, weight) member")
        for i, member in enumerate(members):
            if not (isinstance(member, (tuple, list)) and len(member) == 2 and isinstance(member[0], Teacher)):
                raise EdgeKDError(f"ensemble member {i} must be a (Teacher, weight) pair, got {member!r}")
            w = member[1]
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w) or w <= 0:
                raise EdgeKDError(f"ensemble member {i} weight must be a finite number > 0, got {w!r}")
        total = sum(float(w) for _, w in members)
        self.members = [(t, float(w) / total) for t, w in members]

    def logits(self, x: Tensor) -> Tensor:
        out = None
        for teacher, w in self.members:
            z = teacher.logits(x).float()
            if out is not None and z.shape != out.shape:
                raise EdgeKDError(f"ensemble members disagree on the logits' shape: {tuple(out.shape)} vs "
                                  f"{tuple(z.shape)}; all members must predict the same classes")
            out = w * z if out is None else out + w * z
        return out

    def fingerprint(self) -> str:
        payload = [[t.fingerprint(), round(w, 12)] for t, w in self.members]
        return hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def _existing_file(path: Any, what: str) -> Path:
    if not isinstance(path, (str, Path)) or not str(path):
        raise EdgeKDError(f"{what} needs a file path, got {path!r}")
    p = Path(path).expanduser()
    if not p.is_file():
        raise EdgeKDError(f"{what} file not found: {p}")
    return p


def load_state_dict_file(module: nn.Module, path: str | Path) -> nn.Module:
    """Load teacher weights: a raw state_dict, a checkpoint with a 'model'/'state_dict' entry, or an edgekd model file.

    Uses torch.load(weights_only=True). A missing/unexpected key or shape mismatch fails naming the first bad key.
    """
    from edgekd.models.io import load_weights

    return load_weights(module, path, what="teacher weights")


def _check_spec(spec: Any, required: Sequence[str], optional: Sequence[str]) -> dict:
    if not isinstance(spec, dict):
        raise EdgeKDError(f"a teacher spec must be a mapping with a 'kind', got {spec!r}")
    kind = spec.get("kind")
    missing = [k for k in required if k not in spec]
    unknown = [k for k in spec if k not in ("kind", "weight", *required, *optional)]
    if missing or unknown:
        raise EdgeKDError(f"teacher kind {kind!r}: " + "; ".join(
            ([f"missing {', '.join(map(repr, missing))}"] if missing else [])
            + ([f"unknown field(s) {', '.join(map(repr, unknown))}"] if unknown else []))
            + f" (fields: {', '.join(['kind', *required, *optional])})")
    return spec


@TEACHER_KINDS.register("torch")
def _torch_teacher(spec: dict) -> Teacher:
    from edgekd.models import build_model

    _check_spec(spec, ["model"], ["kwargs", "weights"])
    if not isinstance(spec["model"], str):
        raise EdgeKDError(f"torch teacher 'model' must be a zoo name or 'package.module:Callable', got "
                          f"{spec['model']!r}")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise EdgeKDError(f"torch teacher 'kwargs' must be a mapping, got {kwargs!r}")
    module = build_model(spec["model"], **kwargs)
    if spec.get("weights") is not None:
        load_state_dict_file(module, spec["weights"])
    return TorchTeacher(module)


@TEACHER_KINDS.register("torchscript")
def _torchscript_teacher(spec: dict) -> Teacher:
    return TorchScriptTeacher(_check_spec(spec, ["path"], [])["path"])


@TEACHER_KINDS.register("onnx")
def _onnx_teacher(spec: dict) -> Teacher:
    return OnnxTeacher(_check_spec(spec, ["path"], ["threads"])["path"], threads=spec.get("threads", 1))


@TEACHER_KINDS.register("ensemble")
def _ensemble_teacher(spec: dict) -> Teacher:
    members = _check_spec(spec, ["members"], [])["members"]
    if not isinstance(members, list) or not members:
        raise EdgeKDError(f"ensemble teacher 'members' must be a non-empty list of teacher specs, got {members!r}")
    built = []
    for i, member in enumerate(members):
        if not isinstance(member, dict):
            raise EdgeKDError(f"ensemble member {i} must be a teacher spec mapping, got {member!r}")
        built.append((load_teacher({k: v for k, v in member.items() if k != "weight"}), member.get("weight", 1.0)))
    return EnsembleTeacher(built)


def as_teacher(obj: "Teacher | nn.Module | dict") -> Teacher:
    """Accept a Teacher, a plain nn.Module (wrapped as TorchTeacher) or a spec dict (load_teacher)."""
    if isinstance(obj, Teacher):
        return obj
    if isinstance(obj, nn.Module):
        return TorchTeacher(obj)
    if isinstance(obj, dict):
        return load_teacher(obj)
    raise EdgeKDError(f"cannot use {type(obj).__name__} as a teacher: give a Teacher, an nn.Module or a spec dict")


def load_teacher(spec: dict) -> Teacher:
    """Build a teacher from a recipe spec: {"kind": "torch" | "torchscript" | "onnx" | "ensemble", ...}.

    torch: {"model": zoo name or "pkg.mod:Callable", "kwargs": {...}, "weights": path (optional)};
    torchscript / onnx: {"path": file}; ensemble: {"members": [{...teacher spec..., "weight": w}, ...]}.
    """
    if not isinstance(spec, dict) or "kind" not in spec:
        raise EdgeKDError(f"a teacher spec needs 'kind' (one of {', '.join(TEACHER_KINDS.names())}), got {spec!r}")
    return TEACHER_KINDS.get(spec["kind"])(spec)


__all__ = ["EnsembleTeacher", "OnnxTeacher", "TEACHER_KINDS", "Teacher", "TorchScriptTeacher", "TorchTeacher",
           "as_teacher", "load_state_dict_file", "load_teacher", "state_dict_sha256"]
