"""What makes KD pay on Fashion-MNIST here? Students trained under several regimes, scored on the VALIDATION split.

    flock /work/bench.lock .venv/bin/python tools/bench_kd_study.py --out runs/bench/kd_study.json

Regimes (same student, data, epochs, optimiser and seed; the test set is never read):
  ce        cross-entropy, no augmentation (the no-teacher baseline as `baseline` trains it)
  ce_aug    cross-entropy with crop+flip (the loop's augmentation): a fairer baseline for augmented KD
  kd        the fixed default (CE 0.1 + soft KD 0.9, T=2), cached teacher logits, no augmentation
  kd_aug    the same losses, teacher online on the crop+flip batch ("consistent teaching")
  fm        function matching: soft KD only (T=1), teacher online on crop+flip+mixup batches (Beyer et al. 2022)
  fm_t2     function matching with T=2
  fm_std    function matching with logit standardisation (T=2)
  kd_std    CE 0.1 + standardised KD 0.9 (T=2), teacher online on crop+flip
Each run records validation accuracy after every epoch and its wall time.
"""
from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import click
import torch

from edgekd.auto.function_matching import function_matching
from edgekd.auto.proxy import TeacherOutputs, build_student
from edgekd.data import load_dataset
from edgekd.distill import TorchTeacher, build_objective
from edgekd.fileio import write_json
from edgekd.models import count_params, load_shipped_teacher
from edgekd.train import TeacherSignal, TrainConfig, evaluate, train

CE = [{"name": "ce", "weight": 1.0}]
DEFAULT = [{"name": "ce", "weight": 0.1}, {"name": "kd_soft", "weight": 0.9, "temperature": 2.0}]


def kd_only(t: float, std: bool = False) -> list[dict[str, Any]]:
    return [{"name": "kd_soft", "weight": 1.0, "temperature": t, "standardize": std}]


REGIMES: dict[str, dict[str, Any]] = {
    "ce": {"losses": CE, "augment": False, "teacher": None},
    "ce_aug": {"losses": CE, "augment": True, "teacher": None},
    "kd": {"losses": DEFAULT, "augment": False, "teacher": "cached"},
    "kd_aug": {"losses": DEFAULT, "augment": True, "teacher": "online"},
    "fm": {"losses": kd_only(1.0), "augment": True, "teacher": "mixup"},
    "fm_t2": {"losses": kd_only(2.0), "augment": True, "teacher": "mixup"},
    "fm_std": {"losses": kd_only(2.0, True), "augment": True, "teacher": "mixup"},
    "kd_std": {"losses": [{"name": "ce", "weight": 0.1},
                          {"name": "kd_soft", "weight": 0.9, "temperature": 2.0, "standardize": True}],
               "augment": True, "teacher": "online"},
    "fm_noaug": {"losses": kd_only(1.0), "augment": False, "teacher": "mixup"},
    # cached teacher logits, no augmentation: as cheap as cross-entropy, so longer schedules are affordable
    "kd_t4": {"losses": [{"name": "ce", "weight": 0.1}, {"name": "kd_soft", "weight": 0.9, "temperature": 4.0}],
              "augment": False, "teacher": "cached"},
    "kd_t1": {"losses": [{"name": "ce", "weight": 0.1}, {"name": "kd_soft", "weight": 0.9, "temperature": 1.0}],
              "augment": False, "teacher": "cached"},
    "kdo_t1": {"losses": kd_only(1.0), "augment": False, "teacher": "cached"},
    "kdo_t2": {"losses": kd_only(2.0), "augment": False, "teacher": "cached"},
    "kdo_t4": {"losses": kd_only(4.0), "augment": False, "teacher": "cached"},
    "kd_std_c": {"losses": [{"name": "ce", "weight": 0.1},
                            {"name": "kd_soft", "weight": 0.9, "temperature": 2.0, "standardize": True}],
                 "augment": False, "teacher": "cached"},
    "kd_half": {"losses": [{"name": "ce", "weight": 0.5}, {"name": "kd_soft", "weight": 0.5, "temperature": 4.0}],
                "augment": False, "teacher": "cached"},
    "dist": {"losses": [{"name": "ce", "weight": 1.0}, {"name": "dist", "weight": 1.0, "beta": 1.0, "gamma": 1.0,
                                                        "tau": 4.0}], "augment": False, "teacher": "cached"},
    "dkd": {"losses": [{"name": "ce", "weight": 1.0}, {"name": "dkd", "weight": 1.0, "alpha": 1.0, "beta": 2.0,
                                                       "temperature": 4.0}], "augment": False, "teacher": "cached"},
}


def run_regime(regime: dict[str, Any], ds, student: dict, teacher: TorchTeacher, cached: TeacherOutputs | None,
               epochs: float, lr: float, seed: int, batch: int, mixup_alpha: float) -> dict[str, Any]:
    model = build_student(student["model"], student["kwargs"], ds, seed).module
    cfg = TrainConfig(epochs=epochs, lr=lr, checkpoint_every=10 ** 9, augment=regime["augment"])
    objective = build_objective(regime["losses"])
    trained, signal = model, TeacherSignal()
    if regime["teacher"] == "cached":
        signal = cached.signal()
    elif regime["teacher"] == "online":
        signal = TeacherSignal(teacher=teacher)
    elif regime["teacher"] == "mixup":
        trained, signal = function_matching(model, teacher, alpha=mixup_alpha, seed=seed)
    t0 = time.perf_counter()
    res = train(trained, ds.x_train, ds.y_train, cfg, objective=objective, teacher=signal, seed=seed,
                batch_size=batch, x_test=ds.x_val, y_test=ds.y_val, progress=False)
    seconds = time.perf_counter() - t0
    return {"val_accuracy": evaluate(model, ds.x_val, ds.y_val), "seconds": seconds,
            "val_curve": [h.get("test_accuracy") for h in res.history],
            "train_accuracy_last": res.history[-1].get("train_accuracy") if res.history else None}


@click.command()
@click.option("--regimes", default="ce,ce_aug,kd,kd_aug,fm", show_default=True)
@click.option("--subset-train", default=15000, show_default=True)
@click.option("--val-size", default=3000, show_default=True)
@click.option("--epochs", default=8.0, show_default=True)
@click.option("--lr", default=1e-2, show_default=True)
@click.option("--batch", default=128, show_default=True)
@click.option("--mixup-alpha", default=1.0, show_default=True)
@click.option("--student", default="tiny_cnn:width=12,depth=3", show_default=True)
@click.option("--seeds", default="0", show_default=True)
@click.option("--threads", default=1, show_default=True, help="torch threads (1: robust on a shared 2-core VM)")
@click.option("--out", default="runs/bench/kd_study.json", show_default=True)
def main(regimes, subset_train, val_size, epochs, lr, batch, mixup_alpha, student, seeds, threads, out) -> None:
    torch.set_num_threads(threads)
    name, _, kw = student.partition(":")
    spec = {"model": name, "kwargs": {k: int(v) if v.isdigit() else float(v)
                                      for k, v in (p.split("=") for p in kw.split(",") if p)}}
    ds = load_dataset("fashion_mnist", subset_train=subset_train, seed=0, val_size=val_size)
    module, _ = load_shipped_teacher()
    teacher = TorchTeacher(module)
    cached = TeacherOutputs.compute(teacher, ds.x_train)
    s_params = count_params(build_student(spec["model"], spec["kwargs"], ds, 0).module)
    results: dict[str, Any] = {"dataset": ds.describe(), "split": ds.split, "student": spec, "student_params": s_params,
                               "teacher_params": count_params(module), "epochs": epochs, "lr": lr, "batch": batch,
                               "mixup_alpha": mixup_alpha, "threads": torch.get_num_threads(),
                               "host": platform.platform(),
                               "teacher_val_accuracy": evaluate(module, ds.x_val, ds.y_val),
                               "runs": {}}
    for seed in [int(s) for s in seeds.split(",")]:
        for r in regimes.split(","):
            rec = run_regime(REGIMES[r], ds, spec, teacher, cached, epochs, lr, seed, batch, mixup_alpha)
            results["runs"].setdefault(r, {})[str(seed)] = rec
            print(f"seed {seed} {r:<8} val {rec['val_accuracy'] * 100:.2f}  ({rec['seconds']:.0f} s)  curve "
                  + " ".join(f"{a * 100:.1f}" for a in rec["val_curve"]), flush=True)
            write_json(Path(out), results)


if __name__ == "__main__":
    main()
