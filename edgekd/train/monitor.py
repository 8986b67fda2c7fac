"""Training visibility: TensorBoard event files (and MLflow, when installed and asked for) written by rank 0.

A run logs to `<run>/tensorboard/<stage>` (`tensorboard --logdir runs/<run>/tensorboard`): per step the loss and
its parts, the learning rate and images/s; per epoch the train and test accuracy. TensorBoard is the ecosystem's
default and an optional extra (`pip install 'edgekd[monitor]'`): without it training runs as before and says once
that no event files are written. MLflow logs the same scalars when `EDGEKD_MLFLOW=1` (or an MLFLOW_TRACKING_URI) is
set and mlflow is importable; it is never a dependency.

The pipeline tells the loop where to log with `log_to(folder)` around a stage, so stages need no extra argument;
`train(..., log_dir=...)` overrides it.
"""
from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path
from typing import Any, Iterator

_LOG_DIR: list[Path | None] = [None]


@contextlib.contextmanager
def log_to(folder: str | Path | None) -> Iterator[None]:
    """Training runs inside the block log their metrics under `folder` (None: no event files)."""
    previous = _LOG_DIR[0]
    _LOG_DIR[0] = Path(folder) if folder is not None else None
    try:
        yield
    finally:
        _LOG_DIR[0] = previous


def current_log_dir() -> Path | None:
    return _LOG_DIR[0]


def tensorboard_available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


class Monitor:
    """Scalars to TensorBoard (and MLflow); a Monitor without a folder, or on a rank other than 0, does nothing."""

    def __init__(self, folder: str | Path | None, *, enabled: bool = True, log=None):
        self.tb = None
        self.mlflow = None
        if folder is None or not enabled:
            return
        if tensorboard_available():
            from edgekd.logs import import_quietly

            # tensorboard imports TensorFlow when it is installed (the tensorflow extra): without its start-up lines
            SummaryWriter = import_quietly("torch.utils.tensorboard").SummaryWriter
            Path(folder).mkdir(parents=True, exist_ok=True)
            self.tb = SummaryWriter(log_dir=str(folder))
        elif log is not None:
            log(f"tensorboard is not installed: no event files in {folder} (pip install 'edgekd[monitor]')")
        self.mlflow = _mlflow_if_asked()

    @property
    def active(self) -> bool:
        return self.tb is not None or self.mlflow is not None

    def scalars(self, values: dict[str, Any], step: int) -> None:
        clean = {k: float(v) for k, v in values.items() if isinstance(v, (int, float))}
        if self.tb is not None:
            for name, value in clean.items():
                self.tb.add_scalar(name, value, step)
        if self.mlflow is not None:
            self.mlflow.log_metrics({k.replace("/", "_"): v for k, v in clean.items()}, step=step)

    def close(self) -> None:
        if self.tb is not None:
            self.tb.flush()
            self.tb.close()
            self.tb = None


def _mlflow_if_asked():
    if not (os.environ.get("EDGEKD_MLFLOW") == "1" or os.environ.get("MLFLOW_TRACKING_URI")):
        return None
    if importlib.util.find_spec("mlflow") is None:
        return None
    import mlflow

    if mlflow.active_run() is None:
        mlflow.start_run()
    return mlflow


def read_scalars(folder: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series in the TensorBoard event files under `folder` as {tag: [(step, value), ...]}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
