"""Reproduce the shipped Fashion-MNIST teacher weights (edgekd/weights/teacher_cnn_fmnist.pt).

    .venv/bin/python tools/train_teacher.py --epochs 15 --seed 0

Writes the state_dict and a JSON with its sha256, accuracy, recipe and wall time. Same trainer and data path as
the pipeline's `teacher` stage; the demo loads these weights instead of retraining (~10 min on 2 cores).
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import click
import torch

from edgekd.data import load_dataset
from edgekd.fileio import sha256_file, torch_save, write_json
from edgekd.models import build_model, count_params
from edgekd.train import TrainConfig, evaluate, train


@click.command()
@click.option("--epochs", default=15.0, show_default=True)
@click.option("--lr", default=3e-3, show_default=True)
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=2, show_default=True)
@click.option("--out", default="edgekd/weights/teacher_cnn_fmnist.pt", show_default=True)
def main(epochs: float, lr: float, seed: int, threads: int, out: str) -> None:
    torch.set_num_threads(threads)
    ds = load_dataset("fashion_mnist")
    torch.manual_seed(seed)
    model = build_model("teacher_cnn", num_classes=ds.num_classes, in_channels=ds.input_shape[0])
    cfg = TrainConfig(epochs=epochs, lr=lr, weight_decay=5e-4, augment=True, schedule="onecycle")
    t0 = time.perf_counter()
    result = train(model, ds.x_train, ds.y_train, cfg, seed=seed, x_test=ds.x_test, y_test=ds.y_test,
                   checkpoint=Path(out).with_suffix(".ckpt"), desc="teacher")
    acc = evaluate(model, ds.x_test, ds.y_test)
    torch_save(model.state_dict(), out)
    Path(out).with_suffix(".ckpt").unlink(missing_ok=True)
    info = {"model": "teacher_cnn", "kwargs": {}, "params": count_params(model), "test_accuracy": acc,
            "train": cfg.__dict__, "seed": seed, "dataset": ds.describe(), "wall_time_s": time.perf_counter() - t0,
            "threads": threads, "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
            "history": result.history, "sha256": sha256_file(out)}
    write_json(Path(out).with_suffix(".json"), info)
    print(json.dumps({k: info[k] for k in ("params", "test_accuracy", "wall_time_s", "sha256")}))


if __name__ == "__main__":
    main()
