#!/usr/bin/env python3
"""Predicted vs measured latency on architectures the calibration never saw; writes JSON with per-model errors.

    .venv/bin/python tools/bench_predictor.py --target cpu-local --runtime onnxruntime --out runs/bench_predictor.json

Needs a calibration first (`edgekd calibrate --target cpu-local`, i.e. edgekd.profile.calibrate_target). The
architectures (mobilenet-like, resnet-like, plain CNNs, MLPs at several depths/widths/kernels/resolutions) are
built here and are not in the calibration family (edgekd.profile.calibrate.micro_models). Target: >= 90% of them
within +-10% of measured.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def architectures():
    """(name, builder, input shape): 18 models across families, none in the calibration set."""
    import torch
    from torch import nn

    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            mid = cin * expand
            self.use_res = stride == 1 and cin == cout
            self.block = nn.Sequential(
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False), nn.BatchNorm2d(mid), nn.ReLU6(),
                nn.Conv2d(mid, cout, 1, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            y = self.block(x)
            return x + y if self.use_res else y

    def mobilenet(width, expand, cin=3, classes=10):
        c = [max(8, int(v * width)) for v in (16, 24, 32, 64)]
        return nn.Sequential(nn.Conv2d(cin, c[0], 3, 2, 1, bias=False), nn.BatchNorm2d(c[0]), nn.ReLU6(),
                             InvertedResidual(c[0], c[1], 2, expand), InvertedResidual(c[1], c[1], 1, expand),
                             InvertedResidual(c[1], c[2], 2, expand), InvertedResidual(c[2], c[2], 1, expand),
                             InvertedResidual(c[2], c[3], 2, expand), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(c[3], classes))

    class Basic(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(),
                                      nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
            self.skip = nn.Identity() if stride == 1 and cin == cout else nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            return torch.relu(self.body(x) + self.skip(x))

    def resnet(width, depth, cin=3):
        layers, c = [nn.Conv2d(cin, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU()], width
        for stage in range(3):
            for i in range(depth):
                out = width * 2 ** stage
                layers.append(Basic(c, out, 2 if i == 0 and stage > 0 else 1))
                c = out
        return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10))

    def plain(width, depth, k, cin=1, hw=28):
        layers, c = [], cin
        for i in range(depth):
            layers += [nn.Conv2d(c, width * (1 + i // 2), k, padding=k // 2), nn.ReLU()]
            c = width * (1 + i // 2)
            if i % 2 == 1:
                layers.append(nn.MaxPool2d(2))
                hw //= 2
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(c * hw * hw, 10))

    def mlp(width, depth, fin=784):
        layers, c = [], fin
        for _ in range(depth):
            layers += [nn.Linear(c, width), nn.ReLU()]
            c = width
        return nn.Sequential(*layers, nn.Linear(c, 10))

    return [
        ("mobilenet_w0.5_e4_r32", lambda: mobilenet(0.5, 4), (1, 3, 32, 32)),
        ("mobilenet_w1.0_e6_r32", lambda: mobilenet(1.0, 6), (1, 3, 32, 32)),
        ("mobilenet_w1.0_e4_r64", lambda: mobilenet(1.0, 4), (1, 3, 64, 64)),
        ("mobilenet_w1.5_e6_r96", lambda: mobilenet(1.5, 6), (1, 3, 96, 96)),
        ("mobilenet_w0.75_e6_r28_gray", lambda: mobilenet(0.75, 6, cin=1), (1, 1, 28, 28)),
        ("resnet_w16_d1_r32", lambda: resnet(16, 1), (1, 3, 32, 32)),
        ("resnet_w16_d2_r32", lambda: resnet(16, 2), (1, 3, 32, 32)),
        ("resnet_w32_d1_r32", lambda: resnet(32, 1), (1, 3, 32, 32)),
        ("resnet_w24_d2_r48", lambda: resnet(24, 2), (1, 3, 48, 48)),
        ("plain_w16_d2_k3", lambda: plain(16, 2, 3), (1, 1, 28, 28)),
        ("plain_w32_d4_k3", lambda: plain(32, 4, 3), (1, 1, 28, 28)),
        ("plain_w24_d4_k5", lambda: plain(24, 4, 5), (1, 1, 28, 28)),
        ("plain_w48_d6_k3_r64", lambda: plain(48, 6, 3, cin=3, hw=64), (1, 3, 64, 64)),
        ("plain_w64_d2_k7_r32", lambda: plain(64, 2, 7, cin=3, hw=32), (1, 3, 32, 32)),
        ("mlp_w128_d2", lambda: mlp(128, 2), (1, 784)),
        ("mlp_w512_d3", lambda: mlp(512, 3), (1, 784)),
        ("mlp_w1024_d4", lambda: mlp(1024, 4), (1, 784)),
        ("mlp_w2048_d2_in3072", lambda: mlp(2048, 2, 3072), (1, 3072)),
    ]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", default="cpu-local")
    ap.add_argument("--runtime", default="onnxruntime", choices=["onnxruntime", "litert"])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-cap", type=float, default=2.0)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--tolerance", type=float, default=0.10)
    ap.add_argument("--out", default="runs/bench_predictor.json")
    args = ap.parse_args(argv)

    import torch

    from edgekd.fileio import write_json
    from edgekd.profile.calibrate import export_model, measure_rounds
    from edgekd.profile.predictor import load_calibration, predict

    torch.manual_seed(0)
    torch.set_num_threads(1)
    calib = load_calibration(args.target, args.runtime, "fp32")
    if calib is None:
        print(f"no calibration for {args.target}/{args.runtime}/fp32: the predictions below are uncalibrated",
              file=sys.stderr)
    rows = []
    suffix = ".onnx" if args.runtime == "onnxruntime" else ".tflite"
    with tempfile.TemporaryDirectory(prefix="edgekd-benchpred-") as tmp:
        archs = architectures()
        paths = [export_model(build(), shape, Path(tmp) / f"{name}{suffix}") for name, build, shape in archs]
        preds = [predict(p, args.target, args.runtime, "fp32", threads=args.threads) for p in paths]
        # Same estimator as the calibration: interleaved rounds, lowest median per model.
        measured = measure_rounds(paths, args.target, args.runtime, args.threads, "fp32", args.rounds,
                                  log=None, time_cap_s=args.time_cap, min_time_s=min(0.5, args.time_cap))
        for (name, _, shape), pred, meas in zip(archs, preds, measured):
            err = pred.ms / meas.p50_ms - 1
            rows.append({"name": name, "input_shape": list(shape), "measured_ms": meas.p50_ms,
                         "measured_cv": meas.cv, "predicted_ms": pred.ms, "rel_error": err,
                         "predicted_uncertainty": pred.uncertainty, "within_tolerance": abs(err) <= args.tolerance})
            print(f"{name:32s} measured {meas.p50_ms:8.4f} ms  predicted {pred.ms:8.4f} ms  error {err:+6.1%}",
                  flush=True)
    within = sum(r["within_tolerance"] for r in rows)
    summary = {
        "target": args.target, "runtime": args.runtime, "precision": "fp32", "threads": args.threads,
        "calibrated": calib is not None, "calibration_uncertainty": calib.uncertainty if calib else None,
        "predictor_basis": preds[0].basis if rows else None,
        "rounds": args.rounds, "estimator": "lowest median of interleaved rounds (as the calibration)",
        "n": len(rows), "within_tolerance": within, "fraction_within": within / len(rows),
        "tolerance": args.tolerance, "goal": ">= 90% of architectures within +-10%",
        "median_abs_error": float(sorted(abs(r["rel_error"]) for r in rows)[len(rows) // 2]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": rows,
    }
    write_json(args.out, summary)
    print(f"{within}/{len(rows)} within +-{args.tolerance:.0%} ({within / len(rows):.0%}); "
          f"median |error| {summary['median_abs_error']:.1%}; wrote {args.out}")


if __name__ == "__main__":
    main()
