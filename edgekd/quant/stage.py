"""The quantize stage: QAT (optionally fused with KD) or PTQ of the fp32 student, with the target runtimes' scheme."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgekd.stages import Stage, register_stage

if TYPE_CHECKING:
    from edgekd.config import Recipe
    from edgekd.pipeline import RunContext


def target_runtimes(recipe: "Recipe") -> list[str]:
    """Runtimes that will execute the int8 files: the export formats' runtimes."""
    from edgekd.formats import FORMATS

    return sorted({FORMATS.get(f).runtimes[0] for f in recipe.export.formats})


def run_quantize(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    """QAT (optionally fused with KD) or PTQ of the fp32 student, with the scheme of the target runtimes."""
    from edgekd.distill import build_objective
    from edgekd.distill.stage import teacher_signal
    from edgekd.models import load_model_file
    from edgekd.quant import (calibration_batches, qat_finetune, qat_freeze_steps, quantize_ptq, save_quantized,
                              scheme_for_runtimes)
    from edgekd.train import evaluate

    r, ds, out = ctx.recipe, ctx.dataset, ctx.stage_dir("quantize")
    q = r.quantize
    scheme = scheme_for_runtimes(target_runtimes(r), override=None if q.scheme == "auto" else q.scheme)
    student, _ = load_model_file(ctx.record("distill").path(ctx.run_dir, "model"))
    example = ctx.example_input(2)
    fp32_acc = ctx.record("distill").metrics["test_accuracy"]
    if q.method == "ptq":
        from edgekd.quant import load_calibration_recipe, select_calibration

        calib = select_calibration(ds.x_train, ds.y_train, load_calibration_recipe(q.calibration))
        batches = calibration_batches(calib, 64)
        model = quantize_ptq(student, example, scheme, batches, method=q.ptq_method, keep_float=q.keep_float)
        method, history, curve = f"ptq_{q.ptq_method}", [], []
    else:
        terms = q.kd_losses if q.kd else [{"name": "ce", "weight": 1.0}]
        objective = build_objective(terms, source="quantize.kd_losses")
        if not q.kd:
            teacher = None
        elif q.kd_teacher == "student":
            teacher = "self"  # the fp32 student teaches its fake-quant copy
        else:
            teacher = teacher_signal(ctx, objective, q.train, r.distill.cache_teacher, r.distill.cache_topk)
        steps, freeze_obs, freeze_bn = qat_freeze_steps(q.train, len(ds.x_train), r.data.batch_size,
                                                        q.freeze_observers_after, q.freeze_bn_after)
        ctx.log(f"quantize: QAT{'+KD (' + q.kd_teacher + ' teaches)' if q.kd else ''} with scheme {scheme.name}, "
                f"{steps} steps, observers frozen at {freeze_obs}, BN at {freeze_bn}")
        model, result = qat_finetune(student, example, scheme=scheme, train_config=q.train,
                                     x=ds.train_source(q.train.augment), y=None, teacher=teacher, objective=objective,
                                     freeze_observers_after=q.freeze_observers_after,
                                     freeze_bn_after=q.freeze_bn_after, keep_float=q.keep_float,
                                     batch_size=r.data.batch_size, eval_batch_size=r.data.eval_batch_size,
                                     seed=r.seed, x_test=ds.test_source(), y_test=None,
                                     checkpoint=ctx.checkpoint("quantize"), checkpoint_key=ctx.checkpoint_key,
                                     progress=ctx.progress)
        method, history, curve = ("qat_kd" if q.kd else "qat"), result.history, result.curve
    fq_acc = evaluate(model, ds.test_source(), None, r.data.eval_batch_size, set_eval=lambda m: None)
    path = save_quantized(model, example, out / "student_int8.pt2")
    ctx.log(f"quantize: fake-quant accuracy {fq_acc:.4f} (fp32 {fp32_acc:.4f})")
    metrics = {"scheme": scheme.to_dict(), "method": method, "fake_quant_accuracy": fq_acc,
               "fp32_accuracy": fp32_acc, "keep_float": list(q.keep_float), "history": history, "curve": curve}
    if q.sensitivity:
        metrics.update(sensitivity_analysis(ctx, student, scheme))
    return {"model": path}, metrics


def held_out(ds, limit: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Images that guide choices: the validation split (at most `limit`), never trained on, never the test set."""
    from edgekd.errors import EdgeKDError

    if len(ds.y_val) == 0:
        raise EdgeKDError("the sensitivity analysis needs a validation split, but data.val_fraction is 0 and "
                          "data.val_size is not set; set data.val_fraction (e.g. 0.1) or quantize.sensitivity: false")
    return ds.x_val[:limit], ds.y_val[:limit]


def sensitivity_analysis(ctx: "RunContext", student: torch.nn.Module, scheme) -> dict[str, Any]:
    """Per-layer int8 cost (PTQ min-max, one layer kept in float at a time) and the k=1 float fallback.

    Measured on the validation split carved from the training data (`held_out`), never the test set since it
    guides a choice; calibration images come from the training remainder.
    """
    from edgekd.quant import (calibration_batches, layer_sensitivity, load_calibration_recipe,
                              mixed_precision_fallback, select_calibration)

    ds, q = ctx.dataset, ctx.recipe.quantize
    x, y = held_out(ds)
    n = len(y)
    calib = select_calibration(ds.x_train, ds.y_train, load_calibration_recipe(q.calibration))
    batches = calibration_batches(calib, 64)
    example = ctx.example_input(2)
    sens = layer_sensitivity(student, example, scheme, batches, x, y)
    fallback = mixed_precision_fallback(student, example, scheme, batches, x, y, k=1, sensitivity=sens)
    worst = sens["table"][0] if sens["table"] else None
    if worst:
        ctx.log(f"quantize: most int8-sensitive layer {worst['layer']} (keeping it float: "
                f"{fallback['int8_accuracy']:.4f} -> {fallback['accuracy']:.4f} on {n} validation images)")
    return {"sensitivity": sens,
            "fallback": {k: v for k, v in fallback.items() if k != "model"}, "sensitivity_samples": n}


register_stage(Stage("quantize", run_quantize, sections=("quantize", "export"), upstream=("teacher", "distill"),
                     enabled=lambda recipe: recipe.quantize.enabled,
                     missing="no fake-quant accuracy or QAT curve"))
