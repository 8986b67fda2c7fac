"""Short proxy trainings scored on the validation split: what tune and search measure candidates with.

A proxy trains a freshly built student on a seeded subset of the training split for a few epochs with a given
loss list and scores it on the validation split (carved from the training data by edgekd.data; never the test
set). `ProxyRun` evaluates at fixed fractions of the run so that a caller (Optuna's pruner) can stop a poor
candidate early.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import torch
from torch import nn

from edgekd.errors import EdgeKDError

if TYPE_CHECKING:
    from edgekd.data import ImageDataset
    from edgekd.train import TrainConfig

CE_ONLY = [{"name": "ce", "weight": 1.0}]


def require_validation(ds: "ImageDataset", what: str) -> None:
    if ds.x_val is None or len(ds.x_val) == 0:
        raise EdgeKDError(f"{what} chooses on the validation split, but there is none (data.val_fraction is 0): "
                          "set data.val_fraction (e.g. 0.1) so that no choice is made on the test set")


def split_record(ds: "ImageDataset") -> dict[str, Any]:
    """What the run records about the data a choice was made on."""
    return {"train": len(ds.x_train), "val": len(ds.x_val), "test": len(ds.x_test), **(ds.split or {})}


def train_subset(ds: "ImageDataset", n: int | None, seed: int) -> torch.Tensor:
    """Indices of `n` training images (a seeded permutation; all when n is None or too large)."""
    total = len(ds.x_train)
    if n is None or n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def build_student(name: str, kwargs: dict[str, Any], ds: "ImageDataset", seed: int,
                  import_path: str | None = None, weights: str | None = None):
    """The student built for the data (head and input checked), initialised from `seed`: a BuiltModel."""
    from edgekd.models import build_for_data

    torch.manual_seed(seed)
    return build_for_data(name, kwargs, input_shape=ds.input_shape, num_classes=ds.num_classes,
                          import_path=import_path, weights=weights)


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-accumulates of one forward pass of one image (Conv2d and Linear layers; the rest is small)."""
    total = 0

    def hook(m: nn.Module, inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1] * (m.in_channels // m.groups)
            total += int(out.numel() * k)
        elif isinstance(m, nn.Linear):
            total += int(out.numel() * m.in_features)

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(torch.zeros(1, *input_shape))
    finally:
        for h in handles:
            h.remove()
        model.train(was)
    return total


def predictions(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted class per row of x (eval mode, no grad)."""
    model.eval()
    with torch.no_grad():
        return torch.cat([model(x[i:i + batch_size]).argmax(-1) for i in range(0, len(x), batch_size)])


@dataclass
class TeacherOutputs:
    """The teacher's logits on the proxies' training rows, computed once and shared by every proxy run."""

    teacher: Any
    logits: torch.Tensor

    @classmethod
    def compute(cls, teacher: Any, x: torch.Tensor, batch_size: int = 512) -> "TeacherOutputs":
        with torch.no_grad():
            logits = torch.cat([teacher.logits(x[i:i + batch_size]).float() for i in range(0, len(x), batch_size)])
        return cls(teacher, logits)

    def signal(self):
        """A TeacherSignal for a proxy on the rows these logits were computed for (indexed by position)."""
        from edgekd.train import TeacherSignal

        return TeacherSignal(teacher=self.teacher, cached=self.logits)


class Pruned(Exception):
    """Raised from a proxy's evaluation callback to stop it early."""


@dataclass
class ProxyResult:
    val_accuracy: float
    curve: list[tuple[float, float]]       # (fraction of the run, validation accuracy)
    seconds: float
    pruned: bool = False
    val_nll: float | None = None  # validation cross-entropy of the finished run (None when pruned)


def validation_scores(model: nn.Module, ds: "ImageDataset", batch_size: int = 1000) -> tuple[float, float]:
    """(top-1 accuracy, mean cross-entropy) of `model` on the validation split, in one pass (eval mode, no grad).

    The cross-entropy is a proper score that, unlike accuracy on a few hundred images, does not come in steps of
    one image, so it can order runs whose accuracies tie."""
    import torch.nn.functional as F

    model.eval()
    device = next(iter(model.parameters())).device
    total, correct = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(ds.y_val), batch_size):
            logits = model(ds.x_val[i:i + batch_size].to(device)).float()
            y = ds.y_val[i:i + batch_size].to(device)
            total += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += int((logits.argmax(-1) == y).sum())
    n = max(1, len(ds.y_val))
    return correct / n, total / n


def validation_nll(model: nn.Module, ds: "ImageDataset", batch_size: int = 1000) -> float:
    """Mean cross-entropy of `model` on the validation split (validation_scores)."""
    return validation_scores(model, ds, batch_size)[1]


def proxy_train(model: nn.Module, ds: "ImageDataset", idx: torch.Tensor | None, terms: list[dict[str, Any]],
                cfg: "TrainConfig", *, teacher: TeacherOutputs | None, seed: int, batch_size: int,
                checks: int = 4, report: Callable[[float, float], None] | None = None,
                deadline: float | None = None) -> ProxyResult:
    """Train `model` on training rows `idx` (None: all) with `terms`; score on the validation split `checks` times.

    `report(fraction, val_accuracy)` may raise Pruned to stop the run; `deadline` (time.perf_counter) stops it
    too. The result's val_accuracy is the last one measured; a finished run also has its validation
    cross-entropy (validation_scores).
    """
    from edgekd.distill import build_objective
    from edgekd.train import TeacherSignal, evaluate, train

    objective = build_objective(terms)
    needs = getattr(objective, "needs_teacher", False)
    if needs and teacher is None:
        raise EdgeKDError("a proxy with distillation losses needs the teacher")
    signal = teacher.signal() if needs else TeacherSignal()
    curve: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    every: list[int] = []

    def hook(m: nn.Module, step: int, total: int) -> None:
        if not every:
            every.extend(sorted({max(1, round(total * k / checks)) for k in range(1, checks)}))
        if step in every:
            acc = evaluate(m, ds.x_val, ds.y_val, 1000)
            m.train()
            curve.append((step / total, acc))
            if report:
                report(step / total, acc)
            if deadline is not None and time.perf_counter() > deadline:
                raise Pruned("time budget")

    pruned = False
    try:
        x, y = (ds.x_train, ds.y_train) if idx is None else (ds.x_train[idx], ds.y_train[idx])
        train(model, x, y, cfg, objective=objective, teacher=signal, seed=seed,
              batch_size=batch_size, progress=False, step_hook=hook, desc="proxy")
    except Pruned:
        pruned = True
    nll = None
    if pruned:
        acc = curve[-1][1] if curve else evaluate(model, ds.x_val, ds.y_val, 1000)
    else:
        acc, nll = validation_scores(model, ds)
        curve.append((1.0, acc))
    return ProxyResult(acc, curve, time.perf_counter() - t0, pruned, nll)


def proxy_config(train_cfg: "TrainConfig", epochs: float) -> "TrainConfig":
    """The recipe's optimisation settings with a short schedule and no checkpoints."""
    from dataclasses import replace

    return replace(train_cfg, epochs=epochs, checkpoint_every=10 ** 9, augment=False)
