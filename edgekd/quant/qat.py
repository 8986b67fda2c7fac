"""Quantization-aware training with torchao PT2E: prepare, phase control (freeze observers / BN), convert, save.

These are the parts `edgekd.quant.qat_finetune` (quant/finetune.py) puts together: `prepare_qat` -> train the
returned graph like any module (through `train_mode`/`eval_mode`, since exported graphs reject .train()/.eval()),
call `set_qat_phase` every step, checkpoint with `qat_state_dict`/`load_qat_state`, and `convert_qat` for the int8
Q/DQ simulation.
"""
from __future__ import annotations

import copy
from collections import OrderedDict
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.quant.capture import capture, conversion_error, load_program, save_program
from edgekd.quant.quantizer import (avg_pools_as_depthwise_conv, build_quantizer, pt2e_patches,
                                    snap_bias_to_int32_grid, snap_weights_to_grid)
from edgekd.quant.schemes import Scheme, get_scheme

_BN_TRAINING_ARG = {"batch_norm": 5, "_native_batch_norm_legit": 5, "cudnn_batch_norm": 5}
_PHASE = "edgekd_qat_phase"
_BN_LITERALS = "edgekd_bn_literals"
_DROPOUT = {"dropout", "dropout_", "feature_dropout", "feature_dropout_", "alpha_dropout", "alpha_dropout_",
            "feature_alpha_dropout", "feature_alpha_dropout_"}


def prepare_qat(model: nn.Module, example_inputs, scheme: Scheme | str,
                keep_float: tuple[str, ...] | list[str] = ()) -> torch.fx.GraphModule:
    """Export `model` (dynamic batch) and insert fake-quant per `scheme`; conv+BN stay unfused-but-simulated.

    PT2E QAT rewrites conv+BN so the conv weight is scaled by the BN statistics before its fake quant (the folded
    weight is what gets quantized), which is what the exported int8 conv uses. The result is in train mode.
    """
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    scheme = get_scheme(scheme)
    gm = capture(model, example_inputs, train=True)
    avg_pools_as_depthwise_conv(gm)
    quantizer = build_quantizer(scheme, is_qat=True, keep_float=keep_float)
    try:
        with pt2e_patches():
            prepared = prepare_qat_pt2e(gm, quantizer)
    except Exception as e:
        raise conversion_error(e, gm, f"QAT prepare ({scheme.name})") from e
    prepared.meta.update({k: v for k, v in gm.meta.items() if k.startswith("edgekd_")})
    prepared.meta["edgekd_scheme"] = scheme.to_dict()
    prepared.meta["edgekd_keep_float"] = list(keep_float)
    prepared.meta[_PHASE] = {"observers_frozen": False, "bn_frozen": False}
    prepared.meta[_BN_LITERALS] = _bn_literals(model)
    _set_bn_literals(prepared, prepared.meta[_BN_LITERALS])
    train_mode(prepared)
    return prepared


def _bn_literals(model: nn.Module) -> dict[str, tuple[float | None, float]]:
    """{running_var buffer path: (momentum, eps)} of every BatchNorm in `model` (the keys the graph reads them by)."""
    return {f"{name}.running_var": (m.momentum, float(m.eps)) for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}


def _running_var_target(node) -> str | None:
    return node.target if isinstance(node, torch.fx.Node) and node.op == "get_attr" else None


def _set_bn_literals(gm: torch.fx.GraphModule, literals: dict[str, tuple[float | None, float]]) -> int:
    """Give every BatchNorm of a PT2E graph the momentum and eps of the layer it came from; returns nodes changed.

    torchao's QAT conv+BN rewrite (and its move_exported_model_to_train/eval) rebuilds BN from patterns traced with
    the defaults — eps 1e-5, momentum 0.1, also in the `running_var + eps` that scales the conv weight — and
    matches with ignore_literals, so a model's own values are lost. torchvision's mobilenet_v3 (eps 1e-3, momentum
    0.01), googlenet (eps 1e-3) and mnasnet (momentum 3e-4) then trained and folded a different network from the
    one they were given: the mobilenet_v3_large simulation, with nothing trained, agreed with its fp32 model on 14%
    of inputs and had logits 100x too large.
    """
    changed = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        name = getattr(node.target, "__name__", "").split(".")[0]
        if name in _BN_TRAINING_ARG and len(node.args) > 7:
            found = literals.get(_running_var_target(node.args[4]))
            if found is None:
                continue
            momentum, eps = found
            args = list(node.args)
            if momentum is not None:
                args[6] = momentum
            args[7] = eps
            if tuple(args) != node.args:
                node.args = tuple(args)
                changed += 1
        elif node.target == torch.ops.aten.add.Tensor and len(node.args) == 2 and isinstance(node.args[1], float):
            found = literals.get(_running_var_target(node.args[0]))  # QAT's weight scale: sqrt(running_var + eps)
            if found is not None and node.args[1] != found[1]:
                node.args = (node.args[0], found[1])
                changed += 1
    if changed:
        gm.recompile()
    return changed


def _set_bn_training(gm: torch.fx.GraphModule, training: bool) -> int:
    changed = 0
    for node in gm.graph.nodes:
        name = getattr(node.target, "__name__", "").split(".")[0]
        if node.op == "call_function" and name in _BN_TRAINING_ARG:
            i = _BN_TRAINING_ARG[name]
            if len(node.args) > i and node.args[i] != training:
                args = list(node.args)
                args[i] = training
                node.args = tuple(args)
                changed += 1
    if changed:
        gm.recompile()
    return changed


def set_qat_phase(gm: torch.fx.GraphModule, step: int, freeze_observers_at: int | None = None,
                  freeze_bn_at: int | None = None) -> dict[str, bool]:
    """Freeze observers (ranges stop moving, fake quant goes on) and BN statistics once `step` reaches the given step.

    Call it every step (cheap); it is idempotent and re-applies after `train_mode` or a checkpoint load.
    Returns the phase: {"observers_frozen": bool, "bn_frozen": bool}.
    """
    from torchao.quantization.pt2e import disable_observer, enable_observer

    for name, at in (("freeze_observers_at", freeze_observers_at), ("freeze_bn_at", freeze_bn_at)):
        if at is not None and (not isinstance(at, int) or at < 0):
            raise ValueError(f"{name} must be None or an int >= 0, got {at!r}")
    phase = gm.meta.setdefault(_PHASE, {"observers_frozen": False, "bn_frozen": False})
    freeze_obs = freeze_observers_at is not None and step >= freeze_observers_at
    freeze_bn = freeze_bn_at is not None and step >= freeze_bn_at
    if freeze_obs != phase["observers_frozen"]:
        gm.apply(disable_observer if freeze_obs else enable_observer)
    if gm.meta.get("edgekd_training", True):
        _set_bn_training(gm, not freeze_bn)
    phase.update(observers_frozen=freeze_obs, bn_frozen=freeze_bn)
    return dict(phase)


def _set_dropout_training(gm: torch.fx.GraphModule, training: bool) -> int:
    changed = 0
    for node in gm.graph.nodes:
        name = getattr(node.target, "__name__", "").split(".")[0]
        if node.op == "call_function" and name in _DROPOUT and len(node.args) > 2 and node.args[2] != training:
            node.args = (*node.args[:2], training, *node.args[3:])
            changed += 1
    if changed:
        gm.recompile()
    return changed


def _set_mode(gm: torch.fx.GraphModule, training: bool) -> None:
    """Flip the `training` argument of BatchNorm and dropout nodes in place.

    torchao's move_exported_model_to_train/eval do this by re-tracing BN and dropout from patterns with default
    literals (see _set_bn_literals): every dropout became p=0.5 and every BN eps 1e-5 / momentum 0.1. Flipping
    the flag keeps each layer's own values.
    """
    from torchao.quantization.pt2e.export_utils import _EXPORTED_TRAINING_ATTR

    setattr(gm, _EXPORTED_TRAINING_ATTR, training)  # what torchao's own .train()/.eval() wrappers read
    _set_dropout_training(gm, training)
    _set_bn_training(gm, training and not gm.meta.get(_PHASE, {}).get("bn_frozen", False))
    gm.meta["edgekd_training"] = training


def train_mode(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Put a prepared graph in train mode (BN batch statistics unless frozen); exported graphs reject .train()."""
    _set_mode(gm, True)
    return gm


def eval_mode(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """Put a prepared graph in eval mode (BN running statistics, fake quant still on)."""
    _set_mode(gm, False)
    return gm


def convert_qat(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """The int8 Q/DQ simulation of a prepared graph (a copy; `gm` keeps training). Its accuracy is fake_quant_accuracy."""
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    model = copy.deepcopy(gm)
    eval_mode(model)
    _fold_ready_bn(model, model.meta.get(_BN_LITERALS, {}))
    try:
        with pt2e_patches():
            converted = convert_pt2e(model, fold_quantize=False)
    except Exception as e:
        raise conversion_error(e, gm, "QAT convert") from e
    for m in converted.modules():  # exporters warn about (and may trace) modules flagged as training
        m.training = False
    snap_weights_to_grid(converted)
    snap_bias_to_int32_grid(converted)
    converted.meta.update({k: v for k, v in gm.meta.items() if k.startswith("edgekd_")})
    return converted


_TORCHAO_BN_EPS = 1e-5  # the eps torchao's conv+BN fold patterns are traced with, and fold with


@torch.no_grad()
def _fold_ready_bn(gm: torch.fx.GraphModule, literals: dict[str, tuple[float | None, float]]) -> None:
    """Restate every BN of an eval-mode graph with torchao's eps: running_var + (eps - 1e-5), eps 1e-5.

    convert_pt2e folds each QAT conv+BN by re-tracing it from a pattern and reads eps from the new node (1e-5),
    not from the graph; with the variance offset the fold computes exactly the layer's own
    weight * gamma / sqrt(running_var + eps). Only for a converting copy: in train mode BN uses batch statistics.
    """
    restated = {}
    for target, (momentum, eps) in literals.items():
        if eps == _TORCHAO_BN_EPS:
            continue
        owner_path, _, attr = target.rpartition(".")
        try:
            owner = gm.get_submodule(owner_path) if owner_path else gm
            running_var = getattr(owner, attr)
        except AttributeError:
            continue
        running_var.add_(eps - _TORCHAO_BN_EPS)
        restated[target] = (momentum, _TORCHAO_BN_EPS)
    if restated:
        _set_bn_literals(gm, restated)


def qat_state_dict(gm: torch.fx.GraphModule) -> dict[str, Any]:
    """Weights, BN statistics and fake-quant/observer buffers, plus the phase: what a checkpoint needs."""
    sd = gm.state_dict()
    copy_ = OrderedDict((k, v.detach().clone()) for k, v in sd.items())
    # Keep the per-module versions: torchao observers treat state without them as version 1 and reset `eps`.
    # They are also stored as a plain mapping, so a checkpoint needs nothing but tensors and plain data.
    metadata = {prefix: dict(meta) for prefix, meta in (getattr(sd, "_metadata", None) or {}).items()}
    copy_._metadata = OrderedDict((p, dict(m)) for p, m in metadata.items())  # type: ignore[attr-defined]
    return {"state_dict": copy_, "metadata": metadata, "phase": dict(gm.meta.get(_PHASE, {})),
            "scheme": gm.meta.get("edgekd_scheme")}


def load_qat_state(gm: torch.fx.GraphModule, state: dict[str, Any]) -> torch.fx.GraphModule:
    """Load `qat_state_dict` output into a freshly prepared graph (same model, example shape and scheme)."""
    if not isinstance(state, dict) or "state_dict" not in state:
        raise EdgeKDError("QAT state must be the dict returned by qat_state_dict (keys: state_dict, phase, scheme)")
    if state.get("scheme") and gm.meta.get("edgekd_scheme") and state["scheme"] != gm.meta["edgekd_scheme"]:
        raise EdgeKDError(f"QAT state was saved with scheme {state['scheme'].get('name')!r} but the graph is "
                          f"prepared with {gm.meta['edgekd_scheme'].get('name')!r}; prepare with the saved scheme")
    sd = OrderedDict(state["state_dict"])
    if isinstance(state.get("metadata"), dict):  # the per-module versions (see qat_state_dict)
        sd._metadata = OrderedDict((p, dict(m)) for p, m in state["metadata"].items())  # type: ignore[attr-defined]
    else:
        sd._metadata = getattr(state["state_dict"], "_metadata", None)  # type: ignore[attr-defined]
    # Per-channel observers start with empty min/max buffers; size them to the saved ones before loading.
    own = gm.state_dict()
    for key, value in sd.items():
        if key in own and own[key].shape != value.shape:
            owner_path, _, attr = key.rpartition(".")
            owner = gm.get_submodule(owner_path) if owner_path else gm
            if isinstance(getattr(owner, attr, None), torch.Tensor) and attr in owner._buffers:
                owner._buffers[attr] = torch.empty_like(value)
    missing, unexpected = gm.load_state_dict(sd, strict=False)
    if missing or unexpected:
        raise EdgeKDError(f"QAT state does not match the prepared graph: missing {sorted(missing)[:5]}, unexpected "
                          f"{sorted(unexpected)[:5]}; prepare the same model with the same scheme before loading")
    phase = state.get("phase") or {}
    gm.meta[_PHASE] = {"observers_frozen": bool(phase.get("observers_frozen")),
                       "bn_frozen": bool(phase.get("bn_frozen"))}
    if gm.meta.get("edgekd_training", True):
        _set_bn_training(gm, not gm.meta[_PHASE]["bn_frozen"])
    return gm


def save_quantized(model: nn.Module, example_inputs, path: str | os.PathLike) -> Path:
    """Write a converted (Q/DQ) model as a torch.export .pt2 with a dynamic batch, atomically (reproducible bytes)."""
    return save_program(model, example_inputs, path)


def load_quantized(path: str | os.PathLike) -> torch.fx.GraphModule:
    """Load a `save_quantized` .pt2 as a callable module (eval semantics; batch as saved), in any process."""
    path = Path(path)
    if not path.is_file():
        raise EdgeKDError(f"quantized model file not found: {path}")
    return load_program(path)


def is_quantized(model: nn.Module) -> bool:
    """True when `model`'s graph carries quantize/dequantize ops (a converted PT2E model)."""
    graph = getattr(model, "graph", None)
    if graph is None:
        return False
    return any("quantize_per" in str(getattr(n, "target", "")) for n in graph.nodes)
