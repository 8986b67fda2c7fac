"""Student search under a latency budget per target: candidates, latency, proxy accuracy, Pareto front, choice.

Candidates come from a declared space (`search.space`: zoo families with lists of constructor values, e.g.
tiny_cnn width x depth, mobilenet_student width_mult x depth x expand); every combination is one candidate
(a seeded sample of `max_candidates` when there are more). Latency per target: the calibrated predictor
(edgekd.profile.predict) on the candidate's fp32 ONNX graph, and on cpu-local also measured (ORT, 1 thread) when
`measure_local` (the lowest median of MEASURE_ROUNDS short rounds); the measured figure is then the one budgets
are checked against, and the prediction's error is recorded. Accuracy: a short KD proxy (the recipe's logit
losses) on a subset of the training split, scored on the validation split. The chosen student is the most
accurate candidate inside every budget (ties: faster). `full_train` candidates are then trained with the full
distill budget to say how far the proxy ranking agrees with full training (Spearman rank correlation of
validation accuracies).
"""
from __future__ import annotations

import itertools
import random
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.auto.proxy import (TeacherOutputs, build_student, count_macs, proxy_config, proxy_train,
                               require_validation, split_record, train_subset)
from edgekd.auto.stats import spearman
from edgekd.errors import EdgeKDError

if TYPE_CHECKING:
    from edgekd.config import Recipe

LOCAL = "cpu-local"
MEASURE_ROUNDS = 5


def expand_space(space: list[dict[str, Any]], limit: int, seed: int = 0) -> list[dict[str, Any]]:
    """[{model, kwargs}] for every combination of the listed values (a seeded sample of `limit` if more)."""
    out: list[dict[str, Any]] = []
    for i, family in enumerate(space):
        if not isinstance(family, dict) or "model" not in family:
            raise EdgeKDError(f"search.space[{i}]: each entry is {{model: NAME, kwargs: {{arg: [values]}}}}, "
                              f"got {family!r}")
        kw = family.get("kwargs") or {}
        keys = list(kw)
        values = [v if isinstance(v, list) else [v] for v in kw.values()]
        for combo in itertools.product(*values):
            out.append({"model": family["model"], "kwargs": dict(zip(keys, combo))})
    if len(out) > limit:
        keep = sorted(random.Random(seed).sample(range(len(out)), limit))
        out = [out[i] for i in keep]
    return out


def candidate_name(c: dict[str, Any]) -> str:
    return c["model"] + "(" + ", ".join(f"{k}={v}" for k, v in c["kwargs"].items()) + ")"


def latencies(module, input_shape: tuple[int, ...], targets: list[str], measure_local: bool,
              threads: int = 1, local_calibration: Any = None, onnx_file: Path | None = None,
              local_measurement: tuple[float, list[float]] | None = None) -> dict[str, dict[str, Any]]:
    """{target: {"ms", "predicted_ms", "uncertainty", "measured_ms"|None, "basis"}} for a torch module.

    `local_calibration`: the cpu-local calibration to predict with (refit_local's, re-fitted on this machine at
    search time); the stored one when None. `onnx_file` and `local_measurement` (ms, round medians): the
    candidate's exported file and its cpu-local figure when already measured (interleaved with the references).
    """
    from edgekd.profile.predict import predict
    from edgekd.profile.predict.refit import measure_min_median

    shape = (1, *input_shape)
    out: dict[str, dict[str, Any]] = {}
    onnx_path = None
    with tempfile.TemporaryDirectory(prefix="edgekd-search-") as tmp:
        if onnx_file is not None:
            onnx_path = onnx_file
        elif measure_local and LOCAL in targets:
            onnx_path = export_candidate(module, shape, Path(tmp) / "candidate.onnx")
        for target in targets:
            p = predict(onnx_path if (onnx_path and target == LOCAL) else module.eval(), target,
                        input_shape=shape, threads=threads if target == LOCAL else None,
                        calibration=local_calibration if target == LOCAL else None)
            row = {"predicted_ms": p.ms, "uncertainty": p.uncertainty, "measured_ms": None, "basis": p.basis}
            if target == LOCAL and onnx_path is not None:
                # Other processes only ever add time: the lowest median of a few short rounds is the figure
                # least disturbed by a busy machine (the same estimator refit_local measures references with).
                row["measured_ms"], row["measured_rounds_ms"] = local_measurement or measure_min_median(
                    onnx_path, threads, MEASURE_ROUNDS)
                row["prediction_error"] = p.ms / row["measured_ms"] - 1 if row["measured_ms"] else None
                if local_calibration is not None:  # what the stored calibration alone would have said
                    stored = predict(onnx_path, target, input_shape=shape, threads=threads).ms
                    row["stored_predicted_ms"] = stored
                    row["stored_prediction_error"] = stored / row["measured_ms"] - 1 if row["measured_ms"] else None
            row["ms"] = row["measured_ms"] if row["measured_ms"] is not None else row["predicted_ms"]
            out[target] = row
    return out


def export_candidate(module, shape: tuple[int, ...], path: Path) -> Path:
    """The candidate's fp32 ONNX file, as edgekd exports students."""
    import torch

    from edgekd.export.onnx import export_onnx

    return export_onnx(module.eval(), (torch.zeros(shape),), path)


def pareto(points: list[dict[str, Any]], target: str) -> list[str]:
    """Names of candidates no other beats on both latency on `target` (lower) and proxy accuracy (higher)."""
    pts = [p for p in points if isinstance(p.get("val_accuracy"), float) and target in p["latency"]]

    def lat(p):
        return p["latency"][target]["ms"]

    front = [p for p in pts if not any(lat(o) <= lat(p) and o["val_accuracy"] >= p["val_accuracy"]
                                       and (lat(o) < lat(p) or o["val_accuracy"] > p["val_accuracy"]) for o in pts)]
    return [p["name"] for p in sorted(front, key=lat)]


def proxy_losses(recipe: "Recipe", teacher: Any) -> list[dict[str, Any]]:
    """The recipe's logit losses (feature taps differ per candidate); cross-entropy without a teacher."""
    if teacher is None:
        return [{"name": "ce", "weight": 1.0}]
    return [dict(t) for t in recipe.distill.losses if "student" not in t] or [{"name": "ce", "weight": 1.0}]


def candidates_with_recipe_student(cands: list[dict[str, Any]], recipe: "Recipe") -> list[dict[str, Any]]:
    """The space's candidates plus the recipe's own student (a zoo model trained from scratch), so that the
    search never returns a student the proxy ranks below the one the user already had inside the budget."""
    st = recipe.student
    if st.weights is not None or st.import_path is not None or ":" in st.model:
        return cands
    own = {"model": st.model, "kwargs": dict(st.kwargs or {})}
    return cands if own in cands else cands + [own]


def resolve_budgets(asked: dict[str, Any], rows: list[dict[str, Any]], recipe: "Recipe") -> dict[str, float]:
    """Budgets in ms; `student` means the recipe's own student's latency on that target, as measured (or
    predicted) in this search with the same estimator as every candidate: "no slower than what I have"."""
    out: dict[str, float] = {}
    st = recipe.student
    own = next((r for r in rows if r.get("model") == st.model and r.get("kwargs") == dict(st.kwargs or {})
                and "error" not in r), None)
    for target, b in asked.items():
        if b == "student":
            if own is None or target not in own["latency"]:
                raise EdgeKDError(f"search.budget_ms.{target}: 'student' needs the recipe's student among the "
                                  "candidates (a zoo model without student.weights)")
            out[target] = float(own["latency"][target]["ms"])
        elif isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0:
            out[target] = float(b)
        else:
            raise EdgeKDError(f"search.budget_ms.{target}: {b!r} is no budget; give milliseconds > 0 or "
                              "'student' (the recipe's student's latency)")
    return out


def within_budget(c: dict[str, Any], budgets: dict[str, float]) -> bool:
    return all(c["latency"].get(t, {}).get("ms", float("inf")) <= b for t, b in budgets.items())


def search_students(ds, recipe: "Recipe", teacher: Any, *, log=print) -> dict[str, Any]:
    """Run the search (module docstring); the result is JSON-able and names the chosen student."""
    cfg = recipe.search
    require_validation(ds, "search")
    unknown = [t for t in cfg.budget_ms if t not in cfg.targets]
    if unknown:
        raise EdgeKDError(f"search.budget_ms names {', '.join(unknown)}, which search.targets does not list "
                          f"({', '.join(cfg.targets)}); add the target or remove its budget")
    for target, b in cfg.budget_ms.items():  # checked before any work: a typo should not cost a whole search
        if not (b == "student" or (isinstance(b, (int, float)) and not isinstance(b, bool) and b > 0)):
            raise EdgeKDError(f"search.budget_ms.{target}: {b!r} is no budget; give milliseconds > 0 or "
                              "'student' (the recipe's student's latency)")
        if b == "student" and candidates_with_recipe_student([], recipe) == []:
            raise EdgeKDError(f"search.budget_ms.{target}: 'student' needs the recipe's student among the "
                              "candidates (a zoo model without student.weights)")
    t0 = time.perf_counter()
    idx = train_subset(ds, cfg.proxy_train, cfg.seed)
    outputs = TeacherOutputs.compute(teacher, ds.x_train[idx]) if teacher is not None else None
    terms = proxy_losses(recipe, teacher)
    pcfg = proxy_config(recipe.distill.train, cfg.proxy_epochs)
    rows: list[dict[str, Any]] = []
    state: dict[str, Any] = {}
    built_all: list[tuple[dict[str, Any], Any]] = []
    for c in candidates_with_recipe_student(expand_space(cfg.space, cfg.max_candidates, cfg.seed), recipe):
        try:
            built_all.append((c, build_student(c["model"], c["kwargs"], ds, recipe.seed)))
        except EdgeKDError as e:
            rows.append({"name": candidate_name(c), **c, "error": str(e), "latency": {}})
            log(f"search: {candidate_name(c)}: not buildable for this data ({e})")
    with tempfile.TemporaryDirectory(prefix="edgekd-search-") as tmp:
        _measure_and_proxy(built_all, rows, ds, recipe, idx, terms, pcfg, outputs, Path(tmp), log, state)
    refit = state.get("refit")
    budgets = resolve_budgets(cfg.budget_ms, rows, recipe)
    for row in rows:
        if "error" not in row:
            row["within_budget"] = within_budget(row, budgets)
    ok = [r for r in rows if r.get("within_budget")]
    if not ok:
        raise EdgeKDError(f"no candidate of search.space fits the budgets {budgets} on "
                          f"{', '.join(cfg.targets)}: raise the budget or add smaller candidates")
    primary = next(iter(budgets), cfg.targets[0])
    chosen = max(ok, key=lambda r: (r["val_accuracy"], -r["latency"][primary]["ms"]))
    result = {"candidates": rows, "fronts": {t: pareto(rows, t) for t in cfg.targets}, "budgets_ms": budgets,
              "budgets_asked": dict(cfg.budget_ms),
              "chosen": {k: chosen[k] for k in ("name", "model", "kwargs", "params", "val_accuracy", "latency")},
              "proxy": {"epochs": cfg.proxy_epochs, "train_images": len(idx), "losses": terms},
              "split": split_record(ds), "latency_refit": refit,
              "prediction_errors": prediction_errors(rows)}
    if cfg.full_train:
        result["rank_check"] = full_train_check(ds, recipe, ok, cfg.full_train, teacher, log)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    log(f"search: chose {chosen['name']} (validation {chosen['val_accuracy']:.4f}) in {result['seconds']:.0f} s")
    return result


def prediction_errors(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Predicted vs measured cpu-local latency per candidate, and how many are within +-10%."""
    per = [{"name": r["name"], "predicted_ms": r["latency"][LOCAL]["predicted_ms"],
            "measured_ms": r["latency"][LOCAL]["measured_ms"], "error": r["latency"][LOCAL]["prediction_error"],
            "stored_error": r["latency"][LOCAL].get("stored_prediction_error")}
           for r in rows if r.get("latency", {}).get(LOCAL, {}).get("prediction_error") is not None]
    if not per:
        return None
    errs = [abs(p["error"]) for p in per]
    out = {"candidates": per, "within_10pct": sum(e <= 0.10 for e in errs), "n": len(per),
           "median_abs_error": float(sorted(errs)[len(errs) // 2]), "max_abs_error": max(errs)}
    stored = [abs(p["stored_error"]) for p in per if p["stored_error"] is not None]
    if stored:
        out["stored_within_10pct"] = sum(e <= 0.10 for e in stored)
        out["stored_median_abs_error"] = float(sorted(stored)[len(stored) // 2])
    return out


def _measure_and_proxy(built_all, rows, ds, recipe: "Recipe", idx, terms, pcfg, outputs, tmp: Path, log,
                       state: dict[str, Any]) -> None:
    """Latency of every built candidate (cpu-local: exported and measured in rounds interleaved with the
    re-fit's references) and its proxy accuracy; rows are appended, the re-fit goes to `state`."""
    from edgekd.models import count_params

    cfg = recipe.search
    local_calib = None
    files: list[Path | None] = [None] * len(built_all)
    measured: list[Any] = [None] * len(built_all)
    if LOCAL in cfg.targets and cfg.measure_local:
        from edgekd.profile.predict.refit import refit_local

        # The stored cpu-local calibration was measured on some machine under some load: re-fit its compute and
        # fixed costs to this machine now, on reference models that are not candidates, measured in the same
        # interleaved rounds as the candidates, with small networks at the candidates' input shape among them
        # (measure_local: false runs nothing here and predicts with the stored calibration).
        shape = (1, *ds.input_shape)
        files = [export_candidate(b.module, shape, tmp / f"candidate{i}.onnx")
                 for i, (_, b) in enumerate(built_all)]
        local_calib, refit = refit_local(1, log=log, also=files, input_shape=shape)
        measured = refit.pop("also_measured")
        state.update(calib=local_calib, refit=refit)
    for (c, built), f, m in zip(built_all, files, measured):
        name = candidate_name(c)
        row = {"name": name, **c, "params": count_params(built.module),
               "macs": count_macs(built.module, ds.input_shape),
               "latency": latencies(built.module, ds.input_shape, cfg.targets, cfg.measure_local,
                                    local_calibration=local_calib, onnx_file=f, local_measurement=m)}
        res = proxy_train(built.module, ds, idx, terms, pcfg, teacher=outputs, seed=recipe.seed,
                          batch_size=recipe.data.batch_size)
        row.update(val_accuracy=res.val_accuracy, proxy_seconds=round(res.seconds, 2))
        lat = ", ".join(f"{t} {v['ms']:.3g} ms" for t, v in row["latency"].items())
        log(f"search: {name}: {row['params']:,} params, {lat}, validation {res.val_accuracy:.4f}")
        rows.append(row)


def full_train_check(ds, recipe: "Recipe", ok: list[dict[str, Any]], k: int, teacher, log) -> dict[str, Any]:
    """Train `k` in-budget candidates (spread over the proxy ranking) fully; Spearman of proxy vs full."""
    ranked = sorted(ok, key=lambda r: -r["val_accuracy"])
    if k >= len(ranked):
        picks = ranked
    else:
        step = (len(ranked) - 1) / max(1, k - 1)
        picks = [ranked[round(i * step)] for i in range(k)]
    outputs = TeacherOutputs.compute(teacher, ds.x_train) if teacher is not None else None
    terms = proxy_losses(recipe, teacher)
    cfg = proxy_config(recipe.distill.train, recipe.distill.train.epochs)
    full = []
    for r in picks:
        built = build_student(r["model"], r["kwargs"], ds, recipe.seed)
        res = proxy_train(built.module, ds, None, terms, cfg, teacher=outputs, seed=recipe.seed,
                          batch_size=recipe.data.batch_size)
        full.append({"name": r["name"], "proxy_val": r["val_accuracy"], "full_val": res.val_accuracy,
                     "seconds": round(res.seconds, 1)})
        log(f"search: full training of {r['name']}: validation {res.val_accuracy:.4f} (proxy {r['val_accuracy']:.4f})")
    rho = spearman([f["proxy_val"] for f in full], [f["full_val"] for f in full])
    return {"trained": full, "spearman": rho}
