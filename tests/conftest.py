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
