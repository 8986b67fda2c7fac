"""Teachers: one small interface over a torch module, TorchScript, ONNX and Keras files, and a weighted ensemble.

Every teacher gives logits without gradients in eval mode and a fingerprint (sha256 of weights or file bytes)
that keys the teacher-logit cache. Only a torch module teacher can give intermediate features.

A teacher always receives the data's normalized NCHW batch, on the training device. `place(device, dtype)` puts a torch
teacher on the training device and runs it in `torch.inference_mode` under autocast `dtype` (half precision on
CUDA); file teachers (TorchScript, ONNX, Keras) run on the CPU and hand their logits back on the batch's device. A loaded teacher that expects another normalization
declares it (spec `mean`/`std`, pixel scale or "imagenet"): `load_teacher(spec, data=ds)` then wraps it in a
`RenormalizedTeacher` that converts the batch first. A Keras teacher gets NHWC when its model wants channels-last.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np
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

    def place(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """Where a torch teacher runs and in what autocast dtype (None: fp32); file teachers run on the CPU."""

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
        self.dtype: torch.dtype | None = None  # autocast dtype while training places it (None: fp32)

    def _device(self) -> torch.device:
        p = next(self.module.parameters(), None)
        return p.device if p is not None else torch.device("cpu")

    def place(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        """Move the module to `device` and run it under autocast `dtype` (its weights stay fp32, so its
        fingerprint and a saved teacher do not change)."""
        self.module.to(device)
        self.dtype = dtype

    def _inference(self, device: torch.device) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        stack.enter_context(_eval_mode(self.module))
        stack.enter_context(torch.inference_mode())
        if self.dtype is not None:
            stack.enter_context(torch.autocast(device.type, dtype=self.dtype))
        return stack

    def logits(self, x: Tensor) -> Tensor:
        device = self._device()
        with self._inference(device):
            out = self.module(x.to(device))
        return _usable(out)

    def forward_with_features(self, x: Tensor, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        from edgekd.distill.features import FeatureTap

        device = self._device()
        with FeatureTap(self.module, names) as tap, self._inference(device):
            logits, feats = tap.run(self.module, x.to(device))
        return _usable(logits), {k: _usable(v) for k, v in feats.items()}

    def fingerprint(self) -> str:
        return state_dict_sha256(self.module)


def _usable(t: Tensor) -> Tensor:
    """An fp32 tensor autograd may save: inference-mode outputs are copied once outside inference mode."""
    return t.float().clone() if t.is_inference() or t.dtype != torch.float32 else t


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
        return self.module(x.cpu()).to(x.device)

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
        shape = "x".join(map(str, x.shape[1:]))
        try:
            out = self.session.run(x.detach().cpu().numpy())
        except EdgeKDError as e:  # the session's own check: the file's input shape against the data's
            raise EdgeKDError(f"onnx teacher {self.path.name} cannot run on the data's images of shape {shape} "
                              f"(C x H x W): {e}") from e
        except Exception as e:  # onnxruntime's InvalidArgument/Fail carry the shape it expected
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise EdgeKDError(f"onnx teacher {self.path.name} cannot run on the data's images of shape "
                              f"{shape} (C x H x W): {first}; export the teacher for "
                              f"this input size and channel count, or resize the data") from e
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

    def place(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        for teacher, _ in self.members:
            teacher.place(device, dtype)

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


class KerasTeacher(Teacher):
    """A Keras model file (.keras / .h5) or a TensorFlow SavedModel folder run as a black box (logits only).

    The data's NCHW batch is transposed to NHWC when the model's input is channels-last (layout "auto" reads the
    model's input shape; "nhwc"/"nchw" force it). outputs "probabilities" (or "auto" detecting rows that are
    probability vectors, e.g. a final softmax) are turned into log-probabilities, which are logits up to a
    per-row constant, so every temperature gives the same softened distribution as the original logits.
    """

    kind = "keras"

    def __init__(self, path: str | Path, layout: str = "auto", outputs: str = "auto", batch_size: int = 256):
        from edgekd.extras import require

        self.path = Path(path).expanduser()
        if not self.path.exists():
            raise EdgeKDError(f"keras teacher file not found: {self.path} (give a .keras/.h5 file or a SavedModel "
                              f"folder)")
        if layout not in ("auto", "nhwc", "nchw") or outputs not in ("auto", "logits", "probabilities"):
            raise EdgeKDError(f"keras teacher: layout must be auto|nhwc|nchw and outputs auto|logits|probabilities, "
                              f"got {layout!r}, {outputs!r}")
        tf = require("tensorflow", "tensorflow", "a Keras teacher")
        self.layout, self.outputs, self.batch_size = layout, outputs, batch_size
        try:
            if self.path.is_dir():
                fn = tf.saved_model.load(str(self.path)).signatures["serving_default"]
                (self._input_name, spec), = fn.structured_input_signature[1].items()
                self.input_shape = tuple(spec.shape)
                self._run = lambda x: next(iter(sorted(fn(**{self._input_name: tf.constant(x)}).items())))[1]
                self._fn = fn
            else:
                import keras

                self._model = keras.models.load_model(str(self.path), compile=False)
                self.input_shape = tuple(self._model.inputs[0].shape)
                self._run = lambda x: self._model(x, training=False)
        except (ValueError, OSError, KeyError, TypeError) as e:
            raise EdgeKDError(f"cannot load keras teacher {self.path}: {str(e).splitlines()[0] if str(e) else e!r}; "
                              f"save it with model.save('teacher.keras') or model.export('folder') (one image "
                              f"input, logits or probabilities out)") from e
        self._sha = _sha256_path(self.path)

    def _layout_for(self, x: Tensor) -> str:
        if self.layout != "auto":
            return self.layout
        c, h, w = x.shape[1:]
        want = tuple(None if d is None else int(d) for d in self.input_shape[1:])
        fits = lambda shape: len(want) == 3 and all(a is None or a == b for a, b in zip(want, shape))  # noqa: E731
        if fits((h, w, c)):
            return "nhwc"
        if fits((c, h, w)):
            return "nchw"
        raise EdgeKDError(f"keras teacher {self.path.name} expects input {list(self.input_shape)}, the data has "
                          f"images of {c}x{h}x{w} (C x H x W): resize the data or export the model for this size")

    @torch.no_grad()
    def logits(self, x: Tensor) -> Tensor:
        layout = self._layout_for(x)
        batches = []
        for i in range(0, len(x), self.batch_size):
            a = x[i:i + self.batch_size].detach().cpu().float()
            a = a.permute(0, 2, 3, 1) if layout == "nhwc" else a
            batches.append(torch.from_numpy(np.array(self._run(np.ascontiguousarray(a.numpy())), np.float32)))
        out = torch.cat(batches).float()
        probs = self.outputs == "probabilities" or (self.outputs == "auto" and bool(
            (out >= 0).all() and torch.allclose(out.sum(-1), torch.ones(len(out)), atol=1e-3)))
        return (out.clamp_min(1e-12).log() if probs else out).to(x.device)

    def fingerprint(self) -> str:
        return hashlib.sha256(f"{self._sha}|{self.layout}|{self.outputs}".encode()).hexdigest()


def _sha256_path(path: Path) -> str:
    """sha256 of a file, or of a folder's files (relative names and bytes, in name order)."""
    if path.is_file():
        return sha256_file(path)
    h = hashlib.sha256()
    for f in sorted(p for p in path.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(path)).encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


class RenormalizedTeacher(Teacher):
    """A teacher that expects other normalization than the data's: x_t = (x * std_d + mean_d - mean_t) / std_t."""

    def __init__(self, inner: Teacher, data_mean: Sequence[float], data_std: Sequence[float],
                 mean: Sequence[float], std: Sequence[float]):
        self.inner = inner
        self.kind = inner.kind
        self.supports_features = inner.supports_features
        dm, ds_, tm, ts = (torch.tensor([float(v) for v in a]).view(1, -1, 1, 1)
                           for a in (data_mean, data_std, mean, std))
        self.scale, self.shift = ds_ / ts, (dm - tm) / ts
        self.stats = [list(map(float, a)) for a in (data_mean, data_std, mean, std)]

    def _convert(self, x: Tensor) -> Tensor:
        return x * self.scale.to(x.device) + self.shift.to(x.device)

    def logits(self, x: Tensor) -> Tensor:
        return self.inner.logits(self._convert(x))

    def forward_with_features(self, x: Tensor, names: Sequence[str]) -> tuple[Tensor, dict[str, Tensor]]:
        return self.inner.forward_with_features(self._convert(x), names)

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps([self.inner.fingerprint(), self.stats]).encode()).hexdigest()

    def place(self, device: torch.device, dtype: torch.dtype | None = None) -> None:
        self.inner.place(device, dtype)

    def __getattr__(self, name: str) -> Any:  # module, path, built: those of the wrapped teacher
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)


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
    unknown = [k for k in spec if k not in ("kind", "weight", "mean", "std", *required, *optional)]
    if missing or unknown:
        raise EdgeKDError(f"teacher kind {kind!r}: " + "; ".join(
            ([f"missing {', '.join(map(repr, missing))}"] if missing else [])
            + ([f"unknown field(s) {', '.join(map(repr, unknown))}"] if unknown else []))
            + f" (fields: {', '.join(['kind', *required, *optional])})")
    return spec


@TEACHER_KINDS.register("torch")
def _torch_teacher(spec: dict) -> Teacher:
    from edgekd.models import build_model

    _check_spec(spec, ["model"], ["kwargs", "weights", "import_path"])
    if not isinstance(spec["model"], str):
        raise EdgeKDError(f"torch teacher 'model' must be a zoo name or 'package.module:Callable', got "
                          f"{spec['model']!r}")
    kwargs = spec.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise EdgeKDError(f"torch teacher 'kwargs' must be a mapping, got {kwargs!r}")
    module = build_model(spec["model"], import_folder=spec.get("import_path"), **kwargs)
    if spec.get("weights") is not None:
        load_state_dict_file(module, spec["weights"])
    return TorchTeacher(module)


@TEACHER_KINDS.register("torchscript")
def _torchscript_teacher(spec: dict) -> Teacher:
    return TorchScriptTeacher(_check_spec(spec, ["path"], [])["path"])


@TEACHER_KINDS.register("onnx")
def _onnx_teacher(spec: dict) -> Teacher:
    return OnnxTeacher(_check_spec(spec, ["path"], ["threads"])["path"], threads=spec.get("threads", 1))


@TEACHER_KINDS.register("keras")
def _keras_teacher(spec: dict) -> Teacher:
    _check_spec(spec, ["path"], ["layout", "outputs"])
    return KerasTeacher(spec["path"], layout=spec.get("layout", "auto"), outputs=spec.get("outputs", "auto"))


@TEACHER_KINDS.register("ensemble")
def _ensemble_teacher(spec: dict, data: Any = None) -> Teacher:
    members = _check_spec(spec, ["members"], [])["members"]
    if not isinstance(members, list) or not members:
        raise EdgeKDError(f"ensemble teacher 'members' must be a non-empty list of teacher specs, got {members!r}")
    built = []
    for i, member in enumerate(members):
        if not isinstance(member, dict):
            raise EdgeKDError(f"ensemble member {i} must be a teacher spec mapping, got {member!r}")
        built.append((load_teacher({k: v for k, v in member.items() if k != "weight"}, data=data),
                      member.get("weight", 1.0)))
    return EnsembleTeacher(built)


def _torch_teacher_for_data(spec: dict, data: Any) -> Teacher:
    """A torch teacher built for the data (edgekd.models.build_for_data): a loaded one must predict its classes."""
    from edgekd.models import build_for_data

    _check_spec(spec, ["model"], ["kwargs", "weights", "import_path"])
    built = build_for_data(spec["model"], spec.get("kwargs") or {}, input_shape=data.input_shape,
                           num_classes=data.num_classes, weights=spec.get("weights"),
                           import_path=spec.get("import_path"), replace=not spec.get("weights"))
    teacher = TorchTeacher(built.module)
    teacher.built = built  # what save_model_file needs to rebuild it (name, kwargs, head, import_path)
    return teacher


def as_teacher(obj: "Teacher | nn.Module | dict") -> Teacher:
    """Accept a Teacher, a plain nn.Module (wrapped as TorchTeacher) or a spec dict (load_teacher)."""
    if isinstance(obj, Teacher):
        return obj
    if isinstance(obj, nn.Module):
        return TorchTeacher(obj)
    if isinstance(obj, dict):
        return load_teacher(obj)
    raise EdgeKDError(f"cannot use {type(obj).__name__} as a teacher: give a Teacher, an nn.Module or a spec dict")


def load_teacher(spec: dict, data: Any = None) -> Teacher:
    """Build a teacher from a recipe spec: {"kind": "torch" | "torchscript" | "onnx" | "keras" | "ensemble", ...}.

    torch: {"model": zoo name, "torchvision:NAME", "timm:NAME" or "pkg.mod:Callable", "kwargs": {...},
    "weights": path (optional), "import_path": folder (optional)}; torchscript / onnx: {"path": file};
    keras: {"path": .keras/.h5 file or SavedModel folder, "layout": auto|nhwc|nchw, "outputs": auto|logits|
    probabilities}; ensemble: {"members": [{...teacher spec..., "weight": w}, ...]}. Any kind: "mean"/"std", the
    normalization the teacher expects (needs `data`).

    data: the ImageDataset the teacher will see. With it, a torch teacher is built for the data's classes and
    image size (zoo models get num_classes/in_channels; a loaded teacher's class count and input are checked),
    and a declared mean/std wraps the teacher in a RenormalizedTeacher.
    """
    if not isinstance(spec, dict) or "kind" not in spec:
        raise EdgeKDError(f"a teacher spec needs 'kind' (one of {', '.join(TEACHER_KINDS.names())}), got {spec!r}")
    kind = spec["kind"]
    if data is not None and kind == "torch":
        teacher = _torch_teacher_for_data(spec, data)
    elif kind == "ensemble":
        teacher = _ensemble_teacher(spec, data)
    else:
        teacher = TEACHER_KINDS.get(kind)(spec)
    if spec.get("mean") is None and spec.get("std") is None:
        return teacher
    if data is None:
        raise EdgeKDError(f"teacher spec sets mean/std, which converts the data's normalization: pass the data "
                          f"(load_teacher(spec, data=dataset))")
    from edgekd.data.prepare import stats_values

    channels, scale = data.input_shape[0], getattr(data, "pixel_max", 255.0)
    mean = stats_values(spec.get("mean"), "mean", channels, scale, "teacher")
    std = stats_values(spec.get("std"), "std", channels, scale, "teacher")
    return RenormalizedTeacher(teacher, data.mean, data.std, data.mean if mean is None else mean,
                               data.std if std is None else std)


def teacher_spec(t: Any) -> dict[str, Any]:
    """The load_teacher spec of a recipe's TeacherConfig (only the fields its kind uses)."""
    norm = {k: getattr(t, k) for k in ("mean", "std") if getattr(t, k, None) is not None}
    if t.kind == "torch":
        return {"kind": "torch", "model": t.model, "kwargs": t.kwargs, "weights": t.weights,
                "import_path": t.import_path, **norm}
    if t.kind == "ensemble":
        return {"kind": "ensemble", "members": t.members, **norm}
    if t.kind == "keras":
        return {"kind": "keras", "path": t.path, "layout": t.layout, "outputs": t.outputs, **norm}
    return {"kind": t.kind, "path": t.path, **norm}


__all__ = ["EnsembleTeacher", "KerasTeacher", "OnnxTeacher", "RenormalizedTeacher", "TEACHER_KINDS", "Teacher",
           "TorchScriptTeacher", "TorchTeacher", "as_teacher", "load_state_dict_file", "load_teacher",
           "state_dict_sha256", "teacher_spec"]
