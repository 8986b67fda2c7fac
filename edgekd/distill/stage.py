"""The teacher and distill stages: load or train the teacher, then train the student from it.

Also the two things later stages need from them: the teacher as the teacher stage recorded it, and the teacher's
signal (cached logits or the teacher online) for KD during QAT.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from edgekd.errors import EdgeKDError
from edgekd.stages import Stage, register_stage

if TYPE_CHECKING:
    from edgekd.config import Recipe, TrainConfig
    from edgekd.pipeline import RunContext


def teacher_spec(recipe: "Recipe") -> dict[str, Any]:
    from edgekd.distill.teachers import teacher_spec as spec_of

    return spec_of(recipe.teacher)


def teacher_inputs(recipe: "Recipe") -> dict[str, Any]:
    """The teacher weights file's sha256 (a new file under the same name re-runs the stage)."""
    if not recipe.teacher.weights:
        return {}
    from edgekd.fileio import sha256_file

    w = Path(recipe.teacher.weights)
    return {"weights": sha256_file(w) if w.exists() else str(w)}


def run_teacher(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    """Load the teacher (weights, TorchScript, ONNX, ensemble) or train it; record its test accuracy."""
    from edgekd.distill import load_teacher
    from edgekd.models import build_for_data, count_params, save_model_file
    from edgekd.train import evaluate, train

    r, ds, out = ctx.recipe, ctx.dataset, ctx.stage_dir("teacher")
    t = r.teacher
    if t.kind == "torch" and (not t.weights or t.finetune):
        torch.manual_seed(r.seed)
        built = build_for_data(t.model, t.kwargs, input_shape=ds.input_shape, num_classes=ds.num_classes,
                               weights=t.weights, import_path=t.import_path)
        model = built.module
        for note in built.notes:
            ctx.log(f"teacher: {note}")
        ctx.log(f"teacher: training {t.model} ({count_params(model):,} params) for {t.train.epochs} epochs")
        result = train(model, ds.train_source(t.train.augment), None, t.train, seed=r.seed, x_test=ds.test_source(),
                       batch_size=r.data.batch_size, checkpoint=ctx.checkpoint("teacher"),
                       checkpoint_key=ctx.checkpoint_key, progress=ctx.progress,
                       desc="teacher")
        path = save_model_file(model, t.model, built.kwargs, out / "teacher.pt", **built.file_info())
        acc = evaluate(model, ds.test_source(), None, r.data.eval_batch_size)
        return {"model": path}, {"params": count_params(model), "test_accuracy": acc, "history": result.history,
                                 "curve": result.curve, "source": "trained"}
    spec = teacher_spec(r)
    teacher = load_teacher(spec, data=ds)
    correct = sum(int((teacher.logits(b.x).argmax(-1).cpu() == b.y).sum())
                  for b in ds.test_source().epoch(0, 0, r.data.eval_batch_size, shuffle=False))
    acc = correct / max(1, len(ds.test_source()))
    outputs: dict[str, Path] = {}
    params = None
    if t.kind == "torch":
        module, built = teacher.module, teacher.built
        params = count_params(module)
        outputs["model"] = save_model_file(module, t.model, built.kwargs, out / "teacher.pt", **built.file_info())
    ctx.log(f"teacher: loaded ({t.kind}), test accuracy {acc:.4f}")
    return outputs, {"params": params, "test_accuracy": acc, "history": [], "source": spec,
                     "fingerprint": teacher.fingerprint()}


def load_run_teacher(ctx: "RunContext"):
    """The teacher as the teacher stage recorded it."""
    from edgekd.distill import TorchTeacher, load_teacher
    from edgekd.models import load_model_file

    rec = ctx.record("teacher")
    spec = teacher_spec(ctx.recipe)
    if rec.metrics.get("source") != "trained" and ("mean" in spec or "std" in spec):
        return load_teacher(spec, data=ctx.dataset)  # its input normalization wraps the module
    if "model" in rec.outputs:
        module, _ = load_model_file(rec.path(ctx.run_dir, "model"))
        return TorchTeacher(module)
    return load_teacher(spec, data=ctx.dataset)


def build_student(ctx: "RunContext"):
    """The student built for the data (edgekd.models.build_for_data: kwargs as written, head fitted, input checked)."""
    from edgekd.models import build_for_data

    s, ds = ctx.recipe.student, ctx.dataset
    return build_for_data(s.model, s.kwargs, input_shape=ds.input_shape, num_classes=ds.num_classes,
                          weights=s.weights, import_path=s.import_path)


def run_distill(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    """Train the student from the teacher with the recipe's losses (or from labels alone when disabled)."""
    from edgekd.distill import build_objective
    from edgekd.models import count_params, save_model_file
    from edgekd.train import TeacherSignal, evaluate, train

    r, ds, out = ctx.recipe, ctx.dataset, ctx.stage_dir("distill")
    torch.manual_seed(r.seed)
    built = build_student(ctx)
    student = built.module
    for note in built.notes:
        ctx.log(f"distill: {note}")
    from edgekd.auto.stage import tuned_losses

    terms = (tuned_losses(ctx) or r.distill.losses) if r.distill.enabled else [{"name": "ce", "weight": 1.0}]
    objective = build_objective(terms)
    mode = r.distill.mode if r.distill.enabled else "teacher"
    offline = mode == "teacher"  # born-again generations change teachers, so only offline KD can use the cache
    signal = TeacherSignal() if mode == "mutual" else teacher_signal(
        ctx, objective, r.distill.train, r.distill.cache_teacher and offline, r.distill.cache_topk if offline else None)
    teacher_params = ctx.record("teacher").metrics.get("params")
    ctx.log(f"distill: {r.student.model} ({count_params(student):,} params; teacher {teacher_params or '?'}) "
            f"with {', '.join(t['name'] for t in terms)} for {r.distill.train.epochs} epochs")
    common = dict(seed=r.seed, x_test=ds.test_source(), y_test=None, batch_size=r.data.batch_size,
                  eval_batch_size=r.data.eval_batch_size, progress=ctx.progress)
    if mode == "mutual":
        from edgekd.distill.mutual import train_mutual

        peers = [student] + [build_student(ctx).module for _ in range(r.distill.peers - 1)]
        result = train_mutual(peers, ds.train_source(r.distill.train.augment), None, r.distill.train,
                              kl_weight=r.distill.mutual_kl_weight, checkpoint=ctx.checkpoint("distill"),
                              checkpoint_key=ctx.checkpoint_key, desc="mutual",
                              **common)
    elif mode == "born_again":
        from edgekd.distill.mutual import born_again

        generations = born_again(lambda: build_student(ctx).module, signal.teacher,
                                 r.distill.generations, ds.train_source(r.distill.train.augment), None,
                                 r.distill.train, terms, **common)
        student, result = generations[-1]
        result.history = [dict(h, generation=g + 1) for g, (_, res) in enumerate(generations) for h in res.history]
    else:
        result = train(student, ds.train_source(r.distill.train.augment), None, r.distill.train, objective=objective,
                       teacher=signal, checkpoint=ctx.checkpoint("distill"), checkpoint_key=ctx.checkpoint_key,
                       desc="distill", **common)
    acc = evaluate(student, ds.test_source(), None, r.data.eval_batch_size)
    path = save_model_file(student, r.student.model, built.kwargs, out / "student.pt", **built.file_info())
    return {"model": path}, {"params": count_params(student), "teacher_params": teacher_params,
                             "test_accuracy": acc, "history": result.history, "curve": result.curve,
                             "losses": terms, "mode": mode, "data_split": ds.split,
                             "resumed_from_step": result.resumed_from_step,
                             "teacher_signal": "cache" if signal.cached is not None else
                             ("online" if signal.teacher is not None else "none")}


def teacher_signal(ctx: "RunContext", objective, cfg: "TrainConfig", use_cache: bool, topk: int | None):
    """Cached teacher logits when valid (no augmentation, no teacher features), else the teacher online."""
    from edgekd.distill import load_or_build
    from edgekd.train import TeacherSignal

    if not getattr(objective, "needs_teacher", False):
        return TeacherSignal()
    teacher = load_run_teacher(ctx)
    if use_cache and not cfg.augment and not objective.teacher_taps:
        if topk and not objective.accepts_topk:
            raise EdgeKDError(f"distill.cache_topk={topk} stores top-k teacher logits, but a loss in the recipe "
                              "needs full logits; set cache_topk: null or use losses that accept top-k")
        from edgekd.train.distributed import rank_zero_first

        ds = ctx.dataset
        with rank_zero_first():  # under torchrun rank 0 builds the cache file once, then every rank loads it
            if getattr(ds, "streamed", False):  # memory-mapped fp16 logits, one pass over the un-augmented stream
                from edgekd.distill.cache import load_or_build_source

                cached = load_or_build_source(teacher, ds.train_source(False), ctx.run_dir / "cache", ds.digest(),
                                              preprocessing=f"{ds.name}:{ds.digest()}", topk=topk,
                                              batch_size=ctx.recipe.data.eval_batch_size, progress=ctx.progress)
            else:
                cached = load_or_build(teacher, ds.x_train, ctx.run_dir / "cache",
                                       preprocessing=f"{ds.name}:{ds.digest()}", topk=topk, progress=ctx.progress)
        return TeacherSignal(teacher=teacher, cached=cached)
    if use_cache:
        why = "random augmentation changes every input" if cfg.augment else "feature losses need teacher features"
        ctx.log(f"distill: teacher runs online ({why}; cached logits would be wrong)")
    return TeacherSignal(teacher=teacher)


register_stage(Stage("teacher", run_teacher, sections=("teacher",), inputs=teacher_inputs,
                     missing="no teacher accuracy or training curve"))
register_stage(Stage("distill", run_distill, sections=("student", "distill"), upstream=("teacher", "tune"),
                     missing="no student fp32 accuracy or distillation curve"))
