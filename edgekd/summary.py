"""The figures a run's report and its bundles share: file, accuracy and latency tables, the file to ship, the recipe.

Computed from a RunRecord (edgekd.runs), so the report and the bundle's model card never disagree.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from edgekd.profile.verdict import SAME_BAND  # within it two measured medians are never told apart

if TYPE_CHECKING:
    from edgekd.config import Recipe
    from edgekd.runs import RunRecord

# A file may give up this much top-1 accuracy (absolute, 0..1) against the best exported file to be shipped.
MAX_ACCURACY_DROP = 0.01


def target_order(run: "RunRecord") -> list[str]:
    """Profiled targets, the recipe's order first (its first target is the headline's), then the rest sorted."""
    named = [str(t) for t in run.recipe.profile.targets] if run.recipe is not None else []
    first = [t for t in named if t in run.profiles]
    return first + sorted(t for t in run.profiles if t not in first)


def file_table(run: "RunRecord") -> list[dict[str, Any]]:
    """Exported files joined with their verification (accuracy, parity) by name."""
    verified = {f.get("name"): f for f in run.metrics("verify").get("files", [])}
    rows = []
    for f in run.metrics("export").get("files", []):
        v = verified.get(f.get("name"), {})
        rows.append({"name": f.get("name"), "path": f.get("path"), "format": f.get("format"),
                     "precision": f.get("precision"), "runtime": f.get("runtime"), "bytes": f.get("bytes"),
                     "accuracy": v.get("accuracy"), "reference": v.get("reference"),
                     "max_abs_diff": v.get("max_abs_diff"), "top1_agreement": v.get("top1_agreement"),
                     "parity_ok": v.get("parity_ok"), "verified": bool(v)})
    return rows


def accuracy_table(run: "RunRecord", files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Teacher, student fp32, fake-quant simulation, then each exported file in its own runtime."""
    rows: list[dict[str, Any]] = []
    verify = run.metrics("verify")
    teacher = run.metrics("teacher").get("test_accuracy")
    student = run.metrics("distill").get("test_accuracy")
    if student is None:
        student = verify.get("torch_fp32_accuracy")
    fake = run.metrics("quantize").get("fake_quant_accuracy")
    if fake is None:
        fake = verify.get("fake_quant_accuracy")
    method = run.metrics("quantize").get("method")
    for model, acc, runtime, precision in (("teacher", teacher, "torch", "fp32"),
                                           ("student", student, "torch", "fp32"),
                                           (f"student fake-quant ({method})" if method else "student fake-quant",
                                            fake, "torch", "int8 (simulated)")):
        if acc is not None:
            rows.append({"model": model, "kind": "trained", "runtime": runtime, "precision": precision,
                         "accuracy": acc, "parity_ok": None, "max_abs_diff": None, "reference": None})
    for f in files:
        rows.append({"model": f["name"], "kind": "exported", "runtime": f["runtime"], "precision": f["precision"],
                     "accuracy": f["accuracy"], "parity_ok": f["parity_ok"], "max_abs_diff": f["max_abs_diff"],
                     "reference": f["reference"]})
    return rows


def latency_table(run: "RunRecord", target: str, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per profiled file on `target`, with its accuracy and size from the export/verify stages."""
    by_name = {f["name"]: f for f in files}
    rows = []
    for r in run.profiles.get(target, {}).get("results", []):
        f = by_name.get(r.get("name"), {})
        rows.append({**r, "target": target, "accuracy": f.get("accuracy"), "parity_ok": f.get("parity_ok"),
                     "format": f.get("format"), "bytes": r.get("bytes") or f.get("bytes")})
    return rows


def choose_shipped(files: list[dict[str, Any]], latency_rows: list[dict[str, Any]],
                   max_drop: float = MAX_ACCURACY_DROP) -> dict[str, Any] | None:
    """The file to ship: parity-checked, within `max_drop` of the best exported accuracy, then as fast as the
    fastest (within its noise, `latency_band`), then smallest.

    Two files whose latencies differ by less than the fastest one's own jitter are equally fast: a 0.016 vs 0.018 ms
    p50 on a shared CPU flips between runs, and the choice must not follow it. Among equally fast files the smaller
    one ships (app size, download, memory); with no latency figures, the smallest.
    """
    lat = {r["name"]: r for r in latency_rows}
    cands = [f for f in files if f.get("parity_ok") is not False]
    if latency_rows:
        cands = [f for f in cands if f["name"] in lat] or cands
    if not cands:
        return None
    accs = [f["accuracy"] for f in cands if num(f.get("accuracy"))]
    if accs:
        best = max(accs)
        cands = [f for f in cands if num(f.get("accuracy")) and f["accuracy"] >= best - max_drop]
    timed = [f for f in cands if num(lat.get(f["name"], {}).get("p50_ms"))]
    tie = ""
    if timed:
        fastest = min(timed, key=lambda f: lat[f["name"]]["p50_ms"])
        limit = latency_band(lat[fastest["name"]])[1]
        cands = [f for f in timed if lat[f["name"]]["p50_ms"] <= limit]
        if len(cands) > 1:
            tie = f"; {len(cands)} files within the fastest's noise (p50 <= {limit:.3g} ms), so the smallest"
    pick = min(cands, key=lambda f: (f.get("bytes") or math.inf, lat.get(f["name"], {}).get("p50_ms") or math.inf))
    row = lat.get(pick["name"], {})
    if accs:
        reason = f"parity ok, within {max_drop * 100:.1f} pt of the best exported accuracy, then lowest p50{tie}"
    else:
        reason = f"no verified accuracy: lowest p50{tie}" if timed else "no verified accuracy or latency: smallest"
    return {"name": pick["name"], "runtime": pick.get("runtime"), "precision": pick.get("precision"),
            "accuracy": pick.get("accuracy"), "bytes": row.get("bytes") or pick.get("bytes"),
            "p50_ms": row.get("p50_ms"), "measured": row.get("measured"), "uncertainty": row.get("uncertainty"),
            "device": row.get("device"), "reason": reason}


def latency_band(row: dict[str, Any]) -> tuple[float, float]:
    """The p50 range a latency row cannot be told apart from: a measurement's p50 up to its p90 (the run's own
    jitter; at least +-5%), a prediction's p50 x (1 +- uncertainty)."""
    p50 = float(row["p50_ms"])
    if not row.get("measured", True) and num(row.get("uncertainty")):
        u = float(row["uncertainty"])
        return p50 * max(0.0, 1 - u), p50 * (1 + u)
    hi = max(p50 * (1 + SAME_BAND), float(row["p90_ms"]) if num(row.get("p90_ms")) else 0.0)
    return p50 * (1 - SAME_BAND), hi


def recipe_summary(recipe: "Recipe | None", limit: int = 60) -> dict[str, Any]:
    """Flatten the recipe's set scalars to dotted keys (`distill.temperature: 4.0`), at most `limit`; None/[] skipped."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if len(out) >= limit:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif value is None or value == [] or value == {}:
            return
        elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            out[prefix] = ", ".join(str(v) for v in value)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            out[prefix] = value

    walk("", recipe.to_dict() if recipe is not None else {})
    return out


def num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
