"""A new export format and a new runtime, registered from this test module only (no library file touched).

The format ".npyz" stores a small torch MLP (Flatten/Linear/ReLU) as numpy arrays; the runtime "numpy" executes
it with numpy alone. Both travel the whole path: export -> describe_file -> open_session -> verify -> profile,
and a recipe may name the format. docs/extending.md walks through the same two declarations.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.errors import EdgeKDError
from edgekd.fileio import atomic_path
from edgekd.formats import (FORMATS, RUNTIMES, Format, Runtime, describe_file, export_model, format_for,
                            open_session, register_format, register_runtime)
from edgekd.runtimes.session import Session
from edgekd.verify import verify_files

torch.set_num_threads(1)


# --- the format: one exporter and one reader -------------------------------------------------------------------
def export_npyz(model: nn.Module, example_inputs, path: str | os.PathLike) -> Path:
    """Write a Sequential of Flatten/Linear/ReLU as numpy arrays (layer kinds + weights + input shape)."""
    layers, arrays = [], {}
    for i, m in enumerate(model):
        if isinstance(m, nn.Linear):
            layers.append("linear")
            arrays[f"w{i}"] = m.weight.detach().numpy()
            arrays[f"b{i}"] = m.bias.detach().numpy()
        elif isinstance(m, (nn.ReLU, nn.Flatten)):
            layers.append(type(m).__name__.lower())
        else:
            raise EdgeKDError(f"npyz stores Linear/ReLU/Flatten only; got {type(m).__name__}")
    x = example_inputs[0] if isinstance(example_inputs, (tuple, list)) else example_inputs
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, layers=np.array(layers), input_shape=np.array([-1, *x.shape[1:]]), **arrays)
    return Path(path)


def describe_npyz(path: Path) -> dict:
    with np.load(path) as z:
        return {"precision": "fp32", "batch": None, "input_shape": z["input_shape"].tolist()}


NPYZ = Format("npyz", ".npyz", ("numpy",), export=export_npyz, describe=describe_npyz)


# --- the runtime: open(path, threads) -> Session ---------------------------------------------------------------
def open_numpy(path: Path, threads: int) -> Session:
    t0 = time.perf_counter()
    with np.load(path) as z:
        layers = [str(s) for s in z["layers"]]
        weights = {k: z[k] for k in z.files if k not in ("layers", "input_shape")}
        shape = tuple(int(d) for d in z["input_shape"])

    def run(x: np.ndarray) -> np.ndarray:
        for i, kind in enumerate(layers):
            if kind == "flatten":
                x = x.reshape(len(x), -1)
            elif kind == "linear":
                x = x @ weights[f"w{i}"].T + weights[f"b{i}"]
            else:
                x = np.maximum(x, 0)
        return x.astype(np.float32)

    return Session("numpy", path, shape, "float32", threads, (time.perf_counter() - t0) * 1e3, np.__version__, run)


NUMPY = Runtime("numpy", (".npyz",), open_numpy, module="numpy")


@pytest.fixture
def npyz():
    """Register the format and runtime for one test, and remove them after (other tests see the built-ins only)."""
    register_runtime(NUMPY)
    register_format(NPYZ)
    yield NPYZ
    FORMATS.unregister("npyz")
    RUNTIMES.unregister("numpy")


@pytest.fixture(scope="module")
def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    x = torch.randn(200, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    return model, x, y


def test_new_format_and_runtime_export_describe_run_verify(npyz, mlp, tmp_path):
    model, x, y = mlp
    path = export_model("npyz", model, x[:1], tmp_path / "student.npyz")
    assert format_for(path) is NPYZ and "npyz" in FORMATS and "numpy" in RUNTIMES.names()
    d = describe_file(path)
    assert {k: d[k] for k in ("name", "format", "precision", "runtime", "batch")} == {
        "name": "student.npyz", "format": "npyz", "precision": "fp32", "runtime": "numpy", "batch": None}
    assert d["bytes"] == path.stat().st_size and d["input_shape"] == [-1, 1, 4, 4]
    session = open_session(path)
    assert session.runtime == "numpy"
    with torch.no_grad():
        np.testing.assert_allclose(session.run(x[:7].numpy()), model(x[:7]).numpy(), rtol=1e-5, atol=1e-5)
    res = verify_files([d], model, None, x, y)
    assert res["ok"] and res["files"][0]["runtime"] == "numpy" and res["files"][0]["accuracy"] == 1.0
    # A broken file of the new format fails verify with ok False, not silently.
    bad = nn.Sequential(nn.Flatten(), nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 5)).eval()
    res = verify_files([describe_file(export_model("npyz", bad, x[:1], tmp_path / "bad.npyz"))], model, None, x, y)
    assert res["ok"] is False and res["files"][0]["parity_ok"] is False
    # Data of the wrong size: one line naming the file's input and the data's shape.
    with pytest.raises(EdgeKDError, match=r"student.npyz takes input of shape \(N, 1, 4, 4\); got data of shape "
                                          r"\(200, 1, 5, 5\)"):
        verify_files([d], model, None, torch.randn(200, 1, 5, 5), y)


def test_recipe_may_name_a_registered_format(npyz):
    from edgekd.config import parse_recipe
    from edgekd.errors import ConfigError

    assert parse_recipe({"export": {"formats": ["npyz", "onnx"]}}).export.formats == ["npyz", "onnx"]
    FORMATS.unregister("npyz")
    with pytest.raises(ConfigError, match=r"export.formats\[0\]: unknown format 'npyz'.* known: onnx, pt2, tflite"):
        parse_recipe({"export": {"formats": ["npyz"]}})


def test_exporter_options_are_checked_and_unknown_names_explained(npyz, mlp, tmp_path):
    model, x, _ = mlp
    with pytest.raises(EdgeKDError, match=r"format 'npyz' takes no option 'opset'"):
        export_model("npyz", model, x[:1], tmp_path / "m.npyz", opset=18)
    with pytest.raises(EdgeKDError, match=r"a npyz file should end in .npyz; got 'm.onnx'"):
        export_model("npyz", model, x[:1], tmp_path / "m.onnx")
    with pytest.raises(EdgeKDError, match=r"unknown format 'npz'; did you mean 'npyz'\?"):
        export_model("npz", model, x[:1], tmp_path / "m.npyz")
    with pytest.raises(EdgeKDError, match=r"unknown runtime 'nunpy'; did you mean 'numpy'\?"):
        open_session(export_model("npyz", model, x[:1], tmp_path / "m.npyz"), runtime="nunpy")


def test_new_runtime_profiles_locally(npyz, mlp, tmp_path):
    local = pytest.importorskip("edgekd.profile.runners.local",
                                reason="registry-driven local profiling arrives with the profile wave "
                                       "(edgekd.profile.runners)")
    model, x, _ = mlp
    path = export_model("npyz", model, x[:1], tmp_path / "m.npyz")
    res = local.profile_file(path, runtime="numpy", warmup=1, min_runs=5, max_runs=20, time_cap_s=2.0,
                             min_time_s=0.0)
    row = res.to_dict() if hasattr(res, "to_dict") else vars(res)
    assert row["runtime"] == "numpy" and row["precision"] == "fp32"
