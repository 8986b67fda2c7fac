"""Latency predictor: a per-layer roofline cost model scaled by per-target calibration coefficients.

Per layer:  compute = rate_kind * work + elem_kind * output elements      (work: MACs, or element ops)
            memory  = bandwidth * bytes + dram * weight bytes * dram_fraction
            time    = (compute^p + memory^p)^(1/p) + overhead_group        (p -> inf: the roofline max)
Model:      t0 + sum of layer times.
The per-output-element term is the part of compute that does not shrink with the reduction size (im2col,
packing, writing outputs), so small-channel convs come out less efficient than wide ones, as measured. Bytes are
weights + activations at the precision; `dram_fraction` is the share of the model's weights that does not fit in
`cache_bytes` (a smooth step: batch-1 GEMMs stream their weights, so cached models run at cache bandwidth and
larger ones at DRAM's).
Rates start from the target's published peaks times assumed efficiencies; calibration (`calibrate_target`) fits
non-negative multipliers of those priors (and p, cache_bytes by grid search) to micro-benchmarks measured on the
target. Predictions are always labelled predicted, with a relative uncertainty from the fit residuals (1.0 =
+-100% when uncalibrated).

ONNX Runtime on a calibrated CPU uses a finer node model instead (`node_costs` in the calibration): the graph ORT
really runs (its optimized graph: fused Conv+BN+activation and Conv+Add, the NCHWc blocked layout with its
reorders, FusedGemm) is read with layers.ort_nodes, and each node costs a linear sum of its work features: per
kernel family (NCHWc conv, NCHWc kxk / 1x1 conv reading NCHW input, NCHWc 1x1, depthwise, im2col conv) MACs on
real (unpadded) input, input broadcasts (MACs / min(output channels, 64): MLAS passes over the input once per 64
output channels, the part narrow layers do not amortize), output elements, MACs of output columns whose window
reaches into the horizontal padding (a slower MLAS path) and MACs of convs whose working set spills out of L2;
for im2col convs the elements of the column matrix MLAS writes and packs (input channels x taps x output
positions, none for a 1x1 stride-1 unpadded conv, which MLAS multiplies directly);
for Gemm MACs plus weight bytes by where the model's weights live (L2, L3, DRAM); elements moved by reorders,
pools and element-wise ops; residual sums fused into convs; a per-node dispatch cost by node class; per call a
fixed cost and the input/output elements copied. The coefficients are fitted by non-negative least squares on
relative error; the uncertainty is the leave-one-out relative error.
"""
from __future__ import annotations

import itertools
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from edgekd.errors import EdgeKDError
from edgekd.profile.predict.layers import KINDS, Layer, OrtNode, model_layers, model_ort_nodes
from edgekd.profile.result import LatencyResult
from edgekd.profile.targets import Target, load_target

MAC_KINDS = ("conv", "convlarge", "pwconv", "dwconv", "gemm")
# Assumed fractions of peak reached by each op kind before calibration (typical of XNNPACK / MLAS on small
# batch-1 layers; deliberately rough, which is why uncalibrated predictions carry a +-100% uncertainty).
PRIOR_EFFICIENCY = {"conv": 0.35, "convlarge": 0.3, "pwconv": 0.35, "dwconv": 0.08, "gemm": 0.3, "elementwise": 0.02, "pool": 0.02}
PRIOR_MEM_EFFICIENCY = 0.6
PRIOR_OVERHEAD_S = {"mac": 3e-6, "cheap": 1.5e-6}
PRIOR_T0_S = 20e-6
PRIOR_ELEM_MACS = 8  # per output element, the fixed cost equals this many MACs (K0 of an efficiency K / (K + K0))
PRIOR_CACHE_BYTES = 4 * 2**20
PRIOR_P = 4.0
UNCALIBRATED_UNCERTAINTY = 1.0
PARAM_NAMES = (*(f"rate_{k}" for k in KINDS), *(f"elem_{k}" for k in MAC_KINDS), "bandwidth", "dram",
               "overhead_mac", "overhead_cheap", "t0")
P_GRID = (1.0, 1.5, 2.0, 3.0, 4.0, 8.0)
CACHE_GRID_MB = (0.5, 1, 2, 4, 8, 16, 32)


def calibration_dir() -> Path:
    """Where latency calibrations live: $EDGEKD_CALIBRATION_DIR, else the shipped calibration/latency/."""
    from edgekd.resources import shipped_path

    env = os.environ.get("EDGEKD_CALIBRATION_DIR")
    return Path(env) if env else shipped_path("calibration/latency")


def calibration_path(target: str, runtime: str, precision: str, root: Path | None = None) -> Path:
    return (root or calibration_dir()) / target / f"{runtime}-{precision}.json"


def prior_costs(target: Target, precision: str) -> dict[str, float]:
    """Seconds per unit of work for every parameter, from the target's peak figures and PRIOR_* assumptions,
    plus the non-fitted shape settings `p` and `cache_bytes`."""
    peak_ops = target.peak.ops_per_s(precision)
    prior = {f"rate_{k}": 2.0 / (peak_ops * PRIOR_EFFICIENCY[k]) for k in MAC_KINDS}  # a MAC is 2 ops
    prior.update({f"elem_{k}": prior[f"rate_{k}"] * PRIOR_ELEM_MACS for k in MAC_KINDS})
    prior.update({f"rate_{k}": 1.0 / (peak_ops * PRIOR_EFFICIENCY[k]) for k in ("elementwise", "pool")})
    dram = 1.0 / (target.peak.mem_gbps * 1e9 * PRIOR_MEM_EFFICIENCY)
    prior["bandwidth"] = dram / 4  # on-chip caches: ~4x DRAM bandwidth (assumption)
    prior["dram"] = dram
    prior["overhead_mac"] = PRIOR_OVERHEAD_S["mac"]
    prior["overhead_cheap"] = PRIOR_OVERHEAD_S["cheap"]
    prior["t0"] = PRIOR_T0_S
    prior["p"] = PRIOR_P
    prior["cache_bytes"] = PRIOR_CACHE_BYTES
    return prior


@dataclass
class LayerFeatures:
    """A model's layers as arrays, so the cost of many parameter sets is cheap to evaluate while fitting."""

    work: np.ndarray  # MACs or element ops
    out_elems: np.ndarray
    kind_index: np.ndarray
    bytes: np.ndarray
    weight_bytes: np.ndarray
    is_mac: np.ndarray

    @classmethod
    def from_layers(cls, layers: Sequence[Layer], precision: str) -> "LayerFeatures":
        from edgekd.profile.predict.layers import BYTES_PER_ELEMENT

        size = BYTES_PER_ELEMENT.get(precision, 4)
        return cls(np.array([ly.macs if ly.kind in MAC_KINDS else ly.ops for ly in layers], dtype=np.float64),
                   np.array([ly.out_elems for ly in layers], dtype=np.float64),
                   np.array([KINDS.index(ly.kind) for ly in layers]),
                   np.array([ly.bytes_moved(precision) for ly in layers], dtype=np.float64),
                   np.array([ly.weight_elems * size for ly in layers], dtype=np.float64),
                   np.array([ly.kind in MAC_KINDS for ly in layers]))


def _dram_fraction(total_weight_bytes: np.ndarray | float, cache_bytes: float) -> np.ndarray | float:
    """Share of a model's weights that streams from DRAM: ~0 well below the cache size, 1/2 at it, ~1 above."""
    w = np.maximum(np.asarray(total_weight_bytes, dtype=np.float64), 1e-9)
    return 1.0 / (1.0 + (cache_bytes / w) ** 2)


def _layer_times(f: LayerFeatures, dram_fraction: np.ndarray | float, costs: dict[str, float],
                 compute_scale: float = 1.0) -> np.ndarray:
    rate = np.array([costs[f"rate_{k}"] for k in KINDS])[f.kind_index]
    elem = np.array([costs.get(f"elem_{k}", 0.0) for k in KINDS])[f.kind_index]
    compute = (f.work * rate + f.out_elems * elem) * compute_scale
    memory = f.bytes * costs["bandwidth"] + f.weight_bytes * dram_fraction * costs["dram"]
    p = costs["p"]
    hi = np.maximum(compute, memory)
    lo = np.minimum(compute, memory)
    ratio = np.divide(lo, hi, out=np.zeros_like(hi), where=hi > 0)
    # (c^p + m^p)^(1/p) written as max * (1 + (min/max)^p)^(1/p) so that it stays finite for any p
    return hi * (1.0 + ratio**p) ** (1.0 / p) + np.where(f.is_mac, costs["overhead_mac"], costs["overhead_cheap"])


def model_time_s(f: LayerFeatures, costs: dict[str, float], compute_scale: float = 1.0) -> tuple[float, np.ndarray]:
    """(total seconds, per-layer seconds) of a model under `costs` (seconds per unit of each parameter)."""
    per_layer = _layer_times(f, _dram_fraction(f.weight_bytes.sum(), costs["cache_bytes"]), costs, compute_scale)
    return float(costs["t0"] + per_layer.sum()), per_layer


def _stack(samples: Sequence[tuple[LayerFeatures, float]]) -> tuple[LayerFeatures, np.ndarray, np.ndarray]:
    """All samples' layers in one LayerFeatures, with each layer's sample index and each sample's weight bytes."""
    fs = [f for f, _ in samples]
    cat = LayerFeatures(*(np.concatenate([getattr(f, k) for f in fs]) for k in
                          ("work", "out_elems", "kind_index", "bytes", "weight_bytes", "is_mac")))
    index = np.concatenate([np.full(len(f.work), i) for i, f in enumerate(fs)])
    return cat, index, np.array([f.weight_bytes.sum() for f in fs])


NODE_FEATURES = ("t0", "n_conv", "n_pw", "n_dw", "n_im2col", "n_gemm", "n_light", "n_free",
                 "conv_macs", "conv_loads", "conv_out", "convin_macs", "convin_loads", "convin_out",
                 "pwin_macs", "pwin_loads", "pwin_out",
                 "pw_macs", "pw_loads", "pw_out", "dw_macs", "dw_in", "dw_out", "conv_edge_macs", "dw_edge_macs",
                 "conv_spill_macs", "im2col_macs", "im2col_cols", "im2col_out", "sum_elems",
                 "gemm_macs", "gemm_l3_bytes", "gemm_dram_bytes", "reorder_in_elems", "reorder_out_elems",
                 "pool_elems", "npool_elems", "reduce_elems", "elt_elems",
                 "io_in_elems", "io_out_elems")
# per-call / per-node costs, not scaled by threads; dispatch differs by kernel family (setup, packing, edge paths)
NODE_DISPATCH = ("t0", "n_conv", "n_pw", "n_dw", "n_im2col", "n_gemm", "n_light", "n_free")
_DISPATCH_OF = {"conv": "n_conv", "convin": "n_conv", "pw": "n_pw", "pwin": "n_pw", "dw": "n_dw",
                "im2col": "n_im2col", "gemm": "n_gemm", "free": "n_free"}
L2_GRID_MB = (0.5, 1.0, 2.0)
L3_GRID_MB = (8.0, 12.0, 16.0, 24.0, 32.0)
SHARPNESS_GRID = (2.0, 4.0, 8.0)  # how abruptly Gemm weights spill out of a cache as the model grows
_CONV_KINDS = ("conv", "convin", "pwin", "pw")


def _spill(weight_bytes: float, cache_bytes: float, sharpness: float) -> float:
    """Share of weights that misses a cache of `cache_bytes`: a smooth step, 1/2 at the size, ~1 above it."""
    return 1.0 / (1.0 + (cache_bytes / max(weight_bytes, 1e-9)) ** sharpness)


def node_features(nodes: Sequence[OrtNode], l2_bytes: float, l3_bytes: float, sharpness: float = 2.0
                  ) -> np.ndarray:
    """Per-node feature rows (len(nodes) x len(NODE_FEATURES)); a model's time is rows.sum(0) @ coefficients.

    Gemm weight bytes are split by the share of the model's weights that spills out of L2 and out of L3 (smooth
    steps at `l2_bytes`, `l3_bytes`): at batch 1 a Gemm streams its weights once per run.
    """
    col = {k: i for i, k in enumerate(NODE_FEATURES)}
    rows = np.zeros((len(nodes), len(NODE_FEATURES)))
    total_w = 4.0 * sum(n.weight_elems for n in nodes)
    past_l2 = _spill(total_w, l2_bytes, sharpness)
    past_l3 = _spill(total_w, l3_bytes, sharpness)
    for i, n in enumerate(nodes):
        r = rows[i]
        k = n.kind
        if k == "io":  # the session call: fixed cost, input binding and output copy
            r[col["t0"]], r[col["io_in_elems"]], r[col["io_out_elems"]] = 1.0, n.in_elems, n.out_elems
            continue
        r[col[_DISPATCH_OF.get(k, "n_light")]] = 1.0
        if k in _CONV_KINDS:
            r[col[f"{k}_macs"]] = n.macs * n.valid_frac
            r[col[f"{k}_out"]] = n.out_elems
            r[col[f"{k}_loads"]] = _conv_loads(n) * n.valid_frac
            r[col["conv_edge_macs"]] = n.macs * n.edge_frac
            working_set = 4.0 * (n.in_elems + n.out_elems + n.weight_elems)  # past L2, input re-reads miss
            r[col["conv_spill_macs"]] = n.macs * n.valid_frac * _spill(working_set, l2_bytes, sharpness)
            r[col["sum_elems"]] += n.sum_elems
        elif k == "dw":
            r[col["dw_macs"]], r[col["dw_in"]], r[col["dw_out"]] = n.macs * n.valid_frac, n.in_elems, n.out_elems
            r[col["dw_edge_macs"]] = n.macs * n.edge_frac
            r[col["sum_elems"]] += n.sum_elems
        elif k == "im2col":
            r[col["im2col_macs"]], r[col["im2col_out"]] = n.macs, n.out_elems
            r[col["im2col_cols"]] = n.cols
            r[col["sum_elems"]] += n.sum_elems
        elif k == "gemm":
            wb = 4.0 * n.weight_elems
            r[col["gemm_macs"]] = n.macs
            r[col["gemm_l3_bytes"]] = wb * past_l2
            r[col["gemm_dram_bytes"]] = wb * past_l3
        elif k == "reorder":  # NCHW -> NCHWc (ReorderInput) and back (ReorderOutput)
            name = "reorder_out" if n.op.endswith("Output") else "reorder_in"
            r[col[f"{name}_elems"]] = n.in_elems + n.out_elems
        elif k == "pool":  # NCHWc pools, plain NCHW pools and global reductions run different kernels
            name = "reduce" if "Global" in n.op or "Reduce" in n.op else "npool" if "nchwc" in n.op else "pool"
            r[col[f"{name}_elems"]] = n.in_elems + n.out_elems
        elif k == "elementwise":
            r[col["elt_elems"]] = n.in_elems + n.out_elems
    return rows


def _conv_loads(n: OrtNode) -> float:
    """Input broadcasts of a blocked conv: MACs / min(output channels, 64) (MLAS computes up to four 16-wide
    output-channel blocks per pass over the input), the cost that narrow layers do not amortize."""
    return 0.0 if not n.out_channels else n.macs / min(n.out_channels, 64)


def node_model_time_s(nodes: Sequence[OrtNode], node_costs: dict[str, float], compute_scale: float = 1.0,
                      ) -> tuple[float, np.ndarray]:
    """(total seconds, per-node seconds) of ORT's optimized graph (its `io` node: the call) under node costs."""
    rows = node_features(nodes, node_costs["l2_bytes"], node_costs["l3_bytes"], node_costs.get("sharpness", 2.0))
    coef = np.array([node_costs.get(k, 0.0) * (1.0 if k in NODE_DISPATCH else compute_scale)
                     for k in NODE_FEATURES])
    per_node = rows @ coef
    return float(per_node.sum()), per_node


def fit_node_costs(samples: Sequence[tuple[Sequence[OrtNode], float]], l2_grid_mb: Sequence[float] = L2_GRID_MB,
                   l3_grid_mb: Sequence[float] = L3_GRID_MB, sharpness_grid: Sequence[float] = SHARPNESS_GRID,
                   ) -> tuple[dict[str, float], float, list[float]]:
    """Non-negative least squares on relative error of the node model for each (L2 size, L3 size, sharpness) on
    a grid; the lowest squared error wins.

    Returns (node costs incl. l2_bytes/l3_bytes, uncertainty, in-sample relative residuals); the uncertainty is
    the RMS leave-one-out relative error (each model predicted by a fit without it), floored at 3%.
    """
    from scipy.optimize import nnls

    if len(samples) < 3:
        raise EdgeKDError(f"need at least 3 measured models to fit a calibration, got {len(samples)}")
    measured = np.array([t for _, t in samples], dtype=np.float64)
    if np.any(measured <= 0):
        raise EdgeKDError("measured times must be > 0 to fit a calibration")

    def solve(a: np.ndarray, keep: np.ndarray) -> np.ndarray:
        scaled = a[keep] / measured[keep, None]
        norm = np.linalg.norm(scaled, axis=0)
        norm[norm == 0] = 1.0
        coef, _ = nnls(scaled / norm, np.ones(int(keep.sum())), maxiter=50 * a.shape[1])
        return coef / norm

    best = None
    for l2, l3, sharp in itertools.product(l2_grid_mb, l3_grid_mb, sharpness_grid):
        a = np.stack([node_features(nodes, l2 * 2**20, l3 * 2**20, sharp).sum(0) for nodes, _ in samples])
        coef = solve(a, np.ones(len(samples), bool))
        res = a @ coef / measured - 1.0
        loss = float(np.sum(res**2))
        if best is None or loss < best[0]:
            best = (loss, (l2, l3, sharp), a, coef, res)
    _, (l2, l3, sharp), a, coef, res = best
    loo = []
    for i in range(len(samples)):
        keep = np.ones(len(samples), bool)
        keep[i] = False
        loo.append(float(a[i] @ solve(a, keep) / measured[i] - 1.0))
    sigma = float(np.sqrt(np.mean(np.square(loo))))
    costs = {k: float(c) for k, c in zip(NODE_FEATURES, coef)}
    costs.update(l2_bytes=l2 * 2**20, l3_bytes=l3 * 2**20, sharpness=float(sharp))
    return costs, max(sigma, 0.03), [float(r) for r in res]


@dataclass
class Calibration:
    """Fitted cost coefficients for one (target, runtime, precision, threads), with the fit's residuals."""

    target: str
    runtime: str
    precision: str
    threads: int
    multipliers: dict[str, float]
    costs: dict[str, float]
    uncertainty: float
    residuals: list[dict[str, Any]] = field(default_factory=list)
    device: str = ""
    runtime_version: str = ""
    created: str = ""
    node_costs: dict[str, float] = field(default_factory=dict)  # ONNX Runtime node model (empty: not fitted)

    def save(self, path: Path) -> Path:
        from edgekd.fileio import write_json

        return write_json(path, asdict(self))

    @classmethod
    def load(cls, path: Path) -> "Calibration":
        data = json.loads(Path(path).read_text())
        try:
            calib = cls(**data)
        except TypeError as e:
            raise EdgeKDError(f"{path} is not a latency calibration file ({e}); re-run `edgekd calibrate`") from e
        missing = [k for k in NODE_FEATURES if k not in calib.node_costs]
        if calib.node_costs and missing:
            raise EdgeKDError(f"{path} was fitted by an older edgekd (its node model lacks {', '.join(missing)}); "
                              f"re-run `edgekd calibrate --target {calib.target}`")
        return calib


def fit_costs(samples: Sequence[tuple[LayerFeatures, float]], prior: dict[str, float],
              p_grid: Sequence[float] = P_GRID, cache_grid_mb: Sequence[float] = CACHE_GRID_MB,
              ) -> tuple[dict[str, float], float, list[float]]:
    """Non-negative least squares on relative error: multipliers m >= 0 of the prior costs so that model_time_s
    matches the measured seconds, for each (p, cache size) on a grid; the best fit wins.

    Returns (costs: prior * m with the chosen p and cache_bytes, relative 1-sigma uncertainty, residuals).
    """
    from scipy.optimize import least_squares

    if len(samples) < 3:
        raise EdgeKDError(f"need at least 3 measured models to fit a calibration, got {len(samples)}")
    measured = np.array([t for _, t in samples])
    if np.any(measured <= 0):
        raise EdgeKDError("measured times must be > 0 to fit a calibration")
    keys = list(PARAM_NAMES)
    used = _used_params(samples)
    stacked, index, weights = _stack(samples)
    best = None
    for p in p_grid:
        for cache_mb in cache_grid_mb:
            fixed = {"p": float(p), "cache_bytes": float(cache_mb) * 2**20}

            dram_fraction = _dram_fraction(weights, fixed["cache_bytes"])[index]

            def residuals(m: np.ndarray) -> np.ndarray:
                costs = {**{k: prior[k] * m[i] for i, k in enumerate(keys)}, **fixed}
                per_layer = _layer_times(stacked, dram_fraction, costs)
                pred = costs["t0"] + np.bincount(index, per_layer, minlength=len(samples))
                return pred / measured - 1.0

            fit = least_squares(residuals, np.ones(len(keys)), bounds=(0.0, np.inf), x_scale="jac",
                                diff_step=1e-3, max_nfev=2000)
            m = np.where([k in used for k in keys], fit.x, 1.0)  # unexercised parameters keep their prior
            res = residuals(m)
            loss = float(np.sum(res**2))
            if best is None or loss < best[0]:
                best = (loss, {**{k: prior[k] * float(m[i]) for i, k in enumerate(keys)}, **fixed}, res)
    loss, costs, res = best
    dof = max(len(samples) - len(used) - 2, 1)
    sigma = float(np.sqrt(loss / dof))
    return costs, max(sigma, 0.03), [float(r) for r in res]


def _used_params(samples: Sequence[tuple[LayerFeatures, float]]) -> set[str]:
    used = {"t0", "bandwidth", "dram"}
    for f, _ in samples:
        for i in np.unique(f.kind_index):
            used.add(f"rate_{KINDS[i]}")
            if KINDS[i] in MAC_KINDS:
                used.add(f"elem_{KINDS[i]}")
        if f.is_mac.any():
            used.add("overhead_mac")
        if (~f.is_mac).any():
            used.add("overhead_cheap")
    return used


@dataclass
class Prediction:
    """A predicted latency: always measured=False, with its basis and a relative 1-sigma uncertainty."""

    ms: float
    uncertainty: float
    basis: str
    target: str
    runtime: str
    precision: str
    threads: int
    measured: bool = False
    layers: list[dict[str, Any]] = field(default_factory=list)

    def to_result(self, name: str, bytes_: int | None = None) -> LatencyResult:
        """As a LatencyResult row (p50 = the prediction; statistics a prediction cannot give stay None)."""
        return LatencyResult(name=name, runtime=self.runtime, precision=self.precision, threads=self.threads,
                             measured=False, p50_ms=self.ms, bytes=bytes_, device=f"{self.target} (predicted)",
                             runtime_version="n/a (predicted)", uncertainty=self.uncertainty, target=self.target,
                             basis=self.basis)


def load_calibration(target: str, runtime: str, precision: str) -> Calibration | None:
    path = calibration_path(target, runtime, precision)
    return Calibration.load(path) if path.is_file() else None


def predict(model_or_path: Any, target: "str | Target", runtime: str = "onnxruntime", precision: str = "fp32",
            *, input_shape: Sequence[int] | None = None, threads: int | None = None,
            calibration: Calibration | None = None, with_layers: bool = False) -> Prediction:
    """Predict the latency of a torch module, .onnx or .tflite file on `target` with `runtime` and `precision`.

    Uses calibration/latency/<target>/<runtime>-<precision>.json when present; else the fp32 calibration scaled
    by the published int8/fp32 peaks (for int8); else the published peaks with a +-100% uncertainty.
    """
    tgt = load_target(target)
    if precision not in ("fp32", "fp16", "int8"):
        raise EdgeKDError(f"precision {precision!r} unknown; allowed: fp32, fp16, int8")
    threads = threads or tgt.threads
    calib = calibration or load_calibration(tgt.name, runtime, precision)
    if calib is not None and calib.node_costs and runtime == "onnxruntime" and calib.precision == precision \
            and not (isinstance(model_or_path, (str, Path)) and Path(model_or_path).suffix.lower() == ".tflite"):
        try:
            return _predict_nodes(model_or_path, input_shape, calib, threads, with_layers)
        except EdgeKDError as e:  # a graph ORT's node model cannot read: the per-layer model still can
            node_error = f"; node model unavailable ({e}), per-layer model used"
    else:
        node_error = ""
    layers = model_layers(model_or_path, input_shape)
    feats = LayerFeatures.from_layers(layers, precision)
    scale = 1.0
    if calib is not None:
        costs, unc = dict(calib.costs), calib.uncertainty
        basis = (f"calibrated on {calib.target} with {calib.runtime} {calib.precision}, {calib.threads} thread(s), "
                 f"{len(calib.residuals)} micro-benchmarks (fit residual {calib.uncertainty:.0%})")
        if calib.threads != threads:
            scale = calib.threads / threads
            unc = max(unc, 0.3)
            basis += f"; compute scaled {calib.threads}->{threads} threads assuming linear scaling"
    elif precision != "fp32" and (fp32 := load_calibration(tgt.name, runtime, "fp32")) is not None:
        costs = dict(fp32.costs)
        ratio = tgt.peak.ops_per_s(precision) / tgt.peak.ops_per_s("fp32")
        scale = 1.0 / ratio * (fp32.threads / threads)
        unc = max(fp32.uncertainty, 0.5)
        basis = (f"fp32 calibration on {tgt.name} with {runtime}, compute scaled by published {precision}/fp32 "
                 f"peaks ({ratio:.1f}x) - an optimistic bound where the runtime lacks fast {precision} kernels")
    else:
        costs, unc = prior_costs(tgt, precision), UNCALIBRATED_UNCERTAINTY
        basis = (f"uncalibrated: published peaks of {tgt.name} x assumed efficiencies; run `edgekd calibrate "
                 f"--target {tgt.name}` for a fitted model")
    basis += node_error
    total, per_layer = model_time_s(feats, costs, scale)
    detail = [{"name": ly.name, "kind": ly.kind, "macs": ly.macs, "bytes": ly.bytes_moved(precision),
               "ms": float(t * 1e3)} for ly, t in zip(layers, per_layer)] if with_layers else []
    return Prediction(total * 1e3, unc, basis, tgt.name, runtime, precision, threads, layers=detail)


def _predict_nodes(model_or_path: Any, input_shape: Sequence[int] | None, calib: Calibration, threads: int,
                   with_layers: bool) -> Prediction:
    """The node model's prediction: ORT's optimized graph costed with the calibration's node coefficients."""
    nodes = model_ort_nodes(model_or_path, input_shape)
    unc = calib.uncertainty
    basis = (f"calibrated on {calib.target} with {calib.runtime} {calib.precision}, {calib.threads} thread(s): "
             f"ORT optimized-graph node model fitted to {len(calib.residuals)} micro-benchmarks "
             f"(leave-one-out error {calib.uncertainty:.0%})")
    scale = 1.0
    if calib.threads != threads:
        scale = calib.threads / threads
        unc = max(unc, 0.3)
        basis += f"; compute scaled {calib.threads}->{threads} threads assuming linear scaling"
    total, per_node = node_model_time_s(nodes, calib.node_costs, scale)
    detail = [{"name": n.name, "kind": n.kind, "op": n.op, "macs": n.macs, "bytes": 4 * (n.in_elems + n.out_elems
               + n.weight_elems), "ms": float(t * 1e3)} for n, t in zip(nodes, per_node)] if with_layers else []
    return Prediction(total * 1e3, unc, basis, calib.target, calib.runtime, calib.precision, threads,
                      layers=detail)
