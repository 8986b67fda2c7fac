"""Fit a model to the data: build it for the data's classes, replace a classifier head, check the input size.

Policy (docs/models.md, "Classes and the head"):
- zoo models get `num_classes` and `in_channels` from the data unless the recipe's kwargs set them;
- any other model (torchvision:, timm:, package.module:Callable) is called with the recipe's kwargs exactly as
  written, then its local weights (if any) are loaded strictly, then, when its output count differs from the
  data's class count, its classifier head is replaced by a freshly initialised one of the right size: timm's
  `reset_classifier`, else the last `nn.Linear` (or a final 1x1 `nn.Conv2d`, as in SqueezeNet) that produces
  the output. The model file records `head` so the same module is rebuilt on reload.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.models.names import is_zoo_name


def _head_candidate(model: nn.Module, outputs: int | None) -> tuple[str, nn.Module] | None:
    """The last Linear (or, failing that, the last Conv2d) in registration order, matching `outputs` if given."""
    for kind in (nn.Linear, nn.Conv2d):
        found = [(n, m) for n, m in model.named_modules() if isinstance(m, kind)
                 and (outputs is None or (m.out_features if kind is nn.Linear else m.out_channels) == outputs)]
        if found:
            return found[-1]
    return None


def replace_head(model: nn.Module, num_classes: int, outputs: int | None = None) -> str:
    """Give `model` a new classifier for `num_classes`; returns the replaced module's name.

    timm models use their own `reset_classifier`; otherwise the last Linear whose out_features is `outputs` (the
    model's current class count, when known) is replaced, or the last such 1x1 Conv2d.
    """
    if hasattr(model, "reset_classifier") and hasattr(model, "num_classes"):
        model.reset_classifier(num_classes)
        return "classifier (timm reset_classifier)"
    found = _head_candidate(model, outputs)
    if found is None:
        raise EdgeKDError(f"cannot find the classifier head of {type(model).__name__} (no nn.Linear or nn.Conv2d "
                          f"giving {outputs} outputs) to replace it for {num_classes} classes; pass the class count "
                          f"in the model's kwargs (e.g. num_classes: {num_classes}) or build it in your own callable")
    name, old = found
    if isinstance(old, nn.Linear):
        new: nn.Module = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, old.kernel_size, old.stride, old.padding,
                        bias=old.bias is not None)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)
    return name


_CHANNELS = re.compile(r"expected input\[[^\]]*\] to have (\d+) channels, but got (\d+) channels")
_MATMUL = re.compile(r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)")


def _input_problem(model: nn.Module, shape: tuple[int, ...], e: Exception) -> str:
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    what = f"images of shape {'x'.join(map(str, shape))} (C x H x W)"
    m = _CHANNELS.search(first)
    if m:
        return (f"the model expects {m.group(1)} input channel(s), the data has {m.group(2)} ({what}); build the "
                f"model for {m.group(2)} channels (e.g. in_channels/in_chans) or convert the images")
    m = _MATMUL.search(first)
    if m:
        return (f"the model's fully connected layer expects {m.group(3)} features, images of the data's size give "
                f"{m.group(2)} ({what}): the model was built for another image size; resize the data "
                f"(e.g. data.kwargs.size for image_folder) or build the model for this size")
    return f"the model cannot run on the data's {what}: {first}"


def check_model_input(model: nn.Module, input_shape: Sequence[int], num_classes: int | None = None,
                      name: str | None = None) -> tuple[int, ...]:
    """One forward pass on a zero batch of the data's shape; a mismatch becomes one EdgeKDError line.

    Args:
        input_shape: one image's shape (C, H, W), as `ImageDataset.input_shape`.
        num_classes: the data's class count; the model's output must be (batch, num_classes).
    Returns:
        The output shape for a batch of 2.
    """
    label = f"model {name!r}" if name else type(model).__name__
    shape = tuple(int(s) for s in input_shape)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(2, *shape))
    except Exception as e:  # shape errors arrive as RuntimeError, ValueError or AssertionError (timm img_size)
        raise EdgeKDError(f"{label} does not fit the data: {_input_problem(model, shape, e)}") from e
    finally:
        model.train(was_training)
    if not isinstance(out, torch.Tensor):
        raise EdgeKDError(f"{label} returned a {type(out).__name__}; edgekd needs a logits tensor (batch, classes) "
                          f"- wrap the model so forward returns the logits")
    if out.ndim != 2 or (num_classes is not None and out.shape[1] != num_classes):
        raise EdgeKDError(f"{label} outputs shape {tuple(out.shape)} for a batch of 2, the data has {num_classes} "
                          f"classes: a model must output (batch, {num_classes}) logits; set num_classes in its "
                          f"kwargs, or leave it out and let edgekd replace the head (docs/models.md)")
    return tuple(out.shape)


@dataclass
class BuiltModel:
    """A model built for a data set, with what its model file must record to rebuild it."""

    module: nn.Module
    name: str
    kwargs: dict[str, Any]
    head: int | None = None                   # class count the classifier head was replaced with
    import_path: str | None = None
    notes: list[str] = field(default_factory=list)

    def file_info(self) -> dict[str, Any]:
        """Keyword arguments for save_model_file(module, name, kwargs, path, **file_info())."""
        return {"head": self.head, "import_path": self.import_path}


def build_for_data(name: str, kwargs: dict[str, Any] | None, *, input_shape: Sequence[int], num_classes: int,
                   weights: str | None = None, import_path: str | None = None, replace: bool = True) -> BuiltModel:
    """Build `name` for images of `input_shape` and `num_classes` classes (policy in the module docstring).

    `weights`: a local file (state_dict, checkpoint with 'state_dict'/'model', edgekd model file) loaded before
    any head replacement. `replace=False` refuses a class-count mismatch instead of replacing the head (a loaded
    teacher that will not be trained must already predict the data's classes).
    """
    from edgekd.models.io import load_weights
    from edgekd.models.zoo import build_model

    kwargs = dict(kwargs or {})
    if is_zoo_name(name):
        kwargs = {"num_classes": num_classes, "in_channels": int(input_shape[0]), **kwargs}
    module = build_model(name, import_folder=import_path, **kwargs)
    if weights:
        load_weights(module, weights, what=f"{name} weights")
    built = BuiltModel(module, name, kwargs, import_path=str(import_path) if import_path else None)
    outputs = check_model_input(module, input_shape, None, name)[1]
    if outputs != num_classes:
        if not replace:
            raise EdgeKDError(f"model {name!r} outputs {outputs} classes, the data has {num_classes}: a loaded "
                              f"teacher must predict the data's classes: set teacher.finetune: true to train it "
                              f"from these weights with a new {num_classes}-class head, or give weights "
                              f"fine-tuned on this data")
        where = replace_head(module, num_classes, outputs)
        built.head = num_classes
        built.notes.append(f"{name}: replaced the {outputs}-class head ({where}) with a new {num_classes}-class "
                           f"one")
    check_model_input(module, input_shape, num_classes, name)
    return built


__all__ = ["BuiltModel", "build_for_data", "check_model_input", "replace_head"]
