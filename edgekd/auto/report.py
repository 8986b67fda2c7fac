"""What the report shows of baseline, kd_gain, tune and search: results.json's "auto" part, verdicts, tables, plot.

The report modules call these (edgekd.report.results / render / build); everything here reads results dicts
built from the run directory alone.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgekd.runs import RunRecord

DROP_KEYS = ("history", "curve")


def auto_results(run: "RunRecord") -> dict[str, Any]:
    """{"gain", "baseline", "tune", "search"}: the records of those stages (curves left out), {} parts absent."""
    out: dict[str, Any] = {}
    for key, stage in (("gain", "kd_gain"), ("baseline", "baseline"), ("tune", "tune"), ("search", "search")):
        m = run.metrics(stage)
        if m:
            out[key] = {k: v for k, v in m.items() if k not in DROP_KEYS}
    if out and "distill" in run.records:
        out["distill_seconds"] = run.records["distill"].wall_time_s   # what each automatic choice is measured against
    gain = out.get("gain") or {}
    now = {s: run.records[s].fingerprint for s in ("distill", "baseline") if s in run.records}
    if gain.get("ran") and gain.get("compared") and gain["compared"] != now:
        gain["stale"] = True   # the students it compared were re-trained since (e.g. `edgekd run --until distill`)
    return out


def auto_verdicts(results: dict[str, Any]) -> list[str]:
    """The first verdicts: whether distillation paid, what tune chose, what search chose."""
    a = results.get("auto") or {}
    out: list[str] = []
    gain, base = a.get("gain") or {}, a.get("baseline") or {}
    if base and not base.get("ran"):
        out.append(f"No no-teacher baseline was trained ({base.get('reason')}): this run cannot say whether "
                   "distillation paid.")
    elif gain.get("stale"):
        out.append("The no-teacher comparison is out of date: the distilled or the baseline student was re-trained "
                   "since it was made; run the recipe to the end (edgekd run) to refresh it.")
    elif gain.get("ran"):
        out.append(gain["verdict"])
    t = a.get("tune") or {}
    if t.get("chosen"):
        from edgekd.auto.tune import describe_losses

        c = t["chosen"]
        n = len(t.get("trials", []))
        line = (f"KD settings chosen on the validation split ({t['split'].get('val')} images): {c['source']} "
                f"({describe_losses(c['losses'])}), validation {c['val_accuracy'] * 100:.2f}% after {n} proxy runs "
                f"in {t.get('spent_s', 0):.0f} s")
        line += _cost(t.get("spent_s"), a.get("distill_seconds"))
        if not c.get("teacher_used", True):
            line += "; cross-entropy alone won, so the student trains without the teacher"
        out.append(line + ".")
    s = a.get("search") or {}
    if s.get("chosen"):
        c = s["chosen"]
        lat = ", ".join(f"{tg} {v['ms']:.3g} ms ({'measured' if v.get('measured_ms') is not None else 'predicted'})"
                        for tg, v in c["latency"].items())
        budget = ", ".join(f"{tg} ≤ {b:g} ms" for tg, b in (s.get("budgets_ms") or {}).items()) or "no budget"
        line = (f"Student search ({len(s.get('candidates', []))} candidates, {budget}): {c['name']}, "
                f"{c['params']:,} params, {lat}, proxy validation {c['val_accuracy'] * 100:.2f}%")
        rho = (s.get("rank_check") or {}).get("spearman")
        if rho is not None:
            line += f"; proxy vs full-training rank agreement (Spearman) {rho:.2f}"
        out.append(line + _cost(s.get("seconds"), a.get("distill_seconds")) + ".")
    return out


def _cost(seconds: Any, distill_seconds: Any) -> str:
    """' (3.1x the distill stage's time)': what an automatic choice cost, next to one distillation run."""
    if isinstance(seconds, (int, float)) and isinstance(distill_seconds, (int, float)) and distill_seconds > 0:
        return f" ({seconds / distill_seconds:.1f}x the distill stage's time)"
    return ""


def auto_tables(results: dict[str, Any]) -> list[Any]:
    from edgekd.report.render import Table

    a = results.get("auto") or {}
    out = []
    gain = a.get("gain") or {}
    if gain.get("ran") and not gain.get("stale"):
        lo, hi = gain["ci95_pt"]
        out.append(Table("Distillation vs the same student without the teacher",
                         ["student", "losses", "test top-1", "gain", "95% interval (bootstrap)", "train s"],
                         [["distilled", _losses(gain.get("kd_losses")), _pct(gain["kd_accuracy"]),
                           f"{gain['gain_pt']:+.2f} ± {gain['pm_pt']:.2f} pt", f"[{lo:+.2f}, {hi:+.2f}] pt",
                           _s(gain.get("kd_seconds"))],
                          ["no teacher (CE)", "ce", _pct(gain["baseline_accuracy"]), "", "",
                           _s(gain.get("baseline_seconds"))]],
                         f"Same student, data, seed, initial weights and epochs. ± = 1.96 x the standard error of a "
                         f"paired bootstrap over the {gain['images']} test images ({gain['n_boot']} resamples)"
                         + (f" and the spread over {gain['seeds']} seeds" if gain.get("seeds", 1) > 1 else
                            "; one seed, so seed-to-seed spread is not included") + "."))
    t = a.get("tune") or {}
    if t.get("trials"):
        chosen = (t.get("chosen") or {}).get("source")
        rows = [[("★ " if r["name"] == chosen else "") + r["name"], _losses(r.get("losses")),
                 _pct(r.get("val_accuracy")), str(r.get("state")), _s(r.get("seconds"))] for r in t["trials"]]
        p = t.get("proxy") or {}
        out.append(Table("KD settings tried (tune)", ["run", "losses", "validation top-1", "state", "s"], rows,
                         f"Proxy runs: {p.get('epochs')} epochs on {p.get('train_images')} training images, scored on "
                         f"the validation split (never the test set); Optuna {t.get('optuna')} {t.get('sampler')} "
                         f"sampler, {t.get('pruner')} pruner, budget {t.get('budget_s'):g} s, spent "
                         f"{t.get('spent_s'):g} s. ★ = chosen ({(t.get('chosen') or {}).get('why')})."))
    if t.get("confirm"):
        chosen = (t.get("chosen") or {}).get("source")
        out.append(Table("KD settings re-trained with the full budget (tune's choice is made here)",
                         ["run", "losses", "proxy val top-1", "full val top-1", "s"],
                         [[("★ " if r["name"] == chosen else "") + r["name"], _losses(r.get("losses")),
                           _pct(r.get("proxy_val_accuracy")), _pct(r.get("val_accuracy")), _s(r.get("seconds"))]
                          for r in t["confirm"]],
                         "The recipe's losses, cross-entropy alone and the best proxy runs, each trained with "
                         "distill.train's epochs on all training images and scored on the validation split: a "
                         "short proxy ranks settings but does not predict the full run."))
    s = a.get("search") or {}
    for target, front in (s.get("fronts") or {}).items():
        budget = (s.get("budgets_ms") or {}).get(target)
        rows = []
        for c in sorted((c for c in s.get("candidates", []) if target in c.get("latency", {})),
                        key=lambda c: c["latency"][target]["ms"]):
            lat = c["latency"][target]
            mark = ("★ " if c["name"] == s["chosen"]["name"] else "") + ("◆ " if c["name"] in front else "")
            err = lat.get("prediction_error")
            rows.append([mark + c["name"], f"{c.get('params', 0):,}", _ms(lat.get("predicted_ms")),
                         _ms(lat.get("measured_ms")), "—" if err is None else f"{err:+.0%}",
                         _pct(c.get("val_accuracy")), "yes" if c.get("within_budget") else "no"])
        note = "◆ = on the accuracy-latency Pareto front; ★ = chosen (most accurate inside every budget). " \
               "Written to search/recipe.yaml: `edgekd run` it to continue."
        pe, refit = s.get("prediction_errors") or {}, s.get("latency_refit") or {}
        if target == "cpu-local" and pe:
            note += (f" Predicted vs measured: {pe['within_10pct']}/{pe['n']} candidates within ±10% (median "
                     f"|error| {pe['median_abs_error']:.0%})")
            note += f"; predictor {refit['note']}." if refit.get("note") else "."
        out.append(Table(f"Student search on {target}" + (f" (budget {budget:g} ms)" if budget else ""),
                         ["candidate", "params", "predicted ms", "measured ms", "error", "proxy val top-1",
                          "in budget"], rows, note))
    rc = s.get("rank_check") or {}
    if rc.get("trained"):
        out.append(Table("Proxy ranking vs full training", ["candidate", "proxy val top-1", "full val top-1", "s"],
                         [[r["name"], _pct(r["proxy_val"]), _pct(r["full_val"]), _s(r.get("seconds"))]
                          for r in rc["trained"]],
                         f"Spearman rank correlation: {rc['spearman']:.2f}." if rc.get("spearman") is not None
                         else "Too few candidates for a rank correlation."))
    return out


def search_pareto(results: dict[str, Any], path: Path) -> Path | None:
    """Proxy accuracy vs latency of every search candidate, one panel per target, the front joined."""
    s = (results.get("auto") or {}).get("search") or {}
    fronts = s.get("fronts") or {}
    if not fronts:
        return None
    from edgekd.report.plots import _pyplot, _save

    plt = _pyplot()
    fig, axes = plt.subplots(1, len(fronts), figsize=(5.5 * len(fronts), 4), squeeze=False)
    for ax, (target, front) in zip(axes[0], fronts.items()):
        pts = [c for c in s["candidates"] if target in c.get("latency", {}) and c.get("val_accuracy") is not None]
        for c in pts:
            ax.scatter(c["latency"][target]["ms"], c["val_accuracy"] * 100, s=30,
                       color="#2a9d8f" if c["name"] in front else "#9aa5b8", zorder=3)
        fp = sorted((c for c in pts if c["name"] in front), key=lambda c: c["latency"][target]["ms"])
        ax.plot([c["latency"][target]["ms"] for c in fp], [c["val_accuracy"] * 100 for c in fp], color="#2a9d8f")
        ch = s["chosen"]
        if target in ch["latency"]:
            ax.scatter(ch["latency"][target]["ms"], ch["val_accuracy"] * 100, marker="*", s=220, color="#e76f51",
                       zorder=4, label=f"chosen: {ch['name']}")
        budget = (s.get("budgets_ms") or {}).get(target)
        if budget:
            ax.axvline(budget, color="#c0392b", linestyle="--", label=f"budget {budget:g} ms")
        ax.set_xlabel(f"p50 latency on {target} (ms)")
        ax.set_ylabel("proxy validation top-1 (%)")
        ax.set_title(target)
        ax.legend(fontsize=7)
    return _save(fig, path, plt)


def _losses(terms) -> str:
    from edgekd.auto.tune import describe_losses

    return describe_losses(terms)


def _pct(x: Any) -> str:
    return f"{x * 100:.2f}%" if isinstance(x, (int, float)) else "n/a"


def _ms(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, (int, float)) else "n/a"


def _s(x: Any) -> str:
    return f"{x:.1f}" if isinstance(x, (int, float)) else "n/a"
