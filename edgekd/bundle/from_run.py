"""Bundle straight from a run directory: exported files, their accuracy and latency, the recipe, the data's labels."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from edgekd.bundle.archive import ModelFile, make_bundle
from edgekd.bundle.card import ModelCard
from edgekd.errors import EdgeKDError
from edgekd.runs import RunRecord, load_run
from edgekd.summary import accuracy_table, choose_shipped, file_table, latency_table, recipe_summary


# tasks whose archives hold other contents than image classifiers ("module:function"; same manifest and verify)
TASK_BUNDLERS = {"causal_lm": "edgekd.lm.bundle:bundle_lm_run"}


def bundle_run(run_dir: str | Path, target: str, out_dir: str | Path, *, labels: Sequence[str] | None = None,
               mean: Sequence[float] | None = None, std: Sequence[float] | None = None, pixel_max: float | None = None,
               name: str | None = None, version: str | None = None, signing_key: str | Path | None = None) -> Path:
    """Bundle a run's exported files for `target` into out_dir/<name>-<target>.zip and return its path.

    mean/std are on the pixel scale (0..pixel_max), as edgekd.data.ImageDataset stores them. When labels/mean/std
    are not given they come from loading the recipe's `data.dataset` (its normalization is computed on the full
    training split, as in training). Name, version, author, license and description come from the recipe's
    `bundle` section.
    """
    run = load_run(run_dir)
    if getattr(run.recipe, "task", None) in TASK_BUNDLERS:  # e.g. causal_lm: its own contents, the same archive
        import importlib

        module, func = TASK_BUNDLERS[run.recipe.task].split(":")
        return getattr(importlib.import_module(module), func)(run_dir, out_dir, target=None if target == "cpu-local"
                                                              else target, name=name, version=version,
                                                              signing_key=signing_key)[0]
    files = model_files(run)
    labels, mean, std, data_pixel_max = _data_facts(run, labels, mean, std)
    pixel_max = pixel_max if pixel_max is not None else data_pixel_max
    card = card_from_run(run, target, name=name, version=version)
    return make_bundle(files, labels, mean, std, card, target, Path(out_dir) / f"{card.name}-{target}.zip",
                       pixel_max=pixel_max, signing_key=signing_key)


def model_files(run: RunRecord) -> list[ModelFile]:
    """The export stage's files as ModelFile records (paths resolved inside the run directory)."""
    exported = run.metrics("export").get("files")
    if not exported:
        raise EdgeKDError(f"{run.root} has no export stage results (export/stage.json): run the export stage first")
    try:
        return [ModelFile(f["name"], run.file(f["path"]), f["format"], f["precision"], f["runtime"])
                for f in exported]
    except (KeyError, ValueError) as e:
        raise EdgeKDError(f"export/stage.json lists a malformed file entry ({e}); re-run the export stage") from e


def card_from_run(run: RunRecord, target: str, *, name: str | None = None, version: str | None = None) -> ModelCard:
    """A model card filled from the run's stages: accuracies, latency on `target`, recipe summary, parameters."""
    files = file_table(run)
    latency = latency_table(run, target, files) if target in run.profiles else []
    trained = {r["model"]: r["accuracy"] for r in accuracy_table(run, files) if r["kind"] == "trained"}
    reference = {"teacher": trained.get("teacher"), "student_fp32": trained.get("student"),
                 "fake_quant": next((v for k, v in trained.items() if k.startswith("student fake-quant")), None)}
    shipped = choose_shipped(files, latency)
    section = run.recipe.bundle if run.recipe is not None else None
    card_name = name or _safe_name(section.model_name if section else run.name)
    facts = {k: str(getattr(section, k)) for k in ("author", "license", "description") if getattr(section, k, None)}
    keep = ("name", "runtime", "precision", "threads", "p50_ms", "p90_ms", "p99_ms", "cv", "cv_flag", "measured",
            "uncertainty", "device", "runtime_version", "bytes", "target")
    return ModelCard(
        name=card_name, version=str(version or (section.version if section else "0.1.0")), **facts,
        recipe=recipe_summary(run.recipe), reference_accuracy=reference,
        accuracy={f["name"]: {k: f[k] for k in ("accuracy", "reference", "parity_ok", "max_abs_diff",
                                                 "top1_agreement")} for f in files},
        latency=[{k: r.get(k) for k in keep} for r in latency],
        params={"teacher": run.metrics("teacher").get("params"), "student": run.metrics("distill").get("params")},
        recommended=shipped["name"] if shipped else None)


def archive_record(archive: str | Path, target: str, published_as: str) -> dict[str, Any]:
    """One entry of a bundle stage's metrics["archives"]: target, path in the run once published, sha256, bytes.

    `archive` is read where it is now (the stage's staging folder); `published_as` is its path relative to the run
    directory after the stage is published (e.g. "bundle/app-pixel-8.zip"), which is what the record must say.
    """
    from edgekd.fileio import sha256_file

    archive = Path(archive)
    return {"target": target, "path": published_as, "sha256": sha256_file(archive), "bytes": archive.stat().st_size}


def _data_facts(run: RunRecord, labels: Any, mean: Any, std: Any
                ) -> tuple[list[str], list[float], list[float], float]:
    """labels, mean, std (pixel scale) and the pixel scale's maximum (255 for uint8 images, 1 for float data)."""
    pixel_max = 255.0
    if (labels is None or mean is None or std is None) and run.recipe is not None:
        from edgekd.data import dataset_from_config

        data = run.recipe.data
        try:
            ds = dataset_from_config({**vars(data), "val_fraction": 0.0, "val_size": None})
        except EdgeKDError as e:
            raise EdgeKDError(f"cannot bundle {run.root.name}: labels/mean/std were not given and loading the "
                              f"recipe's data set failed: {e}") from e
        labels = labels if labels is not None else ds.labels
        mean = mean if mean is not None else ds.mean
        std = std if std is not None else ds.std
        pixel_max = float(ds.pixel_max)
    missing = [k for k, v in (("labels", labels), ("mean", mean), ("std", std)) if v is None]
    if missing:
        raise EdgeKDError(f"cannot bundle {run.root.name}: {', '.join(missing)} not given and not recorded in the "
                          f"run; pass them (the data set's class names and normalization), e.g. "
                          f"bundle_run(..., labels=[...], mean=[72.94], std=[90.02]) on the 0..255 scale")
    return list(labels), [float(m) for m in mean], [float(s) for s in std], pixel_max


def _safe_name(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "model"
    return s if s[0].isalpha() else f"m-{s}"
