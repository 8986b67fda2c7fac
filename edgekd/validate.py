"""Dry run of a recipe: every problem that would stop a stage, found before anything trains, reported at once.

`recipe_problems` resolves every registered name (dataset, models, teacher kinds and ensemble members, losses,
schemes, PTQ methods, export formats, targets: every target YAML is loaded) and builds the distillation and QAT
objectives, so a misspelt loss option (`temprature`) is reported with the valid options. `parse_recipe` runs it
on every recipe; `dry_run` adds what depends on files beside the recipe (teacher weights and files, the
calibration recipe), which `load_recipe` resolves after parsing, and then loads the data and builds the student
and teacher to check that they fit it (label range, image size, class count: `edgekd.models.recipe_model_problems`). `edgekd validate` and `edgekd run` call `dry_run`.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from edgekd.config import Recipe, load_recipe, range_problems
from edgekd.errors import ConfigError, EdgeKDError


def dry_run(recipe: Recipe | str | Path) -> tuple[Recipe, Any]:
    """Check a recipe (or a recipe file) as far as possible without training; raise one ConfigError listing all.

    Returns the recipe and the dataset loaded to check the models against it (None for a task recipe that checks
    itself), so that a run goes on with both instead of parsing and loading them again.

    Raises:
        ConfigError: every problem, one per line, each with the bad value, what is allowed and what to do.
    """
    loaded = not isinstance(recipe, Recipe)
    if loaded:
        recipe = load_recipe(recipe)  # parses and runs recipe_problems (or a task recipe's own checks)
    if hasattr(recipe, "problems"):  # a task recipe with its own sections checks itself (edgekd.lm.recipe)
        problems = [] if loaded else recipe.problems()
        if problems:
            raise ConfigError(problems, f"recipe {recipe.name!r}")
        return recipe, None
    if loaded:
        problems = file_problems(recipe)
    else:
        problems = range_problems(recipe) + recipe_problems(recipe) + file_problems(recipe)
    dataset = None
    if not problems:  # names resolve: load the data and build the models to check that they fit each other
        from edgekd.data import dataset_from_config
        from edgekd.models import recipe_model_problems

        try:
            dataset = dataset_from_config(recipe.data, recipe.seed)
        except EdgeKDError as e:
            problems = [f"data: {e}"]
        else:
            problems = recipe_model_problems(recipe, dataset)
    if problems:
        raise ConfigError(problems, f"recipe {recipe.name!r}")
    return recipe, dataset


def recipe_problems(r: Recipe) -> list[str]:
    """Registered names and objectives: unknown names with the closest match, objective problems per term."""
    return (_model_problems(r) + _teacher_problems(r) + _objective_problems(r) + _quantize_problems(r)
            + _export_problems(r) + _target_problems(r))


def _unknown(registry, name: Any, where: str) -> list[str]:
    if not isinstance(name, str):
        return [f"{where}: expected a name, got {name!r}"]
    return [] if name in registry else [f"{where}: {registry.unknown_message(name)}"]


def _model_problems(r: Recipe) -> list[str]:
    from edgekd.data import DATASETS
    from edgekd.models import MODELS

    p = _unknown(DATASETS, r.data.dataset, "data.dataset")
    if not (isinstance(r.student.model, str) and ":" in r.student.model):  # "pkg.mod:Callable" is imported later
        p += _unknown(MODELS, r.student.model, "student.model")
    return p


def _teacher_problems(r: Recipe) -> list[str]:
    """The teacher's kind and model, and every member of an ensemble (recursively)."""
    from edgekd.distill.teachers import TEACHER_KINDS
    from edgekd.models import MODELS

    t = r.teacher
    if t.kind not in TEACHER_KINDS:
        return _unknown(TEACHER_KINDS, t.kind, "teacher.kind")
    if t.kind == "torch" and not (isinstance(t.model, str) and ":" in t.model):
        return _unknown(MODELS, t.model, "teacher.model")
    if t.kind == "ensemble":
        return _members_problems(t.members, "teacher.members")
    return []


def _members_problems(members: Any, where: str) -> list[str]:
    from edgekd.distill.teachers import TEACHER_KINDS
    from edgekd.models import MODELS

    if not isinstance(members, list) or not members:
        return [f"{where}: an ensemble needs a non-empty list of member teacher specs, got {members!r}"]
    needs = {"torch": ("model",), "torchscript": ("path",), "onnx": ("path",), "ensemble": ("members",)}
    p: list[str] = []
    for i, m in enumerate(members):
        at = f"{where}[{i}]"
        if not isinstance(m, dict) or "kind" not in m:
            p.append(f"{at}: a member is a teacher spec mapping with a 'kind' (one of "
                     f"{', '.join(TEACHER_KINDS.names())}), got {m!r}")
            continue
        kind_problems = _unknown(TEACHER_KINDS, m["kind"], f"{at}.kind")
        if kind_problems:
            p += kind_problems
            continue
        p += [f"{at}: a {m['kind']} member needs {k!r}" for k in needs.get(m["kind"], ()) if k not in m]
        weight = m.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0:
            p.append(f"{at}.weight: a number >= 0, got {weight!r}")
        if m["kind"] == "torch" and "model" in m and not (isinstance(m["model"], str) and ":" in m["model"]):
            p += _unknown(MODELS, m["model"], f"{at}.model")
        if m["kind"] == "ensemble" and "members" in m:
            p += _members_problems(m["members"], f"{at}.members")
    return p


def _objective_problems(r: Recipe) -> list[str]:
    """Build the distillation and QAT objectives as their stages will (loss names, options, weights, labels)."""
    from edgekd.distill import build_objective

    p: list[str] = []
    for where, terms in (("distill.losses", r.distill.losses), ("quantize.kd_losses", r.quantize.kd_losses)):
        if not terms:
            continue  # range_problems says whether an empty list matters
        try:
            objective = build_objective(terms, source=where)
        except ConfigError as e:
            p += e.problems
            continue
        if where == "distill.losses" and r.distill.cache_topk and r.distill.cache_teacher \
                and not objective.accepts_topk:
            p.append(f"distill.cache_topk: {r.distill.cache_topk} stores top-k teacher logits, but a loss in "
                     f"distill.losses needs full logits; set cache_topk: null or use losses that accept top-k")
    return p


def _quantize_problems(r: Recipe) -> list[str]:
    from edgekd.quant import CALIBRATION_METHODS, SCHEMES

    q = r.quantize
    p = _unknown(CALIBRATION_METHODS, q.ptq_method, "quantize.ptq_method")
    if q.scheme != "auto":
        p += _unknown(SCHEMES, q.scheme, "quantize.scheme")
    return p


def _export_problems(r: Recipe) -> list[str]:
    from edgekd.formats import FORMATS

    formats = r.export.formats if isinstance(r.export.formats, list) else []
    return [q for i, f in enumerate(formats) for q in _unknown(FORMATS, f, f"export.formats[{i}]")]


def _target_problems(r: Recipe) -> list[str]:
    from edgekd.profile import load_target

    p: list[str] = []
    for section, names in (("profile.targets", r.profile.targets), ("bundle.targets", r.bundle.targets)):
        for i, name in enumerate(names if isinstance(names, list) else []):
            try:
                load_target(name)
            except EdgeKDError as e:
                p.append(f"{section}[{i}]: {e}")
    return p


def file_problems(r: Recipe) -> list[str]:
    """Files the stages will read, once `load_recipe` has resolved their paths: present and readable."""
    p: list[str] = []
    t = r.teacher
    for where, value in (("teacher.weights", t.weights if t.kind == "torch" else None),
                         ("teacher.path", t.path if t.kind in ("torchscript", "onnx") else None)):
        if value and not Path(value).is_file():
            p.append(f"{where}: file not found: {value} (relative paths are read beside the recipe, then from the "
                     f"working directory)")
    q = r.quantize
    if q.enabled and (q.method == "ptq" or q.sensitivity):
        p += _loads(lambda: _calibration(q.calibration), "quantize.calibration")
    return p


def _calibration(path: str) -> None:
    from edgekd.quant import load_calibration_recipe

    load_calibration_recipe(path)


def _loads(load: Callable[[], Any], where: str) -> list[str]:
    try:
        load()
    except ConfigError as e:
        return [f"{where}: {e.source}: {problem}" for problem in e.problems]
    except EdgeKDError as e:
        return [f"{where}: {e}"]
    return []


__all__ = ["dry_run", "file_problems", "recipe_problems"]
