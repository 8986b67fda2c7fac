"""The stages of a run (teacher → distill → quantize → export → verify → profile → bundle → report).

Each stage reads earlier stages' files from the run directory, writes its own, and records them in
`<stage>/stage.json` with a fingerprint of its inputs; `run()` skips a stage whose fingerprint and outputs are
unchanged, and a killed training stage resumes from `checkpoints/`.
"""
from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from edgekd.config import Recipe, TrainConfig, dump_recipe, load_recipe
from edgekd.data import ImageDataset, dataset_from_config
from edgekd.errors import EdgeKDError
from edgekd.fileio import write_text
from edgekd.models import build_for_data, count_params, load_model_file, save_model_file
from edgekd.registry import Registry
from edgekd.stages import STAGE_ORDER, StageRecord, fingerprint, is_done, require_record, write_record

FORMAT_RUNTIME = {"onnx": "onnxruntime", "tflite": "litert"}


@dataclass
class RunContext:
    recipe: Recipe
    run_dir: Path
    progress: bool = True
    log: Callable[[str], None] = print
    _dataset: ImageDataset | None = field(default=None, repr=False)
    records: dict[str, StageRecord] = field(default_factory=dict)
    current: str | None = None  # the running stage: its files go to a staging folder until it succeeds
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def dataset(self) -> ImageDataset:
        if self._dataset is None:
            self._dataset = dataset_from_config(self.recipe.data, self.recipe.seed)
        return self._dataset

    def stage_dir(self, stage: str) -> Path:
        path = staging_dir(self.run_dir, stage) if stage == self.current else self.run_dir / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    def checkpoint(self, name: str) -> Path:
        path = self.run_dir / "checkpoints"
        path.mkdir(parents=True, exist_ok=True)
        return path / f"{name}.pt"

    @property
    def checkpoint_key(self) -> str | None:
        """The running stage's input fingerprint: checkpoints of other inputs are not resumed."""
        return self.fingerprints.get(self.current or "")

    def record(self, stage: str) -> StageRecord:
        if stage not in self.records:
            self.records[stage] = require_record(self.run_dir, stage)
        return self.records[stage]

    def example_input(self, batch: int = 1) -> torch.Tensor:
        return self.dataset.x_test[:batch].clone()


def data_key(recipe: Recipe) -> dict[str, Any]:
    return {"data": recipe.data.__dict__, "seed": recipe.seed}


# --------------------------------------------------------------------------------------------- teacher


def teacher_spec(recipe: Recipe) -> dict[str, Any]:
    from edgekd.distill.teachers import teacher_spec as spec_of

    return spec_of(recipe.teacher)


def stage_teacher(ctx: RunContext) -> tuple[dict[str, Path], dict[str, Any]]:
    """Load the teacher (weights, TorchScript, ONNX, ensemble) or train it; record its test accuracy."""
    from edgekd.distill import load_teacher
    from edgekd.distill.trainer import evaluate, train

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
        result = train(model, ds.x_train, ds.y_train, t.train, seed=r.seed, x_test=ds.x_test, y_test=ds.y_test,
                       batch_size=r.data.batch_size, checkpoint=ctx.checkpoint("teacher"),
                       checkpoint_key=ctx.checkpoint_key, progress=ctx.progress,
                       desc="teacher")
        path = save_model_file(model, t.model, built.kwargs, out / "teacher.pt", **built.file_info())
        acc = evaluate(model, ds.x_test, ds.y_test, r.data.eval_batch_size)
        return {"model": path}, {"params": count_params(model), "test_accuracy": acc, "history": result.history,
                                 "curve": result.curve, "source": "trained"}
    spec = teacher_spec(r)
    teacher = load_teacher(spec, data=ds)
    logits = torch.cat([teacher.logits(ds.x_test[i:i + 1000]) for i in range(0, len(ds.x_test), 1000)])
    acc = (logits.argmax(-1) == ds.y_test).float().mean().item()
    outputs: dict[str, Path] = {}
    params = None
    if t.kind == "torch":
        module, built = teacher.module, teacher.built
        params = count_params(module)
        outputs["model"] = save_model_file(module, t.model, built.kwargs, out / "teacher.pt", **built.file_info())
    ctx.log(f"teacher: loaded ({t.kind}), test accuracy {acc:.4f}")
    return outputs, {"params": params, "test_accuracy": acc, "history": [], "source": spec,
                     "fingerprint": teacher.fingerprint()}


def load_run_teacher(ctx: RunContext):
    """The teacher as the teacher stage recorded it."""
    from edgekd.distill import TorchTeacher, load_teacher

    rec = ctx.record("teacher")
    spec = teacher_spec(ctx.recipe)
    if rec.metrics.get("source") != "trained" and ("mean" in spec or "std" in spec):
        return load_teacher(spec, data=ctx.dataset)  # its input normalization wraps the module
    if "model" in rec.outputs:
        module, _ = load_model_file(rec.path(ctx.run_dir, "model"))
        return TorchTeacher(module)
    return load_teacher(spec, data=ctx.dataset)


# --------------------------------------------------------------------------------------------- distill


def build_student(ctx: RunContext):
    """The student built for the data (edgekd.models.build_for_data: kwargs as written, head fitted, input checked)."""
    s, ds = ctx.recipe.student, ctx.dataset
    return build_for_data(s.model, s.kwargs, input_shape=ds.input_shape, num_classes=ds.num_classes,
                          weights=s.weights, import_path=s.import_path)


def stage_distill(ctx: RunContext) -> tuple[dict[str, Path], dict[str, Any]]:
    """Train the student from the teacher with the recipe's losses (or from labels alone when disabled)."""
    from edgekd.distill import build_objective
    from edgekd.distill.trainer import TeacherSignal, evaluate, train

    r, ds, out = ctx.recipe, ctx.dataset, ctx.stage_dir("distill")
    torch.manual_seed(r.seed)
    built = build_student(ctx)
    student = built.module
    for note in built.notes:
        ctx.log(f"distill: {note}")
    terms = r.distill.losses if r.distill.enabled else [{"name": "ce", "weight": 1.0}]
    objective = build_objective(terms)
    mode = r.distill.mode if r.distill.enabled else "teacher"
    offline = mode == "teacher"  # born-again generations change teachers, so only offline KD can use the cache
    signal = TeacherSignal() if mode == "mutual" else teacher_signal(
        ctx, objective, r.distill.train, r.distill.cache_teacher and offline, r.distill.cache_topk if offline else None)
    teacher_params = ctx.record("teacher").metrics.get("params")
    ctx.log(f"distill: {r.student.model} ({count_params(student):,} params; teacher {teacher_params or '?'}) "
            f"with {', '.join(t['name'] for t in terms)} for {r.distill.train.epochs} epochs")
    common = dict(seed=r.seed, x_test=ds.x_test, y_test=ds.y_test, batch_size=r.data.batch_size,
                  eval_batch_size=r.data.eval_batch_size, progress=ctx.progress)
    if mode == "mutual":
        from edgekd.distill.mutual import train_mutual

        peers = [student] + [build_student(ctx).module for _ in range(r.distill.peers - 1)]
        result = train_mutual(peers, ds.x_train, ds.y_train, r.distill.train, kl_weight=r.distill.mutual_kl_weight,
                              checkpoint=ctx.checkpoint("distill"), checkpoint_key=ctx.checkpoint_key, desc="mutual",
                              **common)
    elif mode == "born_again":
        from edgekd.distill.mutual import born_again

        generations = born_again(lambda: build_student(ctx).module, signal.teacher,
                                 r.distill.generations, ds.x_train, ds.y_train, r.distill.train, terms, **common)
        student, result = generations[-1]
        result.history = [dict(h, generation=g + 1) for g, (_, res) in enumerate(generations) for h in res.history]
    else:
        result = train(student, ds.x_train, ds.y_train, r.distill.train, objective=objective, teacher=signal,
                       checkpoint=ctx.checkpoint("distill"), checkpoint_key=ctx.checkpoint_key, desc="distill",
                       **common)
    acc = evaluate(student, ds.x_test, ds.y_test, r.data.eval_batch_size)
    path = save_model_file(student, r.student.model, built.kwargs, out / "student.pt", **built.file_info())
    return {"model": path}, {"params": count_params(student), "teacher_params": teacher_params,
                             "test_accuracy": acc, "history": result.history, "curve": result.curve,
                             "losses": terms, "mode": mode, "data_split": ds.split,
                             "resumed_from_step": result.resumed_from_step,
                             "teacher_signal": "cache" if signal.cached is not None else
                             ("online" if signal.teacher is not None else "none")}


def teacher_signal(ctx: RunContext, objective, cfg: TrainConfig, use_cache: bool, topk: int | None):
    """Cached teacher logits when valid (no augmentation, no teacher features), else the teacher online."""
    from edgekd.distill import load_or_build
    from edgekd.distill.trainer import TeacherSignal

    if not getattr(objective, "needs_teacher", False):
        return TeacherSignal()
    teacher = load_run_teacher(ctx)
    if use_cache and not cfg.augment and not objective.teacher_taps:
        if topk and not objective.accepts_topk:
            raise EdgeKDError(f"distill.cache_topk={topk} stores top-k teacher logits, but a loss in the recipe "
                              "needs full logits; set cache_topk: null or use losses that accept top-k")
        cached = load_or_build(teacher, ctx.dataset.x_train, ctx.run_dir / "cache",
                               preprocessing=f"{ctx.dataset.name}:{ctx.dataset.digest()}", topk=topk,
                               progress=ctx.progress)
        return TeacherSignal(teacher=teacher, cached=cached)
    if use_cache:
        why = "random augmentation changes every input" if cfg.augment else "feature losses need teacher features"
        ctx.log(f"distill: teacher runs online ({why}; cached logits would be wrong)")
    return TeacherSignal(teacher=teacher)


# --------------------------------------------------------------------------------------------- quantize


def target_runtimes(recipe: Recipe) -> list[str]:
    """Runtimes that will execute the int8 files: the export formats' runtimes."""
    return sorted({FORMAT_RUNTIME[f] for f in recipe.export.formats})


def stage_quantize(ctx: RunContext) -> tuple[dict[str, Path], dict[str, Any]]:
    """QAT (optionally fused with KD) or PTQ of the fp32 student, with the scheme of the target runtimes."""
    from edgekd.distill import build_objective
    from edgekd.distill.trainer import evaluate, train
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
            from edgekd.distill.trainer import TeacherSignal

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


def held_out(ds: ImageDataset, limit: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """Images that guide choices: the validation split (at most `limit`), never trained on, never the test set."""
    if len(ds.y_val) == 0:
        raise EdgeKDError("the sensitivity analysis needs a validation split, but data.val_fraction is 0 and "
                          "data.val_size is not set; set data.val_fraction (e.g. 0.1) or quantize.sensitivity: false")
    return ds.x_val[:limit], ds.y_val[:limit]


def sensitivity_analysis(ctx: RunContext, student: torch.nn.Module, scheme) -> dict[str, Any]:
    """Per-layer int8 cost (PTQ min-max, one layer kept in float at a time) and the k=1 float fallback.

    Measured on the validation split carved from the training data (never the test set, since it guides a
    choice); calibration images come from the training remainder.
    """
    from edgekd.quant import (layer_sensitivity, load_calibration_recipe, mixed_precision_fallback,
                              select_calibration)

    ds, q = ctx.dataset, ctx.recipe.quantize
    x, y = held_out(ds)
    n = len(y)
    calib = select_calibration(ds.x_train, ds.y_train, load_calibration_recipe(q.calibration))
    batches = [calib[i:i + 64] for i in range(0, len(calib), 64)]
    example = ctx.example_input(2)
    sens = layer_sensitivity(student, example, scheme, batches, x, y)
    fallback = mixed_precision_fallback(student, example, scheme, batches, x, y, k=1, sensitivity=sens)
    worst = sens["table"][0] if sens["table"] else None
    if worst:
        ctx.log(f"quantize: most int8-sensitive layer {worst['layer']} (keeping it float: "
                f"{fallback['int8_accuracy']:.4f} -> {fallback['accuracy']:.4f} on {n} validation images)")
    return {"sensitivity": sens,
            "fallback": {k: v for k, v in fallback.items() if k != "model"}, "sensitivity_samples": n}


# --------------------------------------------------------------------------------------------- export


def stage_export(ctx: RunContext) -> tuple[dict[str, Path], dict[str, Any]]:
    """One file per (format, precision): ONNX and TFLite, fp32 from the student, int8 from the quantized model."""
    from edgekd.export import export_onnx, export_tflite
    from edgekd.quant import load_quantized

    r, out = ctx.recipe, ctx.stage_dir("export")
    example = ctx.example_input(1)
    outputs, files = {}, []
    for precision in r.export.precisions:
        if precision == "int8" and "quantize" not in ctx.records:  # quantization disabled in the recipe
            continue
        if precision == "fp32":
            model = load_model_file(ctx.record("distill").path(ctx.run_dir, "model"))[0]
        else:
            model = load_quantized(ctx.record("quantize").path(ctx.run_dir, "model"))
        for fmt in r.export.formats:
            name = f"student_{precision}.{fmt}"
            t0 = time.perf_counter()
            if fmt == "onnx":
                path = export_onnx(model, (example,), out / name, opset=r.export.opset)
            else:
                path = export_tflite(model, (example,), out / name)
            ctx.log(f"export: {name} ({path.stat().st_size / 1024:.1f} KiB, {time.perf_counter() - t0:.1f} s)")
            outputs[name] = path
            files.append({"name": name, "path": f"export/{name}", "format": fmt, "precision": precision,
                          "runtime": FORMAT_RUNTIME[fmt], "bytes": path.stat().st_size})
    return outputs, {"files": files}


# --------------------------------------------------------------------------------------------- verify


def stage_verify(ctx: RunContext) -> tuple[dict[str, Path], dict[str, Any]]:
    """Parity of each file with its reference, and the test accuracy of each file in its own runtime."""
    from edgekd.quant import load_quantized
    from edgekd.verify import verify_files

    r, ds = ctx.recipe, ctx.dataset
    student = load_model_file(ctx.record("distill").path(ctx.run_dir, "model"))[0]
    fake_quant = (load_quantized(ctx.record("quantize").path(ctx.run_dir, "model"))
                  if "quantize" in ctx.records else None)
    files = [dict(f, path=str(ctx.run_dir / f["path"])) for f in ctx.record("export").metrics["files"]]
    x, y = ds.x_test, ds.y_test
    if r.verify.test_subset:
        x, y = x[: r.verify.test_subset], y[: r.verify.test_subset]
    metrics = verify_files(files, student, fake_quant, x, y, tolerance=r.verify.parity_tolerance,
                           parity_samples=r.verify.parity_samples, progress=ctx.progress)
    for f in metrics["files"]:
        f["path"] = str(Path(f["path"]).resolve().relative_to(ctx.run_dir.resolve())) if "path" in f else None
        ctx.log(f"verify: {f['name']:<22} accuracy {f['accuracy']:.4f} vs {f['reference']} "
                f"max|diff| {f['max_abs_diff']:.2e} top-1 agreement {f['top1_agreement']:.4f}"
                f"{'' if f['parity_ok'] else '  PARITY FAILED'}")
    return {}, metrics


# --------------------------------------------------------------------------------------------- profile


def stage_profile(ctx: RunContext) -> tuple[dict[str, Path], dict[str, Any]]:
    """Latency of every exported file on each recipe target (measured locally, predicted elsewhere)."""
    from edgekd.profile.stage import profile_run_files

    r = ctx.recipe
    files = [ctx.run_dir / f["path"] for f in ctx.record("export").metrics["files"]]
    metrics = profile_run_files(files, r.profile.targets, threads=r.profile.threads,
                                max_seconds=r.profile.max_seconds, min_runs=r.profile.min_runs,
                                input_shape=(1, *ctx.dataset.input_shape), progress=ctx.progress, log=ctx.log)
    return {}, metrics


# --------------------------------------------------------------------------------------------- bundle, report


def stage_bundle(ctx: RunContext) -> tuple[dict[str, Path], dict[str, Any]]:
    """One app archive per bundle target: models with metadata, labels, model card, manifest."""
    from edgekd.bundle import archive_record, bundle_run

    out, ds = ctx.stage_dir("bundle"), ctx.dataset
    archives, outputs = [], {}
    for target in ctx.recipe.bundle.targets:
        path = bundle_run(ctx.run_dir, target, out, labels=ds.labels, mean=ds.mean, std=ds.std,
                          pixel_max=ds.pixel_max)
        outputs[path.name] = path
        archives.append(archive_record(path, target, ctx.run_dir))
        ctx.log(f"bundle: {target}: {path.name} ({path.stat().st_size / 1024:.0f} KiB)")
    return outputs, {"archives": archives}


def stage_report(ctx: RunContext) -> tuple[dict[str, Path], dict[str, Any]]:
    from edgekd.report import build_report

    paths = build_report(ctx.run_dir, out_dir=ctx.stage_dir("report"))
    return {p.name: p for p in paths.all()}, {}


STAGE_NAMES = Registry("stage")
STAGES: dict[str, Callable[[RunContext], tuple[dict[str, Path], dict[str, Any]]]] = {
    "teacher": stage_teacher, "distill": stage_distill, "quantize": stage_quantize, "export": stage_export,
    "verify": stage_verify, "profile": stage_profile, "bundle": stage_bundle, "report": stage_report}

# Which recipe sections and upstream stages each stage depends on (its fingerprint).
DEPENDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "teacher": (("teacher",), ()),
    "distill": (("student", "distill"), ("teacher",)),
    "quantize": (("quantize", "export"), ("teacher", "distill")),
    "export": (("export",), ("distill", "quantize")),
    "verify": (("verify",), ("distill", "quantize", "export")),
    "profile": (("profile",), ("export",)),
    "bundle": (("bundle",), ("export", "verify", "profile")),
    "report": ((), ("teacher", "distill", "quantize", "export", "verify", "profile", "bundle")),
}


for _name in STAGES:
    STAGE_NAMES.register(_name)(_name)


def enabled_stages(recipe: Recipe) -> list[str]:
    stages = list(STAGE_ORDER)
    if not recipe.quantize.enabled:
        stages.remove("quantize")
    if not recipe.bundle.enabled:
        stages.remove("bundle")
    return stages


def stage_fingerprint(ctx: RunContext, stage: str) -> str:
    sections, upstream = DEPENDS[stage]
    rd = ctx.recipe.to_dict()
    ups = [ctx.records[s].fingerprint for s in upstream if s in ctx.records]
    extra = {}
    if stage == "teacher" and ctx.recipe.teacher.weights:
        from edgekd.fileio import sha256_file

        w = Path(ctx.recipe.teacher.weights)
        extra["weights"] = sha256_file(w) if w.exists() else str(w)
    from edgekd import __version__

    return fingerprint(stage, __version__, data_key(ctx.recipe), {s: rd[s] for s in sections}, ups, extra)


def run(recipe: Recipe | str | Path, *, run_dir: str | Path | None = None, until: str | None = None,
        only: list[str] | None = None, force: bool = False, progress: bool = True,
        log: Callable[[str], None] = print) -> Path:
    """Run the recipe's stages in order, skipping those already done with the same inputs; return the run dir."""
    if not isinstance(recipe, Recipe):
        recipe = load_recipe(recipe)
    run_dir = Path(run_dir) if run_dir else Path(recipe.runs_dir) / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
    stages = enabled_stages(recipe)
    for name in list(only or []) + ([until] if until else []):
        STAGE_NAMES.get(name)
    if until:
        stages = stages[: stages.index(until) + 1] if until in stages else stages
    ctx = RunContext(recipe, run_dir, progress=progress, log=log)
    for stage in stages:
        fp = stage_fingerprint(ctx, stage)
        if only and stage not in only:
            rec = is_done(run_dir, stage, fp) or require_record(run_dir, stage)
            ctx.records[stage] = rec
            continue
        done = None if force else is_done(run_dir, stage, fp)
        if done and stage != "report":
            log(f"{stage}: up to date, skipped")
            ctx.records[stage] = done
            continue
        started = time.perf_counter()
        shutil.rmtree(staging_dir(run_dir, stage), ignore_errors=True)  # leftovers of a killed run
        ctx.current, ctx.fingerprints[stage] = stage, fp
        try:
            outputs, metrics = STAGES[stage](ctx)
        finally:
            ctx.current = None
        outputs = publish_stage(run_dir, stage, outputs)
        ctx.records[stage] = write_record(run_dir, stage, fp, outputs, metrics, started)
        ctx.checkpoint(stage).unlink(missing_ok=True)  # the stage's files now hold its result
    return run_dir


def staging_dir(run_dir: Path, stage: str) -> Path:
    return run_dir / f".{stage}.staging"


def publish_stage(run_dir: Path, stage: str, outputs: dict[str, Path]) -> dict[str, Path]:
    """Swap the stage's staging folder in for its previous folder; return the outputs' final paths.

    A stage that fails never reaches this point, so the previous run's files stay as they were.
    """
    staging, final, old = staging_dir(run_dir, stage), run_dir / stage, run_dir / f".{stage}.old"
    staging.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    staging.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return {k: final / Path(p).resolve().relative_to(staging.resolve()) for k, p in outputs.items()}
