"""All figures of a run as one dict (results.json): accuracy, latency per target, Pareto fronts, shipped file."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from edgekd.report.run import RunRecord, load_run, recipe_summary

SCHEMA = "edgekd-results/1"
# A file may give up this much top-1 accuracy (absolute, 0..1) against the best exported file to be shipped.
MAX_ACCURACY_DROP = 0.01


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
        "verdicts": [v for t in target_order(run) for v in (run.profiles[t].get("metrics") or {}).get("verdicts", [])],
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
    results["headline"] = headline(results)
    results["summary"] = verdict_sentences(results)
    return results


# What each missing stage takes away from the report, and how to get it back.
MISSING_EFFECT = {
    "teacher": "no teacher accuracy or training curve",
    "distill": "no student fp32 accuracy or distillation curve",
    "quantize": "no fake-quant accuracy or QAT curve",
    "export": "no exported files: no file sizes",
    "verify": "no accuracy or parity of the exported files",
    "profile": "no latency: no latency tables, accuracy-vs-latency or int8-vs-fp32 plots",
    "bundle": "no app bundle archive",
}


def verdict_sentences(results: dict[str, Any]) -> list[str]:
    """Plain sentences a reader takes away: compression, accuracy kept, int8 vs fp32, parity failures."""
    out: list[str] = []
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


def target_order(run: RunRecord) -> list[str]:
    """Profiled targets, the recipe's order first (its first target is the headline's), then the rest sorted."""
    recipe = run.recipe or {}
    named = (recipe.get("profile") or {}).get("targets") if isinstance(recipe.get("profile"), dict) else None
    named = named if isinstance(named, list) else recipe.get("targets")
    named = [str(t.get("name") if isinstance(t, dict) else t) for t in named] if isinstance(named, list) else []
    first = [t for t in named if t in run.profiles]
    return first + sorted(t for t in run.profiles if t not in first)


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


def file_table(run: RunRecord) -> list[dict[str, Any]]:
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
    if not rows:  # verify ran on files the export stage did not record (e.g. user-brought files)
        rows = [{**{k: f.get(k) for k in ("name", "format", "precision", "runtime", "accuracy", "reference",
                                           "max_abs_diff", "top1_agreement", "parity_ok")},
                 "path": None, "bytes": None, "verified": True} for f in verified.values()]
    return rows


def accuracy_table(run: RunRecord, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
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


def latency_table(run: RunRecord, target: str, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per profiled file on `target`, with its accuracy and size from the export/verify stages."""
    by_name = {f["name"]: f for f in files}
    rows = []
    for r in (run.profiles[target].get("metrics") or {}).get("results", []):
        f = by_name.get(r.get("name"), {})
        rows.append({**r, "target": target, "accuracy": f.get("accuracy"), "parity_ok": f.get("parity_ok"),
                     "format": f.get("format"), "bytes": r.get("bytes") or f.get("bytes")})
    return rows


def pareto_front(rows: list[dict[str, Any]]) -> list[str]:
    """Names of rows no other row beats on both latency (p50, lower) and accuracy (higher); sorted by latency."""
    pts = [r for r in rows if _num(r.get("p50_ms")) and _num(r.get("accuracy"))]
    front = [r for r in pts if not any(
        o["p50_ms"] <= r["p50_ms"] and o["accuracy"] >= r["accuracy"]
        and (o["p50_ms"] < r["p50_ms"] or o["accuracy"] > r["accuracy"]) for o in pts)]
    return [r["name"] for r in sorted(front, key=lambda r: r["p50_ms"])]


def choose_shipped(files: list[dict[str, Any]], latency_rows: list[dict[str, Any]],
                   max_drop: float = MAX_ACCURACY_DROP) -> dict[str, Any] | None:
    """The file to ship: parity-checked, within `max_drop` of the best exported accuracy, then fastest, then smallest."""
    lat = {r["name"]: r for r in latency_rows}
    cands = [f for f in files if f.get("parity_ok") is not False]
    if latency_rows:
        cands = [f for f in cands if f["name"] in lat] or cands
    if not cands:
        return None
    accs = [f["accuracy"] for f in cands if _num(f.get("accuracy"))]
    if accs:
        best = max(accs)
        cands = [f for f in cands if _num(f.get("accuracy")) and f["accuracy"] >= best - max_drop]

    def key(f: dict[str, Any]) -> tuple[float, float]:
        p50 = lat.get(f["name"], {}).get("p50_ms")
        return (p50 if _num(p50) else math.inf, f.get("bytes") or math.inf)

    pick = min(cands, key=key)
    row = lat.get(pick["name"], {})
    reason = (f"parity ok, within {max_drop * 100:.1f} pt of the best exported accuracy, then lowest p50"
              if accs else "no verified accuracy: lowest p50, then smallest")
    return {"name": pick["name"], "runtime": pick.get("runtime"), "precision": pick.get("precision"),
            "accuracy": pick.get("accuracy"), "bytes": row.get("bytes") or pick.get("bytes"),
            "p50_ms": row.get("p50_ms"), "measured": row.get("measured"), "uncertainty": row.get("uncertainty"),
            "device": row.get("device"), "reason": reason}


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


def _num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
