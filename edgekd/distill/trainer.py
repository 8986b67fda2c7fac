"""The training loop shared by teacher training, distillation and QAT.

One loop, driven by a typed TrainConfig: the student learns from an `Objective` (a weighted sum of loss
modules) with the teacher's logits coming online or from a cache. Checkpoints hold everything needed for an
exact resume (model, objective adapters, optimizer, scheduler, RNG states, step), written atomically every
`checkpoint_every` steps; a run killed mid-epoch resumes to the same final weights as an uninterrupted one.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from edgekd.config import TrainConfig
from edgekd.data.loader import augment_batch, iterate_batches
from edgekd.errors import EdgeKDError
from edgekd.fileio import torch_save

StepHook = Callable[[nn.Module, int, int], None]


class NonFiniteLossError(EdgeKDError):
    """A loss part became NaN or inf; names the step and the part."""


@dataclass
class TeacherSignal:
    """Where teacher outputs come from during training: an online teacher, or cached logits by sample index."""

    teacher: Any = None                 # edgekd.distill.teachers.Teacher (online)
    cached: Any = None                  # indexable by a LongTensor of sample indices -> logits or (values, indices)
    feature_names: tuple[str, ...] = ()

    def outputs(self, x: torch.Tensor, idx: torch.Tensor) -> tuple[Any, dict[str, torch.Tensor] | None]:
        if self.cached is not None and not self.feature_names:
            return self.cached[idx], None
        if self.teacher is None:
            return None, None
        with torch.no_grad():
            if self.feature_names:
                return self.teacher.forward_with_features(x, list(self.feature_names))
            return self.teacher.logits(x), None


@dataclass
class TrainResult:
    """Per-epoch `history` (accuracies) and a finer loss `curve` (mean of each part over ~1/50 of the run)."""

    history: list[dict[str, Any]] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)
    steps: int = 0
    wall_time_s: float = 0.0
    resumed_from_step: int | None = None


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1000,
             set_eval: Callable[[nn.Module], None] | None = None) -> float:
    """Top-1 accuracy of `model` on (x, y), in eval mode, no grad."""
    (set_eval or (lambda m: m.eval()))(model)
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), batch_size):
            correct += (model(x[i:i + batch_size]).argmax(-1) == y[i:i + batch_size]).sum().item()
    return correct / max(1, len(x))


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


class CrossEntropyObjective(nn.Module):
    """Plain supervised objective (teacher training, QAT without KD)."""

    student_taps: tuple[str, ...] = ()
    teacher_taps: tuple[str, ...] = ()
    needs_teacher = False

    def forward(self, student_logits, targets, teacher_logits=None, student_features=None, teacher_features=None):
        ce = F.cross_entropy(student_logits, targets)
        return {"loss": ce, "ce": ce}


def _rng_state(generator: torch.Generator) -> dict[str, Any]:
    return {"torch": torch.get_rng_state(), "data": generator.get_state()}


def train(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, cfg: TrainConfig, *,
          objective: nn.Module | None = None, teacher: TeacherSignal | None = None, seed: int = 0,
          x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None, batch_size: int = 128,
          eval_batch_size: int = 1000, checkpoint: str | Path | None = None, progress: bool = True,
          desc: str = "train", step_hook: StepHook | None = None,
          set_train: Callable[[nn.Module], None] | None = None,
          set_eval: Callable[[nn.Module], None] | None = None,
          model_state: tuple[Callable[[nn.Module], Any], Callable[[nn.Module, Any], Any]] | None = None,
          checkpoint_key: str | None = None, stop_after_steps: int | None = None) -> TrainResult:
    """Train `model` in place on (x_train, y_train) and return the per-epoch history.

    Args:
        objective: loss module returning {"loss": total, part: value, ...}; cross-entropy when None.
        teacher: online teacher or cached logits; required when the objective needs teacher outputs.
        checkpoint: file to resume from if it exists, and to write every `cfg.checkpoint_every` steps.
        checkpoint_key: what the checkpoint belongs to (e.g. the stage's input fingerprint); a checkpoint written
            under another key is ignored and overwritten, so a changed recipe never resumes a stale run.
        step_hook: called as hook(model, step, total_steps) before each step (QAT observer/BN freezing).
        set_train/set_eval: mode switches (exported QAT graphs need torchao's helpers instead of .train()).
        model_state: (get, load) for checkpointing the model (QAT graphs carry observer buffers and a phase).
        stop_after_steps: stop early after this global step (tests of kill-and-resume).
    Raises:
        NonFiniteLossError: a loss part is NaN/inf (names the step and the part).
    """
    from edgekd.distill.features import FeatureTap

    objective = objective or CrossEntropyObjective()
    teacher = teacher or TeacherSignal()
    set_train = set_train or (lambda m: m.train())
    set_eval = set_eval or (lambda m: m.eval())
    get_state, load_state = model_state or (lambda m: m.state_dict(), lambda m, s: m.load_state_dict(s))
    if getattr(objective, "needs_teacher", False) and teacher.teacher is None and teacher.cached is None:
        raise EdgeKDError("the distillation losses need a teacher, but none was given")
    if cfg.augment and teacher.cached is not None:
        raise EdgeKDError("cached teacher logits are wrong for randomly augmented inputs: run the teacher online "
                          "(distill.cache_teacher: false) or train without augmentation")
    teacher.feature_names = tuple(getattr(objective, "teacher_taps", ()) or ())
    world, rank = _distributed()
    # DDP: every rank draws the same global batch order and trains on its 1/world shard of each batch; gradients
    # are averaged, so all ranks hold identical weights (initial weights are broadcast from rank 0).
    trained = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    student_taps = tuple(getattr(objective, "student_taps", ()) or ())
    tap = FeatureTap(model, student_taps) if student_taps else None  # hooks on `model`; `trained` may wrap it

    def forward_student(x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return tap.run(trained, x) if tap else (trained(x), None)

    if rank != 0:
        checkpoint, progress = None, False

    n = len(x_train)
    steps_per_epoch = math.ceil(n / batch_size)
    total_steps = max(1, math.ceil(cfg.epochs * steps_per_epoch))
    log_every = max(1, total_steps // 50)
    torch.manual_seed(seed)
    data_gen = torch.Generator().manual_seed(seed)

    # Materialize lazily built parts (hint adapters) before the optimizer sees the parameters.
    with torch.no_grad():
        set_eval(model)
        idx0 = torch.arange(min(batch_size, n))
        logits0, feats0 = forward_student(x_train[idx0])
        t_out0, t_feats0 = teacher.outputs(x_train[idx0], idx0)
        objective(logits0, y_train[idx0], t_out0, feats0, t_feats0)
    params = list(model.parameters()) + [p for p in objective.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    sched = make_scheduler(opt, cfg, total_steps)
    result = TrainResult()
    step = 0
    ckpt_path = Path(checkpoint) if checkpoint else None
    state = torch.load(ckpt_path, map_location="cpu", weights_only=False) if ckpt_path and ckpt_path.exists() else None
    if state is not None and state.get("key") != checkpoint_key:
        state = None  # written for other inputs: start over (it is overwritten at the first checkpoint)
    if state is not None:
        if state.get("total_steps") != total_steps:
            raise EdgeKDError(f"checkpoint {ckpt_path} was written for {state.get('total_steps')} steps, this run "
                              f"has {total_steps}; delete it to start over")
        load_state(model, state["model"])
        objective.load_state_dict(state["objective"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"]["torch"])
        data_gen.set_state(state["rng"]["data"])
        step = state["step"]
        result.history = state["history"]
        result.curve = state.get("curve", [])
        window = state.get("window", {})
        result.resumed_from_step = step
        epoch_sums = state["epoch_sums"]
        order_state = state["order_state"]
    else:
        epoch_sums = {}
        order_state = None
        window = {}

    def save_checkpoint(epoch_sums: dict, order_state) -> None:
        if ckpt_path is None:
            return
        torch_save({"model": get_state(model), "objective": objective.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "rng": _rng_state(data_gen), "step": step,
                    "total_steps": total_steps, "key": checkpoint_key, "history": result.history,
                    "epoch_sums": epoch_sums,
                    "curve": result.curve, "window": window,
                    "order_state": order_state}, ckpt_path)

    bar = _progress(total_steps, step, desc, progress)
    t0 = time.perf_counter()
    try:
        while step < total_steps:
            epoch = step // steps_per_epoch
            start_batch = step % steps_per_epoch
            # The shuffle order of an epoch comes from the data generator's state at the epoch's start; a resumed
            # run re-creates it from the saved state, then the generator continues from its saved position.
            if order_state is None:
                order_state = data_gen.get_state()
            resume_state = data_gen.get_state()
            data_gen.set_state(order_state)
            batches = list(iterate_batches(n, batch_size, shuffle=True, generator=data_gen, start=start_batch))
            if start_batch:
                data_gen.set_state(resume_state)
            set_train(model)
            for idx in batches:
                if step >= total_steps:
                    break
                if world > 1:
                    idx = idx[rank::world]
                if step_hook:
                    step_hook(model, step, total_steps)
                x = x_train[idx]
                if cfg.augment:
                    x = augment_batch(x, data_gen)
                y = y_train[idx]
                t_out, t_feats = teacher.outputs(x, idx)
                logits, feats = forward_student(x)
                parts = objective(logits, y, t_out, feats, t_feats)
                loss = parts["loss"]
                _check_finite(parts, step)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.grad_clip:
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                opt.step()
                sched.step()
                step += 1
                _accumulate(epoch_sums, parts, logits, y)
                _accumulate(window, parts, logits, y)
                if step % log_every == 0 or step == total_steps:
                    result.curve.append(_curve_point(step, window))
                    window.clear()
                bar.update(1)
                if step % 20 == 0:
                    bar.set_postfix(loss=f"{epoch_sums['loss'] / epoch_sums['n_batches']:.3f}", refresh=False)
                if step % cfg.checkpoint_every == 0 and step < total_steps:
                    save_checkpoint(epoch_sums, order_state)
                if stop_after_steps is not None and step >= stop_after_steps:
                    return result
            # End of an epoch (or of a fractional last epoch): log it.
            if world > 1:
                _average_buffers(model, world)
            record = _epoch_record(epoch + 1, step, epoch_sums, opt.param_groups[0]["lr"])
            if x_test is not None and y_test is not None:
                record["test_accuracy"] = evaluate(model, x_test, y_test, eval_batch_size, set_eval)
            result.history.append(record)
            epoch_sums, order_state = {}, None
            save_checkpoint(epoch_sums, order_state)
    finally:
        bar.close()
        if tap:
            tap.remove()
    set_eval(model)
    result.steps = step
    result.wall_time_s = time.perf_counter() - t0
    return result


def _distributed() -> tuple[int, int]:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


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


def _accumulate(sums: dict[str, float], parts: dict[str, torch.Tensor], logits: torch.Tensor,
                y: torch.Tensor) -> None:
    for name, value in parts.items():
        sums[name] = sums.get(name, 0.0) + float(value.detach())
    sums["n_batches"] = sums.get("n_batches", 0) + 1
    sums["correct"] = sums.get("correct", 0) + int((logits.argmax(-1) == y).sum())
    sums["n"] = sums.get("n", 0) + len(y)


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
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="step", disable=not enabled, leave=False,
                dynamic_ncols=True)
