"""Latency where the model will run: targets, runners per target kind (edgekd.profile.runners: local, adb, ssh),
statistics, the predictor (edgekd.profile.predict) and int8-vs-fp32 verdicts.

Public names are re-exported lazily (PEP 562), so importing one runner does not import the others.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "edgekd.profile.predict": ("Calibration", "Layer", "Prediction", "calibrate_target", "micro_models",
                               "model_layers", "predict"),
    "edgekd.profile.result": ("LatencyResult", "detect_precision"),
    "edgekd.profile.runners": ("Job", "RUNNERS", "Runner", "profile_files", "register_runner", "runner_for"),
    "edgekd.profile.runners.adb": ("parse_benchmark_model_output", "profile_android"),
    "edgekd.profile.runners.local": ("profile_file",),
    "edgekd.profile.runners.ssh": ("parse_trtexec_output", "profile_ssh"),
    "edgekd.profile.stage": ("format_profile", "profile_metrics", "profile_run_files"),
    "edgekd.profile.stats": ("LatencyStats", "StopRule", "summarize"),
    "edgekd.profile.targets": ("Peak", "Target", "format_target", "format_targets_table", "list_targets",
                               "load_target"),
    "edgekd.profile.verdict": ("Verdict", "compare", "verdict_text", "verdicts"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str) -> Any:
    if name not in _WHERE:
        raise AttributeError(f"module 'edgekd.profile' has no attribute {name!r}")
    value = getattr(importlib.import_module(_WHERE[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
