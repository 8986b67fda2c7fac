"""`edgekd tune` and `edgekd search`: run the teacher and one automatic stage of a recipe, then write the choice.

Both run in the recipe's run directory like `edgekd run` (same lock, records and fingerprints), so the teacher is
reused and a later `edgekd run` of the written recipe skips what is already done.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Callable, Sequence

from edgekd.config import Recipe, dump_recipe, load_recipe
from edgekd.errors import EdgeKDError
from edgekd.fileio import write_text


def run_stages(recipe: Recipe, names: Sequence[str], *, run_dir: str | Path | None = None, force: bool = False,
               progress: bool = True, log: Callable[[str], None] = print) -> Path:
    """Run only the named stages of `recipe` (in run order), reusing finished ones; return the run directory."""
    from edgekd.pipeline import RunContext, disk_full_as_error, run_stage
    from edgekd.runlock import run_lock
    from edgekd.stages import recipe_stages
    from edgekd.validate import dry_run

    dry_run(recipe)
    run_dir = Path(run_dir) if run_dir else Path(recipe.runs_dir) / recipe.name
    run_dir.mkdir(parents=True, exist_ok=True)
    with run_lock(run_dir):
        with disk_full_as_error("run", run_dir):
            write_text(run_dir / "recipe.yaml", dump_recipe(recipe))
        ctx = RunContext(recipe, run_dir, progress=progress, log=log)
        for stage in recipe_stages(recipe):
            if stage.name in names:
                run_stage(ctx, stage, force=force and stage.name == names[-1])
    return run_dir


def tune(recipe: str | Path | Recipe, *, budget_s: float | None = None, trials: int | None = None,
         out: str | Path | None = None, run_dir: str | Path | None = None, overrides: dict[str, Any] | None = None,
         force: bool = False, progress: bool = True, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Choose the KD losses of `recipe` on its validation split; write a recipe with them to `out` if given.

    Returns the tune stage's metrics (trials, chosen, budget, split) with "run_dir" and "recipe" (the written
    file, or None).
    """
    r = _load(recipe, overrides)
    if not r.distill.enabled:
        raise EdgeKDError("tune chooses distillation losses, but distill.enabled is false in this recipe")
    r.distill.auto = True
    if budget_s is not None:
        r.tune.budget_s = float(budget_s)
    if trials is not None:
        r.tune.trials = int(trials)
    where = run_stages(r, ["teacher", "tune"], run_dir=run_dir, force=force, progress=progress, log=log)
    from edgekd.stages import require_record

    metrics = dict(require_record(where, "tune").metrics)
    written = None
    if out is not None:
        chosen = copy.deepcopy(r)
        chosen.distill.losses = [dict(t) for t in metrics["chosen"]["losses"]]
        chosen.distill.auto = False
        written = write_text(Path(out), f"# {r.name} with the KD losses chosen by `edgekd tune` "
                                        f"({where / 'tune' / 'stage.json'})\n" + dump_recipe(chosen))
    return {**metrics, "run_dir": str(where), "recipe": str(written) if written else None}


def search(recipe: str | Path | Recipe, *, targets: Sequence[str] = (), budget_ms: Sequence[float] = (),
           out: str | Path | None = None, run_dir: str | Path | None = None,
           overrides: dict[str, Any] | None = None, force: bool = False, progress: bool = True,
           log: Callable[[str], None] = print) -> dict[str, Any]:
    """Search students of `recipe` under per-target latency budgets (budget_ms[i] for targets[i]).

    Writes the recipe with the chosen student to `out` (default: search/recipe.yaml in the run directory only).
    """
    r = _load(recipe, overrides)
    if budget_ms and len(budget_ms) != len(targets):
        raise EdgeKDError(f"give one --budget-ms per --target (got {len(targets)} targets, {len(budget_ms)} "
                          f"budgets), e.g. --target cpu-local --budget-ms 0.05")
    r.search.enabled = True
    if targets:
        r.search.targets = list(dict.fromkeys(targets))
        r.search.budget_ms = {t: float(b) for t, b in zip(targets, budget_ms)}
    stages = ["teacher", "search"] if r.distill.enabled else ["search"]
    where = run_stages(r, stages, run_dir=run_dir, force=force, progress=progress, log=log)
    from edgekd.stages import require_record

    rec = require_record(where, "search")
    written = rec.path(where, "recipe")
    if out is not None:
        written = write_text(Path(out), written.read_text())
    return {**rec.metrics, "run_dir": str(where), "recipe": str(written)}


def _load(recipe: str | Path | Recipe, overrides: dict[str, Any] | None) -> Recipe:
    if isinstance(recipe, Recipe):
        return copy.deepcopy(recipe)
    return load_recipe(recipe, overrides)
