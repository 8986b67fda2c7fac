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
