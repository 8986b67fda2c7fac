"""Quiet third-party chatter (TF/absl C++ info lines, torchao's optional CUDA kernels, exporter warnings)."""
from __future__ import annotations

import logging
import os
import warnings


def quiet_third_party_logs() -> None:
    """Call once at a program's start (CLI, tools): users see edgekd's own lines, not the converters'."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "2")
    for name in ("torchao", "torch.onnx", "torch._export", "torch.export", "onnxscript", "absl", "litert_torch",
                 "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*training mode.*")
    warnings.filterwarnings("ignore", message=".*Enum subclass.*")
