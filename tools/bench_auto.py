"""Issue-15 benchmark: does automatic distillation pay, and does the student search find a student in budget?

    .venv/bin/python tools/bench_auto.py --out runs/bench/auto.json            # full settings
    .venv/bin/python tools/bench_auto.py --quick --out runs/bench/auto_quick.json

    flock /work/bench.lock .venv/bin/python tools/bench_auto.py --medium --datasets cifar10 --threads 1 \
        --out runs/bench/auto_medium_cifar10.json                             # needs `make data-cifar10` once

Per data set (Fashion-MNIST subset with the shipped teacher; sklearn digits and CIFAR-10 with a teacher trained
here, the CIFAR-10 one cached under runs/bench/teachers/), every choice is made on the validation split carved
from the training data; the test set is read only at the end.
The digits teacher trains on random 1-px shifts without flips by default (`--digits-teacher shift`): on the
validation split a flip-augmented teacher is 2.4 pt weaker and makes KD lose 1.4 pt to cross-entropy, while the
shift teacher's students match or beat the un-augmented teacher's (tools/bench_kd_study.py, docs/auto.md).

- KD: the same student (<= 1/20 of the teacher's parameters) trained per seed three ways: without the teacher
  (CE), with the library's fixed default (CE 0.1 + soft-target KD 0.9, T=2: the best fixed setting of the KD
  benchmark), and with the losses `tune` chose (Optuna, once, on seed 0's proxies). Paired bootstrap over test
  images and seeds (edgekd.auto.stats) for auto vs baseline and auto vs default.
- Search: budget = the demo student's (tiny_cnn width 16, depth 3) measured cpu-local latency; the chosen
  student and the demo student trained fully per seed with the default KD losses; predicted vs measured latency
  of the chosen student; Spearman of proxy vs full training on the candidates the search trained fully.
- Cost: tune's and search's wall time over one plain distillation run (the default KD run, mean over seeds).
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import click
import numpy as np
import torch

from edgekd.auto.proxy import TeacherOutputs, build_student, predictions
from edgekd.auto.search import search_students
from edgekd.auto.stats import mean_std, paired_bootstrap
from edgekd.auto.tune import describe_losses, tune_losses
from edgekd.config import DISTILL_KD_TERMS, parse_recipe
from edgekd.data import load_dataset
from edgekd.distill import TorchTeacher, build_objective
from edgekd.distill.teachers import Teacher
from edgekd.fileio import write_json
from edgekd.models import build_model, count_params, load_shipped_teacher
from edgekd.train import TeacherSignal, TrainConfig, evaluate, train

DEMO_STUDENT = {"model": "tiny_cnn", "kwargs": {"width": 16, "depth": 3}}
CE = [{"name": "ce", "weight": 1.0}]

SETTINGS = {
    "full": {"fashion_mnist": {"subset_train": 20000, "subset_test": None, "epochs": 10,
                               "tune": {"trials": 20, "budget_s": 900, "proxy_epochs": 2, "proxy_train": 5000},
                               "search": {"max_candidates": 16, "proxy_epochs": 2, "proxy_train": 5000,
                                          "full_train": 4}},
             "digits": {"epochs": 30,
                        "tune": {"trials": 20, "budget_s": 300, "proxy_epochs": 10, "proxy_train": None},
                        "search": {"max_candidates": 16, "proxy_epochs": 10, "proxy_train": None, "full_train": 4}}},
    # What fits a 2-core machine while the comparison means something: 12,000 training images, 30 epochs, the
    # whole 10,000-image test set (students reach ~89%, not the quick setting's under-trained ~78%).
    "medium": {"fashion_mnist": {"subset_train": 15000, "val_size": 3000, "subset_test": None, "epochs": 30,
                                 "tune": {"trials": 8, "budget_s": 150, "proxy_epochs": 6, "proxy_train": 6000,
                                          "confirm": 2},
                                 "search": {"max_candidates": 8, "proxy_epochs": 5, "proxy_train": 4000,
                                            "full_train": 0}},
               "digits": {"epochs": 30,
                          "tune": {"trials": 10, "budget_s": 120, "proxy_epochs": 10, "proxy_train": None,
                                   "confirm": 2},
                          "search": {"max_candidates": 12, "proxy_epochs": 10, "proxy_train": None,
                                     "full_train": 4}}},
    "quick": {"fashion_mnist": {"subset_train": 6000, "subset_test": 2000, "epochs": 3,
                                "tune": {"trials": 8, "budget_s": 120, "proxy_epochs": 2, "proxy_train": None},
                                "search": {"max_candidates": 12, "proxy_epochs": 2, "proxy_train": 2000,
                                           "full_train": 4}},
              "digits": {"epochs": 12,
                         "tune": {"trials": 8, "budget_s": 60, "proxy_epochs": 4, "proxy_train": None},
                         "search": {"max_candidates": 12, "proxy_epochs": 4, "proxy_train": None, "full_train": 6}}},
}
# CIFAR-10 (edgekd.data.cifar10; `make data-cifar10` installs it): the teacher trains inside the benchmark on the
# training split with crop (pad 4) + flip and is cached under runs/bench/teachers/. Medium: 24,000 training images
# -> 20,000 train / 4,000 validation, the whole 10,000-image test set; one student run (25 epochs) 52 s on one
# thread, the teacher (20 epochs) 622 s, the whole data set 33 min (measured Dec 4, load 1-3; docs/auto.md).
SETTINGS["full"]["cifar10"] = {"subset_train": 45000, "val_size": 5000, "subset_test": None, "epochs": 40,
                               "teacher_epochs": 60,
                               "tune": {"trials": 20, "budget_s": 1800, "proxy_epochs": 8, "proxy_train": 10000,
                                        "confirm": 2},
                               "search": {"max_candidates": 16, "proxy_epochs": 5, "proxy_train": 8000,
                                          "full_train": 4}}
SETTINGS["medium"]["cifar10"] = {"subset_train": 24000, "val_size": 4000, "subset_test": None, "epochs": 25,
                                 "teacher_epochs": 20,
                                 "tune": {"trials": 8, "budget_s": 200, "proxy_epochs": 5, "proxy_train": 8000,
                                          "confirm": 2},
                                 "search": {"max_candidates": 8, "proxy_epochs": 5, "proxy_train": 4000,
                                            "full_train": 0}}
SETTINGS["quick"]["cifar10"] = {"subset_train": 5000, "val_size": 1000, "subset_test": 2000, "epochs": 3,
                                "teacher_epochs": 3,
                                "tune": {"trials": 6, "budget_s": 60, "proxy_epochs": 1, "proxy_train": 2000},
                                "search": {"max_candidates": 8, "proxy_epochs": 1, "proxy_train": 1000,
                                           "full_train": 2}}
# The student each data set's KD comparison trains (<= 1/20 of its teacher's parameters) and its batch size.
STUDENTS = {"fashion_mnist": {"model": "tiny_cnn", "kwargs": {"width": 12, "depth": 3}},
            "cifar10": {"model": "tiny_cnn", "kwargs": {"width": 12, "depth": 3}},
            "digits": {"model": "tiny_cnn", "kwargs": {"width": 8, "depth": 2}}}
BATCH = {"fashion_mnist": 128, "cifar10": 128, "digits": 64}
CIFAR_TEACHER = {"model": "teacher_cnn", "kwargs": {"widths": [32, 64, 128], "hidden": 256}}
TEACHER_CACHE = Path("runs/bench/teachers")
SPACE = [{"model": "tiny_cnn", "kwargs": {"width": [8, 12, 16, 20], "depth": [2, 3]}},
         {"model": "mobilenet_student", "kwargs": {"width_mult": [0.5, 0.75], "depth": [1], "expand": [2, 4]}}]


def shift(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random translation by up to one pixel and no flip: augmentation that keeps a digit a digit (a mirrored
    2, 5 or 7 is no digit, so the loop's crop + flip augmentation is wrong for digits)."""
    from edgekd.data.loader import augment_batch

    return augment_batch(x, generator, pad=1, flip=False)


def train_digits_teacher(x: torch.Tensor, y: torch.Tensor, num_classes: int, seed: int, augment: bool = False
                         ) -> torch.nn.Module:
    """teacher_cnn (322k params), 30 epochs on the training split; `augment`: with `shift`."""
    from edgekd.data.source import TensorSource

    torch.manual_seed(seed)
    module = build_model("teacher_cnn", num_classes=num_classes, in_channels=1, widths=(32, 64, 128), hidden=256)
    source, labels = (TensorSource(x, y, shift), None) if augment else (x, y)
    train(module, source, labels, TrainConfig(epochs=30, lr=3e-3, weight_decay=5e-4, checkpoint_every=10 ** 9),
          seed=seed, batch_size=64, progress=False)
    return module.eval()


def cifar_teacher(ds, epochs: int, seed: int, log) -> tuple[torch.nn.Module, str]:
    """CIFAR_TEACHER trained on the training split (crop after 4-px padding + horizontal flip), or read back from
    TEACHER_CACHE when the same data, settings and seed trained it before."""
    import hashlib

    from edgekd.data.loader import Augmentation
    from edgekd.data.source import TensorSource
    from edgekd.fileio import torch_save

    cfg = TrainConfig(epochs=epochs, lr=3e-3, weight_decay=5e-4, checkpoint_every=10 ** 9)
    key = hashlib.sha256(repr((ds.digest(), CIFAR_TEACHER, cfg.epochs, cfg.lr, cfg.weight_decay, seed,
                               "standard/4", 128)).encode()).hexdigest()[:16]
    module = build_model(CIFAR_TEACHER["model"], num_classes=ds.num_classes, in_channels=ds.input_shape[0],
                         **CIFAR_TEACHER["kwargs"])
    path = TEACHER_CACHE / f"cifar10_{key}.pt"
    how = (f"{CIFAR_TEACHER['model']} {CIFAR_TEACHER['kwargs']} trained here for {epochs} epochs on the training "
           f"split, crop (pad 4) + flip, AdamW 3e-3 one-cycle")
    if path.exists():
        module.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
        log(f"cifar10: teacher read from {path}")
        return module.eval(), f"{how} (cached {path})"
    torch.manual_seed(seed)
    t0 = time.perf_counter()
    train(module, TensorSource(ds.x_train, ds.y_train, Augmentation("standard", 4)), None, cfg, seed=seed,
          batch_size=128, progress=False)
    log(f"cifar10: teacher trained in {time.perf_counter() - t0:.0f} s (train split only) -> {path}")
    torch_save(module.state_dict(), path)
    return module.eval(), how


class CrossFitTeacher(Teacher):
    """A teacher for a data set too small to hold one out: `folds` teacher_cnn models, each trained on the other
    folds of the training split. On a training image the logits come from the model that never saw it (a model
    that memorised an image gives its one-hot label back: the plain digits teacher is 100% right on its training
    images with a mean top probability of 0.9999); on any other image, the mean of the folds' logits."""

    kind = "crossfit"

    def __init__(self, x_train: torch.Tensor, y_train: torch.Tensor, num_classes: int, folds: int = 5,
                 seed: int = 0):
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(seed))
        self.fold_of = torch.empty(len(x_train), dtype=torch.long)
        self.models = []
        for k in range(folds):
            self.fold_of[order[k::folds]] = k
        for k in range(folds):
            keep = self.fold_of != k
            self.models.append(train_digits_teacher(x_train[keep], y_train[keep], num_classes, seed + k))
        self.row = {x_train[i].numpy().tobytes(): i for i in range(len(x_train))}

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            every = torch.stack([m(x).float() for m in self.models])     # folds x batch x classes
        rows = [self.row.get(xi.numpy().tobytes()) for xi in x]
        fold = torch.tensor([-1 if r is None else int(self.fold_of[r]) for r in rows])
        out = every.mean(0)
        seen = fold >= 0
        out[seen] = every[fold[seen], torch.nonzero(seen).squeeze(1)]
        return out

    def fingerprint(self) -> str:
        from edgekd.distill.teachers import state_dict_sha256

        return "crossfit:" + ":".join(state_dict_sha256(m) for m in self.models)


def teacher_for(name: str, ds, seed: int, log, digits_teacher: str = "shift", epochs: int = 0
                ) -> tuple[torch.nn.Module, Any, str]:
    """(module scored on the test set and counted for the parameter ratio, Teacher the students learn from,
    where it came from)."""
    if name == "fashion_mnist":
        module, _ = load_shipped_teacher()
        return module, TorchTeacher(module), "shipped teacher_cnn (edgekd/weights)"
    if name == "cifar10":
        module, how = cifar_teacher(ds, epochs, seed, log)
        return module, TorchTeacher(module), how
    t0 = time.perf_counter()
    module = train_digits_teacher(ds.x_train, ds.y_train, ds.num_classes, seed, augment=digits_teacher == "shift")
    log(f"{name}: teacher trained in {time.perf_counter() - t0:.0f} s (train split only)")
    if digits_teacher == "shift":
        return module, TorchTeacher(module), ("teacher_cnn trained here for 30 epochs on the training split, "
                                              "random 1-px shifts, no flips")
    if digits_teacher == "crossfit":
        t0 = time.perf_counter()
        teacher = CrossFitTeacher(ds.x_train, ds.y_train, ds.num_classes, seed=seed)
        log(f"{name}: 5 cross-fitted teachers trained in {time.perf_counter() - t0:.0f} s")
        return module, teacher, ("teacher_cnn trained here for 30 epochs on the training split; students learn from "
                                 "5 cross-fitted teacher_cnn (each on 4/5 of the training split, logits on the "
                                 "fifth)")
    return module, TorchTeacher(module), "teacher_cnn trained here for 30 epochs on the training split"


def fit(ds, student: dict, terms, cfg: TrainConfig, seed: int, outputs: TeacherOutputs | None, batch: int):
    """Train one student on the whole training split; (model, seconds)."""
    model = build_student(student["model"], student["kwargs"], ds, seed).module
    objective = build_objective(terms)
    signal = outputs.signal() if objective.needs_teacher else TeacherSignal()
    t0 = time.perf_counter()
    train(model, ds.x_train, ds.y_train, cfg, objective=objective, teacher=signal, seed=seed, batch_size=batch,
          progress=False)
    return model, time.perf_counter() - t0


def bench_dataset(name: str, st: dict, seeds: tuple[int, ...], log, digits_teacher: str = "shift"
                  ) -> dict[str, Any]:
    d = st[name]
    ds = load_dataset(name, subset_train=d.get("subset_train"), subset_test=d.get("subset_test"), seed=0,
                      val_fraction=0.2 if name == "digits" else 0.1, val_size=d.get("val_size"))
    log(f"{name}: {ds.describe()}")
    teacher_module, teacher, teacher_src = teacher_for(name, ds, 0, log, digits_teacher, d.get("teacher_epochs", 0))
    t_params = count_params(teacher_module)
    student = STUDENTS[name]
    batch = BATCH[name]
    cfg = TrainConfig(epochs=d["epochs"], lr=1e-2, checkpoint_every=10 ** 9)
    recipe = parse_recipe({"name": f"bench-{name}", "data": {"dataset": name, "batch_size": batch},
                           "student": student, "distill": {"train": {"epochs": d["epochs"], "lr": 1e-2}},
                           "tune": d["tune"], "search": {"enabled": True, "space": SPACE, **d["search"]}})
    outputs = TeacherOutputs.compute(teacher, ds.x_train)

    t0 = time.perf_counter()
    tuned = tune_losses(ds, recipe, teacher, log=log)
    tune_s = time.perf_counter() - t0
    methods = {"baseline": CE, "default": [dict(t) for t in DISTILL_KD_TERMS], "auto": tuned["chosen"]["losses"]}
    correct: dict[str, list[np.ndarray]] = {m: [] for m in methods}
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    val: dict[str, list[float]] = {m: [] for m in methods}
    for seed in seeds:
        for m, terms in methods.items():
            model, s = fit(ds, student, terms, cfg, seed, outputs, batch)
            seconds[m].append(s)
            val[m].append(evaluate(model, ds.x_val, ds.y_val))
            correct[m].append((predictions(model, ds.x_test) == ds.y_test).numpy())
            log(f"{name}: seed {seed} {m}: val {val[m][-1]:.4f} ({s:.0f} s)")
    plain = float(np.mean(seconds["default"]))

    # Search: budget = the demo student's cpu-local latency on this input shape.
    # budget "student": the demo student's latency as the search measures it (same session and estimator as the
    # candidates; a figure measured beforehand differs by the machine's noise and can exclude the demo itself)
    recipe.search = replace(recipe.search, budget_ms={"cpu-local": "student"}, targets=["cpu-local"])
    # The search starts from a recipe whose student is the demo student (it is then a candidate too).
    recipe.student = replace(recipe.student, model=DEMO_STUDENT["model"], kwargs=dict(DEMO_STUDENT["kwargs"]))
    t0 = time.perf_counter()
    found = search_students(ds, recipe, teacher, log=log)
    search_s = time.perf_counter() - t0
    chosen = found["chosen"]
    budget = found["budgets_ms"]["cpu-local"]
    demo_lat = next(c["latency"]["cpu-local"] for c in found["candidates"]
                    if c["model"] == DEMO_STUDENT["model"] and c["kwargs"] == DEMO_STUDENT["kwargs"])
    search_correct: dict[str, list[np.ndarray]] = {"chosen": [], "demo": []}
    for seed in seeds:
        for key, spec in (("chosen", chosen), ("demo", DEMO_STUDENT)):
            model, _ = fit(ds, {"model": spec["model"], "kwargs": spec["kwargs"]}, methods["default"], cfg, seed,
                           outputs, batch)
            search_correct[key].append((predictions(model, ds.x_test) == ds.y_test).numpy())

    # The end: the test set, read once.
    teacher_val = evaluate(teacher_module, ds.x_val, ds.y_val)
    teacher_acc = evaluate(teacher_module, ds.x_test, ds.y_test)
    learned_from_acc = float((teacher.logits(ds.x_test).argmax(-1) == ds.y_test).float().mean())
    acc = {m: mean_std([c.mean() * 100 for c in v]) for m, v in correct.items()}
    s_params = count_params(build_student(student["model"], student["kwargs"], ds, 0).module)
    lat = chosen["latency"]["cpu-local"]
    out = {
        "dataset": ds.describe(), "split": ds.split, "teacher": {"source": teacher_src, "params": t_params,
                                                                 "test_accuracy": teacher_acc,
                                                                 "val_accuracy": teacher_val,
                                                                 "kind": teacher.kind,
                                                                 "learned_from_test_accuracy": learned_from_acc},
        "student": {**student, "params": s_params, "fraction_of_teacher": s_params / t_params},
        "epochs": d["epochs"], "seeds": list(seeds),
        "kd": {m: {"losses": methods[m], "describe": describe_losses(methods[m]), "test_mean": acc[m][0],
                   "test_std": acc[m][1], "per_seed": [float(c.mean() * 100) for c in correct[m]],
                   "val_mean": float(np.mean(val[m]) * 100), "seconds_mean": float(np.mean(seconds[m]))}
               for m in methods},
        "auto_vs_baseline": paired_bootstrap(correct["auto"], correct["baseline"]),
        "auto_vs_default": paired_bootstrap(correct["auto"], correct["default"]),
        "default_vs_baseline": paired_bootstrap(correct["default"], correct["baseline"]),
        "tune": {k: tuned[k] for k in ("chosen", "spent_s", "budget_s", "proxy", "pruner")} |
                {"trials": [{k: r[k] for k in ("name", "val_accuracy", "state", "seconds")} |
                            {"losses": describe_losses(r.get("losses"))} for r in tuned["trials"]],
                 "cost_vs_one_distill_run": tune_s / plain},
        "search": {"budget_ms": budget, "demo_latency": demo_lat, "chosen": chosen,
                   "front": found["fronts"]["cpu-local"],
                   "candidates": [{k: c.get(k) for k in ("name", "params", "val_accuracy", "within_budget",
                                                         "latency")} for c in found["candidates"]],
                   "rank_check": found.get("rank_check"),
                   "chosen_test_mean": float(np.mean([c.mean() * 100 for c in search_correct["chosen"]])),
                   "demo_test_mean": float(np.mean([c.mean() * 100 for c in search_correct["demo"]])),
                   "chosen_vs_demo": paired_bootstrap(search_correct["chosen"], search_correct["demo"]),
                   "predicted_ms": lat["predicted_ms"], "measured_ms": lat["measured_ms"],
                   "prediction_error": lat.get("prediction_error"),
                   "stored_prediction_error": lat.get("stored_prediction_error"),
                   "prediction_errors": found.get("prediction_errors"),
                   "latency_refit": found.get("latency_refit"),
                   "cost_vs_one_distill_run": search_s / plain},
        "plain_distill_run_s": plain,
        "baseline_cost_vs_one_distill_run": float(np.mean(seconds["baseline"])) / plain,
    }
    out["targets_met"] = {
        "student_at_most_1_20_of_teacher": s_params * 20 <= t_params,
        "auto_ge_default": acc["auto"][0] >= acc["default"][0],
        "auto_ge_baseline_plus_0_5": acc["auto"][0] >= acc["baseline"][0] + 0.5,
        "search_chosen_ge_demo": out["search"]["chosen_test_mean"] >= out["search"]["demo_test_mean"],
        "search_prediction_within_10pct": lat.get("prediction_error") is not None
                                          and abs(lat["prediction_error"]) <= 0.10,
    }
    pe = found.get("prediction_errors") or {}
    out["search"]["candidates_within_10pct"] = f"{pe.get('within_10pct')}/{pe.get('n')}"
    return out


@click.command()
@click.option("--quick", is_flag=True, help="Small subsets, few epochs and trials (figures marked quick).")
@click.option("--medium", is_flag=True, help="12k Fashion-MNIST images, 30 epochs: what 2 cores afford.")
@click.option("--datasets", multiple=True, type=click.Choice(["fashion_mnist", "digits", "cifar10"]),
              default=("fashion_mnist", "digits"), show_default=True,
              help="cifar10 needs `make data-cifar10` once (edgekd.data.cifar10)")
@click.option("--seeds", multiple=True, type=int, default=(0, 1, 2), show_default=True)
@click.option("--threads", default=1, show_default=True)
@click.option("--digits-teacher", type=click.Choice(["plain", "shift", "crossfit"]), default="shift",
              show_default=True, help="shift: the digits teacher trains on 1-px shifts (no flips); crossfit: digits "
                                      "students learn from 5 cross-fitted teachers (CrossFitTeacher)")
@click.option("--out", default="runs/bench/auto.json", show_default=True)
def main(quick, medium, datasets, seeds, threads, digits_teacher, out) -> None:
    torch.set_num_threads(threads)
    mode = "quick" if quick else "medium" if medium else "full"
    st = SETTINGS[mode]
    t0 = time.perf_counter()
    results: dict[str, Any] = {"quick": quick, "mode": mode, "settings": st, "space": SPACE, "threads": threads,
                               "host": platform.platform(), "digits_teacher": digits_teacher,
                               "torch": torch.__version__, "datasets": {}}

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f} s] {msg}", flush=True)

    for name in datasets:
        results["datasets"][name] = bench_dataset(name, st, tuple(seeds), log, digits_teacher)
        results["wall_s"] = time.perf_counter() - t0
        write_json(Path(out), results)   # after each data set: a killed run keeps what it finished
    for name, r in results["datasets"].items():
        kd = r["kd"]
        print(f"\n{name} ({mode}): teacher {r['teacher']['test_accuracy'] * 100:.2f}%, "
              f"student {r['student']['params']:,} params (1/{1 / r['student']['fraction_of_teacher']:.0f})")
        for m in ("baseline", "default", "auto"):
            print(f"  {m:<9} {kd[m]['test_mean']:.2f} ± {kd[m]['test_std']:.2f}  {kd[m]['describe']}")
        for key in ("auto_vs_baseline", "auto_vs_default"):
            g = r[key]
            print(f"  {key}: {g['gain_pt']:+.2f} ± {g['pm_pt']:.2f} pt")
        s = r["search"]
        print(f"  search: chosen {s['chosen']['name']} {s['chosen_test_mean']:.2f}% vs demo {s['demo_test_mean']:.2f}% "
              f"(budget {s['budget_ms']:.3g} ms; predicted {s['predicted_ms']:.3g} vs measured {s['measured_ms']:.3g})")
        print(f"  cost: tune {r['tune']['cost_vs_one_distill_run']:.1f}x, search "
              f"{s['cost_vs_one_distill_run']:.1f}x one distillation run; targets {json.dumps(r['targets_met'])}")
    print(f"wall {time.perf_counter() - t0:.0f} s -> {out}")


if __name__ == "__main__":
    main()
