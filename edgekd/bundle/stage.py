"""The bundle stage: one app archive per bundle target (models with metadata, labels, model card, manifest)."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.stages import Stage, register_stage

if TYPE_CHECKING:
    from edgekd.pipeline import RunContext


def run_bundle(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    """One app archive per bundle target: models with metadata, labels, model card, manifest."""
    from edgekd.bundle import archive_record, bundle_run

    out, ds = ctx.stage_dir("bundle"), ctx.dataset
    archives, outputs = [], {}
    for target in ctx.recipe.bundle.targets:
        path = bundle_run(ctx.run_dir, target, out, labels=ds.labels, mean=ds.mean, std=ds.std, pixel_max=ds.pixel_max,
                          signing_key=ctx.recipe.bundle.signing_key)
        outputs[path.name] = path
        archives.append(archive_record(path, target, f"bundle/{path.name}"))  # where publish puts it
        ctx.log(f"bundle: {target}: {path.name} ({path.stat().st_size / 1024:.0f} KiB)")
    return outputs, {"archives": archives}


register_stage(Stage("bundle", run_bundle, sections=("bundle",), upstream=("export", "verify", "profile"),
                     enabled=lambda recipe: recipe.bundle.enabled, missing="no app bundle archive"))
