"""Does an int8 file compute what its fake-quant simulation computes? Top-1 agreement, margins, first diverging layer.

Random-weight models are a poor judge of an int8 file: their logits can be flat (a zero-initialised head) or hardly
depend on the input (BatchNorm statistics of 0/1 that do not match the activations), so top-1 "disagreements" are
near-ties that any rounding flips. `synthetic_images` and `make_input_dependent` give inputs and weights whose
logits depend on the input; `compare_top1` says, for each disagreement, whether it is a near-tie (small margin,
typical error) or a real gap (large error); `layer_divergence` lines up every quantized activation of the file with
the simulation's and names the first one that differs by more than rounding.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def synthetic_images(n: int, size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """`n` normalised NCHW images with natural-image statistics: smooth noise, gratings and flat shapes.

    Natural images have most of their energy at low spatial frequencies and large uniform regions; white noise has
    neither, and drives early layers into ranges no real input reaches. Each image is a low-frequency colour field
    (noise drawn at 1/16 of the size, upsampled bilinearly) plus, by turns, an oriented grating (1-8 cycles) or
    1-4 flat-coloured rectangles/ellipses; pixels are clipped to [0, 1] then normalised with ImageNet mean/std.
    """
    g = torch.Generator().manual_seed(seed)
    low = max(2, size // 16)
    base = torch.rand(n, channels, low, low, generator=g)
    img = nn.functional.interpolate(base, size=(size, size), mode="bilinear", align_corners=False) * 0.6 + 0.2
    yy, xx = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    for i in range(n):
        r = torch.rand(8, generator=g)
        if i % 2 == 0:  # oriented grating, own colour
            theta, freq, phase = r[0] * math.pi, 1 + 7 * r[1], r[2] * 2 * math.pi
            wave = torch.sin(2 * math.pi * freq * (xx * torch.cos(theta) + yy * torch.sin(theta)) + phase)
            color = torch.rand(channels, 1, 1, generator=g) - 0.5
            img[i] += 0.5 * wave * color
        else:  # flat shapes
            for _ in range(1 + int(r[0] * 4)):
                c = torch.rand(6, generator=g)
                cx, cy, w, h = c[0], c[1], 0.1 + 0.4 * c[2], 0.1 + 0.4 * c[3]
                if c[4] < 0.5:
                    mask = ((xx - cx).abs() < w / 2) & ((yy - cy).abs() < h / 2)
                else:
                    mask = ((xx - cx) / w) ** 2 + ((yy - cy) / h) ** 2 < 0.25
                img[i][:, mask] = torch.rand(channels, 1, generator=g)
    img = img.clamp(0, 1)
    mean = torch.tensor(IMAGENET_MEAN[:channels] if channels == 3 else [0.5] * channels).view(1, -1, 1, 1)
    std = torch.tensor(IMAGENET_STD[:channels] if channels == 3 else [0.25] * channels).view(1, -1, 1, 1)
    return ((img - mean) / std).float()


def last_linear(model: nn.Module) -> tuple[str, nn.Linear] | None:
    """(name, module) of the last nn.Linear registered in `model`: the classifier head of torchvision/timm models."""
    found = None
    for name, m in model.named_modules():
        if isinstance(m, nn.Linear):
            found = (name, m)
    return found


@torch.no_grad()
def make_input_dependent(model: nn.Module, x: torch.Tensor, *, rank: int = 4, logit_std: float = 4.0,
                         whiten: bool = False, batch_size: int = 32, seed: int = 0) -> dict:
    """Give a random-weight classifier logits that depend on its input, in place; returns what was done.

    1. BatchNorm running statistics are re-estimated on `x` (cumulative average, other layers in eval mode), so
       every BN normalises the activations it really sees instead of assuming mean 0 / variance 1.
    2. The head (last nn.Linear; a random one if it is all zeros, as torchvision's ViT) becomes what a trained
       linear probe looks like: it reads the `rank` principal directions along which the features vary across `x`,
       mixed at random into the classes, scaled so the logits have std `logit_std` over `x`, with the bias centring
       every logit (each class can win). Deep random nets give features dominated by an input-independent part;
       read as built, their argmax rarely moves and the quantization noise of the 500-1000 weak directions swamps
       the rest (measured: 4x the logit error of the rank-4 head). `rank=0` only rescales and centres the head;
       `whiten` gives each direction equal weight, which amplifies the noise of the weak ones.
    Models without an nn.Linear head (squeezenet's conv head) keep step 1 only.
    """
    model.eval()
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over the batches
        bn.train()
    if bns:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    for bn, momentum in zip(bns, momenta):
        # momentum=None would make QAT's torch.export trace 1/num_batches_tracked (data-dependent): restore it
        bn.momentum = momentum
        bn.eval()
    info = {"batchnorm_recalibrated": len(bns), "head": None}
    head = last_linear(model)
    if head is None:
        return info
    name, linear = head
    feats = []
    hook = linear.register_forward_hook(lambda m, inp, out: feats.append(inp[0].detach().flatten(1)))
    try:
        for i in range(0, len(x), batch_size):
            model(x[i:i + batch_size])
    finally:
        hook.remove()
    f = torch.cat(feats).double()
    mu = f.mean(0)
    weight = linear.weight.double()
    if not weight.abs().max() > 0:  # a zero-initialised head (torchvision's ViT): start from a random one
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(weight.shape, generator=g, dtype=torch.float64) / math.sqrt(weight.shape[1])
    if rank:  # a head reading the `rank` principal directions of the features, whitened, mixed into the classes
        k = max(1, min(rank, f.shape[0] - 1, f.shape[1]))
        _, s, vh = torch.linalg.svd(f - mu, full_matrices=False)
        directions = vh[:k] * (1 / s[:k, None].clamp_min(1e-12) if whiten else 1.0)
        g = torch.Generator().manual_seed(seed)
        weight = torch.randn(linear.out_features, k, generator=g, dtype=torch.float64) @ directions
    spread = ((f - mu) @ weight.T).std().clamp_min(1e-12)
    weight = weight * (logit_std / spread)
    linear.weight.copy_(weight.to(linear.weight.dtype))
    if linear.bias is not None:
        linear.bias.copy_((-(weight @ mu)).to(linear.bias.dtype))
    info["head"] = {"name": name, "rank": rank, "logit_std": logit_std}
    return info


def logit_diversity(logits: np.ndarray) -> dict:
    """How input-dependent logits are: distinct top-1 classes and the median top-1/top-2 margin over row std."""
    top2 = np.sort(logits, axis=1)[:, -2:]
    margin = (top2[:, 1] - top2[:, 0]) / np.maximum(logits.std(axis=1), 1e-12)
    return {"distinct_top1": int(len(np.unique(logits.argmax(1)))), "rows": int(len(logits)),
            "median_margin_over_std": float(np.median(margin))}


def compare_top1(reference: np.ndarray, outputs: np.ndarray, resolution: float = 0.0) -> dict:
    """Top-1 agreement of `outputs` with `reference` logits and, for each disagreement, near-tie or real gap.

    For a disagreeing row, `margin` is how far the reference prefers its class over the file's
    (z[ref_top1] - z[file_top1]) and `error` the row's max |file - reference|. A near-tie has a margin among the
    smallest of all rows (`margin_percentile` low) and an ordinary error (`error_over_median` ~1); a real
    file-vs-simulation gap shows as an error far above the other rows'. `agreement_decisive` counts only rows
    whose margin exceeds twice the 99th-percentile row error (rows rounding cannot flip).

    `resolution` is the int8 output step of the simulation (`output_quantization`): its logits are multiples of
    it, so two classes within one step are a tie at int8 precision that a one-step rounding difference (allowed
    by every int8 kernel) breaks either way. `agreement_at_resolution` counts a row as agreeing when the file's
    top-1 class scores within `resolution` of the reference's best, in the reference.
    """
    ref = np.asarray(reference, dtype=np.float64).reshape(len(reference), -1)
    out = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    a, b = ref.argmax(1), out.argmax(1)
    rows = np.arange(len(ref))
    sorted_ref = np.sort(ref, axis=1)
    margins = sorted_ref[:, -1] - sorted_ref[:, -2]
    errors = np.abs(out - ref).max(1)
    med_err = float(np.median(errors)) if len(errors) else 0.0
    threshold = 2 * float(np.percentile(errors, 99)) if len(errors) else 0.0
    decisive = margins > threshold
    bad = np.nonzero(a != b)[0]
    detail = []
    for i in bad[:64]:
        m = float(ref[i, a[i]] - ref[i, b[i]])
        detail.append({"row": int(i), "margin": m, "margin_over_std": m / max(float(ref[i].std()), 1e-12),
                       "margin_percentile": float((margins < m).mean() * 100), "error": float(errors[i]),
                       "error_over_median": float(errors[i] / max(med_err, 1e-12))})
    near_ties = sum(1 for d in detail if d["margin_percentile"] <= 10 and d["error_over_median"] <= 3)
    denom = float(np.linalg.norm(ref)) or 1.0
    within = ref[rows, b] >= ref[rows, a] - resolution * (1 + 1e-6)
    return {"n": int(len(ref)), "agreement": float((a == b).mean()) if len(ref) else float("nan"),
            "resolution": resolution, "agreement_at_resolution": float(within.mean()) if len(ref) else float("nan"),
            "ties_at_resolution": int((margins <= resolution * (1 + 1e-6)).sum()),
            "disagreements": int(len(bad)), "near_ties": near_ties,
            "rel_error": float(np.linalg.norm(out - ref) / denom), "max_abs": float(errors.max()) if len(ref) else 0.0,
            "median_row_error": med_err, "decisive_rows": int(decisive.sum()),
            "agreement_decisive": float((a[decisive] == b[decisive]).mean()) if decisive.any() else float("nan"),
            "median_margin": float(np.median(margins)) if len(ref) else 0.0, "disagreeing": detail,
            "same_class": bool(len(ref)) and bool((a[rows] == b[rows]).all())}


# --- per-layer: quantized activations of the simulation and of the files -------------------------------------------

def _is_quantize(node) -> bool:
    name = getattr(node.target, "__name__", str(node.target))
    return node.op == "call_function" and "quantize_per_tensor" in name and "dequantize" not in name


def simulation_activations(gm: torch.fx.GraphModule, x: torch.Tensor) -> list[dict]:
    """Every activation the simulation quantizes, in graph order: node, layer, op, scale, zero point, int values.

    `steps_of_input_variation` is how many quantization steps the input-dependent part of that activation spans
    (its std across the rows of `x`, averaged over elements, over the scale; for one row, its std): a layer where
    it is ~1 or less keeps little of what distinguishes one input from another, and one-step rounding differences
    there decide the output.
    """
    records: list[dict] = []

    class Recorder(_IntegerKernelSimulation):  # the judge's arithmetic, so its layers are the ones files are judged by
        def run_node(self, n):
            out = super().run_node(n)
            if _is_quantize(n) and isinstance(n.args[0], torch.fx.Node):
                src = n.args[0]
                stack = list(src.meta.get("nn_module_stack", {}).values())
                value = self.env[src].detach().float()
                spread = value.std(0).mean() if value.shape[0] > 1 else value.std()
                records.append({"node": n.name, "layer": stack[-1][0] if stack else "<input>",
                                "op": getattr(src.target, "__name__", str(src.target)).split(".")[0],
                                "scale": float(n.args[1]), "zero_point": int(n.args[2]),
                                "steps_of_input_variation": float(spread / float(n.args[1])),
                                "q": out.detach().to(torch.int32).numpy()})
            return out

    with torch.no_grad():
        Recorder(gm).run(x.double())
    return records


def onnx_activations(path: str | os.PathLike, x: np.ndarray) -> tuple[list[dict], np.ndarray]:
    """The quantized activations onnxruntime really computes for `x`, with its int8 fusions (QLinearConv, ...).

    Adding graph outputs to the original file would change which Q/DQ groups onnxruntime fuses (and so the
    numbers); instead the graph is optimised once (ORT_ENABLE_EXTENDED, saved), every int8/uint8 output of the
    optimised graph with a scalar output scale becomes a graph output, and that graph runs with optimisations off.
    Returns the records and its logits (the caller checks they equal the original session's).
    """
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgekd.export.onnx import ort_optimized_model

    m = ort_optimized_model(path)
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    probes = []
    for node in m.graph.node:
        pairs = [(a, b) for a, b in zip(node.input, node.input[1:]) if a in inits and b in inits
                 and inits[a].dtype == np.float32 and inits[a].size == 1 and inits[b].size == 1
                 and inits[b].dtype in (np.int8, np.uint8)]
        if pairs and node.op_type not in ("DequantizeLinear",) and node.input[0] not in inits:
            scale, zp = pairs[-1]  # the output's (y_scale, y_zero_point) come last among the scalar pairs
            probes.append({"name": node.output[0], "op_type": node.op_type,
                           "scale": float(inits[scale].flatten()[0]), "zero_point": int(inits[zp].flatten()[0])})
    existing = {o.name for o in m.graph.output}
    for p in probes:
        if p["name"] not in existing:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(p["name"]))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sess = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    values = sess.run(None, {sess.get_inputs()[0].name: x.astype(np.float32)})
    by_name = dict(zip(names, values))
    for p in probes:
        p["q"] = by_name[p["name"]].astype(np.int32)
    return probes, values[0]


def tflite_activations(path: str | os.PathLike, x: np.ndarray) -> list[dict]:
    """The file's int8 activation tensors (one scale each), run in LiteRT with every tensor preserved; batch 1."""
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), experimental_preserve_all_tensors=True, num_threads=1)
    interp.allocate_tensors()
    inp = interp.get_input_details()[0]
    scale, zp = inp["quantization"]
    xq = x
    if np.dtype(inp["dtype"]).kind in "iu":
        info = np.iinfo(inp["dtype"])
        xq = np.clip(np.round(x / scale) + zp, info.min, info.max).astype(inp["dtype"])
    interp.set_tensor(inp["index"], xq)
    interp.invoke()
    out = []
    # Tensors some op produces are activations; the rest (weights, biases) are constants.
    produced = {t for op in interp._get_ops_details() for t in op["outputs"]}  # noqa: SLF001
    for d in interp.get_tensor_details():
        q = d["quantization_parameters"]
        if d["index"] not in produced or len(q["scales"]) != 1:
            continue
        if np.dtype(d["dtype"]) not in (np.int8, np.uint8):
            continue
        try:
            value = interp.get_tensor(d["index"])
        except ValueError:
            continue
        out.append({"name": d["name"], "index": d["index"], "scale": float(q["scales"][0]),
                    "zero_point": int(q["zero_points"][0]), "q": value.astype(np.int32)})
    return out


def _aligned(file_q: np.ndarray, sim_shape: tuple[int, ...]) -> np.ndarray | None:
    if file_q.shape == sim_shape:
        return file_q
    if file_q.ndim == 4 and len(sim_shape) == 4 and file_q.transpose(0, 3, 1, 2).shape == sim_shape:
        return file_q.transpose(0, 3, 1, 2)  # TFLite NHWC -> NCHW
    if file_q.size == int(np.prod(sim_shape)):
        return file_q.reshape(sim_shape)
    return None


def layer_divergence(simulation: list[dict], file: list[dict], *, lsb: int = 2) -> dict:
    """Line up the file's quantized activations with the simulation's and find where they part.

    Tensors are matched by scale, zero point (onnx stores uint8: +128) and size, in graph order; among equal
    candidates (shared scales after reshape/concat) the closest one is taken. Differences are in integer steps
    (LSB): 1 is rounding, which every fused int8 kernel produces. The first layer whose max difference exceeds
    `lsb` and the layer with the largest jump in mean difference are named.
    """
    used: set[int] = set()
    rows = []
    for rec in simulation:
        best = None
        for j, f in enumerate(file):
            if abs(f["scale"] - rec["scale"]) > 1e-5 * rec["scale"]:
                continue
            shift = f["zero_point"] - rec["zero_point"]
            if shift not in (0, 128):
                continue
            q = _aligned(f["q"], rec["q"].shape)
            if q is None:
                continue
            d = np.abs((q - f["zero_point"]) - (rec["q"] - rec["zero_point"]))
            key = (j in used, float(d.mean()))
            if best is None or key < best[0]:
                best = (key, j, d)
        if best is None:
            rows.append({"node": rec["node"], "layer": rec["layer"], "op": rec["op"], "matched": False})
            continue
        used.add(best[1])
        d = best[2]
        rows.append({"node": rec["node"], "layer": rec["layer"], "op": rec["op"], "matched": True,
                     "file_tensor": file[best[1]]["name"], "mean_lsb": float(d.mean()), "max_lsb": int(d.max()),
                     "frac_over_1": float((d > 1).mean())})
    matched = [r for r in rows if r["matched"]]
    first = next((r for r in matched if r["max_lsb"] > lsb), None)
    jump, prev = None, 0.0
    for r in matched:
        if jump is None or r["mean_lsb"] - prev > jump[0]:
            jump = (r["mean_lsb"] - prev, r)
        prev = r["mean_lsb"]
    return {"tensors": len(rows), "matched": len(matched), "first_over_lsb": first,
            "largest_jump": jump[1] if jump else None, "layers": rows}


def input_quantization(gm: torch.fx.GraphModule) -> tuple[float, int] | None:
    """(scale, zero point) of the simulation's input quantization: the first quantize node fed by a placeholder."""
    for node in gm.graph.nodes:
        if _is_quantize(node) and isinstance(node.args[0], torch.fx.Node) and node.args[0].op == "placeholder":
            return float(node.args[1]), int(node.args[2])
    return None


def rounding_jitter(x: torch.Tensor, scale: float, fraction: float = 0.01, seed: int = 0) -> torch.Tensor:
    """`x` with a random `fraction` of its elements moved by one quantization step (+-`scale`).

    Feeding it to the simulation shows how far the model itself amplifies one-step rounding differences, the kind
    a fused int8 kernel makes: if the simulation disagrees with itself under this jitter about as often as the file
    disagrees with it, the disagreements come from the model's sensitivity, not from the file.
    """
    g = torch.Generator().manual_seed(seed)
    flip = torch.rand(x.shape, generator=g) < fraction
    sign = torch.where(torch.rand(x.shape, generator=g) < 0.5, -1.0, 1.0)
    return x + flip * sign * scale


def output_quantization(gm: torch.fx.GraphModule) -> tuple[float, int] | None:
    """(scale, zero point) of the simulation's last quantized activation: the int8 step of its logits."""
    last = None
    for node in gm.graph.nodes:
        if _is_quantize(node):
            last = node
    return (float(last.args[1]), int(last.args[2])) if last is not None else None


def _as_double(value):
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != torch.float64:
        return value.double()
    if isinstance(value, (list, tuple)):
        return type(value)(_as_double(v) for v in value)
    return value


_DEQUANTIZE = ("dequantize_per_tensor", "dequantize_per_channel")
# Between a conv/linear and its output quantize, these keep values on the output grid (or clamp them to a grid bound).
_FUSED_ACTIVATIONS = ("relu", "relu_", "hardtanh", "hardtanh_", "clamp")


def _op_name(node) -> str:
    return getattr(node.target, "__name__", str(node.target)).split(".")[0] if node.op == "call_function" else ""


class _IntegerKernelSimulation(torch.fx.Interpreter):
    """Runs a converted Q/DQ graph as int8 kernels compute it.

    Every op between a dequantize and the next quantize, and the (de)quantize arithmetic itself, runs in float64
    (the integer values and rounding rules are the graph's). A conv or linear between dequantized operands whose
    output is quantized (through relu/hardtanh/clamp) is computed as the kernels compute it: the exact int32 sum of
    (q_x - z_x)(q_w - z_w) plus the bias on the int32 grid of s_x·s_w, then one requantization with the
    **float32** multiplier f32(s_x·s_w) / f32(s_out), rounded half to even (ONNX Runtime's MLAS and XNNPACK both
    requantize so). Evaluated in exact float64 instead, the same layer rounds the ~1 in 10^4 accumulators that fall
    within float32's error of a half step the other way, and a rounding-sensitive network amplifies that: judged
    on 256 images, mobilenet_v2's files agreed 98.0% with the float64 evaluation and 100% with this one (ORT's
    logits equal to the last bit).
    """

    def __init__(self, gm: torch.fx.GraphModule, **kwargs):
        super().__init__(gm, **kwargs)
        from edgekd.quant.quantizer import _dequant_scale

        # per requantized conv/linear, found once: (s_x, s_w per output channel or one, s_out)
        self._requant = {}
        for node in gm.graph.nodes:
            out_q = self._output_quantize(node)
            scales = [_dequant_scale(gm, a) for a in node.args[:2]] if out_q is not None else [None]
            if all(sc is not None for sc in scales):
                self._requant[node] = (*scales, float(out_q.args[1]))

    def run_node(self, node):
        if node not in self._requant:
            return super().run_node(node)
        args, kwargs = self.fetch_args_kwargs_from_env(node)
        return self._requantized(node, args, kwargs, *self._requant[node])

    def call_function(self, target, args, kwargs):
        name = getattr(target, "__name__", str(target)).split(".")[0]
        if name in ("quantize_per_tensor", "dequantize_per_tensor", "quantize_per_channel",
                    "dequantize_per_channel") and "quantized_decomposed" in str(target):
            from edgekd.quant.quantizer import qparams_float64

            x = args[0]
            if name.endswith("per_tensor"):
                (scale, zp, qmin, qmax, dtype), axis = args[1:6], None
            else:
                scale, zp, axis, qmin, qmax, dtype = args[1:7]
            scale, zp = qparams_float64(scale, zp, axis, x.dim())
            if name.startswith("quantize"):
                return torch.clamp(torch.round(x.double() / scale) + zp, qmin, qmax).to(dtype)
            return (x.double() - zp) * scale
        return super().call_function(target, _as_double(args), {k: _as_double(v) for k, v in kwargs.items()})

    @staticmethod
    def _output_quantize(node):
        """The per-tensor quantize a conv/linear of two dequantized operands feeds, directly or through fused
        activations; None for any other node."""
        if _op_name(node) not in ("conv2d", "linear") or not all(
                isinstance(a, torch.fx.Node) and _op_name(a) in _DEQUANTIZE for a in node.args[:2]):
            return None
        user = node
        while len(user.users) == 1:
            (user,) = user.users
            if _op_name(user) == "quantize_per_tensor" and _is_quantize(user):
                return user
            if _op_name(user) not in _FUSED_ACTIVATIONS:
                return None
        return None

    @staticmethod
    def _requantized(node, args, kwargs, s_x, s_w, s_out) -> torch.Tensor:
        """The layer's output as the kernels requantize it, dequantized (the quantize node that follows gives back
        the integers: the values are on its grid)."""
        x, w, *rest = args
        s_xw = s_x * s_w                                      # per output channel, or one
        channel = (1, -1, 1, 1) if _op_name(node) == "conv2d" else (-1,)
        w_steps = s_w.reshape((-1,) + (1,) * (w.dim() - 1)) if s_w.numel() > 1 else s_w
        x_int, w_int = torch.round(x.double() / s_x), torch.round(w.double() / w_steps)
        bias = rest[0] if rest else None
        if bias is not None:
            rest[0] = torch.round(bias.double() / s_xw)       # the int32 bias
        op = torch.nn.functional.conv2d if _op_name(node) == "conv2d" else torch.nn.functional.linear
        acc = op(x_int, w_int, *rest, **kwargs)               # exact: integers far below 2^53
        multiplier = (s_xw.float() / torch.tensor(s_out, dtype=torch.float32)).reshape(
            channel if s_xw.numel() > 1 else ())
        return torch.round(acc.float() * multiplier).double() * s_out


@torch.no_grad()
def simulate_integer_kernels(gm: torch.fx.GraphModule, x: torch.Tensor, batch_size: int = 32) -> np.ndarray:
    """The int8 simulation of a converted PT2E graph, evaluated as int8 kernels evaluate it (float32 logits out).

    The graph itself (what the exporters convert) is not changed: its scales, zero points, integer values and
    rounding rules are the judge; `_IntegerKernelSimulation` only evaluates each layer with the kernels' arithmetic
    (exact int32 sums, one float32 requantization) instead of float32 sums of dequantized products, which round
    near-ties their own way (~1e-7 relative error on a 512-term sum).
    """
    sim, outs = _IntegerKernelSimulation(gm), []
    for i in range(0, len(x), batch_size):
        out = sim.run(x[i:i + batch_size].double())
        out = out[0] if isinstance(out, (tuple, list)) else out
        outs.append(out.float())
    return torch.cat(outs).numpy()
