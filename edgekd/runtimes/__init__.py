"""Runtimes that execute exported model files, one module each (onnxruntime, litert, torch, tensorrt).

Each module registers a `edgekd.formats.Runtime`; `edgekd.formats.open_session(path)` loads a file in its
runtime and returns a `Session`. The names below are re-exported for callers of the former edgekd.runtimes
module; new code imports them from edgekd.formats.
"""
from edgekd.formats import RUNTIMES, Runtime, open_session, register_runtime, runtime_for
from edgekd.runtimes.session import Session

__all__ = ["RUNTIMES", "Runtime", "Session", "open_session", "register_runtime", "runtime_for"]
