"""QAT fine-tuning, fused with knowledge distillation: the one implementation of edgekd's headline workflow.

`qat_finetune` prepares the fp32 student for quantization-aware training (PT2E fake quant per the scheme),
trains it on the shared loop with a teacher (or the fp32 student itself, or labels alone), freezes the observers
and then the BN statistics at fixed fractions of the steps, checkpoints for an exact resume, and converts the
result to the int8 Q/DQ simulation that the exporters read.

    model, result = qat_finetune(student, (x[:2],), scheme="litert_int8", train_config=TrainConfig(epochs=1),
                                 x=x_train, y=y_train, teacher="self")
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.quant.qat import (convert_qat, eval_mode, load_qat_state, prepare_qat, qat_state_dict, set_qat_phase,
                              train_mode)
from edgekd.quant.schemes import Scheme
from edgekd.train import TeacherSignal, TrainConfig, TrainResult, total_steps_for, train


def qat_freeze_steps(train_config: TrainConfig, n_samples: int, batch_size: int,
                     freeze_observers_after: float | None, freeze_bn_after: float | None
                     ) -> tuple[int, int | None, int | None]:
    """(QAT steps, step at which observers freeze, step at which BN statistics freeze); None = never.

    Raises:
        EdgeKDError: a fraction outside [0, 1].
    """
    for name, frac in (("freeze_observers_after", freeze_observers_after), ("freeze_bn_after", freeze_bn_after)):
        if frac is not None and (isinstance(frac, bool) or not isinstance(frac, (int, float)) or not 0 <= frac <= 1):
            raise EdgeKDError(f"{name} is a fraction of the QAT steps in [0, 1] (or None: never), got {frac!r}")
    steps = total_steps_for(train_config, n_samples, batch_size)  # the loop's own count
    at = [None if frac is None else int(frac * steps) for frac in (freeze_observers_after, freeze_bn_after)]
    return steps, at[0], at[1]


def _teacher_signal(teacher: Any, student: nn.Module) -> TeacherSignal:
    """A TeacherSignal from what the caller gave: None, "self", a TeacherSignal, a Teacher or an nn.Module."""
    if teacher is None:
        return TeacherSignal()
    if isinstance(teacher, TeacherSignal):
        return teacher
    from edgekd.distill import TorchTeacher, as_teacher

    if isinstance(teacher, str):
        if teacher != "self":
            raise EdgeKDError(f"teacher={teacher!r}: give a Teacher, a TeacherSignal, an nn.Module, None (plain QAT) "
                              f"or 'self' (the fp32 student teaches its fake-quant copy)")
        return TeacherSignal(teacher=TorchTeacher(student))  # prepare_qat trains a copy; `student` stays fp32
    return TeacherSignal(teacher=as_teacher(teacher))


def _default_objective(signal: TeacherSignal) -> nn.Module | None:
    """QAT+KD's measured default (CE 0.5 + KD 0.5 at T=1) with a teacher; cross-entropy without one."""
    if signal.teacher is None and signal.cached is None:
        return None
    from edgekd.config import QAT_KD_TERMS
    from edgekd.distill import build_objective

    return build_objective([dict(t) for t in QAT_KD_TERMS], source="qat_finetune objective")


def qat_finetune(student: nn.Module, example_inputs: torch.Tensor | Sequence[torch.Tensor], *,
                 scheme: Scheme | str, train_config: TrainConfig, x: torch.Tensor, y: torch.Tensor,
                 teacher: Any = None, objective: nn.Module | None = None,
                 freeze_observers_after: float | None = 0.6, freeze_bn_after: float | None = 0.8,
                 keep_float: Sequence[str] = (), batch_size: int = 128, eval_batch_size: int = 1000, seed: int = 0,
                 x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
                 checkpoint: str | Path | None = None, checkpoint_key: str | None = None,
                 progress: bool = True) -> tuple[torch.fx.GraphModule, TrainResult]:
    """Quantization-aware fine-tuning of `student` (left untouched), optionally distilled; returns (int8 sim, result).

    Args:
        example_inputs: a batch (>= 2 samples keeps the batch dynamic) that fixes the captured graph's shapes.
        scheme: a registered scheme name or a Scheme (edgekd.quant.scheme_for_runtimes picks one per runtime).
        teacher: None (plain QAT on labels), "self" (the fp32 student teaches its fake-quant copy), a Teacher,
            an nn.Module, or a TeacherSignal (e.g. cached teacher logits indexed like `x`).
        objective: the loss (edgekd.distill.build_objective); default CE 0.5 + KD 0.5 at T=1 with a teacher,
            cross-entropy without one.
        freeze_observers_after / freeze_bn_after: fraction of the steps after which quantization ranges, then BN
            statistics, stop moving (None: never).
        keep_float: module paths left in float (mixed precision).
        checkpoint / checkpoint_key: resume file and what it belongs to (see edgekd.train.train); the QAT graph's
            weights, observer and fake-quant buffers and phase are saved as tensors and plain data.
    Returns:
        The converted Q/DQ model (its accuracy is the fake-quant accuracy; save it with save_quantized) and the
        training history.
    Raises:
        EdgeKDError: a fraction outside [0, 1], a teacher of an unknown kind, a losses/teacher mismatch, an unsafe
            or foreign checkpoint. ConversionError: an op the scheme cannot quantize (names the layer).
    """
    if train_config.precision != "fp32":  # fake-quantize ops fail under autocast ("expected scalar type Float")
        raise EdgeKDError(f"QAT trains in fp32 (torchao's PT2E fake-quantize ops take fp32 only), got precision "
                          f"{train_config.precision!r}: set train_config.precision='fp32'")
    _, freeze_obs, freeze_bn = qat_freeze_steps(train_config, len(x), batch_size, freeze_observers_after,
                                                freeze_bn_after)
    signal = _teacher_signal(teacher, student)
    if objective is None:
        objective = _default_objective(signal)
    elif getattr(objective, "needs_teacher", False) and signal.teacher is None and signal.cached is None:
        raise EdgeKDError("the objective's distillation losses need a teacher, but none was given: pass teacher= "
                          "(a Teacher, an nn.Module, a TeacherSignal or 'self')")
    gm = prepare_qat(student, example_inputs, scheme, keep_float=tuple(keep_float))
    result = train(gm, x, y, train_config, objective=objective, teacher=signal, seed=seed, x_test=x_test,
                   y_test=y_test, batch_size=batch_size, eval_batch_size=eval_batch_size, checkpoint=checkpoint,
                   checkpoint_key=checkpoint_key, progress=progress, desc="qat",
                   step_hook=lambda m, step, total: set_qat_phase(m, step, freeze_obs, freeze_bn),
                   set_train=train_mode, set_eval=eval_mode, model_state=(qat_state_dict, load_qat_state))
    return convert_qat(gm), result


__all__ = ["qat_finetune", "qat_freeze_steps"]
