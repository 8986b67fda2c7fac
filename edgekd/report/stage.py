"""The report stage: report.md, report.html, results.json and plots, rebuilt from the run directory every run."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.stages import Stage, register_stage

if TYPE_CHECKING:
    from edgekd.pipeline import RunContext


def run_report(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    from edgekd.report import build_report

    paths = build_report(ctx.run_dir, out_dir=ctx.stage_dir("report"))
    return {p.name: p for p in paths.all()}, {}


register_stage(Stage("report", run_report, upstream=("*",), rerun=True))
