"""build_report: everything in runs/<name>/report/ rebuilt from the run directory alone."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from edgekd.fileio import write_json, write_text
from edgekd.auto.report import search_pareto
from edgekd.report.plots import accuracy_vs_latency, int8_vs_fp32, training_curves
from edgekd.report.render import render_html, render_markdown
from edgekd.report.results import collect_results
from edgekd.runs import load_run

PLOTS = {"accuracy_vs_latency": accuracy_vs_latency, "training_curves": training_curves,
         "int8_vs_fp32": int8_vs_fp32, "search_pareto": search_pareto}


@dataclass
class ReportPaths:
    """Where build_report wrote its files."""

    markdown: Path
    html: Path
    results: Path
    plots: dict[str, Path] = field(default_factory=dict)

    def all(self) -> list[Path]:
        """Every file written (the report stage's outputs)."""
        return [self.markdown, self.html, self.results, *self.plots.values()]


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> ReportPaths:
    """Write report.md, report.html, results.json and the plots into run_dir/report (or out_dir)."""
    run = load_run(run_dir)
    out = Path(out_dir) if out_dir is not None else run.root / "report"
    out.mkdir(parents=True, exist_ok=True)
    results = collect_results(run)
    plots: dict[str, Path] = {}
    for name, draw in PLOTS.items():
        target = out / f"{name}.png"
        made = draw(results, target)
        if made is not None:
            plots[name] = made
        elif target.exists():  # a stale plot from an earlier, fuller run would contradict the report
            target.unlink()
    results["plots"] = {k: p.name for k, p in plots.items()}
    paths = ReportPaths(out / "report.md", out / "report.html", out / "results.json", plots)
    write_json(paths.results, results)
    write_text(paths.markdown, render_markdown(results, plots))
    write_text(paths.html, render_html(results, plots))
    return paths
