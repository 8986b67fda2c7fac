"""Per-layer work of a model for the latency predictor: op kind, MACs, element ops and bytes moved.

Graphs are read from ONNX (a torch module is exported to ONNX first, so both see the graph the runtime sees) or
from a .tflite file. Ops the runtimes fuse into their producer (activations and BatchNorm after Conv/Gemm) and
pure shape ops are dropped, as ONNX Runtime's and LiteRT's graph optimizers do.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.fileio import existing_model_file

KINDS = ("conv", "convlarge", "pwconv", "dwconv", "gemm", "elementwise", "pool")  # convlarge: kernels over 3x3
BYTES_PER_ELEMENT = {"fp32": 4, "fp16": 2, "int8": 1}

_FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "Cast", "Dropout",
         "QuantizeLinear", "DequantizeLinear", "ConstantOfShape", "Gather", "Slice", "Expand"}
_FUSABLE = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "BatchNormalization", "Add"}
_POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"}
_MAC_OPS = {"Conv", "Gemm", "MatMul", "ConvTranspose"}


@dataclass(frozen=True)
class Layer:
    """One op's work: `macs` for conv/gemm kinds, `ops` (element operations) for the others; element counts."""

    name: str
    op: str
    kind: str
    macs: int
    ops: int
    weight_elems: int
    in_elems: int
    out_elems: int
    cin: int = 0  # reduction channels per group (conv) or input features (gemm); 0 when not a MAC op
    cout: int = 0

    def bytes_moved(self, precision: str = "fp32") -> int:
        """Weights + activations in + out at the precision's element size."""
        return (self.weight_elems + self.in_elems + self.out_elems) * BYTES_PER_ELEMENT.get(precision, 4)


def _prod(shape: Sequence[int]) -> int:
    return int(np.prod([max(int(d), 1) for d in shape])) if len(shape) else 1


def _static_model(model_or_path: Any, input_shape: Sequence[int] | None) -> Any:
    """A copy of the ONNX model (path or ModelProto, external data loaded) whose graph inputs have fixed dims:
    the first input takes `input_shape`, other unknown dims (batch) become 1."""
    import onnx

    if isinstance(model_or_path, (str, Path)):
        model = onnx.load(str(model_or_path))  # external data loaded: weights are needed only for shapes
    else:
        model = model_or_path
    model = onnx.ModelProto.FromString(model.SerializeToString())
    inits = {t.name for t in model.graph.initializer}
    real_inputs = [i for i in model.graph.input if i.name not in inits]
    for k, inp in enumerate(real_inputs):
        dims = inp.type.tensor_type.shape.dim
        for j, d in enumerate(dims):
            if k == 0 and input_shape is not None and j < len(input_shape):
                d.ClearField("dim_param")
                d.dim_value = int(input_shape[j])
            elif not d.HasField("dim_value") or d.dim_value <= 0:
                d.ClearField("dim_param")
                d.dim_value = 1
    return model


def layers_from_onnx(model_or_path: Any, input_shape: Sequence[int] | None = None) -> list[Layer]:
    """Walk an ONNX graph (path or ModelProto) with inferred shapes; unknown dims (batch) become 1."""
    import onnx

    model = _static_model(model_or_path, input_shape)
    inits = {t.name: tuple(t.dims) for t in model.graph.initializer}
    try:
        model = onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:  # onnx raises InferenceError and friends
        raise EdgeKDError(f"cannot infer the ONNX graph's shapes for the predictor: {str(e).splitlines()[0]}") from e
    shapes: dict[str, tuple[int, ...]] = dict(inits)
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        dims = vi.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            shapes[vi.name] = tuple(d.dim_value for d in dims)
    consumers: dict[str, int] = {}
    for n in model.graph.node:
        for i in n.input:
            consumers[i] = consumers.get(i, 0) + 1
    producer_op = {o: n.op_type for n in model.graph.node for o in n.output}
    # A DequantizeLinear feeding a weight is part of that weight: follow it back to the initializer.
    dq_src = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "DequantizeLinear"}

    def const_shape(name: str) -> tuple[int, ...] | None:
        while name in dq_src and name not in inits:
            name = dq_src[name]
        return inits.get(name)

    def is_const(name: str) -> bool:
        return const_shape(name) is not None

    layers = []
    for idx, n in enumerate(model.graph.node):
        op = n.op_type
        if op in _FREE:
            continue
        ins = [i for i in n.input if i]
        src = ins[0] if ins else ""
        # Activations/BN/bias-add right after a Conv/Gemm/MatMul with one consumer are fused by the runtimes.
        if op in _FUSABLE and producer_op.get(src) in _MAC_OPS and consumers.get(src, 0) == 1 and \
                (op != "Add" or all(is_const(i) for i in ins[1:])):
            producer_op[n.output[0]] = producer_op[src]  # Conv+BN+Relu chains fuse as a whole
            continue
        out_shape = shapes.get(n.output[0]) if n.output else None
        if out_shape is None:
            raise EdgeKDError(f"no static shape for the output of {op} node {n.name or idx}; give input_shape=")
        out_elems = _prod(out_shape)
        weights = [const_shape(i) for i in ins[1:]]
        weight_elems = sum(_prod(w) for w in weights if w is not None)
        in_elems = sum(_prod(shapes.get(i, ())) for i in ins if not is_const(i) and i in shapes)
        macs, ops, kind, cin_r, cout_r = 0, 0, "elementwise", 0, 0
        if op in ("Conv", "ConvTranspose"):
            w = const_shape(ins[1]) or shapes.get(ins[1], ())
            group = next((a.i for a in n.attribute if a.name == "group"), 1)
            k = _prod(w[2:]) if len(w) > 2 else 1
            cin = shapes.get(src, (1, 1))[1] if len(shapes.get(src, ())) > 1 else 1
            macs = out_elems * (w[1] if len(w) > 1 else 1) * k
            cin_r, cout_r = (int(w[1]), int(w[0])) if len(w) > 1 else (0, 0)
            kind = "dwconv" if group > 1 and group == cin else ("pwconv" if k == 1 else "conv" if k <= 9 else
                                                                   "convlarge")
        elif op in ("Gemm", "MatMul"):
            a = shapes.get(src, ())
            kdim = a[-1] if a else 1
            transa = next((x.i for x in n.attribute if x.name == "transA"), 0)
            if op == "Gemm" and transa and len(a) == 2:
                kdim = a[0]
            macs, kind = out_elems * kdim, "gemm"
            cin_r, cout_r = int(kdim), int(out_shape[-1])
        elif op in _POOL:
            ops, kind = in_elems, "pool"
        else:
            ops = max(out_elems, in_elems)
        layers.append(Layer(n.name or f"{op}_{idx}", op, kind, int(macs), int(ops), int(weight_elems),
                            int(in_elems), int(out_elems), cin_r, cout_r))
    if not layers:
        raise EdgeKDError("the graph has no ops the predictor can cost (empty or only shape ops)")
    return layers


def onnx_from_torch(model: Any, input_shape: Sequence[int]) -> Any:
    """Export a torch module to an in-memory ONNX ModelProto (dynamo exporter, as the export stage does)."""
    import torch

    x = torch.randn(*input_shape)
    program = torch.onnx.export(model.eval(), (x,), dynamo=True, verbose=False)
    return program.model_proto


_TFL_FREE = {"RESHAPE", "SQUEEZE", "EXPAND_DIMS", "QUANTIZE", "DEQUANTIZE", "SHAPE", "GATHER", "STRIDED_SLICE"}
_TFL_POOL = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "MEAN", "REDUCE_MAX", "SUM"}


def layers_from_tflite(path: str | Path) -> list[Layer]:
    """Walk a .tflite file's ops with LiteRT's interpreter (activations are already fused by the converter)."""
    from ai_edge_litert import interpreter as litert

    interp = litert.Interpreter(model_path=str(path))
    tensors = {t["index"]: t for t in interp.get_tensor_details()}
    op_list = interp._get_ops_details()  # the public API has no op list; this is what its analyzer uses
    # Constants (weights, biases, shape operands) are the tensors no op produces and that are no graph input.
    variable = {o for op in op_list for o in op["outputs"]} | {d["index"] for d in interp.get_input_details()}
    layers = []
    for op in op_list:
        name = op["op_name"]
        if name in _TFL_FREE:
            continue
        ins = [i for i in op["inputs"] if i >= 0]
        outs = [tensors[o]["shape"] for o in op["outputs"] if o >= 0]
        out_elems = _prod(outs[0]) if outs else 0
        shapes = [tuple(tensors[i]["shape"]) for i in ins]
        is_const = [i not in variable for i in ins]
        weight_elems = sum(_prod(s) for s, c in zip(shapes, is_const) if c)
        in_elems = sum(_prod(s) for s, c in zip(shapes, is_const) if not c)
        macs, ops, kind, cin_r, cout_r = 0, 0, "elementwise", 0, 0
        if name == "CONV_2D":
            w = shapes[1]  # [O, kh, kw, I]
            k = w[1] * w[2]
            macs, kind = out_elems * k * w[3], ("pwconv" if k == 1 else "conv" if k <= 9 else "convlarge")
            cin_r, cout_r = int(w[3]), int(w[0])
        elif name == "DEPTHWISE_CONV_2D":
            w = shapes[1]  # [1, kh, kw, C]
            macs, kind = out_elems * w[1] * w[2], "dwconv"
        elif name in ("FULLY_CONNECTED", "BATCH_MATMUL"):
            macs, kind = out_elems * shapes[0][-1], "gemm"
            cin_r, cout_r = int(shapes[0][-1]), int(outs[0][-1])
        elif name in _TFL_POOL:
            ops, kind = in_elems, "pool"
        else:
            ops = max(out_elems, in_elems)
        layers.append(Layer(f"{name}_{op['index']}", name, kind, int(macs), int(ops), int(weight_elems),
                            int(in_elems), int(out_elems), cin_r, cout_r))
    return layers


def model_layers(model_or_path: Any, input_shape: Sequence[int] | None = None) -> list[Layer]:
    """Layers of a torch module (needs input_shape), an ONNX file/ModelProto or a .tflite file."""
    if isinstance(model_or_path, (str, Path)):
        suffix = existing_model_file(model_or_path).suffix.lower()
        if suffix == ".onnx":
            return layers_from_onnx(model_or_path, input_shape)
        if suffix == ".tflite":
            return layers_from_tflite(model_or_path)
        raise EdgeKDError(f"the predictor reads .onnx and .tflite files or torch modules; got {suffix!r}")
    if hasattr(model_or_path, "graph") and hasattr(model_or_path.graph, "node"):
        return layers_from_onnx(model_or_path, input_shape)
    if input_shape is None:
        raise EdgeKDError("a torch model needs input_shape=(N, C, H, W) (or (N, features)) for the predictor")
    return layers_from_onnx(onnx_from_torch(model_or_path, input_shape), input_shape)


# ---- ONNX Runtime's optimized graph: the nodes ORT really runs (fusions, NCHWc layout, reorders) ----

ORT_FREE = {"Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape", "Constant", "Dropout"}
ORT_POOL = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax"}
ORT_GEMM = {"Gemm", "FusedGemm", "MatMul", "FusedMatMul"}
NCHWC_DOMAIN = "com.microsoft.nchwc"


@dataclass(frozen=True)
class OrtNode:
    """One node of ONNX Runtime's optimized graph with the work it does.

    kind: conv (NCHWc, blocked input), convin / pwin (NCHWc kxk / 1x1 conv reading plain NCHW input: first
    layers, few channels), pw (NCHWc 1x1), dw (NCHWc depthwise), im2col (plain Conv/FusedConv: im2col + GEMM),
    gemm, reorder (NCHW <-> NCHWc), pool, elementwise, free (reshapes: no data movement), io (one per graph: the
    session call, with the graph's input and output elements). Channel counts are ORT's padded ones.
    """

    name: str
    op: str
    kind: str
    macs: int
    in_elems: int  # activation inputs (the first input; fused residual sums count in sum_elems)
    out_elems: int
    weight_elems: int
    taps: int = 1  # kernel positions (kh * kw) of convolutions
    sum_elems: int = 0  # elements of a residual added inside a fused conv
    out_channels: int = 0  # output channels of a convolution (NCHWc-padded)
    edge_frac: float = 0.0  # share of a conv's output columns whose window reaches into the left/right padding
    valid_frac: float = 1.0  # share of a conv's (output, tap) pairs that read real input, not padding
    cols: int = 0  # im2col convs: elements of the column matrix MLAS writes (see _im2col_cols)


def _window_stats(in_size: int, out_size: int, k: int, stride: int, pad: int, dilation: int) -> tuple[float, float]:
    """Along one axis: (share of outputs whose window touches padding, share of window taps inside the input)."""
    o = np.arange(out_size)[:, None] * stride - pad + np.arange(k)[None, :] * dilation
    inside = (o >= 0) & (o < in_size)
    return float(np.mean(~inside.all(1))) if out_size else 0.0, float(inside.mean()) if out_size else 1.0


def _im2col_cols(cin: int, taps: int, out_positions: int, strides: Sequence[int], pads: Sequence[int]) -> int:
    """Elements of the column matrix MLAS's im2col writes for a plain (non-NCHWc) convolution.

    MlasConvPrepare multiplies the input directly (GemmDirect, no column matrix) for a 1x1 kernel with all
    strides 1 and no padding; every other convolution is expanded: K = input channels per group x kernel taps
    rows by N = output positions columns, per group (depthwise: 1 channel per group, C groups), so
    input channels x taps x output positions in all, whatever the stride. (The column matrix is then packed
    for the GEMM, again once per element.)
    """
    if taps == 1 and all(s == 1 for s in strides) and not any(pads):
        return 0
    return int(cin) * int(taps) * int(out_positions)


def _ort_optimized(model: Any, tmp: Path) -> Any:
    """ORT's optimized graph (ORT_ENABLE_ALL, 1 thread, CPU) of an in-memory model, as a ModelProto."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.optimized_model_filepath = str(tmp / "optimized.onnx")
    try:
        ort.InferenceSession(model.SerializeToString(), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise EdgeKDError(f"onnxruntime cannot load the model to read its optimized graph: "
                          f"{str(e).splitlines()[0]}") from e
    return onnx.load(str(tmp / "optimized.onnx"))


def _run_shapes(model: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor's runtime shape: the optimized graph (NCHWc ops have no ONNX shape inference) is run once on
    zeros with all node outputs exposed and optimizations off, so it runs as saved."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    exposed = {o.name for o in model.graph.output}
    for n in model.graph.node:
        for o in n.output:
            if o and o not in exposed:
                model.graph.output.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
                exposed.add(o)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.intra_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        sess = ort.InferenceSession(model.SerializeToString(), sess_options=opts,
                                    providers=["CPUExecutionProvider"])
    except Exception as e:  # e.g. a non-float intermediate tensor exposed as a float output
        raise EdgeKDError(f"cannot read the shapes of onnxruntime's optimized graph: {str(e).splitlines()[0]}") from e
    feeds = {}
    shapes: dict[str, tuple[int, ...]] = {}
    for i in sess.get_inputs():
        shape = tuple(d if isinstance(d, int) and d > 0 else 1 for d in i.shape)
        feeds[i.name] = np.zeros(shape, np.float32)
        shapes[i.name] = shape
    for o, v in zip(sess.get_outputs(), sess.run(None, feeds)):
        shapes[o.name] = tuple(np.shape(v))
    return shapes


def ort_nodes(model_or_path: Any, input_shape: Sequence[int] | None = None) -> list[OrtNode]:
    """The nodes ONNX Runtime runs for an ONNX model (path or ModelProto) on this CPU, with their work.

    The graph is optimized as a default session would (level ALL: Conv+BN+activation, Conv+Add and Gemm+Relu
    fusions, the NCHWc layout with its reorders) and run once to read every tensor's shape.
    """
    import tempfile

    model = _static_model(model_or_path, input_shape)
    for vi in model.graph.input:
        if vi.type.tensor_type.elem_type != 1:
            raise EdgeKDError("the ONNX node model needs a float32 graph input; use the per-layer model")
    with tempfile.TemporaryDirectory(prefix="edgekd-ortgraph-") as tmp:
        opt = _ort_optimized(model, Path(tmp))
    inits = {t.name: tuple(t.dims) for t in opt.graph.initializer}
    shapes = {**inits, **_run_shapes(opt)}
    producer = {o: n for n in opt.graph.node for o in n.output}

    def blocked(name: str) -> bool:  # an NCHWc tensor: made by an NCHWc op other than ReorderOutput
        p = producer.get(name)
        return p is not None and p.domain == NCHWC_DOMAIN and p.op_type != "ReorderOutput"

    nodes = []
    for idx, n in enumerate(opt.graph.node):
        op = n.op_type
        ins = [i for i in n.input]
        attrs = {a.name: a for a in n.attribute}
        out = shapes.get(n.output[0], ()) if n.output else ()
        out_elems = _prod(out)
        src = ins[0] if ins else ""
        in_elems = _prod(shapes.get(src, ())) if src and src not in inits else 0
        weight_elems = sum(_prod(inits[i]) for i in ins[1:] if i in inits)
        macs, taps, sum_elems, kind, out_ch, edge, valid, cols = 0, 1, 0, "elementwise", 0, 0.0, 1.0, 0
        if op in ("Conv", "FusedConv"):
            w = shapes.get(ins[1], ())
            group = attrs["group"].i if "group" in attrs else 1
            taps = _prod(w[2:]) if len(w) > 2 else 1
            cin = shapes.get(src, (1, 1))[1] if len(shapes.get(src, ())) > 1 else 1
            dw = group > 1 and group == cin
            out_ch = out[1] if len(out) > 1 else 0
            macs = out_elems * taps * (1 if dw else max(cin // group, 1))
            edge, valid = 0.0, 1.0
            src_shape = shapes.get(src, ())
            ints = {k: list(a.ints) for k, a in attrs.items() if a.ints}
            pads = ints.get("pads", [0, 0, 0, 0])
            st = ints.get("strides", [1, 1])
            if len(w) == 4 and len(src_shape) == 4 and len(out) == 4:
                dil = ints.get("dilations", [1, 1])
                _, vh = _window_stats(src_shape[2], out[2], w[2], st[0], pads[0], dil[0])
                edge, vw = _window_stats(src_shape[3], out[3], w[3], st[1], pads[1], dil[1])
                valid = vh * vw
            if len(ins) > 3 and ins[3]:
                sum_elems = _prod(shapes.get(ins[3], ()))
            if n.domain != NCHWC_DOMAIN:
                kind = "im2col"
                cols = _im2col_cols(cin, taps, _prod(out[2:]) if len(out) > 2 else 1, st, pads)
            elif dw:
                kind = "dw"
            elif not blocked(src):  # NCHWc conv reading a plain NCHW tensor (few input channels)
                kind = "pwin" if taps == 1 else "convin"
            else:
                kind = "pw" if taps == 1 else "conv"
        elif op in ORT_GEMM:
            a = shapes.get(src, ())
            kdim = a[-1] if a else 1
            if "transA" in attrs and attrs["transA"].i and len(a) == 2:
                kdim = a[0]
            macs, kind = out_elems * kdim, "gemm"
        elif op in ("ReorderInput", "ReorderOutput"):
            kind = "reorder"
        elif op in ORT_POOL:
            kind = "pool"
        elif op in ORT_FREE:
            kind = "free"
        else:
            in_elems = max(in_elems, sum(_prod(shapes.get(i, ())) for i in ins if i and i not in inits))
        nodes.append(OrtNode(n.name or f"{op}_{idx}", f"{n.domain + '.' if n.domain else ''}{op}", kind,
                             int(macs), int(in_elems), int(out_elems), int(weight_elems), int(taps), int(sum_elems),
                             int(out_ch), edge, valid, int(cols)))
    if not nodes:
        raise EdgeKDError("onnxruntime's optimized graph has no nodes to cost")
    graph_in = sum(_prod(shapes.get(i.name, ())) for i in opt.graph.input if i.name not in inits)
    graph_out = sum(_prod(shapes.get(o.name, ())) for o in model.graph.output)
    # The call itself: fixed cost plus binding the input and copying the outputs back to numpy.
    nodes.append(OrtNode("(session run)", "run", "io", 0, int(graph_in), int(graph_out), 0))
    return nodes


def model_ort_nodes(model_or_path: Any, input_shape: Sequence[int] | None = None) -> list[OrtNode]:
    """ort_nodes of a torch module (needs input_shape), an ONNX file or an ONNX ModelProto."""
    if isinstance(model_or_path, (str, Path)):
        suffix = existing_model_file(model_or_path).suffix
        if suffix.lower() != ".onnx":
            raise EdgeKDError(f"the ONNX Runtime node model reads .onnx files; got {suffix!r}")
        return ort_nodes(model_or_path, input_shape)
    if hasattr(model_or_path, "graph") and hasattr(model_or_path.graph, "node"):
        return ort_nodes(model_or_path, input_shape)
    if input_shape is None:
        raise EdgeKDError("a torch model needs input_shape=(N, C, H, W) (or (N, features)) for the predictor")
    return ort_nodes(onnx_from_torch(model_or_path, input_shape), input_shape)
