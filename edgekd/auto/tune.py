"""KD settings chosen by measurement: Optuna (TPE + Hyperband/successive-halving pruning) over short proxy runs.

The search space (docs/auto.md): the loss family (kd_soft, dkd, dist), the logit-standardisation switch, the
temperature (log scale), the weights of the family, and a FitNets hint when `tune.hint` names a student and a
teacher tap. Every trial is a proxy run (edgekd.auto.proxy) scored on the validation split; the pruner stops a
poor trial at one of its intermediate validation checks. Two reference runs are scored with the same proxy:
the recipe's own losses and cross-entropy alone (no teacher).

Confirmation (`tune.confirm`, default 2): a proxy ranks settings but does not predict the full run (on
Fashion-MNIST a 2-epoch proxy chose DIST, which then lost to cross-entropy at full length). So the recipe's
losses, cross-entropy alone and the `confirm` best distinct proxy runs are re-trained with the full distill.train
budget on all training images, and the choice is made among those, by the rule below.

Choice: the best validation accuracy (runs with the same number of validation images right are ordered by their
validation cross-entropy, not by the order they ran in; the same order picks the proxies to confirm), but a trial
replaces the recipe's losses only when it beats them by more than one standard error of a validation accuracy
(sqrt(p(1-p)/n_val)): the validation split is small, and a choice inside its noise is no choice. When
cross-entropy alone wins that way, distill trains without the teacher and the report says the teacher did not
help on the validation split.
"""
from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING, Any

from edgekd.auto.proxy import (CE_ONLY, ProxyResult, Pruned, TeacherOutputs, build_student, proxy_config,
                               proxy_train, require_validation, split_record, train_subset)
from edgekd.errors import EdgeKDError

if TYPE_CHECKING:
    from edgekd.config import Recipe, TuneConfig

FAMILIES = ("kd_soft", "dkd", "dist")


def sample_losses(trial: Any, cfg: "TuneConfig") -> list[dict[str, Any]]:
    """One point of the search space as a recipe loss list (define-by-run: parameters depend on the family)."""
    family = trial.suggest_categorical("family", list(cfg.families))
    lo, hi = (list(cfg.temperature) + [1.0, 8.0])[:2]
    t = trial.suggest_float("temperature", lo, hi, log=True)
    std = trial.suggest_categorical("standardize", [False, True]) if cfg.standardize else False
    if family == "kd_soft":
        w = trial.suggest_float("kd_weight", 0.1, 0.95)
        terms = [{"name": "ce", "weight": round(1 - w, 4)},
                 {"name": "kd_soft", "weight": round(w, 4), "temperature": t, "standardize": std}]
    elif family == "dkd":
        terms = [{"name": "ce", "weight": 1.0},
                 {"name": "dkd", "weight": 1.0, "alpha": trial.suggest_float("dkd_alpha", 0.25, 2.0, log=True),
                  "beta": trial.suggest_float("dkd_beta", 0.25, 8.0, log=True), "temperature": t,
                  "standardize": std}]
    else:
        terms = [{"name": "ce", "weight": 1.0},
                 {"name": "dist", "weight": 1.0, "beta": trial.suggest_float("dist_beta", 0.25, 4.0, log=True),
                  "gamma": trial.suggest_float("dist_gamma", 0.25, 4.0, log=True), "tau": t, "standardize": std}]
    if cfg.hint and trial.suggest_categorical("hint", [False, True]):
        terms.append({"name": "hint", "weight": trial.suggest_float("hint_weight", 0.05, 5.0, log=True),
                      "student": cfg.hint["student"], "teacher": cfg.hint["teacher"]})
    return terms


def _optuna():
    from edgekd.extras import require

    return require("optuna", "auto", "edgekd tune (distill.auto)")


def make_pruner(name: str, checks: int):
    optuna = _optuna()

    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=checks, reduction_factor=3)
    if name == "successive_halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    return optuna.pruners.NopPruner()


def tune_losses(ds, recipe: "Recipe", teacher: Any, *, log=print, checks: int = 4) -> dict[str, Any]:
    """Run the references and the Optuna study; return the trials table and the choice (JSON-able)."""
    optuna = _optuna()

    cfg = recipe.tune
    require_validation(ds, "tune")
    if cfg.hint is not None and not (isinstance(cfg.hint, dict) and {"student", "teacher"} <= set(cfg.hint)):
        raise EdgeKDError(f"tune.hint names the feature taps to try a FitNets hint on, as {{student: features.N, "
                          f"teacher: features.M}}; got {cfg.hint!r}")
    unknown = [f for f in cfg.families if f not in FAMILIES]
    if unknown or not cfg.families:
        raise EdgeKDError(f"tune.families: {unknown or cfg.families!r} not searchable; choose from "
                          f"{', '.join(FAMILIES)}")
    t_start = time.perf_counter()
    deadline = t_start + cfg.budget_s
    idx = train_subset(ds, cfg.proxy_train, cfg.seed)
    outputs = TeacherOutputs.compute(teacher, ds.x_train[idx]) if teacher is not None else None
    pcfg = proxy_config(recipe.distill.train, cfg.proxy_epochs)
    rows: list[dict[str, Any]] = []

    def run(terms: list[dict[str, Any]], report=None) -> ProxyResult:
        s = recipe.student
        model = build_student(s.model, s.kwargs, ds, recipe.seed, s.import_path, s.weights).module
        return proxy_train(model, ds, idx, terms, pcfg, teacher=outputs, seed=recipe.seed,
                           batch_size=recipe.data.batch_size, checks=checks, report=report, deadline=deadline)

    for name, terms in (("recipe", recipe.distill.losses), ("ce", CE_ONLY if cfg.include_ce else None)):
        if terms is None:
            continue
        res = run([dict(t) for t in terms])
        rows.append(_row(name, terms, res, "complete"))
        log(f"tune: reference {name}: validation {res.val_accuracy:.4f} ({res.seconds:.1f} s)")

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    # A fixed study name: Hyperband assigns trials to brackets by hashing it, so a random name made runs differ.
    study = optuna.create_study(study_name=f"edgekd-tune-{cfg.seed}", direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=cfg.seed),
                                pruner=make_pruner(cfg.pruner, checks))

    def objective(trial) -> float:
        terms = sample_losses(trial, cfg)
        step = {"n": 0}

        def report(fraction: float, acc: float) -> None:
            step["n"] += 1
            trial.report(acc, step["n"])
            if trial.should_prune():
                raise Pruned("pruned")

        trial.set_user_attr("losses", terms)
        res = run(terms, report)
        trial.set_user_attr("curve", res.curve)
        trial.set_user_attr("seconds", res.seconds)
        trial.set_user_attr("val_nll", res.val_nll)
        if res.pruned:
            raise optuna.TrialPruned()
        return res.val_accuracy

    remaining = deadline - time.perf_counter()
    if remaining > 0 and cfg.trials > 0:
        from edgekd.train import NonFiniteLossError

        # a diverging setting (NaN loss) is a failed trial, recorded as such, not the end of the search
        study.optimize(objective, n_trials=cfg.trials, timeout=remaining, catch=(NonFiniteLossError,))
    for tr in study.trials:
        curve = tr.user_attrs.get("curve", [])
        val = tr.value if tr.value is not None else (curve[-1][1] if curve else None)
        rows.append({"name": f"trial {tr.number}", "losses": tr.user_attrs.get("losses"), "params": tr.params,
                     "val_accuracy": val, "val_nll": tr.user_attrs.get("val_nll"), "state": tr.state.name.lower(),
                     "curve": curve, "seconds": round(tr.user_attrs.get("seconds", 0.0), 2)})
    confirmed = None
    if cfg.confirm > 0:
        confirmed = confirm_full(ds, recipe, teacher, rows, cfg.confirm, log)
        chosen = choose(confirmed, len(ds.y_val))
        chosen["stage"] = "confirmed with the full budget"
    else:
        chosen = choose(rows, len(ds.y_val))
        chosen["stage"] = "proxy"
    spent = time.perf_counter() - t_start
    log(f"tune: chose {chosen['source']} ({_describe(chosen['losses'])}), validation {chosen['val_accuracy']:.4f}, "
        f"{len(rows)} runs in {spent:.0f} s")
    return {"trials": rows, "chosen": chosen, "budget_s": cfg.budget_s, "spent_s": round(spent, 2),
            "proxy": {"epochs": cfg.proxy_epochs, "train_images": len(idx), "checks": checks},
            "split": split_record(ds), "sampler": "TPE", "pruner": cfg.pruner, "optuna": optuna.__version__,
            "confirm": confirmed}


def confirm_full(ds, recipe: "Recipe", teacher: Any, rows: list[dict[str, Any]], k: int, log) -> list[dict[str, Any]]:
    """The recipe's losses, CE alone and the `k` best distinct proxy runs, each re-trained with the full
    distill.train budget on every training image and scored on the validation split (rows like the trials')."""
    done = [r for r in rows if r["state"] == "complete" and isinstance(r.get("val_accuracy"), (int, float))]
    picks = [r for r in done if r["name"] in ("recipe", "ce")]
    seen, n_ref = [r["losses"] for r in picks], len(picks)
    for r in sorted((r for r in done if r["name"] not in ("recipe", "ce")), key=rank_key, reverse=True):
        if len(picks) >= n_ref + k:
            break
        if r.get("losses") and r["losses"] not in seen:
            picks.append(r)
            seen.append(r["losses"])
    outputs = TeacherOutputs.compute(teacher, ds.x_train) if teacher is not None else None
    cfg = proxy_config(recipe.distill.train, recipe.distill.train.epochs)
    s = recipe.student
    out = []
    for r in picks:
        model = build_student(s.model, s.kwargs, ds, recipe.seed, s.import_path, s.weights).module
        res = proxy_train(model, ds, None, [dict(t) for t in r["losses"]], cfg, teacher=outputs, seed=recipe.seed,
                          batch_size=recipe.data.batch_size)
        out.append({**_row(r["name"], r["losses"], res, "complete"), "proxy_val_accuracy": r["val_accuracy"]})
        log(f"tune: full-budget check of {r['name']} ({_describe(r['losses'])}): validation "
            f"{res.val_accuracy:.4f} (proxy {r['val_accuracy']:.4f}, {res.seconds:.0f} s)")
    return out


def _row(name: str, terms, res: ProxyResult, state: str) -> dict[str, Any]:
    return {"name": name, "losses": [dict(t) for t in terms], "params": {}, "val_accuracy": res.val_accuracy,
            "val_nll": res.val_nll, "state": "pruned" if res.pruned else state, "curve": res.curve,
            "seconds": round(res.seconds, 2)}


def rank_key(row: dict[str, Any]) -> tuple[float, float]:
    """Order of runs, best last: validation accuracy, then, among runs with the same number of validation images
    right, the lower validation cross-entropy (a run without one ranks below those that have one)."""
    nll = row.get("val_nll")
    return row["val_accuracy"], -nll if isinstance(nll, (int, float)) else -math.inf


def choose(rows: list[dict[str, Any]], n_val: int) -> dict[str, Any]:
    """The best complete run (rank_key: accuracy, ties by validation cross-entropy); the recipe's losses stay
    unless beaten by more than one validation SE."""
    scored = [r for r in rows if isinstance(r.get("val_accuracy"), (int, float))]
    done = [r for r in scored if r["state"] == "complete"] or scored  # a budget spent mid-run leaves partial runs
    if not done:
        raise EdgeKDError("tune: no run finished a validation check inside tune.budget_s; raise the budget or "
                          "lower tune.proxy_epochs / tune.proxy_train")
    best = max(done, key=rank_key)
    ref = next((r for r in done if r["name"] == "recipe"), None)
    se = math.sqrt(max(best["val_accuracy"] * (1 - best["val_accuracy"]), 1e-12) / max(1, n_val))
    pick, why = best, "best validation accuracy"
    if ref is not None and best is not ref and best["val_accuracy"] - ref["val_accuracy"] <= se:
        pick, why = ref, (f"the best run ({best['name']}, {best['val_accuracy']:.4f}) beat the recipe's losses by "
                          f"no more than one validation standard error ({se:.4f})")
    return {"source": pick["name"], "losses": pick["losses"], "val_accuracy": pick["val_accuracy"], "why": why,
            "val_se": se, "best": best["name"], "teacher_used": pick["losses"] != CE_ONLY}


def _describe(terms: list[dict[str, Any]] | None) -> str:
    if not terms:
        return "n/a"
    return " + ".join(f"{t['name']}" + (f"×{t['weight']:.2g}" if isinstance(t.get("weight"), (int, float)) else "")
                      + (f" T={t.get('temperature', t.get('tau')):.2g}" if t.get("temperature", t.get("tau")) else "")
                      + (" std" if t.get("standardize") else "") for t in terms)


def describe_losses(terms: list[dict[str, Any]] | None) -> str:
    """Short text of a loss list: 'ce×0.1 + kd_soft×0.9 T=2'."""
    return _describe(terms)
