"""A normal (non-editable) install works: sdist -> wheel -> installed copy, used without the source tree.

The repository keeps targets/, calibration/ and tools/remote_ort_bench.py at its top; the wheel carries them under
edgekd/_shipped/ (setup.py). Here the sdist is built from a copy of this checkout, the wheel from the unpacked sdist
(so both must carry the files), the wheel is installed into a scratch folder, and the installed copy is run in a
process whose import path holds only that folder and the environment's dependencies (`python -S`: no .pth files,
so an editable install of edgekd cannot answer instead).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("targets/pixel-8.yaml", "targets/cpu-local.yaml", "calibration/default.yaml",
           "calibration/latency/cpu-local/onnxruntime-fp32.json", "tools/remote_ort_bench.py")


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None, status: int = 0
         ) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == status, (f"{args[:6]} exited {proc.returncode}:\n{proc.stdout[-2000:]}\n"
                                       f"{proc.stderr[-4000:]}")
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The scratch folder holding edgekd installed from a wheel built from this checkout's sdist."""
    import setuptools

    major, minor = (int(p) for p in setuptools.__version__.split(".")[:2])
    assert (major, minor) >= (70, 1), f"setuptools {setuptools.__version__} < 70.1: pip install 'edgekd[test]'"
    tmp = tmp_path_factory.mktemp("wheel")
    checkout = tmp / "checkout"  # a copy, so the build writes nothing into the repository
    junk = (".git", ".venv", ".whl", ".gl", "runs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
            "*.pyc")
    shutil.copytree(REPO, checkout, ignore=shutil.ignore_patterns(*junk))
    dist = tmp / "dist"
    code = f"import setuptools.build_meta as b; print(b.build_sdist({str(dist)!r}))"
    sdist = dist / _run([sys.executable, "-c", code], cwd=checkout).stdout.strip().splitlines()[-1]
    with tarfile.open(sdist) as tar:
        tar.extractall(tmp / "src", filter="data")
    (src,) = (tmp / "src").iterdir()
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist),
          str(src)], cwd=tmp)
    (wheel,) = dist.glob("edgekd-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    missing = [rel for rel in SHIPPED if f"edgekd/_shipped/{rel}" not in names]
    assert not missing, f"{wheel.name} lacks {missing}"
    scratch = tmp / "site"
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(scratch), str(wheel)], cwd=tmp)
    return scratch


def _installed_python(scratch: Path, code: str, *args: str, status: int = 0) -> subprocess.CompletedProcess:
    """Run `code` with only the installed copy and the environment's dependencies importable, away from the repo."""
    site = sysconfig.get_paths()["purelib"]
    boot = (f"import sys; sys.path[:0] = [{str(scratch)!r}, {site!r}]; import edgekd; "
            f"assert edgekd.__file__.startswith({str(scratch)!r}), edgekd.__file__\n")
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "EDGEKD_TARGETS_DIR", "EDGEKD_CALIBRATION_DIR")}
    return _run([sys.executable, "-S", "-c", boot + code, *args], cwd=scratch.parent, env=env, status=status)


def _cli(scratch: Path, *args: str, status: int = 0) -> subprocess.CompletedProcess:
    return _installed_python(scratch, "from edgekd.cli import main; main(sys.argv[1:], prog_name='edgekd')",
                             *args, status=status)


def test_installed_wheel_finds_its_shipped_files(installed):
    code = """
import json
from edgekd.config import PROJECT_ROOT, resolve_path
from edgekd.profile.predict.predictor import calibration_dir
from edgekd.profile.runners.ssh import remote_script
from edgekd.profile.targets import targets_dir
from edgekd.quant import load_calibration_recipe
print(json.dumps({"targets": str(targets_dir()), "calibration": str(calibration_dir()), "script": str(remote_script()),
                  "root": str(PROJECT_ROOT), "recipe_default": resolve_path("calibration/default.yaml", PROJECT_ROOT),
                  "size": load_calibration_recipe("calibration/default.yaml").size}))
"""
    found = json.loads(_installed_python(installed, code).stdout.strip().splitlines()[-1])
    shipped = installed / "edgekd" / "_shipped"
    assert found["targets"] == str(shipped / "targets")
    assert found["calibration"] == str(shipped / "calibration" / "latency")
    assert found["script"] == str(shipped / "tools" / "remote_ort_bench.py") and Path(found["script"]).is_file()
    assert found["recipe_default"] == str(shipped / "calibration" / "default.yaml")
    assert found["size"] > 0


def test_installed_cli_lists_shows_and_predicts(installed, tmp_path):
    listing = _cli(installed, "targets").stdout
    for name in ("cpu-local", "pixel-8", "raspberry-pi-5", "jetson-orin-nano"):
        assert f"\n{name} " in listing, listing
    shown = _cli(installed, "targets", "show", "pixel-8").stdout
    assert shown.startswith("pixel-8 (android)") and "peak:" in shown and "sources:" in shown, shown

    model = _tiny_onnx(tmp_path / "tiny.onnx")
    # pixel-8 runs LiteRT only: an ONNX file is refused in one line (a .tflite would take a minute to convert here)
    refused = _cli(installed, "profile", str(model), "--target", "pixel-8", "--remote", "predict", status=2).stderr
    assert refused.startswith("edgekd: error: pixel-8 runs none of these files") and refused.count("\n") == 1
    report = json.loads(_cli(installed, "profile", str(model), "--target", "raspberry-pi-5", "--remote", "predict",
                             "--json").stdout)
    (row,) = report["targets"][0]["results"]
    assert row["runtime"] == "onnxruntime" and row["p50_ms"] > 0 and not row.get("measured"), row


def _tiny_onnx(path: Path) -> Path:
    """A 2-layer ONNX classifier written with onnx.helper (no exporter run: seconds, not minutes)."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = [numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "w"),
               numpy_helper.from_array(rng.standard_normal((10, 4 * 26 * 26)).astype(np.float32), "fc")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 28, 28])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])], weights)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.save(model, path)
    return path
