"""Optional dependency groups ("extras"): a feature whose extra is missing fails with one line that names it.

The core install covers distillation, quantization and ONNX; pyproject.toml lists the extras. Library code imports
an optional package with `require(module, extra)`; the CLI also turns any other ModuleNotFoundError of a known
optional package into the same one line (`missing_extra`), so no user meets a traceback for a missing extra.
"""
from __future__ import annotations

import importlib
from types import ModuleType

from edgekd.errors import EdgeKDError

# Top-level import name -> the extra that installs it.
EXTRA_OF_MODULE = {
    "litert_torch": "litert", "ai_edge_litert": "litert", "ai_edge_quantizer": "litert",
    "tensorflow_lite_support": "litert",
    "tensorflow": "tensorflow", "tf_keras": "tensorflow",
    "torchvision": "vision", "timm": "vision",
    "transformers": "lm", "gguf": "lm", "accelerate": "lm", "safetensors": "lm", "sentencepiece": "lm",
    "optuna": "auto", "pytest": "test",
}
# tflite-support pins protobuf<4 and is installed on its own with --no-deps (tools/setup_env.sh).
_SPECIAL_INSTALL = {"tensorflow_lite_support": "pip install --no-deps tflite-support==0.4.4"}


def install_hint(top: str, extra: str) -> str:
    """The pip command that installs the top-level module `top` of `extra`."""
    return _SPECIAL_INSTALL.get(top, f"pip install 'edgekd[{extra}]'")


def require(module: str, extra: str, feature: str | None = None) -> ModuleType:
    """Import `module`, or raise EdgeKDError naming the pip extra that installs it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as e:
        top = module.split(".")[0]
        if e.name is not None and e.name.split(".")[0] != top:
            raise  # the module is there but one of its own imports is broken: show that, not a wrong hint
        what = feature or module
        raise EdgeKDError(f"{what} needs the '{extra}' extra ({top} is not installed): "
                          f"{install_hint(top, extra)}") from e


def missing_extra(error: ModuleNotFoundError) -> EdgeKDError | None:
    """The one-line error for a ModuleNotFoundError of an optional package, or None for any other module."""
    top = (error.name or "").split(".")[0]
    extra = EXTRA_OF_MODULE.get(top)
    if extra is None:
        return None
    return EdgeKDError(f"{top} is not installed; it comes with the '{extra}' extra: {install_hint(top, extra)}")
