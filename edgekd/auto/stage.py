"""The stages of automatic distillation (docs/auto.md), found by the stage registry like any edgekd/<pkg>/stage.py.

- `baseline`: the same student without the teacher (edgekd.auto.baseline); teacher-independent.
- `kd_gain`: distilled vs baseline student on the same test images, with a paired bootstrap interval.
- `tune`: KD losses chosen on the validation split with Optuna (edgekd.auto.tune); on with distill.auto. The
  distill stage trains with its choice.
- `search`: the most accurate student inside a latency budget per target (edgekd.auto.search); on with
  search.enabled. Its chosen student is written into search/recipe.yaml, which `edgekd run` continues with.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.auto.baseline import baseline_enabled, baseline_inputs, image_task, run_baseline, run_kd_gain
from edgekd.stages import Stage, register_stage

if TYPE_CHECKING:
    from edgekd.pipeline import RunContext


def _teacher(ctx: "RunContext"):
    from edgekd.distill.stage import load_run_teacher

    return load_run_teacher(ctx)


def run_tune(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    import yaml

    from edgekd.auto.tune import tune_losses
    from edgekd.fileio import write_text

    result = tune_losses(ctx.dataset, ctx.recipe, _teacher(ctx), log=ctx.log)
    path = write_text(ctx.stage_dir("tune") / "losses.yaml",
                      yaml.safe_dump({"distill": {"losses": result["chosen"]["losses"]}}, sort_keys=False))
    return {"losses": Path(path)}, result


def tuned_losses(ctx: "RunContext") -> list[dict[str, Any]] | None:
    """The losses the tune stage chose for this run (None when it did not run): what distill trains with."""
    rec = ctx.records.get("tune")
    if rec is None or not ctx.recipe.distill.auto:
        return None
    return [dict(t) for t in rec.metrics["chosen"]["losses"]]


def run_search(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    from edgekd.auto.search import search_students
    from edgekd.config import dump_recipe
    from edgekd.fileio import write_text

    r = ctx.recipe
    result = search_students(ctx.dataset, r, _teacher(ctx) if r.distill.enabled else None, log=ctx.log)
    chosen = copy_recipe(r)
    chosen.student.model, chosen.student.kwargs = result["chosen"]["model"], dict(result["chosen"]["kwargs"])
    chosen.student.weights = None
    path = write_text(ctx.stage_dir("search") / "recipe.yaml",
                      f"# {r.name} with the student chosen by `edgekd search` (search/stage.json)\n"
                      + dump_recipe(chosen))
    return {"recipe": Path(path)}, result


def copy_recipe(recipe):
    import copy

    return copy.deepcopy(recipe)


def search_inputs(recipe) -> dict[str, Any]:
    """Fingerprint of tune and search: the recipe's KD losses and training budget (not the whole distill section)."""
    from dataclasses import asdict

    return {"losses": recipe.distill.losses, "train": asdict(recipe.distill.train),
            "batch_size": recipe.data.batch_size}


register_stage(Stage("baseline", run_baseline, sections=("student",), inputs=baseline_inputs,
                     enabled=baseline_enabled,
                     missing="no no-teacher baseline: the report cannot say whether distillation paid"))
register_stage(Stage("tune", run_tune, sections=("student", "tune"), upstream=("teacher",), inputs=search_inputs,
                     enabled=lambda r: image_task(r) and bool(r.distill.enabled and r.distill.auto)
                     and r.distill.mode == "teacher",
                     missing="no measured choice of KD settings (the recipe's losses were used as written)"))
register_stage(Stage("search", run_search, sections=("search",), upstream=("teacher",), inputs=search_inputs,
                     enabled=lambda r: image_task(r) and bool(r.search.enabled),
                     missing="no student search: no accuracy-latency front of candidate students"))
register_stage(Stage("kd_gain", run_kd_gain, upstream=("distill", "baseline"), enabled=baseline_enabled,
                     missing="no verdict on whether distillation paid over the no-teacher baseline"))
