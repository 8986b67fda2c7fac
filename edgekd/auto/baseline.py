"""The no-teacher baseline and the verdict "distillation gained X ± Y pt over the same student without the teacher".

`baseline` trains the recipe's student on the same training split, with the same optimisation settings
(distill.train), seed and initial weights as the distill stage, from the labels alone (cross-entropy). It does
not read the teacher, so a new teacher or new KD losses never re-train it.

`kd_gain` scores both students on the same test images and reports the paired gain with a bootstrap interval
(edgekd.auto.stats). When it loses, it says so and what to try.

`distill.baseline`: true (always), false (never), "auto" (default): trained when the student's training is cheap,
i.e. its estimated work (forward + backward ~ 3 x MACs per image x training images x epochs) is at most
AUTO_MAX_TFLOP; otherwise the stage records why it skipped and the report says how to turn it on. It never costs
more than the distill stage (same student and epochs, no teacher, no KD loss).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.auto.proxy import build_student, count_macs, predictions, split_record
from edgekd.auto.stats import paired_bootstrap

if TYPE_CHECKING:
    from edgekd.config import Recipe
    from edgekd.pipeline import RunContext

# The demo's student (tiny_cnn 16/3: 0.55 MMAC per image, 54k images, 8 epochs) is ~0.7 TFLOP, about 3 minutes
# of a 2-core CPU; 5 TFLOP is then ~20 minutes there, and far less on a GPU.
AUTO_MAX_TFLOP = 5.0


def image_task(recipe: "Recipe") -> bool:
    """These stages train image classifiers; another task declares its own versions (edgekd.stages)."""
    from edgekd.stages import DEFAULT_TASK, recipe_task

    return recipe_task(recipe) == DEFAULT_TASK


def baseline_enabled(recipe: "Recipe") -> bool:
    return image_task(recipe) and bool(recipe.distill.enabled) and recipe.distill.baseline is not False


def baseline_inputs(recipe: "Recipe") -> dict[str, Any]:
    """Its fingerprint: the student, its training budget and the baseline switch, not the KD losses."""
    from dataclasses import asdict

    return {"train": asdict(recipe.distill.train), "baseline": recipe.distill.baseline,
            "batch_size": recipe.data.batch_size}


def training_tflop(macs: int, images: int, epochs: float) -> float:
    return 3 * macs * images * epochs / 1e12


def run_baseline(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    """Train the same student without the teacher (CE only), or record why "auto" skipped it."""
    from edgekd.models import count_params, save_model_file
    from edgekd.train import evaluate, train

    r, ds = ctx.recipe, ctx.dataset
    built = build_student(r.student.model, r.student.kwargs, ds, r.seed, r.student.import_path, r.student.weights)
    student = built.module
    macs = count_macs(student, ds.input_shape)
    cost = training_tflop(macs, len(ds.x_train), r.distill.train.epochs)
    base = {"params": count_params(student), "macs": macs, "estimated_tflop": round(cost, 3),
            "rule": r.distill.baseline, "data_split": split_record(ds)}
    if r.distill.baseline == "auto" and cost > AUTO_MAX_TFLOP:
        why = (f"the student's training is not cheap (~{cost:.0f} TFLOP > {AUTO_MAX_TFLOP:g}); set "
               "distill.baseline: true to train it anyway")
        ctx.log(f"baseline: skipped ({why})")
        return {}, {**base, "ran": False, "reason": why}
    ctx.log(f"baseline: {r.student.model} without the teacher (cross-entropy) for {r.distill.train.epochs} epochs")
    result = train(student, ds.train_source(r.distill.train.augment), None, r.distill.train, seed=r.seed,
                   x_test=ds.test_source(), batch_size=r.data.batch_size, eval_batch_size=r.data.eval_batch_size,
                   checkpoint=ctx.checkpoint("baseline"), checkpoint_key=ctx.checkpoint_key, progress=ctx.progress,
                   desc="baseline")
    path = save_model_file(student, built.name, built.kwargs, ctx.stage_dir("baseline") / "student.pt",
                           **built.file_info())
    val = evaluate(student, ds.val_source(), None, r.data.eval_batch_size) if len(ds.y_val) else None
    return {"model": path}, {**base, "ran": True, "losses": [{"name": "ce", "weight": 1.0}],
                             "test_accuracy": evaluate(student, ds.test_source(), None, r.data.eval_batch_size),
                             "val_accuracy": val, "history": result.history, "curve": result.curve,
                             "train_seconds": round(result.wall_time_s, 2)}


def run_kd_gain(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    """The distilled student vs the baseline on the same test images: gain ± paired-bootstrap interval."""
    from edgekd.models import load_model_file

    base = ctx.record("baseline")
    if not base.metrics.get("ran"):
        return {}, {"ran": False, "reason": base.metrics.get("reason", "the baseline did not run")}
    ds, run_dir = ctx.dataset, ctx.run_dir
    distill = ctx.record("distill")
    kd_model, _ = load_model_file(distill.path(run_dir, "model"))
    ce_model, _ = load_model_file(base.path(run_dir, "model"))
    kd_ok = (predictions(kd_model, ds.x_test) == ds.y_test).numpy()
    ce_ok = (predictions(ce_model, ds.x_test) == ds.y_test).numpy()
    stats = paired_bootstrap(kd_ok, ce_ok, seed=ctx.recipe.seed)
    teacher = ctx.records.get("teacher")
    metrics = {"ran": True, **stats, "kd_accuracy": float(kd_ok.mean()), "baseline_accuracy": float(ce_ok.mean()),
               "teacher_accuracy": teacher.metrics.get("test_accuracy") if teacher else None,
               "kd_losses": distill.metrics.get("losses"), "kd_seconds": distill.wall_time_s,
               "baseline_seconds": base.wall_time_s, "test_images": len(ds.y_test),
               "tuned": bool(ctx.recipe.distill.auto and "tune" in ctx.records),
               "compared": {"distill": distill.fingerprint, "baseline": base.fingerprint}}
    metrics["verdict"] = gain_verdict(metrics)
    ctx.log(metrics["verdict"])
    return {}, metrics


def gain_verdict(m: dict[str, Any]) -> str:
    """One sentence: gained / lost / within noise, with the interval and, on a loss, what to try."""
    gain, pm = m["gain_pt"], m["pm_pt"]
    seeds = m.get("seeds", 1)
    how = (f"paired bootstrap over {m['images']} test images" +
           (f" and {seeds} seeds" if seeds > 1 else ", one seed"))
    accs = f"{m['kd_accuracy'] * 100:.2f}% vs {m['baseline_accuracy'] * 100:.2f}%"
    if m.get("kd_losses") and all(t.get("name") == "ce" for t in m["kd_losses"]):
        return (f"The student was trained without the teacher: cross-entropy alone beat every distillation setting "
                f"tried on the validation split, so distillation did not pay here ({accs} for the no-teacher "
                f"baseline). Try a stronger teacher or a longer tune.")
    if gain - pm > 0:
        return (f"Distillation gained {gain:+.2f} ± {pm:.2f} pt over the same student without the teacher "
                f"({accs}; {how}).")
    if gain + pm < 0:
        return (f"Distillation lost {-gain:.2f} ± {pm:.2f} pt against the same student without the teacher ({accs}; "
                f"{how}): the teacher did not pay here. {what_to_try(m)}")
    return (f"Distillation changed top-1 by {gain:+.2f} ± {pm:.2f} pt over the same student without the teacher "
            f"({accs}; {how}): within the noise, so the teacher has not been shown to pay. {what_to_try(m)}")


def what_to_try(m: dict[str, Any]) -> str:
    tips = []
    t, b = m.get("teacher_accuracy"), m.get("baseline_accuracy")
    if isinstance(t, (int, float)) and isinstance(b, (int, float)) and (t - b) * 100 < 2:
        tips.append(f"a clearly stronger teacher (it is only {(t - b) * 100:.1f} pt above the student trained alone)")
    tips += ["a longer tune (tune.trials, tune.budget_s, tune.proxy_epochs)" if m.get("tuned") else
             "distill.auto: true (losses, temperature and weights chosen on the validation split)",
             "more epochs (distill.train.epochs)",
             "or ship baseline/student.pt, trained without the teacher"]
    return "Try " + "; ".join(tips) + "."
