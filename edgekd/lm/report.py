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
                     "greedy": v.get("greedy_agreement"), "ttft_ms": p.get("ttft_ms", {}).get("p50"),
                     "prefill": p.get("prefill_tokens_per_s", {}).get("p50"),
                     "decode": p.get("decode_tokens_per_s", {}).get("p50")})
    lines = [f"# {recipe.name}: causal-LM distillation", "",
             f"Teacher `{t.get('teacher')}`: held-out perplexity {_fmt(t.get('ppl_heldout'))}, "
             f"out-of-domain {_fmt(t.get('ppl_ood'))}.",
             f"Student ({d.get('method')}, init {d.get('init')}, {d.get('params')} parameters): held-out perplexity "
             f"{_fmt(d.get('ppl_heldout'))}, out-of-domain {_fmt(d.get('ppl_ood'))}; trained on "
             f"{d.get('train', {}).get('tokens')} tokens at {d.get('train', {}).get('tokens_per_s')} tokens/s.", "",
             "| file | MB | perplexity | greedy agreement | TTFT ms p50 | prefill tok/s p50 | decode tok/s p50 |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['file']} | {r['mb']:.1f} | {_fmt(r['ppl'])} | {_fmt(r['greedy'])} | {_fmt(r['ttft_ms'], '.1f')} "
              f"| {_fmt(r['prefill'], '.0f')} | {_fmt(r['decode'], '.1f')} |" for r in rows]
    errors = metrics.get("export", {}).get("errors", {})
    if errors:
        lines += ["", "## Files that did not convert", ""] + [f"- `{k}`: {v}" for k, v in errors.items()]
    curve = d.get("train", {}).get("curve", [])
    if curve:
        every = max(1, len(curve) // 10)
        lines += ["", "## Training loss", "", "step " + " ".join(f"{i}:{c:.2f}" for i, c in
                                                                    list(enumerate(curve))[::every])]
    for s in d.get("samples", []):
        lines += ["", f"**Prompt** {s['prompt']!r}", f"- teacher: {s['teacher']!r}", f"- student: {s['student']!r}"]
    summary = {"teacher": {k: t.get(k) for k in ("teacher", "ppl_heldout", "ppl_ood", "params")},
               "student": {k: d.get(k) for k in ("method", "init", "params", "ppl_heldout", "ppl_ood")},
               "files": rows, "errors": errors}
    (out / "report.md").write_text("\n".join(lines) + "\n")
    (out / "report.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    return {"report": out / "report.md", "summary": out / "report.json"}, summary
