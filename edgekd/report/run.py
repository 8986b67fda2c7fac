"""Read a run directory (stage.json files + recipe.yaml) into one record; missing stages are listed, not fatal."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekd.errors import EdgeKDError

# The stages whose stage.json the report and bundle read, in pipeline order.
STAGES = ("teacher", "distill", "quantize", "export", "verify", "profile", "bundle")
_SKIP_DIRS = {"report", "checkpoints"}


@dataclass
class RunRecord:
    """Everything a run directory says about itself: stage.json contents keyed by stage, profiles by target."""

    root: Path
    recipe: dict[str, Any] | None
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.name

    def has(self, stage: str) -> bool:
        return bool(self.profiles) if stage == "profile" else stage in self.stages

    def metrics(self, stage: str) -> dict[str, Any]:
        """The stage's metrics, or {} when the stage did not run."""
        return dict(self.stages.get(stage, {}).get("metrics") or {})

    def missing(self) -> list[str]:
        """Stages that left no stage.json, in pipeline order."""
        return [s for s in STAGES if not self.has(s)]

    def resolve(self, stage: str, relpath: str) -> Path:
        """A path recorded in a stage.json, relative to the run directory (or to the stage folder as fallback)."""
        p = Path(relpath)
        if p.is_absolute():
            return p
        for base in (self.root, self.root / stage):
            if (base / p).exists():
                return base / p
        return self.root / p


def load_run(run_dir: str | Path) -> RunRecord:
    """Read `run_dir`'s recipe.yaml and every <stage>/stage.json (profile stages may be per target, any depth <= 2)."""
    root = Path(run_dir)
    if not root.is_dir():
        raise EdgeKDError(f"run directory not found: {root} (give the runs/<name> folder a pipeline wrote)")
    record = RunRecord(root=root, recipe=_read_recipe(root, problems := []))
    record.problems.extend(problems)
    for path in sorted(root.glob("*/stage.json")) + sorted(root.glob("*/*/stage.json")):
        if path.relative_to(root).parts[0] in _SKIP_DIRS:
            continue
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            record.problems.append(f"{path.relative_to(root)} is unreadable ({e}); that stage is treated as missing")
            continue
        if not isinstance(data, dict):
            record.problems.append(f"{path.relative_to(root)} is not a JSON object; that stage is treated as missing")
            continue
        stage = str(data.get("stage") or path.parent.name)
        if stage.startswith("profile"):
            for target, metrics in profile_targets(data, path.parent.name, record.recipe).items():
                record.profiles[target] = {**data, "metrics": metrics}
        else:
            record.stages.setdefault(stage, data)
    return record


def profile_targets(data: dict[str, Any], folder: str, recipe: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    """Split a profile stage.json into per-target metrics ({"target", "results", "verdicts"}).

    Accepts metrics for one target ({"target", "results", "verdicts"}), for several
    ({"targets": [{"target", "results", ...}], "verdicts": [...]}), or results whose rows name their target.
    """
    m = data.get("metrics") or {}
    verdicts = [v for v in m.get("verdicts", []) if isinstance(v, dict)]
    named = ((recipe or {}).get("profile") or {}).get("targets") if isinstance((recipe or {}).get("profile"),
                                                                              dict) else None
    fallback = str(named[0]) if isinstance(named, list) and len(named) == 1 else \
        (folder if folder != "profile" else "unknown-target")
    out: dict[str, dict[str, Any]] = {}
    if isinstance(m.get("targets"), list):
        for entry in m["targets"]:
            if isinstance(entry, dict):
                t = str(entry.get("target") or fallback)
                out[t] = {**entry, "target": t,
                          "verdicts": entry.get("verdicts", [v for v in verdicts if v.get("target") == t])}
        return out
    if m.get("target"):
        return {str(m["target"]): m}
    rows = [r for r in m.get("results", []) if isinstance(r, dict)]
    for t in dict.fromkeys(str(r.get("target") or fallback) for r in rows) or [fallback]:
        out[t] = {**m, "target": t, "results": [r for r in rows if str(r.get("target") or fallback) == t],
                  "verdicts": [v for v in verdicts if str(v.get("target") or fallback) == t]}
    return out


def _read_recipe(root: Path, problems: list[str]) -> dict[str, Any] | None:
    path = root / "recipe.yaml"
    if not path.is_file():
        return None
    import yaml

    try:
        recipe = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        problems.append(f"recipe.yaml is not valid YAML ({str(e).splitlines()[0]})")
        return None
    return recipe if isinstance(recipe, dict) else None


def recipe_summary(recipe: dict[str, Any] | None, limit: int = 60) -> dict[str, Any]:
    """Flatten the recipe's set scalars to dotted keys (`distill.temperature: 4.0`), at most `limit`; None/[] skipped."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if len(out) >= limit:
            return
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif value is None or value == [] or value == {}:
            return
        elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
            out[prefix] = ", ".join(str(v) for v in value)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}[{i}]", v)
        else:
            out[prefix] = value

    walk("", recipe or {})
    return out
