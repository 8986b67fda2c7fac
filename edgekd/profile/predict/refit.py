"""Re-fit a stored cpu-local calibration to this machine, now: scale and per-call overhead from reference models.

A stored calibration was measured on some machine under some load. On a shared 2-vCPU VM the same model can run
2x slower when the sibling vCPU is busy, and for models of 10-40 µs the fixed cost of one session call (Python
binding, input copy, output allocation) is most of the time. Re-running the whole calibration (150 micro-models,
~15 min) before every search is too slow, so `refit_local` measures a dozen small reference models of the
calibration family (whole tiny networks of 5-150 µs, none a search candidate) with the same estimator the search
uses for candidates, and fits two numbers by non-negative least squares on relative error:

    measured ≈ scale · predicted_by_stored_calibration + overhead

The result is the stored calibration with every node cost multiplied by `scale` and `overhead` added to the
per-call cost `t0`: a Calibration like any other (it can be saved), whose uncertainty is the references'
leave-one-out relative error. The candidates themselves are never in the fit, so their prediction errors are
held-out figures.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.profile.predict.predictor import NODE_FEATURES, Calibration, predict

# Small whole networks and stacks of the calibration family (edgekd.profile.predict.calibrate.micro_models):
# from a bare Linear (the session call alone) to a stem + inverted-residual + pooled head (~100 µs).
REFERENCE_MODELS = ("linear_128_10", "stack_fc64x4", "gap_32_32", "stack_pw8x4", "chain_tiny_conv16x1_8",
                    "conv3x3_1_16_56_s2", "maxpool_12_48", "stack_conv_pool_fc", "chain_tiny_dw16x4_8",
                    "block_ir_8_16_s1_e4_48", "stack_vgg_1_24x24_k3_32", "stack_stem_ir_gap", "stack_stem_res_gap")
MEASURE_ROUNDS = 3


def measure_min_median(path: Path, threads: int = 1, rounds: int = MEASURE_ROUNDS) -> tuple[float, list[float]]:
    """The estimator search uses for cpu-local: the lowest median (ms) of `rounds` short ORT runs, and all medians.

    Other processes only ever add time, so the least disturbed round is the best figure of the model's own cost.
    """
    from edgekd.profile.runners.local import profile_file

    medians = [profile_file(path, "onnxruntime", threads=threads, warmup=10, min_runs=30, time_cap_s=1.0,
                            min_time_s=0.2, progress=False).p50_ms for _ in range(rounds)]
    return min(medians), medians


def fit_scale_offset(predicted_s: Sequence[float], measured_s: Sequence[float]) -> tuple[float, float, float,
                                                                                           list[float]]:
    """(scale, overhead_s, leave-one-out RMS relative error, in-sample relative residuals) of
    measured ≈ scale · predicted + overhead, both >= 0, least squares on relative error."""
    from scipy.optimize import nnls

    p = np.asarray(predicted_s, dtype=np.float64)
    m = np.asarray(measured_s, dtype=np.float64)
    if len(p) < 3 or len(p) != len(m):
        raise EdgeKDError(f"need >= 3 reference models with a prediction and a measurement, got {len(p)}/{len(m)}")
    if np.any(m <= 0) or np.any(p <= 0):
        raise EdgeKDError("reference times must be > 0")
    a = np.stack([p / m, 1.0 / m], axis=1)

    def solve(keep: np.ndarray) -> np.ndarray:
        scale_cols = np.linalg.norm(a[keep], axis=0)
        coef, _ = nnls(a[keep] / scale_cols, np.ones(int(keep.sum())))
        return coef / scale_cols

    coef = solve(np.ones(len(p), bool))
    res = a @ coef - 1.0
    loo = []
    for i in range(len(p)):
        keep = np.ones(len(p), bool)
        keep[i] = False
        loo.append(float(a[i] @ solve(keep) - 1.0))
    return float(coef[0]), float(coef[1]), float(np.sqrt(np.mean(np.square(loo)))), [float(r) for r in res]


def rescaled(calib: Calibration, scale: float, overhead_s: float, note: str = "") -> Calibration:
    """`calib` with every node cost x `scale` and `overhead_s` added to the per-call cost t0."""
    if not calib.node_costs:
        raise EdgeKDError(f"{calib.target}: the calibration has no ONNX Runtime node model to re-fit; run "
                          f"`edgekd calibrate --target {calib.target}`")
    costs = {k: (v * scale if k in NODE_FEATURES else v) for k, v in calib.node_costs.items()}
    costs["t0"] = costs.get("t0", 0.0) + overhead_s
    return replace(calib, node_costs=costs, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   device=(calib.device + (f"; {note}" if note else "")))


def refit_local(threads: int = 1, *, calibration: Calibration | None = None,
                references: Sequence[str] = REFERENCE_MODELS, rounds: int = MEASURE_ROUNDS,
                log: Callable[[str], None] | None = None) -> tuple[Calibration, dict[str, Any]]:
    """Measure the reference models here and now; (re-fitted cpu-local calibration, record of the fit).

    The record holds each reference's measured and predicted time (stored and re-fitted), the scale, the
    overhead in µs, the leave-one-out error and the seconds it took.
    """
    from edgekd.profile.predict.calibrate import export_model, micro_models
    from edgekd.profile.predict.predictor import load_calibration

    t0 = time.perf_counter()
    calib = calibration or load_calibration("cpu-local", "onnxruntime", "fp32")
    if calib is None:
        raise EdgeKDError("no cpu-local onnxruntime fp32 calibration to re-fit; run `edgekd calibrate --target "
                          "cpu-local` first")
    family = {name: (build, shape) for name, build, shape in micro_models()}
    missing = [r for r in references if r not in family]
    if missing:
        raise EdgeKDError(f"unknown reference model(s) {', '.join(missing)}; known: calibration micro-models")
    import torch

    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgekd-refit-") as tmp:
        for name in references:
            build, shape = family[name]
            path = export_model(build(), shape, Path(tmp) / f"{name}.onnx")
            ms, medians = measure_min_median(path, threads, rounds)
            pred = predict(path, "cpu-local", threads=threads, calibration=calib).ms
            rows.append({"name": name, "measured_ms": ms, "rounds_ms": medians, "stored_predicted_ms": pred})
    scale, overhead, loo, res = fit_scale_offset([r["stored_predicted_ms"] / 1e3 for r in rows],
                                                 [r["measured_ms"] / 1e3 for r in rows])
    for r, e in zip(rows, res):
        r["refit_predicted_ms"] = r["stored_predicted_ms"] * scale + overhead * 1e3
        r["refit_rel_error"] = e
        r["stored_rel_error"] = r["stored_predicted_ms"] / r["measured_ms"] - 1
    note = (f"re-fitted here at search time: x{scale:.3f} + {overhead * 1e6:.1f} µs per call from {len(rows)} "
            f"reference models (leave-one-out error {loo:.0%})")
    refit = rescaled(calib, scale, overhead, note)
    refit.uncertainty = max(loo, 0.03)
    record = {"scale": scale, "overhead_us": overhead * 1e6, "leave_one_out_error": loo,
              "stored_calibration_created": calib.created, "references": rows,
              "seconds": round(time.perf_counter() - t0, 1), "note": note}
    if log:
        log(f"latency: {note}")
    return refit, record
