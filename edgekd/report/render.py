"""Render results into report.md and a self-contained report.html (inline CSS, plots as base64 PNG)."""
from __future__ import annotations

import base64
import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekd.report.results import _num, format_bytes, missing_effect

PLOT_TITLES = {"accuracy_vs_latency": "Accuracy vs latency per target (Pareto front marked)",
               "training_curves": "Training curves: total loss and each part, accuracy",
               "int8_vs_fp32": "int8 vs fp32 per runtime: latency and size",
               "search_pareto": "Student search: proxy accuracy vs latency per target (Pareto front joined)"}


@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    note: str = ""


def _pct(x: Any) -> str:
    return f"{x * 100:.2f}%" if _num(x) else "n/a"


def _ms(x: Any) -> str:
    return f"{x:.3g}" if _num(x) else "n/a"


def _parity(row: dict[str, Any]) -> str:
    if row.get("parity_ok") is None:
        return "" if row.get("kind") == "trained" else "not verified"
    diff = f" (max diff {row['max_abs_diff']:.2g} vs {row.get('reference')})" if _num(row.get("max_abs_diff")) else ""
    return ("ok" if row["parity_ok"] else "FAILED") + diff


def _source(r: dict[str, Any]) -> str:
    if r.get("measured"):
        return "measured"
    unc = f" ±{r['uncertainty'] * 100:.0f}%" if _num(r.get("uncertainty")) else " (uncertainty unknown)"
    return f"predicted{unc}"


def tables(results: dict[str, Any]) -> list[Table]:
    out = [Table("Accuracy", ["model", "kind", "runtime", "precision", "top-1", "parity vs reference"],
                 [[r["model"], r["kind"], str(r.get("runtime")), str(r.get("precision")), _pct(r.get("accuracy")),
                   _parity(r)] for r in results["accuracy"]],
                 "The number users get is the exported file's, run in its own runtime.")]
    for target, rows in results["latency"].items():
        front = results["pareto"].get(target, [])
        devices = sorted({str(r.get("device")) for r in rows if r.get("device")})
        versions = sorted({f"{r.get('runtime')} {r.get('runtime_version')}" for r in rows if r.get("runtime_version")})
        where = f"Device: {', '.join(devices) or 'n/a'}; runtimes: {', '.join(versions) or 'n/a'}. "
        out.append(Table(
            f"Latency on {target}",
            ["file", "runtime", "precision", "threads", "p50 ms", "p90 ms", "p99 ms", "CV", "init ms", "size",
             "top-1", "figure"],
            [[("★ " if r["name"] in front else "") + str(r["name"]), str(r.get("runtime")), str(r.get("precision")),
              str(r.get("threads", "")), _ms(r.get("p50_ms")), _ms(r.get("p90_ms")), _ms(r.get("p99_ms")),
              (f"{r['cv'] * 100:.1f}%" if _num(r.get("cv")) else "n/a") + (" ⚠ noisy" if r.get("cv_flag") else ""),
              _ms(r.get("init_ms")), format_bytes(r.get("bytes")), _pct(r.get("accuracy")), _source(r)]
             for r in rows],
            where + "★ = on the Pareto front (no other file is both faster and more accurate). ⚠ = CV above 5%: "
            "re-measure on a quieter device before trusting small differences."))
    quant = results.get("quantization") or {}
    sens = quant.get("sensitivity") or {}
    if sens.get("table"):
        fb = quant.get("fallback") or {}
        out.append(Table(
            "int8 sensitivity per layer",
            ["layer", "op", "accuracy with this layer in float", "gain over full int8"],
            [[str(t.get("layer")), str(t.get("kind", "")), _pct(t.get("accuracy")), f"{(t.get('delta') or 0) * 100:+.2f} pt"]
             for t in sens["table"]],
            f"PTQ min-max with scheme {(quant.get('scheme') or {}).get('name')}, on {quant.get('sensitivity_samples')} "
            f"held-out training images: full int8 {_pct(sens.get('int8_accuracy'))}, fp32 {_pct(sens.get('fp32_accuracy'))}. "
            + (f"Keeping {', '.join(fb.get('keep_float') or [])} in float gives {_pct(fb.get('accuracy'))} at "
               f"{format_bytes(fb.get('bytes'))} (full int8 {format_bytes(fb.get('int8_bytes'))})." if fb else "")))
    from edgekd.auto.report import auto_tables

    out += auto_tables(results)
    if results["files"] and not results["latency"]:
        out.append(Table("Exported files", ["file", "format", "runtime", "precision", "size", "top-1"],
                         [[f["name"], str(f.get("format")), str(f.get("runtime")), str(f.get("precision")),
                           format_bytes(f.get("bytes")), _pct(f.get("accuracy"))] for f in results["files"]]))
    return out


def headline_rows(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(figure, shipped file, teacher) rows for the headline block."""
    h = results.get("headline")
    if not h:
        return []
    lat = "n/a"
    if _num(h.get("p50_ms")):
        lat = f"{h['p50_ms']:.3g} ms " + ("measured" if h.get("measured") else
                                          "predicted" + (f" ±{h['uncertainty'] * 100:.0f}%"
                                                         if _num(h.get("uncertainty")) else ""))
    teacher_size = (format_bytes(h["teacher_bytes_estimate"]) + " (fp32 weights)"
                    if _num(h.get("teacher_bytes_estimate")) else "n/a")
    return [("top-1 accuracy", _pct(h.get("accuracy")), _pct(h.get("teacher_accuracy"))),
            (f"p50 latency{' on ' + h['target'] if h.get('target') else ''}", lat, "not profiled"),
            ("size", format_bytes(h.get("bytes")), teacher_size)]


def render_markdown(results: dict[str, Any], plots: dict[str, Path]) -> str:
    h = results.get("headline")
    lines = [f"# edgekd report: {results['run']}", ""]
    if h:
        lines += [f"**{h['text']}**", "", f"| | shipped: `{h['name']}` | teacher |", "|---|---|---|"]
        lines += [f"| {a} | {b} | {c} |" for a, b, c in headline_rows(results)]
        lines += ["", f"_Why this file: {h['reason']}._", ""]
    else:
        lines += ["**No exported file to ship yet.**", ""]
    if results["missing_stages"] or results["problems"]:
        lines += ["## Missing", ""]
        lines += [f"- **{s}** did not run: {missing_effect(s) or 'its figures are absent'}."
                  for s in results["missing_stages"]]
        lines += [f"- {p}" for p in results["problems"]]
        lines.append("")
    if results["summary"]:
        lines += ["## Verdicts", ""] + [f"- {s}" for s in results["summary"]] + [""]
    for t in tables(results):
        if not t.rows:
            continue
        lines += [f"## {t.title}", "", "| " + " | ".join(t.headers) + " |", "|" + "---|" * len(t.headers)]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in t.rows]
        lines += ["", f"_{t.note}_" if t.note else "", ""]
    if plots:
        lines += ["## Plots", ""]
        lines += [f"### {PLOT_TITLES.get(k, k)}\n\n![{k}]({p.name})\n" for k, p in plots.items()]
    if results["recipe"]:
        lines += ["## Recipe", ""] + [f"- `{k}`: {v}" for k, v in results["recipe"].items()] + [""]
    if results["bundle"]:
        lines += ["## Bundles", ""] + [f"- {a.get('target')}: `{a.get('path')}` ({format_bytes(a.get('bytes'))}, "
                                       f"sha256 {str(a.get('sha256'))[:16]}...)" for a in results["bundle"]] + [""]
    lines.append("All figures: results.json in this folder.")
    return "\n".join(lines) + "\n"


CSS = """
:root { --ink:#1d2433; --muted:#5b6478; --line:#e3e7ef; --accent:#2a9d8f; --bad:#c0392b; --bg:#f6f8fb; }
* { box-sizing: border-box; }
body { font: 14px/1.5 -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; color: var(--ink);
       background: var(--bg); margin: 0; }
main { max-width: 1080px; margin: 0 auto; padding: 28px 32px 48px; }
h1 { font-size: 22px; margin: 0 0 16px; } h1 small { color: var(--muted); font-weight: 400; }
h2 { font-size: 17px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 2px solid var(--line); }
.headline { background: #fff; border: 1px solid var(--line); border-left: 6px solid var(--accent);
            border-radius: 10px; padding: 18px 22px; box-shadow: 0 1px 3px rgba(0,0,0,.05); }
.headline .ship { font-size: 16px; font-weight: 600; margin-bottom: 14px; }
.cards { display: flex; gap: 14px; flex-wrap: wrap; }
.card { flex: 1 1 200px; background: var(--bg); border-radius: 8px; padding: 10px 14px; }
.card .label { color: var(--muted); font-size: 12px; text-transform: uppercase; letter-spacing: .04em; }
.card .value { font-size: 24px; font-weight: 650; }
.card .vs { color: var(--muted); font-size: 12.5px; }
.why { color: var(--muted); font-size: 12.5px; margin-top: 10px; }
.missing { background: #fff7e6; border: 1px solid #f2d49b; border-radius: 8px; padding: 10px 16px; }
ul.verdicts li { margin: 3px 0; }
table { border-collapse: collapse; width: 100%; background: #fff; border: 1px solid var(--line);
        border-radius: 8px; overflow: hidden; font-size: 13px; }
th, td { padding: 6px 8px; border-bottom: 1px solid var(--line); text-align: left; }
th, td.num { white-space: nowrap; }
th { background: #eef2f8; font-weight: 600; } tr:last-child td { border-bottom: none; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.bad { color: var(--bad); font-weight: 600; } td.ok { color: var(--accent); }
.note { color: var(--muted); font-size: 12px; margin: 6px 0 0; }
figure { background: #fff; border: 1px solid var(--line); border-radius: 8px; margin: 14px 0; padding: 12px; }
figure img { max-width: 100%; display: block; margin: 0 auto; }
figcaption { color: var(--muted); font-size: 12.5px; margin-top: 6px; text-align: center; }
.scroll { overflow-x: auto; }
dl.recipe { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; font-size: 12.5px; }
dl.recipe dt { color: var(--muted); font-family: ui-monospace, Menlo, monospace; } dl.recipe dd { margin: 0; }
"""


def _cell(text: str) -> str:
    cls = []
    if text[:1].isdigit() or text.startswith(("n/a",)):
        cls.append("num")
    if text.startswith("FAILED"):
        cls.append("bad")
    elif text.startswith("ok"):
        cls.append("ok")
    return f"<td class=\"{' '.join(cls)}\">{html.escape(text)}</td>" if cls else f"<td>{html.escape(text)}</td>"


def render_html(results: dict[str, Any], plots: dict[str, Path]) -> str:
    e = html.escape
    parts = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
             f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
             f"<title>edgekd report: {e(results['run'])}</title><style>{CSS}</style></head><body><main>",
             f"<h1>edgekd report <small>{e(results['run'])}</small></h1>"]
    h = results.get("headline")
    if h:
        cards = "".join(f"<div class=\"card\"><div class=\"label\">{e(a)}</div><div class=\"value\">{e(b)}</div>"
                        f"<div class=\"vs\">teacher: {e(c)}</div></div>" for a, b, c in headline_rows(results))
        parts.append(f"<section class=\"headline\" id=\"headline\"><div class=\"ship\">{e(h['text'])}</div>"
                     f"<div class=\"cards\">{cards}</div><div class=\"why\">Why this file: {e(h['reason'])}.</div>"
                     f"</section>")
    else:
        parts.append("<section class=\"headline\" id=\"headline\"><div class=\"ship\">No exported file to ship yet."
                     "</div></section>")
    if results["missing_stages"] or results["problems"]:
        items = [f"<li><b>{e(s)}</b> did not run: {e(missing_effect(s) or 'its figures are absent')}.</li>"
                 for s in results["missing_stages"]] + [f"<li>{e(p)}</li>" for p in results["problems"]]
        parts.append(f"<h2>Missing</h2><div class=\"missing\" id=\"missing\"><ul>{''.join(items)}</ul></div>")
    if results["summary"]:
        parts.append("<h2>Verdicts</h2><ul class=\"verdicts\">" +
                     "".join(f"<li>{e(s)}</li>" for s in results["summary"]) + "</ul>")
    for t in tables(results):
        if not t.rows:
            continue
        head = "".join(f"<th>{e(c)}</th>" for c in t.headers)
        body = "".join("<tr>" + "".join(_cell(c) for c in row) + "</tr>" for row in t.rows)
        note = f"<p class=\"note\">{e(t.note)}</p>" if t.note else ""
        parts.append(f"<h2>{e(t.title)}</h2><div class=\"scroll\"><table><thead><tr>{head}</tr></thead>"
                     f"<tbody>{body}</tbody></table></div>{note}")
    if plots:
        parts.append("<h2>Plots</h2>")
        for key, path in plots.items():
            data = base64.b64encode(Path(path).read_bytes()).decode()
            parts.append(f"<figure id=\"plot-{e(key)}\"><img alt=\"{e(PLOT_TITLES.get(key, key))}\" "
                         f"src=\"data:image/png;base64,{data}\"><figcaption>{e(PLOT_TITLES.get(key, key))}"
                         f"</figcaption></figure>")
    if results["recipe"]:
        parts.append("<h2>Recipe</h2><dl class=\"recipe\">" + "".join(
            f"<dt>{e(str(k))}</dt><dd>{e(str(v))}</dd>" for k, v in results["recipe"].items()) + "</dl>")
    if results["bundle"]:
        parts.append("<h2>Bundles</h2><ul>" + "".join(
            f"<li>{e(str(a.get('target')))}: <code>{e(str(a.get('path')))}</code> ({e(format_bytes(a.get('bytes')))})"
            f"</li>" for a in results["bundle"]) + "</ul>")
    parts.append("<p class=\"note\">All figures: results.json beside this file. Generated by edgekd.</p>"
                 "</main></body></html>")
    return "\n".join(parts) + "\n"
