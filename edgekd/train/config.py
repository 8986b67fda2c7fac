"""TrainConfig: the optimization settings shared by teacher training, distillation and QAT.

Kept apart from the recipe (edgekd.config imports it from here) so that the training loop needs nothing of the
recipe layer: edgekd.train imports neither edgekd.config nor edgekd.distill at module level.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass
class TrainConfig:
    """Optimization settings shared by teacher training, distillation and QAT."""

    epochs: float = 5
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"
    schedule: Literal["onecycle", "cosine", "constant"] = "onecycle"
    augment: bool = False
    checkpoint_every: int = 200
    grad_clip: float | None = None
    # Where and how it runs (edgekd.train.device); not part of a stage's fingerprint, except precision, which
    # changes the numbers: a run moved between a CPU and a GPU machine resumes where it stopped.
    device: str = "auto"                  # auto (CUDA when available) | cpu | cuda | cuda:N
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"   # autocast dtype; fp16 adds a GradScaler
    channels_last: bool = False           # NHWC memory format for conv nets (faster on recent GPUs)
    compile: bool = False                 # torch.compile the student (needs a C++ compiler on CPU)

    def problems(self, where: str = "train", include_typed: bool = True) -> list[str]:
        """What is wrong with the device and precision settings (empty when nothing is).

        include_typed: also check fields a recipe parser already checks against their Literal annotation.
        """
        from edgekd.train.device import device_problem, precision_problem

        found = [device_problem(self.device, f"{where}.device")]
        if include_typed:
            found.append(precision_problem(self.precision, f"{where}.precision"))
        return [p for p in found if p]


# Settings that say where training runs, not what it computes: left out of stage fingerprints.
PLACEMENT_FIELDS = ("device", "channels_last", "compile")
