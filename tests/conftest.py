"""Shared fixtures: small data made in the test process, one thread, no network."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TQDM_DISABLE", "1")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    yield


@pytest.fixture(scope="session")
def digits():
    from edgekd.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="module")
def trained():
    """A tiny CNN trained briefly on a separable 8x8 task: (model, x, y) for export and verify tests."""
    from quant_fixtures import TinyNet, separable_task, train_briefly

    x, y = separable_task(512, size=8)
    torch.manual_seed(0)
    return train_briefly(TinyNet(), x, y, steps=60), x, y


@pytest.fixture
def fake_phone(tmp_path, monkeypatch):
    """tests/fakes/adb first on PATH with one authorized device whose file system (returned) holds
    benchmark_model, replaying a recorded benchmark_model log; adb calls logged to tmp_path/adb.log."""
    from pathlib import Path

    here = Path(__file__).parent
    root = tmp_path / "device"
    (root / "data/local/tmp").mkdir(parents=True)
    (root / "data/local/tmp/benchmark_model").write_text("binary")
    monkeypatch.setenv("PATH", f"{here / 'fakes'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_ADB_DEVICES", "38011FDJH000XY:device")
    monkeypatch.setenv("FAKE_ADB_ROOT", str(root))
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(here / "data/profile/benchmark_model_xnnpack.txt"))
    monkeypatch.setenv("FAKE_ADB_LOG", str(tmp_path / "adb.log"))
    return root
