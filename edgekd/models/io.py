"""edgekd model files: a state_dict plus the zoo name and kwargs that rebuild the module (weights_only-safe)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.fileio import existing_model_file, torch_save
from edgekd.models.zoo import build_model


def save_model_file(model: nn.Module, name: str, kwargs: dict[str, Any], path: str | Path,
                    **info: Any) -> Path:
    """Write {"model": name, "kwargs": kwargs, "state_dict": ..., **info} atomically."""
    return torch_save({"format": "edgekd-model/1", "model": name, "kwargs": dict(kwargs),
                       "state_dict": model.state_dict(), **info}, path)


def load_model_file(path: str | Path, name: str | None = None, kwargs: dict[str, Any] | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model from an edgekd model file, or from a bare state_dict when `name` (and kwargs) are given."""
    path = existing_model_file(path)
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise EdgeKDError(f"cannot read {path} as a torch weights file ({str(e).splitlines()[0]}); it may be "
                          "corrupt, or not a state_dict/edgekd model file") from e
    if isinstance(blob, dict) and blob.get("format", "").startswith("edgekd-model"):
        name, kwargs, state = blob["model"], blob["kwargs"], blob["state_dict"]
        info = {k: v for k, v in blob.items() if k not in ("state_dict",)}
    elif isinstance(blob, dict):
        state = blob.get("state_dict", blob.get("model", blob))
        if name is None:
            raise EdgeKDError(f"{path} is a bare state_dict: say which architecture it is (--model NAME / model:)")
        info = {"model": name, "kwargs": kwargs or {}}
        kwargs = kwargs or {}
    else:
        raise EdgeKDError(f"{path} holds a {type(blob).__name__}, not a state_dict or edgekd model file")
    model = build_model(name, **kwargs)
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
