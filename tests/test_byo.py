"""docs/byo.md's recipe, run end to end through the CLI on tiny synthetic images (folder and npz)."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from edgekd.fileio import read_json
from edgekd.models.vision import import_torchvision

DOC = Path(__file__).resolve().parents[1] / "docs" / "byo.md"
CLASSES = ["daisy", "rose", "tulip"]


def doc_recipe() -> dict:
    """The first YAML block of docs/byo.md: the recipe a user copies."""
    return yaml.safe_load(re.search(r"```yaml\n(.*?)```", DOC.read_text(), re.S).group(1))


def images(n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Coloured squares: each class its own dominant channel, so the data set is learnable."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 60, (3 * n_per_class, 32, 32, 3)).astype(np.uint8)
    y = np.repeat(np.arange(3), n_per_class)
    for i, c in enumerate(y):
        x[i, 8:24, 8:24, c] = 200
    return x, y


def make_folder(root: Path) -> None:
    from PIL import Image

    for split, n, seed in (("train", 8, 0), ("test", 3, 1)):
        x, y = images(n, seed)
        for i, (img, c) in enumerate(zip(x, y)):
            folder = root / split / CLASSES[c]
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(img).save(folder / f"{i:03d}.png")


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", "from edgekd.cli import main; main()", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("source", ["image_folder", pytest.param("npz", marks=pytest.mark.slow)])
def test_documented_byo_recipe_runs_until_distill(tmp_path, source):
    recipe = doc_recipe()
    assert recipe["teacher"]["model"] == "torchvision:resnet18"
    assert recipe["student"]["model"] == "timm:mobilenetv4_conv_small"
    (tmp_path / "labels.txt").write_text("\n".join(CLASSES) + "\n")
    torch.manual_seed(0)  # the user's fine-tuned teacher, saved the way a training script saves a checkpoint
    teacher = import_torchvision().models.resnet18(num_classes=3)
    torch.save({"model": teacher.state_dict(), "epoch": 10}, tmp_path / recipe["teacher"]["weights"])
    if source == "image_folder":
        make_folder(tmp_path / recipe["data"]["root"])
    else:
        (xtr, ytr), (xte, yte) = images(8, 0), images(3, 1)
        np.savez(tmp_path / "flowers.npz", x_train=xtr, y_train=ytr, x_test=xte, y_test=yte)
        recipe["data"].update(dataset="npz", root="flowers.npz", kwargs={})
    (tmp_path / "flowers.yaml").write_text(yaml.safe_dump(recipe, sort_keys=False))

    done = run_cli("run", "flowers.yaml", "--until", "distill", "--run-dir", "run", "--no-progress", cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    assert "replaced the 1000-class head" in done.stdout + done.stderr
    distill = read_json(tmp_path / "run" / "distill" / "stage.json")["metrics"]
    assert distill["data_split"]["val"] == 5 and distill["data_split"]["train"] == 19  # round(20% of 24)
    check = ("from edgekd.models import load_model_file; import torch; "
             "m, info = load_model_file('run/distill/student.pt'); "
             "print(info['model'], info['head'], tuple(m(torch.zeros(1, 3, 32, 32)).shape))")
    fresh = subprocess.run([sys.executable, "-c", check], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert "timm:mobilenetv4_conv_small 3 (1, 3)" in fresh.stdout, fresh.stderr[-2000:]

    from edgekd.config import load_recipe
    from edgekd.pipeline import RunContext

    ds = RunContext(load_recipe(tmp_path / "flowers.yaml"), tmp_path / "run").dataset
    assert ds.labels == CLASSES and ds.mean == pytest.approx((123.675, 116.28, 103.53))


def test_byo_mistakes_are_one_line(tmp_path):
    recipe = doc_recipe()
    (xtr, ytr), (xte, yte) = images(4, 0), images(2, 1)
    np.savez(tmp_path / "bad.npz", x_train=xtr, y_train=ytr + 1, x_test=xte, y_test=yte + 1)
    recipe["data"].update(dataset="npz", root="bad.npz", kwargs={}, class_names=None)
    recipe["teacher"] = {"model": "tiny_cnn", "train": {"epochs": 1}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    done = run_cli("run", "r.yaml", "--until", "teacher", "--run-dir", "run", "--no-progress", cwd=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "training labels run 1..3 (3 distinct) but class(es) [0] never appear" in done.stderr + done.stdout


NET = '''
from torch import nn


def build(classes=5):
    """A third-party model with its own argument names and a pretrained head of another class count."""
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, classes))
'''


def test_loaded_teacher_with_other_classes_is_refused_unless_finetuned(tmp_path):
    from edgekd.errors import EdgeKDError
    from edgekd.pipeline import run

    (tmp_path / "netlib.py").write_text(NET)  # beside the recipe: imported as netlib:build
    sys.path.insert(0, str(tmp_path))
    try:
        import netlib
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(netlib.build().state_dict(), tmp_path / "pretrained.pt")
    sys.modules.pop("netlib")
    recipe = {"data": {"dataset": "digits", "subset_train": 200, "batch_size": 16},
              "teacher": {"model": "netlib:build", "weights": "pretrained.pt",
                          "train": {"epochs": 5, "lr": 0.01, "augment": False}},  # digits: no flips
              "profile": {"targets": ["cpu-local"]}, "bundle": {"targets": ["cpu-local"]}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    with pytest.raises(EdgeKDError, match=r"outputs 5 classes, the data has 10: .*set teacher.finetune: true"):
        run(tmp_path / "r.yaml", run_dir=tmp_path / "run", until="teacher", progress=False, log=lambda m: None)
    recipe["teacher"]["finetune"] = True
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    lines: list[str] = []
    run(tmp_path / "r.yaml", run_dir=tmp_path / "run", until="teacher", progress=False, log=lines.append)
    assert any("replaced the 5-class head (3) with a new 10-class one" in line for line in lines)
    metrics = read_json(tmp_path / "run" / "teacher" / "stage.json")["metrics"]
    assert metrics["source"] == "trained" and metrics["test_accuracy"] > 0.4  # 10 classes: chance is 0.1
