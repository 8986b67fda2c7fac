"""The stages of a run: one ordered registry, the stage record (stage.json) and its one reader, fingerprints.

A stage is declared beside the package that does its work, e.g. edgekd/quant/stage.py:

    register_stage(Stage("quantize", run_quantize, sections=("quantize", "export"), upstream=("teacher", "distill"),
                         enabled=lambda recipe: recipe.quantize.enabled))

`run(ctx)` gets the run context (edgekd.pipeline.RunContext) and returns `(outputs, metrics)`: the files it wrote
under `ctx.stage_dir(name)` and a JSON-able dict; the pipeline records both in `<run>/<name>/stage.json`.
`sections` (recipe sections) and the fingerprints of the `upstream` stages make up the stage's fingerprint, so a
stage re-runs exactly when one of them changed.

Order: topological by `upstream`, ties broken by registration order. The built-in declarations
(`BUILTIN_MODULES`, then any other `edgekd/<package>/stage.py`) are imported on the first look-up, as timm loads
its model registry, so `import edgekd.stages` stays light and a new stage is one new file.

Tasks. A recipe names its task (`image_classification`, `causal_lm`, ...). A stage declared with `task=None` is
the default for every task; a declaration with `task="causal_lm"` replaces the default of the same name (its run
function, sections, upstream and `enabled`) for recipes of that task, or adds a stage only that task has:

    register_stage(Stage("distill", run_lm_distill, sections=("student", "distill"), upstream=("teacher",),
                         task="causal_lm"))

`STAGES.ordered(task)` lists the stages a recipe of that task runs; `STAGES.get(name, task)` is the one that runs
under a name. A task that has no use for a default stage declares it with `enabled=lambda recipe: False`.

A stage is done when `<run>/<stage>/stage.json` exists, its fingerprint matches the current inputs, and every
output file it lists still has the recorded sha256. Outputs are written under temporary names and renamed,
and stage.json is written last, so a killed stage never looks finished.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import pkgutil
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

from edgekd.errors import EdgeKDError
from edgekd.fileio import read_json, sha256_file, write_json
from edgekd.registry import Registry

if TYPE_CHECKING:
    from edgekd.config import Recipe
    from edgekd.pipeline import RunContext

# Imported, in this order, on the first look-up; their order breaks ties between stages with no dependency.
BUILTIN_MODULES = ("edgekd.distill.stage", "edgekd.quant.stage", "edgekd.export.stage", "edgekd.verify.stage",
                   "edgekd.profile.stage", "edgekd.bundle.stage", "edgekd.report.stage")
DEFAULT_TASK = "image_classification"


def always(recipe: "Recipe") -> bool:
    return True


def no_inputs(recipe: "Recipe") -> dict[str, Any]:
    return {}


@dataclass(frozen=True)
class Stage:
    """One step of a run.

    Attributes:
        run: `run(ctx) -> (outputs, metrics)`.
        sections: recipe sections in its fingerprint.
        upstream: stages whose records it reads (their fingerprints are in its fingerprint); "*" for every other
            stage of the run (the report).
        enabled: whether a recipe runs it (e.g. `quantize.enabled`).
        task: None for every task, else the task whose recipes use this declaration instead of the default.
        inputs: extra fingerprint parts from outside the recipe (e.g. the sha256 of a weights file).
        rerun: run even when up to date (the report, which reads every other stage).
        missing: what the report lacks when this stage did not run.
    """

    name: str
    run: Callable[["RunContext"], tuple[dict[str, Path], dict[str, Any]]]
    sections: tuple[str, ...] = ()
    upstream: tuple[str, ...] = ()
    enabled: Callable[["Recipe"], bool] = always
    task: str | None = None
    inputs: Callable[["Recipe"], dict[str, Any]] = no_inputs
    rerun: bool = False
    missing: str = ""


class StageRegistry:
    """Stages keyed by (task, name), loaded on first use; iterating yields the default stages in run order."""

    def __init__(self) -> None:
        self._stages: dict[tuple[str | None, str], Stage] = {}
        self._loaded = False
        self._loading = False

    def register(self, stage: Stage) -> Stage:
        key = (stage.task, stage.name)
        if key in self._stages and self._stages[key] is not stage:
            where = f" for task {stage.task!r}" if stage.task else ""
            raise ValueError(f"stage {stage.name!r} is already registered{where}")
        self._stages[key] = stage
        return stage

    def unregister(self, name: str, task: str | None = None) -> None:
        """Remove a declaration (tests register toy stages and tasks and take them away again)."""
        self._stages.pop((task, name), None)

    def _load(self) -> None:
        if self._loaded or self._loading:
            return
        self._loading = True
        try:
            for module in BUILTIN_MODULES + _other_stage_modules():
                importlib.import_module(module)
            self._loaded = True
        finally:
            self._loading = False

    def ordered(self, task: str | None = None) -> list[Stage]:
        """The stages a recipe of `task` runs, in order (task declarations replace defaults of the same name)."""
        self._load()
        chosen: dict[str, Stage] = {}
        for (t, name), stage in self._stages.items():  # dicts keep registration order
            if t is None and name not in chosen:
                chosen[name] = stage
        if task is not None:
            for (t, name), stage in self._stages.items():
                if t == task:
                    chosen[name] = stage
        return _topological(list(chosen.values()))

    def names(self, task: str | None = None) -> list[str]:
        return [s.name for s in self.ordered(task)]

    def get(self, name: str, task: str | None = None) -> Stage:
        """The stage that runs under `name` for `task`; unknown names fail with the closest match."""
        self._load()
        stage = self._stages.get((task, name)) or self._stages.get((None, name))
        if stage is None:
            names = Registry("stage")
            for n in {n for t, n in self._stages if t in (None, task)}:
                names.register(n)(n)
            raise EdgeKDError(names.unknown_message(name))
        return stage

    def tasks(self) -> list[str]:
        self._load()
        return sorted({t for t, _ in self._stages if t is not None})

    def __iter__(self) -> Iterator[Stage]:
        return iter(self.ordered())

    def __contains__(self, name: object) -> bool:
        self._load()
        return any(n == name for _, n in self._stages)

    def __getitem__(self, name: str) -> Stage:
        return self.get(name)


def _other_stage_modules() -> tuple[str, ...]:
    """`edgekd.<package>.stage` for every package of edgekd with a stage.py that BUILTIN_MODULES does not list."""
    import edgekd

    found = []
    for info in pkgutil.iter_modules(edgekd.__path__):
        name = f"edgekd.{info.name}.stage"
        if info.ispkg and name not in BUILTIN_MODULES and any(
                (Path(p) / info.name / "stage.py").is_file() for p in edgekd.__path__):
            found.append(name)
    return tuple(sorted(found))


def _topological(stages: list[Stage]) -> list[Stage]:
    """Stages ordered so that each comes after its upstream ones; ties keep the given order."""
    names = {s.name for s in stages}
    done: list[Stage] = []
    placed: set[str] = set()
    pending = list(stages)

    def upstream(s: Stage) -> set[str]:
        return (names - {s.name}) if "*" in s.upstream else set(s.upstream) & names

    while pending:
        ready = next((s for s in pending if upstream(s) <= placed), None)
        if ready is None:
            cycle = ", ".join(s.name for s in pending)
            raise EdgeKDError(f"stages {cycle} depend on each other in a cycle; fix their `upstream`")
        done.append(ready)
        placed.add(ready.name)
        pending.remove(ready)
    return done


STAGES = StageRegistry()


def register_stage(stage: Stage) -> Stage:
    """Add a stage (or a task's own version of one) to the registry; returns it."""
    return STAGES.register(stage)


def stage_names(task: str | None = None) -> list[str]:
    """Names of the stages in run order (those a recipe of `task` runs)."""
    return STAGES.names(task)


def recipe_task(recipe: "Recipe") -> str:
    """The recipe's task (`image_classification` until recipes name one)."""
    return getattr(recipe, "task", None) or DEFAULT_TASK


def recipe_stages(recipe: "Recipe") -> list[Stage]:
    """The stages this recipe runs, in order: its task's declarations, enabled by the recipe."""
    return [s for s in STAGES.ordered(recipe_task(recipe)) if s.enabled(recipe)]


# --------------------------------------------------------------------------------------------- stage.json


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


def read_record(path: Path) -> StageRecord:
    """The one reader of stage.json; EdgeKDError when it is not a stage record."""
    try:
        data = read_json(path)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        rec = StageRecord(**data)
        if not isinstance(rec.metrics, dict) or not isinstance(rec.outputs, dict):
            raise ValueError("metrics and outputs must be JSON objects")
        return rec
    except (OSError, ValueError, TypeError) as e:
        raise EdgeKDError(f"{path} is corrupt ({e}); delete it to re-run stage {path.parent.name!r}") from e


def load_record(run_dir: Path, stage: str) -> StageRecord | None:
    path = stage_json(run_dir, stage)
    return read_record(path) if path.exists() else None


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
