"""Issue 4 benchmark: fp32 student vs PTQ (per calibration method) vs QAT vs QAT+KD, as exported files.

For each seed: train the fp32 student, quantize it every way, export each model to TFLite and ONNX, and measure
each file's test accuracy in its own runtime, its size and its CPU latency (batch 1, 1 thread, median). Writes JSON
with per-seed rows and a mean/std summary per (variant, format). Ratios within one run are comparable; absolute
times across runs are not (DESIGN §5).

    .venv/bin/python tools/bench_quant.py --out runs/bench/quant.json              # full (hours on 2 cores)
    .venv/bin/python tools/bench_quant.py --quick --out /tmp/bench_quant.json      # smoke: minutes
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekd.fileio import write_json  # noqa: E402
from edgekd.logs import quiet_third_party_logs  # noqa: E402


def latency_ms(path: Path, shape: tuple[int, ...], runs: int) -> dict:
    from edgekd.runtimes import open_session

    session = open_session(path, threads=1)
    x = np.random.default_rng(0).standard_normal((1, *shape)).astype(np.float32)
    for _ in range(10):
        session.run(x)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        session.run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": statistics.median(times), "mean_ms": statistics.fmean(times), "runs": runs,
            "runtime_version": session.version}


def evaluate_files(name: str, model, example, x_test, y_test, workdir: Path, latency_runs: int,
                   reference_accuracy: float) -> list[dict]:
    from edgekd.export import describe_file, export_onnx, export_tflite
    from edgekd.verify import file_accuracy

    rows = []
    for fmt, export in (("tflite", export_tflite), ("onnx", export_onnx)):
        t0 = time.perf_counter()
        path = export(model, example, workdir / f"{name}.{fmt}")
        export_s = time.perf_counter() - t0
        d = describe_file(path)
        acc = file_accuracy(path, x_test, y_test)
        rows.append({"variant": name, "format": fmt, "precision": d["precision"], "bytes": d["bytes"],
                     "accuracy": acc["accuracy"], "torch_accuracy": reference_accuracy,
                     "accuracy_gap": reference_accuracy - acc["accuracy"], "export_s": round(export_s, 2),
                     "eval_s": acc["seconds"], **latency_ms(path, tuple(example[0].shape[1:]), latency_runs)})
        print(f"  {name:<16} {fmt:<6} acc {acc['accuracy']:.4f} (torch {reference_accuracy:.4f}) "
              f"{d['bytes'] / 1024:.1f} KiB p50 {rows[-1]['p50_ms']:.3f} ms", flush=True)
    return rows


from edgekd.config import DISTILL_KD_TERMS, QAT_KD_TERMS  # noqa: E402  (the library defaults)

KD_TERMS = list(DISTILL_KD_TERMS)


def run_seed(seed: int, args, ds, workdir: Path, teacher_cache) -> list[dict]:
    from edgekd.distill import build_objective
    from edgekd.models import build_model
    from edgekd.quant import (calibration_batches, load_calibration_recipe, qat_finetune, quantize_ptq,
                              scheme_for_runtimes, select_calibration)
    from edgekd.train import TrainConfig, evaluate, train

    torch.manual_seed(seed)
    scheme = scheme_for_runtimes(["litert", "onnxruntime"], override=args.scheme)
    example = (ds.x_test[:1],)
    student = build_model(args.model, num_classes=len(ds.labels), in_channels=ds.input_shape[0])
    # The fp32 student is the distilled one, as in the pipeline (CE 0.1 + KD 0.9 at T=2 from the teacher).
    train(student, ds.x_train, ds.y_train, TrainConfig(epochs=args.epochs, lr=args.lr), seed=seed,
          objective=build_objective(KD_TERMS), teacher=teacher_cache, batch_size=args.batch_size, progress=False,
          desc="fp32")
    student.eval()
    fp32_acc = evaluate(student, ds.x_test, ds.y_test)
    rows = evaluate_files("fp32", student, example, ds.x_test, ds.y_test, workdir, args.latency_runs, fp32_acc)

    calib = select_calibration(ds.x_train, ds.y_train, load_calibration_recipe(args.calibration))
    for method in args.ptq_methods:
        t0 = time.perf_counter()
        q = quantize_ptq(student, example, scheme, calibration_batches(calib, 64), method)
        quant_s = time.perf_counter() - t0
        acc = evaluate(q, ds.x_test, ds.y_test, set_eval=lambda m: None)
        for r in evaluate_files(f"ptq_{method}", q, example, ds.x_test, ds.y_test, workdir, args.latency_runs, acc):
            rows.append({**r, "quantize_s": round(quant_s, 2)})

    # QAT fused with KD: the fp32 teacher teaches the fake-quant student; self-KD: the fp32 student teaches its own
    # fake-quant copy; plain QAT: labels only.
    for variant, teacher in (("qat", None), ("qat_kd", teacher_cache), ("qat_selfkd", "self")):
        t0 = time.perf_counter()
        q, _ = qat_finetune(student, (ds.x_test[:2],), scheme=scheme,
                            train_config=TrainConfig(epochs=args.qat_epochs, lr=args.qat_lr), x=ds.x_train,
                            y=ds.y_train, teacher=teacher,
                            objective=None if teacher is None else build_objective(list(QAT_KD_TERMS)),
                            freeze_observers_after=0.7, freeze_bn_after=0.8, batch_size=args.batch_size, seed=seed,
                            progress=False)
        quant_s = time.perf_counter() - t0
        acc = evaluate(q, ds.x_test, ds.y_test, set_eval=lambda m: None)
        for r in evaluate_files(variant, q, example, ds.x_test, ds.y_test, workdir, args.latency_runs, acc):
            rows.append({**r, "quantize_s": round(quant_s, 2)})
    return [{**r, "seed": seed, "scheme": scheme.name} for r in rows]


def summarize(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["variant"], r["format"]) for r in rows}, key=lambda k: (k[0] != "fp32", k))
    for variant, fmt in keys:
        sel = [r for r in rows if r["variant"] == variant and r["format"] == fmt]
        entry = {"variant": variant, "format": fmt, "n_seeds": len(sel), "bytes": sel[0]["bytes"]}
        for k in ("accuracy", "accuracy_gap", "p50_ms"):
            vals = [r[k] for r in sel]
            entry[f"{k}_mean"] = statistics.fmean(vals)
            entry[f"{k}_std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        out.append(entry)
    return out


def targets(summary: list[dict]) -> dict:
    """Issue-4 targets: QAT+KD files within 0.5 pt of the fp32 student, and no worse than QAT alone (per format)."""
    by = {(e["variant"], e["format"]): e for e in summary}
    out = {}
    for fmt in ("tflite", "onnx"):
        fp32, qat, qat_kd = by.get(("fp32", fmt)), by.get(("qat", fmt)), by.get(("qat_kd", fmt))
        self_kd = by.get(("qat_selfkd", fmt))
        if fp32 and qat and qat_kd:
            out[fmt] = {"qat_kd_minus_fp32_pt": (qat_kd["accuracy_mean"] - fp32["accuracy_mean"]) * 100,
                        "qat_kd_minus_qat_pt": (qat_kd["accuracy_mean"] - qat["accuracy_mean"]) * 100,
                        "within_0.5pt_of_fp32": fp32["accuracy_mean"] - qat_kd["accuracy_mean"] <= 0.005,
                        "no_worse_than_qat": qat_kd["accuracy_mean"] >= qat["accuracy_mean"],
                        "qat_selfkd_minus_qat_pt": (self_kd["accuracy_mean"] - qat["accuracy_mean"]) * 100
                        if self_kd else None}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench/quant.json")
    p.add_argument("--dataset", default="fashion_mnist")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--model", default="tiny_cnn", help="student architecture (the demo's)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--epochs", type=float, default=15, help="fp32 student epochs (trained to convergence)")
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--qat-epochs", type=float, default=1)
    p.add_argument("--qat-lr", type=float, default=5e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--ptq-methods", nargs="+", default=["minmax", "percentile", "mse", "histogram"])
    p.add_argument("--scheme", default=None, help="scheme override (default: litert + onnxruntime on this CPU)")
    p.add_argument("--calibration", default="calibration/default.yaml")
    p.add_argument("--subset-train", type=int, default=None)
    p.add_argument("--subset-test", type=int, default=None)
    p.add_argument("--latency-runs", type=int, default=200)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 seed, 5k/1k images, 2 + 0.5 epochs")
    args = p.parse_args(argv)
    if args.quick:
        args.seeds, args.epochs, args.qat_epochs = args.seeds[:1], 2, 0.5
        args.subset_train, args.subset_test, args.latency_runs = 5000, 1000, 50
        args.ptq_methods = args.ptq_methods[:2]
    torch.set_num_threads(1)
    quiet_third_party_logs()
    from edgekd.data import load_dataset
    from edgekd.quant import detect_cpu_vnni

    from edgekd.distill import TorchTeacher, load_or_build
    from edgekd.models import load_shipped_teacher
    from edgekd.train import TeacherSignal

    ds = load_dataset(args.dataset, args.data_dir, subset_train=args.subset_train, subset_test=args.subset_test)
    t0 = time.perf_counter()
    rows: list[dict] = []
    with tempfile.TemporaryDirectory() as d:
        teacher = TorchTeacher(load_shipped_teacher()[0])
        cached = load_or_build(teacher, ds.x_train, Path(d) / "cache", preprocessing=ds.digest(), progress=False)
        teacher_cache = TeacherSignal(teacher=teacher, cached=cached)
        for seed in args.seeds:
            print(f"seed {seed}", flush=True)
            rows += run_seed(seed, args, ds, Path(d), teacher_cache)
    result = {"benchmark": "bench_quant", "config": vars(args), "dataset": ds.name,
              "n_train": len(ds.x_train), "n_test": len(ds.x_test),
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "cpu_has_vnni": detect_cpu_vnni(), "torch_threads": 1},
              "versions": {"torch": torch.__version__}, "wall_time_s": round(time.perf_counter() - t0, 1),
              "rows": rows, "summary": summarize(rows), "targets": targets(summarize(rows))}
    write_json(args.out, result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
