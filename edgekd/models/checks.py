"""Before anything trains: does the recipe's data load, and do its student and teacher fit that data?

`recipe_model_problems(recipe)` loads the data (label range, class names, normalization, validation split),
builds the student and a torch teacher for it (names import, kwargs accepted, weights fit, one forward pass
on the data's image size, class count) and returns every problem as one line, for `edgekd validate`'s dry run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from edgekd.errors import EdgeKDError


def recipe_model_problems(recipe: Any, dataset: Any = None) -> list[str]:
    """Every data/model problem of `recipe` (an edgekd.config.Recipe), one line each; [] when it fits."""
    from edgekd.data import dataset_from_config
    from edgekd.models.adapt import build_for_data

    try:
        ds = dataset if dataset is not None else dataset_from_config(recipe.data, recipe.seed)
    except EdgeKDError as e:
        return [f"data: {e}"]
    problems: list[str] = []
    fit = {"input_shape": ds.input_shape, "num_classes": ds.num_classes}
    s = recipe.student
    try:
        build_for_data(s.model, s.kwargs, weights=s.weights, import_path=s.import_path, **fit)
    except EdgeKDError as e:
        problems.append(f"student: {e}")
    t = recipe.teacher
    if t.kind == "torch":
        try:
            build_for_data(t.model, t.kwargs, weights=t.weights, import_path=t.import_path,
                           replace=not t.weights or bool(getattr(t, "finetune", False)), **fit)
        except EdgeKDError as e:
            problems.append(f"teacher: {e}")
    elif t.kind in ("onnx", "torchscript", "keras") and t.path and not Path(t.path).exists():
        problems.append(f"teacher.path: {t.kind} teacher file not found: {t.path}")
    q = getattr(recipe, "quantize", None)
    if q is not None and q.enabled and q.sensitivity and len(ds.y_val) == 0:
        problems.append("quantize.sensitivity: needs a validation split, but data.val_fraction is 0 and "
                        "data.val_size is not set; set data.val_fraction (e.g. 0.1) or quantize.sensitivity: false")
    return problems


__all__ = ["recipe_model_problems"]
