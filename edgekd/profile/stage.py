"""The profile stage: every file on every recipe target, measured where the device is reachable, else predicted.

A cpu target is this machine: always measured. An Android or Jetson target is measured over adb/SSH when its
connection answers; when it does not (no phone attached, host unreachable), the figure is predicted by the
calibrated cost model and labelled so, with the reason, never silently passed off as a measurement.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from edgekd.errors import EdgeKDError


def profile_run_files(files: Sequence[Path], targets: Sequence[str], *, threads: int | None = None,
                      max_seconds: float = 2.0, min_runs: int = 50, input_shape: Sequence[int] | None = None,
                      progress: bool = True, remote: str = "auto", timeout_s: float | None = None,
                      require_runnable: bool = False, log: Callable[[str], None] = lambda m: None) -> dict[str, Any]:
    """Profile `files` on each target; returns {"targets": [{"target", "results", "verdicts", "note"}, ...]}.

    Each file is timed with every runtime of the target that runs its type, so int8 and fp32 are compared per
    runtime. Each target is loaded once and handed to the runner of its kind.

    Args:
        remote: "auto" (measure a remote target when reachable, else predict), "measure" (fail when it is not),
            "predict" (never connect).
        input_shape: the model's input (N, C, H, W), for the predictor's layer walk and torch files.
        timeout_s: the longest one device command may take (None: the target's connect timeouts).
        require_runnable: raise EdgeKDError when a target runs none of the files (`edgekd profile`); else (the
            pipeline) the target gets a note.
    """
    from edgekd.profile.runners import measure, plan_jobs, runner_for, target_runtimes
    from edgekd.profile.targets import load_target

    if remote not in ("auto", "measure", "predict"):
        raise EdgeKDError(f"remote must be auto, measure or predict, got {remote!r}")
    out = []
    for name in targets:
        target = load_target(name)
        runner = runner_for(target.kind)
        jobs, skipped = plan_jobs(files, target)
        runs = ", ".join(target_runtimes(target))
        if require_runnable and not jobs:
            raise EdgeKDError(f"{target.name} runs none of these files ({', '.join(Path(f).name for f in files)}): "
                              f"it runs {runs}; export a format one of them executes")
        notes = [f"{', '.join(f.name for f in skipped)} skipped: {target.name} runs {runs}"] if skipped else []
        options = dict(threads=threads, progress=progress, timeout_s=timeout_s, time_cap_s=max_seconds,
                       min_runs=min_runs)
        if runner.local:
            results = measure(target, jobs, min_time_s=min(0.5, max_seconds), input_shape=input_shape, **options)
        else:
            results = None
            if remote != "predict" and jobs:
                try:
                    results = measure(target, jobs, **options)
                except EdgeKDError as e:
                    if remote == "measure":
                        raise
                    notes.insert(0, f"not measured ({e}); predicted instead")
            elif jobs:
                notes.insert(0, "predicted (remote measurement off)")
            if results is None:
                results = _predicted(target, jobs, input_shape, threads)
        metrics = _target_metrics(target.name, results, "; ".join(notes), log)
        out.append(metrics)
    return {"targets": out}


def _predicted(target, jobs, input_shape: Sequence[int] | None, threads: int | None) -> list:
    from edgekd.profile.predict import predict
    from edgekd.profile.result import detect_precision, file_bytes

    return [predict(j.path, target, runtime=j.runtime, precision=detect_precision(j.path), input_shape=input_shape,
                    threads=threads).to_result(j.name, file_bytes(j.path)) for j in jobs]


def _target_metrics(target: str, results: Sequence[Any], note: str, log: Callable[[str], None]) -> dict[str, Any]:
    metrics = profile_metrics(target, results)
    if note:
        metrics["note"] = note
        log(f"profile: {target}: {note}")
    for r in metrics["results"]:
        kind = "measured" if r["measured"] else f"predicted ±{(r['uncertainty'] or 0) * 100:.0f}%"
        log(f"profile: {target:<16} {r['name']:<22} {r['runtime']:<12} p50 {r['p50_ms']:.3f} ms ({kind})"
            f"{'  CV>5%' if r.get('cv_flag') else ''}")
    for v in metrics["verdicts"]:
        log(f"profile: {v.get('text', v)}")
    return metrics


def profile_metrics(target: str, results: Sequence[Any]) -> dict:
    """The "profile" stage metrics of one target: {"target", "results", "verdicts"}."""
    from edgekd.profile.verdict import verdicts

    return {"target": target, "results": [r.to_metrics() for r in results],
            "verdicts": [v.to_dict() for v in verdicts(results)]}


def format_profile(metrics: dict[str, Any]) -> str:
    """A plain table of a profile result for the terminal."""
    lines = []
    for t in metrics["targets"]:
        lines.append(f"target {t['target']}" + (f"  ({t['note']})" if t.get("note") else ""))
        lines.append(f"  {'file':<26} {'runtime':<12} {'prec':<5} {'p50 ms':>8} {'p90':>8} {'p99':>8} {'CV':>6} "
                     f"{'init ms':>8} {'size KiB':>9}  basis")
        for r in t["results"]:
            def f(v, fmt=".3f"):
                return format(v, fmt) if isinstance(v, (int, float)) else "-"
            basis = "measured" if r["measured"] else f"predicted ±{(r.get('uncertainty') or 0) * 100:.0f}%"
            lines.append(f"  {r['name']:<26} {r['runtime']:<12} {r['precision']:<5} {f(r['p50_ms']):>8} "
                         f"{f(r['p90_ms']):>8} {f(r['p99_ms']):>8} {f(r['cv'], '.1%'):>6}"
                         f"{'!' if r.get('cv_flag') else ' '}{f(r['init_ms'], '.1f'):>8} "
                         f"{f((r['bytes'] or 0) / 1024, '.1f'):>9}  {basis}")
        for v in t.get("verdicts", []):
            lines.append(f"  {v.get('text', v)}")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- the stage
# Declared by the pipeline's stage registry (edgekd.stages); the functions above are the profile package's own.


def run_profile(ctx) -> tuple[dict[str, Path], dict[str, Any]]:
    """Latency of every exported file on each recipe target (measured locally, predicted elsewhere)."""
    r = ctx.recipe
    files = [ctx.run_dir / f["path"] for f in ctx.record("export").metrics["files"]]
    metrics = profile_run_files(files, r.profile.targets, threads=r.profile.threads,
                                max_seconds=r.profile.max_seconds, min_runs=r.profile.min_runs,
                                input_shape=(1, *ctx.dataset.input_shape), progress=ctx.progress, log=ctx.log)
    return {}, metrics


def _register_profile_stage() -> None:
    from edgekd.stages import Stage, register_stage

    register_stage(Stage("profile", run_profile, sections=("profile",), upstream=("export",),
                         missing="no latency: no latency tables, accuracy-vs-latency or int8-vs-fp32 plots"))


_register_profile_stage()
