"""Issue-13 GPU benchmark (<= 8 minutes on one GPU): a KD epoch with bf16 and channels-last, edgekd vs plain PyTorch.

    python tools/bench_gpu.py --out runs/bench/gpu.json            # on a CUDA machine
    python tools/bench_gpu.py --smoke --out /tmp/gpu_smoke.json    # CPU, tiny models: keeps the script from rotting

ResNet-50 teacher -> MobileNetV3-Large student (torchvision, random weights: cost, not accuracy), synthetic 224 px
RGB images held in host memory, batch 128, AdamW + one-cycle, loss 0.1 CE + 0.9 soft-target KL (T=2):

1. edgekd `train()` with `device: cuda, precision: bf16, channels_last: true`, teacher online (edgekd runs it in
   inference mode under bf16 autocast) — against a plain PyTorch AMP loop doing the same work (pinned,
   non-blocking copies, bf16 autocast, channels-last, teacher under inference_mode): images/s and peak GPU memory
   (goal: edgekd >= 0.9x);
2. the same edgekd epoch from cached teacher logits, and the cost of building that cache (one teacher pass):
   teacher-online vs cached epoch-time ratio;
3. when `tensorrt` is importable and torchao is too: the student quantized to int8 Q/DQ ONNX (the tensorrt_int8
   scheme) built into a TensorRT engine, with its median latency at batch 1.

Each timed epoch follows an untimed warm-up epoch (cuDNN autotuning, allocator). `--smoke` runs every code path on
the CPU with tiny models and a few steps; its figures are no GPU figures and are marked so.
"""
from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

import click
import torch
import torch.nn.functional as F

from edgekd.distill import TorchTeacher, build_objective
from edgekd.fileio import write_json
from edgekd.train import TeacherSignal, TrainConfig, train

KD_TERMS = [{"name": "ce", "weight": 0.1}, {"name": "kd_soft", "weight": 0.9, "temperature": 2.0}]


def models(smoke: bool, num_classes: int):
    if smoke:
        from edgekd.models import build_model

        torch.manual_seed(1)
        teacher = build_model("tiny_cnn", width=8, in_channels=3, num_classes=num_classes)
        torch.manual_seed(0)
        return teacher, lambda: _seeded(lambda: build_model("tiny_cnn", width=4, in_channels=3,
                                                            num_classes=num_classes))
    import torchvision

    torch.manual_seed(1)
    teacher = torchvision.models.resnet50(num_classes=num_classes)
    return teacher, lambda: _seeded(lambda: torchvision.models.mobilenet_v3_large(num_classes=num_classes))


def _seeded(make):
    torch.manual_seed(0)
    return make()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    return round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1) if device.type == "cuda" else None


def plain_amp_epoch(student, teacher, x, y, batch_size: int, lr: float, device: torch.device, dtype,
                    cached=None) -> float:
    """The reference loop: what a PyTorch user writes for bf16 + channels-last KD. Returns seconds."""
    student.to(device).to(memory_format=torch.channels_last).train()
    if teacher is not None:
        teacher.to(device).to(memory_format=torch.channels_last).eval()
    steps = -(-len(x) // batch_size)
    opt = torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 8), pct_start=0.25)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))
    _sync(device)
    t0 = time.perf_counter()
    for b in range(steps):
        idx = order[b * batch_size:(b + 1) * batch_size]
        xb, yb = x[idx], y[idx]
        if device.type == "cuda":
            xb, yb = xb.pin_memory().to(device, non_blocking=True), yb.to(device, non_blocking=True)
        xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=dtype):
            if cached is not None:
                t = cached[idx].to(device, non_blocking=True)
            else:
                with torch.inference_mode():
                    t = teacher(xb)
                t = t.float().clone()
            logits = student(xb)
            kd = F.kl_div(F.log_softmax(logits / 2.0, -1), F.log_softmax(t / 2.0, -1), reduction="batchmean",
                          log_target=True) * 4.0
            loss = 0.1 * F.cross_entropy(logits, yb) + 0.9 * kd
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    _sync(device)
    return time.perf_counter() - t0


def edgekd_epoch(student, x, y, batch_size: int, lr: float, device: torch.device, precision: str,
                 signal: TeacherSignal) -> float:
    cfg = TrainConfig(epochs=1, lr=lr, device=str(device), precision=precision, channels_last=True,
                      checkpoint_every=10 ** 9)
    _sync(device)
    t0 = time.perf_counter()
    train(student, x, y, cfg, objective=build_objective(KD_TERMS), teacher=signal, batch_size=batch_size,
          progress=False)
    _sync(device)
    return time.perf_counter() - t0


def teacher_cache(teacher, x, batch_size: int, device: torch.device, dtype) -> tuple[torch.Tensor, float]:
    """Teacher logits for every image (what edgekd's disk cache stores) and the seconds the pass took."""
    teacher.to(device).to(memory_format=torch.channels_last).eval()
    out = []
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode(), torch.autocast(device.type, dtype=dtype):
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            if device.type == "cuda":
                xb = xb.pin_memory().to(device, non_blocking=True)
            out.append(teacher(xb.contiguous(memory_format=torch.channels_last)).float().cpu())
    _sync(device)
    seconds = time.perf_counter() - t0
    teacher.to("cpu")
    return torch.cat(out).clone(), seconds


def tensorrt_engine(student_factory, size: int, smoke: bool) -> dict:
    """int8 Q/DQ ONNX of the student (tensorrt_int8 scheme) built into a TensorRT engine, if tensorrt imports."""
    try:
        import tensorrt as trt
    except ImportError as e:
        return {"built": False, "why": f"tensorrt is not importable ({e})"}
    try:
        from edgekd.formats import export_model
        from edgekd.quant import quantize_ptq
    except ImportError as e:
        return {"built": False, "why": f"int8 Q/DQ export needs torchao ({e})"}
    model = student_factory().eval()
    example = (torch.randn(1, 3, size, size),)
    gm = quantize_ptq(model, example, "tensorrt_int8", [torch.randn(1, 3, size, size) for _ in range(8)])
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = export_model("onnx", gm, example, Path(tmp) / "student_int8.onnx")
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        network = builder.create_network(0)
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            return {"built": False, "why": "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))}
        config = builder.create_builder_config()
        config.set_flag(trt.BuilderFlag.INT8)
        t0 = time.perf_counter()
        plan = builder.build_serialized_network(network, config)
        build_s = time.perf_counter() - t0
        if plan is None:
            return {"built": False, "why": "TensorRT returned no engine"}
        engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
        ctx = engine.create_execution_context()
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        buffers = {n: torch.empty(tuple(engine.get_tensor_shape(n)), device="cuda",
                                  dtype=torch.float32 if engine.get_tensor_dtype(n) == trt.float32 else torch.int8)
                   for n in names}
        for n, b in buffers.items():
            ctx.set_tensor_address(n, b.data_ptr())
        stream = torch.cuda.Stream()
        times = []
        for i in range(220):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            ctx.execute_async_v3(stream.cuda_stream)
            stream.synchronize()
            if i >= 20:
                times.append((time.perf_counter() - t0) * 1e3)
        return {"built": True, "tensorrt": trt.__version__, "build_s": round(build_s, 2),
                "latency_ms_median_batch1": round(statistics.median(times), 4), "onnx_bytes": onnx_path.stat().st_size}


@click.command()
@click.option("--smoke", is_flag=True, help="CPU, tiny models, a few steps: checks the code paths only.")
@click.option("--images", default=None, type=int, help="Synthetic images per epoch (default 8192; smoke 64).")
@click.option("--batch-size", default=None, type=int, help="Default 128 (smoke 16).")
@click.option("--size", default=None, type=int, help="Image size in pixels (default 224; smoke 32).")
@click.option("--out", default="runs/bench/gpu.json", show_default=True, type=click.Path(path_type=Path))
def main(smoke: bool, images: int | None, batch_size: int | None, size: int | None, out: Path) -> None:
    images = images or (64 if smoke else 8192)
    batch_size = batch_size or (16 if smoke else 128)
    size = size or (32 if smoke else 224)
    num_classes = 10 if smoke else 1000
    if smoke:
        device = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise click.ClickException("no CUDA GPU here: run on a GPU machine, or --smoke to check the code paths")
        device = torch.device("cuda", 0)
        torch.backends.cudnn.benchmark = True
    dtype = torch.bfloat16
    lr = 1e-3
    g = torch.Generator().manual_seed(0)
    x = torch.randn(images, 3, size, size, generator=g)
    y = torch.randint(0, num_classes, (images,), generator=g)
    teacher, student_factory = models(smoke, num_classes)

    # warm-up (untimed): one short epoch of each loop
    warm = slice(0, min(len(x), 4 * batch_size))
    plain_amp_epoch(student_factory(), teacher, x[warm], y[warm], batch_size, lr, device, dtype)
    edgekd_epoch(student_factory(), x[warm], y[warm], batch_size, lr, device, "bf16",
                 TeacherSignal(teacher=TorchTeacher(teacher)))

    rows = {}
    _peak_reset(device)
    s = plain_amp_epoch(student_factory(), teacher, x, y, batch_size, lr, device, dtype)
    rows["plain_amp_online"] = {"seconds": round(s, 3), "images_per_s": round(images / s, 1),
                                "peak_gpu_mib": _peak_mib(device)}
    teacher.to("cpu")
    _peak_reset(device)
    s = edgekd_epoch(student_factory(), x, y, batch_size, lr, device, "bf16", TeacherSignal(teacher=TorchTeacher(teacher)))
    rows["edgekd_online"] = {"seconds": round(s, 3), "images_per_s": round(images / s, 1),
                             "peak_gpu_mib": _peak_mib(device)}
    cached, cache_s = teacher_cache(teacher, x, batch_size, device, dtype)
    _peak_reset(device)
    s = edgekd_epoch(student_factory(), x, y, batch_size, lr, device, "bf16", TeacherSignal(cached=cached))
    rows["edgekd_cached"] = {"seconds": round(s, 3), "images_per_s": round(images / s, 1),
                             "peak_gpu_mib": _peak_mib(device), "cache_build_seconds": round(cache_s, 3)}
    _peak_reset(device)
    s = plain_amp_epoch(student_factory(), None, x, y, batch_size, lr, device, dtype, cached=cached)
    rows["plain_amp_cached"] = {"seconds": round(s, 3), "images_per_s": round(images / s, 1),
                                "peak_gpu_mib": _peak_mib(device)}
    ratios = {
        "edgekd_over_plain_online": round(rows["edgekd_online"]["images_per_s"]
                                          / rows["plain_amp_online"]["images_per_s"], 3),
        "edgekd_over_plain_cached": round(rows["edgekd_cached"]["images_per_s"]
                                          / rows["plain_amp_cached"]["images_per_s"], 3),
        "online_over_cached_epoch_time": round(rows["edgekd_online"]["seconds"] / rows["edgekd_cached"]["seconds"],
                                               3),
    }
    if smoke:
        trt_row = {"built": False, "why": "smoke mode (CPU)"}
    else:
        try:  # the training rows are the benchmark's result: a failing engine build is recorded, not fatal
            trt_row = tensorrt_engine(student_factory, size, smoke)
        except Exception as e:  # noqa: BLE001 - TensorRT/ONNX raise many kinds
            trt_row = {"built": False, "why": f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300] if str(e).strip() else ''}"}
    report = {
        "benchmark": "KD epoch, bf16 + channels-last: edgekd vs a plain PyTorch AMP loop",
        "smoke": smoke,
        "note": "smoke mode: tiny models on the CPU, figures are no GPU figures" if smoke else "",
        "command": f"python tools/bench_gpu.py{' --smoke' if smoke else ''} --images {images} "
                   f"--batch-size {batch_size} --size {size} --out {out}",
        "setup": {"teacher": "tiny_cnn w8" if smoke else "resnet50", "student": "tiny_cnn w4" if smoke
                  else "mobilenet_v3_large", "images": images, "size": size, "batch_size": batch_size,
                  "kd": KD_TERMS, "precision": "bf16", "channels_last": True},
        "rows": rows, "ratios": ratios, "goal": "edgekd >= 0.9x plain AMP loop", "tensorrt": trt_row,
        "machine": {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
                    "torch": torch.__version__, "python": platform.python_version(),
                    "load_average": list(os.getloadavg())},
    }
    write_json(out, report)
    click.echo(json.dumps({"rows": rows, "ratios": ratios, "tensorrt": trt_row}, indent=1))


if __name__ == "__main__":
    main()
