"""A PT2E quantizer configured by a Scheme: litert-torch's TFLite annotator patterns with the Scheme's int ranges.

The same annotated graph serves both exporters: litert-torch lowers its Q/DQ pairs to a TFLite int8 model and the
dynamo ONNX exporter writes them as QuantizeLinear/DequantizeLinear. Layers named in `keep_float` stay in float.
"""
from __future__ import annotations

import contextlib
import copy
import operator
from typing import Callable, Iterable, Iterator

import torch

from edgekd.logs import import_quietly
from edgekd.quant.schemes import Scheme

# Activation observers for PTQ calibration, by method name (see ptq.py for "percentile").
_EPS = 2 ** -12


def _qdtype(name: str) -> torch.dtype:
    return {"int8": torch.int8, "uint8": torch.uint8}[name]


def activation_spec(scheme: Scheme, observer_ctr) -> "QuantizationSpec":
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    return QuantizationSpec(
        dtype=_qdtype(scheme.activation_dtype), quant_min=scheme.activation_qmin, quant_max=scheme.activation_qmax,
        qscheme=torch.per_tensor_symmetric if scheme.symmetric_activations else torch.per_tensor_affine,
        is_dynamic=False, observer_or_fake_quant_ctr=observer_ctr.with_args(eps=_EPS))


def weight_spec(scheme: Scheme, is_qat: bool) -> "QuantizationSpec":
    from torchao.quantization.pt2e import (FusedMovingAvgObsFakeQuantize, MinMaxObserver,
                                           MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                           PerChannelMinMaxObserver)
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    qscheme = torch.per_channel_symmetric if scheme.per_channel else torch.per_tensor_symmetric
    if is_qat:
        observer = MovingAveragePerChannelMinMaxObserver if scheme.per_channel else MovingAverageMinMaxObserver
        ctr = FusedMovingAvgObsFakeQuantize.with_args(observer=observer, eps=_EPS)
    else:
        ctr = (PerChannelMinMaxObserver if scheme.per_channel else MinMaxObserver).with_args(eps=_EPS)
    return QuantizationSpec(dtype=_qdtype(scheme.weight_dtype), quant_min=scheme.weight_qmin,
                            quant_max=scheme.weight_qmax, qscheme=qscheme, ch_axis=0, is_dynamic=False,
                            observer_or_fake_quant_ctr=ctr)


def quantization_config(scheme: Scheme, is_qat: bool, activation_observer=None):
    """litert-torch QuantizationConfig carrying the Scheme's ranges (QAT: fused moving-average fake quant)."""
    import_quietly("litert_torch")  # TensorFlow loads with it: without its start-up lines
    from litert_torch.quantize.pt2e_quantizer_utils import QuantizationConfig
    from torchao.quantization.pt2e import FusedMovingAvgObsFakeQuantize, HistogramObserver
    from torchao.quantization.pt2e.quantizer import FixedQParamsQuantizationSpec

    if is_qat:
        act_ctr = FusedMovingAvgObsFakeQuantize
    else:
        act_ctr = activation_observer or HistogramObserver
    act = activation_spec(scheme, act_ctr)
    fixed = FixedQParamsQuantizationSpec(dtype=torch.int8, scale=1 / 256, zero_point=-128, quant_min=-128,
                                         quant_max=127, qscheme=torch.per_tensor_affine)
    return QuantizationConfig(act, act, weight_spec(scheme, is_qat), None, fixed, is_qat, False)


def _layer_filter(keep_float: frozenset[str]) -> Callable | None:
    if not keep_float:
        return None

    def quantize_node(n) -> bool:
        paths = [v[0] for v in n.meta.get("nn_module_stack", {}).values()]
        return not any(p == k or p.startswith(k + ".") for p in paths for k in keep_float)

    return quantize_node


def build_quantizer(scheme: Scheme, is_qat: bool, activation_observer=None,
                    keep_float: Iterable[str] = ()):
    """A litert-torch PT2EQuantizer for `scheme`; layers (module paths) in `keep_float` are left unannotated."""
    import_quietly("litert_torch")  # TensorFlow loads with it: without its start-up lines
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer

    keep = frozenset(keep_float)
    config = quantization_config(scheme, is_qat, activation_observer)

    class SchemeQuantizer(PT2EQuantizer):
        def annotate(self, model):
            record_source_fns(model)
            self._annotate_all_static_patterns(model, self.global_config, _layer_filter(keep))
            annotate_cat(model, self.global_config)
            quantize_after_clamp(model)
            annotate_global_pools(model, config)
            share_quantization(model)
            read_fixed_outputs_as_stored(model)
            return model

    q = SchemeQuantizer().set_global(config)
    q.scheme = scheme
    q.keep_float = keep
    return q


def _source_fns() -> dict:
    """The user-level function litert-torch's annotators look for (by source partition), per aten op."""
    aten, F = torch.ops.aten, torch.nn.functional
    return {aten.add.Tensor: torch.add, aten.add_.Tensor: torch.add, aten.mul.Tensor: torch.mul,
            aten.mul_.Tensor: torch.mul, aten.relu.default: torch.nn.ReLU, aten.relu_.default: torch.nn.ReLU,
            aten.max_pool2d.default: F.max_pool2d, aten.adaptive_avg_pool2d.default: F.adaptive_avg_pool2d,
            aten.cat.default: torch.cat}


def record_source_fns(model: torch.fx.GraphModule) -> int:
    """Give each add, mul, relu, max/avg pool and cat node the `source_fn_stack` entry its annotator matches.

    litert-torch finds these ops by source partition: the `source_fn_stack` metadata the tracer used to record
    (`torch.add`, `torch.nn.ReLU`, ...). torch.export in torch 2.13 records `torch_fn` instead, so those
    annotators silently matched nothing: every residual add and squeeze-excitation mul ran in float between
    dequantized inputs, and an add feeding the next block's add passed it an unquantized tensor that no int8 file
    has (mobilenet_v2: 10 float adds, 4 of them chained; both files agreed with each other and 98.0% with the
    simulation). Each node is its own partition, as the tracer recorded them. Only float nodes whose value is used
    are marked (a training graph's BatchNorm counts batches with an integer `add_` that nothing reads, and a
    partition without an output node breaks the annotator). Returns how many nodes it marked.
    """
    sources, marked = _source_fns(), 0
    for n in model.graph.nodes:
        val = n.meta.get("val")
        if (n.op == "call_function" and n.target in sources and not n.meta.get("source_fn_stack") and n.users
                and isinstance(val, torch.Tensor) and val.is_floating_point()):
            n.meta["source_fn_stack"] = [(n.name, sources[n.target])]
            marked += 1
    return marked


def _identity_ops() -> frozenset:
    """Ops that only pass or move values (an identity in an exported eval model, or a layout change): the
    converters drop them or lower them to int8 ops that keep their input's scale (TFLite TRANSPOSE, RESHAPE)."""
    aten = torch.ops.aten
    names = [("dropout", "default"), ("dropout_", "default"), ("feature_dropout", "default"),
             ("feature_dropout_", "default"), ("alpha_dropout", "default"), ("alpha_dropout_", "default"),
             ("feature_alpha_dropout", "default"), ("clone", "default"), ("contiguous", "default"),
             ("alias", "default"), ("detach", "default"), ("detach_", "default"), ("transpose", "int"),
             ("t", "default"), ("reshape", "default"), ("unsqueeze", "default"), ("squeeze", "default"),
             ("squeeze", "dims"), ("unflatten", "int"), ("pixel_shuffle", "default"), ("channel_shuffle", "default")]
    return frozenset(getattr(getattr(aten, op), overload) for op, overload in names
                     if hasattr(aten, op) and hasattr(getattr(aten, op), overload))


def _split_ops() -> frozenset:
    aten = torch.ops.aten
    names = [("chunk", "default"), ("split", "Tensor"), ("split", "default"), ("split_with_sizes", "default"),
             ("unbind", "int"), ("tensor_split", "sections")]
    return frozenset(getattr(getattr(aten, op), overload) for op, overload in names
                     if hasattr(aten, op) and hasattr(getattr(aten, op), overload))


def annotate_cat(model: torch.fx.GraphModule, config) -> None:
    """Concatenations litert-torch's `cat` annotator misses: it finds them by source partition (`torch.cat`
    recorded by the tracer), which torch.export's graphs of e.g. torchvision's shufflenet do not carry
    (`record_source_fns` now gives each cat that entry; this stays for any cat its partition matcher rejects). Left
    unannotated, the simulation concatenates in float tensors on two int8 grids and passes them on unquantized,
    which no int8 file can do. Here, as litert-torch does: inputs and output share the first input's parameters
    (TFLite CONCATENATION requires one scale)."""
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    for n in model.graph.nodes:
        if n.op != "call_function" or n.target != torch.ops.aten.cat.default:
            continue
        mine = n.meta.get("quantization_annotation")
        if mine is not None and mine._annotated:
            continue
        inputs = [a for a in n.args[0] if isinstance(a, torch.fx.Node)]
        if not inputs:
            continue
        shared = SharedQuantizationSpec((inputs[0], n))
        specs = {inputs[0]: config.input_activation}
        specs.update({a: shared for a in inputs[1:]})
        n.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map=specs, output_qspec=shared,
                                                                   _annotated=True)


def _clamp_bounds(node) -> tuple[float, float] | None:
    aten = torch.ops.aten
    if node.target in (aten.hardtanh.default, aten.hardtanh_.default):
        lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
        hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
        return float(lo), float(hi)
    return None


def quantize_after_clamp(model: torch.fx.GraphModule) -> None:
    """Observe a conv/linear (or QAT conv+BN) output after its ReLU6-like clamp, not before it.

    litert-torch annotates `conv -> hardtanh(0, 6)` as a conv whose output is observed *before* the clamp, with
    the clamp sharing that range: ReLU6 outputs (0..6) then use the int8 grid of the pre-activation range (e.g.
    -10..9), half or more of the codes wasted — a model of ReLU6 blocks (mobilenet_v2) is quantized at ~7 bits.
    Both runtimes fuse the clamp into the conv (TFLite RELU6, onnxruntime Clip folded into QLinearConv's output
    range), so the tensor they store is the clamp's output: observing it there is exact and finer. Only clamps
    the converters fuse (0..6, -1..1, 0..1 as RELU_0_TO_1) whose producer has no other user are moved.
    """
    aten = torch.ops.aten
    producers = {aten.conv1d.default, aten.conv2d.default, aten.convolution.default, aten.linear.default,
                 aten.batch_norm.default, aten._native_batch_norm_legit.default,
                 aten._native_batch_norm_legit_no_training.default, aten.cudnn_batch_norm.default}
    for n in model.graph.nodes:
        bounds = _clamp_bounds(n) if n.op == "call_function" else None
        if bounds not in ((0.0, 6.0), (-1.0, 1.0), (0.0, 1.0)):
            continue
        prev = n.args[0]
        if not isinstance(prev, torch.fx.Node) or len(prev.users) != 1:
            continue
        if prev.target == operator.getitem:  # QAT: batch_norm's output tuple
            prev = prev.args[0]
        if prev.target not in producers:
            continue
        annotation = prev.meta.get("quantization_annotation")
        if annotation is None or annotation.output_qspec is None or n.meta.get("quantization_annotation"):
            continue
        spec = annotation.output_qspec
        if type(spec).__name__ != "QuantizationSpec":  # shared or fixed parameters: leave them
            continue
        from torchao.quantization.pt2e.quantizer import QuantizationAnnotation

        annotation.output_qspec = None
        n.meta["quantization_annotation"] = QuantizationAnnotation(output_qspec=spec, _annotated=True)


def share_quantization(model: torch.fx.GraphModule) -> None:
    """Give the ops that only move, clamp or pass values on their input's quantization parameters.

    litert-torch's `propagate_annotation` does this for its list (hardtanh, mean, views, flatten, ...), but not for
    dropout and other identities. Left unannotated, such an op makes the next quantized op observe its input
    afresh: the simulation then requantizes the same values from one scale to another (mobilenet_v2: the head's
    input, after flatten -> dropout, went from the conv's pre-ReLU6 scale 0.051 to 0.014), while the converters
    drop the identity and feed that op the tensor at its first scale — litert-torch keeps the bias quantized for
    the second scale, so the int8 head computed 3.7x its bias (top-1 agreement with the simulation 36%).
    One pass in graph order, so chains (flatten -> dropout -> view) share one set of parameters.
    """
    import_quietly("litert_torch")  # TensorFlow loads with it: without its start-up lines
    from litert_torch.quantize.pt2e_quantizer_utils import _is_share_obs_or_fq_op
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    identities, splits = _identity_ops(), _split_ops()
    for n in model.graph.nodes:
        if (n.op == "call_function" and n.target == operator.getitem and isinstance(n.args[0], torch.fx.Node)
                and n.args[0].target in splits and isinstance(n.args[0].args[0], torch.fx.Node)):
            # a chunk/split piece keeps the split tensor's parameters (TFLite SPLIT requires it)
            src = n.args[0].args[0]
            annotation = src.meta.get("quantization_annotation")
            if annotation is not None and annotation.output_qspec is not None and not n.meta.get(
                    "quantization_annotation"):
                n.meta["quantization_annotation"] = QuantizationAnnotation(
                    output_qspec=SharedQuantizationSpec(src), _annotated=True)
            continue
        if n.op != "call_function" or not (_is_share_obs_or_fq_op(n.target) or n.target in identities):
            continue
        prev = n.args[0] if n.args else None
        if not isinstance(prev, torch.fx.Node):
            continue
        annotation = prev.meta.get("quantization_annotation")
        if annotation is None or annotation.output_qspec is None:
            continue
        mine = n.meta.get("quantization_annotation")
        if mine is not None and mine._annotated:
            continue
        shared = SharedQuantizationSpec(prev)
        n.meta["quantization_annotation"] = QuantizationAnnotation(input_qspec_map={prev: shared},
                                                                   output_qspec=shared, _annotated=True)


def _is_global_pool(node) -> bool:
    """A mean over the two spatial dims of an NCHW tensor: adaptive_avg_pool2d to 1x1, or mean.dim over (H, W)."""
    aten = torch.ops.aten
    if node.op != "call_function":
        return False
    if node.target in (aten.adaptive_avg_pool2d.default, aten._adaptive_avg_pool2d.default):
        size = node.args[1] if len(node.args) > 1 else node.kwargs.get("output_size")
        size = [size] if isinstance(size, int) else list(size)
        return all(s == 1 for s in size)
    if node.target == aten.mean.dim:
        x = node.args[0]
        dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if val is None or dims is None or val.dim() != 4:
            return False
        dims = [dims] if isinstance(dims, int) else list(dims)
        return sorted(d % 4 for d in dims) == [2, 3]
    return False


def annotate_global_pools(model: torch.fx.GraphModule, config) -> None:
    """Give each global average pool its own output parameters instead of its input's. (Pools over a fixed
    height and width are depthwise convs by now, `avg_pools_as_depthwise_conv`; this covers the rest.)

    litert-torch annotates adaptive_avg_pool2d / mean as sharing their input's scale. A mean of N values at the
    input's step is then a half step whenever the integer sum is ≡ N/2 mod N (N = 4 for the 2x2 maps at 64 px),
    and each computation breaks those ties its own way: the simulation by the float error of averaging
    dequantized values, onnxruntime (DequantizeLinear -> ReduceMean -> QuantizeLinear) by its own float error,
    LiteRT's MEAN kernels by their fixed-point rule (measured on 64-channel 2x2 maps: 1.6% / 2.5% / 34% of the
    pooled values of onnxruntime / LiteRT with XNNPACK / LiteRT's builtin kernel one step from the simulation's).
    TFLite MEAN and onnxruntime's QuantizeLinear take a separate output scale: with its own observer the mean is
    rounded once at a scale unrelated to the input's, ties are as rare as float error (measured: 0 of 6400 values
    differ in onnxruntime and XNNPACK, 0.6% in the builtin kernel), and the pooled vector (the squeeze of
    squeeze-excitation blocks) keeps the finer step its own range allows. litert-torch still lowers it to one
    MEAN op (no QUANTIZE).
    """
    from torchao.quantization.pt2e.quantizer import QuantizationAnnotation, SharedQuantizationSpec

    for n in model.graph.nodes:
        if not _is_global_pool(n):
            continue
        prev = n.args[0]
        producer = prev.meta.get("quantization_annotation") if isinstance(prev, torch.fx.Node) else None
        if producer is None or producer.output_qspec is None:
            continue  # an unquantized input (keep_float): leave the pool as litert-torch annotated it
        n.meta["quantization_annotation"] = QuantizationAnnotation(
            input_qspec_map={prev: SharedQuantizationSpec(prev)}, output_qspec=config.output_activation,
            _annotated=True)


# The largest global pool (h*w values) rewritten as a depthwise conv. LiteRT (XNNPACK) runs a depthwise conv with a
# large window far slower than MEAN: measured, a conv(96->96, 1x1) + pool + linear net at 1 thread took 0.0147 /
# 0.0149 ms (conv / MEAN) at 4x4, 0.0325 / 0.0197 at 8x8, 0.104 / 0.041 at 16x16, 0.43 / 0.13 at 32x32 and 2.33 /
# 0.35 at 56x56; onnxruntime's QLinearConv is as fast as its ReduceMean at every size. 8x8 keeps the squeeze of the
# late squeeze-excitation blocks and every classifier head at 224 px (7x7) exact, and the cost bounded.
GLOBAL_POOL_MAX_WINDOW = 64


def _pool_window(n) -> tuple[torch.fx.Node, list[int], list[int], bool] | None:
    """(input, kernel, stride, keepdim) of an average pool a depthwise conv can replace, else None: an unpadded
    avg_pool2d, or a global pool (`_is_global_pool`) over a 4-D input of static height and width."""
    aten = torch.ops.aten
    if n.op != "call_function" or not n.args or not (n.target == aten.avg_pool2d.default or _is_global_pool(n)):
        return None
    x = n.args[0]
    val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
    if not isinstance(val, torch.Tensor) or val.dim() != 4:
        return None
    if n.target == aten.avg_pool2d.default:
        args = list(n.args) + [None] * (7 - len(n.args))
        _, kernel, stride, padding, ceil_mode, _, divisor = args[:7]
        kernel = [kernel] * 2 if isinstance(kernel, int) else list(kernel)
        kernel = kernel * 2 if len(kernel) == 1 else kernel
        stride = kernel if not stride else ([stride] * 2 if isinstance(stride, int) else list(stride))
        stride = stride * 2 if len(stride) == 1 else stride
        padding = [0, 0] if padding is None else ([padding] * 2 if isinstance(padding, int) else list(padding))
        if (any(p != 0 for p in padding) or ceil_mode or n.kwargs.get("ceil_mode") or divisor is not None
                or n.kwargs.get("divisor_override") is not None):
            return None
        return x, kernel, stride, True
    h, w = val.shape[2], val.shape[3]
    if not (isinstance(h, int) and isinstance(w, int)) or h * w > GLOBAL_POOL_MAX_WINDOW:
        return None  # a dynamic spatial size, or a window LiteRT runs much slower as a conv than as MEAN
    keepdim = n.target != aten.mean.dim or bool(n.args[2] if len(n.args) > 2 else n.kwargs.get("keepdim"))
    return x, [h, w], [h, w], keepdim


@torch.no_grad()
def avg_pools_as_depthwise_conv(gm: torch.fx.GraphModule) -> int:
    """Rewrite each unpadded avg_pool2d and each global average pool of a captured graph as the depthwise conv it
    equals (weight 1/(kh*kw); a global pool's window is its input's height and width, fixed in the graph, and at
    most GLOBAL_POOL_MAX_WINDOW values: larger ones stay MEAN, see there).

    TFLite's int8 AVERAGE_POOL_2D must keep its input's scale, so litert-torch lowers a pool whose output has
    its own parameters to AVERAGE_POOL_2D + QUANTIZE: two roundings the simulation does not make (densenet121's
    transitions: 55% of the pooled values one or two steps from the simulation's, measured). Sharing the input's
    scale instead makes a quarter of a 2x2 pool's outputs exact half steps, which LiteRT rounds half away from
    zero on the stored int8 sum and onnxruntime's QLinearAveragePool half to even on its uint8 value (measured:
    no rule the simulation could follow matches both). Global pools with an output scale of their own
    (`annotate_global_pools`) still ran as float DequantizeLinear -> ReduceMean -> QuantizeLinear in onnxruntime
    and as MEAN in LiteRT, each rounding near-ties its own way: the squeeze-excitation pools were where
    onnxruntime's mobilenet_v3_large and efficientnet_b0 files first parted from their simulation (6 of 8 traced
    rows each). A depthwise conv is integer arithmetic in both runtimes (DEPTHWISE_CONV_2D, QLinearConv): an exact
    int32 sum and one requantization, which the judge simulates exactly (`agreement.simulate_integer_kernels`).
    Float result unchanged (up to float rounding of the weight 1/(kh*kw)). Returns how many pools were rewritten.
    """
    aten = torch.ops.aten
    rewritten = 0
    for n in list(gm.graph.nodes):
        window = _pool_window(n)
        if window is None:
            continue
        x, kernel, stride, keepdim = window
        val = x.meta["val"]
        channels = int(val.shape[1])
        name = f"_edgekd_avg_pool_weight_{rewritten}"
        while hasattr(gm, name):
            name += "_"
        gm.register_buffer(name, torch.full((channels, 1, *kernel), 1.0 / (kernel[0] * kernel[1]),
                                            dtype=val.dtype))
        with gm.graph.inserting_before(n):
            w = gm.graph.get_attr(name)
            conv = gm.graph.call_function(aten.conv2d.default, (x, w, None, stride, [0, 0], [1, 1], channels))
            out = conv if keepdim else gm.graph.call_function(aten.flatten.using_ints, (conv, 1))
        w.meta["val"] = getattr(gm, name)
        # The layer keeps its name (nn_module_stack: keep_float, diagnostics); its source is the conv, or the
        # annotators that match by module type would take it for the pool module it came from.
        meta = {k: v for k, v in n.meta.items() if k in ("nn_module_stack", "stack_trace")}
        conv.meta.update(meta, source_fn_stack=[(conv.name, torch.nn.functional.conv2d)])
        conv.meta["val"] = n.meta["val"] if keepdim else n.meta["val"].reshape(*n.meta["val"].shape, 1, 1)
        if not keepdim:
            out.meta.update(meta, source_fn_stack=[(out.name, torch.flatten)])
            out.meta["val"] = n.meta["val"]
        n.replace_all_uses_with(out)
        gm.graph.erase_node(n)
        rewritten += 1
    if rewritten:
        gm.graph.lint()
        gm.recompile()
    return rewritten


def _dequant_scale(gm: torch.fx.GraphModule, node) -> torch.Tensor | None:
    """The scale(s) of a dequantize node of a converted graph (float or get_attr tensor), as float64."""
    if not (isinstance(node, torch.fx.Node) and node.op == "call_function"
            and "dequantize_per" in getattr(node.target, "__name__", str(node.target))):
        return None
    scale = node.args[1]
    if isinstance(scale, torch.fx.Node):
        if scale.op != "get_attr":
            return None
        scale = _attr(gm, scale.target)
    return torch.as_tensor(scale, dtype=torch.float64).flatten()


def _attr(gm: torch.fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


@torch.no_grad()
def snap_bias_to_int32_grid(gm: torch.fx.GraphModule) -> int:
    """Round each quantized conv/linear bias of a converted simulation to the int32 grid the files store.

    The Q/DQ simulation adds the float bias; TFLite and onnxruntime add it as int32 in steps of input scale x
    weight scale (per output channel). The rounding — up to half that step, ~0.3% of an output step in
    mobilenet_v2's first conv — flips the output's rounding on ~0.1% of the elements, and a model that amplifies
    one-step differences then parts from its simulation (mobilenet_v2: its ONNX and TFLite files agreed with each
    other on every top-1 and with the simulation on 85%). On the grid, the float bias *is* the int32 bias (the
    converters' own rounding gives back the same integer) and the simulation adds what the kernels add.
    Returns how many biases were snapped.
    """
    aten = torch.ops.aten
    ops = {aten.conv1d.default, aten.conv2d.default, aten.convolution.default, aten.linear.default}
    snapped = 0
    for n in gm.graph.nodes:
        if n.op != "call_function" or n.target not in ops or len(n.args) < 3:
            continue
        x, weight, bias = n.args[:3]
        if not (isinstance(bias, torch.fx.Node) and bias.op == "get_attr"):
            continue
        s_in, s_w = _dequant_scale(gm, x), _dequant_scale(gm, weight)
        if s_in is None or s_w is None or s_in.numel() != 1:
            continue
        b = _attr(gm, bias.target)
        if not isinstance(b, torch.Tensor) or b.dim() != 1 or s_w.numel() not in (1, b.numel()):
            continue
        step = s_in * s_w
        b.copy_((torch.round(b.double() / step) * step).to(b.dtype))
        snapped += 1
    return snapped


def qparams_float64(scale, zero_point, axis: int | None, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A (de)quantize node's scale and zero point as float64 tensors that broadcast over an `ndim`-dim tensor:
    per channel along `axis`, per tensor when `axis` is None."""
    scale = torch.as_tensor(scale).to(torch.float64)
    zero_point = torch.as_tensor(zero_point).to(torch.float64)
    if axis is None:
        return scale, zero_point
    shape = [1] * ndim
    shape[axis] = -1
    return scale.reshape(shape), zero_point.reshape(shape)


@torch.no_grad()
def snap_weights_to_grid(gm: torch.fx.GraphModule) -> int:
    """Replace each constant weight of a converted simulation by the value its quantize/dequantize pair gives back.

    The simulation quantizes a float weight as round(w * (1 / scale)) clamped to the scheme's range; each converter
    quantizes it again in its own way (edgekd's onnx fold: rint(w / scale)), so a weight within an ulp of a
    rounding tie can land on different integers (mobilenet_v2 after QAT+KD: 1 of 2.2M weights, in both files).
    After QAT many weights also lie past the range their frozen observer saw (6368 in that model, up to 7%): both
    converters clamp them as the simulation does (measured), but on the grid no converter has a choice. The
    simulation's output is unchanged. Returns how many weights were snapped.
    """
    quantize_ops = {"quantize_per_channel", "quantize_per_tensor"}
    snapped = 0
    for n in gm.graph.nodes:
        name = getattr(n.target, "__name__", str(n.target)).split(".")[0]
        if n.op != "call_function" or name not in quantize_ops:
            continue
        weight = n.args[0]
        if not (isinstance(weight, torch.fx.Node) and weight.op == "get_attr"):
            continue
        w = _attr(gm, weight.target)
        if not isinstance(w, torch.Tensor) or not w.is_floating_point():
            continue
        args = [_attr(gm, a.target) if isinstance(a, torch.fx.Node) and a.op == "get_attr" else a for a in n.args]
        if any(isinstance(a, torch.fx.Node) for a in args[1:]):
            continue
        if name == "quantize_per_channel":
            scale, zp, axis, qmin, qmax = args[1:6]
        else:
            (scale, zp, qmin, qmax), axis = args[1:5], None
        scale, zp = qparams_float64(scale, zp, axis, w.dim())
        q = torch.clamp(torch.round(w.double() / scale) + zp, qmin, qmax)
        w.copy_(((q - zp) * scale).to(w.dtype))
        snapped += 1
    return snapped


def read_fixed_outputs_as_stored(model: torch.fx.GraphModule) -> None:
    """An op that reads a fixed-parameter output (sigmoid, hard-sigmoid, softmax, tanh: TFLite's LOGISTIC etc.
    store it at scale 1/256) reads it at those parameters instead of observing its own input range.

    Otherwise the simulation requantizes the gate from 1/256 to the consumer's observed ~1/255 (efficientnet's
    squeeze-excitation: sigmoid -> mul), a second rounding the int8 files do not make in the same place.
    """
    from torchao.quantization.pt2e.quantizer import (FixedQParamsQuantizationSpec, QuantizationSpec,
                                                     SharedQuantizationSpec)

    for n in model.graph.nodes:
        annotation = n.meta.get("quantization_annotation")
        if annotation is None:
            continue
        for arg, spec in list(annotation.input_qspec_map.items()):
            producer = arg.meta.get("quantization_annotation") if isinstance(arg, torch.fx.Node) else None
            if (type(spec) is QuantizationSpec and producer is not None
                    and isinstance(producer.output_qspec, FixedQParamsQuantizationSpec)):
                annotation.input_qspec_map[arg] = SharedQuantizationSpec(arg)


_PATTERN_CACHE: dict = {}


def _pattern_key(pattern, example_inputs, is_cuda, kwargs):
    fn = getattr(pattern, "fn", pattern)  # torchao's WrapperModule keeps the function as .fn
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    cells = []
    for cell in getattr(fn, "__closure__", None) or ():
        value = cell.cell_contents
        if isinstance(value, torch.Tensor):
            return None
        cells.append(value)
    def sig(t):  # example tensors only fix shapes and dtypes of the traced pattern
        return ("tensor", tuple(t.shape), t.dtype) if isinstance(t, torch.Tensor) else t

    key = (code, tuple(cells), tuple(sig(t) for t in example_inputs), bool(is_cuda),
           tuple(sorted((k, sig(v)) for k, v in kwargs.items())))
    try:
        hash(key)
    except TypeError:
        return None
    return key


@contextlib.contextmanager
def pt2e_patches() -> Iterator[None]:
    """Make PT2E pattern building work with litert-torch 0.10 and cost seconds instead of a minute.

    1. litert-torch's conv+bn QAT annotator passes a plain function to torchao's pattern builder, which
       torch.export rejects ("Expected mod to be an instance of torch.nn.Module"): wrap it in WrapperModule.
    2. torchao builds every conv/bn pattern with a strict torch.export (~0.3 s each; QAT convert needs ~100):
       memoize them per process by (code, closure values, example shapes); callers get a copy.
    """
    import_quietly("litert_torch")  # TensorFlow loads with it: without its start-up lines
    import litert_torch.quantize.pt2e_quantizer_utils as litert_utils
    import torchao.quantization.pt2e.qat_utils as qat_utils
    import torchao.quantization.pt2e.utils as ao_utils
    from torchao.quantization.pt2e.export_utils import WrapperModule

    original = ao_utils._get_aten_graph_module_for_pattern
    if getattr(original, "_edgekd_patched", False):  # re-entrant use
        yield
        return

    def cached(pattern, example_inputs, is_cuda=False, **kwargs):
        key = _pattern_key(pattern, example_inputs, is_cuda, kwargs)
        if key is not None and key in _PATTERN_CACHE:
            return copy.deepcopy(_PATTERN_CACHE[key])
        gm = original(pattern, example_inputs, is_cuda, **kwargs)
        if key is not None:
            _PATTERN_CACHE[key] = copy.deepcopy(gm)
        return gm

    def litert_wrapped(pattern, example_inputs, is_cuda=False, **kwargs):
        if not isinstance(pattern, torch.nn.Module):
            pattern = WrapperModule(pattern)
        return cached(pattern, example_inputs, is_cuda, **kwargs)

    def only_present(helper):
        # 3. conv+bn fuse/fold helpers run once per conv kind (1d, 2d, transposed): skip kinds absent from the graph.
        def run(m, conv_fn, example_inputs, is_cuda):
            kinds = {str(n.target).split(".")[-2] for n in m.graph.nodes if n.op == "call_function"
                     and "conv" in str(n.target)}
            if "convolution" in kinds or getattr(conv_fn, "__name__", "") in kinds:
                return helper(m, conv_fn, example_inputs, is_cuda)
            return m

        return run

    cached._edgekd_patched = True
    names = ("_get_aten_graph_module_for_pattern", "_fold_conv_bn_qat_helper", "_fuse_conv_bn_qat_helper")
    saved = {(mod, n): getattr(mod, n) for mod in (ao_utils, qat_utils, litert_utils) for n in names
             if hasattr(mod, n)}
    ao_utils._get_aten_graph_module_for_pattern = cached
    qat_utils._get_aten_graph_module_for_pattern = cached
    litert_utils._get_aten_graph_module_for_pattern = litert_wrapped
    qat_utils._fold_conv_bn_qat_helper = only_present(saved[(qat_utils, "_fold_conv_bn_qat_helper")])
    qat_utils._fuse_conv_bn_qat_helper = only_present(saved[(qat_utils, "_fuse_conv_bn_qat_helper")])
    try:
        yield
    finally:
        for (mod, n), value in saved.items():
            setattr(mod, n, value)
