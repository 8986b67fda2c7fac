"""Re-fit a stored cpu-local calibration to this machine, now: scale and per-call overhead from reference models.

A stored calibration was measured on some machine under some load. On a shared 2-vCPU VM the same model can run
2x slower when the sibling vCPU is busy, and for models of 10-40 µs the fixed cost of one session call (Python
binding, input copy, output allocation) is most of the time. Re-running the whole calibration (150 micro-models,
~15 min) before every search is too slow, so `refit_local` measures 21 small reference models: 13 of the
calibration family and 8 whole tiny classifiers on 28x28 grey input (`tiny_networks`; 7-900 µs, none a candidate
of the benchmark's space or a zoo default) with the same estimator the search
uses for candidates, and fits three numbers by non-negative least squares on relative error:

    measured ≈ scale · compute part + dispatch_scale · dispatch part + overhead

where the stored calibration's prediction is split into its compute part (MACs, bytes, elements moved) and its
fixed part (per-node dispatch and the per-call cost t0): a busy sibling vCPU slows long convolutions more than the
fixed costs (measured here: x2.0 on a 0.9 ms network, x1.6 on 10 µs ones), which one scale cannot follow.
The result is the stored calibration with its compute costs x `scale`, its fixed costs x `dispatch_scale` and
`overhead` added to `t0`: a Calibration like any other (it can be saved), whose uncertainty is the references'
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
                    "block_ir_8_16_s1_e4_48", "stack_vgg_1_24x24_k3_32", "stack_stem_ir_gap", "stack_stem_res_gap",
                    "net_strided_w6_d2", "net_strided_w10_d3", "net_strided_w14_d2", "net_strided_w24_d3",
                    "net_strided_w28_d2", "net_ir_s8_12x24_e3", "net_ir_s12_20x40_e2", "net_ir_s6_10x20x36_e5")
MEASURE_ROUNDS = 5


def tiny_networks() -> list[tuple[str, Callable[[], Any], tuple[int, ...]]]:
    """Whole small classifiers on 28x28 grey input (stride-2 conv chains and inverted-residual nets with a pooled
    linear head), the shape of edge students, at widths the zoo's defaults and the benchmark's space do not use:
    the part of the graph a student shares with nothing in the micro-model family (first conv on one channel,
    BN folded, global pool, head) is then in the fit."""
    from torch import nn

    def cbr(cin, cout, k=3, stride=1, groups=1):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU6()]

    def head(c):
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]

    def strided(width, depth):
        layers, cin, w = [], 1, width
        for _ in range(depth):
            layers += cbr(cin, w, stride=2)
            cin, w = w, w * 2
        return nn.Sequential(*layers, *head(cin))

    def ir_net(stem, widths, expand):
        layers, cin = cbr(1, stem), stem
        for w in widths:
            mid = cin * expand
            layers += cbr(cin, mid, 1) + cbr(mid, mid, 3, 2, mid) + [nn.Conv2d(mid, w, 1, bias=False),
                                                                      nn.BatchNorm2d(w)]
            cin = w
        return nn.Sequential(*layers, *head(cin))

    nets = [(f"net_strided_w{w}_d{d}", lambda w=w, d=d: strided(w, d)) for w, d in ((6, 2), (10, 3), (14, 2),
                                                                                   (24, 3), (28, 2))]
    nets += [("net_ir_s8_12x24_e3", lambda: ir_net(8, (12, 24), 3)),
             ("net_ir_s12_20x40_e2", lambda: ir_net(12, (20, 40), 2)),
             ("net_ir_s6_10x20x36_e5", lambda: ir_net(6, (10, 20, 36), 5))]
    return [(name, build, (1, 1, 28, 28)) for name, build in nets]


def measure_min_median(path: Path, threads: int = 1, rounds: int = MEASURE_ROUNDS) -> tuple[float, list[float]]:
    """The estimator search uses for cpu-local: the lowest median (ms) of `rounds` short ORT runs, and all medians.

    Other processes only ever add time, so the least disturbed round is the best figure of the model's own cost.
    """
    from edgekd.profile.runners.local import profile_file

    medians = [profile_file(path, "onnxruntime", threads=threads, warmup=10, min_runs=30, time_cap_s=1.0,
                            min_time_s=0.2, progress=False).p50_ms for _ in range(rounds)]
    return min(medians), medians


def fit_parts(parts_s: Sequence[Sequence[float]], measured_s: Sequence[float]) -> tuple[list[float], float,
                                                                                      list[float]]:
    """Non-negative coefficients c of measured ≈ parts @ c (a constant column gives an additive term), least
    squares on relative error; (c, leave-one-out RMS relative error, in-sample relative residuals)."""
    from scipy.optimize import nnls

    a = np.asarray(parts_s, dtype=np.float64)
    m = np.asarray(measured_s, dtype=np.float64)
    if a.ndim != 2 or len(a) < a.shape[1] + 1 or len(a) != len(m):
        raise EdgeKDError(f"need more reference models ({len(m)}) than fitted terms "
                          f"({a.shape[1] if a.ndim == 2 else '?'}), each with a measurement")
    if np.any(m <= 0):
        raise EdgeKDError("reference times must be > 0")
    a = a / m[:, None]

    def solve(keep: np.ndarray) -> np.ndarray:
        norm = np.linalg.norm(a[keep], axis=0)
        norm[norm == 0] = 1.0
        coef, _ = nnls(a[keep] / norm, np.ones(int(keep.sum())))
        return coef / norm

    coef = solve(np.ones(len(m), bool))
    res = a @ coef - 1.0
    loo = []
    for i in range(len(m)):
        keep = np.ones(len(m), bool)
        keep[i] = False
        loo.append(float(a[i] @ solve(keep) - 1.0))
    return [float(c) for c in coef], float(np.sqrt(np.mean(np.square(loo)))), [float(r) for r in res]


def fit_scale_offset(predicted_s: Sequence[float], measured_s: Sequence[float]) -> tuple[float, float, float,
                                                                                           list[float]]:
    """(scale, overhead_s, leave-one-out error, residuals) of measured ≈ scale · predicted + overhead (both >= 0)."""
    p = np.asarray(predicted_s, dtype=np.float64)
    if len(p) < 3 or len(p) != len(measured_s):
        raise EdgeKDError(f"need >= 3 reference models with a prediction and a measurement, got "
                          f"{len(p)}/{len(measured_s)}")
    if np.any(p <= 0):
        raise EdgeKDError("reference times must be > 0")
    (scale, overhead), loo, res = fit_parts(np.stack([p, np.ones_like(p)], axis=1), measured_s)
    return scale, overhead, loo, res


def split_prediction(path: Path, calib: Calibration) -> tuple[float, float]:
    """(compute part, fixed part) in seconds of the node model's prediction for an .onnx file (the fixed part:
    per-node dispatch and the per-call cost)."""
    from edgekd.profile.predict.layers import model_ort_nodes
    from edgekd.profile.predict.predictor import NODE_DISPATCH, node_features

    nc = calib.node_costs
    rows = node_features(model_ort_nodes(path), nc["l2_bytes"], nc["l3_bytes"], nc.get("sharpness", 2.0)).sum(0)
    fixed = sum(rows[i] * nc.get(k, 0.0) for i, k in enumerate(NODE_FEATURES) if k in NODE_DISPATCH)
    total = sum(rows[i] * nc.get(k, 0.0) for i, k in enumerate(NODE_FEATURES))
    return float(total - fixed), float(fixed)


def rescaled(calib: Calibration, scale: float, overhead_s: float, note: str = "",
             dispatch_scale: float | None = None) -> Calibration:
    """`calib` with its compute costs x `scale`, its fixed costs (dispatch, t0) x `dispatch_scale` (default:
    `scale`) and `overhead_s` added to the per-call cost t0."""
    from edgekd.profile.predict.predictor import NODE_DISPATCH

    if not calib.node_costs:
        raise EdgeKDError(f"{calib.target}: the calibration has no ONNX Runtime node model to re-fit; run "
                          f"`edgekd calibrate --target {calib.target}`")
    fixed = scale if dispatch_scale is None else dispatch_scale
    costs = {k: (v * (fixed if k in NODE_DISPATCH else scale) if k in NODE_FEATURES else v)
             for k, v in calib.node_costs.items()}
    costs["t0"] = costs.get("t0", 0.0) + overhead_s
    return replace(calib, node_costs=costs, created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   device=(calib.device + (f"; {note}" if note else "")))


def measure_interleaved(paths: Sequence[Path], threads: int = 1, rounds: int = MEASURE_ROUNDS
                        ) -> list[tuple[float, list[float]]]:
    """measure_min_median of every file, in `rounds` round-robin passes over all of them: a burst of load hits
    references and candidates alike instead of whichever model was being measured at the time."""
    from edgekd.profile.runners.local import profile_file

    medians: list[list[float]] = [[] for _ in paths]
    for _ in range(rounds):
        for i, path in enumerate(paths):
            medians[i].append(profile_file(path, "onnxruntime", threads=threads, warmup=10, min_runs=30,
                                           time_cap_s=1.0, min_time_s=0.2, progress=False).p50_ms)
    return [(min(m), m) for m in medians]


def refit_local(threads: int = 1, *, calibration: Calibration | None = None,
                references: Sequence[str] = REFERENCE_MODELS, rounds: int = MEASURE_ROUNDS,
                log: Callable[[str], None] | None = None, also: Sequence[Path] = ()
                ) -> tuple[Calibration, dict[str, Any]]:
    """Measure the reference models here and now; (re-fitted cpu-local calibration, record of the fit).

    `also`: further .onnx files (the candidates) measured in the same interleaved rounds; their (ms, round
    medians) are in the record's "also_measured", in order, and never enter the fit.
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
    family = {name: (build, shape) for name, build, shape in [*micro_models(), *tiny_networks()]}
    missing = [r for r in references if r not in family]
    if missing:
        raise EdgeKDError(f"unknown reference model(s) {', '.join(missing)}; known: calibration micro-models")
    import torch

    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgekd-refit-") as tmp:
        paths = [export_model(family[name][0](), family[name][1], Path(tmp) / f"{name}.onnx") for name in references]
        measured = measure_interleaved([*paths, *also], threads, rounds)
        also_measured = measured[len(paths):]
        for name, path, (ms, medians) in zip(references, paths, measured):
            pred = predict(path, "cpu-local", threads=threads, calibration=calib).ms
            compute, fixed = split_prediction(path, calib)
            rows.append({"name": name, "measured_ms": ms, "rounds_ms": medians, "stored_predicted_ms": pred,
                         "compute_ms": compute * 1e3, "fixed_ms": fixed * 1e3})
    (scale, dispatch_scale, overhead), loo, res = fit_parts(
        [[r["compute_ms"] / 1e3, r["fixed_ms"] / 1e3, 1.0] for r in rows], [r["measured_ms"] / 1e3 for r in rows])
    for r, e in zip(rows, res):
        r["refit_predicted_ms"] = r["compute_ms"] * scale + r["fixed_ms"] * dispatch_scale + overhead * 1e3
        r["refit_rel_error"] = e
        r["stored_rel_error"] = r["stored_predicted_ms"] / r["measured_ms"] - 1
    note = (f"re-fitted here at search time: compute x{scale:.2f}, fixed costs x{dispatch_scale:.2f}, "
            f"+{overhead * 1e6:.1f} µs per call, from {len(rows)} reference models (leave-one-out error {loo:.0%})")
    refit = rescaled(calib, scale, overhead, note, dispatch_scale=dispatch_scale)
    refit.uncertainty = max(loo, 0.03)
    record = {"scale": scale, "dispatch_scale": dispatch_scale, "overhead_us": overhead * 1e6,
              "leave_one_out_error": loo,
              "stored_calibration_created": calib.created, "references": rows, "also_measured": also_measured,
              "seconds": round(time.perf_counter() - t0, 1), "note": note}
    if log:
        log(f"latency: {note}")
    return refit, record
