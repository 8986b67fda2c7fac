"""What every export pass shares: the model and input checks before a converter runs."""
from __future__ import annotations

import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.quant.capture import check_example_inputs
from edgekd.quant.qat import is_quantized


def precision_of(model: nn.Module) -> str:
    return "int8" if is_quantized(model) else "fp32"


def prepare_for_export(model: nn.Module, example_inputs) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    """Check the inputs and put a float module in eval mode (exported graphs are left as they are)."""
    if not isinstance(model, nn.Module):
        raise EdgeKDError(f"expected a torch nn.Module to export, got {type(model).__name__}")
    inputs = check_example_inputs(example_inputs)
    if not isinstance(model, torch.fx.GraphModule):
        model.eval()
    return model, inputs


def first_rows(inputs: tuple[torch.Tensor, ...], n: int) -> tuple[torch.Tensor, ...]:
    return tuple(t[:n].contiguous() for t in inputs)
