"""Small image sets written in the test: the class is the dominant colour, so labels can be checked from pixels."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

EXTS = ("jpg", "png", "webp")


def class_image(label: int, i: int, size: tuple[int, int] = (20, 24)) -> np.ndarray:
    """An RGB image whose channel `label` is bright and the others dark (plus seeded noise)."""
    rng = np.random.default_rng(1000 * label + i)
    a = rng.integers(0, 60, (*size, 3)).astype(np.uint8)
    a[..., label] = 200 + rng.integers(0, 40, size).astype(np.uint8)
    return a


def write_folder(root: Path, per_class: int = 12, classes: int = 3, exts=EXTS) -> Path:
    """root/c<k>/<i>.<ext>, images of varying size, JPEG/PNG/WebP in turn."""
    from PIL import Image

    for c in range(classes):
        (root / f"c{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = Image.fromarray(class_image(c, i, (18 + i % 5, 22 + i % 3)))
            img.save(root / f"c{c}" / f"{i:03d}.{exts[i % len(exts)]}", quality=95)
    return root


def write_manifest(root: Path, kind: str = "csv", per_class: int = 8, classes: int = 3) -> Path:
    """A manifest beside images in root/img/ (paths relative to the manifest)."""
    import json

    from PIL import Image

    (root / "img").mkdir(parents=True, exist_ok=True)
    rows = []
    for c in range(classes):
        for i in range(per_class):
            name = f"img/{c}_{i}.png"
            Image.fromarray(class_image(c, i)).save(root / name)
            rows.append((name, c))
    if kind == "csv":
        path = root / "train.csv"
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["path", "label"])
            w.writerows(rows)
    else:
        path = root / "train.jsonl"
        path.write_text("\n".join(json.dumps({"path": p, "label": y}) for p, y in rows) + "\n")
    return path


def label_from_pixels(x) -> list[int]:
    """The dominant channel of each normalized image (normalization is per-channel affine with equal std)."""
    return x.mean(dim=(2, 3)).argmax(1).tolist()


def same_batches(a, b) -> None:
    """Two lists of edgekd.data.source.Batch hold the same samples, images and labels, in the same order."""
    import torch

    assert len(a) == len(b)
    for p, q in zip(a, b):
        assert torch.equal(p.idx, q.idx) and torch.equal(p.y, q.y) and torch.equal(p.x, q.x)
