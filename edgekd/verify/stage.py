"""The verify stage: parity of each exported file with its reference, and its accuracy in its own runtime.

A parity failure stops the run (a stage failure naming the files) unless the recipe says
`verify.fail_on_parity: false`; then the failure is recorded and the report says not to ship the file.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.errors import EdgeKDError
from edgekd.stages import Stage, register_stage

if TYPE_CHECKING:
    from edgekd.pipeline import RunContext


def run_verify(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    """Parity of each file with its reference, and the test accuracy of each file in its own runtime."""
    from edgekd.models import load_model_file
    from edgekd.quant import load_quantized
    from edgekd.verify import verify_files

    r, ds = ctx.recipe, ctx.dataset
    student = load_model_file(ctx.record("distill").path(ctx.run_dir, "model"))[0]
    fake_quant = (load_quantized(ctx.record("quantize").path(ctx.run_dir, "model"))
                  if "quantize" in ctx.records else None)
    files = [dict(f, path=str(ctx.run_dir / f["path"])) for f in ctx.record("export").metrics["files"]]
    n = r.verify.test_subset or len(ds.y_test)
    x, y = ds.x_test[:n], ds.y_test[:n]  # a streamed split (ImageView) decodes only these images
    metrics = verify_files(files, student, fake_quant, x, y, tolerance=r.verify.parity_tolerance,
                           parity_samples=r.verify.parity_samples, progress=ctx.progress)
    for f in metrics["files"]:
        f["path"] = str(Path(f["path"]).resolve().relative_to(ctx.run_dir.resolve())) if "path" in f else None
        ctx.log(f"verify: {f['name']:<22} accuracy {f['accuracy']:.4f} vs {f['reference']} "
                f"max|diff| {f['max_abs_diff']:.2e} top-1 agreement {f['top1_agreement']:.4f}"
                f"{_at_step(f)}{'' if f['parity_ok'] else '  PARITY FAILED'}")
    check_parity(metrics["files"], fail=getattr(r.verify, "fail_on_parity", True))
    return {}, metrics


def _at_step(f: dict[str, Any]) -> str:
    step = f.get("int8_output_step")
    return f" ({f['top1_agreement_at_step']:.4f} within one int8 step {step:.3g})" if step else ""


def check_parity(files: list[dict[str, Any]], *, fail: bool) -> None:
    """EdgeKDError naming every file that failed parity, when `fail` (the recipe's verify.fail_on_parity)."""
    failed = [f for f in files if f.get("parity_ok") is False]
    if not failed or not fail:
        return
    names = ", ".join(f"{f['name']} (max|diff| {f.get('max_abs_diff', float('nan')):.3g} vs {f.get('reference')}, "
                      f"top-1 agreement {f.get('top1_agreement_at_step', f.get('top1_agreement', float('nan'))):.3f})"
                      for f in failed)
    raise EdgeKDError(f"verify: parity failed for {names}; these files do not compute what the trained model does. "
                      "Fix the export or quantization, or set verify.fail_on_parity: false to record the failure "
                      "and go on")


register_stage(Stage("verify", run_verify, sections=("verify",), upstream=("distill", "quantize", "export"),
                     missing="no accuracy or parity of the exported files"))
