"""edgekd model files and weight files, always read with torch.load(weights_only=True).

An edgekd model file (`edgekd-model/1`, documented in docs/models.md) is a dict of tensors and plain types:
`format`, `model` (the name it was built from: zoo name, torchvision:NAME, timm:NAME or package.module:Callable),
`kwargs` (constructor arguments exactly as passed), `state_dict`, and optionally `head` (the class count edgekd
replaced the classifier head with after building) and `import_path` (the folder `package.module` was imported
from), plus free-form info (e.g. `note`). Loading rebuilds the module from these and loads the state_dict.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from edgekd.errors import EdgeKDError
from edgekd.fileio import existing_model_file, torch_save
from edgekd.models.zoo import build_model

MODEL_FORMAT = "edgekd-model/1"
REBUILD_KEYS = ("model", "kwargs", "head", "import_path")


def save_model_file(model: nn.Module, name: str, kwargs: dict[str, Any], path: str | Path,
                    **info: Any) -> Path:
    """Write {"format", "model": name, "kwargs": kwargs, "state_dict", **info} atomically.

    `info` may carry `head` and `import_path` (see module docstring; `build_for_data` returns them) and any
    other plain values kept for the reader.
    """
    info = {k: v for k, v in info.items() if not (k in ("head", "import_path") and v is None)}
    return torch_save({"format": MODEL_FORMAT, "model": name, "kwargs": dict(kwargs),
                       "state_dict": model.state_dict(), **info}, path)


def rebuild(name: str, kwargs: dict[str, Any], head: int | None = None, import_path: str | None = None
            ) -> nn.Module:
    """The module a model file describes, before its weights are loaded."""
    from edgekd.models.adapt import replace_head

    model = build_model(name, import_folder=import_path, **(kwargs or {}))
    if head is not None:
        replace_head(model, int(head))
    return model


def load_model_file(path: str | Path, name: str | None = None, kwargs: dict[str, Any] | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from an edgekd model file, or from a bare state_dict when `name` (and kwargs) are given."""
    path = existing_model_file(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EdgeKDError(f"cannot read {path} as a torch weights file ({str(e).splitlines()[0]}); it may be "
                          "corrupt, or not a state_dict/edgekd model file") from e
    if isinstance(blob, dict) and str(blob.get("format", "")).startswith("edgekd-model"):
        info = {k: v for k, v in blob.items() if k != "state_dict"}
        state = blob["state_dict"]
    elif isinstance(blob, dict):
        state = _unwrap(blob)
        if name is None:
            raise EdgeKDError(f"{path} is a bare state_dict: say which architecture it is (--model NAME / model:)")
        info = {"model": name, "kwargs": kwargs or {}}
    else:
        raise EdgeKDError(f"{path} holds a {type(blob).__name__}, not a state_dict or edgekd model file")
    model = rebuild(info["model"], info.get("kwargs") or {}, info.get("head"), info.get("import_path"))
    load_state(model, state, path)
    return model.eval(), info


def load_state(model: nn.Module, state: dict[str, torch.Tensor], source: Path | str) -> None:
    """load_state_dict with one clear line for missing/unexpected keys or shape mismatches."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or bad:
        detail = (f"missing {missing[:3]}" if missing else "") + (f" unexpected {unexpected[:3]}" if unexpected else "")
        if bad:
            k = bad[0]
            detail += f" shape of {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
        raise EdgeKDError(f"weights in {source} do not fit the model ({detail.strip()}); check the model name "
                          "and kwargs it was trained with")
    model.load_state_dict(state)


def _unwrap(obj: Any) -> Any:
    """The state_dict inside a checkpoint: itself, or its 'state_dict'/'model' entry (timm, torchvision, Lightning)."""
    if isinstance(obj, dict):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), dict):
                return obj[key]
    return obj


def read_state_dict(path: str | Path, what: str = "weights") -> dict[str, Tensor]:
    """A state_dict from a raw state_dict file, a checkpoint dict holding one, or an edgekd model file."""
    p = Path(path).expanduser() if isinstance(path, (str, Path)) and str(path) else None
    if p is None or not p.is_file():
        raise EdgeKDError(f"{what} file not found: {p if p is not None else repr(path)}")
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # unpickling errors come in many types
        raise EdgeKDError(f"cannot read {what} {p}: {str(e).splitlines()[0]} (expected a file written by "
                          f"torch.save(model.state_dict(), path); pickled modules are refused)") from e
    obj = _unwrap(obj)
    if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
        raise EdgeKDError(f"{what} {p} hold no state_dict (got {type(obj).__name__}); save model.state_dict() "
                          f"or a dict with a 'model' or 'state_dict' entry")
    if obj and all(k.startswith("module.") for k in obj):  # saved from DataParallel / DDP
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj


def load_weights(module: nn.Module, path: str | Path, what: str = "weights") -> nn.Module:
    """Load a weights file into `module` strictly; a missing/unexpected key or shape mismatch names the first."""
    state = read_state_dict(path, what)
    name = Path(path).name
    expected = module.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise EdgeKDError(f"{what} {name} lack key {key!r} that {type(module).__name__} needs; "
                              f"check the model name and kwargs match the checkpoint")
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise EdgeKDError(f"{what} {name}: key {key!r} has shape {tuple(state[key].shape)} but the "
                              f"model expects {tuple(tensor.shape)}; check the model name and kwargs "
                              f"(e.g. num_classes, widths) match the checkpoint; to train on other classes, "
                              f"leave num_classes out of kwargs and edgekd replaces the head after loading")
    extra = [k for k in state if k not in expected]
    if extra:
        raise EdgeKDError(f"{what} {name} have key {extra[0]!r} ({len(extra)} unexpected in all) that "
                          f"{type(module).__name__} lacks; check the model name and kwargs match the checkpoint")
    module.load_state_dict(state)
    return module


SHIPPED_TEACHER = Path(__file__).resolve().parents[1] / "weights" / "teacher_cnn_fmnist.pt"


def load_shipped_teacher() -> tuple[nn.Module, dict[str, Any]]:
    """The Fashion-MNIST teacher shipped in edgekd/weights (see tools/train_teacher.py), checked by its sha256."""
    import json

    from edgekd.fileio import sha256_file

    info = json.loads(SHIPPED_TEACHER.with_suffix(".json").read_text())
    if sha256_file(SHIPPED_TEACHER) != info["sha256"]:
        raise EdgeKDError(f"{SHIPPED_TEACHER} does not match the sha256 in its .json: the file is corrupt or was "
                          "replaced; restore it from git or re-run tools/train_teacher.py")
    model = build_model(info["model"], **info["kwargs"])
    load_state(model, torch.load(SHIPPED_TEACHER, map_location="cpu", weights_only=True), SHIPPED_TEACHER)
    return model.eval(), info
