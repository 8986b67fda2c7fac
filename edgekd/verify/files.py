"""The verify stage: every exported file's accuracy and parity against its reference (fp32 model or simulation)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.formats import open_session
from edgekd.verify.parity import (FP32_MAX_ABS_DIFF, FP32_RTOL, _as_numpy, accuracy, allowed_diff, compare_logits,
                                  file_logits, reference_logits)

INT8_MAX_ACCURACY_GAP = 0.003   # 0.3 points vs the fake-quant simulation
INT8_MIN_TOP1_AGREEMENT = 0.99


def _field(f, key: str, default=None):
    return f.get(key, default) if isinstance(f, dict) else getattr(f, key, default)


def _output_step(model: nn.Module | None) -> float | None:
    """The int8 step of the simulation's logits (None for a model without a final quantize node)."""
    if not isinstance(model, torch.fx.GraphModule):
        return None
    from edgekd.quant.agreement import output_quantization

    q = output_quantization(model)
    return q[0] if q else None


def simulation_logits(model: nn.Module, x, batch_size: int = 256) -> np.ndarray:
    """The int8 simulation's logits: a converted Q/DQ graph evaluated as int8 kernels compute it (exact int32 sums,
    one float32 requantization per conv/linear, float64 elsewhere: `edgekd.quant.agreement.simulate_integer_kernels`),
    so each layer rounds where the kernels round; the float32 graph rounds ~1 in 10^5 near-ties its own way, which
    a rounding-sensitive network amplifies. The same judge as tools/bench_coverage.py. Any other module (no
    quantize node) runs as it is."""
    from edgekd.quant.agreement import output_quantization, simulate_integer_kernels

    if not isinstance(model, torch.fx.GraphModule) or output_quantization(model) is None:
        return reference_logits(model, x, batch_size)
    try:
        return simulate_integer_kernels(model, torch.from_numpy(_as_numpy(x)), batch_size)
    except (RuntimeError, ValueError, IndexError, AssertionError) as e:  # shape guards and mismatches in the graph
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise EdgeKDError(f"the int8 simulation cannot run on data of shape {tuple(np.shape(x))} ({first[:200]}); "
                          "pass data of the size the model was trained on") from e


def verify_files(files: list, torch_model: nn.Module | None, fake_quant_model: nn.Module | None, x, y, *,
                 tolerance: float = FP32_MAX_ABS_DIFF, rtol: float = FP32_RTOL, parity_samples: int | None = None,
                 max_accuracy_gap: float = INT8_MAX_ACCURACY_GAP,
                 min_top1_agreement: float = INT8_MIN_TOP1_AGREEMENT, batch_size: int = 256,
                 root: str | os.PathLike | None = None, progress: bool = False) -> dict:
    """Metrics of the "verify" stage (docs/design.md §3) for `files` (describe_file dicts or ExportedFile) on (x, y).

    fp32 files are compared with `torch_model`: parity_ok when max|file - torch| <= max(tolerance, rtol *
    max|torch|) over the parity rows, i.e. an absolute floor (`tolerance`, default 1e-4) that grows with the output
    scale (`rtol`, default 1e-4: deep nets' logits of 1e2..1e3 differ by ~1e-4 from float rounding alone, a relative
    error of ~1e-6). int8 files are compared with `fake_quant_model` run as the kernels run it (`simulation_logits`):
    parity_ok when the accuracy gap <= `max_accuracy_gap` and top-1 agreement >= `min_top1_agreement`
    (max_abs_diff is reported; int8 has no logit tolerance of its own). Top-1 agreement is judged at the
    simulation's int8 output step when it has one (`edgekd.quant.agreement.compare_top1`): a row agrees when the
    file's class scores within one output step of the simulation's best, since two classes within one step are a
    tie that a one-step rounding difference — allowed to every int8 kernel — breaks either way; the exact
    agreement is reported beside it. Logit differences use the first `parity_samples` rows (all when None);
    accuracy and top-1 agreement use all rows. Relative paths are taken under `root`.

    Returns {"ok": every file passed (False when there are none), "torch_fp32_accuracy", "fake_quant_accuracy",
    "files": [...]}; each file row has "parity_ok" and, for fp32, "allowed_diff" and "max_rel_diff".
    Raises EdgeKDError (one line) for data that does not fit a file's input, before anything runs.
    """
    y = np.asarray(y)
    if len(x) != len(y):
        raise EdgeKDError(f"x has {len(x)} rows but y has {len(y)}; pass matching images and labels")
    if parity_samples is not None and parity_samples < 1:
        raise ValueError(f"parity_samples must be None or >= 1, got {parity_samples}")
    x = _as_numpy(x)
    sessions = []
    for f in files:  # open every file first: a file that cannot load or data that do not fit fail fast
        path = Path(_field(f, "path"))
        if root is not None and not path.is_absolute():
            path = Path(root) / path
        session = open_session(path, runtime=_field(f, "runtime"))
        session.check_input(x.shape)
        sessions.append((f, path, session))
    fp32_logits = reference_logits(torch_model, x, batch_size) if torch_model is not None else None
    fq_logits = simulation_logits(fake_quant_model, x, batch_size) if fake_quant_model is not None else None
    int8_step = _output_step(fake_quant_model)
    result = {"ok": False, "torch_fp32_accuracy": accuracy(fp32_logits, y) if fp32_logits is not None else None,
              "fake_quant_accuracy": accuracy(fq_logits, y) if fq_logits is not None else None, "files": []}
    items = sessions
    if progress:
        from edgekd.logs import progress_bar

        items = progress_bar(items, desc="verify", unit="file")
    for f, path, session in items:
        precision = _field(f, "precision")
        if precision == "int8":
            if fq_logits is None:
                raise EdgeKDError(f"{path.name} is int8 but no fake_quant_model was given; pass the converted "
                                  "(Q/DQ) model the file was exported from (the quantize stage's .pt2)")
            ref, ref_name = fq_logits, "fake_quant"
        else:
            if fp32_logits is None:
                raise EdgeKDError(f"{path.name} is fp32 but no torch_model was given; pass the fp32 model the "
                                  "file was exported from")
            ref, ref_name = fp32_logits, "torch_fp32"
        out, info = file_logits(path, x, batch_size, session=session)
        n = len(out) if parity_samples is None else min(parity_samples, len(out))
        diff = compare_logits(ref[:n], out[:n])
        agreement = compare_logits(ref, out)["top1_agreement"]
        judged = agreement
        if precision == "int8" and int8_step:
            from edgekd.quant.agreement import compare_top1

            judged = compare_top1(ref, out, resolution=int8_step)["agreement_at_resolution"]
        acc, ref_acc = accuracy(out, y), accuracy(ref, y)
        gap = ref_acc - acc
        row = {"name": _field(f, "name", path.name), "path": str(path), "format": _field(f, "format"),
               "precision": precision, "runtime": info["runtime"], "accuracy": acc, "reference": ref_name,
               "reference_accuracy": ref_acc, "accuracy_gap": gap, "max_abs_diff": diff["max_abs_diff"],
               "mean_abs_diff": diff["mean_abs_diff"], "top1_agreement": agreement}
        if precision == "int8":
            row.update(int8_output_step=int8_step, top1_agreement_at_step=judged)
            ok = gap <= max_accuracy_gap and judged >= min_top1_agreement
        else:
            limit = allowed_diff(ref[:n], tolerance, rtol)
            scale = float(np.abs(ref[:n]).max()) if n else 0.0
            row.update(allowed_diff=limit, max_rel_diff=diff["max_abs_diff"] / scale if scale > 0 else 0.0)
            ok = diff["max_abs_diff"] <= limit
        row.update(parity_ok=bool(ok), n=int(len(out)), seconds=info["seconds"], ms_per_image=info["ms_per_image"])
        result["files"].append(row)
    result["ok"] = bool(result["files"]) and all(r["parity_ok"] for r in result["files"])
    return result
