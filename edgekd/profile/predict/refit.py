"""Re-fit a stored cpu-local calibration to this machine, now: per-part scales chosen by cross-validation.

A stored calibration was measured on some machine under some load. On a shared 2-vCPU VM the same model can run
2x slower when the sibling vCPU is busy, and for models of 10-40 µs the fixed cost of one session call (Python
binding, input copy, output allocation) is most of the time. Re-running the whole calibration (150 micro-models,
~15 min) before every search is too slow, so `refit_local` measures ~30 small reference models: 13 of the
calibration family, 8 whole tiny classifiers on 28x28 grey input (`tiny_networks`; 7-900 µs, none a candidate of
the benchmark's space or a zoo default), the same 8 networks at 8x8 input, always (an 8x8 network is almost all
per-call and per-node cost: the references that tell dispatch from compute) and at the candidates' input shape
when that is another one (references of the right size), with the
estimator the search uses for candidates. The stored calibration's prediction of each reference is split into
three parts: compute (MACs, bytes, elements moved), per-node dispatch and the per-call cost (t0 and the input and
output copies). The model of this machine is one of the FORMS:

    scale:                  measured ≈ s · (compute + dispatch + call)
    compute+fixed:          measured ≈ a · compute + b · (dispatch + call)
    compute+dispatch+call:  measured ≈ a · compute + b · dispatch + c · call

each fitted on relative error with non-negative coefficients and a robust (soft-L1) loss, so that one reference
the stored node model gets wrong (measured here: a 5x-expansion inverted-residual net predicted 1.6x too slow)
cannot pull every coefficient with it, as it did in a plain least-squares fit. The form is chosen by
leave-one-out cross-validation on the references (lowest mean absolute held-out error): more parts only where
the references support them. Measured on this VM (quiet, Dec 2026): the call cost grew x1.7 against the stored
calibration, compute x1.6, per-node dispatch x1.06, which one scale, or a scale and an offset, cannot follow.

The result is the stored calibration with each part's costs multiplied by its coefficient: a Calibration like
any other (it can be saved), whose uncertainty is the references' leave-one-out relative error. The candidates
themselves are never in the fit, so their prediction errors are held-out figures.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.profile.predict.predictor import NODE_FEATURES, Calibration

# Small whole networks and stacks of the calibration family (edgekd.profile.predict.calibrate.micro_models):
# from a bare Linear (the session call alone) to a stem + inverted-residual + pooled head (~100 µs).
REFERENCE_MODELS = ("linear_128_10", "stack_fc64x4", "gap_32_32", "stack_pw8x4", "chain_tiny_conv16x1_8",
                    "conv3x3_1_16_56_s2", "maxpool_12_48", "stack_conv_pool_fc", "chain_tiny_dw16x4_8",
                    "block_ir_8_16_s1_e4_48", "stack_vgg_1_24x24_k3_32", "stack_stem_ir_gap", "stack_stem_res_gap",
                    "net_strided_w6_d2", "net_strided_w10_d3", "net_strided_w14_d2", "net_strided_w24_d3",
                    "net_strided_w28_d2", "net_ir_s8_12x24_e3", "net_ir_s12_20x40_e2", "net_ir_s6_10x20x36_e5")
MEASURE_ROUNDS = 5


TINY_SHAPE = (1, 1, 28, 28)
# the small input at which the tiny networks always join the references (tiny_shapes)
SMALL_HW = (8, 8)
# soft-L1 scale of the robust fit, in relative error: residuals beyond ~5% count linearly, not squared
ROBUST_SCALE = 0.05
# per-call costs of the node model (the session call, input binding, output copy)
CALL_COSTS = ("t0", "io_in_elems", "io_out_elems")
FORMS: dict[str, tuple[str, ...]] = {"scale": ("total",), "compute+fixed": ("compute", "fixed"),
                                     "compute+dispatch+call": ("compute", "dispatch", "call")}


def tiny_networks(input_shape: tuple[int, ...] = TINY_SHAPE) -> list[tuple[str, Callable[[], Any], tuple[int, ...]]]:
    """Whole small classifiers (stride-2 conv chains and inverted-residual nets with a pooled linear head), the
    shape of edge students, at widths the zoo's defaults and the benchmark's space do not use: the part of the
    graph a student shares with nothing in the micro-model family (first conv on the input's channels, BN
    folded, global pool, head) is then in the fit. Names carry `@HxW` (and `cC`) for another input shape than
    1x28x28."""
    from torch import nn

    channels, height, width = input_shape[1], input_shape[2], input_shape[3]
    suffix = "" if tuple(input_shape) == TINY_SHAPE else f"@{height}x{width}" + (f"c{channels}" if channels != 1
                                                                                 else "")

    def cbr(cin, cout, k=3, stride=1, groups=1):
        return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout),
                nn.ReLU6()]

    def head(c):
        return [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, 10)]

    def strided(width, depth):
        layers, cin, w = [], channels, width
        for _ in range(depth):
            layers += cbr(cin, w, stride=2)
            cin, w = w, w * 2
        return nn.Sequential(*layers, *head(cin))

    def ir_net(stem, widths, expand):
        layers, cin = cbr(channels, stem), stem
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
    return [(name + suffix, build, tuple(input_shape)) for name, build in nets]


def tiny_shapes(input_shape: Sequence[int] | None = None) -> list[tuple[int, ...]]:
    """Input shapes, besides 1x1x28x28 (whose tiny networks are among REFERENCE_MODELS), at which the tiny
    networks join the references: always SMALL_HW with the candidates' channels, and the candidates' own shape.

    Why always the small input: whole networks at 8x8 are mostly per-node and per-call cost, the only references
    that tell dispatch from compute. Without them (28x28 candidates, 21 references) the three forms' leave-one-out
    errors were within 1 point of each other, decided by the references the stored compute model gets wrong, and
    one shared scale was kept, which over-charges the dispatch of the smallest candidates (+11-15%).
    """
    shape = tuple(int(v) for v in (input_shape if input_shape is not None else TINY_SHAPE))
    if len(shape) != 4:  # not an image (batch, channels, height, width): the small grey input only
        return [(1, 1, *SMALL_HW)]
    out = [(1, shape[1], *SMALL_HW)] + [(1, *shape[1:])]
    return [s for i, s in enumerate(out) if s != TINY_SHAPE and s not in out[:i]]


def measure_min_median(path: Path, threads: int = 1, rounds: int = MEASURE_ROUNDS) -> tuple[float, list[float]]:
    """The estimator search uses for cpu-local: the lowest median (ms) of `rounds` short ORT runs, and all medians.

    Other processes only ever add time, so the least disturbed round is the best figure of the model's own cost.
    """
    from edgekd.profile.runners.local import profile_file

    medians = [profile_file(path, "onnxruntime", threads=threads, warmup=10, min_runs=30, time_cap_s=1.0,
                            min_time_s=0.2, progress=False).p50_ms for _ in range(rounds)]
    return min(medians), medians


def _relative_design(parts_s: Sequence[Sequence[float]], measured_s: Sequence[float]) -> np.ndarray:
    a = np.asarray(parts_s, dtype=np.float64)
    m = np.asarray(measured_s, dtype=np.float64)
    if a.ndim != 2 or len(a) < a.shape[1] + 1 or len(a) != len(m):
        raise EdgeKDError(f"need more reference models ({len(m)}) than fitted terms "
                          f"({a.shape[1] if a.ndim == 2 else '?'}), each with a measurement")
    if np.any(m <= 0):
        raise EdgeKDError("reference times must be > 0")
    return a / m[:, None]


def _solve(a: np.ndarray, robust: float | None) -> np.ndarray:
    """Non-negative c minimising sum rho(a @ c - 1): squares (rho(r) = r^2, NNLS) or, with `robust` = f, the
    soft-L1 loss 2 f^2 (sqrt(1 + (r/f)^2) - 1), quadratic for |r| << f and linear beyond."""
    from scipy.optimize import least_squares, nnls

    norm = np.linalg.norm(a, axis=0)
    norm[norm == 0] = 1.0
    b = a / norm
    coef, _ = nnls(b, np.ones(len(b)))
    if robust is not None:
        start = np.where(coef > 0, coef, 1e-3 * max(float(coef.max()), 1.0))  # strictly inside the bounds
        coef = least_squares(lambda c: b @ c - 1.0, start, bounds=(0.0, np.inf), loss="soft_l1",
                             f_scale=robust, x_scale="jac").x
    return coef / norm


def leave_one_out(parts_s: Sequence[Sequence[float]], measured_s: Sequence[float], robust: float | None = None
                  ) -> tuple[list[float], list[float], list[float]]:
    """(coefficients on all references, in-sample relative residuals, held-out relative errors: each reference
    predicted by the coefficients fitted without it) of measured ≈ parts @ c, c >= 0, on relative error."""
    a = _relative_design(parts_s, measured_s)
    coef = _solve(a, robust)
    loo = []
    for i in range(len(a)):
        keep = np.arange(len(a)) != i
        loo.append(float(a[i] @ _solve(a[keep], robust) - 1.0))
    return [float(c) for c in coef], [float(r) for r in a @ coef - 1.0], loo


def fit_parts(parts_s: Sequence[Sequence[float]], measured_s: Sequence[float], robust: float | None = None
              ) -> tuple[list[float], float, list[float]]:
    """Non-negative coefficients c of measured ≈ parts @ c (a constant column gives an additive term), least
    squares on relative error (`robust`: soft-L1 with that scale); (c, leave-one-out RMS relative error,
    in-sample relative residuals)."""
    coef, res, loo = leave_one_out(parts_s, measured_s, robust)
    return coef, float(np.sqrt(np.mean(np.square(loo)))), res


def choose_form(parts: Sequence[dict[str, float]], measured_s: Sequence[float], robust: float | None = ROBUST_SCALE,
                forms: dict[str, tuple[str, ...]] = FORMS) -> dict[str, Any]:
    """Fit every form (FORMS: which parts of the stored prediction get their own coefficient) to the references
    and keep the one with the lowest mean absolute leave-one-out error (ties: fewer coefficients).

    parts: per reference {"compute": s, "dispatch": s, "call": s}. Returns {"form", "coefficients" (per part),
    "residuals", "loo_errors", "loo_mean_abs", "loo_rms", "forms": {form: its coefficients and LOO figures}}.
    """
    def column(p: dict[str, float], name: str) -> float:
        if name == "total":
            return p["compute"] + p["dispatch"] + p["call"]
        if name == "fixed":
            return p["dispatch"] + p["call"]
        return p[name]

    results = {}
    for form, cols in forms.items():
        coef, res, loo = leave_one_out([[column(p, c) for c in cols] for p in parts], measured_s, robust)
        per_part = {}
        for c, v in zip(cols, coef):
            for part in {"total": ("compute", "dispatch", "call"), "fixed": ("dispatch", "call")}.get(c, (c,)):
                per_part[part] = v
        results[form] = {"coefficients": per_part, "residuals": res, "loo_errors": loo,
                         "loo_mean_abs": float(np.mean(np.abs(loo))), "loo_rms": float(np.sqrt(np.mean(
                             np.square(loo)))), "terms": len(cols)}
    best = min(results, key=lambda f: (round(results[f]["loo_mean_abs"], 6), results[f]["terms"]))
    return {"form": best, **results[best],
            "forms": {f: {k: r[k] for k in ("coefficients", "loo_mean_abs", "loo_rms")} for f, r in results.items()}}


def split_parts(path: Path, calib: Calibration, nodes: Sequence[Any] | None = None) -> dict[str, float]:
    """The node model's prediction for an .onnx file in seconds, split into "compute" (work: MACs, bytes,
    elements moved), "dispatch" (per-node costs) and "call" (CALL_COSTS: t0 and the input/output copies).
    `nodes`: the file's layers.model_ort_nodes, when the caller already has them."""
    from edgekd.profile.predict.layers import model_ort_nodes
    from edgekd.profile.predict.predictor import NODE_DISPATCH, node_features

    nc = calib.node_costs
    nodes = model_ort_nodes(path) if nodes is None else nodes
    rows = node_features(nodes, nc["l2_bytes"], nc["l3_bytes"], nc.get("sharpness", 2.0)).sum(0)
    out = {"compute": 0.0, "dispatch": 0.0, "call": 0.0}
    for i, k in enumerate(NODE_FEATURES):
        part = "call" if k in CALL_COSTS else "dispatch" if k in NODE_DISPATCH else "compute"
        out[part] += float(rows[i] * nc.get(k, 0.0))
    return out


def rescaled_parts(calib: Calibration, coefficients: dict[str, float], note: str = "") -> Calibration:
    """`calib` with the costs of each part ("compute", "dispatch", "call", as split_parts splits them) multiplied
    by its coefficient; non-cost settings (cache sizes, sharpness) unchanged."""
    from edgekd.profile.predict.predictor import NODE_DISPATCH

    if not calib.node_costs:
        raise EdgeKDError(f"{calib.target}: the calibration has no ONNX Runtime node model to re-fit; run "
                          f"`edgekd calibrate --target {calib.target}`")
    missing = {"compute", "dispatch", "call"} - set(coefficients)
    if missing:
        raise EdgeKDError(f"no coefficient for part(s) {', '.join(sorted(missing))}")

    def part(k: str) -> str:
        return "call" if k in CALL_COSTS else "dispatch" if k in NODE_DISPATCH else "compute"

    costs = {k: (v * coefficients[part(k)] if k in NODE_FEATURES else v) for k, v in calib.node_costs.items()}
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
                log: Callable[[str], None] | None = None, also: Sequence[Path] = (),
                input_shape: Sequence[int] | None = None, robust: float | None = ROBUST_SCALE
                ) -> tuple[Calibration, dict[str, Any]]:
    """Measure the reference models here and now; (re-fitted cpu-local calibration, record of the fit).

    `input_shape`: the candidates' input (batch first, e.g. (1, 1, 8, 8)); the tiny networks at tiny_shapes(it)
    (8x8 always, and the candidates' shape) join the references. `also`: further .onnx files (the candidates)
    measured in the same interleaved rounds; their (ms, round medians) are in the record's "also_measured", in
    order, and never enter the fit. The record holds each reference's measured time, its stored prediction split
    into parts and its re-fitted prediction, the chosen form and its coefficients, every form's leave-one-out
    figures and the seconds it took.
    """
    from edgekd.profile.predict.calibrate import export_model, micro_models
    from edgekd.profile.predict.predictor import load_calibration

    t0 = time.perf_counter()
    calib = calibration or load_calibration("cpu-local", "onnxruntime", "fp32")
    if calib is None:
        raise EdgeKDError("no cpu-local onnxruntime fp32 calibration to re-fit; run `edgekd calibrate --target "
                          "cpu-local` first")
    if not calib.node_costs:
        raise EdgeKDError(f"{calib.target}: the calibration has no ONNX Runtime node model to re-fit; run "
                          f"`edgekd calibrate --target {calib.target}`")
    family = {name: (build, shape) for name, build, shape in [*micro_models(), *tiny_networks()]}
    missing = [r for r in references if r not in family]
    if missing:
        raise EdgeKDError(f"unknown reference model(s) {', '.join(missing)}; known: calibration micro-models")
    chosen = [(name, *family[name]) for name in references]
    for shape in tiny_shapes(input_shape):
        chosen += tiny_networks(shape)
    import torch

    torch.manual_seed(0)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgekd-refit-") as tmp:
        paths = [export_model(build(), shape, Path(tmp) / f"ref{i}.onnx") for i, (_, build, shape) in
                 enumerate(chosen)]
        measured = measure_interleaved([*paths, *also], threads, rounds)
        also_measured = measured[len(paths):]
        for (name, _, shape), path, (ms, medians) in zip(chosen, paths, measured):
            parts = split_parts(path, calib)
            rows.append({"name": name, "input_shape": list(shape), "measured_ms": ms, "rounds_ms": medians,
                         "stored_predicted_ms": sum(parts.values()) * 1e3,
                         **{f"{k}_ms": v * 1e3 for k, v in parts.items()}})
    fit = choose_form([{k: r[f"{k}_ms"] / 1e3 for k in ("compute", "dispatch", "call")} for r in rows],
                      [r["measured_ms"] / 1e3 for r in rows], robust)
    coef = fit["coefficients"]
    for r, e, held_out in zip(rows, fit["residuals"], fit["loo_errors"]):
        r["refit_predicted_ms"] = sum(r[f"{k}_ms"] * coef[k] for k in ("compute", "dispatch", "call"))
        r["refit_rel_error"] = e
        r["loo_rel_error"] = held_out
        r["stored_rel_error"] = r["stored_predicted_ms"] / r["measured_ms"] - 1
    note = (f"re-fitted here at search time ({fit['form']}, robust fit chosen by leave-one-out): compute "
            f"x{coef['compute']:.2f}, per-node dispatch x{coef['dispatch']:.2f}, per-call cost x{coef['call']:.2f}, "
            f"from {len(rows)} reference models (held-out error: mean {fit['loo_mean_abs']:.0%}, "
            f"RMS {fit['loo_rms']:.0%})")
    refit = rescaled_parts(calib, coef, note)
    refit.uncertainty = max(fit["loo_rms"], 0.03)
    record = {"form": fit["form"], "coefficients": coef, "scale": coef["compute"],
              "robust_scale": robust, "leave_one_out_error": fit["loo_rms"],
              "leave_one_out_mean_abs": fit["loo_mean_abs"], "forms": fit["forms"],
              "stored_calibration_created": calib.created, "references": rows, "also_measured": also_measured,
              "seconds": round(time.perf_counter() - t0, 1), "note": note}
    if log:
        log(f"latency: {note}")
    return refit, record
