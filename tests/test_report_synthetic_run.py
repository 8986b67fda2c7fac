"""A synthetic run directory built from the run-directory contract, with tiny real model files.

Shared by the bundle and report tests (`from test_report_synthetic_run import ...`):
- `tiny_models`: converted once per session with litert-torch + torch.onnx dynamo + ORT quantization (5 s on an
  idle machine, 15 s with the cores shared), so tests that need them are in the `export` tier;
- `tiny_onnx_models`: two ONNX files built with onnx.helper in milliseconds, for the default tier;
- report tests need no real models (the report reads stage.json only): placeholder bytes stand in.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

from edgekd.fileio import sha256_file
from edgekd.runs import load_run

LABELS = [f"class_{i}" for i in range(10)]
MEAN, STD = (72.93,), (90.015,)  # pixel scale, as edgekd.data.ImageDataset stores them
INPUT_SHAPE = (1, 8, 8)
_MODEL_CACHE: dict[str, Path] = {}
# name -> (format, precision, runtime, accuracy, parity_ok)
FILES = {
    "student_fp32.tflite": ("tflite", "fp32", "litert", 0.884, True),
    "student_int8.tflite": ("tflite", "int8", "litert", 0.879, True),
    "student_fp32.onnx": ("onnx", "fp32", "onnxruntime", 0.884, True),
    "student_int8.onnx": ("onnx", "int8", "onnxruntime", 0.861, False),
}


def tiny_model_files(root: Path) -> dict[str, Path]:
    """Convert a tiny CNN to fp32/int8 TFLite and fp32/int8 ONNX under `root` (once per session)."""
    if _MODEL_CACHE:
        return dict(_MODEL_CACHE)
    import litert_torch
    import torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from torch import nn
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    torch.manual_seed(0)
    torch.set_num_threads(1)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2), nn.ReLU(), nn.Flatten(), nn.Linear(36, 10)).eval()
    x = torch.randn(1, *INPUT_SHAPE)
    root.mkdir(parents=True, exist_ok=True)
    paths = {name: root / name for name in FILES}
    litert_torch.convert(model, (x,)).export(str(paths["student_fp32.tflite"]))
    quantizer = PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
    prepared = prepare_pt2e(torch.export.export(model, (x,)).module(), quantizer)
    for _ in range(8):
        prepared(torch.randn(1, *INPUT_SHAPE))
    converted = convert_pt2e(prepared, fold_quantize=False)
    litert_torch.convert(converted, (x,), quant_config=QuantConfig(pt2e_quantizer=quantizer)).export(
        str(paths["student_int8.tflite"]))
    torch.onnx.export(model, (x,), str(paths["student_fp32.onnx"]), dynamo=True, verbose=False)
    inline = root / "fp32_inline.onnx"
    import onnx

    onnx.save(onnx.load(str(paths["student_fp32.onnx"])), str(inline))
    quantize_dynamic(str(inline), str(paths["student_int8.onnx"]), weight_type=QuantType.QInt8)
    _MODEL_CACHE.update(paths)
    return dict(paths)


ONNX_FILES = {n: v for n, v in FILES.items() if v[0] == "onnx"}


def tiny_onnx_files(root: Path) -> dict[str, Path]:
    """fp32 and dynamically quantized int8 ONNX classifiers (Flatten + Gemm, 1x1x8x8 -> 10), no converter needed."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((64, 10)).astype(np.float32) * 0.1, "w")
    b = numpy_helper.from_array(np.zeros(10, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["image"], ["flat"], axis=1), helper.make_node("Gemm", ["flat", "w", "b"],
                                                                                    ["logits"])],
        "tiny", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, *INPUT_SHAPE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    onnx.checker.check_model(model)
    paths = {"student_fp32.onnx": root / "student_fp32.onnx", "student_int8.onnx": root / "student_int8.onnx"}
    onnx.save(model, str(paths["student_fp32.onnx"]))
    quantize_dynamic(str(paths["student_fp32.onnx"]), str(paths["student_int8.onnx"]), weight_type=QuantType.QInt8)
    return paths


# A recipe as the pipeline writes it into the run directory (edgekd.config.load_recipe reads it back).
RECIPE = ("name: tiny-fmnist\ndata: {dataset: fashion_mnist, batch_size: 128}\n"
          "teacher: {model: teacher_cnn, train: {epochs: 5}}\nstudent: {model: tiny_cnn}\n"
          "distill: {losses: [{name: kd_soft, weight: 0.9, temperature: 4.0}, {name: ce, weight: 0.1}], "
          "train: {epochs: 6}}\n"
          "quantize: {method: qat, train: {epochs: 2}}\nprofile: {targets: [cpu-local, pixel-8]}\n"
          "bundle: {targets: [pixel-8], model_name: tiny-fmnist, version: 0.1.0}\n")


def _history(epochs: int, parts: list[str], start_acc: float, end_acc: float) -> list[dict]:
    rows = []
    for e in range(epochs):
        f = e / max(1, epochs - 1)
        p = {name: round((1.6 - 1.1 * f) / (i + 1), 4) for i, name in enumerate(parts)}
        rows.append({"epoch": e, "step": (e + 1) * 50, "loss": round(sum(p.values()), 4), "parts": p,
                     "train_accuracy": round(start_acc + (end_acc - start_acc) * f + 0.01, 4),
                     "test_accuracy": round(start_acc + (end_acc - start_acc) * f, 4), "lr": 0.01 * (1 - f) + 1e-4})
    return rows


def _stage(run: Path, folder: str, stage: str, metrics: dict, outputs: dict | None = None) -> None:
    d = run / folder
    d.mkdir(parents=True, exist_ok=True)
    (d / "stage.json").write_text(json.dumps({"stage": stage, "fingerprint": "f" * 16, "outputs": outputs or {},
                                              "metrics": metrics, "versions": {"torch": "2.13.0"},
                                              "wall_time_s": 1.5}))


def write_run(run: Path, models: dict[str, Path] | None, *, until: str = "profile",
              files: dict[str, tuple] | None = None) -> Path:
    """Write a run directory following the contract, stopping after stage `until`.

    `files` (default FILES) are the exported files; `models` maps their names to real model files, or is None
    for placeholder bytes (enough for the report, which never opens them).
    """
    files_spec = FILES if files is None else files
    order = ["teacher", "distill", "quantize", "export", "verify", "profile"]
    stages = set(order[:order.index(until) + 1])
    run.mkdir(parents=True, exist_ok=True)
    (run / "recipe.yaml").write_text(RECIPE)
    if "teacher" in stages:
        _stage(run, "teacher", "teacher", {"params": 480_000, "test_accuracy": 0.912,
                                           "history": _history(5, ["ce"], 0.78, 0.912)})
    if "distill" in stages:
        _stage(run, "distill", "distill", {"params": 406, "test_accuracy": 0.884,
                                           "history": _history(6, ["kd_soft", "ce"], 0.70, 0.884)})
    if "quantize" in stages:
        _stage(run, "quantize", "quantize", {"scheme": {"weights": "int8 per-channel"}, "method": "qat_kd",
                                             "fake_quant_accuracy": 0.880,
                                             "history": _history(2, ["kd_soft", "ce"], 0.86, 0.880)})
    if "export" in stages:
        files, outputs = [], {}
        (run / "export").mkdir(parents=True, exist_ok=True)
        for name, (fmt, prec, rt, _, _) in files_spec.items():
            dst = run / "export" / name
            if models is None:
                dst.write_bytes(bytes(4096 if prec == "fp32" else 1536))
                files.append({"name": name, "path": f"export/{name}", "format": fmt, "precision": prec,
                              "runtime": rt, "bytes": dst.stat().st_size})
                continue
            shutil.copy(models[name], dst)
            if (models[name].parent / (name + ".data")).exists():  # torch.onnx dynamo writes external data
                shutil.copy(models[name].parent / (name + ".data"), run / "export" / (name + ".data"))
            files.append({"name": name, "path": f"export/{name}", "format": fmt, "precision": prec, "runtime": rt,
                          "bytes": dst.stat().st_size})
            outputs[name] = {"path": f"export/{name}", "sha256": sha256_file(dst), "bytes": dst.stat().st_size}
        _stage(run, "export", "export", {"files": files}, outputs)
    if "verify" in stages:
        _stage(run, "verify", "verify", {"torch_fp32_accuracy": 0.884, "fake_quant_accuracy": 0.880, "files": [
            {"name": n, "format": f, "precision": p, "runtime": r, "accuracy": a,
             "reference": "torch_fp32" if p == "fp32" else "fake_quant",
             "max_abs_diff": 6e-6 if p == "fp32" else (0.04 if ok else 2.9), "top1_agreement": 1.0 if ok else 0.93,
             "parity_ok": ok} for n, (f, p, r, a, ok) in files_spec.items()]})
    if "profile" in stages:
        targets = []
        for target, measured, scale in (("cpu-local", True, 1.0), ("pixel-8", False, 0.6)):
            results = []
            for n, (f, p, r, _, _) in files_spec.items():
                p50 = scale * {"litert": 0.25, "onnxruntime": 0.34}[r] * (0.8 if p == "int8" else 1.0)
                if target == "pixel-8" and r == "onnxruntime":
                    continue
                results.append({"name": n, "runtime": r, "precision": p, "threads": 1 if measured else 4,
                                "measured": measured, "p50_ms": p50, "p90_ms": p50 * 1.1, "p99_ms": p50 * 1.3,
                                "mean_ms": p50 * 1.02, "std_ms": p50 * 0.03, "cv": 0.03 if p == "fp32" else 0.07,
                                "cv_flag": p == "int8" and measured, "init_ms": 2.0, "first_ms": p50 * 3,
                                "peak_mem_mb": 40.0, "bytes": (run / "export" / n).stat().st_size
                                if (run / "export" / n).exists() else 4000, "runs": 200,
                                "runtime_version": "1.32.0" if r == "onnxruntime" else "2.3.0",
                                "device": "x86_64 AVX2" if measured else "pixel-8 (predicted)",
                                "uncertainty": None if measured else 0.35})
            verdicts = [{"target": target, "runtime": rt, "int8_vs_fp32_speedup": 1.25, "measured": measured,
                         "text": f"On {target}, {rt} int8 is 1.25x faster than fp32 "
                                 f"({'measured' if measured else 'predicted'})."}
                        for rt in sorted({x["runtime"] for x in results})]
            targets.append({"target": target, "results": results, "verdicts": verdicts})
        _stage(run, "profile", "profile", {"targets": targets})
    return run


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    return tiny_model_files(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_onnx_models(tmp_path_factory) -> dict[str, Path]:
    return tiny_onnx_files(tmp_path_factory.mktemp("tiny_onnx"))


@pytest.fixture
def synthetic_run(tmp_path, tiny_models) -> Path:
    """A full run with converted TFLite and ONNX files (export tier)."""
    return write_run(tmp_path / "runs" / "tiny", tiny_models)


@pytest.fixture
def onnx_run(tmp_path, tiny_onnx_models) -> Path:
    """A full run whose export stage made the two helper-built ONNX files (default tier)."""
    return write_run(tmp_path / "runs" / "tiny", tiny_onnx_models, files=ONNX_FILES)


@pytest.fixture
def report_run(tmp_path) -> Path:
    """A full run with placeholder model files: all the report reads."""
    return write_run(tmp_path / "runs" / "tiny", None)


@pytest.mark.export
def test_model_files_convert_and_run(tmp_path_factory):
    t0 = time.perf_counter()
    paths = tiny_model_files(tmp_path_factory.mktemp("tiny_models_timed"))
    elapsed = time.perf_counter() - t0
    from edgekd.runtimes import open_session
    import numpy as np

    for name, path in paths.items():
        y = open_session(path).run(np.zeros((1, *INPUT_SHAPE), np.float32))
        assert y.shape == (1, 10), name
    assert elapsed < 60, f"tiny model conversion took {elapsed:.1f} s"


def test_helper_built_onnx_files_run(tiny_onnx_models):
    from edgekd.runtimes import open_session
    import numpy as np

    x = np.random.default_rng(0).standard_normal((1, *INPUT_SHAPE)).astype(np.float32)
    y32, y8 = (open_session(tiny_onnx_models[n]).run(x) for n in ("student_fp32.onnx", "student_int8.onnx"))
    assert y32.shape == (1, 10) and np.abs(y32 - y8).max() < 0.1


def test_synthetic_run_follows_the_contract(report_run):
    run = load_run(report_run)
    assert run.missing() == ["baseline", "bundle", "kd_gain"]  # the synthetic run has no no-teacher baseline
    assert sorted(run.profiles) == ["cpu-local", "pixel-8"]
    assert [f["name"] for f in run.metrics("export")["files"]] == list(FILES)
    assert run.file("export/student_int8.tflite").is_file()
    assert run.recipe.name == "tiny-fmnist" and run.recipe.profile.targets == ["cpu-local", "pixel-8"]
    assert run.problems == []
