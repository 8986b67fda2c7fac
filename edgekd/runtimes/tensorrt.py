"""TensorRT: a runtime that targets list (Jetson) but that edgekd does not run here (`open` is None).

Its files are the int8 .onnx files (explicit Q/DQ, symmetric activations: the `tensorrt_int8` scheme), built into
engines on the device; profiling a tensorrt target measures there or predicts.
"""
from __future__ import annotations

from edgekd.formats import Runtime, register_runtime

TENSORRT = register_runtime(Runtime("tensorrt", (".onnx",), None, module="tensorrt"))
