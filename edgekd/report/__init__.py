"""Run reports: Markdown/HTML with embedded plots, results.json for scripts."""
from edgekd.report.build import ReportPaths, build_report
from edgekd.report.results import choose_shipped, collect_results, pareto_front, results_json
from edgekd.runs import RunRecord, load_run

__all__ = ["ReportPaths", "build_report", "choose_shipped", "collect_results", "pareto_front", "results_json",
           "RunRecord", "load_run"]
