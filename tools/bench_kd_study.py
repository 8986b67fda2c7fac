"""What makes KD pay here? Students trained under several regimes, scored on the VALIDATION split.

    flock /work/bench.lock .venv/bin/python tools/bench_kd_study.py --out runs/bench/kd_study.json
    flock /work/bench.lock .venv/bin/python tools/bench_kd_study.py --dataset digits --teacher-augment shift \
        --regimes ce,kd,ce_shift,kd_shift --student tiny_cnn:width=8,depth=2 --epochs 30 --seeds 0,1,2

Fashion-MNIST uses the shipped teacher; digits a teacher_cnn trained here on the training split (30 epochs, with
`--teacher-augment`: none, shift = random translation by up to one pixel and no flip, or flip = the loop's
pad-2 crop + horizontal flip, which makes a mirrored 2/5/7 a training image of its own class).

Regimes (same student, data, epochs, optimiser and seed; the test set is never read):
  ce        cross-entropy, no augmentation (the no-teacher baseline as `baseline` trains it)
  ce_aug    cross-entropy with crop+flip (the loop's augmentation): a fairer baseline for augmented KD
  kd        the fixed default (CE 0.1 + soft KD 0.9, T=2), cached teacher logits, no augmentation
  kd_aug    the same losses, teacher online on the crop+flip batch ("consistent teaching")
  fm        function matching: soft KD only (T=1), teacher online on crop+flip+mixup batches (Beyer et al. 2022)
  fm_t2     function matching with T=2
  fm_std    function matching with logit standardisation (T=2)
  kd_std    CE 0.1 + standardised KD 0.9 (T=2), teacher online on crop+flip
  ce_shift  cross-entropy on shifted images (random translation by <= 1 px, no flip): digit-safe augmentation
  kd_shift  the fixed default losses, teacher online on the same shifted batch
  kd_oof    the fixed default losses on out-of-fold teacher logits (digits: 5 teachers, each trained on 4/5 of the
            training split, give the logits of the fifth; also kd_t4_oof, dist_oof)
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
from edgekd.data.loader import augment_batch
from edgekd.data.source import TensorSource
from edgekd.models import build_model, count_params, load_shipped_teacher
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
    "ce_shift": {"losses": CE, "augment": "shift", "teacher": None},
    "kd_shift": {"losses": DEFAULT, "augment": "shift", "teacher": "online"},
    "kd_t4_shift": {"losses": [{"name": "ce", "weight": 0.1}, {"name": "kd_soft", "weight": 0.9, "temperature": 4.0}],
                    "augment": "shift", "teacher": "online"},
    "kd_oof": {"losses": DEFAULT, "augment": False, "teacher": "oof"},
    "kd_t4_oof": {"losses": [{"name": "ce", "weight": 0.1}, {"name": "kd_soft", "weight": 0.9, "temperature": 4.0}],
                  "augment": False, "teacher": "oof"},
    "dist_oof": {"losses": [{"name": "ce", "weight": 1.0}, {"name": "dist", "weight": 1.0, "beta": 1.0,
                                                            "gamma": 1.0, "tau": 4.0}], "augment": False,
                 "teacher": "oof"},
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


def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel, no flip: augmentation that keeps a digit a digit."""
    return augment_batch(x, generator, pad=1, flip=False)


AUGMENTS = {"none": None, "shift": shift, "flip": augment_batch}


def digits_teacher(ds, augment: str, epochs: float, seed: int = 0) -> torch.nn.Module:
    """teacher_cnn (322k params) trained on the training split with `augment` (AUGMENTS)."""
    torch.manual_seed(seed)
    module = build_model("teacher_cnn", num_classes=ds.num_classes, in_channels=1, widths=(32, 64, 128), hidden=256)
    cfg = TrainConfig(epochs=epochs, lr=3e-3, weight_decay=5e-4, checkpoint_every=10 ** 9)
    aug = AUGMENTS[augment]
    x, y = (ds.x_train, ds.y_train) if aug is None else (TensorSource(ds.x_train, ds.y_train, aug), None)
    train(module, x, y, cfg, seed=seed, batch_size=64, progress=False)
    return module.eval()


def out_of_fold_logits(ds, augment: str, epochs: float, folds: int = 5) -> torch.Tensor:
    """Teacher logits on every training image from a teacher_cnn trained on the other folds (cross-fitting): a
    teacher that memorised an image gives its label back; one that never saw it gives its similarity structure."""
    from types import SimpleNamespace

    order = torch.randperm(len(ds.x_train), generator=torch.Generator().manual_seed(0))
    logits = torch.zeros(len(ds.x_train), ds.num_classes)
    for k in range(folds):
        held = order[k::folds]
        keep = torch.ones(len(ds.x_train), dtype=torch.bool)
        keep[held] = False
        sub = SimpleNamespace(x_train=ds.x_train[keep], y_train=ds.y_train[keep], num_classes=ds.num_classes)
        module = digits_teacher(sub, augment, epochs, seed=k)
        with torch.no_grad():
            logits[held] = module(ds.x_train[held]).float()
    return logits


def run_regime(regime: dict[str, Any], ds, student: dict, teacher: TorchTeacher, cached: TeacherOutputs | None,
               epochs: float, lr: float, seed: int, batch: int, mixup_alpha: float,
               oof: torch.Tensor | None = None) -> dict[str, Any]:
    model = build_student(student["model"], student["kwargs"], ds, seed).module
    custom = regime["augment"] if isinstance(regime["augment"], str) else None
    cfg = TrainConfig(epochs=epochs, lr=lr, checkpoint_every=10 ** 9, augment=regime["augment"] is True)
    objective = build_objective(regime["losses"])
    trained, signal = model, TeacherSignal()
    if regime["teacher"] == "cached":
        signal = cached.signal()
    elif regime["teacher"] == "oof":
        signal = TeacherSignal(cached=oof)
    elif regime["teacher"] == "online":
        signal = TeacherSignal(teacher=teacher)
    elif regime["teacher"] == "mixup":
        trained, signal = function_matching(model, teacher, alpha=mixup_alpha, seed=seed)
    t0 = time.perf_counter()
    x, y = (ds.x_train, ds.y_train) if custom is None else (TensorSource(ds.x_train, ds.y_train, AUGMENTS[custom]),
                                                             None)
    res = train(trained, x, y, cfg, objective=objective, teacher=signal, seed=seed,
                batch_size=batch, x_test=ds.x_val, y_test=ds.y_val, progress=False)
    seconds = time.perf_counter() - t0
    return {"val_accuracy": evaluate(model, ds.x_val, ds.y_val), "seconds": seconds,
            "val_curve": [h.get("test_accuracy") for h in res.history],
            "train_accuracy_last": res.history[-1].get("train_accuracy") if res.history else None}


@click.command()
@click.option("--dataset", type=click.Choice(["fashion_mnist", "digits"]), default="fashion_mnist",
              show_default=True)
@click.option("--teacher-augment", type=click.Choice(sorted(AUGMENTS)), default="none", show_default=True,
              help="digits: the teacher's training augmentation")
@click.option("--teacher-epochs", default=30.0, show_default=True)
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
def main(dataset, teacher_augment, teacher_epochs, regimes, subset_train, val_size, epochs, lr, batch, mixup_alpha,
         student, seeds, threads, out) -> None:
    torch.set_num_threads(threads)
    name, _, kw = student.partition(":")
    spec = {"model": name, "kwargs": {k: int(v) if v.isdigit() else float(v)
                                      for k, v in (p.split("=") for p in kw.split(",") if p)}}
    if dataset == "digits":  # the split bench_auto uses: 20% of the 1,437 training images for validation
        ds = load_dataset("digits", seed=0, val_fraction=0.2)
        t0 = time.perf_counter()
        module = digits_teacher(ds, teacher_augment, teacher_epochs)
        print(f"teacher ({teacher_augment}) trained in {time.perf_counter() - t0:.0f} s", flush=True)
    else:
        ds = load_dataset("fashion_mnist", subset_train=subset_train, seed=0, val_size=val_size)
        module, _ = load_shipped_teacher()
    teacher = TorchTeacher(module)
    cached = TeacherOutputs.compute(teacher, ds.x_train)
    s_params = count_params(build_student(spec["model"], spec["kwargs"], ds, 0).module)
    results: dict[str, Any] = {"dataset": ds.describe(), "split": ds.split, "student": spec, "student_params": s_params,
                               "teacher_params": count_params(module), "teacher_augment": teacher_augment,
                               "teacher_train_accuracy": evaluate(module, ds.x_train, ds.y_train),
                               "epochs": epochs, "lr": lr, "batch": batch,
                               "mixup_alpha": mixup_alpha, "threads": torch.get_num_threads(),
                               "host": platform.platform(),
                               "teacher_val_accuracy": evaluate(module, ds.x_val, ds.y_val),
                               "runs": {}}
    # a teacher that has memorised its training images gives near one-hot targets there: little beyond the labels
    results["teacher_train_confidence"] = float(torch.softmax(cached.logits, -1).max(-1).values.mean())
    print(f"teacher: val {results['teacher_val_accuracy'] * 100:.2f}%, "
          f"train {results['teacher_train_accuracy'] * 100:.2f}%, mean max-probability on training images "
          f"{results['teacher_train_confidence']:.3f}", flush=True)
    oof = None
    if any(REGIMES[r]["teacher"] == "oof" for r in regimes.split(",")):
        if dataset != "digits":
            raise click.UsageError("out-of-fold teacher logits (the *_oof regimes) are for --dataset digits")
        t0 = time.perf_counter()
        oof = out_of_fold_logits(ds, teacher_augment, teacher_epochs)
        results["oof"] = {"folds": 5, "seconds": time.perf_counter() - t0,
                          "train_accuracy": float((oof.argmax(-1) == ds.y_train).float().mean()),
                          "train_confidence": float(torch.softmax(oof, -1).max(-1).values.mean())}
        print(f"out-of-fold teacher logits: {results['oof']}", flush=True)
    for seed in [int(s) for s in seeds.split(",")]:
        for r in regimes.split(","):
            rec = run_regime(REGIMES[r], ds, spec, teacher, cached, epochs, lr, seed, batch, mixup_alpha, oof)
            results["runs"].setdefault(r, {})[str(seed)] = rec
            print(f"seed {seed} {r:<8} val {rec['val_accuracy'] * 100:.2f}  ({rec['seconds']:.0f} s)  curve "
                  + " ".join(f"{a * 100:.1f}" for a in rec["val_curve"]), flush=True)
            write_json(Path(out), results)


if __name__ == "__main__":
    main()
