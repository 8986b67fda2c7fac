"""Quiet third-party chatter (TF/absl C++ info lines, torchao's optional CUDA kernels, exporter warnings)."""
from __future__ import annotations

import contextlib
import importlib
import logging
import os
import re
import sys
import tempfile
import warnings
from types import ModuleType
from typing import Iterator


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


def progress_bar(iterable=None, *, enabled: bool = True, **kwargs):
    """edgekd's progress bars: tqdm, drawn only when `enabled` and stderr is a terminal (never carriage-return
    bars in a log file or CI output)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if enabled else True, **kwargs)


def no_third_party_progress() -> None:
    """No progress bars from the libraries edgekd calls (tqdm's, Hugging Face's: e.g. transformers' GGUF
    conversion), which write carriage-return bars into logs. tqdm reads its TQDM_* defaults when it is first
    imported, so this is called before that: when the CLI parses --no-progress, or starts without a terminal."""
    os.environ["TQDM_DISABLE"] = "1"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"


# Lines TensorFlow's native libraries write to file descriptor 2 while they load, before any logging setting can
# reach them: absl prints everything logged before absl::InitializeLog(), and TensorFlow 2.21 logs its start-up
# (oneDNN, the CUDA stub, CPU features) through it, so TF_CPP_MIN_LOG_LEVEL does not silence them.
_STARTUP_NOISE = re.compile(
    r"^(WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR"
    r"|[IW]\d{4} [\d:.]+\s+\d+ (port|cudart_stub|cpu_feature_guard|cpu_utils|gpu_device)\.cc:\d+\].*"
    r"|To enable the following instructions: .*rebuild TensorFlow with the appropriate compiler flags\.)$")


def is_startup_noise(line: str) -> bool:
    return bool(_STARTUP_NOISE.match(line.rstrip("\r\n")))


@contextlib.contextmanager
def native_startup_filtered() -> Iterator[None]:
    """Hold back TensorFlow's native start-up lines (fd 2) while the body runs; every other line is written
    back to stderr when it ends, errors included."""
    fd = 2  # the native libraries write to the process's fd 2, whatever sys.stderr is
    try:
        saved = os.dup(fd)
    except OSError:  # no fd 2 (a daemon): nothing to filter
        yield
        return
    _flush_stderr()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            _flush_stderr()
            os.dup2(saved, fd)
            os.close(saved)
            sink.seek(0)
            kept = [line for line in sink.read().splitlines(keepends=True)
                    if not is_startup_noise(line.decode(errors="replace"))]
            if kept:
                os.write(fd, b"".join(kept))


def _flush_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):
        pass


def import_quietly(name: str) -> ModuleType:
    """Import a module that loads TensorFlow's native libraries (litert_torch, tensorflow_lite_support, tensorflow)
    without their start-up lines; the environment is set first, as TensorFlow reads it once when it loads."""
    if name in sys.modules:
        return sys.modules[name]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with native_startup_filtered():
        return importlib.import_module(name)
