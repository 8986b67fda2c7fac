"""Latency calibration: time a family of generated micro-models on a target and fit the predictor's coefficients.

The family covers each cost term: dense 3x3 convs, pointwise convs, depthwise convs, linear layers, element-wise
ops and pooling at several widths and resolutions, plus a few 2-3 layer stacks. The fit is stored under
calibration/latency/<target>/<runtime>-<precision>.json (see predictor.Calibration).
"""
from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekd.errors import EdgeKDError
from edgekd.profile.predict.predictor import (Calibration, LayerFeatures, calibration_path, fit_costs, fit_node_costs,
                                      model_time_s, node_model_time_s, prior_costs)
from edgekd.profile.predict.layers import layers_from_onnx, layers_from_tflite, ort_nodes
from edgekd.profile.targets import load_target


def micro_models() -> list[tuple[str, Callable[[], Any], tuple[int, ...]]]:
    """(name, builder of a torch module, input shape) for the calibration family.

    Single layers of every kernel family ORT picks (NCHWc 3x3/5x5/7x7, first-layer convs on 1-3 channels, 1x1,
    depthwise, im2col for channel counts NCHWc does not take), channel counts that NCHWc pads, Linear layers whose
    weights sit in L2, L3 or DRAM, pools and element-wise ops, and short stacks and blocks (inverted residual,
    basic residual, conv-pool chains, MLPs) so that reorders, fusions and per-node costs appear as they do in
    whole networks. None of them is one of tools/bench_predictor.py's held-out architectures.
    Long on purpose: the family is data, read best as one list beside the few module classes it uses.
    """
    import torch
    from torch import nn

    class Elementwise(nn.Module):
        """x * sigmoid(x) + x: element-wise work that no runtime fuses into a conv."""

        def forward(self, x):
            return x * torch.sigmoid(x) + x

    class Residual(nn.Module):
        """relu(body(x) + skip(x)): ORT fuses the add (and relu) into the last conv."""

        def __init__(self, body, skip=None):
            super().__init__()
            self.body, self.skip = body, skip or nn.Identity()

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    class Linear(nn.Module):
        """body(x) + x without a final activation (inverted-residual style)."""

        def __init__(self, body):
            super().__init__()
            self.body = body

        def forward(self, x):
            return x + self.body(x)

    def conv(cin, cout, k, stride=1, groups=1):
        return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups)

    def cbr(cin, cout, k, stride=1, groups=1, act=nn.ReLU):
        return [conv(cin, cout, k, stride, groups), nn.BatchNorm2d(cout), act()]

    def inverted(cin, cout, stride, expand):
        mid = cin * expand
        body = nn.Sequential(*cbr(cin, mid, 1, act=nn.ReLU6), *cbr(mid, mid, 3, stride, mid, act=nn.ReLU6),
                             conv(mid, cout, 1), nn.BatchNorm2d(cout))
        return Linear(body) if stride == 1 and cin == cout else body

    def basic(cin, cout, stride):
        body = nn.Sequential(*cbr(cin, cout, 3, stride), conv(cout, cout, 3), nn.BatchNorm2d(cout))
        skip = None if stride == 1 and cin == cout else nn.Sequential(conv(cin, cout, 1, stride),
                                                                       nn.BatchNorm2d(cout))
        return Residual(body, skip)

    out: list[tuple[str, Callable[[], Any], tuple[int, ...]]] = []

    def add(name, build, shape):
        out.append((name, build, tuple(shape)))

    for cin, cout, hw, k, s in [(3, 16, 64, 3, 1), (16, 16, 64, 3, 1), (16, 32, 32, 3, 1), (32, 32, 32, 3, 1),
                                (32, 64, 16, 3, 1), (64, 64, 16, 3, 1), (64, 128, 8, 3, 1), (8, 24, 48, 3, 1),
                                (24, 48, 24, 3, 1), (3, 32, 112, 3, 1), (32, 32, 56, 3, 1), (40, 40, 20, 3, 1),
                                (96, 96, 10, 3, 1), (128, 128, 6, 3, 1), (48, 96, 28, 3, 2), (16, 32, 40, 3, 2),
                                (12, 20, 36, 3, 1), (1, 32, 40, 3, 1), (1, 16, 56, 3, 2), (3, 24, 80, 3, 2),
                                (8, 16, 32, 5, 1), (16, 32, 16, 5, 1), (24, 24, 28, 5, 1), (40, 40, 12, 5, 1),
                                (1, 16, 40, 5, 1), (3, 32, 32, 7, 1), (16, 16, 16, 7, 1), (32, 64, 24, 7, 1),
                                (3, 48, 48, 7, 2), (96, 96, 8, 7, 1)]:
        add(f"conv{k}x{k}_{cin}_{cout}_{hw}_s{s}", lambda c=cin, o=cout, kk=k, ss=s: nn.Sequential(
            conv(c, o, kk, ss), nn.ReLU()), (1, cin, hw, hw))
    for cin, cout, hw, s in [(16, 96, 32, 1), (96, 24, 32, 1), (16, 64, 32, 1), (64, 16, 32, 1), (32, 128, 16, 1),
                             (128, 32, 16, 1), (24, 96, 56, 1), (64, 256, 14, 1), (256, 64, 14, 1),
                             (36, 216, 12, 1), (216, 36, 12, 1), (64, 128, 16, 2), (160, 160, 6, 1)]:
        add(f"pw_{cin}_{cout}_{hw}_s{s}", lambda c=cin, o=cout, ss=s: nn.Sequential(conv(c, o, 1, ss)),
            (1, cin, hw, hw))
    for ch, hw, stride in [(96, 32, 1), (144, 16, 2), (32, 64, 1), (64, 32, 1), (128, 16, 1), (96, 56, 2),
                           (16, 112, 1), (256, 14, 1), (48, 24, 1), (240, 8, 1), (384, 6, 2), (72, 20, 1)]:
        add(f"dw_{ch}_{hw}_s{stride}", lambda c=ch, s=stride: nn.Sequential(conv(c, c, 3, s, c), nn.ReLU6()),
            (1, ch, hw, hw))
    for fin, fout in [(64, 64), (256, 256), (784, 256), (512, 1024), (1024, 1024), (2048, 2048), (128, 10),
                      (4096, 1024), (1536, 1536), (3072, 3072), (4096, 4096), (8192, 1536), (384, 96)]:
        add(f"linear_{fin}_{fout}", lambda i=fin, o=fout: nn.Sequential(nn.Linear(i, o), nn.ReLU()), (1, fin))
    for ch, hw in [(16, 32), (64, 32), (32, 112)]:
        add(f"eltwise_{ch}_{hw}", Elementwise, (1, ch, hw, hw))
    for ch, hw in [(32, 64), (64, 32), (24, 40), (12, 48), (20, 32)]:  # 12, 20, 24: plain NCHW MaxPool
        add(f"maxpool_{ch}_{hw}", lambda: nn.MaxPool2d(2), (1, ch, hw, hw))
    for ch, hw in [(32, 32), (128, 16), (256, 4)]:
        add(f"gap_{ch}_{hw}", lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), (1, ch, hw, hw))
    # Short stacks: per-node costs, reorders between layouts, fusions.
    add("stack_conv_pool_fc", lambda: nn.Sequential(conv(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                                                    nn.Linear(16 * 14 * 14, 10)), (1, 1, 28, 28))
    add("stack_dw_pw", lambda: nn.Sequential(conv(32, 32, 3, 1, 32), nn.ReLU(), conv(32, 64, 1), nn.ReLU()),
        (1, 32, 32, 32))
    for depth in (1, 2, 4, 8):  # equal small layers: separate the per-node cost from the per-call one
        add(f"stack_pw8x{depth}", lambda d=depth: nn.Sequential(*[conv(8, 8, 1) for _ in range(d)]), (1, 8, 8, 8))
        add(f"stack_fc64x{depth}", lambda d=depth: nn.Sequential(*[nn.Linear(64, 64) for _ in range(d)]), (1, 64))
    # Long chains of tiny NCHWc convs: inside a network a small node costs its dispatch and little else (~0.7 us
    # here, less than a lone layer's share of the call), which single layers and short stacks cannot separate.
    for kind, ch, hw in [("dw", 16, 8), ("pw", 16, 8), ("conv", 16, 8), ("dw", 32, 4), ("pw", 32, 4)]:
        for depth in (1, 4, 16):
            k, groups = {"dw": (3, ch), "pw": (1, 1), "conv": (3, 1)}[kind]
            add(f"chain_tiny_{kind}{ch}x{depth}_{hw}", lambda d=depth, c=ch, kk=k, g=groups: nn.Sequential(
                *[m for _ in range(d) for m in (conv(c, c, kk, 1, g), nn.ReLU6())]), (1, ch, hw, hw))
    for depth in (1, 2, 4):  # NCHWc chains pay their reorders once per chain
        add(f"stack_dwpw32x{depth}", lambda d=depth: nn.Sequential(
            *[m for _ in range(d) for m in (conv(32, 32, 3, 1, 32), nn.ReLU(), conv(32, 32, 1), nn.ReLU())]),
            (1, 32, 32, 32))
        add(f"stack_conv32x{depth}", lambda d=depth: nn.Sequential(
            *[m for _ in range(d) for m in (conv(32, 32, 3), nn.ReLU())]), (1, 32, 16, 16))
    add("stack_conv_relu_x4", lambda: nn.Sequential(*[m for _ in range(4) for m in (conv(16, 16, 3), nn.ReLU())]),
        (1, 16, 16, 16))
    for cin, widths, k, hw in [(1, (24, 24), 3, 32), (3, (32, 64), 3, 40), (1, (16, 40), 5, 36),
                               (3, (40, 80), 3, 24), (3, (32, 48), 7, 24)]:
        def vgg(c=cin, ws=widths, kk=k, h=hw):
            layers, ch = [], c
            for w in ws:
                layers += [conv(ch, w, kk), nn.ReLU(), nn.MaxPool2d(2)]
                ch, h = w, h // 2
            return nn.Sequential(*layers, nn.Flatten(), nn.Linear(ch * h * h, 10))
        add(f"stack_vgg_{cin}_{'x'.join(map(str, widths))}_k{k}_{hw}", vgg, (1, cin, hw, hw))
    for cin, cout, stride, expand, hw in [(16, 16, 1, 6, 24), (24, 32, 2, 4, 28), (32, 32, 1, 3, 16),
                                          (40, 40, 1, 6, 14), (12, 20, 2, 6, 40), (64, 96, 1, 4, 8),
                                          (8, 16, 1, 4, 48)]:
        add(f"block_ir_{cin}_{cout}_s{stride}_e{expand}_{hw}", lambda c=cin, o=cout, s=stride, e=expand:
            inverted(c, o, s, e), (1, cin, hw, hw))
    for cin, cout, stride, hw in [(16, 16, 1, 24), (32, 32, 1, 16), (20, 40, 2, 40), (48, 48, 1, 12),
                                  (64, 128, 2, 12), (40, 40, 1, 28)]:
        add(f"block_res_{cin}_{cout}_s{stride}_{hw}", lambda c=cin, o=cout, s=stride: basic(c, o, s),
            (1, cin, hw, hw))
    for cin, mid, k, hw in [(18, 100, 1, 16), (26, 60, 1, 12), (18, 44, 3, 14), (34, 20, 3, 10)]:
        # channel counts NCHWc cannot take: ORT runs the second conv as a plain im2col + GEMM FusedConv
        add(f"stack_im2col_{cin}_{mid}_k{k}_{hw}", lambda c=cin, m=mid, kk=k: nn.Sequential(
            conv(3, c, 3), nn.ReLU(), conv(c, m, kk), nn.ReLU()), (1, 3, hw, hw))
    # More im2col convs: ORT keeps a conv out of NCHWc when its channels are not a multiple of 4 (dense convs with
    # 16 or more input channels, depthwise at any width), and MLAS then writes a column matrix of input channels x
    # taps x output positions (none for 1x1 stride 1) and multiplies it with a GEMM of output channels rows. The
    # four above are all stride 1, which left stride-2 convs (those of tiny students: tiny_cnn at widths 18, 22,
    # 26; its third conv at widths 9, 11, 13), 1x1 stride 2, small outputs and depthwise im2col unmeasured.
    for cin, cout, k, s, hw in [(18, 36, 3, 2, 28), (22, 44, 3, 2, 16), (26, 52, 3, 2, 28), (30, 60, 3, 2, 14),
                                (34, 68, 3, 2, 8), (42, 84, 3, 2, 16), (22, 44, 3, 1, 7), (26, 26, 3, 1, 4),
                                (18, 72, 3, 1, 6), (18, 40, 1, 2, 28), (26, 52, 1, 2, 14)]:
        add(f"stack_im2col_{cin}_{cout}_k{k}_s{s}_{hw}", lambda c=cin, m=cout, kk=k, ss=s: nn.Sequential(
            conv(3, c, 3), nn.ReLU(), conv(c, m, kk, ss), nn.ReLU()), (1, 3, hw, hw))
    for ch, s, hw in [(30, 2, 28), (50, 1, 14), (90, 2, 14), (42, 1, 8)]:  # depthwise, channels not a multiple of 4
        add(f"stack_im2col_dw_{ch}_s{s}_{hw}", lambda c=ch, ss=s: nn.Sequential(
            conv(3, c, 3), nn.ReLU(), conv(c, c, 3, ss, c), nn.ReLU6()), (1, 3, hw, hw))
    for cin, cout, hw in [(12, 72, 24), (8, 48, 40), (4, 64, 32)]:  # 1x1 convs reading NCHW input
        add(f"pwin_{cin}_{cout}_{hw}", lambda c=cin, o=cout: nn.Sequential(conv(c, o, 1), nn.ReLU()),
            (1, cin, hw, hw))
    # Chains of large layers: inside a network a conv has no reorder or session copy around it, so the fit needs
    # models whose time is mostly conv compute on big activations (what single layers cannot separate).
    for cin, k, depth, hw in [(40, 3, 3, 48), (64, 3, 2, 40), (32, 3, 3, 64), (96, 3, 2, 24), (32, 5, 2, 40),
                              (48, 7, 2, 20)]:
        add(f"chain_conv{k}x{k}_{cin}x{depth}_{hw}", lambda c=cin, kk=k, d=depth: nn.Sequential(
            *[m for _ in range(d) for m in (conv(c, c, kk), nn.ReLU())]), (1, cin, hw, hw))
    for cin, cout, stride, expand, hw in [(32, 32, 1, 6, 40), (16, 24, 2, 6, 80)]:
        add(f"block_ir_{cin}_{cout}_s{stride}_e{expand}_{hw}", lambda c=cin, o=cout, s=stride, e=expand:
            inverted(c, o, s, e), (1, cin, hw, hw))
    add("stack_stem_ir_gap", lambda: nn.Sequential(*cbr(3, 24, 3, 2, act=nn.ReLU6), inverted(24, 24, 1, 4),
                                                   inverted(24, 40, 2, 4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                                   nn.Linear(40, 10)), (1, 3, 48, 48))
    add("stack_stem_res_gap", lambda: nn.Sequential(*cbr(3, 20, 3), basic(20, 20, 1), basic(20, 40, 2),
                                                    nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 10)),
        (1, 3, 40, 40))
    for fin, widths in [(256, (512, 512, 10)), (1024, (768, 768, 10)), (4096, (1536, 1536, 10)),
                        (2048, (3072, 10)), (512, (256, 256, 256, 256, 10))]:
        def mlp(i=fin, ws=widths):
            layers, c = [], i
            for j, w in enumerate(ws):
                layers += [nn.Linear(c, w)] + ([nn.ReLU()] if j < len(ws) - 1 else [])
                c = w
            return nn.Sequential(*layers)
        add(f"stack_mlp_{fin}_{'x'.join(map(str, widths))}", mlp, (1, fin))
    return out


_EXPORTABLE = (".onnx", ".tflite")


def export_model(module: Any, input_shape: Sequence[int], path: Path) -> Path:
    """Write `module` as .onnx (dynamo exporter) or .tflite (litert-torch), by the path's suffix.

    Micro-models keep the plain converters with a static batch (not edgekd.formats' exporters, whose dynamic batch
    and clean-up passes would change the graphs the shipped calibrations were fitted on).
    """
    import torch

    module = module.eval()
    x = torch.randn(*input_shape)
    if path.suffix == ".onnx":
        torch.onnx.export(module, (x,), str(path), dynamo=True, verbose=False)
    elif path.suffix == ".tflite":
        import litert_torch

        litert_torch.convert(module, (x,)).export(str(path))
    else:
        raise EdgeKDError(f"cannot export to {path.suffix!r}: use {' or '.join(_EXPORTABLE)}")
    return path


def measure_rounds(paths: Sequence[Path], target: Any, runtime: str, threads: int, precision: str | None,
                   rounds: int, log: Callable[[str], None] | None = None, progress: bool = False, **kw) -> list:
    """Profile every file `rounds` times, round-robin, and keep each file's result with the lowest median.

    progress: one bar over all rounds x files (the runner's per-file bars stay off).
    """
    from edgekd.logs import progress_bar

    from edgekd.profile.runners import profile_files

    if rounds < 1:
        raise EdgeKDError(f"rounds must be >= 1, got {rounds}")
    best: list = [None] * len(paths)
    with progress_bar(total=rounds * len(paths), desc="calibrate", unit="model", enabled=progress,
                      leave=False) as bar:
        for r in range(rounds):
            for i, path in enumerate(paths):
                bar.set_postfix_str(f"round {r + 1}/{rounds} {path.stem}", refresh=False)
                res = profile_files([path], target, runtime=runtime, threads=threads, precision=precision, **kw)[0]
                if best[i] is None or res.p50_ms < best[i].p50_ms:
                    best[i] = res
                bar.update()
                if log:
                    log(f"[round {r + 1}/{rounds}] {path.stem}: {res.p50_ms:.4f} ms (best {best[i].p50_ms:.4f})")
    return best


def file_layers(path: Path):
    return layers_from_onnx(path) if path.suffix == ".onnx" else layers_from_tflite(path)


def calibrate_target(target: Any, runtime: str = "onnxruntime", precision: str = "fp32", *,
                     threads: int | None = None, out_path: Path | None = None, time_cap_s: float = 2.0,
                     rounds: int = 5,
                     models: Sequence[tuple[str, Callable[[], Any], tuple[int, ...]]] | None = None,
                     progress: bool = False, log: Callable[[str], None] | None = print, **runner_kw) -> Path:
    """Measure the micro-model family on `target` (locally, over adb or SSH as the target says), fit the
    predictor's coefficients and write calibration/latency/<target>/<runtime>-<precision>.json. Returns its path.

    Each model is measured in `rounds` interleaved passes and its lowest median kept: on a shared machine other
    work only ever adds time, so the least disturbed pass is the best estimate of the model's own latency.
    """
    import torch

    tgt = load_target(target)
    suffix = calibration_suffix(tgt, runtime, precision)
    threads = threads or tgt.threads
    torch.manual_seed(0)
    torch.set_num_threads(1)
    family = list(models or micro_models())
    with tempfile.TemporaryDirectory(prefix="edgekd-calib-") as tmp:
        paths = [export_model(build(), shape, Path(tmp) / f"{name}{suffix}") for name, build, shape in family]
        best = measure_rounds(paths, tgt, runtime, threads, precision, rounds, log=log, progress=progress,
                              **runner_kwargs(tgt, time_cap_s, runner_kw))
        calib = fit_calibration(tgt, runtime, precision, threads, [name for name, _, _ in family], paths, best)
    path = out_path or calibration_path(tgt.name, runtime, precision)
    calib.save(path)
    if log:
        model = "ORT node model, leave-one-out" if calib.node_costs else "per-layer model, residual"
        log(f"fit on {len(paths)} micro-models: {model} relative error {calib.uncertainty:.1%}; wrote {path}")
    return path


def calibration_suffix(tgt: Any, runtime: str, precision: str) -> str:
    """The file suffix micro-models are exported to for `runtime`; refuses what calibration cannot measure."""
    if runtime not in tgt.runtimes:
        raise EdgeKDError(f"runtime {runtime!r} is not listed for target {tgt.name} (it runs: "
                          f"{', '.join(tgt.runtimes)})")
    if precision != "fp32":
        raise EdgeKDError(f"calibration measures fp32 micro-models only (got {precision!r}); int8 predictions "
                          f"scale the fp32 fit by the target's published int8/fp32 peaks and say so")
    from edgekd.formats import FORMATS

    # the formats this module's micro-model exporter writes, and of those the one the runtime executes
    fmt = next((f for f in FORMATS.values() if runtime in f.runtimes and f.suffix in _EXPORTABLE), None)
    suffix = fmt.suffix if fmt is not None else None
    if suffix is None:
        raise EdgeKDError(f"cannot calibrate runtime {runtime!r}; allowed: onnxruntime, tensorrt, litert")
    return suffix


def runner_kwargs(tgt: Any, time_cap_s: float, extra: dict | None = None) -> dict:
    """Runner options for calibration measurements: on a local CPU a short time cap per model."""
    from edgekd.profile.runners import runner_for

    kw = dict(extra or {})
    if runner_for(tgt.kind).local:
        kw.update(time_cap_s=time_cap_s, min_time_s=min(0.5, time_cap_s))
    return kw


def fit_calibration(tgt: Any, runtime: str, precision: str, threads: int, names: Sequence[str],
                    paths: Sequence[Path], results: Sequence[Any]) -> Calibration:
    """Fit both cost models to measured micro-models (`results[i]` is the LatencyResult of `paths[i]`).

    The per-layer model serves other runtimes and precisions; on a local CPU with ONNX Runtime the node model
    on ORT's optimized graph (this host's) is fitted too and is what predictions use.
    """
    from edgekd.profile.runners import runner_for

    tgt = load_target(tgt)
    local = runner_for(tgt.kind).local  # ORT's optimized graph is this host's: the node model fits local runs only
    samples, node_samples, rows = [], [], []
    for name, path, result in zip(names, paths, results):
        samples.append((LayerFeatures.from_layers(file_layers(path), precision), result.p50_ms / 1e3))
        if runtime == "onnxruntime" and local:
            node_samples.append((ort_nodes(path), result.p50_ms / 1e3))
        rows.append({"name": name, "measured_ms": result.p50_ms, "cv": result.cv})
    prior = prior_costs(tgt, precision)
    costs, sigma, residuals = fit_costs(samples, prior)
    for row, (feats, _), res in zip(rows, samples, residuals):
        row["layer_predicted_ms"] = model_time_s(feats, costs)[0] * 1e3
        row["layer_rel_error"] = res
        row["predicted_ms"], row["rel_error"] = row["layer_predicted_ms"], res
    node_costs: dict[str, float] = {}
    if node_samples:
        node_costs, sigma, residuals = fit_node_costs(node_samples)
        for row, (nodes, _), res in zip(rows, node_samples, residuals):
            row["predicted_ms"] = node_model_time_s(nodes, node_costs)[0] * 1e3
            row["rel_error"] = res
    return Calibration(target=tgt.name, runtime=runtime, precision=precision, threads=threads,
                       multipliers={k: costs[k] / prior[k] for k in costs}, costs=costs, uncertainty=sigma,
                       residuals=rows, device=results[0].device,
                       runtime_version=", ".join(sorted({r.runtime_version for r in results})),
                       created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), node_costs=node_costs)
