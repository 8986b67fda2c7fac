"""Graph capture for PT2E (torch.export with a dynamic batch dimension), .pt2 save/load, converter errors by layer."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import ConversionError, EdgeKDError
from edgekd.fileio import atomic_path

_ATEN_OP = re.compile(r"\b(aten|prims)(?:::|\.)([A-Za-z0-9_]+)")


# Drop-path regularizers (torchvision StochasticDepth, timm DropPath) stay in eval mode (the identity) in a QAT
# graph: captured in train mode they become `bernoulli` nodes that torchao's move-to-eval does not remove, so the
# converted simulation and its files drew random masks (swin_t QAT: ONNX file 85% agreement, TFLite export
# refused on aten.bernoulli). Dropout is handled by torchao; BatchNorm keeps training.
STOCHASTIC_DEPTH = frozenset({"StochasticDepth", "DropPath"})


def check_example_inputs(example_inputs) -> tuple[torch.Tensor, ...]:
    """Normalize example inputs to a tuple of float tensors with a batch dimension."""
    if isinstance(example_inputs, torch.Tensor):
        example_inputs = (example_inputs,)
    if not isinstance(example_inputs, (tuple, list)) or not example_inputs:
        raise EdgeKDError(f"example_inputs must be a tensor or a non-empty tuple of tensors, got "
                          f"{type(example_inputs).__name__}")
    for i, t in enumerate(example_inputs):
        if not isinstance(t, torch.Tensor) or t.dim() < 1:
            raise EdgeKDError(f"example_inputs[{i}] must be a batched tensor (N, ...); got {t!r:.60}")
    return tuple(example_inputs)


def capture(model: nn.Module, example_inputs, *, train: bool, dynamic_batch: bool = True) -> torch.fx.GraphModule:
    """torch.export `model` (train or eval mode) and return its GraphModule; batch dim dynamic when possible.

    A batch of 1 would make torch.export specialize the batch to 1, so the example is repeated to 2 rows.
    If the model pins its batch size (e.g. a reshape to a constant), a static-batch graph is returned instead;
    `gm.meta["edgekd_dynamic_batch"]` says which.
    """
    inputs = check_example_inputs(example_inputs)
    # The captured graph shares parameters and buffers with the module it came from: QAT steps and BN folding
    # would change the caller's float model. Capture a copy.
    model = copy.deepcopy(model)
    if dynamic_batch and inputs[0].shape[0] == 1:
        inputs = tuple(t.repeat(2, *([1] * (t.dim() - 1))) for t in inputs)
    model.train(train)
    if train:
        for m in model.modules():
            if type(m).__name__ in STOCHASTIC_DEPTH:
                m.eval()
    try:
        ep = None
        if dynamic_batch:
            batch = torch.export.Dim("batch", min=1, max=65536)
            try:
                ep = torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
            except Exception:  # a model that pins its batch: fall back to the example's batch size
                ep = None
        if ep is None:
            inputs = check_example_inputs(example_inputs)
            try:
                ep = torch.export.export(model, inputs)
            except Exception as e:
                raise conversion_error(e, model, "torch.export (graph capture for quantization)") from e
    finally:
        model.eval()
    gm = ep.module()
    gm.meta["edgekd_dynamic_batch"] = _has_dynamic_batch(ep)
    gm.meta["edgekd_example_shape"] = tuple(inputs[0].shape[1:])
    return gm


def _has_dynamic_batch(ep) -> bool:
    for node in ep.graph.nodes:
        if node.op == "placeholder" and "val" in node.meta and hasattr(node.meta["val"], "shape"):
            if node.name in ep.graph_signature.user_inputs:
                return not isinstance(node.meta["val"].shape[0], int)
    return False


def find_layer(model: nn.Module | None, op: str | None, example_inputs=None) -> tuple[str, str] | None:
    """(module path, type) of the first node in `model`'s graph whose aten op is `op`, when it can be found."""
    if model is None or not op:
        return None
    graph = getattr(model, "graph", None)
    if graph is None:
        try:
            graph = torch.export.export(model.eval(), check_example_inputs(example_inputs)).graph
        except Exception:
            return None
    want = op.split(".")[-1].replace("_", "")  # prims.erf_inv (decomposed) is aten.erfinv in the graph
    for node in graph.nodes:
        target = str(getattr(node, "target", ""))
        parts = target.split(".")
        name = parts[-2] if len(parts) >= 2 else target
        if node.op == "call_function" and name.replace("_", "").endswith(want):  # special_erfinv too
            stack = list(node.meta.get("nn_module_stack", {}).values())
            if stack:
                path, typ = stack[-1]
                return (path or "<top-level forward>"), str(getattr(typ, "__name__", typ)).rsplit(".", 1)[-1]
            return "<top-level forward>", "function"
    return None


def conversion_error(exc: BaseException, model: nn.Module | None, stage: str, example_inputs=None, *,
                     way_out: str = "keep that layer in float (keep_float=[...] / mixed_precision_fallback), "
                                    "rewrite it with supported ops, or target another runtime") -> ConversionError:
    """Turn a converter traceback into a ConversionError naming the layer, the op and the way out."""
    text, e = "", exc
    for _ in range(5):  # the op name is often only in a chained cause
        if e is None:
            break
        text += f"{type(e).__name__}: {e}\n"
        e = e.__cause__ or e.__context__
    ops = [f"{ns}.{o}" for ns, o in _ATEN_OP.findall(text) if o not in ("default", "Tensor", "ops")]
    op = ops[0] if ops else None
    layer = find_layer(model, op, example_inputs) if op else None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    first = next((ln for ln in lines if op and op.split(".")[-1] in ln and "Error" not in ln[:40]),
                 next((ln for ln in lines if op and op.split(".")[-1] in ln), lines[0] if lines else ""))
    first = re.sub(r"\x1b\[[0-9;]*m", "", first)
    where = f"layer {layer[0]!r} ({layer[1]})" if layer else "a layer"
    what = f"op {op}" if op else "an op"
    return ConversionError(f"{stage} cannot convert {where}, {what}: {first[:300]}. Way out: {way_out}")


def save_program(model: nn.Module, example_inputs, path: str | os.PathLike) -> Path:
    """torch.export `model` (dynamic batch when it allows) and write it as a .pt2 archive, atomically.

    The same model gives the same bytes whatever the file is called (records are named "archive/...", not after
    the temporary file), so a sha256 identifies the content. Float and converted (Q/DQ) models alike.
    """
    inputs = check_example_inputs(example_inputs)
    path = Path(path)
    if path.suffix != ".pt2":
        raise EdgeKDError(f"a torch.export archive is written as .pt2; use a .pt2 path, got {path.name!r}")
    if inputs[0].shape[0] == 1:  # a batch of 1 would specialize the batch dimension
        inputs = tuple(t.repeat(2, *([1] * (t.dim() - 1))) for t in inputs)
    batch = torch.export.Dim("batch", min=1, max=65536)
    try:
        ep = torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
    except Exception:  # a model that pins its batch size
        try:
            ep = torch.export.export(model, check_example_inputs(example_inputs))
        except Exception as e:
            raise conversion_error(e, model, "torch.export (.pt2)") from e
    _drop_provenance(ep)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        torch.export.save(ep, f)
    return path


# Node metadata that describes how a graph was made rather than what it computes: `from_node` records Python object
# ids of intermediate graphs (different in every process) and `stack_trace` absolute source paths. Dropped before
# saving so that the same program gives the same bytes in every run and checkout.
_PROVENANCE_KEYS = ("from_node", "stack_trace")


def _drop_provenance(ep) -> None:
    for module in ep.graph_module.modules():
        graph = getattr(module, "graph", None)
        for node in (graph.nodes if graph is not None else ()):
            for key in _PROVENANCE_KEYS:
                node.meta.pop(key, None)


def register_quantized_ops() -> None:
    """Register the `quantized_decomposed` op library that converted PT2E programs call.

    A fresh process has not registered it until something imports torch's decomposed-quantization module, and
    torch.export.load then fails to resolve torch.ops.quantized_decomposed.* (a .pt2 written by the quantize
    stage would load only in the process that wrote it).
    """
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated; its op library is still needed
        import torch.ao.quantization.fx._decomposed  # noqa: F401


def load_program(path: str | os.PathLike) -> torch.fx.GraphModule:
    """Load a .pt2 archive (torch.export) as a callable module, in any process; errors are one line."""
    from edgekd.fileio import existing_model_file

    path = existing_model_file(path)
    register_quantized_ops()
    try:
        return torch.export.load(str(path)).module()
    except Exception as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeKDError(f"cannot load {path.name} as a torch.export archive ({first[:300]}); it may be truncated "
                          "or written by another torch version: write it again") from e
