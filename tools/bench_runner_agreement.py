#!/usr/bin/env python3
"""Does the local runner's median agree with a plain perf_counter loop over the same session? Writes JSON.

    .venv/bin/python tools/bench_runner_agreement.py --out runs/bench_runner_agreement.json

For each model file and runtime, rounds alternate the runner's timing (edgekd.profile.stats.time_until_stable +
summarize, what profile_file uses) and an independent loop (perf_counter around each call, numpy median), so slow
drift of the shared CPU hits both alike. Goal: the two medians within 5% (ratio of the medians of the rounds).
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def models():
    from torch import nn

    return [
        ("cnn_small", lambda: nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                            nn.Flatten(), nn.Linear(32, 10)), (1, 1, 28, 28)),
        ("cnn_medium", lambda: nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(),
                                             nn.Conv2d(32, 64, 3, 2, padding=1), nn.ReLU(),
                                             nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                             nn.Flatten(), nn.Linear(64, 10)), (1, 3, 64, 64)),
        ("mlp", lambda: nn.Sequential(nn.Linear(784, 512), nn.ReLU(), nn.Linear(512, 10)), (1, 784)),
    ]


def plain_loop(session, x, n: int) -> float:
    """Median of n individually timed calls, with nothing from edgekd in between."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.run(x)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e3


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--runtimes", default="onnxruntime,litert")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--time-cap", type=float, default=1.0)
    ap.add_argument("--out", default="runs/bench_runner_agreement.json")
    args = ap.parse_args(argv)

    import torch

    from edgekd.fileio import write_json
    from edgekd.profile.predict.calibrate import export_model
    from edgekd.profile.runners.local import cpu_device_name, make_input
    from edgekd.profile.stats import StopRule, summarize, time_until_stable
    from edgekd.runtimes import open_session

    torch.manual_seed(0)
    torch.set_num_threads(1)
    rule = StopRule(min_runs=50, block=25, time_cap_s=args.time_cap, min_time_s=0.2)
    rows = []
    suffix = {"onnxruntime": ".onnx", "litert": ".tflite"}
    with tempfile.TemporaryDirectory(prefix="edgekd-agree-") as tmp:
        for name, build, shape in models():
            module = build()
            for rt in args.runtimes.split(","):
                path = export_model(module, shape, Path(tmp) / f"{name}{suffix[rt]}")
                session = open_session(path, runtime=rt, threads=args.threads)
                x = make_input(shape)
                for _ in range(20):
                    session.run(x)
                runner, plain = [], []
                for _ in range(args.rounds):
                    samples, _ = time_until_stable(lambda: session.run(x), rule)
                    runner.append(summarize(samples).p50_ms)
                    plain.append(plain_loop(session, x, len(samples)))
                r, p = float(np.median(runner)), float(np.median(plain))
                ratio = r / p
                rows.append({"name": name, "runtime": rt, "runtime_version": session.version,
                             "runner_median_ms": r, "plain_median_ms": p, "ratio": ratio,
                             "agree_within_5pct": abs(ratio - 1) <= 0.05, "runner_rounds_ms": runner,
                             "plain_rounds_ms": plain})
                print(f"{name:12s} {rt:12s} runner {r:.4f} ms  plain {p:.4f} ms  ratio {ratio:.3f}", flush=True)
    ok = sum(r["agree_within_5pct"] for r in rows)
    write_json(args.out, {"device": cpu_device_name(), "threads": args.threads, "rounds": args.rounds,
                          "goal": "runner median within 5% of a plain perf_counter loop",
                          "agree": ok, "n": len(rows), "max_abs_deviation": max(abs(r["ratio"] - 1) for r in rows),
                          "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "results": rows})
    print(f"{ok}/{len(rows)} agree within 5%; wrote {args.out}")


if __name__ == "__main__":
    main()
