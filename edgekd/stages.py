"""Run directory and stage bookkeeping (DESIGN §3): fingerprints, stage.json, skip-when-unchanged.

A stage is done when `<run>/<stage>/stage.json` exists, its fingerprint matches the current inputs, and every
output file it lists still has the recorded sha256. Outputs are written under temporary names and renamed,
and stage.json is written last, so a killed stage never looks finished.
"""
from __future__ import annotations

import hashlib
import json
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.errors import EdgeKDError
from edgekd.fileio import read_json, sha256_file, write_json

STAGE_ORDER = ("teacher", "distill", "quantize", "export", "verify", "profile", "bundle", "report")


@dataclass
class StageRecord:
    stage: str
    fingerprint: str
    outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    wall_time_s: float = 0.0

    def path(self, run_dir: Path, key: str) -> Path:
        if key not in self.outputs:
            raise EdgeKDError(f"stage {self.stage!r} has no output {key!r}; it has: {', '.join(self.outputs)}")
        return run_dir / self.outputs[key]["path"]


def fingerprint(*parts: Any) -> str:
    """sha256 of the JSON of `parts` (recipe sections, upstream fingerprints, file digests)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:24]


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for pkg in ("edgekd", "torch", "torchao", "litert-torch", "ai-edge-litert", "onnx", "onnxruntime"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    return out


def stage_json(run_dir: Path, stage: str) -> Path:
    return run_dir / stage / "stage.json"


def load_record(run_dir: Path, stage: str) -> StageRecord | None:
    path = stage_json(run_dir, stage)
    if not path.exists():
        return None
    try:
        data = read_json(path)
        return StageRecord(**data)
    except (ValueError, TypeError) as e:
        raise EdgeKDError(f"{path} is corrupt ({e}); delete it to re-run stage {stage!r}") from e


def require_record(run_dir: Path, stage: str) -> StageRecord:
    rec = load_record(run_dir, stage)
    if rec is None:
        raise EdgeKDError(f"stage {stage!r} has not run in {run_dir}; run it first (edgekd run RECIPE --until {stage})")
    return rec


def is_done(run_dir: Path, stage: str, fp: str) -> StageRecord | None:
    """The stage's record if it finished with fingerprint `fp` and its outputs are intact, else None."""
    rec = load_record(run_dir, stage)
    if rec is None or rec.fingerprint != fp:
        return None
    for out in rec.outputs.values():
        p = run_dir / out["path"]
        if not p.exists() or sha256_file(p) != out["sha256"]:
            return None
    return rec


def write_record(run_dir: Path, stage: str, fp: str, outputs: dict[str, Path], metrics: dict[str, Any],
                 started: float) -> StageRecord:
    rec = StageRecord(stage=stage, fingerprint=fp,
                      outputs={k: {"path": str(Path(p).resolve().relative_to(run_dir.resolve())),
                                   "sha256": sha256_file(p), "bytes": Path(p).stat().st_size}
                               for k, p in outputs.items()},
                      metrics=metrics, versions=versions(), wall_time_s=round(time.perf_counter() - started, 3))
    write_json(stage_json(run_dir, stage), rec.__dict__)
    return rec
