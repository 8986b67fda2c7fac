"""Issue 11 benchmark: int8 coverage on real architectures (torchvision + timm), PTQ and QAT+KD, ONNX and TFLite.

For each architecture (random weights made input-dependent, see edgekd.quant.agreement): quantize with edgekd's PTQ
and with a short QAT+KD (the fp32 model teaches its fake-quant copy), export each to int8 ONNX and int8 TFLite, run
every file in its own runtime and compare it with its fake-quant simulation (top-1 agreement, relative error, near-tie
analysis), then measure size and p50 latency (1 thread and all threads) next to the fp32 file and next to the same
fp32 file quantized by the runtime's own tool (onnxruntime.quantization.quantize_static; ai-edge-quantizer for
LiteRT). A step that fails is recorded with the first line of its error; the JSON is rewritten after every
architecture, so an interrupted run keeps what it measured.

    PYTHONPATH=. .venv/bin/python tools/bench_coverage.py                               # all 15, ~30 min on 2 cores
    PYTHONPATH=. .venv/bin/python tools/bench_coverage.py --archs resnet18 --eval 32    # one, minutes
    PYTHONPATH=. .venv/bin/python tools/bench_coverage.py --diagnose mobilenet_v3_small --eval 256   # defect 2
    PYTHONPATH=. .venv/bin/python tools/bench_coverage.py --diagnose resnet18 --diagnose-variant qat_kd
    PYTHONPATH=. .venv/bin/python tools/bench_coverage.py --table runs/bench/coverage.json
"""
from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edgekd.fileio import write_json  # noqa: E402

ARCHS = ("resnet18", "mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large", "efficientnet_b0",
         "shufflenet_v2_x0_5", "squeezenet1_0", "mnasnet0_5", "regnet_x_400mf", "googlenet", "densenet121",
         "convnext_tiny", "vit_b_16", "swin_t", "timm:mobilenetv4_conv_small")
AGREEMENT_GATE = 0.99


def build(arch: str, size: int, num_classes: int) -> torch.nn.Module:
    """A random-weight classifier by name; ViT is built for `size` (its position embedding has size/16 squared
    patches: with random weights there is nothing to interpolate; pretrained weights would need it)."""
    from edgekd.models.vision import import_timm, import_torchvision

    if arch.startswith("timm:"):
        return import_timm().create_model(arch[5:], pretrained=False, num_classes=num_classes).eval()
    models = import_torchvision().models
    kwargs = {"num_classes": num_classes}
    if arch.startswith("vit_"):
        kwargs["image_size"] = size
    if arch == "googlenet":
        kwargs.update(aux_logits=False, init_weights=True)
    if arch.startswith("inception"):
        kwargs["aux_logits"] = False
    return getattr(models, arch)(**kwargs).eval()


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:400]


def step(record: dict, key: str, fn, *args, **kwargs):
    """Run one step; on failure record its error (first line) under record['errors'][key] and return None."""
    t0 = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
    except Exception as e:  # a converter or runtime failure is a result, not a crash
        record.setdefault("errors", {})[key] = first_line(e)
        if os.environ.get("EDGEKD_BENCH_TRACE"):
            traceback.print_exc()
        print(f"    {key}: FAILED {first_line(e)}", flush=True)
        return None
    record.setdefault("seconds", {})[key] = round(time.perf_counter() - t0, 2)
    return out


def latency(path: Path, threads: int, max_s: float, min_runs: int = 5) -> dict:
    """p50 of batch-1 runs in the file's runtime: warm-up 3, then until `max_s` seconds (at least `min_runs`)."""
    from edgekd.runtimes import open_session

    session = open_session(path, threads=threads)
    shape = tuple(1 if d <= 0 else d for d in session.input_shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    for _ in range(3):
        session.run(x)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < max_s and len(times) < 500):
        t0 = time.perf_counter()
        session.run(x)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": round(statistics.median(times), 4), "runs": len(times)}


def file_outputs(path: Path, x: torch.Tensor, threads: int) -> np.ndarray:
    from edgekd.runtimes import open_session

    return open_session(path, threads=threads).run(x.numpy())


def verdict(agreement: float, self_agreement: float | None) -> str:
    """'pass' (>= 99%), 'rounding' (below, but no worse than the simulation against itself under one-step input
    jitter, less 3 points: the model's own rounding sensitivity explains the misses), else 'GAP'."""
    if agreement >= AGREEMENT_GATE:
        return "pass"
    if self_agreement is not None and agreement >= self_agreement - 0.03:
        return "rounding"
    return "GAP"


def file_row(path: Path, reference: np.ndarray, fp32: np.ndarray, x_eval: torch.Tensor, args,
             self_agreement: float | None = None, resolution: float = 0.0) -> dict:
    """One file: agreement with `reference` (its simulation) and with fp32, size, latency at 1 and all threads."""
    from edgekd.quant.agreement import compare_top1

    out = file_outputs(path, x_eval, args.all_threads)
    c = compare_top1(reference, out, resolution)
    row = {"file": path.name, "bytes": path.stat().st_size, "agreement": c["agreement_at_resolution"],
           "agreement_exact": c["agreement"], "ties_at_resolution": c["ties_at_resolution"],
           "output_step": resolution,
           "agreement_decisive": c["agreement_decisive"], "rel_error": c["rel_error"], "max_abs": c["max_abs"],
           "disagreements": c["disagreements"], "near_ties": c["near_ties"], "disagreeing": c["disagreeing"][:8],
           "agreement_vs_fp32": compare_top1(fp32, out)["agreement"],
           "passes": c["agreement_at_resolution"] >= AGREEMENT_GATE,
           "simulation_self_agreement": self_agreement,
           "verdict": verdict(c["agreement_at_resolution"], self_agreement)}
    return row


def export(model, x1: torch.Tensor, path: Path, fmt: str) -> Path:
    from edgekd.export import export_onnx, export_tflite

    if fmt == "onnx":  # a static batch of 1: the edge case, and ~2.5x faster to export than a dynamic batch
        return export_onnx(model, (x1,), path, dynamic_batch=False)
    return export_tflite(model, (x1,), path)


def qat_kd(model: torch.nn.Module, scheme, x: torch.Tensor, args) -> torch.fx.GraphModule:
    """A short QAT fused with KD: the fp32 model teaches its fake-quant copy on `x` (labels = its own top-1),
    through edgekd.quant.qat_finetune (the recipe default QAT loss: 0.5 CE + 0.5 soft KD at T=1)."""
    import edgekd.quant as quant
    from edgekd.config import QAT_KD_TERMS
    from edgekd.distill import build_objective
    from edgekd.train import TrainConfig

    with torch.no_grad():
        y = torch.cat([model(x[i:i + 32]) for i in range(0, len(x), 32)]).argmax(1)
    cfg = TrainConfig(epochs=args.qat_steps * args.qat_batch / len(x), lr=args.qat_lr, schedule="constant")
    q, _ = quant.qat_finetune(copy.deepcopy(model), (x[:2],), scheme=scheme, train_config=cfg, x=x, y=y,
                              teacher="self", objective=build_objective([dict(t) for t in QAT_KD_TERMS]),
                              freeze_observers_after=0.5, freeze_bn_after=0.75, batch_size=args.qat_batch,
                              progress=False)
    return q


def simulate(model, x: torch.Tensor, batch: int = 32) -> np.ndarray:
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)]).numpy()


def simulate_int8(q, x: torch.Tensor, precision: str = "integer") -> np.ndarray:
    """The fake-quant simulation a file is judged against: evaluated as the kernels do (`simulate_integer_kernels`:
    exact int32 sums, float32 requantization) or, for comparison, as the float32 module."""
    from edgekd.quant.agreement import simulate_integer_kernels

    return simulate_integer_kernels(q, x) if precision == "integer" else simulate(q, x)


def own_onnx(fp32_path: Path, out: Path, calib: torch.Tensor, vnni: bool) -> Path:
    """onnxruntime's own static quantizer on the fp32 file: QDQ, per-channel int8 weights, uint8 activations."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self):
            import onnx

            self.name = onnx.load(str(fp32_path), load_external_data=False).graph.input[0].name
            self.rows = iter(calib.numpy()[i:i + 1] for i in range(len(calib)))

        def get_next(self):
            row = next(self.rows, None)
            return None if row is None else {self.name: row}

    quantize_static(str(fp32_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=not vnni)
    return out


def own_tflite(fp32_path: Path, out: Path, calib: torch.Tensor) -> Path:
    """ai-edge-quantizer (LiteRT's own quantizer) on the fp32 file: static int8 weights and activations."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    signatures = Interpreter(model_path=str(fp32_path)).get_signature_list()
    key = next(iter(signatures))
    name = signatures[key]["inputs"][0]
    x = calib.numpy()
    if x.ndim == 4:
        shape = Interpreter(model_path=str(fp32_path)).get_input_details()[0]["shape"]
        if tuple(shape[1:]) != x.shape[1:] and tuple(shape[1:]) == x.transpose(0, 2, 3, 1).shape[1:]:
            x = x.transpose(0, 2, 3, 1)
    qt = quantizer.Quantizer(str(fp32_path))
    qt.load_quantization_recipe(recipe.static_wi8_ai8())
    result = qt.calibrate({key: [{name: x[i:i + 1]} for i in range(len(x))]})
    qt.quantize(result, enable_progress_bar=False, enable_progress_report=False).export_model(str(out), overwrite=True)
    return out


def bench_arch(arch: str, args, workdir: Path) -> dict:
    from edgekd.quant import detect_cpu_vnni, quantize_ptq, scheme_for_runtimes
    from edgekd.quant.agreement import (compare_top1, logit_diversity, make_input_dependent, output_quantization,
                                        synthetic_images)

    rec: dict = {"arch": arch, "size": args.size}
    torch.manual_seed(args.seed)
    model = step(rec, "build", build, arch, args.size, args.num_classes)
    if model is None:
        return rec
    x = synthetic_images(args.calib + args.eval, args.size, seed=args.seed)
    calib, x_eval = x[:args.calib], x[args.calib:]
    rec["params"] = sum(p.numel() for p in model.parameters())
    rec["input_dependent"] = make_input_dependent(model, calib)
    fp32 = simulate(model, x_eval)
    rec["fp32_logits"] = logit_diversity(fp32)
    vnni = detect_cpu_vnni()
    scheme = scheme_for_runtimes(["litert", "onnxruntime"], cpu_has_vnni=vnni)
    rec["scheme"] = scheme.name
    x1 = x[:1]
    stem = workdir / arch.replace(":", "_")
    makers = {"ptq": lambda: quantize_ptq(model, (x1,), scheme, [calib[i:i + 32] for i in range(0, len(calib), 32)],
                                          args.ptq_method)}
    if not args.no_qat:
        makers["qat_kd"] = lambda: qat_kd(model, scheme, calib, args)
    # Quantize before any export: after a litert-torch conversion in the same process, QAT's train-mode
    # torch.export of torchvision BatchNorm failed (data-dependent num_batches_tracked guard).
    quantized = {v: step(rec, f"{v}_quantize", make) for v, make in makers.items()}
    files = {}
    for fmt in ("onnx", "tflite"):
        p = step(rec, f"fp32_export_{fmt}", export, model, x1, Path(f"{stem}_fp32.{fmt}"), fmt)
        if p is not None:
            files[f"fp32_{fmt}"] = p
            rec[f"fp32_{fmt}"] = {"file": p.name, "bytes": p.stat().st_size, "rel_error": compare_top1(
                fp32, file_outputs(p, x_eval, args.all_threads))["rel_error"]}
    for variant, q in quantized.items():
        if q is None:
            continue
        sim = simulate_int8(q, x_eval, args.simulation)
        other = "float32" if args.simulation == "integer" else "integer"
        sim_other = simulate_int8(q, x_eval, other)
        rec[f"{variant}_simulation_vs_fp32"] = {k: v for k, v in compare_top1(fp32, sim).items() if k != "disagreeing"}
        resolution = (output_quantization(q) or (0.0, 0))[0]
        rec[f"{variant}_simulation_self"] = self_agreement(q, sim, x_eval, args.simulation)
        rec[f"{variant}_simulation_{other}_vs_{args.simulation}"] = {
            k: v for k, v in compare_top1(sim, sim_other, resolution).items() if k != "disagreeing"}
        for fmt in ("onnx", "tflite"):
            p = step(rec, f"{variant}_export_{fmt}", export, q, x1, Path(f"{stem}_{variant}.{fmt}"), fmt)
            if p is None:
                continue
            row = step(rec, f"{variant}_run_{fmt}", file_row, p, sim, fp32, x_eval, args,
                       rec[f"{variant}_simulation_self"].get("agreement"), resolution)
            if row is None:
                continue
            out = file_outputs(p, x_eval, args.all_threads)
            c_other = compare_top1(sim_other, out, resolution)
            row[f"agreement_vs_{other}_simulation"] = c_other["agreement_at_resolution"]
            row[f"agreement_exact_vs_{other}_simulation"] = c_other["agreement"]
            rec[f"{variant}_{fmt}"] = row
            print(f"    {variant:<7}{fmt:<7} agree {row['agreement']:.3f} (self {row['simulation_self_agreement']}) "
                  f"{row['verdict']} (exact {row['agreement_exact']:.3f}; vs the {other} simulation "
                  f"{row[f'agreement_vs_{other}_simulation']:.3f}) "
                  f"rel {row['rel_error']:.2e} {row['bytes'] / 1e6:.2f} MB", flush=True)
    if not args.no_own:
        own_quantizers(rec, files, fp32, calib, x_eval, stem, vnni, args)
    return rec


def own_quantizers(rec: dict, files: dict, fp32: np.ndarray, calib, x_eval, stem: Path, vnni: bool, args) -> None:
    """The runtime's own quantizer on the fp32 file, side by side with edgekd's PTQ file (ratio = own / edgekd)."""
    from edgekd.quant.agreement import compare_top1

    tools = {"onnx": ("onnxruntime.quantize_static", lambda src, dst: own_onnx(src, dst, calib, vnni)),
             "tflite": ("ai_edge_quantizer.static_wi8_ai8", lambda src, dst: own_tflite(src, dst, calib))}
    for fmt, (tool, fn) in tools.items():
        src = files.get(f"fp32_{fmt}")
        if src is None:
            continue
        p = step(rec, f"own_quantize_{fmt}", fn, src, Path(f"{stem}_own.{fmt}"))
        if p is None:
            continue
        out = step(rec, f"own_run_{fmt}", file_outputs, p, x_eval, args.all_threads)
        if out is None:
            continue
        row = {"tool": tool, "file": p.name, "bytes": p.stat().st_size,
               "agreement_vs_fp32": compare_top1(fp32, out)["agreement"],
               "rel_error_vs_fp32": compare_top1(fp32, out)["rel_error"]}
        ours = rec.get(f"ptq_{fmt}")
        if ours:
            row["edgekd_ptq_agreement_vs_fp32"] = ours["agreement_vs_fp32"]
        rec[f"own_{fmt}"] = row
        print(f"    own    {fmt:<7} agree-vs-fp32 {row['agreement_vs_fp32']:.3f} ({tool})", flush=True)


FILE_ROWS = ("fp32_onnx", "fp32_tflite", "ptq_onnx", "ptq_tflite", "qat_kd_onnx", "qat_kd_tflite", "own_onnx",
             "own_tflite")


def measure_latency(rec: dict, workdir: Path, args) -> None:
    """p50 of every file of `rec` (1 thread and all threads), one file at a time with nothing else running in this
    tool; then int8/fp32 speed-ups per format and the runtime's own quantizer over edgekd's PTQ file."""
    threads = sorted({1, args.all_threads})
    for key in FILE_ROWS:
        row = rec.get(key)
        if not row or "file" not in row or not (workdir / row["file"]).exists():
            continue
        for t in threads:
            r = step(rec, f"latency_{key}_{t}t", latency, workdir / row["file"], t, args.latency_s)
            if r is not None:
                row[f"p50_ms_{t}t"] = r["p50_ms"]
    for fmt in ("onnx", "tflite"):
        fp = rec.get(f"fp32_{fmt}", {})
        for variant in ("ptq", "qat_kd"):
            row = rec.get(f"{variant}_{fmt}")
            for t in threads:
                if row and fp.get(f"p50_ms_{t}t") and row.get(f"p50_ms_{t}t"):
                    row[f"speedup_{t}t"] = round(fp[f"p50_ms_{t}t"] / row[f"p50_ms_{t}t"], 3)
        own, ours = rec.get(f"own_{fmt}"), rec.get(f"ptq_{fmt}")
        if own and ours and own.get("p50_ms_1t") and ours.get("p50_ms_1t"):
            own["latency_ratio_own_over_edgekd_1t"] = round(own["p50_ms_1t"] / ours["p50_ms_1t"], 3)
            if own.get(f"p50_ms_{threads[-1]}t") and ours.get(f"p50_ms_{threads[-1]}t"):
                own[f"latency_ratio_own_over_edgekd_{threads[-1]}t"] = round(
                    own[f"p50_ms_{threads[-1]}t"] / ours[f"p50_ms_{threads[-1]}t"], 3)


def diagnose(arch: str, args, workdir: Path) -> dict:
    """Defect 2: on `args.eval` inputs, are file-vs-simulation disagreements near-ties or real gaps, and where
    (first quantized activation that differs by more than rounding) do file and simulation part? PTQ, or QAT+KD
    with `--diagnose-variant qat_kd`."""
    from edgekd.quant import detect_cpu_vnni, quantize_ptq, scheme_for_runtimes
    from edgekd.quant.agreement import (compare_top1, layer_divergence, logit_diversity, make_input_dependent,
                                        onnx_activations, output_quantization, simulation_activations,
                                        synthetic_images, tflite_activations)

    rec: dict = {"arch": arch, "size": args.size, "mode": "diagnose", "raw_weights": args.raw_weights}
    torch.manual_seed(args.seed)
    model = build(arch, args.size, args.num_classes)
    x = synthetic_images(args.calib + args.eval, args.size, seed=args.seed)
    calib, x_eval = x[:args.calib], x[args.calib:]
    if not args.raw_weights:
        rec["input_dependent"] = make_input_dependent(model, calib)
    fp32 = simulate(model, x_eval)
    rec["fp32_logits"] = logit_diversity(fp32)
    scheme = scheme_for_runtimes(["litert", "onnxruntime"], cpu_has_vnni=detect_cpu_vnni())
    rec["variant"] = args.diagnose_variant
    if args.diagnose_variant == "qat_kd":
        q = qat_kd(model, scheme, calib, args)
    else:
        q = quantize_ptq(model, (x[:1],), scheme, [calib[i:i + 32] for i in range(0, len(calib), 32)],
                         args.ptq_method)
    sim = simulate_int8(q, x_eval, args.simulation)
    resolution = rec["output_step"] = (output_quantization(q) or (0.0, 0))[0]
    rec["simulation_vs_fp32"] = {k: v for k, v in compare_top1(fp32, sim).items() if k != "disagreeing"}
    rec["simulation_self"] = self_agreement(q, sim, x_eval, args.simulation)
    print(f"  simulation vs fp32: agreement {rec['simulation_vs_fp32']['agreement']:.4f}; vs itself with 0.1% of "
          f"input pixels moved one step: {rec['simulation_self']['agreement']:.4f} "
          f"(rel {rec['simulation_self']['rel_error']:.2e})", flush=True)
    acts = simulation_activations(q, x_eval[:32])
    rec["steps_of_input_variation"] = [{"layer": a["layer"], "op": a["op"],
                                        "steps": round(a["steps_of_input_variation"], 2)} for a in acts]
    low = sorted(rec["steps_of_input_variation"], key=lambda a: a["steps"])[:3]
    print(f"  least input variation (quantization steps): {[(a['layer'], a['op'], a['steps']) for a in low]}")
    stem = workdir / f"{arch.replace(':', '_')}_diag"
    for fmt in ("onnx", "tflite"):
        p = step(rec, f"export_{fmt}", export, q, x[:1], Path(f"{stem}.{fmt}"), fmt)
        if p is None:
            continue
        out = file_outputs(p, x_eval, args.all_threads)
        c = compare_top1(sim, out, resolution)
        rec[fmt] = c
        print(f"  {fmt}: agreement {c['agreement']:.4f} ({c['disagreements']} of {c['n']}; at int8 output resolution "
              f"{c['agreement_at_resolution']:.4f}, {c['ties_at_resolution']} ties), near-ties "
              f"{c['near_ties']}, decisive agreement {c['agreement_decisive']:.4f} on {c['decisive_rows']} rows, "
              f"rel {c['rel_error']:.2e}", flush=True)
        for d in c["disagreeing"][:8]:
            print(f"    row {d['row']}: margin {d['margin']:.4f} ({d['margin_over_std']:.3f} std, percentile "
                  f"{d['margin_percentile']:.1f}), error {d['error']:.4f} ({d['error_over_median']:.2f}x median)")
        if fmt == "onnx":  # the same file with onnxruntime's fusions off: Q/DQ run as float ops, like the simulation
            un = compare_top1(sim, onnx_unfused(p, x_eval), resolution)
            rec["onnx_unfused"] = {k: v for k, v in un.items() if k != "disagreeing"}
            print(f"    unfused (ORT_DISABLE_ALL): agreement {un['agreement']:.4f} (at resolution "
                  f"{un['agreement_at_resolution']:.4f}), rel {un['rel_error']:.2e}")
        rows = [d["row"] for d in c["disagreeing"][:args.layer_rows]] or [0]
        layers = []
        for r in rows:
            xi = x_eval[r:r + 1]
            simrec = simulation_activations(q, xi)
            if fmt == "onnx":
                frec, logits = onnx_activations(p, xi.numpy())
                probe_ok = float(np.abs(logits - out[r:r + 1]).max())
            else:
                frec, probe_ok = tflite_activations(p, xi.numpy()), None
            dv = layer_divergence(simrec, frec)
            summary = {"row": r, "tensors": dv["tensors"], "matched": dv["matched"],
                       "probe_changes_logits_by": probe_ok, "first_over_lsb": dv["first_over_lsb"],
                       "largest_jump": dv["largest_jump"],
                       "layers": [{k: v for k, v in L.items() if k != "file_tensor"} for L in dv["layers"]]}
            layers.append(summary)
            f1, j = dv["first_over_lsb"], dv["largest_jump"]
            print(f"    row {r}: matched {dv['matched']}/{dv['tensors']} activations; first > 2 LSB: "
                  f"{f1 and (f1['layer'], f1['op'], f1['max_lsb'])}; largest jump: "
                  f"{j and (j['layer'], j['op'], round(j['mean_lsb'], 3))}", flush=True)
        rec[f"{fmt}_layers"] = layers
    return rec


def self_agreement(q, sim: np.ndarray, x_eval: torch.Tensor, precision: str = "integer",
                   fraction: float = 0.001) -> dict:
    """The simulation against itself with `fraction` of the input pixels moved one quantization step: how much
    the quantized model amplifies one-step rounding differences (the baseline a file's agreement is judged by)."""
    from edgekd.quant.agreement import compare_top1, input_quantization, output_quantization, rounding_jitter

    iq = input_quantization(q)
    if iq is None:
        return {}
    jittered = simulate_int8(q, rounding_jitter(x_eval, iq[0], fraction), precision)
    c = compare_top1(sim, jittered, (output_quantization(q) or (0.0, 0))[0])
    return {"fraction": fraction, "agreement": c["agreement_at_resolution"], "agreement_exact": c["agreement"],
            "rel_error": c["rel_error"]}


def onnx_unfused(path: Path, x: torch.Tensor) -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    return np.concatenate([sess.run(None, {name: x[i:i + 1].numpy()})[0] for i in range(len(x))])


def _fmt(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def table(results: list[dict]) -> str:
    """The coverage table (markdown): architecture x {PTQ, QAT+KD} x {ONNX, TFLite}."""
    lines = ["| arch | variant | format | agreement at int8 res. (sim. self) verdict | rel. error | MB | p50 1t ms | "
             "p50 all ms | "
             "speed-up 1t/all | own quantizer: agree vs fp32 (edgekd) / p50 1t ms / own÷edgekd |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("mode") == "diagnose":
            continue
        for variant in ("ptq", "qat_kd"):
            for fmt in ("onnx", "tflite"):
                row = r.get(f"{variant}_{fmt}")
                err = next((v for k, v in r.get("errors", {}).items() if k.startswith((variant, "build"))
                            and (fmt in k or "quantize" in k or k == "build")), None)
                if row is None:
                    lines.append(f"| {r['arch']} | {variant} | {fmt} | FAILED: {err or 'not run'} | | | | | | |")
                    continue
                threads = sorted(int(k[7:-1]) for k in row if k.startswith("p50_ms_")) or [1]
                own = r.get(f"own_{fmt}") if variant == "ptq" else None
                own_s = (f"{own['agreement_vs_fp32']:.3f} ({row['agreement_vs_fp32']:.3f}) / "
                         f"{own.get('p50_ms_1t', float('nan')):.2f}"
                         f" / {own.get('latency_ratio_own_over_edgekd_1t', float('nan')):.2f}") if own else ""
                if variant == "ptq" and own is None and any(k.startswith(f"own_quantize_{fmt}") or
                                                             k.startswith(f"own_run_{fmt}")
                                                             for k in r.get("errors", {})):
                    own_s = "FAILED: " + next(v for k, v in r["errors"].items() if k.endswith(fmt) and "own" in k)
                speed = "/".join(f"{row.get(f'speedup_{t}t', float('nan')):.2f}" for t in threads)
                lines.append(
                    f"| {r['arch']} | {variant} | {fmt} | {row['agreement']:.3f} "
                    f"({_fmt(row.get('simulation_self_agreement'))})"
                    f" {row.get('verdict', '')} | {row['rel_error']:.1e} | {row['bytes'] / 1e6:.2f} | "
                    f"{row.get(f'p50_ms_{threads[0]}t', float('nan')):.2f} | "
                    f"{row.get(f'p50_ms_{threads[-1]}t', float('nan')):.2f} | {speed} | {own_s} |")
    return "\n".join(lines)


def speed_table(results: list[dict]) -> str:
    """int8 speed per architecture and runtime: p50 (batch 1) at 1 and all threads, edgekd's int8/fp32 speed-up,
    and the runtime's own quantizer on the same fp32 file (top-1 agreement with fp32 beside edgekd's PTQ file's,
    its p50 and own/edgekd latency ratio: > 1 means edgekd's file is faster)."""
    def ms(row, t):
        v = (row or {}).get(f"p50_ms_{t}t")
        return "-" if v is None else f"{v:.2f}"

    def ratio(row, key):
        v = (row or {}).get(key)
        return "-" if v is None else f"{v:.2f}"

    lines = ["| arch | runtime | fp32 p50 1t / all ms | PTQ p50 1t / all ms | PTQ speed-up 1t / all | "
             "QAT+KD speed-up 1t / all | own quantizer | own agree vs fp32 (edgekd PTQ) | own p50 1t / all ms | "
             "own÷edgekd 1t / all |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        if r.get("mode") == "diagnose":
            continue
        for fmt, runtime in (("onnx", "onnxruntime"), ("tflite", "LiteRT")):
            fp, ptq, qat, own = (r.get(k) for k in (f"fp32_{fmt}", f"ptq_{fmt}", f"qat_kd_{fmt}", f"own_{fmt}"))
            if not (fp or ptq):
                continue
            t_all = max([int(k[7:-1]) for k in (fp or ptq or {}) if k.startswith("p50_ms_")] or [1])
            own_err = next((v for k, v in r.get("errors", {}).items() if k.startswith("own_") and k.endswith(fmt)),
                           None)
            own_agree = (f"{own['agreement_vs_fp32']:.2f} ({own.get('edgekd_ptq_agreement_vs_fp32', float('nan')):.2f})"
                         if own else (f"FAILED: {own_err}" if own_err else "-"))
            lines.append(
                f"| {r['arch']} | {runtime} | {ms(fp, 1)} / {ms(fp, t_all)} | {ms(ptq, 1)} / {ms(ptq, t_all)} | "
                f"{ratio(ptq, 'speedup_1t')} / {ratio(ptq, f'speedup_{t_all}t')} | "
                f"{ratio(qat, 'speedup_1t')} / {ratio(qat, f'speedup_{t_all}t')} | "
                f"{(own or {}).get('tool', '-')} | {own_agree} | {ms(own, 1)} / {ms(own, t_all)} | "
                f"{ratio(own, 'latency_ratio_own_over_edgekd_1t')} / "
                f"{ratio(own, f'latency_ratio_own_over_edgekd_{t_all}t')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/bench/coverage.json")
    p.add_argument("--archs", nargs="+", default=list(ARCHS), help="torchvision names, or timm:<name>")
    p.add_argument("--size", type=int, default=64, help="input resolution for every architecture (ViT is built "
                   "for it: size/16 squared patches)")
    p.add_argument("--calib", type=int, default=64, help="calibration (and QAT) images")
    p.add_argument("--eval", type=int, default=256, help="images judged per file (256: the 99%% gate allows 2 "
                   "misses; 100 makes it a one-row gate)")
    p.add_argument("--num-classes", type=int, default=10, help="head size: a fine-tuned model's (1000 = ImageNet "
                   "head, larger files, and top-1 among 1000 random-weight classes is mostly near-ties)")
    p.add_argument("--ptq-method", default="minmax")
    p.add_argument("--simulation", choices=("integer", "float32"), default="integer",
                   help="how the fake-quant simulation is evaluated: as int8 kernels (exact int32 sums, float32 "
                   "requantization) or as the float32 module (the other is recorded beside it)")
    p.add_argument("--qat-steps", type=int, default=4)
    p.add_argument("--qat-batch", type=int, default=16)
    p.add_argument("--qat-lr", type=float, default=1e-5)
    p.add_argument("--no-qat", action="store_true")
    p.add_argument("--no-own", action="store_true", help="skip the runtimes' own quantizers")
    p.add_argument("--latency-s", type=float, default=0.5, help="timing budget per file and thread count")
    p.add_argument("--all-threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", default=None, help="where the files go (default: a temporary folder)")
    p.add_argument("--diagnose", nargs="*", default=None, metavar="ARCH",
                   help="defect-2 mode: PTQ only, margins of disagreements and the first diverging layer")
    p.add_argument("--diagnose-variant", choices=("ptq", "qat_kd"), default="ptq",
                   help="diagnose: the int8 path to trace (PTQ, or the short QAT+KD of the coverage run)")
    p.add_argument("--raw-weights", action="store_true", help="diagnose with the random weights as built")
    p.add_argument("--layer-rows", type=int, default=3, help="diagnose: disagreeing rows traced layer by layer")
    p.add_argument("--table", default=None, metavar="JSON", help="print the table of an earlier run and exit")
    p.add_argument("--jobs", type=int, default=1, help="architectures quantized/exported/judged in this many "
                   "processes at once (one thread each); latency is always measured afterwards, one file at a time")
    p.add_argument("--budget-s", type=float, default=0, help="with --jobs: stop the workers after this many "
                   "seconds (architectures not finished are recorded as such), then measure latency (0: no limit)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.table:
        import json

        results = json.loads(Path(args.table).read_text())["results"]
        print(table(results) + "\n\n" + speed_table(results))
        return 0
    torch.set_num_threads(1 if args.worker else args.all_threads)
    from edgekd.logs import quiet_third_party_logs

    quiet_third_party_logs()
    import tempfile

    out = Path(args.out)
    archs = args.diagnose if args.diagnose is not None else args.archs
    archs = archs or ["mobilenet_v3_small", "vit_b_16"]
    meta = {"command": " ".join(sys.argv), "args": vars(args), "python": platform.python_version(),
            "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
            "cores": os.cpu_count(), "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    results: list[dict] = []
    t0 = time.perf_counter()

    def save() -> None:
        meta["wall_s"] = round(time.perf_counter() - t0, 1)
        write_json(out, {"meta": meta, "complete": len(results) == len(archs), "results": results})

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(args.workdir or tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        if args.diagnose is None and args.jobs > 1 and len(archs) > 1:
            results = run_workers(archs, args, workdir, out)
            meta["files_s"] = round(time.perf_counter() - t0, 1)
            save()
        else:
            for arch in archs:
                print(f"{arch}", flush=True)
                ta = time.perf_counter()
                try:
                    rec = (diagnose if args.diagnose is not None else bench_arch)(arch, args, workdir)
                except Exception as e:  # an architecture that breaks the harness itself still leaves a row
                    rec = {"arch": arch, "errors": {"harness": first_line(e)}}
                    traceback.print_exc()
                rec["wall_s"] = round(time.perf_counter() - ta, 1)
                results.append(rec)
                save()
                print(f"  {arch} done in {rec['wall_s']} s", flush=True)
            meta["files_s"] = round(time.perf_counter() - t0, 1)
        if args.diagnose is None and not args.worker and args.latency_s > 0:
            print(f"latency: p50 of every file, batch 1, threads {sorted({1, args.all_threads})}", flush=True)
            for rec in results:
                measure_latency(rec, workdir, args)
                save()
    if args.diagnose is None and not args.worker:
        print(table(results))
    print(f"wrote {out} ({meta['wall_s']} s)")
    return 0


# Rough relative cost of one architecture (export time grows with the graph): spreads the work over --jobs.
COST = {"vit_b_16": 6, "swin_t": 6, "convnext_tiny": 4, "densenet121": 4, "efficientnet_b0": 3, "googlenet": 2.5,
        "timm:mobilenetv4_conv_small": 2, "mobilenet_v3_large": 2.5, "regnet_x_400mf": 2, "mnasnet0_5": 2}


def run_workers(archs: list[str], args, workdir: Path, out: Path) -> list[dict]:
    """Quantize, export and judge `archs` in `args.jobs` processes (longest first, each to the least loaded),
    one torch thread each; returns their records in `archs` order (a worker that died leaves a harness error)."""
    import json
    import subprocess

    shares: list[list[str]] = [[] for _ in range(args.jobs)]
    loads = [0.0] * args.jobs
    for arch in sorted(archs, key=lambda a: -COST.get(a, 1.5)):
        i = loads.index(min(loads))
        shares[i].append(arch)
        loads[i] += COST.get(arch, 1.5)
    passed = ["--size", args.size, "--calib", args.calib, "--eval", args.eval, "--num-classes", args.num_classes,
              "--ptq-method", args.ptq_method, "--simulation", args.simulation, "--qat-steps", args.qat_steps,
              "--qat-batch", args.qat_batch,
              "--qat-lr", args.qat_lr, "--seed", args.seed, "--workdir", workdir, "--all-threads", 1,
              "--latency-s", 0] + (["--no-qat"] if args.no_qat else []) + (["--no-own"] if args.no_own else [])
    parts = [out.with_name(f"{out.stem}.part{i}.json") for i in range(len(shares))]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, __file__, "--worker", "--archs", *share, "--out", str(part),
                               *map(str, passed)], env=env)
             for share, part in zip(shares, parts) if share]
    deadline = time.monotonic() + args.budget_s if args.budget_s > 0 else None
    codes = []
    for proc in procs:
        try:
            codes.append(proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            proc.terminate()
            codes.append(f"stopped at the {args.budget_s:.0f} s budget")
            proc.wait()
    by_arch = {}
    for part, code in zip(parts, codes):
        if part.exists():
            for rec in json.loads(part.read_text())["results"]:
                by_arch[rec["arch"]] = rec
            part.unlink()
    return [by_arch.get(a, {"arch": a, "errors": {"harness": f"not finished (workers: {codes})"}}) for a in archs]


if __name__ == "__main__":
    sys.exit(main())
