"""All figures of a run as one dict (results.json): accuracy, latency per target, Pareto fronts, shipped file."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.runs import RunRecord, load_run
from edgekd.summary import (MAX_ACCURACY_DROP, accuracy_table, choose_shipped, file_table, latency_table,  # noqa: F401
                            num as _num, recipe_summary, target_order)

SCHEMA = "edgekd-results/1"


def results_json(run_dir: str | Path) -> dict[str, Any]:
    """Every figure the report shows, from the run directory alone (for `edgekd report RUN_DIR --json`)."""
    return collect_results(load_run(run_dir))


def collect_results(run: RunRecord) -> dict[str, Any]:
    files = file_table(run)
    latency = {target: latency_table(run, target, files) for target in target_order(run)}
    pareto = {t: pareto_front(rows) for t, rows in latency.items()}
    shipped = {t: choose_shipped(files, rows) for t, rows in latency.items()}
    if not shipped and files:
        shipped = {"": choose_shipped(files, [])}
    results = {
        "schema": SCHEMA,
        "run": run.name,
        "missing_stages": run.missing(),
        "problems": list(run.problems),
        "recipe": recipe_summary(run.recipe),
        "models": _models(run),
        "accuracy": accuracy_table(run, files),
        "files": files,
        "latency": latency,
        "pareto": pareto,
        "shipped": shipped,
        "verdicts": [v for t in target_order(run) for v in run.profiles[t].get("verdicts", [])],
        "training": {k: v for k, v in (("teacher", run.metrics("teacher").get("history")),
                                        ("student", run.metrics("distill").get("history")),
                                        ("qat", run.metrics("quantize").get("history"))) if v},
        "loss_curves": {k: v for k, v in (("teacher", run.metrics("teacher").get("curve")),
                                           ("student", run.metrics("distill").get("curve")),
                                           ("qat", run.metrics("quantize").get("curve"))) if v},
        "bundle": run.metrics("bundle").get("archives", []),
        "quantization": {k: v for k, v in run.metrics("quantize").items()
                         if k in ("scheme", "method", "keep_float", "sensitivity", "fallback", "sensitivity_samples")
                         and v is not None},
    }
    from edgekd.auto.report import auto_results

    results["auto"] = auto_results(run)
    results["headline"] = headline(results)
    results["summary"] = verdict_sentences(results)
    return results


def missing_effect(stage: str) -> str:
    """What the report lacks when `stage` did not run (declared with the stage)."""
    from edgekd.stages import STAGES

    return STAGES.get(stage).missing if stage in STAGES else ""


def verdict_sentences(results: dict[str, Any]) -> list[str]:
    """Plain sentences a reader takes away: compression, accuracy kept, int8 vs fp32, parity failures."""
    from edgekd.auto.report import auto_verdicts

    out: list[str] = auto_verdicts(results)  # first: did distillation pay over the no-teacher baseline
    models = results["models"]
    t, s = models.get("teacher", {}), models.get("student", {})
    if _num(t.get("params")) and _num(s.get("params")) and s["params"]:
        line = f"The student has {t['params'] / s['params']:.1f}x fewer parameters than the teacher"
        if _num(t.get("test_accuracy")) and _num(s.get("test_accuracy")) and t["test_accuracy"]:
            line += f" and keeps {s['test_accuracy'] / t['test_accuracy'] * 100:.1f}% of its accuracy " \
                    f"({s['test_accuracy'] * 100:.1f}% vs {t['test_accuracy'] * 100:.1f}%)"
        out.append(line + ".")
    q = models.get("quantized", {})
    if _num(q.get("fake_quant_accuracy")) and _num(s.get("test_accuracy")):
        delta = (q["fake_quant_accuracy"] - s["test_accuracy"]) * 100
        effect = f"costs {-delta:.1f} pt" if delta < 0 else f"changes top-1 by {delta:+.1f} pt"
        out.append(f"Quantization ({q.get('method')}) {effect} in simulation ({q['fake_quant_accuracy'] * 100:.1f}% vs "
                   f"{s['test_accuracy'] * 100:.1f}% fp32).")
    for f in results["files"]:
        if f.get("parity_ok") is False:
            out.append(f"{f['name']} FAILED parity against {f.get('reference')} (max abs diff "
                       f"{f.get('max_abs_diff', float('nan')):.3g}): do not ship it.")
    for v in results["verdicts"]:
        if v.get("text"):
            out.append(v["text"])
    by = {}
    for f in results["files"]:
        by.setdefault(f.get("runtime"), {})[f.get("precision")] = f
    for runtime, p in sorted(by.items(), key=lambda kv: str(kv[0])):
        if "int8" in p and "fp32" in p and _num(p["int8"].get("bytes")) and _num(p["fp32"].get("bytes")):
            ratio = p["fp32"]["bytes"] / p["int8"]["bytes"]
            how = f"{ratio:.1f}x smaller than" if ratio >= 1.05 else \
                "no smaller than" if ratio > 0.95 else f"{1 / ratio:.1f}x larger than"
            out.append(f"{runtime}: the int8 file is {how} the fp32 one "
                       f"({format_bytes(p['int8']['bytes'])} vs {format_bytes(p['fp32']['bytes'])}).")
    return out


def _models(run: RunRecord) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, stage in (("teacher", "teacher"), ("student", "distill")):
        m = run.metrics(stage)
        if m:
            out[key] = {"params": m.get("params"), "test_accuracy": m.get("test_accuracy"),
                        "fp32_bytes_estimate": 4 * m["params"] if isinstance(m.get("params"), int) else None}
    q = run.metrics("quantize")
    if q:
        out["quantized"] = {"method": q.get("method"), "scheme": q.get("scheme"),
                            "fake_quant_accuracy": q.get("fake_quant_accuracy")}
    return out


def pareto_front(rows: list[dict[str, Any]]) -> list[str]:
    """Names of rows no other row beats on both latency (p50, lower) and accuracy (higher); sorted by latency."""
    pts = [r for r in rows if _num(r.get("p50_ms")) and _num(r.get("accuracy"))]
    front = [r for r in pts if not any(
        o["p50_ms"] <= r["p50_ms"] and o["accuracy"] >= r["accuracy"]
        and (o["p50_ms"] < r["p50_ms"] or o["accuracy"] > r["accuracy"]) for o in pts)]
    return [r["name"] for r in sorted(front, key=lambda r: r["p50_ms"])]


def headline(results: dict[str, Any]) -> dict[str, Any] | None:
    """What a user sees first: the shipped file's accuracy, latency and size next to the teacher's."""
    if not results["shipped"]:
        return None
    target = next(iter(results["shipped"]))
    pick = results["shipped"][target]
    if pick is None:
        return None
    teacher = results["models"].get("teacher", {})
    out = {"target": target or None, **pick, "teacher_accuracy": teacher.get("test_accuracy"),
           "teacher_params": teacher.get("params"), "teacher_bytes_estimate": teacher.get("fp32_bytes_estimate")}
    parts = [f"Ship {pick['name']} ({pick.get('runtime')}, {pick.get('precision')})"]
    if _num(pick.get("accuracy")):
        s = f"top-1 {pick['accuracy'] * 100:.1f}%"
        if _num(teacher.get("test_accuracy")):
            s += f" vs teacher {teacher['test_accuracy'] * 100:.1f}% " \
                 f"({(pick['accuracy'] - teacher['test_accuracy']) * 100:+.1f} pt)"
        parts.append(s)
    if _num(pick.get("p50_ms")):
        kind = "measured" if pick.get("measured") else "predicted"
        unc = f" ±{pick['uncertainty'] * 100:.0f}%" if not pick.get("measured") and _num(pick.get("uncertainty")) else ""
        parts.append(f"p50 {pick['p50_ms']:.3g} ms{unc} on {target} ({kind})")
    if _num(pick.get("bytes")):
        s = f"{format_bytes(pick['bytes'])}"
        if _num(teacher.get("fp32_bytes_estimate")):
            s += f", {teacher['fp32_bytes_estimate'] / pick['bytes']:.1f}x smaller than the teacher's fp32 weights"
        parts.append(s)
    out["text"] = "; ".join(parts) + "."
    return out


def format_bytes(n: float | None) -> str:
    if not _num(n):
        return "n/a"
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


