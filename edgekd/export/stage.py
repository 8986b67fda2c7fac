"""The export stage: one file per (format, precision), fp32 from the student, int8 from the quantized model."""
from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgekd.stages import Stage, register_stage

if TYPE_CHECKING:
    from edgekd.pipeline import RunContext

FORMAT_RUNTIME = {"onnx": "onnxruntime", "tflite": "litert"}


def run_export(ctx: "RunContext") -> tuple[dict[str, Path], dict[str, Any]]:
    """One file per (format, precision): ONNX and TFLite, fp32 from the student, int8 from the quantized model."""
    from edgekd.export import export_onnx, export_tflite
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
        for fmt in r.export.formats:
            name = f"student_{precision}.{fmt}"
            t0 = time.perf_counter()
            if fmt == "onnx":
                path = export_onnx(model, (example,), out / name, opset=r.export.opset)
            else:
                path = export_tflite(model, (example,), out / name)
            ctx.log(f"export: {name} ({path.stat().st_size / 1024:.1f} KiB, {time.perf_counter() - t0:.1f} s)")
            outputs[name] = path
            files.append({"name": name, "path": f"export/{name}", "format": fmt, "precision": precision,
                          "runtime": FORMAT_RUNTIME[fmt], "bytes": path.stat().st_size})
    return outputs, {"files": files}


register_stage(Stage("export", run_export, sections=("export",), upstream=("distill", "quantize"),
                     missing="no exported files: no file sizes"))
