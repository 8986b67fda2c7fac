"""The one reader of a run directory: its recipe (a typed Recipe) and its stage records, for the report and bundles.

A run directory is what edgekd.pipeline writes: `recipe.yaml` (the full recipe, loaded back through
edgekd.config.load_recipe) and `<stage>/stage.json` per finished stage (read by edgekd.stages.read_record).
A stage that did not run, or whose record is unreadable, is listed, not fatal: the report says what is missing.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import EdgeKDError
from edgekd.stages import STAGES, StageRecord, read_record, recipe_task, stage_json

if TYPE_CHECKING:
    from edgekd.config import Recipe


@dataclass
class RunRecord:
    """Everything a run directory says about itself: the recipe and the record of each stage that ran."""

    root: Path
    recipe: "Recipe | None"
    records: dict[str, StageRecord] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def stage_names(self) -> list[str]:
        """The stages this run's recipe runs, in order (every registered stage when the recipe is unknown)."""
        if self.recipe is None:
            return STAGES.names()
        return [s.name for s in STAGES.ordered(recipe_task(self.recipe)) if s.enabled(self.recipe)]

    def has(self, stage: str) -> bool:
        return stage in self.records

    def metrics(self, stage: str) -> dict[str, Any]:
        """The stage's metrics, or {} when the stage did not run."""
        rec = self.records.get(stage)
        return dict(rec.metrics) if rec else {}

    @property
    def profiles(self) -> dict[str, dict[str, Any]]:
        """The profile stage's metrics per target: {target: {"target", "results", "verdicts", "note"?}}."""
        return {str(t["target"]): t for t in self.metrics("profile").get("targets", [])
                if isinstance(t, dict) and t.get("target")}

    def missing(self) -> list[str]:
        """Stages the recipe runs that left no record, in run order (the report, which is being made, aside)."""
        return [s for s in self.stage_names if s not in self.records and not STAGES.get(s).rerun]

    def file(self, relpath: str) -> Path:
        """A path recorded in a stage.json (relative to the run directory)."""
        return self.root / relpath


def load_run(run_dir: str | Path) -> RunRecord:
    """Read `run_dir`'s recipe.yaml and every stage's stage.json; EdgeKDError when it is not a run directory."""
    root = Path(run_dir)
    if not root.is_dir():
        raise EdgeKDError(f"run directory not found: {root} (give the runs/<name> folder a pipeline wrote)")
    names = STAGES.names() + [n for task in STAGES.tasks() for n in STAGES.names(task)]
    present = [n for n in dict.fromkeys(names) if stage_json(root, n).exists()]
    if not (root / "recipe.yaml").is_file() and not present:
        raise EdgeKDError(f"{root} is not an edgekd run directory (no recipe.yaml, no <stage>/stage.json); give the "
                          "runs/<name> folder that `edgekd run` wrote")
    problems: list[str] = []
    run = RunRecord(root=root, recipe=_read_recipe(root, problems), problems=problems)
    for stage in present:
        try:
            run.records[stage] = read_record(stage_json(root, stage))
        except EdgeKDError as e:
            problems.append(f"{stage}/stage.json is unreadable ({e.__cause__ or e}); that stage is treated as missing")
    return run


def _read_recipe(root: Path, problems: list[str]) -> "Recipe | None":
    path = root / "recipe.yaml"
    if not path.is_file():
        problems.append("recipe.yaml is missing: the recipe is not known")
        return None
    from edgekd.config import load_recipe

    try:
        return load_recipe(path)
    except EdgeKDError as e:
        problems.append(f"recipe.yaml does not load ({'; '.join(str(e).splitlines())})")
        return None
