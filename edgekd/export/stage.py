"""The export stage: one file per (format, precision), fp32 from the student, int8 from the quantized model."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.stages import Stage, register_stage

if TYPE_CHECKING:
    from edgekd.pipeline import RunContext

def run_export(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    """One file per (format, precision): ONNX and TFLite, fp32 from the student, int8 from the quantized model."""
    from edgekd.formats import FORMATS
    from edgekd.models import load_model_file
    from edgekd.quant import load_quantized

    r, out = ctx.recipe, ctx.stage_dir("export")
    example = ctx.example_input(1)
    outputs, files = {}, []
    for precision in r.export.precisions:
        if precision == "int8" and "quantize" not in ctx.records:  # quantization disabled in the recipe
            continue
        if precision == "fp32":
            model = load_model_file(ctx.record("distill").path(ctx.run_dir, "model"))[0]
        else:
            model = load_quantized(ctx.record("quantize").path(ctx.run_dir, "model"))
        for fmt in (FORMATS.get(f) for f in r.export.formats):
            name = f"student_{precision}{fmt.suffix}"
            t0 = time.perf_counter()
            path = fmt.export(model, (example,), out / name, **export_options(fmt, r.export))
            ctx.log(f"export: {name} ({path.stat().st_size / 1024:.1f} KiB, {time.perf_counter() - t0:.1f} s)")
            outputs[name] = path
            files.append({"name": name, "path": f"export/{name}", "format": fmt.name, "precision": precision,
                          "runtime": fmt.runtimes[0], "bytes": path.stat().st_size})
    return outputs, {"files": files}


def export_options(fmt, export_config) -> dict[str, Any]:
    """The recipe's export options a format's exporter takes (today: `opset` for exporters with that argument)."""
    import inspect

    params = inspect.signature(fmt.export).parameters
    return {"opset": export_config.opset} if "opset" in params else {}


register_stage(Stage("export", run_export, sections=("export",), upstream=("distill", "quantize"),
                     missing="no exported files: no file sizes"))
