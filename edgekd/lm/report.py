"""The causal-LM run report: perplexity vs size vs tokens/s per file, the training curve, sample generations."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _fmt(x: Any, spec: str = ".2f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "—"


def write_report(out: Path, recipe, metrics: dict[str, dict]) -> tuple[dict[str, Path], dict[str, Any]]:
    """report.md and report.json from the stage metrics; returns (outputs, summary)."""
    t, d = metrics.get("teacher", {}), metrics.get("distill", {})
    ver, prof = metrics.get("verify", {}).get("files", {}), metrics.get("profile", {}).get("files", {})
    sizes = {f["name"]: f["bytes"] for f in metrics.get("export", {}).get("files", [])}
    rows = []
    for name in sizes:
        v, p = ver.get(name, {}), prof.get(name, {})
        rows.append({"file": name, "mb": sizes[name] / 1e6, "ppl": v.get("perplexity"),
                     "ppl_torch": v.get("reference_perplexity"), "block": (v.get("blocks") or [None, None])[-1],
                     "greedy": v.get("greedy_agreement"), "ttft_ms": p.get("ttft_ms", {}).get("p50"),
                     "prefill": p.get("prefill_tokens_per_s", {}).get("p50"),
                     "decode": p.get("decode_tokens_per_s", {}).get("p50"),
                     "decode_p90": p.get("decode_tokens_per_s", {}).get("p90"), "decode_kind": p.get("decode_kind"),
                     "peak_rss_mb": (p.get("memory") or {}).get("peak_rss_mb")})
    lines = [f"# {recipe.name}: causal-LM distillation", "",
             f"Teacher `{t.get('teacher')}`: held-out perplexity {_fmt(t.get('ppl_heldout'))}, "
             f"out-of-domain {_fmt(t.get('ppl_ood'))}.",
             f"Student ({d.get('method')}, init {d.get('init')}, {d.get('params')} parameters): held-out perplexity "
             f"{_fmt(d.get('ppl_heldout'))}, out-of-domain {_fmt(d.get('ppl_ood'))}; trained on "
             f"{d.get('train', {}).get('tokens')} tokens at {d.get('train', {}).get('tokens_per_s')} tokens/s.", "",
             "Perplexity vs size vs speed per file, each in its own runtime on this machine (cpu-local, "
             f"{metrics.get('profile', {}).get('threads', '?')} thread(s)); peak RSS of a child process running it. "
             "Perplexity is scored on the held-out blocks cut to the length the file takes (a KV-cache .tflite: its "
             "prefill length), beside the torch student's on the same tokens:", "",
             "| file | MB | perplexity (torch) | block tokens | greedy agreement | TTFT ms p50 | prefill tok/s p50 "
             "| decode tok/s p50/p90 | decode | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['mb']:.1f} | {_fmt(r['ppl'])} ({_fmt(r['ppl_torch'])}) | {r['block'] or '—'} "
              f"| {_fmt(r['greedy'])} | {_fmt(r['ttft_ms'], '.1f')} "
              f"| {_fmt(r['prefill'], '.0f')} | {_fmt(r['decode'], '.1f')} / {_fmt(r['decode_p90'], '.1f')} "
              f"| {r['decode_kind'] or '—'} | {_fmt(r['peak_rss_mb'], '.0f')} |" for r in rows]
    phones = metrics.get("profile", {}).get("phones", {})
    phone_rows = [(t, f, rec) for t, figs in phones.items() for f, rec in figs.items()]
    if phone_rows:
        lines += ["", "## Phones", "", "| file | target | source | TTFT ms | prefill tok/s | decode tok/s |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {f} | {t} | {'**PREDICTED**' if rec['source'] == 'predicted' else 'measured'} "
                  f"| {_fmt(rec.get('ttft_ms'), '.1f')} | {_fmt(rec.get('prefill_tokens_per_s'), '.0f')} "
                  f"| {_fmt(rec.get('decode_tokens_per_s'), '.1f')} |" for t, f, rec in phone_rows]
        lines += ["", "Predicted = not measured: " + next((r["assumptions"] for _, _, r in phone_rows
                                                           if r.get("assumptions")), "")]
    bundle = metrics.get("bundle", {}).get("archives", [])
    if bundle:
        lines += ["", f"Bundle: `{bundle[0]['path']}` ({bundle[0]['bytes'] / 1e6:.1f} MB, sha256 "
                      f"{bundle[0]['sha256'][:16]}...); check it with `edgekd bundle verify`."]
    errors = metrics.get("export", {}).get("errors", {})
    if errors:
        lines += ["", "## Files that did not convert", ""] + [f"- `{k}`: {v}" for k, v in errors.items()]
    curve = d.get("train", {}).get("curve", [])
    if curve:
        every = max(1, len(curve) // 10)
        lines += ["", "## Training loss", "", "step " + " ".join(f"{i}:{c:.2f}" for i, c in
                                                                    list(enumerate(curve))[::every])]
    if d.get("samples"):
        lines += ["", "## Sample generations (greedy, same held-out prompts)"]
    for s in d.get("samples", []):
        lines += ["", f"**Prompt** {s['prompt']!r}", f"- teacher: {s['teacher']!r}", f"- student: {s['student']!r}"]
    summary = {"teacher": {k: t.get(k) for k in ("teacher", "ppl_heldout", "ppl_ood", "params")},
               "student": {k: d.get(k) for k in ("method", "init", "params", "ppl_heldout", "ppl_ood")},
               "files": rows, "phones": phones, "errors": errors, "samples": d.get("samples", [])}
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return {"report": out / "report.md", "summary": out / "report.json"}, summary
