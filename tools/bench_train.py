"""Issue-13 benchmark (CPU): edgekd's training step against a hand-written PyTorch loop doing the same work.

    flock /work/bench.lock .venv/bin/python tools/bench_train.py --out runs/bench/train_cpu.json

Same model (the demo student, tiny_cnn width 16 depth 3), same batches (one permutation per epoch), same AdamW +
one-cycle schedule and the same objective, on an in-memory tensor of 28x28 images (synthetic: throughput, not
accuracy). Three workloads: cross-entropy only; KD (0.1 CE + 0.9 soft-target KL at T=2) from cached teacher
logits; KD with the demo teacher (teacher_cnn) run online. Each pair is timed back to back `--repeats` times; the
headline is the median of the pair ratios (the machine is shared with other work; best-run and median ratios are
beside it) (goal: edgekd >= 0.95x the hand loop). Then edgekd with bf16 autocast against fp32 on this CPU,
with the CPU's bf16 features read from /proc/cpuinfo (AVX-512 BF16, AMX), not assumed.

The edgekd side is the whole `train()` call (its warm-up pass, schedule, NaN checks, curve and epoch records,
progress off); the hand loop has none of that. Threads: torch's default, or OMP_NUM_THREADS from the environment
(on a 2-core machine shared with other work, 2 OpenMP threads slow down 5-20x whenever another process takes a
core, so the recorded run used OMP_NUM_THREADS=1 for both sides).
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F

from edgekd.distill import TorchTeacher, build_objective
from edgekd.fileio import write_json
from edgekd.models import build_model
from edgekd.train import TeacherSignal, TrainConfig, train
from edgekd.train.device import cpu_bf16_support

KD_TERMS = [{"name": "ce", "weight": 0.1}, {"name": "kd_soft", "weight": 0.9, "temperature": 2.0}]


def student(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_model("tiny_cnn", width=16, depth=3)


def teacher_module() -> torch.nn.Module:
    torch.manual_seed(1)
    return build_model("teacher_cnn").eval()  # random weights: the cost, not the knowledge, is measured


def hand_loop(model, x, y, epochs: int, batch_size: int, lr: float, teacher=None, cached=None,
              precision: torch.dtype | None = None) -> float:
    """The reference: a plain PyTorch loop (AdamW, OneCycleLR, permuted batches); returns seconds."""
    steps_per_epoch = -(-len(x) // batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=epochs * steps_per_epoch,
                                                pct_start=0.25)
    t0 = time.perf_counter()
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        for b in range(steps_per_epoch):
            idx = order[b * batch_size:(b + 1) * batch_size]
            xb, yb = x[idx], y[idx]
            with torch.autocast("cpu", dtype=precision, enabled=precision is not None):
                logits = model(xb)
                if teacher is None and cached is None:
                    loss = F.cross_entropy(logits, yb)
                else:
                    if cached is not None:
                        t = cached[idx]
                    else:
                        with torch.no_grad():
                            t = teacher(xb)
                    kd = F.kl_div(F.log_softmax(logits / 2.0, -1), F.log_softmax(t / 2.0, -1), reduction="batchmean",
                                  log_target=True) * 4.0
                    loss = 0.1 * F.cross_entropy(logits, yb) + 0.9 * kd
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return time.perf_counter() - t0


def edgekd_run(model, x, y, epochs: int, batch_size: int, lr: float, signal: TeacherSignal | None,
               precision: str = "fp32") -> float:
    objective = build_objective(KD_TERMS) if signal is not None else None
    cfg = TrainConfig(epochs=epochs, lr=lr, optimizer="adamw", schedule="onecycle", precision=precision,
                      device="cpu", checkpoint_every=10 ** 9)
    t0 = time.perf_counter()
    train(model, x, y, cfg, objective=objective, teacher=signal, batch_size=batch_size, progress=False,
          log_dir=None)
    return time.perf_counter() - t0


@click.command()
@click.option("--n", default=8192, show_default=True, help="Training images (28x28, synthetic).")
@click.option("--batch-size", default=128, show_default=True)
@click.option("--epochs", default=1, show_default=True)
@click.option("--repeats", default=11, show_default=True)
@click.option("--out", default="runs/bench/train_cpu.json", show_default=True, type=click.Path(path_type=Path))
def main(n: int, batch_size: int, epochs: int, repeats: int, out: Path) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 1, 28, 28, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    teacher = teacher_module()
    with torch.no_grad():
        cached = torch.cat([teacher(x[i:i + 1024]) for i in range(0, n, 1024)])
    lr = 1e-2
    images = n * epochs
    workloads = {
        "ce": (None, lambda: None, {}),
        "kd_cached": (None, lambda: TeacherSignal(cached=cached), {"cached": cached}),
        "kd_online": (None, lambda: TeacherSignal(teacher=TorchTeacher(teacher)), {"teacher": teacher}),
    }
    # untimed warm-up of both sides (allocator, thread pool, kernels' first-call costs)
    edgekd_run(student(), x[:2048], y[:2048], 1, batch_size, lr, TeacherSignal(cached=cached[:2048]))
    hand_loop(student(), x[:2048], y[:2048], 1, batch_size, lr, cached=cached[:2048])
    results: dict[str, dict] = {}
    for name, (_, signal, ref_kwargs) in workloads.items():
        ours, ref = [], []
        for _ in range(repeats):  # alternating, so a burst of load from elsewhere hits both sides
            ours.append(edgekd_run(student(), x, y, epochs, batch_size, lr, signal()))
            ref.append(hand_loop(student(), x, y, epochs, batch_size, lr, **ref_kwargs))
        results[name] = _compare(ours, ref, images, "edgekd", "hand_loop")
        click.echo(f"{name}: {results[name]}")
    times: dict[str, list[float]] = {"fp32": [], "bf16": []}
    for _ in range(repeats):
        for prec in ("fp32", "bf16"):
            times[prec].append(edgekd_run(student(), x, y, epochs, batch_size, lr, TeacherSignal(cached=cached), prec))
    precision = _compare(times["bf16"], times["fp32"], images, "bf16", "fp32")
    click.echo(f"kd_cached bf16 vs fp32 on this CPU: {precision}")
    report = {
        "benchmark": "edgekd training step vs a hand-written PyTorch loop (CPU, in-memory source)",
        "command": ("OMP_NUM_THREADS=" + os.environ["OMP_NUM_THREADS"] + " " if "OMP_NUM_THREADS" in os.environ
                    else "") + f"python tools/bench_train.py --n {n} --batch-size {batch_size} --epochs {epochs} "
                   f"--repeats {repeats} --out {out}",
        "setup": {"student": "tiny_cnn width 16 depth 3", "teacher": "teacher_cnn (random weights)",
                  "images": n, "image": "1x28x28", "batch_size": batch_size, "epochs": epochs,
                  "optimizer": "adamw + onecycle", "kd": KD_TERMS, "repeats": repeats,
                  "statistic": "median of back-to-back pair ratios; best and median beside it"},
        "results": results,
        "precision_kd_cached": precision,
        "goal": "edgekd >= 0.95x hand loop",
        "machine": {"cpu": _cpu_name(), "bf16": cpu_bf16_support(), "torch": torch.__version__,
                    "threads": torch.get_num_threads(), "python": platform.python_version(),
                    "load_average_start": _LOAD, "load_average_end": list(os.getloadavg())},
    }
    write_json(out, report)
    click.echo(json.dumps(results, indent=1))


def _compare(ours: list[float], ref: list[float], images: int, a: str, b: str) -> dict:
    """Speeds and ratios (a's speed / b's) of alternating runs on a shared machine.

    Runs i of both sides were back to back, under about the same load from other processes: the headline is the
    median of the per-pair ratios; the ratio of the best (least disturbed) runs and of the medians are beside it.
    """
    pairs = [r / o for o, r in zip(ours, ref)]
    return {f"{a}_images_per_s_best": round(images / min(ours), 1),
            f"{b}_images_per_s_best": round(images / min(ref), 1),
            "ratio_pair_median": round(statistics.median(pairs), 3),
            "ratio_best": round(min(ref) / min(ours), 3),
            "ratio_median": round(statistics.median(ref) / statistics.median(ours), 3),
            f"{a}_s": [round(v, 3) for v in ours], f"{b}_s": [round(v, 3) for v in ref]}


def _cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


_LOAD = list(os.getloadavg())

if __name__ == "__main__":
    main()
