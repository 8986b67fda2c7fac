"""Import torchvision and timm on a CPU-only torch, where PyPI's torchvision wheel cannot load its compiled ops.

PyPI's torchvision 0.28.0 is linked against CUDA: beside the CPU build of torch 2.13 its `_C` extension fails to
load and `import torchvision` stops with `operator torchvision::nms does not exist`. Its model definitions are pure
Python and only need the `torchvision::` operator *schemas* to exist, so when (and only when) the real import fails
that way, we declare the 13 schemas with `torch.library` and import again. The detection kernels (nms, roi_align,
...) then still have no implementation: classifiers build and run, detection models do not. On a machine where
torchvision loads normally (a CUDA torch, or a matching CPU torchvision) nothing is declared.
"""
from __future__ import annotations

import importlib
import sys
from types import ModuleType

from edgekd.errors import EdgeKDError

# Schemas of torchvision's C++ operators (torchvision/csrc/ops/*.cpp, TORCH_LIBRARY_FRAGMENT(torchvision, m)).
_SCHEMAS = (
    "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio, bool aligned) -> Tensor",
    "_roi_align_backward(Tensor grad, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "SymInt batch_size, SymInt channels, SymInt height, SymInt width, int sampling_ratio, bool aligned) -> Tensor",
    "ps_roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width, "
    "int sampling_ratio) -> (Tensor, Tensor)",
    "_ps_roi_align_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, int sampling_ratio, SymInt batch_size, SymInt channels, "
    "SymInt height, SymInt width) -> Tensor",
    "roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_roi_pool_backward(Tensor grad, Tensor rois, Tensor argmax, float spatial_scale, SymInt pooled_height, "
    "SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, SymInt width) -> Tensor",
    "ps_roi_pool(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, SymInt pooled_width) "
    "-> (Tensor, Tensor)",
    "_ps_roi_pool_backward(Tensor grad, Tensor rois, Tensor channel_mapping, float spatial_scale, "
    "SymInt pooled_height, SymInt pooled_width, SymInt batch_size, SymInt channels, SymInt height, "
    "SymInt width) -> Tensor",
    "deform_conv2d(Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, SymInt stride_h, "
    "SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, SymInt groups, "
    "SymInt offset_groups, bool use_mask) -> Tensor",
    "_deform_conv2d_backward(Tensor grad, Tensor input, Tensor weight, Tensor offset, Tensor mask, Tensor bias, "
    "SymInt stride_h, SymInt stride_w, SymInt pad_h, SymInt pad_w, SymInt dilation_h, SymInt dilation_w, "
    "SymInt groups, SymInt offset_groups, bool use_mask) -> (Tensor, Tensor, Tensor, Tensor, Tensor)",
    "_cuda_version() -> int",
)
_library = None  # the torch.library.Library holding the schemas; kept alive for the process


def _declare_schemas() -> None:
    global _library
    if _library is not None:
        return
    import torch

    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)


def _drop_partial(prefix: str) -> None:
    for name in [m for m in sys.modules if m == prefix or m.startswith(prefix + ".")]:
        del sys.modules[name]


def import_torchvision() -> ModuleType:
    """`torchvision`, importable on CPU torch even when its compiled ops are CUDA-only (see module docstring)."""
    try:
        return importlib.import_module("torchvision")
    except ModuleNotFoundError as e:
        raise EdgeKDError("torchvision is not installed: pip install 'edgekd[vision]'") from e
    except RuntimeError as e:
        if "torchvision::" not in str(e):
            raise
    _drop_partial("torchvision")
    _declare_schemas()
    return importlib.import_module("torchvision")


def import_timm() -> ModuleType:
    """`timm`, after making torchvision importable (timm imports it)."""
    import_torchvision()
    try:
        return importlib.import_module("timm")
    except ModuleNotFoundError as e:
        raise EdgeKDError("timm is not installed: pip install 'edgekd[vision]'") from e
