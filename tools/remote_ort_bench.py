#!/usr/bin/env python3
"""Device-side ONNX Runtime latency benchmark: copied to a board by edgekd.profile.runners.ssh, prints one JSON object.

Standalone on purpose (standard library + numpy + onnxruntime only; no edgekd on the device). The stopping rule
mirrors edgekd.profile.stats.StopRule: after --min-runs and --min-time, stop when the running median moved less
than --rel-tol over the last block, or at --time-cap, or at --max-runs.
Exit status: 0 ok, 3 onnxruntime/numpy missing, 4 model cannot be loaded; the JSON then has "error" and "kind".
"""
import argparse
import json
import os
import platform
import sys
import time


def _fail(kind, message, code):
    print(json.dumps({"error": message, "kind": kind}))
    sys.exit(code)


def _rss_mb():
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return None


def _hwm_mb():
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _device():
    for p in ("/proc/device-tree/model", "/sys/firmware/devicetree/base/model"):
        try:
            with open(p) as f:
                return f.read().strip("\x00\n ")
        except OSError:
            pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(("model name", "Model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.node() or platform.machine()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--min-runs", type=int, default=30)
    ap.add_argument("--max-runs", type=int, default=5000)
    ap.add_argument("--block", type=int, default=20)
    ap.add_argument("--rel-tol", type=float, default=0.01)
    ap.add_argument("--min-time", type=float, default=0.5)
    ap.add_argument("--time-cap", type=float, default=10.0)
    ap.add_argument("--providers", default="CPUExecutionProvider",
                    help="comma-separated ONNX Runtime execution providers, e.g. CUDAExecutionProvider")
    args = ap.parse_args(argv)
    try:
        import numpy as np
        import onnxruntime as ort
    except ImportError as e:
        _fail("missing_onnxruntime", f"{e} (python {sys.executable}); install it: pip install onnxruntime "
                                     f"(Jetson: NVIDIA's onnxruntime-gpu wheel for your JetPack)", 3)
    base = _rss_mb()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        hwm_ok = True
    except OSError:
        hwm_ok = False
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    t0 = time.perf_counter()
    try:
        sess = ort.InferenceSession(args.model, sess_options=opts, providers=args.providers.split(","))
    except Exception as e:  # onnxruntime raises its own exception types
        _fail("load_failed", f"onnxruntime cannot load {args.model}: {str(e).splitlines()[0]}", 4)
    init_ms = (time.perf_counter() - t0) * 1e3
    inp = sess.get_inputs()[0]
    shape = [d if isinstance(d, int) and d > 0 else 1 for d in inp.shape]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    feed = {inp.name: x}
    t0 = time.perf_counter()
    sess.run(None, feed)
    first_ms = (time.perf_counter() - t0) * 1e3
    for _ in range(args.warmup):
        sess.run(None, feed)
    samples, prev, start, stopped = [], None, time.perf_counter(), ""
    while not stopped:
        for _ in range(min(args.block, args.max_runs - len(samples))):
            t0 = time.perf_counter()
            sess.run(None, feed)
            samples.append((time.perf_counter() - t0) * 1e3)
        med = float(np.median(samples))
        elapsed = time.perf_counter() - start
        if len(samples) >= args.max_runs:
            stopped = "max_runs"
        elif len(samples) >= args.min_runs and elapsed >= args.min_time:
            if prev and abs(med - prev) / prev < args.rel_tol:
                stopped = "stable"
            elif elapsed >= args.time_cap:
                stopped = "time_cap"
        prev = med
    end_rss = _rss_mb()
    hwm = _hwm_mb() if hwm_ok else None
    peak = None
    if base is not None:
        peak = max(v for v in (end_rss, hwm) if v is not None) - base
    print(json.dumps({
        "samples_ms": samples, "init_ms": init_ms, "first_ms": first_ms, "stopped_by": stopped,
        "peak_mem_mb": peak, "mem_method": "vmhwm" if hwm is not None else "rss_samples",
        "runtime_version": ort.__version__, "providers": sess.get_providers(), "threads": args.threads,
        "device": _device(), "python": platform.python_version(), "input_shape": shape,
    }))


if __name__ == "__main__":
    main()
