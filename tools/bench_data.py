"""Issue-13 data benchmark: streamed image pipeline vs torchvision's ImageFolder + DataLoader, memory, in-memory path.

    flock /work/bench.lock .venv/bin/python tools/bench_data.py --out runs/bench/data.json

Builds once (cached under runs/bench/data/) an image folder of 60,000 JPEGs at 96-128 px from the Debian
Fashion-MNIST package (each image resized to a random side, tinted and brightness-jittered to RGB: a throughput
and memory test, not an accuracy claim). Then, in one run:
  (a) images/s of edgekd's FileSource (train transform: RandomResizedCrop + flip + normalize, `--workers` worker
      processes) vs a plain torchvision ImageFolder + DataLoader with the same transforms, batch size and workers;
      and edgekd with each decoder (Pillow, simplejpeg) — rounds interleaved, medians reported;
  (b) peak RSS (main process + workers, sampled) of one epoch over 10k and 50k files, each in a fresh process;
  (c) a small array set (Fashion-MNIST test, 10k 28x28): in-memory TensorSource vs the same images streamed from
      PNG files;
  (d) distillation step cost with the teacher online vs cached logits (memory-mapped fp16) on streamed batches.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import click
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_jpeg_set(out: Path, n: int, seed: int = 0) -> Path:
    """out/<class>/<i>.jpg from Fashion-MNIST train (+test when n > 60k), built once (a marker file says done)."""
    from PIL import Image

    from edgekd.data.datasets import fashion_mnist

    marker = out / "complete.json"
    if marker.is_file() and json.loads(marker.read_text()).get("n") == n:
        return out
    raw = fashion_mnist()
    x = np.concatenate([raw.x_train, raw.x_test])[:n, 0]
    y = np.concatenate([raw.y_train, raw.y_test])[:n]
    rng = np.random.default_rng(seed)
    for c in range(10):
        (out / f"{c}").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for i in range(n):
        side = int(rng.integers(96, 129))
        g = np.asarray(Image.fromarray(x[i]).resize((side, side), Image.BICUBIC), np.float32)
        tint = rng.uniform(0.55, 1.0, 3)
        offset = rng.uniform(0, 40, 3)
        rgb = np.clip(g[..., None] * tint * rng.uniform(0.8, 1.2) + offset, 0, 255).astype(np.uint8)
        Image.fromarray(rgb).save(out / f"{y[i]}" / f"{i:06d}.jpg", quality=90)
    marker.write_text(json.dumps({"n": n, "seconds": time.perf_counter() - t0, "sides": [96, 128]}))
    return out


def reference_loader(folder: Path, resolution: int, batch: int, workers: int, mean, std, files: int | None):
    """torchvision.datasets.ImageFolder + DataLoader with the standard transforms (the baseline)."""
    from edgekd.models.vision import import_torchvision

    tv = import_torchvision()
    T = tv.transforms
    tf = T.Compose([T.RandomResizedCrop(resolution), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([m / 255 for m in mean], [s / 255 for s in std])])
    ds = tv.datasets.ImageFolder(str(folder), transform=tf)
    if files:
        ds = torch.utils.data.Subset(ds, np.random.default_rng(0).permutation(len(ds))[:files].tolist())
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                       persistent_workers=workers > 0, drop_last=True)


def edgekd_dataset(folder: Path, resolution: int, workers: int, decoder: str, files: int | None, mean, std):
    from edgekd.data.streaming import StreamOptions, load_streaming

    o = StreamOptions(resolution=resolution, workers=workers, decoder=decoder, augment="standard")
    return load_streaming("image_folder", str(folder), test_fraction=0.01, subset_train=files, mean=mean, std=std,
                          options=o)


def shard_dataset(folder: Path, resolution: int, workers: int, mean, std):
    """The same images packed once into WebDataset tars of 1,000 samples (beside the folder), streamed."""
    from edgekd.data.files import scan_folder, write_shards
    from edgekd.data.streaming import StreamOptions, load_streaming

    out = folder.parent / (folder.name + "-shards")
    marker = out / "complete.txt"
    if not marker.is_file():
        pattern = write_shards(scan_folder(folder), out, per_shard=1000)
        marker.write_text(pattern)
    o = StreamOptions(resolution=resolution, workers=workers, augment="standard")
    return load_streaming("shards", marker.read_text(), test_fraction=0.01, mean=mean, std=std, options=o)


def timed(batches, n_batches: int, warmup: int) -> float:
    """images/s over n_batches after `warmup` batches (the worker start-up is excluded)."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    t0, n = time.perf_counter(), 0
    for _ in range(n_batches):
        b = next(it)
        n += len(b[1] if isinstance(b, (list, tuple)) else b.y)
    return n / (time.perf_counter() - t0)


def throughput(folder, resolution, batch, workers, n_batches, rounds, mean, std) -> dict:
    """(a): edgekd (auto decoder, pil) vs the torchvision reference, rounds interleaved."""
    from edgekd.data.transforms import _simplejpeg

    decoders = ["pil"] + (["simplejpeg"] if _simplejpeg() is not None else [])
    runs: dict[str, list[float]] = {"reference": [], **{f"edgekd_{d}": [] for d in decoders}}
    ref = reference_loader(folder, resolution, batch, workers, mean, std, None)
    sources = {d: edgekd_dataset(folder, resolution, workers, d, None, mean, std).train_source(True)
               for d in decoders}
    sources["shards"] = shard_dataset(folder, resolution, workers, mean, std).train_source(True)
    runs["edgekd_shards"] = []
    names = list(runs)
    for r in range(rounds):  # the order rotates each round; ratios are paired within a round
        for name in names[r % len(names):] + names[:r % len(names)]:
            batches = ref if name == "reference" else sources[name[len("edgekd_"):]].epoch(r, 0, batch)
            runs[name].append(timed(batches, n_batches, 2))
    med = {k: statistics.median(v) for k, v in runs.items()}
    paired = {k: statistics.median(a / b for a, b in zip(runs[k], runs["reference"])) for k in runs if k != "reference"}
    best = max(paired, key=paired.get)
    return {"images_per_s": med, "rounds": runs, "edgekd_best": best, "ratio_vs_reference": paired,
            "ratio_note": "median over rounds of the within-round ratio", "batch_size": batch, "workers": workers,
            "resolution": resolution, "batches_timed": n_batches, "per_image_us": per_image(folder, resolution)}


def per_image(folder: Path, resolution: int, n: int = 400, rounds: int = 5) -> dict:
    """Decode + RandomResizedCrop + flip of one JPEG in this process, per decoder (microseconds, medians)."""
    from edgekd.data.files import scan_folder
    from edgekd.data.transforms import ImageTransform, _simplejpeg

    store = scan_folder(folder)
    picks = np.random.default_rng(1).permutation(len(store))[:n]
    blobs = [(store.read(int(i)), store.name(int(i))) for i in picks]
    times: dict[str, list[float]] = {d: [] for d in ["pil"] + (["simplejpeg"] if _simplejpeg() else [])}
    for r in range(rounds):
        for d in times:
            t = ImageTransform(resolution, 3, "standard", decoder=d)
            t0 = time.perf_counter()
            for k, (data, name) in enumerate(blobs):
                t.apply(data, name, 0, r, k)
            times[d].append((time.perf_counter() - t0) / n * 1e6)
    return {d: statistics.median(v) for d, v in times.items()}


RSS_CHILD = r"""
import sys, json, time, torch
sys.path.insert(0, {root!r})
from tools.bench_data import edgekd_dataset, reference_loader
from pathlib import Path
kind, files = {kind!r}, {files}
t0 = time.perf_counter()
if kind == "edgekd":
    src = edgekd_dataset(Path({folder!r}), {res}, {workers}, "auto", files, {mean!r}, {std!r}).train_source(True)
    n = sum(len(b.y) for b in src.epoch(0, 0, {batch}))
else:
    n = sum(len(y) for _, y in reference_loader(Path({folder!r}), {res}, {batch}, {workers}, {mean!r}, {std!r}, files))
print(json.dumps({{"images": n, "seconds": time.perf_counter() - t0}}))
"""


def peak_rss(kind: str, folder: Path, files: int, resolution: int, batch: int, workers: int, mean, std) -> dict:
    """(b): one epoch in a fresh process; peak of (main + workers) RSS sampled every 50 ms."""
    import psutil

    code = RSS_CHILD.format(root=str(ROOT), kind=kind, files=files, folder=str(folder), res=resolution,
                            workers=workers, batch=batch, mean=list(mean), std=list(std))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    peak = {"total": 0, "main": 0, "pss": 0}
    p = psutil.Process(proc.pid)

    def sample():
        while proc.poll() is None:
            try:
                procs = [p] + p.children(recursive=True)
                main = p.memory_info().rss
                total = sum(q.memory_info().rss for q in procs)
                pss = sum(q.memory_full_info().pss for q in procs)  # shared pages counted once
            except psutil.Error:
                continue
            peak["main"], peak["total"] = max(peak["main"], main), max(peak["total"], total)
            peak["pss"] = max(peak["pss"], pss)
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    th.join()
    if proc.returncode != 0:
        raise RuntimeError(f"RSS child failed: {err[-2000:]}")
    res = json.loads(out.strip().splitlines()[-1])
    return {"kind": kind, "files": files, "peak_rss_mib": peak["total"] / 2 ** 20,
            "peak_pss_mib": peak["pss"] / 2 ** 20, "peak_main_rss_mib": peak["main"] / 2 ** 20, **res}


def small_arrays(tmp: Path, batch: int, workers: int, rounds: int) -> dict:
    """(c): 10k 28x28 Fashion-MNIST test images in memory vs streamed from PNG files (flip augmentation)."""
    from PIL import Image

    from edgekd.data import load_dataset
    from edgekd.data.loader import augment_batch
    from edgekd.data.source import TensorSource
    from edgekd.data.streaming import StreamOptions, load_streaming

    ds = load_dataset("fashion_mnist", seed=0)
    folder = tmp / "fmnist-png"
    x = (ds.x_test * torch.tensor(ds.std).view(1, -1, 1, 1) + torch.tensor(ds.mean).view(1, -1, 1, 1))
    x = x.round().clamp(0, 255).to(torch.uint8)[:, 0].numpy()
    for c in range(10):
        (folder / str(c)).mkdir(parents=True, exist_ok=True)
    for i, (img, lab) in enumerate(zip(x, ds.y_test.tolist())):
        Image.fromarray(img).save(folder / str(lab) / f"{i:05d}.png")
    streamed = load_streaming("image_folder", str(folder), test_fraction=0.001, mean=list(ds.mean),
                              std=list(ds.std), options=StreamOptions(resolution=28, channels=1, augment="flip",
                                                                      workers=workers))
    sources = {"in_memory_augmented": TensorSource(ds.x_test, ds.y_test, augment_batch),
               "in_memory_plain": TensorSource(ds.x_test, ds.y_test),
               "streamed_augmented": streamed.train_source(True), "streamed_plain": streamed.train_source(False)}
    res: dict[str, list[float]] = {k: [] for k in sources}
    for r in range(rounds):
        for name, src in sources.items():
            t0 = time.perf_counter()
            n = sum(len(b.y) for b in src.epoch(r, 0, batch))
            res[name].append(n / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in res.items()}
    return {"images_per_s": med, "rounds": res,
            "in_memory_over_streamed": {"augmented": med["in_memory_augmented"] / med["streamed_augmented"],
                                        "plain": med["in_memory_plain"] / med["streamed_plain"]},
            "images": len(ds.y_test), "batch_size": batch, "workers": workers,
            "augmentation": {"in_memory": "pad-2 random crop + flip (augment_batch)",
                             "streamed": "centre crop + flip (policy 'flip')"},
            "note": "the streamed figures include persistent workers' start-up in round 1 only"}


def teacher_cost(folder: Path, resolution: int, batch: int, workers: int, steps: int, mean, std) -> dict:
    """(d): a KD step with the teacher online vs cached (memory-mapped fp16) logits, same streamed batches."""
    from edgekd.distill import TorchTeacher, build_objective
    from edgekd.distill.cache import load_or_build_source
    from edgekd.models import build_for_data, count_params
    from edgekd.train.loop import make_optimizer
    from edgekd.train import TrainConfig

    ds = edgekd_dataset(folder, resolution, workers, "auto", steps * batch, mean, std)
    src = ds.train_source(False)
    torch.manual_seed(0)
    teacher = build_for_data("teacher_cnn", {}, input_shape=ds.input_shape, num_classes=10).module.eval()
    student = build_for_data("tiny_cnn", {"width": 12}, input_shape=ds.input_shape, num_classes=10).module
    objective = build_objective([{"name": "ce", "weight": 0.1}, {"name": "kd_soft", "weight": 0.9,
                                                                   "temperature": 2.0}])
    t_signal = TorchTeacher(teacher)
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        cached = load_or_build_source(t_signal, src, d, ds.digest(), "bench", batch_size=batch, progress=False)
        build_s = time.perf_counter() - t0
        batches = list(src.epoch(0, 0, batch))  # in memory: the comparison is teacher compute vs lookup
        opt = make_optimizer(student.parameters(), TrainConfig(lr=1e-3))

        def epoch(online: bool) -> float:
            student.train()
            t0 = time.perf_counter()
            for b in batches:
                if online:
                    with torch.no_grad():
                        t_out = t_signal.logits(b.x)
                else:
                    t_out = cached[b.idx]
                parts = objective(student(b.x), b.y, t_out)
                opt.zero_grad()
                parts["loss"].backward()
                opt.step()
            return time.perf_counter() - t0

        epoch(False)
        times = {"online": [], "cached": []}
        for _ in range(3):
            times["online"].append(epoch(True))
            times["cached"].append(epoch(False))
        med = {k: statistics.median(v) for k, v in times.items()}
        return {"teacher_params": count_params(teacher), "student_params": count_params(student),
                "steps": len(batches), "batch_size": batch, "resolution": resolution,
                "epoch_seconds": med, "online_over_cached": med["online"] / med["cached"],
                "cache_build_seconds": build_s, "cache_build_over_cached_epoch": build_s / med["cached"],
                "cache_bytes": int(cached.logits.numel() * cached.logits.element_size())}


def markdown(r: dict) -> str:
    """The result as the Markdown tables docs/data.md shows."""
    out = []
    if "throughput" in r:
        t = r["throughput"]
        out.append(f"(a) train pipeline, {t['resolution']} px, batch {t['batch_size']}, {t['workers']} workers, "
                   f"{len(t['rounds']['reference'])} interleaved rounds of {t['batches_timed']} batches (images/s: "
                   f"median; ratio: median of the within-round ratios):\n")
        out.append("| pipeline | images/s | vs reference |\n|---|---|---|")
        for k, v in t["images_per_s"].items():
            ratio = t["ratio_vs_reference"].get(k, 1.0)
            out.append(f"| {k} | {v:.0f} | {ratio:.2f}x |")
        if "per_image_us" in t:
            out.append("\ndecode + RandomResizedCrop + flip, one process, per image: " + ", ".join(
                f"{k} {v:.0f} us" for k, v in t["per_image_us"].items()))
    if "peak_rss" in r:
        out.append("\n(b) one training epoch, peak memory of the main process + workers (sampled every 0.1 s):\n")
        out.append("| pipeline | files | peak RSS sum (MiB) | peak PSS sum (MiB) | main RSS (MiB) | epoch s |")
        out.append("|---|---|---|---|---|---|")
        for k, rows in r["peak_rss"].items():
            if isinstance(rows, list):
                for row in rows:
                    out.append(f"| {k} | {row['files']} | {row['peak_rss_mib']:.0f} | {row['peak_pss_mib']:.0f} | "
                               f"{row['peak_main_rss_mib']:.0f} | {row['seconds']:.1f} |")
        g = r["peak_rss"]["growth_largest_over_smallest"]
        out.append("\ngrowth largest/smallest: " + ", ".join(
            f"{k} RSS {v['peak_rss_mib']:.3f}x, PSS {v['peak_pss_mib']:.3f}x" for k, v in g.items()))
    if "small_arrays" in r:
        c = r["small_arrays"]
        out.append(f"\n(c) small array set ({c['images']} Fashion-MNIST 28x28 images, batch {c['batch_size']}, "
                   f"epoch images/s, median of {len(c['rounds']['in_memory_plain'])}):\n")
        out.append("| source | images/s |\n|---|---|")
        for k, v in c["images_per_s"].items():
            out.append(f"| {k} | {v:.0f} |")
        ratio = c["in_memory_over_streamed"]
        out.append(f"\nin memory / streamed: {ratio['augmented']:.1f}x augmented, {ratio['plain']:.1f}x plain")
    if "teacher_cost" in r:
        d = r["teacher_cost"]
        out.append(f"\n(d) KD epoch of {d['steps']} steps x {d['batch_size']} at {d['resolution']} px, teacher "
                   f"{d['teacher_params']:,} params, student {d['student_params']:,}: online "
                   f"{d['epoch_seconds']['online']:.2f} s vs cached {d['epoch_seconds']['cached']:.2f} s = "
                   f"**{d['online_over_cached']:.2f}x**; building the cache cost "
                   f"{d['cache_build_over_cached_epoch']:.2f} cached epochs.")
    return "\n".join(out)


@click.command()
@click.option("--images", default=60000, show_default=True, help="JPEGs in the built set (>= 50,000).")
@click.option("--resolution", default=112, show_default=True)
@click.option("--batch", default=128, show_default=True)
@click.option("--workers", default=2, show_default=True, help="Worker processes (this machine has 2 cores).")
@click.option("--batches", default=30, show_default=True, help="Batches timed per round in (a).")
@click.option("--rounds", default=7, show_default=True)
@click.option("--rss-files", default="10000,50000", show_default=True)
@click.option("--rss-reference/--no-rss-reference", default=True, show_default=True,
              help="Also measure the torchvision reference's epoch memory.")
@click.option("--skip", multiple=True, type=click.Choice(["a", "b", "c", "d"]), help="Parts to skip.")
@click.option("--data-dir", default="runs/bench/data/fmnist-jpeg", show_default=True)
@click.option("--out", default="runs/bench/data.json", show_default=True)
@click.option("--markdown-from", default=None, help="Only print the tables of an earlier result JSON.")
def main(images, resolution, batch, workers, batches, rounds, rss_files, rss_reference, skip, data_dir, out,
         markdown_from) -> None:
    if markdown_from:
        print(markdown(json.loads(Path(markdown_from).read_text())))
        return
    folder = build_jpeg_set(Path(data_dir), images)
    mean, std = [127.0] * 3, [64.0] * 3
    result = {"machine": {"cpus": os.cpu_count(), "load_average": os.getloadavg(), "torch": torch.__version__,
                          "python": sys.version.split()[0]},
              "data": {"folder": str(folder), "images": images, "sides_px": [96, 128], "format": "JPEG q90",
                       **json.loads((folder / "complete.json").read_text())}}
    if "a" not in skip:
        result["throughput"] = throughput(folder, resolution, batch, workers, batches, rounds, mean, std)
        print(json.dumps(result["throughput"]["images_per_s"]), flush=True)
    if "b" not in skip:
        kinds = ["edgekd"] + (["reference"] if rss_reference else [])
        result["peak_rss"] = {k: [peak_rss(k, folder, int(f), resolution, batch, workers, mean, std)
                                  for f in rss_files.split(",")] for k in kinds}
        result["peak_rss"]["growth_largest_over_smallest"] = {
            k: {m: rows[-1][m] / rows[0][m] for m in ("peak_rss_mib", "peak_pss_mib")}
            for k, rows in result["peak_rss"].items() if isinstance(rows, list)}
        print(json.dumps(result["peak_rss"]), flush=True)
    if "c" not in skip:
        with tempfile.TemporaryDirectory() as d:
            result["small_arrays"] = small_arrays(Path(d), batch, workers, rounds)
        print(json.dumps(result["small_arrays"]["images_per_s"]), flush=True)
    if "d" not in skip:
        result["teacher_cost"] = teacher_cost(folder, 64, 32, workers, 12, mean, std)
        print(json.dumps(result["teacher_cost"]), flush=True)
    result["machine"]["load_average_end"] = os.getloadavg()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
