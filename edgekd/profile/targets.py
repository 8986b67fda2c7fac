"""Edge targets: one YAML per device naming how to reach it, its runtimes and its peak figures (DESIGN §4)."""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.errors import ConfigError, EdgeKDError
from edgekd.formats import RUNTIMES
from edgekd.profile.runners import runner_for, target_kinds

PEAK_KEYS = ("fp32_gflops", "int8_gops", "mem_gbps")
OPTIONAL_PEAK_KEYS = ("fp16_gflops",)
TARGET_KEYS = {"name", "kind", "description", "connect", "runtimes", "threads", "peak"}


def targets_dir() -> Path:
    """The folder of bundled target YAMLs: $EDGEKD_TARGETS_DIR, else the shipped targets/."""
    from edgekd.resources import shipped_path

    env = os.environ.get("EDGEKD_TARGETS_DIR")
    return Path(env) if env else shipped_path("targets")


@dataclass(frozen=True)
class Peak:
    """Published (or estimated, see the YAML comments) peak figures used by the predictor."""

    fp32_gflops: float
    int8_gops: float
    mem_gbps: float
    fp16_gflops: float | None = None

    def ops_per_s(self, precision: str) -> float:
        """Peak arithmetic rate for `precision` in op/s (a MAC is 2 ops)."""
        if precision == "int8":
            return self.int8_gops * 1e9
        if precision == "fp16" and self.fp16_gflops:
            return self.fp16_gflops * 1e9
        return self.fp32_gflops * 1e9


@dataclass(frozen=True)
class Target:
    """A device to profile on: how to reach it, what runs there, and its peak figures."""

    name: str
    kind: str
    runtimes: tuple[str, ...]
    threads: int
    peak: Peak
    connect: dict[str, Any] = field(default_factory=dict)
    description: str = ""
    source: str = ""

    @classmethod
    def from_dict(cls, data: Any, source: str = "target") -> "Target":
        """Build and validate a target; every problem is reported at once (ConfigError)."""
        problems: list[str] = []
        if not isinstance(data, dict):
            raise ConfigError([f"expected a mapping of target fields, got {type(data).__name__}"], source)
        for key in sorted(set(data) - TARGET_KEYS):
            close = difflib.get_close_matches(key, TARGET_KEYS, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown field {key!r}{hint}; allowed: {', '.join(sorted(TARGET_KEYS))}")
        name = data.get("name")
        if not isinstance(name, str) or not name.strip():
            problems.append(f"name: must be a non-empty string, got {name!r}")
        kind = data.get("kind")
        kinds = target_kinds()
        if kind not in kinds:
            problems.append(f"kind: {kind!r} is not one of {', '.join(kinds)}")
        runtimes = data.get("runtimes")
        known = RUNTIMES.names()  # edgekd.formats: every runtime a file can be executed with, here or on a device
        if not isinstance(runtimes, list) or not runtimes:
            problems.append(f"runtimes: must be a non-empty list from {', '.join(known)}, got {runtimes!r}")
            runtimes = []
        for rt in runtimes:
            if not isinstance(rt, str) or rt not in RUNTIMES:
                problems.append(f"runtimes: {rt!r} is not one of {', '.join(known)}")
        threads = data.get("threads", 1)
        if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
            problems.append(f"threads: must be an integer >= 1, got {threads!r}")
        connect = data.get("connect") or {}
        if not isinstance(connect, dict):
            problems.append(f"connect: must be a mapping, got {connect!r}")
            connect = {}
        elif kind in kinds:
            runner = runner_for(kind)
            for key in sorted(set(connect) - runner.connect_keys):
                allowed = ", ".join(sorted(runner.connect_keys)) or f"(nothing: a {kind} target runs locally)"
                problems.append(f"connect.{key}: not a {kind} setting; allowed: {allowed}")
            if runner.check_connect is not None:
                problems.extend(runner.check_connect(connect))
        peak_data = data.get("peak")
        peak = None
        if not isinstance(peak_data, dict):
            problems.append(f"peak: must be a mapping with {', '.join(PEAK_KEYS)}, got {peak_data!r}")
        else:
            for key in sorted(set(peak_data) - set(PEAK_KEYS) - set(OPTIONAL_PEAK_KEYS)):
                problems.append(f"peak.{key}: unknown figure; allowed: {', '.join(PEAK_KEYS + OPTIONAL_PEAK_KEYS)}")
            values = {}
            for key in PEAK_KEYS + OPTIONAL_PEAK_KEYS:
                v = peak_data.get(key)
                if v is None and key in OPTIONAL_PEAK_KEYS:
                    continue
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                    problems.append(f"peak.{key}: must be a number > 0 (published figure, source in a comment), "
                                    f"got {v!r}")
                else:
                    values[key] = float(v)
            if len(values) >= len(PEAK_KEYS):
                peak = Peak(**values)
        if problems:
            raise ConfigError(problems, source)
        return cls(name=name, kind=kind, runtimes=tuple(runtimes), threads=threads, peak=peak,  # type: ignore[arg-type]
                   connect=dict(connect), description=str(data.get("description", "")), source=source)

    def to_dict(self) -> dict[str, Any]:
        peak = {k: getattr(self.peak, k) for k in PEAK_KEYS + OPTIONAL_PEAK_KEYS if getattr(self.peak, k) is not None}
        return {"name": self.name, "kind": self.kind, "description": self.description, "connect": dict(self.connect),
                "runtimes": list(self.runtimes), "threads": self.threads, "peak": peak}


def list_targets() -> list[str]:
    """Names of the bundled targets (the YAML files in targets/)."""
    d = targets_dir()
    return sorted(p.stem for p in d.glob("*.yaml")) if d.is_dir() else []


def load_target(name_or_path: "str | os.PathLike[str] | Target") -> Target:
    """Load a bundled target by name (`pixel-8`) or a user's YAML file; unknown names suggest the closest."""
    import yaml

    if isinstance(name_or_path, Target):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith((".yaml", ".yml")) or os.sep in text or path.is_file()):
        known = list_targets()
        if text not in known:
            close = difflib.get_close_matches(text, known, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise EdgeKDError(f"unknown target {text!r}{hint} known: {', '.join(known) or '(none)'} "
                              f"(or give the path of your own target YAML)")
        path = targets_dir() / f"{text}.yaml"
    if not path.is_file():
        raise EdgeKDError(f"target file not found: {path} (give a bundled name: {', '.join(list_targets())})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError([f"not valid YAML: {e}"], str(path)) from e
    return Target.from_dict(data, source=str(path))


def format_targets_table() -> str:
    """The `edgekd targets` listing: one line per bundled target."""
    rows = [("name", "kind", "runtimes", "threads", "fp32 GFLOPS", "int8 GOPS", "mem GB/s")]
    for name in list_targets():
        t = load_target(name)
        rows.append((t.name, t.kind, ",".join(t.runtimes), str(t.threads), f"{t.peak.fp32_gflops:g}",
                     f"{t.peak.int8_gops:g}", f"{t.peak.mem_gbps:g}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def format_target(target: "Target | str") -> str:
    """The `edgekd targets show NAME` text: every field, then the YAML's source comments for the peak figures."""
    t = load_target(target)
    lines = [f"{t.name} ({t.kind})"]
    if t.description:
        lines.append(f"  {t.description}")
    describe_host = runner_for(t.kind).describe_host
    if describe_host is not None:  # a local target is whatever machine this runs on: say which, as detected
        lines.append(f"  host:     {describe_host()} (detected)")
    lines.append(f"  runtimes: {', '.join(t.runtimes)}")
    lines.append(f"  threads:  {t.threads}")
    conn = ", ".join(f"{k}={v}" for k, v in t.connect.items()) or "local"
    lines.append(f"  connect:  {conn}")
    peak = t.peak
    lines.append(f"  peak:     fp32 {peak.fp32_gflops:g} GFLOPS, int8 {peak.int8_gops:g} GOPS, "
                 f"memory {peak.mem_gbps:g} GB/s" + (f", fp16 {peak.fp16_gflops:g} GFLOPS" if peak.fp16_gflops else ""))
    comments = _peak_comments(Path(t.source)) if t.source and Path(t.source).is_file() else []
    if comments:
        lines.append("  sources:")
        lines.extend(f"    {c}" for c in comments)
    return "\n".join(lines)


def _peak_comments(path: Path) -> list[str]:
    """The comment lines inside the YAML's `peak:` block (where the figures' sources are written)."""
    out, inside = [], False
    for line in path.read_text().splitlines():
        if line.startswith("peak:"):
            inside = True
            continue
        if inside:
            if line and not line.startswith((" ", "#")):
                break
            if line.strip().startswith("#"):
                out.append(line.strip().lstrip("#").strip())
    return out
