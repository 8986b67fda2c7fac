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
from edgekd.profile.predictor import (Calibration, LayerFeatures, calibration_path, fit_costs, model_time_s,
                                      prior_costs)
from edgekd.profile.layers import layers_from_onnx, layers_from_tflite
from edgekd.profile.targets import load_target


def micro_models() -> list[tuple[str, Callable[[], Any], tuple[int, ...]]]:
    """(name, builder of a torch module, input shape) for the calibration family."""
    import torch
    from torch import nn

    class Elementwise(nn.Module):
        """x * sigmoid(x) + x: element-wise work that no runtime fuses into a conv."""

        def forward(self, x):
            return x * torch.sigmoid(x) + x

    def conv(cin, cout, k, stride=1, groups=1):
        return nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups)

    out: list[tuple[str, Callable[[], Any], tuple[int, ...]]] = []
    for cin, cout, hw in [(3, 16, 64), (16, 16, 64), (16, 32, 32), (32, 32, 32), (32, 64, 16), (64, 64, 16),
                          (64, 128, 8), (8, 24, 48), (24, 48, 24), (3, 32, 112), (32, 32, 56)]:
        out.append((f"conv3x3_{cin}_{cout}_{hw}", lambda c=cin, o=cout: nn.Sequential(conv(c, o, 3), nn.ReLU()),
                    (1, cin, hw, hw)))
    for cin, cout, hw, k in [(8, 16, 32, 5), (16, 32, 16, 5), (24, 24, 28, 5), (3, 32, 32, 7), (16, 16, 16, 7)]:
        out.append((f"conv{k}x{k}_{cin}_{cout}_{hw}", lambda c=cin, o=cout, kk=k: nn.Sequential(conv(c, o, kk),
                                                                                                nn.ReLU()),
                    (1, cin, hw, hw)))
    for cin, cout, hw in [(16, 96, 32), (96, 24, 32), (16, 64, 32), (64, 16, 32), (32, 128, 16), (128, 32, 16), (24, 96, 56), (64, 256, 14),
                          (256, 64, 14)]:
        out.append((f"pw_{cin}_{cout}_{hw}", lambda c=cin, o=cout: nn.Sequential(conv(c, o, 1)), (1, cin, hw, hw)))
    for ch, hw, stride in [(96, 32, 1), (144, 16, 2), (32, 64, 1), (64, 32, 1), (128, 16, 1), (96, 56, 2), (16, 112, 1), (256, 14, 1)]:
        out.append((f"dw_{ch}_{hw}_s{stride}", lambda c=ch, s=stride: nn.Sequential(conv(c, c, 3, s, c), nn.ReLU6()),
                    (1, ch, hw, hw)))
    for fin, fout in [(64, 64), (256, 256), (784, 256), (512, 1024), (1024, 1024), (2048, 2048), (128, 10),
                      (4096, 1024)]:
        out.append((f"linear_{fin}_{fout}", lambda i=fin, o=fout: nn.Sequential(nn.Linear(i, o), nn.ReLU()),
                    (1, fin)))
    for ch, hw in [(16, 32), (64, 32), (32, 112)]:
        out.append((f"eltwise_{ch}_{hw}", Elementwise, (1, ch, hw, hw)))
    for ch, hw in [(32, 64), (64, 32)]:
        out.append((f"maxpool_{ch}_{hw}", lambda: nn.MaxPool2d(2), (1, ch, hw, hw)))
    for ch, hw in [(32, 32), (128, 16)]:
        out.append((f"gap_{ch}_{hw}", lambda: nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()), (1, ch, hw, hw)))
    out.append(("stack_conv_pool_fc", lambda: nn.Sequential(conv(1, 16, 3), nn.ReLU(), nn.MaxPool2d(2),
                                                            nn.Flatten(), nn.Linear(16 * 14 * 14, 10)),
                (1, 1, 28, 28)))
    out.append(("stack_dw_pw", lambda: nn.Sequential(conv(32, 32, 3, 1, 32), nn.ReLU(), conv(32, 64, 1), nn.ReLU()),
                (1, 32, 32, 32)))
    for depth in (1, 2, 4, 8):  # equal small layers: separate the per-layer overhead from the per-call one
        out.append((f"stack_pw8x{depth}", lambda d=depth: nn.Sequential(*[conv(8, 8, 1) for _ in range(d)]),
                    (1, 8, 8, 8)))
        out.append((f"stack_fc64x{depth}", lambda d=depth: nn.Sequential(*[nn.Linear(64, 64) for _ in range(d)]),
                    (1, 64)))
    for depth in (1, 2, 4):  # realistic-width chains: NCHWc-style layouts pay their reorders once per chain
        out.append((f"stack_dwpw32x{depth}", lambda d=depth: nn.Sequential(
            *[m for _ in range(d) for m in (conv(32, 32, 3, 1, 32), nn.ReLU(), conv(32, 32, 1), nn.ReLU())]),
            (1, 32, 32, 32)))
        out.append((f"stack_conv32x{depth}", lambda d=depth: nn.Sequential(
            *[m for _ in range(d) for m in (conv(32, 32, 3), nn.ReLU())]), (1, 32, 16, 16)))
    out.append(("stack_conv_relu_x4", lambda: nn.Sequential(*[m for _ in range(4) for m in (conv(16, 16, 3),
                                                                                              nn.ReLU())]),
                (1, 16, 16, 16)))
    out.append(("stack_mlp3", lambda: nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(),
                                                    nn.Linear(512, 10)), (1, 256)))
    return out


def export_model(module: Any, input_shape: Sequence[int], path: Path) -> Path:
    """Write `module` as .onnx (dynamo exporter) or .tflite (litert-torch), by the path's suffix."""
    import torch

    module = module.eval()
    x = torch.randn(*input_shape)
    if path.suffix == ".onnx":
        torch.onnx.export(module, (x,), str(path), dynamo=True, verbose=False)
    elif path.suffix == ".tflite":
        import litert_torch

        litert_torch.convert(module, (x,)).export(str(path))
    else:
        raise EdgeKDError(f"cannot export to {path.suffix!r}: use .onnx or .tflite")
    return path


def measure_rounds(paths: Sequence[Path], target: Any, runtime: str, threads: int, precision: str | None,
                   rounds: int, log: Callable[[str], None] | None = None, **kw) -> list:
    """Profile every file `rounds` times, round-robin, and keep each file's result with the lowest median."""
    from edgekd.profile.local import profile_files

    if rounds < 1:
        raise EdgeKDError(f"rounds must be >= 1, got {rounds}")
    best: list = [None] * len(paths)
    for r in range(rounds):
        for i, path in enumerate(paths):
            res = profile_files([path], target, runtime=runtime, threads=threads, precision=precision, **kw)[0]
            if best[i] is None or res.p50_ms < best[i].p50_ms:
                best[i] = res
            if log:
                log(f"[round {r + 1}/{rounds}] {path.stem}: {res.p50_ms:.4f} ms (best {best[i].p50_ms:.4f})")
    return best


def file_layers(path: Path):
    return layers_from_onnx(path) if path.suffix == ".onnx" else layers_from_tflite(path)


def calibrate_target(target: Any, runtime: str = "onnxruntime", precision: str = "fp32", *,
                     threads: int | None = None, out_path: Path | None = None, time_cap_s: float = 2.0,
                     rounds: int = 3,
                     models: Sequence[tuple[str, Callable[[], Any], tuple[int, ...]]] | None = None,
                     progress: bool = False, log: Callable[[str], None] | None = print, **runner_kw) -> Path:
    """Measure the micro-model family on `target` (locally, over adb or SSH as the target says), fit the
    predictor's coefficients and write calibration/latency/<target>/<runtime>-<precision>.json. Returns its path.

    Each model is measured in `rounds` interleaved passes and its lowest median kept: on a shared machine other
    work only ever adds time, so the least disturbed pass is the best estimate of the model's own latency.
    """
    import torch

    tgt = load_target(target)
    if runtime not in tgt.runtimes:
        raise EdgeKDError(f"runtime {runtime!r} is not listed for target {tgt.name} (it runs: "
                          f"{', '.join(tgt.runtimes)})")
    if precision != "fp32":
        raise EdgeKDError(f"calibration measures fp32 micro-models only (got {precision!r}); int8 predictions "
                          f"scale the fp32 fit by the target's published int8/fp32 peaks and say so")
    suffix = {"onnxruntime": ".onnx", "tensorrt": ".onnx", "litert": ".tflite"}.get(runtime)
    if suffix is None:
        raise EdgeKDError(f"cannot calibrate runtime {runtime!r}; allowed: onnxruntime, tensorrt, litert")
    threads = threads or tgt.threads
    torch.manual_seed(0)
    torch.set_num_threads(1)
    family = list(models or micro_models())
    with tempfile.TemporaryDirectory(prefix="edgekd-calib-") as tmp:
        paths = []
        for name, build, shape in family:
            paths.append(export_model(build(), shape, Path(tmp) / f"{name}{suffix}"))
        kw = dict(runner_kw)
        if tgt.kind == "cpu":
            kw.update(time_cap_s=time_cap_s, min_time_s=min(0.5, time_cap_s))
        best = measure_rounds(paths, tgt, runtime, threads, precision, rounds, log=log, progress=progress, **kw)
        samples, rows = [], []
        for (name, _, _), path, result in zip(family, paths, best):
            feats = LayerFeatures.from_layers(file_layers(path), precision)
            samples.append((feats, result.p50_ms / 1e3))
            rows.append({"name": name, "measured_ms": result.p50_ms, "cv": result.cv})
        versions = {r.runtime_version for r in best}
        device = best[0].device
    prior = prior_costs(tgt, precision)
    costs, sigma, residuals = fit_costs(samples, prior)
    multipliers = {k: costs[k] / prior[k] for k in costs}
    for row, (feats, _), res in zip(rows, samples, residuals):
        row["predicted_ms"] = model_time_s(feats, costs)[0] * 1e3
        row["rel_error"] = res
    calib = Calibration(target=tgt.name, runtime=runtime, precision=precision, threads=threads,
                        multipliers=multipliers, costs=costs, uncertainty=sigma, residuals=rows, device=device,
                        runtime_version=", ".join(sorted(versions)),
                        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    path = out_path or calibration_path(tgt.name, runtime, precision)
    calib.save(path)
    if log:
        log(f"fit on {len(samples)} micro-models: relative residual {sigma:.1%}; wrote {path}")
    return path
