"""Training checkpoints that hold tensors and plain data only, loaded with `weights_only=True`.

Run directories get shared, synced and downloaded, so a checkpoint found there is untrusted input: it is read by
torch's weights-only unpickler, which refuses anything but tensors and plain containers, and a file it refuses
is reported (with what to do) instead of run. Everything a bit-exact resume needs is stored in those terms: RNG
states as tensors, optimizer/scheduler state dicts, and module state dicts with their per-module versions as a
plain mapping (torchao observers loaded without their version reset `eps`, so the versions matter).
"""
from __future__ import annotations

import pickle
import zipfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch

from edgekd.errors import EdgeKDError
from edgekd.fileio import torch_save

FORMAT = 1  # bump when the checkpoint layout changes; an older layout is refused with "delete it"


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write `state` (tensors and plain data) atomically, tagged with the layout version."""
    return torch_save({**state, "edgekd_checkpoint": FORMAT}, path)


def load_checkpoint(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, Any] | None:
    """The checkpoint at `path` (None when there is none), read with `weights_only=True`.

    Raises:
        EdgeKDError: the file holds anything but tensors and plain data (loading it could run code), is damaged,
            or lacks one of `required`; the message names the file and says to delete it.
    """
    path = Path(path)
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, TypeError, AttributeError,
            zipfile.BadZipFile, OSError) as e:
        unsafe = isinstance(e, pickle.UnpicklingError) or "weights_only" in str(e).lower()
        why = ("holds objects other than tensors and plain data, and loading it could run code"
               if unsafe else f"cannot be read ({type(e).__name__})")
        raise EdgeKDError(f"checkpoint {path} {why}; it was not loaded: delete it to start this stage over "
                          f"(rm '{path}')") from None
    if not isinstance(state, dict) or state.get("edgekd_checkpoint") != FORMAT or \
            any(k not in state for k in required):
        raise EdgeKDError(f"checkpoint {path} is not an edgekd training checkpoint of this version; it was not "
                          f"loaded: delete it to start this stage over (rm '{path}')")
    return state


def plain_state_dict(module: torch.nn.Module) -> dict[str, Any]:
    """A detached copy of `module.state_dict()` with its per-module versions as plain data."""
    sd = module.state_dict()
    metadata = getattr(sd, "_metadata", None) or {}
    return {"tensors": {k: v.detach().clone() for k, v in sd.items()},
            "metadata": {prefix: dict(meta) for prefix, meta in metadata.items()}}


def restore_state_dict(plain: dict[str, Any]) -> "OrderedDict[str, torch.Tensor]":
    """The state dict `plain_state_dict` stored, versions re-attached, ready for `load_state_dict`."""
    sd = OrderedDict(plain["tensors"])
    sd._metadata = OrderedDict((p, dict(m)) for p, m in plain.get("metadata", {}).items())  # type: ignore[attr-defined]
    return sd
