"""Fault injection against a small recipe: kill -9 at random moments of every stage, disk full, two runs at once.

Each scenario runs `edgekd run` in its own process group (setsid), injects the fault, runs the same command again
without --force, and compares the result with an uninterrupted reference run of the same recipe and seed:
  - resumed bit-exact: every recorded model/export output has the reference's sha256 and the deterministic metrics
    (accuracies, parity) are equal;
  - refused cleanly: the faulty run exited 2 with one line and no traceback (disk full, a second concurrent run);
  - failed: anything else (a different result, a traceback, a run that never finishes) — the tool exits 1.
Latency figures (profile) and the files that embed them (bundle, report) are not compared: they are measurements.

    python tools/chaos.py --kills 20 --out runs/bench/chaos.json
    python tools/chaos.py --kills 100 --enospc --concurrent     # the full suite (about 1-2 hours on 2 cores)
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

# Stages whose outputs are deterministic for a fixed seed: their sha256 must match the reference after a resume.
COMPARED_STAGES = ("teacher", "distill", "quantize", "export")
# Deterministic metric keys per stage (training curves hold wall-clock fields, so only results are compared).
COMPARED_METRICS = {"teacher": ("test_accuracy",), "distill": ("test_accuracy",),
                    "quantize": ("fake_quant_accuracy",), "verify": ("files",)}

RECIPE = {
    "name": "chaos", "seed": 0,
    "data": {"dataset": "digits", "batch_size": 32},
    "teacher": {"model": "tiny_cnn", "kwargs": {"width": 8}, "train": {"epochs": 2, "lr": 0.01,
                                                                       "checkpoint_every": 5}},
    "student": {"model": "tiny_cnn", "kwargs": {"width": 4}},
    "distill": {"train": {"epochs": 3, "lr": 0.01, "checkpoint_every": 5}},
    "quantize": {"train": {"epochs": 1, "lr": 5e-4, "checkpoint_every": 5}, "sensitivity": False},
    "export": {"formats": ["onnx", "tflite"]},
    "verify": {"parity_samples": 64},
    "profile": {"max_seconds": 0.2, "min_runs": 5},
}


def edgekd_cmd(recipe: Path, run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "edgekd.cli", "run", str(recipe), "--run-dir", str(run_dir), "--no-progress"]


def start(recipe: Path, run_dir: Path, log: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    with open(log, "ab") as f:
        return subprocess.Popen(edgekd_cmd(recipe, run_dir), stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)


def finish(recipe: Path, run_dir: Path, log: Path, timeout: float) -> tuple[int, str]:
    """Run to completion; returns (exit code, the output of this run)."""
    before = log.stat().st_size if log.exists() else 0
    proc = start(recipe, run_dir, log)
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        code = -999
    with open(log, "rb") as f:
        f.seek(before)
        return code, f.read().decode(errors="replace")


def fingerprint(run_dir: Path) -> dict:
    """sha256 of every compared stage output and the compared metrics, from the stage records."""
    out: dict = {"files": {}, "metrics": {}}
    for stage in COMPARED_STAGES + ("verify",):
        path = run_dir / stage / "stage.json"
        if not path.exists():
            out["files"][stage] = None
            continue
        rec = json.loads(path.read_text())
        if stage in COMPARED_STAGES:
            out["files"][stage] = {k: v["sha256"] for k, v in sorted(rec.get("outputs", {}).items())}
        metrics = rec.get("metrics", {})
        for key in COMPARED_METRICS.get(stage, ()):
            value = metrics.get(key)
            if key == "files" and isinstance(value, list):  # verify: accuracy and parity per file
                value = [{k: f.get(k) for k in ("name", "accuracy", "max_abs_diff", "top1_agreement")}
                         for f in value]
            out["metrics"][f"{stage}.{key}"] = value
    return out


def differences(a: dict, b: dict) -> list[str]:
    """Names of the files and metrics that differ between two fingerprints."""
    out = []
    for part in ("files", "metrics"):
        for key in sorted(set(a[part]) | set(b[part])):
            x, y = a[part].get(key), b[part].get(key)
            if isinstance(x, dict) and isinstance(y, dict):
                out += [f"{key}/{k}" for k in sorted(set(x) | set(y)) if x.get(k) != y.get(k)]
            elif x != y:
                out.append(key)
    return out


def stage_windows(ref_dir: Path) -> list[tuple[str, float, float]]:
    """(stage, start s, end s) of the reference run, from the stage records' wall times in order."""
    windows, t = [], 0.0
    for stage in ("teacher", "distill", "quantize", "export", "verify", "profile", "bundle", "report"):
        path = ref_dir / stage / "stage.json"
        if path.exists():
            wall = float(json.loads(path.read_text()).get("wall_time_s", 0.0))
            windows.append((stage, t, t + wall))
            t += wall
    return windows


def clean_refusal(code: int, output: str) -> bool:
    lines = [ln for ln in output.strip().splitlines() if ln.startswith("edgekd: error:")]
    return code == 2 and "Traceback" not in output and len(lines) == 1


def kill_scenario(recipe: Path, ref: dict, windows, work: Path, i: int, rng: random.Random, startup: float,
                  timeout: float) -> dict:
    stage, lo, hi = rng.choice(windows)
    delay = startup + rng.uniform(lo, hi)
    run_dir, log = work / f"kill{i}", work / f"kill{i}.log"
    proc = start(recipe, run_dir, log)
    deadline = time.time() + delay
    while time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    finished_first = proc.poll() is not None
    if not finished_first:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    code, output = finish(recipe, run_dir, log, timeout)
    same = code == 0 and fingerprint(run_dir) == ref
    row = {"scenario": "kill", "stage": stage, "delay_s": round(delay, 2), "killed": not finished_first,
           "exit": code, "outcome": "resumed bit-exact" if same else "failed"}
    if not same:
        row["detail"] = output.strip().splitlines()[-3:] if output.strip() else []
        row["differs"] = differences(ref, fingerprint(run_dir)) if code == 0 else []
    shutil.rmtree(run_dir, ignore_errors=True)
    return row


def enospc_scenario(recipe: Path, ref: dict, work: Path, size_kb: int, timeout: float) -> dict:
    """A run directory on a small tmpfs: the run must stop with one line; after the space grows it must finish."""
    mount = work / "tmpfs"
    mount.mkdir(exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return {"scenario": "enospc", "outcome": "skipped", "detail": "needs root to mount a small tmpfs"}
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_kb}k", "tmpfs", str(mount)]).returncode:
        return {"scenario": "enospc", "outcome": "skipped", "detail": "mount -t tmpfs failed"}
    try:
        log = work / f"enospc{size_kb}.log"
        code, output = finish(recipe, mount / "run", log, timeout)
        refused = clean_refusal(code, output)
        subprocess.run(["mount", "-o", "remount,size=512m", str(mount)], check=True)
        code2, output2 = finish(recipe, mount / "run", log, timeout)
        same = code2 == 0 and fingerprint(mount / "run") == ref
        if code == 0:  # the run fit in the space: nothing was injected
            outcome = "too large to fill" if same else "failed"
        else:
            outcome = "resumed bit-exact" if refused and same else "failed"
        return {"scenario": "enospc", "size_kb": size_kb, "exit": code, "refused_cleanly": refused,
                "first_output": output.strip().splitlines()[-2:], "exit_after_space": code2, "outcome": outcome}
    finally:
        subprocess.run(["umount", "-l", str(mount)])


def concurrent_scenario(recipe: Path, ref: dict, work: Path, gap_s: float, timeout: float) -> dict:
    run_dir = work / f"concurrent{gap_s}"
    logs = [work / f"concurrent{gap_s}.{k}.log" for k in (0, 1)]
    first = start(recipe, run_dir, logs[0])
    time.sleep(gap_s)
    second = start(recipe, run_dir, logs[1])
    codes = [first.wait(timeout=timeout), second.wait(timeout=timeout)]
    outputs = [log.read_text(errors="replace") for log in logs]
    refused = [clean_refusal(c, o) for c, o in zip(codes, outputs)]
    winners = [k for k in (0, 1) if codes[k] == 0]
    same = len(winners) == 1 and refused[1 - winners[0]] and fingerprint(run_dir) == ref
    shutil.rmtree(run_dir, ignore_errors=True)
    return {"scenario": "concurrent", "gap_s": gap_s, "exits": codes,
            "outcome": "refused cleanly" if same else "failed",
            "detail": [o.strip().splitlines()[-1:] for o in outputs]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kills", type=int, default=20, help="kill -9 scenarios (random stage, random moment)")
    ap.add_argument("--enospc", action="store_true", help="disk-full scenarios on a small tmpfs (root only)")
    ap.add_argument("--concurrent", action="store_true", help="two runs on one run directory")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds a run may take before it counts as hung")
    ap.add_argument("--out", type=Path, default=Path("runs/bench/chaos.json"))
    ap.add_argument("--keep", action="store_true", help="keep the work folder")
    args = ap.parse_args()

    work = Path(tempfile.mkdtemp(prefix="edgekd-chaos-"))
    recipe = work / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(RECIPE))
    t0 = time.time()
    code, output = finish(recipe, work / "ref", work / "ref.log", args.timeout)
    if code != 0:
        print(f"reference run failed (exit {code}):\n{output}", file=sys.stderr)
        return 1
    ref_wall = time.time() - t0
    ref, windows = fingerprint(work / "ref"), stage_windows(work / "ref")
    startup = max(0.0, ref_wall - sum(hi - lo for _, lo, hi in windows))  # interpreter and import time
    code2, _ = finish(recipe, work / "ref2", work / "ref2.log", args.timeout)
    if code2 != 0 or fingerprint(work / "ref2") != ref:
        print(f"two uninterrupted runs of the same recipe differ (exit {code2}): nothing can be compared; "
              f"differing: {differences(ref, fingerprint(work / 'ref2'))}", file=sys.stderr)
        return 1
    print(f"reference: {ref_wall:.1f} s, stages {[w[0] for w in windows]}; two runs identical")

    rng = random.Random(args.seed)
    rows = []
    for i in range(args.kills):
        rows.append(kill_scenario(recipe, ref, windows, work, i, rng, startup, args.timeout))
        r = rows[-1]
        print(f"kill {i + 1}/{args.kills}: {r['stage']:<9} at {r['delay_s']:6.2f} s -> {r['outcome']}", flush=True)
    if args.enospc:
        run_kb = sum(f.stat().st_size for f in (work / "ref").rglob("*") if f.is_file()) // 1024
        for size in sorted({max(8, run_kb * k // 8) for k in (1, 2, 4, 6)}):  # an eighth to three quarters of a run
            rows.append(enospc_scenario(recipe, ref, work, size, args.timeout))
            print(f"enospc {size} KiB (a run writes {run_kb} KiB) -> {rows[-1]['outcome']}", flush=True)
    if args.concurrent:
        for gap in (0.0, 2.0, 12.0):
            rows.append(concurrent_scenario(recipe, ref, work, gap, args.timeout))
            print(f"concurrent gap {gap} s -> {rows[-1]['outcome']}", flush=True)

    table = Counter((r["scenario"], r.get("stage", "-"), r["outcome"]) for r in rows)
    print(f"\n{'scenario':<11} {'stage':<9} {'tried':>5} {'bit-exact':>9} {'refused':>8} {'failed':>7}")
    for scenario, stage in sorted({(s, st) for s, st, _ in table}):
        n = {o: table[(scenario, stage, o)] for o in ("resumed bit-exact", "refused cleanly", "failed", "skipped",
                                                       "too large to fill")}
        print(f"{scenario:<11} {stage:<9} {sum(n.values()):>5} {n['resumed bit-exact']:>9} {n['refused cleanly']:>8}"
              f" {n['failed']:>7}")
    failed = sum(1 for r in rows if r["outcome"] == "failed")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"reference_wall_s": ref_wall, "recipe": RECIPE, "rows": rows,
                                    "failed": failed}, indent=2, default=str))
    print(f"\n{len(rows)} scenarios, {failed} failed; {args.out}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
