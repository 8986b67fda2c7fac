"""The shared training loop, its config and its checkpoints (teacher training, distillation, QAT).

Where training runs is `edgekd.train.device` (device, precision, portable checkpoints), several processes under
torchrun `edgekd.train.distributed`, TensorBoard/MLflow `edgekd.train.monitor`. Nothing here imports edgekd.config
or edgekd.distill at module level, so both can import this package.
"""
from edgekd.train.checkpoint import load_checkpoint, plain_state_dict, restore_state_dict, save_checkpoint
from edgekd.train.config import TrainConfig
from edgekd.train.loop import (CrossEntropyObjective, NonFiniteLossError, TeacherSignal, TrainResult, check_labels,
                               evaluate, make_optimizer, make_scheduler, total_steps_for, train)

__all__ = ["CrossEntropyObjective", "NonFiniteLossError", "TeacherSignal", "TrainConfig", "TrainResult",
           "check_labels", "evaluate", "load_checkpoint", "make_optimizer", "make_scheduler", "plain_state_dict",
           "restore_state_dict", "save_checkpoint", "total_steps_for", "train"]
