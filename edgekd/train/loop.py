"""The training loop shared by teacher training, distillation and QAT.

One loop, driven by a typed TrainConfig: the student learns from an objective (a weighted sum of loss modules,
cross-entropy by default) with the teacher's outputs coming online or from a cache. Checkpoints hold everything
an exact resume needs (model, objective adapters, optimizer, scheduler, RNG states, step), written atomically
every `checkpoint_every` steps; a run killed mid-epoch resumes to the same final weights as an uninterrupted one.

The loop reads in parts: `_Loop.__init__` (teacher checks, DDP wrap, feature taps), `_warm_up` (lazy adapters),
`make_optimizer`/`make_scheduler`, `_resume`/`_checkpoint_state`, `_step` (one optimization step), `_end_epoch`
(evaluation and the epoch record). Data come from an `edgekd.data.source.BatchSource`, one epoch at a time; its
batches depend only on (seed, epoch), so a resumed run needs no data-order state.

Where it runs (edgekd.train.device): `cfg.device` (auto picks CUDA), `cfg.precision` (autocast, GradScaler for
fp16), `cfg.channels_last`, `cfg.compile`. The model always comes back on the CPU in fp32, and checkpoints hold CPU
tensors, so what follows training (export, quantization, verify) and a resume do not depend on where it ran.
Under torchrun (edgekd.train.distributed) every rank trains its share of each batch, rank 0 alone writes
checkpoints and TensorBoard events, and the recorded metrics are sums over all ranks.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.data.source import Batch, BatchSource, TensorSource
from edgekd.errors import EdgeKDError
from edgekd.train import distributed
from edgekd.train.checkpoint import load_checkpoint, plain_state_dict, restore_state_dict, save_checkpoint
from edgekd.train.config import TrainConfig
from edgekd.train.device import (Precision, back_to_cpu_fp32, compile_errors_as_edgekd, compile_model,
                                 resolve_device, to_cpu, to_device)
from edgekd.train.monitor import Monitor, current_log_dir

StepHook = Callable[[nn.Module, int, int], None]
ModelState = tuple[Callable[[nn.Module], Any], Callable[[nn.Module, Any], Any]]


class NonFiniteLossError(EdgeKDError):
    """A loss part became NaN or inf; names the step and the part."""


@dataclass
class TeacherSignal:
    """Where teacher outputs come from during training: an online teacher, or cached logits by sample index."""

    teacher: Any = None                 # edgekd.distill.teachers.Teacher (online)
    cached: Any = None                  # indexable by a LongTensor of sample indices -> logits or (values, indices)
    feature_names: tuple[str, ...] = ()
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def outputs(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor] | None]:
        """Teacher outputs for the batch `x` (on the training device) whose source indices are `idx` (CPU)."""
        if self.cached is not None and not self.feature_names:
            return _move(self.cached[idx], self.device), None
        if self.teacher is None:
            return None, None
        with torch.no_grad():
            if self.feature_names:
                return self.teacher.forward_with_features(x, list(self.feature_names))
            return self.teacher.logits(x), None

    def place(self, device: torch.device, dtype: torch.dtype | None) -> None:
        """Run an online teacher on `device` with autocast `dtype` (None: fp32); cached logits follow to `device`."""
        self.device = device
        if self.teacher is not None and hasattr(self.teacher, "place"):
            self.teacher.place(device, dtype)


def _move(out: Any, device: torch.device) -> Any:
    if device.type == "cpu":
        return out
    if isinstance(out, torch.Tensor):
        return out.to(device, non_blocking=True)
    return type(out)(_move(o, device) for o in out)


@dataclass
class TrainResult:
    """Per-epoch `history` (accuracies) and a finer loss `curve` (mean of each part over ~1/50 of the run)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    wall_time_s: float = 0.0
    resumed_from_step: int | None = None


class CrossEntropyObjective(nn.Module):
    """Plain supervised objective (teacher training, QAT without KD)."""

    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()
    needs_teacher = False

    def forward(self, student_logits, targets, teacher_logits=None, student_features=None, teacher_features=None):
        ce = F.cross_entropy(student_logits, targets)
        return {"loss": ce, "ce": ce}


def evaluate(model: nn.Module, x: torch.Tensor | BatchSource, y: torch.Tensor | None = None, batch_size: int = 1000,
             set_eval: Callable[[nn.Module], None] | None = None, precision: Precision | None = None,
             channels_last: bool = False) -> float:
    """Top-1 accuracy of `model` on (x, y) or on a BatchSource `x` (y None), in eval mode, no grad.

    Batches go to the device of the model's parameters; `precision` (autocast) only inside the training loop.
    """
    (set_eval or (lambda m: m.eval()))(model)
    source = x if isinstance(x, BatchSource) else TensorSource(x, y)
    device = _model_device(model)
    correct = torch.zeros((), dtype=torch.long, device=device)
    with torch.no_grad(), (precision.autocast() if precision else contextlib.nullcontext()):
        for batch in source.epoch(0, 0, batch_size, shuffle=False):
            xb = to_device(batch.x, device, channels_last)
            correct += (model(xb).argmax(-1) == batch.y.to(device)).sum()
    return int(correct) / max(1, len(source))


def _model_device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    if cfg.schedule == "onecycle" and total_steps >= 8:  # OneCycle needs a few steps per phase
        return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(1, total_steps),
                                                   pct_start=0.25)
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total_steps))
    return torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)


def total_steps_for(cfg: TrainConfig, n_samples: int, batch_size: int, steps_per_epoch: int | None = None) -> int:
    """Optimizer steps of a run: `cfg.epochs` (may be fractional) passes over `n_samples` in `batch_size` batches
    (or over `steps_per_epoch` batches, when the data source says how many it makes)."""
    per_epoch = math.ceil(n_samples / batch_size) if steps_per_epoch is None else steps_per_epoch
    return max(1, math.ceil(cfg.epochs * per_epoch))


def check_labels(y: torch.Tensor, where: str = "training labels") -> None:
    """Labels must be integer class indices >= 0 (NaN or float labels fail here, in one line, not in the loss)."""
    if not isinstance(y, torch.Tensor) or y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise EdgeKDError(f"{where} must be an integer tensor of class indices, got "
                          f"{getattr(y, 'dtype', type(y).__name__)}; convert them with y.long() (NaN is no class)")
    if len(y) and int(y.min()) < 0:
        raise EdgeKDError(f"{where} hold a negative class index ({int(y.min())}); labels are 0..num_classes-1")


@dataclass
class _Data:
    train: BatchSource
    batch_size: int
    test: BatchSource | None
    eval_batch_size: int


class _Loop:
    """The state of one training run: model, objective, teacher, optimizer, device and where the run stands."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, objective: nn.Module | None,
                 teacher: TeacherSignal | None, set_train, set_eval, model_state: ModelState | None):
        from edgekd.distill.features import FeatureTap  # lazily: edgekd.distill imports this package

        self.model, self.cfg = model, cfg
        self.objective = objective or CrossEntropyObjective()
        self.teacher = teacher or TeacherSignal()
        self.custom_modes = set_train is not None or set_eval is not None
        self.set_train = set_train or (lambda m: m.train())
        self.set_eval = set_eval or (lambda m: m.eval())
        self.get_state, self.load_state = model_state or (
            plain_state_dict, lambda m, s: m.load_state_dict(restore_state_dict(s)))
        if getattr(self.objective, "needs_teacher", False) and self.teacher.teacher is None \
                and self.teacher.cached is None:
            raise EdgeKDError("the distillation losses need a teacher, but none was given")
        if cfg.augment and self.teacher.cached is not None:
            raise EdgeKDError("cached teacher logits are wrong for randomly augmented inputs: run the teacher online "
                              "(distill.cache_teacher: false) or train without augmentation")
        self.teacher.feature_names = tuple(getattr(self.objective, "teacher_taps", ()) or ())
        problems = cfg.problems()
        if problems:
            raise EdgeKDError("; ".join(problems))
        self.device = resolve_device(cfg.device)
        self.precision = Precision(cfg.precision, self.device)
        self.scaler = self.precision.grad_scaler()
        self.channels_last = bool(cfg.channels_last)
        # A GPU step must not wait for the host: on CUDA, loss values are read (and checked for NaN) once per
        # logging window instead of after every step.
        self.sync_every_step = self.device.type == "cpu"
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        self.objective.to(self.device)
        self.teacher.place(self.device, self.precision.teacher_dtype())
        self.world, self.rank = distributed.world_and_rank()
        # DDP: every rank draws the same global batch order and trains on its 1/world shard of each batch;
        # gradients are averaged, so all ranks hold identical weights (initial weights are broadcast from rank 0).
        if self.world > 1:
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.trained = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        else:
            self.trained = model
        if cfg.compile:
            self.trained = compile_model(self.trained)
        student_taps = tuple(getattr(self.objective, "student_taps", ()) or ())
        self.tap = FeatureTap(model, student_taps) if student_taps else None  # hooks on `model`, not the wrapper
        self.result = TrainResult()
        self.step = 0
        self.epoch_sums: dict[str, Any] = {}
        self.window: dict[str, Any] = {}

    def forward_student(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return self.tap.run(self.trained, x) if self.tap else (self.trained(x), None)

    def batch_on_device(self, batch: Batch) -> Batch:
        if self.device.type == "cpu" and not self.channels_last:
            return batch
        y = batch.y.to(self.device, non_blocking=True) if self.device.type == "cuda" else batch.y
        return Batch(to_device(batch.x, self.device, self.channels_last), y, batch.idx)

    def needs_warm_up(self) -> bool:
        """Whether a first forward pass must build something before the optimizer sees the parameters: hint
        adapters, lazy modules, or a graph with its own mode switches (QAT: its observers see that batch)."""
        from torch.nn.modules.lazy import LazyModuleMixin

        if self.custom_modes:
            return True
        unbuilt = getattr(self.objective, "has_unbuilt_adapters", None)
        if callable(unbuilt) and unbuilt():
            return True
        return any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params()
                   for part in (self.model, self.objective) for m in part.modules())

    def warm_up(self, data: _Data) -> None:
        """Materialize lazily built parts (hint adapters) before the optimizer sees the parameters.

        Skipped when nothing is lazy: the pass has no other effect (eval mode, no gradients), and it costs one
        forward of student and teacher per run.
        """
        if not self.needs_warm_up():
            return
        with torch.no_grad(), compile_errors_as_edgekd():
            self.set_eval(self.model)
            b0 = self.batch_on_device(data.train.first_batch(data.batch_size))
            with self.precision.autocast():
                logits0, feats0 = self.forward_student(b0.x)
                t_out0, t_feats0 = self.teacher.outputs(b0.x, b0.idx)
                self.objective(logits0, b0.y, t_out0, feats0, t_feats0)
        self.objective.to(self.device)  # adapters built by the warm-up pass

    def make_optimization(self, total_steps: int, seed: int) -> None:
        """Optimizer over the model and the objective's trainable parts, and its schedule."""
        self.total_steps, self.seed = total_steps, seed
        self.params = list(self.model.parameters()) + [p for p in self.objective.parameters() if p.requires_grad]
        self.opt = make_optimizer(self.params, self.cfg)
        self.sched = make_scheduler(self.opt, self.cfg, total_steps)

    def checkpoint_state(self, key: str | None) -> dict[str, Any]:
        """Everything a resume needs, as CPU tensors and plain data (portable between CPU and GPU machines)."""
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
        return to_cpu({"model": self.get_state(self.model), "objective": plain_state_dict(self.objective),
                       "optimizer": self.opt.state_dict(), "scheduler": self.sched.state_dict(),
                       "scaler": self.scaler.state_dict(), "rng": rng, "step": self.step,
                       "total_steps": self.total_steps, "key": key, "history": self.result.history,
                       "epoch_sums": _floats(self.epoch_sums), "curve": self.result.curve,
                       "window": _floats(self.window)})

    def resume(self, path: Path, key: str | None) -> None:
        """Continue from the checkpoint at `path` if it was written for these inputs (`key`).

        Tensors load onto the CPU (map_location) and are copied to the training device by load_state_dict, so a
        run checkpointed on a GPU resumes on a CPU and the other way round.
        """
        state = load_checkpoint(path, required=("key",))
        if state is None or state["key"] != key:
            return  # none, or written for other inputs: start over (it is overwritten at the first checkpoint)
        if state.get("total_steps") != self.total_steps:
            raise EdgeKDError(f"checkpoint {path} was written for {state.get('total_steps')} steps, this run "
                              f"has {self.total_steps}; delete it to start over")
        try:
            self.load_state(self.model, state["model"])
            self.objective.load_state_dict(restore_state_dict(state["objective"]))
            self.opt.load_state_dict(state["optimizer"])  # moves the optimizer state to the parameters' device
            self.sched.load_state_dict(state["scheduler"])
            if state.get("scaler") and self.scaler.is_enabled():
                self.scaler.load_state_dict(state["scaler"])
            torch.set_rng_state(state["rng"]["torch"])
            if "cuda" in state["rng"] and self.device.type == "cuda":
                torch.cuda.set_rng_state(state["rng"]["cuda"], self.device)
            self.step = state["step"]
            self.result.history, self.result.curve = state["history"], state["curve"]
            self.window, self.epoch_sums = state["window"], state["epoch_sums"]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise EdgeKDError(f"checkpoint {path} does not fit this run ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''}); delete it to start over") from None
        self.result.resumed_from_step = self.step

    def train_step(self, batch: Batch, step_hook: StepHook | None) -> dict[str, torch.Tensor]:
        """One optimization step on `batch` (this rank's share of the global batch under DDP)."""
        if step_hook:
            step_hook(self.model, self.step, self.total_steps)
        batch = self.batch_on_device(batch)
        x, y = batch.x, batch.y
        with self.precision.autocast():
            t_out, t_feats = self.teacher.outputs(x, batch.idx)
            logits, feats = self.forward_student(x)
            parts = self.objective(logits, y, t_out, feats, t_feats)
        if self.sync_every_step:
            _check_finite(parts, self.step)
        self.opt.zero_grad(set_to_none=True)
        if self.scaler.is_enabled():
            self.scaler.scale(parts["loss"]).backward()
            if self.cfg.grad_clip:
                self.scaler.unscale_(self.opt)
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            parts["loss"].backward()
            if self.cfg.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.params, self.cfg.grad_clip)
            self.opt.step()
        self.sched.step()
        self.step += 1
        _accumulate(self.epoch_sums, parts, logits, y, self.sync_every_step)
        _accumulate(self.window, parts, logits, y, self.sync_every_step)
        return parts

    def end_epoch(self, epoch: int, data: _Data) -> dict[str, Any]:
        """Log the epoch (or fractional last epoch): mean loss parts, train and test accuracy (over all ranks)."""
        if self.world > 1:
            _average_buffers(self.model, self.world)
        sums = distributed.all_reduce_sums(_floats(self.epoch_sums))
        record = _epoch_record(epoch + 1, self.step, sums, self.opt.param_groups[0]["lr"])
        if data.test is not None:
            record["test_accuracy"] = evaluate(self.model, data.test, None, data.eval_batch_size, self.set_eval,
                                               self.precision, self.channels_last)
        self.result.history.append(record)
        self.epoch_sums = {}
        return record

    def close_window(self) -> dict[str, Any]:
        """The loss curve point of the steps since the last one (means over all ranks)."""
        first = self.result.curve[-1]["step"] if self.result.curve else 0
        if not self.sync_every_step:
            _check_finite_window(self.window, first, self.step)
        point = _curve_point(self.step, distributed.all_reduce_sums(_floats(self.window)))
        self.result.curve.append(point)
        self.window.clear()
        return point

    def release(self) -> None:
        """The model (and the objective's adapters) back on the CPU in fp32, the teacher too: see the docstring."""
        back_to_cpu_fp32(self.model, self.channels_last)
        self.objective.to("cpu")
        self.teacher.place(torch.device("cpu"), None)


def train(model: nn.Module, x_train: torch.Tensor | BatchSource, y_train: torch.Tensor | None, cfg: TrainConfig, *,
          objective: nn.Module | None = None, teacher: TeacherSignal | None = None, seed: int = 0,
          x_test: torch.Tensor | BatchSource | None = None, y_test: torch.Tensor | None = None,
          batch_size: int = 128,
          eval_batch_size: int = 1000, checkpoint: str | Path | None = None, progress: bool = True,
          desc: str = "train", step_hook: StepHook | None = None,
          set_train: Callable[[nn.Module], None] | None = None,
          set_eval: Callable[[nn.Module], None] | None = None,
          model_state: ModelState | None = None,
          checkpoint_key: str | None = None, stop_after_steps: int | None = None,
          log_dir: str | Path | None = None) -> TrainResult:
    """Train `model` in place on (x_train, y_train) and return the per-epoch history.

    The model is trained on `cfg.device` in `cfg.precision` and returned on the CPU in fp32 (also when training
    stops with an error), so what follows does not depend on where training ran.

    Args:
        x_train, y_train: in-memory images and labels (batched by a `TensorSource`, augmented with
            `edgekd.data.loader.augment_batch` when `cfg.augment`), or a `BatchSource` as x_train and None as
            y_train (the source does its own augmentation). x_test/y_test alike, for the per-epoch test accuracy.
        objective: loss module returning {"loss": total, part: value, ...}; cross-entropy when None.
        teacher: online teacher or cached logits; required when the objective needs teacher outputs.
        checkpoint: file to resume from if it exists, and to write every `cfg.checkpoint_every` steps (under
            torchrun every rank resumes from it, rank 0 alone writes it).
        checkpoint_key: what the checkpoint belongs to (e.g. the stage's input fingerprint); a checkpoint written
            under another key is ignored and overwritten, so a changed recipe never resumes a stale run.
        step_hook: called as hook(model, step, total_steps) before each step (QAT observer/BN freezing).
        set_train/set_eval: mode switches (exported QAT graphs need torchao's helpers instead of .train()).
        model_state: (get, load) for checkpointing the model (QAT graphs carry observer buffers and a phase);
            `get` must return tensors and plain data only.
        stop_after_steps: stop early after this global step (tests of kill-and-resume).
        log_dir: folder for TensorBoard events (rank 0). Default: the pipeline's `edgekd.train.monitor.log_to`
            folder, or its sub-folder `desc` when `desc` is not the stage's name (QAT, born-again generations).
    Raises:
        NonFiniteLossError: a loss part is NaN/inf (names the step and the part).
        EdgeKDError: labels that are no class indices; a checkpoint that is unsafe, damaged or of another run;
            a device this machine lacks; torch.compile failing on this platform.
    """
    data = _Data(_train_source(x_train, y_train, cfg), batch_size, _eval_source(x_test, y_test), eval_batch_size)
    loop = _Loop(model, cfg, objective, teacher, set_train, set_eval, model_state)
    main = loop.rank == 0
    monitor = None
    try:
        steps_per_epoch = data.train.steps_per_epoch(batch_size)
        total_steps = total_steps_for(cfg, len(data.train), batch_size, steps_per_epoch)
        torch.manual_seed(seed)
        loop.warm_up(data)
        loop.make_optimization(total_steps, seed)
        ckpt_path = Path(checkpoint) if checkpoint else None
        if ckpt_path is not None:
            loop.resume(ckpt_path, checkpoint_key)  # every rank reads it (all must start at the same step)
            distributed.barrier()  # nobody writes it before everyone has read it

        def save() -> None:
            if ckpt_path is not None and main:
                save_checkpoint(loop.checkpoint_state(checkpoint_key), ckpt_path)

        folder = log_dir
        if folder is None and current_log_dir() is not None:  # a stage's folder; its sub-runs get a sub-folder
            base = current_log_dir()
            folder = base if desc == base.name else base / desc.replace(" ", "_")
        monitor = Monitor(folder, enabled=main)
        bar = _progress(total_steps, loop.step, desc, progress and main)
        t0 = time.perf_counter()
        try:
            with compile_errors_as_edgekd():
                stopped = _run_epochs(loop, data, steps_per_epoch, bar, save, step_hook, stop_after_steps, monitor)
        finally:
            bar.close()
            if loop.tap:
                loop.tap.remove()
        if stopped:
            return loop.result
        loop.result.steps = loop.step
        loop.result.wall_time_s = time.perf_counter() - t0
        return loop.result
    finally:
        if monitor is not None:
            monitor.close()
        loop.release()
        loop.set_eval(model)


def _run_epochs(loop: _Loop, data: _Data, steps_per_epoch: int, bar, save: Callable[[], None],
                step_hook: StepHook | None, stop_after_steps: int | None, monitor: Monitor) -> bool:
    """Train until the last step; True when stopped early by `stop_after_steps`."""
    total_steps = loop.total_steps
    log_every = max(1, total_steps // 50)
    speed = _Throughput(loop.world)
    while loop.step < total_steps:
        epoch = loop.step // steps_per_epoch
        batches = data.train.epoch(epoch, loop.seed, data.batch_size, start=loop.step % steps_per_epoch,
                                   rank=loop.rank, world=loop.world)
        loop.set_train(loop.model)
        for batch in batches:
            if loop.step >= total_steps:
                break
            loop.train_step(batch, step_hook)
            speed.add(len(batch.y))
            step = loop.step
            if step % log_every == 0 or step == total_steps:
                point = loop.close_window()
                lr = loop.opt.param_groups[0]["lr"]
                monitor.scalars({"train/loss": point["loss"], **{f"train/{k}": v for k, v in point["parts"].items()},
                                 "train/lr": lr, "train/images_per_s": speed.rate()}, step)
            bar.update(1)
            if step % 20 == 0:
                sums = loop.epoch_sums
                bar.set_postfix(loss=f"{float(sums['loss']) / sums['n_batches']:.3f}",
                                img_s=f"{speed.rate():.0f}", refresh=False)
            if step % loop.cfg.checkpoint_every == 0 and step < total_steps:
                save()
            if stop_after_steps is not None and step >= stop_after_steps:
                return True
        record = loop.end_epoch(epoch, data)
        monitor.scalars({"epoch/train_accuracy": record["train_accuracy"], "epoch/loss": record["loss"],
                         **({"epoch/test_accuracy": record["test_accuracy"]} if "test_accuracy" in record else {})},
                        loop.step)
        save()
    return False


class _Throughput:
    """Images per second over all ranks, measured over the last few seconds of steps."""

    def __init__(self, world: int):
        self.world = world
        self.t0, self.n, self.last = time.perf_counter(), 0, 0.0

    def add(self, n: int) -> None:
        self.n += n * self.world

    def rate(self) -> float:
        now = time.perf_counter()
        if now - self.t0 > 0:
            self.last = self.n / (now - self.t0)
        if now - self.t0 > 5.0:  # a moving window, so a slow first step does not weigh forever
            self.t0, self.n = now, 0
        return self.last


def _train_source(x: torch.Tensor | BatchSource, y: torch.Tensor | None, cfg: TrainConfig) -> BatchSource:
    if isinstance(x, BatchSource):
        if y is not None:
            raise ValueError("a BatchSource carries its labels: pass y_train=None")
        return x
    check_labels(y)
    from edgekd.data.loader import augment_batch

    return TensorSource(x, y, augment_batch if cfg.augment else None)


def _eval_source(x: torch.Tensor | BatchSource | None, y: torch.Tensor | None) -> BatchSource | None:
    if x is None or isinstance(x, BatchSource):
        return x
    return None if y is None else TensorSource(x, y)


def _average_buffers(model: nn.Module, world: int) -> None:
    """All-reduce floating buffers (BN running statistics) to their mean over ranks, so every rank agrees."""
    for buf in model.buffers():
        if buf.is_floating_point():
            torch.distributed.all_reduce(buf, op=torch.distributed.ReduceOp.SUM)
            buf.div_(world)


def _check_finite(parts: dict[str, torch.Tensor], step: int) -> None:
    for name, value in parts.items():
        if isinstance(value, torch.Tensor) and not torch.isfinite(value).all():
            raise NonFiniteLossError(f"loss part {name!r} is {value.item()} at step {step}: lower the learning rate, "
                                     "check the data normalization, or set train.grad_clip")


def _check_finite_window(window: dict[str, Any], first: int, last: int) -> None:
    """NaN/inf in the summed loss parts of steps first+1..last (the GPU path checks once per window)."""
    for name, value in window.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not torch.isfinite(value).all():
            raise NonFiniteLossError(f"loss part {name!r} became {value.item()} between steps {first + 1} and "
                                     f"{last}: lower the learning rate, check the data normalization, or set "
                                     "train.grad_clip")


def _accumulate(sums: dict[str, Any], parts: dict[str, torch.Tensor], logits: torch.Tensor,
                y: torch.Tensor, sync: bool = True) -> None:
    """Add a step's loss parts and correct count to `sums` (as Python numbers, or device tensors without `sync`)."""
    for name, value in parts.items():
        v = value.detach().float()
        sums[name] = sums.get(name, 0.0) + (float(v) if sync else v)
    sums["n_batches"] = sums.get("n_batches", 0) + 1
    correct = (logits.detach().argmax(-1) == y).sum()
    sums["correct"] = sums.get("correct", 0) + (int(correct) if sync else correct)
    sums["n"] = sums.get("n", 0) + len(y)


def _floats(sums: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in sums.items()}


def _curve_point(step: int, sums: dict[str, float]) -> dict[str, Any]:
    nb = max(1, sums.get("n_batches", 0))
    return {"step": step, "loss": sums.get("loss", 0.0) / nb,
            "parts": {k: v / nb for k, v in sums.items() if k not in ("loss", "n_batches", "correct", "n")}}


def _epoch_record(epoch: int, step: int, sums: dict[str, float], lr: float) -> dict[str, Any]:
    nb = max(1, sums.get("n_batches", 0))
    parts = {k: v / nb for k, v in sums.items() if k not in ("loss", "n_batches", "correct", "n")}
    return {"epoch": epoch, "step": step, "loss": sums.get("loss", 0.0) / nb, "parts": parts,
            "train_accuracy": sums.get("correct", 0) / max(1, sums.get("n", 0)), "lr": lr}


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from edgekd.logs import progress_bar

    return progress_bar(total=total, initial=initial, desc=desc, unit="step", enabled=enabled, leave=False,
                        dynamic_ncols=True)
