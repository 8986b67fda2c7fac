"""The quantize stage: QAT (optionally fused with KD) or PTQ of the fp32 student, with the target runtimes' scheme."""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgekd.stages import Stage, register_stage

if TYPE_CHECKING:
    from edgekd.config import Recipe
    from edgekd.pipeline import RunContext


def target_runtimes(recipe: "Recipe") -> list[str]:
    """Runtimes that will execute the int8 files: the export formats' runtimes."""
    from edgekd.export.stage import FORMAT_RUNTIME

    return sorted({FORMAT_RUNTIME[f] for f in recipe.export.formats})


def run_quantize(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    """QAT (optionally fused with KD) or PTQ of the fp32 student, with the scheme of the target runtimes."""
    from edgekd.distill import build_objective
    from edgekd.distill.stage import teacher_signal
    from edgekd.train import evaluate, train
    from edgekd.models import load_model_file
    from edgekd.quant import (convert_qat, eval_mode, load_qat_state, prepare_qat, qat_state_dict, quantize_ptq,
                              save_quantized, scheme_for_runtimes, set_qat_phase, train_mode)

    r, ds, out = ctx.recipe, ctx.dataset, ctx.stage_dir("quantize")
    q = r.quantize
    scheme = scheme_for_runtimes(target_runtimes(r), override=None if q.scheme == "auto" else q.scheme)
    student, _ = load_model_file(ctx.record("distill").path(ctx.run_dir, "model"))
    example = ctx.example_input(2)
    fp32_acc = ctx.record("distill").metrics["test_accuracy"]
    if q.method == "ptq":
        from edgekd.quant import load_calibration_recipe, select_calibration

        calib = select_calibration(ds.x_train, ds.y_train, load_calibration_recipe(q.calibration))
        batches = [calib[i:i + 64] for i in range(0, len(calib), 64)]
        model = quantize_ptq(student, example, scheme, batches, method=q.ptq_method, keep_float=q.keep_float)
        method, history, curve = f"ptq_{q.ptq_method}", [], []
    else:
        gm = prepare_qat(student, example, scheme, keep_float=q.keep_float)
        terms = q.kd_losses if q.kd else [{"name": "ce", "weight": 1.0}]
        objective = build_objective(terms)
        if q.kd and q.kd_teacher == "student":
            from edgekd.distill import TorchTeacher
            from edgekd.train import TeacherSignal

            signal = TeacherSignal(teacher=TorchTeacher(student))  # prepare_qat trained a copy
        else:
            signal = teacher_signal(ctx, objective, q.train, r.distill.cache_teacher, r.distill.cache_topk)
        steps = math.ceil(q.train.epochs * math.ceil(len(ds.x_train) / r.data.batch_size))
        freeze_obs = None if q.freeze_observers_after is None else int(q.freeze_observers_after * steps)
        freeze_bn = None if q.freeze_bn_after is None else int(q.freeze_bn_after * steps)
        ctx.log(f"quantize: QAT{'+KD (' + q.kd_teacher + ' teaches)' if q.kd else ''} with scheme {scheme.name}, "
                f"{steps} steps, observers frozen at {freeze_obs}, BN at {freeze_bn}")
        result = train(gm, ds.x_train, ds.y_train, q.train, objective=objective, teacher=signal, seed=r.seed,
                       x_test=ds.x_test, y_test=ds.y_test, batch_size=r.data.batch_size,
                       eval_batch_size=r.data.eval_batch_size, checkpoint=ctx.checkpoint("quantize"),
                       checkpoint_key=ctx.checkpoint_key,
                       progress=ctx.progress, desc="qat",
                       step_hook=lambda m, step, total: set_qat_phase(m, step, freeze_obs, freeze_bn),
                       set_train=train_mode, set_eval=eval_mode, model_state=(qat_state_dict, load_qat_state))
        model = convert_qat(gm)
        method, history, curve = ("qat_kd" if q.kd else "qat"), result.history, result.curve
    fq_acc = evaluate(model, ds.x_test, ds.y_test, r.data.eval_batch_size, set_eval=lambda m: None)
    path = save_quantized(model, example, out / "student_int8.pt2")
    ctx.log(f"quantize: fake-quant accuracy {fq_acc:.4f} (fp32 {fp32_acc:.4f})")
    metrics = {"scheme": scheme.to_dict(), "method": method, "fake_quant_accuracy": fq_acc,
               "fp32_accuracy": fp32_acc, "keep_float": list(q.keep_float), "history": history, "curve": curve}
    if q.sensitivity:
        metrics.update(sensitivity_analysis(ctx, student, scheme))
    return {"model": path}, metrics


def sensitivity_split(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                                 torch.Tensor]:
    """(x_held, y_held, x_rest, y_rest): the images that judge int8 sensitivity, and those left for calibration.

    The last quarter of the training set, at most 2048 images: never the test set, since the result guides a choice.
    """
    n = min(2048, len(x) // 4)
    return x[-n:], y[-n:], x[:-n], y[:-n]


def sensitivity_analysis(ctx: "RunContext", student: torch.nn.Module, scheme) -> dict[str, Any]:
    """Per-layer int8 cost (PTQ min-max, one layer kept in float at a time) and the k=1 float fallback.

    Measured on held-out images (`sensitivity_split`).
    """
    from edgekd.quant import (layer_sensitivity, load_calibration_recipe, mixed_precision_fallback,
                              select_calibration)

    ds, q = ctx.dataset, ctx.recipe.quantize
    x, y, x_rest, y_rest = sensitivity_split(ds.x_train, ds.y_train)
    n = len(x)
    calib = select_calibration(x_rest, y_rest, load_calibration_recipe(q.calibration))
    batches = [calib[i:i + 64] for i in range(0, len(calib), 64)]
    example = ctx.example_input(2)
    sens = layer_sensitivity(student, example, scheme, batches, x, y)
    fallback = mixed_precision_fallback(student, example, scheme, batches, x, y, k=1, sensitivity=sens)
    worst = sens["table"][0] if sens["table"] else None
    if worst:
        ctx.log(f"quantize: most int8-sensitive layer {worst['layer']} (keeping it float: "
                f"{fallback['int8_accuracy']:.4f} -> {fallback['accuracy']:.4f} on {n} held-out training images)")
    return {"sensitivity": sens,
            "fallback": {k: v for k, v in fallback.items() if k != "model"}, "sensitivity_samples": n}


register_stage(Stage("quantize", run_quantize, sections=("quantize", "export"), upstream=("teacher", "distill"),
                     enabled=lambda recipe: recipe.quantize.enabled,
                     missing="no fake-quant accuracy or QAT curve"))
