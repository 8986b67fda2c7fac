"""One latency record for every runner (local, adb, ssh, predictor): the "profile" stage's result row."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

# The keys the "profile" stage metrics contract names (COMMON.md); to_metrics() always writes all of them.
METRIC_KEYS = ("name", "runtime", "precision", "threads", "measured", "p50_ms", "p90_ms", "p99_ms", "mean_ms",
               "std_ms", "cv", "cv_flag", "init_ms", "first_ms", "peak_mem_mb", "bytes", "runs",
               "runtime_version", "device", "uncertainty")


@dataclass
class LatencyResult:
    """Latency of one model file with one runtime on one device; `measured` says measured or predicted.

    Figures a runner cannot observe are None (e.g. benchmark_model prints no p90/p99 on older builds).
    `uncertainty` is a relative 1-sigma error (0.1 = +-10%) for predictions, None for measurements.
    """

    name: str
    runtime: str
    precision: str
    threads: int
    measured: bool
    p50_ms: float | None
    p90_ms: float | None = None
    p99_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    cv: float | None = None
    cv_flag: bool = False
    init_ms: float | None = None
    first_ms: float | None = None
    peak_mem_mb: float | None = None
    bytes: int | None = None
    runs: int = 0
    runtime_version: str = "unknown"
    device: str = "unknown"
    uncertainty: float | None = None
    target: str = ""
    min_ms: float | None = None
    max_ms: float | None = None
    stopped_by: str = ""
    mem_method: str = ""
    basis: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def to_metrics(self) -> dict[str, Any]:
        """The contract's result row (all METRIC_KEYS) plus the extra fields this record knows."""
        d = asdict(self)
        out = {k: d[k] for k in METRIC_KEYS}
        for k in ("target", "min_ms", "max_ms", "stopped_by", "mem_method", "basis"):
            if d[k] not in (None, ""):
                out[k] = d[k]
        if self.extra:
            out["extra"] = dict(self.extra)
        return out


def model_files(path: str | Path) -> list[Path]:
    """The model file and the files it needs beside it (an .onnx file's external-data files)."""
    path = Path(path)
    files = [path]
    if path.suffix.lower() == ".onnx":
        import onnx
        from onnx.external_data_helper import _get_all_tensors

        model = onnx.load(str(path), load_external_data=False)
        for t in _get_all_tensors(model):
            if t.data_location == onnx.TensorProto.EXTERNAL:
                loc = next((e.value for e in t.external_data if e.key == "location"), None)
                if loc and (path.parent / loc) not in files:
                    files.append(path.parent / loc)
    return files


def file_bytes(path: str | Path) -> int:
    """Size on disk of the model, external-data files included."""
    return sum(p.stat().st_size for p in model_files(path) if p.is_file())


def runtimes_for_file(path: str | Path) -> tuple[str, ...]:
    """The runtimes that execute this file type (edgekd.formats.RUNTIMES), its format's preferred ones first."""
    from edgekd.formats import FORMATS, RUNTIMES

    suffix = Path(path).suffix.lower()
    preferred = next((f.runtimes for f in FORMATS.values() if f.suffix == suffix), ())
    return tuple(dict.fromkeys([*preferred, *(r.name for r in RUNTIMES.values() if suffix in r.suffixes)]))


def detect_precision(path: str | Path) -> str:
    """"int8", "fp16" or "fp32", as the file's format reads it (edgekd.formats.describe_file); "fp32" for a file
    type no format describes (a torch .pt runs but has no format)."""
    from edgekd.formats import FORMATS, describe_file

    if Path(path).suffix.lower() not in {f.suffix for f in FORMATS.values()}:
        return "fp32"
    return describe_file(path)["precision"]
