"""ONNX export pass: torch.onnx dynamo exporter (opset 18); a converted PT2E model becomes a clean QDQ graph."""
from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.export.common import precision_of, prepare_for_export
from edgekd.fileio import atomic_path
from edgekd.formats import Format, register_format
from edgekd.quant.capture import conversion_error


def export_onnx(model: nn.Module, example_inputs, path: str | os.PathLike, *, opset: int = 18,
                dynamic_batch: bool = True, activation_dtype: str = "auto",
                ) -> Path:
    """Write `model` (float, or a converted PT2E Q/DQ model) to `path` as ONNX, atomically.

    int8 files store int8 weights (folded), and activations as `activation_dtype`: "auto" writes uint8 (zero
    point + 128, identical values) unless every activation zero point is 0 (symmetric, TensorRT-style: int8).

    The batch dimension is dynamic when the model allows it (else the example's batch). Raises ConversionError
    naming the layer and op when the exporter cannot convert something. Returns `path`
    (edgekd.formats.describe_file tells its format, precision, runtime, batch and size).
    """
    if activation_dtype not in ("auto", "int8", "uint8"):
        raise EdgeKDError(f"activation_dtype must be 'auto', 'int8' or 'uint8', got {activation_dtype!r}")
    if opset < 18:
        raise EdgeKDError(f"opset {opset} is not supported by the dynamo exporter; use opset >= 18")
    model, inputs = prepare_for_export(model, example_inputs)
    path = Path(path)
    program = None
    attempts = [True, False] if dynamic_batch else [False]
    last: Exception | None = None
    for dynamic in attempts:
        kwargs = {}
        if dynamic:
            kwargs["dynamic_shapes"] = tuple({0: torch.export.Dim("batch", min=1, max=65536)} for _ in inputs)
        try:
            with contextlib.redirect_stdout(io.StringIO()):
                program = torch.onnx.export(model, inputs, dynamo=True, opset_version=opset, verbose=False,
                                            report=False, **kwargs)
            break
        except Exception as e:  # a model that pins its batch: retry with a static batch
            last = e
    if program is None:
        raise conversion_error(last, model, "ONNX export (torch.onnx dynamo)", inputs,
                               way_out="rewrite the layer with ONNX-supported ops, keep it out of the exported "
                                       "graph, or export to TFLite instead") from last
    with atomic_path(path) as tmp:
        program.save(str(tmp), external_data=False)
        _clean_file(tmp, int8=precision_of(model) == "int8", activation_dtype=activation_dtype)
    return path


def onnx_op_types(path: str | os.PathLike, optimized: bool = True) -> dict[str, int]:
    """Op-type counts of an ONNX file, after onnxruntime's graph optimizations when `optimized`.

    A QDQ file that ORT runs with int8 kernels shows QLinearConv / QGemm / QLinearMatMul / ConvInteger after
    optimization (the Q/DQ pairs around Conv/Gemm are fused); leftover float Conv means that layer runs in float.
    """
    import tempfile

    import onnx
    import onnxruntime as ort

    path = Path(path)
    if optimized:
        with tempfile.TemporaryDirectory() as d:
            opts = ort.SessionOptions()
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
            opts.optimized_model_filepath = str(Path(d) / "optimized.onnx")
            opts.log_severity_level = 3
            ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
            model = onnx.load(opts.optimized_model_filepath)
    else:
        model = onnx.load(str(path))
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


INT8_ORT_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "QLinearAdd",
                "QLinearGlobalAveragePool", "QLinearAveragePool")


def _clean_file(path: Path, int8: bool, activation_dtype: str = "auto") -> None:
    """Strip per-node exporter debug metadata (most of a small file); for int8, fold weights and merge DQs."""
    import onnx

    m = onnx.load(str(path))
    for node in m.graph.node:
        del node.metadata_props[:]
    if int8:
        fold_weight_quantization(m)
        merge_duplicate_dequantize(m)
        symmetric = all(z == 0 for z in _activation_zero_points(m))
        if activation_dtype == "uint8" or (activation_dtype == "auto" and not symmetric):
            activations_to_uint8(m)
    onnx.save(m, str(path))


def merge_duplicate_dequantize(model) -> int:
    """Make each QuantizeLinear feed one DequantizeLinear (shared by all its users), in place.

    PT2E emits one DQ per user of a quantized tensor (e.g. a conv output that also feeds a residual add).
    onnxruntime's x86 s8->u8 rewrite only handles Q->DQ pairs, so such a Q stays s8 and the convs around it
    run in float; one DQ per Q lets ORT fuse them into QLinearConv (it re-duplicates DQs per node unit itself).
    """
    graph = model.graph
    key_to_output: dict[tuple, str] = {}
    rename: dict[str, str] = {}
    remove = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        key = (tuple(node.input), axis)
        if key in key_to_output:
            rename[node.output[0]] = key_to_output[key]
            remove.append(node)
        else:
            key_to_output[key] = node.output[0]
    for node in remove:
        graph.node.remove(node)
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
    return len(remove)


def activations_to_uint8(model) -> int:
    """Rewrite int8 activation Q/DQ as uint8 (q + 128, zero point + 128): the same numbers, ORT's x86 format.

    onnxruntime fuses U8 activations with S8 weights into QLinearConv/QGemm on x86; with S8 activations it relies
    on an internal S8->U8 rewrite that skips any quantized tensor with several users (left in float). Weights
    (initializers) stay int8. Returns how many Q/DQ nodes were rewritten.
    """
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    made: dict[str, str] = {}
    retyped: set[str] = set()
    count = 0
    for node in graph.node:
        if node.op_type not in ("QuantizeLinear", "DequantizeLinear") or len(node.input) < 3:
            continue
        if node.input[0] in inits or node.input[2] not in inits:
            continue  # a weight (int8 initializer) or no explicit zero point
        zp = numpy_helper.to_array(inits[node.input[2]])
        if zp.dtype != np.int8:
            continue
        name = node.input[2]
        if name not in made:
            made[name] = f"{name}_u8"
            graph.initializer.append(numpy_helper.from_array((zp.astype(np.int16) + 128).astype(np.uint8),
                                                             name=made[name]))
        node.input[2] = made[name]
        if node.op_type == "QuantizeLinear":
            retyped.add(node.output[0])
        count += 1
    from onnx import TensorProto

    for info in list(graph.value_info) + list(graph.output) + list(graph.input):
        if info.name in retyped:
            info.type.tensor_type.elem_type = TensorProto.UINT8
    return count


def _activation_zero_points(model) -> list[int]:
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    zps = []
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in inits and len(node.input) > 2 \
                and node.input[2] in inits:
            zps.extend(numpy_helper.to_array(inits[node.input[2]]).flatten().tolist())
    return zps


def fold_weight_quantization(model) -> int:
    """Replace QuantizeLinear(float weight initializer) [-> Clip] chains with int8 initializers, in place.

    PT2E's convert keeps float weights with a QuantizeLinear in the graph (litert-torch needs that form); stored
    as int8 the file is ~4x smaller and onnxruntime's QDQ fusion sees constant int8 weights (QLinearConv/QGemm).
    Returns how many weights were folded.
    """
    import numpy as np
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def const(name: str):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    folded, remove = 0, []
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or len(node.input) < 3:
            continue
        x, scale, zp = (const(n) for n in node.input[:3])
        if x is None or scale is None or zp is None or x.dtype != np.float32:
            continue
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zp_b = scale.reshape(shape), zp.reshape(shape).astype(np.int32)
        else:
            zp_b = zp.astype(np.int32)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.rint(x / scale) + zp_b, info.min, info.max)
        out_node, out_name = node, node.output[0]
        users = consumers.get(out_name, [])
        if len(users) == 1 and users[0].op_type == "Clip":
            clip = users[0]
            lo = const(clip.input[1]) if len(clip.input) > 1 and clip.input[1] else None
            hi = const(clip.input[2]) if len(clip.input) > 2 and clip.input[2] else None
            if (len(clip.input) > 1 and clip.input[1] and lo is None) or (len(clip.input) > 2 and clip.input[2]
                                                                            and hi is None):
                continue
            q = np.clip(q, info.min if lo is None else lo, info.max if hi is None else hi)
            out_node, out_name = clip, clip.output[0]
            remove.append(clip)
        remove.append(node)
        graph.initializer.append(numpy_helper.from_array(q.astype(zp.dtype), name=out_name))
        folded += 1
    for node in remove:
        graph.node.remove(node)
    used = {n for node in graph.node for n in node.input} | {o.name for o in graph.output}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    return folded


# Op types that make an ONNX file int8: Q/DQ (static, QAT/PTQ), fused QLinear* and integer ops, dynamic quantization.
INT8_ONNX_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "QGemm",
                           "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear"})


def describe_onnx(path: Path) -> dict:
    """Precision ("int8" with any quantized op, "fp16" with half-precision weights, else "fp32"), batch, input shape."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    if not m.graph.input:
        raise EdgeKDError(f"{path.name} has no graph inputs; it is not a model edgekd can run")
    if any(n.op_type in INT8_ONNX_OPS for n in m.graph.node):
        precision = "int8"
    elif any(t.data_type == onnx.TensorProto.FLOAT16 for t in m.graph.initializer):
        precision = "fp16"
    else:
        precision = "fp32"
    dims = m.graph.input[0].type.tensor_type.shape.dim
    shape = [d.dim_value if d.HasField("dim_value") else -1 for d in dims]
    return {"precision": precision, "batch": shape[0] if shape and shape[0] > 0 else None, "input_shape": shape}


def _write_onnx_metadata(src: Path, dst: Path, info, labels, norm) -> Path:
    from edgekd.bundle.metadata import write_onnx_metadata

    return write_onnx_metadata(src, dst, info, labels, norm)


def _read_onnx_metadata(model: Path | bytes) -> dict:
    from edgekd.bundle.metadata import read_onnx_metadata

    return read_onnx_metadata(model)


ONNX = register_format(Format("onnx", ".onnx", ("onnxruntime", "tensorrt"), export=export_onnx,
                              describe=describe_onnx, write_metadata=_write_onnx_metadata,
                              read_metadata=_read_onnx_metadata))
