"""Predicted vs measured cpu-local latency of the search's candidates (issue 15: within +-10%), no training.

    flock /work/bench.lock .venv/bin/python tools/bench_search_latency.py --out runs/bench/search_latency.json

For each input shape the benchmark searches (Fashion-MNIST 1x28x28, digits 1x8x8): the candidates of
tools/bench_auto.py's space plus the demo student, exported as the search exports them; the 21 reference models
of edgekd.profile.predict.refit (plus its 8 tiny networks at the candidates' input shape when that is not 28x28)
measured in the same interleaved rounds (5 rounds, lowest median of each); the stored cpu-local calibration
re-fitted on the references only (robust fit, form chosen by leave-one-out on the references); each candidate
predicted with the stored and with the re-fitted calibration. Candidates never enter the fit, so their errors
are held-out figures.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import click
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


@click.command()
@click.option("--shapes", default="1x28x28,1x8x8", show_default=True)
@click.option("--out", default="runs/bench/search_latency.json", show_default=True)
def main(shapes: str, out: str) -> None:
    from bench_auto import DEMO_STUDENT, SPACE

    from edgekd.auto.search import candidate_name, expand_space, export_candidate
    from edgekd.fileio import write_json
    from edgekd.models import build_model
    from edgekd.profile.predict import predict
    from edgekd.profile.predict.refit import refit_local

    torch.set_num_threads(1)
    cands = expand_space(SPACE, 100) + [DEMO_STUDENT]
    results = {"host": platform.platform(), "space": SPACE, "shapes": {}, "uptime_start": os.popen("uptime").read()}
    for spec in shapes.split(","):
        shape = tuple(int(v) for v in spec.split("x"))
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            files = []
            for i, c in enumerate(cands):
                torch.manual_seed(0)
                m = build_model(c["model"], num_classes=10, in_channels=shape[0], **c["kwargs"])
                files.append(export_candidate(m, (1, *shape), Path(tmp) / f"c{i}.onnx"))
            calib, record = refit_local(1, also=files, log=print, input_shape=(1, *shape))
            measured = record.pop("also_measured")
            rows = []
            for c, f, (ms, rounds) in zip(cands, files, measured):
                p = predict(f, "cpu-local", threads=1, calibration=calib).ms
                stored = predict(f, "cpu-local", threads=1).ms
                rows.append({"name": candidate_name(c), "measured_ms": ms, "rounds_ms": rounds, "predicted_ms": p,
                             "error": p / ms - 1, "stored_predicted_ms": stored, "stored_error": stored / ms - 1})
                print(f"{spec} {rows[-1]['name']:58s} measured {ms * 1e3:6.1f} µs  re-fitted {p * 1e3:6.1f} "
                      f"({rows[-1]['error']:+.0%})  stored {stored * 1e3:6.1f} ({rows[-1]['stored_error']:+.0%})",
                      flush=True)
        errs = sorted(abs(r["error"]) for r in rows)
        serrs = sorted(abs(r["stored_error"]) for r in rows)
        results["shapes"][spec] = {
            "candidates": rows, "refit": record, "seconds": time.perf_counter() - t0,
            "within_10pct": sum(e <= 0.10 for e in errs), "n": len(rows), "median_abs_error": errs[len(errs) // 2],
            "stored_within_10pct": sum(e <= 0.10 for e in serrs), "stored_median_abs_error": serrs[len(serrs) // 2]}
        s = results["shapes"][spec]
        print(f"{spec}: re-fitted {s['within_10pct']}/{s['n']} within ±10% (median {s['median_abs_error']:.0%}); "
              f"stored {s['stored_within_10pct']}/{s['n']} (median {s['stored_median_abs_error']:.0%})", flush=True)
        results["uptime_end"] = os.popen("uptime").read()
        write_json(Path(out), results)


if __name__ == "__main__":
    main()
