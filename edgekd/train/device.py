"""Where training runs and in what precision: device resolution, autocast, gradient scaling, batch transfer.

Training may run on a GPU in reduced precision; what leaves the training loop never depends on that. The loop
moves the model to the resolved device, trains under `torch.autocast` (the weights stay fp32 masters), and puts
the model back on the CPU in fp32 before returning, so export, quantization and verification see the same kind of
module whether training ran on a laptop or on a GPU node. Checkpoints hold CPU tensors (`to_cpu`) and are loaded
with `map_location="cpu"`; the optimizer moves its state to the parameters' device when it is loaded.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch import nn

from edgekd.errors import EdgeKDError

PRECISIONS = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_problem(value: Any, where: str = "device") -> str | None:
    """Why `value` is no valid device setting (None when it is): auto, cpu, cuda or cuda:N."""
    if not isinstance(value, str) or not DEVICE_PATTERN.fullmatch(value):
        return f"{where}: {value!r} is not a device; allowed: auto, cpu, cuda, cuda:N (N = GPU index)"
    return None


def resolve_device(value: str = "auto") -> torch.device:
    """The torch device a `device:` setting means on this machine.

    auto is CUDA when available, else CPU. Under torchrun, `cuda` (and auto on a GPU machine) is the GPU of this
    process's LOCAL_RANK, so every process of a node trains on its own GPU.

    Raises:
        EdgeKDError: the setting is malformed, or names CUDA on a machine without it, or a GPU index it lacks.
    """
    problem = device_problem(value)
    if problem:
        raise EdgeKDError(problem)
    if value == "cpu" or (value == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise EdgeKDError(f"device {value!r}: this machine has no CUDA GPU that torch can use "
                          f"(torch {torch.__version__}); set device: auto or cpu, or install a CUDA build of torch")
    if value in ("auto", "cuda"):
        index = int(os.environ.get("LOCAL_RANK", 0))
    else:
        index = int(value.split(":")[1])
    count = torch.cuda.device_count()
    if index >= count:
        raise EdgeKDError(f"device {value!r} needs GPU {index}, this machine has {count} "
                          f"(indices 0..{count - 1}); under torchrun use device: cuda (one GPU per LOCAL_RANK)")
    return torch.device("cuda", index)


@dataclass(frozen=True)
class Precision:
    """Autocast and gradient scaling for one training run on one device."""

    name: str
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        return PRECISIONS[self.name]

    @property
    def enabled(self) -> bool:
        return self.name != "fp32"

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward passes (weights stay fp32); a no-op for fp32."""
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> "torch.amp.GradScaler":
        """Loss scaling, on for fp16 only: fp16 gradients underflow without it; bf16 has fp32's exponent range."""
        return torch.amp.GradScaler(self.device.type, enabled=self.name == "fp16")

    def teacher_dtype(self) -> torch.dtype | None:
        """The dtype a teacher runs in (autocast, inference mode): half precision on CUDA, the run's otherwise."""
        if self.device.type == "cuda":
            return torch.bfloat16 if self.name == "bf16" or (
                self.name == "fp32" and torch.cuda.is_bf16_supported()) else torch.float16
        return self.dtype if self.enabled else None


def precision_problem(value: Any, where: str = "precision") -> str | None:
    if value not in PRECISIONS:
        return f"{where}: {value!r} is not a precision; allowed: {', '.join(PRECISIONS)}"
    return None


def to_device(batch_x: torch.Tensor, device: torch.device, channels_last: bool = False) -> torch.Tensor:
    """Move a batch to `device`: pinned host memory and a non-blocking copy for CUDA, nothing for CPU."""
    if device.type == "cuda":
        if not batch_x.is_pinned():
            batch_x = _pin(batch_x)
        batch_x = batch_x.to(device, non_blocking=True)
    if channels_last and batch_x.dim() == 4:
        batch_x = batch_x.contiguous(memory_format=torch.channels_last)
    return batch_x


def _pin(t: torch.Tensor) -> torch.Tensor:
    return t.pin_memory()


def to_cpu(obj: Any) -> Any:
    """`obj` with every tensor moved to the CPU (checkpoints: portable between CPU and GPU machines)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        moved = {k: to_cpu(v) for k, v in obj.items()}
        if type(obj) is dict:
            return moved
        try:
            out = type(obj)(moved)  # OrderedDict (state dicts keep their per-module `_metadata`)
        except TypeError:
            return moved
        if hasattr(obj, "_metadata"):
            out._metadata = obj._metadata
        return out
    if isinstance(obj, list):
        return [to_cpu(v) for v in obj]
    if isinstance(obj, tuple):
        items = [to_cpu(v) for v in obj]
        return type(obj)(*items) if hasattr(obj, "_fields") else tuple(items)
    return obj


def back_to_cpu_fp32(model: nn.Module, channels_last: bool = False) -> nn.Module:
    """Put a trained model on the CPU with fp32 floating parameters and buffers in the default memory format.

    Export, quantization and verification read the model after training: this makes what they read independent
    of where and in what precision it was trained. A model already on the CPU in fp32 is left untouched.
    """
    tensors = list(model.parameters()) + list(model.buffers())
    if any(t.device.type != "cpu" for t in tensors):
        model.to("cpu")
    for t in list(model.parameters()) + list(model.buffers()):  # .to() replaces buffer objects
        if t.is_floating_point() and t.dtype != torch.float32:
            t.data = t.data.float()
    if channels_last:
        model.to(memory_format=torch.contiguous_format)
    return model


def compile_model(model: nn.Module) -> Any:
    """`torch.compile(model)`, or one clear error where this platform cannot compile (no C++ compiler, Windows)."""
    try:
        return torch.compile(model)
    except Exception as e:  # RuntimeError on unsupported Python/platforms
        raise EdgeKDError(f"train.compile: torch.compile is not available here ({_first_line(e)}); "
                          f"set compile: false") from None


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


@contextlib.contextmanager
def compile_errors_as_edgekd() -> Iterator[None]:
    """torch.compile compiles at the first call: turn a backend failure there into one EdgeKDError line."""
    try:
        yield
    except EdgeKDError:
        raise
    except Exception as e:
        from torch._dynamo.exc import BackendCompilerFailed, TorchRuntimeError, Unsupported

        if isinstance(e, (BackendCompilerFailed, TorchRuntimeError, Unsupported)):
            raise EdgeKDError(f"train.compile: torch.compile failed on this model/platform ({_first_line(e)}); "
                              f"set compile: false") from None
        raise


def cpu_bf16_support() -> dict[str, Any]:
    """What this CPU offers for bf16 (read from /proc/cpuinfo flags and torch's dispatch level; nothing assumed)."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return {"avx512_bf16": "avx512_bf16" in flags, "amx_bf16": "amx_bf16" in flags,
            "avx512f": "avx512f" in flags, "avx2": "avx2" in flags,
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability()}
