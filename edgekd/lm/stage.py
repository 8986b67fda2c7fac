"""Stage declarations of the causal_lm task (edgekd.stages loads this module on first look-up).

The LM task replaces every default stage: quantization happens on the exported files (int8 dynamic range, in the
export stage), so `quantize` is off. `bundle` writes the Android-ready archive (edgekd.lm.bundle) when `bundle.enabled`.
"""
from __future__ import annotations

from edgekd.lm import stages as s
from edgekd.stages import Stage, register_stage

TASK = "causal_lm"


def _never(recipe) -> bool:
    return False


for _stage in (
    Stage("teacher", s.run_teacher, sections=("data", "teacher", "distill"), task=TASK),
    Stage("distill", s.run_distill, sections=("student", "distill"), upstream=("teacher",), task=TASK),
    Stage("quantize", s.run_export, enabled=_never, task=TASK, missing="quantization happens in export"),
    Stage("export", s.run_export, sections=("export", "quantize"), upstream=("distill",), task=TASK),
    Stage("verify", s.run_verify, sections=("verify",), upstream=("teacher", "distill", "export"), task=TASK),
    Stage("profile", s.run_profile, sections=("profile",), upstream=("export",), task=TASK),
    Stage("bundle", s.run_bundle, sections=("bundle",), upstream=("teacher", "distill", "export", "verify", "profile"),
          enabled=lambda recipe: recipe.bundle.enabled, task=TASK, missing="no app bundle archive"),
    Stage("report", s.run_report, upstream=("*",), rerun=True, task=TASK),
):
    register_stage(_stage)
