#!/usr/bin/env python
"""Causal-LM distillation benchmark: SmolLM2-135M (dequantized GGUF) teacher -> small Llama student on the
State-of-the-Union corpus, every method with the same student shape and the same token budget.

Reports held-out (last addresses by year) and Moby-Dick perplexity per method and seed, the teacher's perplexity
on the same blocks, training and teacher-cache tokens/s, and for the best KD student its ONNX (and with --tflite,
.tflite) files: fp32 and int8 dynamic-range perplexity in their own runtime, parity, greedy agreement, TTFT and
tokens/s. Writes runs/bench/lm[-quick]-<time>.json.

    PYTHONPATH=. python tools/bench_lm.py --quick          # 1 seed, tiny budget (<= 10 min on 2 cores)
    PYTHONPATH=. python tools/bench_lm.py --medium         # 1 seed, 128-token blocks, 30 x 8 steps
    PYTHONPATH=. python tools/bench_lm.py --medium --seeds 2 --tflite   # the same, 2 seeds (mean, std per method)
    PYTHONPATH=. python tools/bench_lm.py                  # 2 seeds, larger budget, .tflite files too
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekd.lm.assets import work_cache  # noqa: E402
from edgekd.lm.methods import get_method  # noqa: E402
from edgekd.lm.student import StudentSpec  # noqa: E402
from edgekd.lm.train import LMTrainConfig  # noqa: E402

METHODS = ["scratch_ce", "forward_kl", "reverse_kl", "gjsd", "seqkd", "fkl_ce", "teacher_init_ce",
           "teacher_init_fkl_ce"]
QUICK_METHODS = ["scratch_ce", "forward_kl", "reverse_kl", "gjsd", "seqkd", "teacher_init_fkl_ce"]
QUICK = dict(seq_len=64, train_blocks=32, eval_blocks=6, steps=20, batch_size=4, topk=32, seqkd_prompt=16, seeds=1)
MEDIUM = dict(seq_len=128, train_blocks=96, eval_blocks=12, steps=30, batch_size=8, topk=64, seqkd_prompt=96,
              seeds=1)
FULL = dict(seq_len=128, train_blocks=256, eval_blocks=16, steps=300, batch_size=8, topk=64, seqkd_prompt=32, seeds=2)
LR = {"scratch": 3e-3, "teacher": 5e-4}  # a pretrained init is destroyed by the scratch learning rate


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--medium", action="store_true", help="between quick and full: 128-token blocks, 30 steps x 8 (31k tokens per method)")
    p.add_argument("--teacher-dtype", choices=("bf16", "fp32"), default="bf16",
                   help="teacher compute for the top-k cache and its perplexity (bf16: CPU autocast; its held-out "
                        "perplexity is also measured in fp32 in the same run); seqkd text is always fp32")
    p.add_argument("--teacher", default="smollm2")
    p.add_argument("--methods", help=f"comma-separated (default: all; --quick: {','.join(QUICK_METHODS)})")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--hidden", type=int, default=256, help="student width; 0 = the teacher's (layer selection only)")
    p.add_argument("--steps", type=int)
    p.add_argument("--seeds", type=int)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--tflite", action="store_true", help="also export .tflite (slow to convert); default in full mode")
    p.add_argument("--init-study", action="store_true",
                   help="also train teacher_init_fkl_ce at the teacher's width (layer selection only) to compare "
                        "with the projected student; default in full mode")
    p.add_argument("--no-files", action="store_true", help="skip exporting/verifying/profiling the best student")
    p.add_argument("--out", default=str(ROOT / "runs" / "bench"))
    return p.parse_args(argv)


def files_section(student, data, seq_len: int, tflite: bool, log, tokenizer=None) -> dict:
    """Export the student (fixed-length and KV-cache files), quantize, and verify + profile every file in its
    runtime, with the peak RSS of a child process that opens and runs it."""
    from edgekd.lm import export as ex
    from edgekd.lm.decoder import CachedLM, FixedLengthLM
    from edgekd.lm.profile import peak_memory, profile_session
    from edgekd.lm.runtime import TorchSession, open_lm_session
    from edgekd.lm.verify import verify_file

    out, tmp = {}, Path(tempfile.mkdtemp(prefix="edgekd-lm-"))
    cache_len = 2 * seq_len
    refs = {"fixed": TorchSession(FixedLengthLM(student, seq_len), "fixed"),
            "kv": TorchSession(CachedLM(student, cache_len), "kv")}
    makers = {"student.onnx": lambda p: ex.export_onnx(student, seq_len, p),
              "student.int8.onnx": lambda p: ex.quantize_onnx_int8(tmp / "student.onnx", p),
              "student.kv.onnx": lambda p: ex.export_onnx_kv(student, cache_len, p),
              "student.int8.kv.onnx": lambda p: ex.quantize_onnx_int8(tmp / "student.kv.onnx", p)}
    if tflite:
        makers.update({"student.tflite": lambda p: ex.export_tflite(student, seq_len, p),
                       "student.int8.tflite": lambda p: ex.quantize_tflite_int8(tmp / "student.tflite", p),
                       "student.kv.tflite": lambda p: ex.export_tflite_kv(student, cache_len, seq_len, p),
                       "student.int8.kv.tflite": lambda p: ex.quantize_tflite_int8(tmp / "student.kv.tflite", p)})
    for name, make in makers.items():
        t0 = time.perf_counter()
        try:
            path = make(tmp / name)
        except Exception as e:  # record the converter's exact error and go on with the other files
            out[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            log(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}")
            continue
        session = open_lm_session(path, threads=1)
        rec = {"bytes": path.stat().st_size, "export_seconds": round(time.perf_counter() - t0, 1),
               **verify_file(session, refs[session.kind], data.heldout, new_tokens=16, prompt_len=seq_len // 2),
               "profile": profile_session(session, seq_len, decode_tokens=16 if session.kind == "kv" else 8,
                                          repeats=5),
               "memory": peak_memory(path, seq_len, decode_tokens=16 if session.kind == "kv" else 8)}
        out[name] = rec
        log(f"{name}: {rec['bytes'] / 1e6:.1f} MB ppl {rec['perplexity']:.2f} "
            f"(torch {rec['reference_perplexity']:.2f}) "
            f"max|dlogit| {rec['max_abs_logit_diff']:.2e} greedy {rec['greedy_agreement']:.2f}")
    from edgekd.lm import litertlm

    tok_json = tmp / "tokenizer" / "tokenizer.json"
    for kv_name in ("student.kv.tflite", "student.int8.kv.tflite"):   # LiteRT-LM containers, run in LiteRT-LM
        name = kv_name.replace(".kv.tflite", ".litertlm")
        if "error" in out.get(kv_name, {"error": "not exported"}) or tokenizer is None:
            continue
        try:
            if not tok_json.is_file():
                tokenizer.save_pretrained(tmp / "tokenizer")
            eos = student.config.eos_token_id
            path = ex.package_litertlm(tmp / kv_name, tok_json, tmp / name, context_length=cache_len,
                                       stop_token_ids=[eos] if isinstance(eos, int) else list(eos or []))
            rec = {"bytes": path.stat().st_size}
            if litertlm.available():
                rec.update(**litertlm.verify_litertlm(path, refs["kv"], data.heldout, new_tokens=16,
                                                      prompt_len=seq_len // 2),
                           profile=litertlm.profile_litertlm(path, seq_len, decode_tokens=16, repeats=5),
                           memory=peak_memory(path, seq_len, decode_tokens=16))
                log(f"{name}: {rec['bytes'] / 1e6:.1f} MB ppl {rec['perplexity']:.2f} in LiteRT-LM "
                    f"(torch {rec['reference_perplexity']:.2f}), "
                    f"decode {rec['profile']['decode_tokens_per_s']['p50']:.1f} tokens/s")
            else:
                rec["skipped"] = f"LiteRT-LM runtime not installed: {litertlm.INSTALL_HINT}"
            out[name] = rec
        except Exception as e:  # record the error and go on
            out[name] = {"error": f"{type(e).__name__}: {e}"[:2000]}
            log(f"{name}: FAILED {type(e).__name__}: {str(e)[:300]}")
    from edgekd.lm.phone import attached_phone, phone_figures

    serial = attached_phone()
    out["phones"] = {t: phone_figures(t, {n: tmp / n for n in out if "error" not in out[n] and
                                          not n.endswith(".litertlm")},
                                      student.config.to_dict(), prompt_len=seq_len, decode_tokens=16, serial=serial)
                     for t in ("pixel-8", "galaxy-s24")}
    out["torch"] = {"profile": profile_session(refs["fixed"], seq_len, decode_tokens=8, repeats=5)}
    out["torch.kv"] = {"profile": profile_session(refs["kv"], seq_len, decode_tokens=16, repeats=5)}
    return out


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    from edgekd.lm.evaluate import perplexity
    from edgekd.lm.teacher import load_teacher
    from edgekd.lm.workflow import load_lm_data, teacher_signals, train_method

    mode = "quick" if args.quick else "medium" if args.medium else "full"
    cfg = dict({"quick": QUICK, "medium": MEDIUM, "full": FULL}[mode])
    cfg["steps"] = args.steps or cfg["steps"]
    cfg["seeds"] = args.seeds or cfg["seeds"]
    start = time.perf_counter()
    phases: dict[str, float] = {}
    log = lambda msg: print(f"[{time.perf_counter() - start:6.1f}s] {msg}", flush=True)  # noqa: E731

    def phase(name: str, t0: float) -> None:
        phases[name] = round(phases.get(name, 0.0) + time.perf_counter() - t0, 1)

    t0 = time.perf_counter()
    teacher, tok, fp = load_teacher(args.teacher)
    phase("teacher_load", t0)
    log(f"teacher {args.teacher} loaded ({fp})")
    t0 = time.perf_counter()
    data = load_lm_data(tok, seq_len=cfg["seq_len"], train_blocks=cfg["train_blocks"], eval_blocks=cfg["eval_blocks"])
    phase("data", t0)
    names = args.methods.split(",") if args.methods else (QUICK_METHODS if mode != "full" else METHODS)
    methods = [get_method(m) for m in names]
    dtype = torch.bfloat16 if args.teacher_dtype == "bf16" else torch.float32
    signals = teacher_signals(teacher, tok, fp, data, topk=cfg["topk"], cache_root=work_cache() / "lm-topk",
                              seqkd_prompt=cfg["seqkd_prompt"] if any(m.text == "teacher" for m in methods) else None,
                              dtype=dtype, log=log)
    phases["teacher_cache"] = signals["cache_open_seconds"]
    phases["seqkd_text"] = signals.get("seqkd_seconds", 0.0)
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        teacher_ppl = {"ppl_heldout": perplexity(teacher, data.heldout), "ppl_ood": perplexity(teacher, data.ood),
                       "dtype": args.teacher_dtype}
    if dtype != torch.float32:  # the check that bf16 measures the same teacher
        teacher_ppl["ppl_heldout_fp32"] = perplexity(teacher, data.heldout)
    phase("teacher_perplexity", t0)
    log(f"teacher perplexity {teacher_ppl}")
    spec = StudentSpec(layers=args.layers, hidden=args.hidden or None)
    runs, best = [], None
    for seed in range(cfg["seeds"]):
        for m in methods:
            t0 = time.perf_counter()
            tc = LMTrainConfig(steps=cfg["steps"], batch_size=cfg["batch_size"], lr=LR[m.init],
                               warmup=max(1, cfg["steps"] // 10), seed=seed)
            student, rec = train_method(m, teacher, data, spec, tc, cache=signals["cache"],
                                        seqkd_blocks=signals["seqkd_blocks"])
            rec["wall_seconds"] = round(time.perf_counter() - t0, 1)
            phase("students", t0)
            runs.append(rec)
            log(f"seed {seed} {m.name}: held-out ppl {rec['ppl_heldout']:.1f} ood {rec['ppl_ood']:.1f} "
                f"({rec['train']['tokens']} tokens, {rec['train']['tokens_per_s']} tokens/s)")
            if m.name != "scratch_ce" and (best is None or rec["ppl_heldout"] < best[1]["ppl_heldout"]):
                best = (student, rec)
    t0 = time.perf_counter()
    init_study = run_init_study(teacher, data, signals, cfg, args, runs, log) \
        if args.init_study or mode == "full" else None
    phase("init_study", t0)
    summary = summarize(runs)
    files, samples = {}, []
    if best:
        from edgekd.lm.stages import samples as sample_generations

        t0 = time.perf_counter()
        samples = sample_generations(teacher, best[0], tok, data.heldout, prompts=2, prompt_len=16, new_tokens=24)
        phase("samples", t0)
    if best and not args.no_files:
        t0 = time.perf_counter()
        files = files_section(best[0], data, cfg["seq_len"], args.tflite or mode == "full", log, tokenizer=tok)
        phase("files", t0)
    result = {"bench": "lm", "mode": mode, "quick": args.quick, "config": cfg,
              "teacher": {"spec": args.teacher, "fingerprint": fp,
                          **teacher_ppl, "params": sum(p.numel() for p in teacher.parameters())},
              "student": spec.to_dict(), "lr": LR, "data": data.describe,
              "teacher_cache": signals["cache_meta"], "seqkd_tokens_per_s": signals.get("seqkd_tokens_per_s"),
              "runs": runs, "summary": summary, "init_study": init_study,
              "best": best[1]["method"] if best else None, "samples": samples, "files": files,
              "targets": targets(summary, files), "phases_seconds": phases,
              "wall_seconds": round(time.perf_counter() - start, 1), "threads": args.threads,
              "load_average": list(os.getloadavg())}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"lm{'' if mode == 'full' else '-' + mode}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    log(f"wrote {path}")
    print(json.dumps({"summary": summary, "targets": result["targets"], "phases_seconds": phases,
                      "wall_seconds": result["wall_seconds"]}, indent=2))
    return 0


def run_init_study(teacher, data, signals, cfg, args, runs, log) -> dict:
    """teacher_init_fkl_ce at the teacher's width (layer selection only) beside the projected student's run."""
    from edgekd.lm.workflow import train_method

    m = get_method("teacher_init_fkl_ce")
    tc = LMTrainConfig(steps=cfg["steps"], batch_size=cfg["batch_size"], lr=LR["teacher"],
                       warmup=max(1, cfg["steps"] // 10), seed=0)
    _, wide = train_method(m, teacher, data, StudentSpec(layers=args.layers, hidden=None), tc,
                           cache=signals["cache"], seqkd_blocks=None)
    projected = next((r for r in runs if r["method"] == m.name and r["seed"] == 0), None)
    log(f"init study: layer selection at teacher width ({wide['params']} params) held-out ppl "
        f"{wide['ppl_heldout']:.1f}; projected {projected and round(projected['ppl_heldout'], 1)}")
    return {"layer_selection_teacher_width": wide, "projection": projected}


def _spread(values: list[float]) -> dict:
    """mean, sample standard deviation (None for one value), min, max and the values themselves."""
    mean = sum(values) / len(values)
    std = (sum((v - mean) ** 2 for v in values) / (len(values) - 1)) ** 0.5 if len(values) > 1 else None
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "values": values}


def summarize(runs: list[dict]) -> dict:
    """Per method: held-out and Moby-Dick perplexity over seeds (mean, std, min, max, per-seed values) and, paired by
    seed with scratch_ce, the held-out reduction vs scratch."""
    by: dict[str, list[dict]] = {}
    for r in runs:
        by.setdefault(r["method"], []).append(r)
    scratch = {r["seed"]: r["ppl_heldout"] for r in by.get("scratch_ce", [])}
    out = {}
    for m, rs in by.items():
        held, ood = _spread([r["ppl_heldout"] for r in rs]), _spread([r["ppl_ood"] for r in rs])
        out[m] = {"ppl_heldout_mean": held["mean"], "ppl_ood_mean": ood["mean"], "ppl_heldout": held,
                  "ppl_ood": ood, "seeds": len(rs), "train_tokens": rs[0]["train"]["tokens"],
                  "train_tokens_per_s": sum(r["train"]["tokens_per_s"] for r in rs) / len(rs)}
        if m != "scratch_ce" and all(r["seed"] in scratch for r in rs):
            out[m]["reduction_vs_scratch"] = _spread([1 - r["ppl_heldout"] / scratch[r["seed"]] for r in rs])
    return out


def targets(summary: dict, files: dict) -> dict:
    out = {}
    if "scratch_ce" in summary and len(summary) > 1:
        scratch = summary["scratch_ce"]["ppl_heldout_mean"]
        best_name = min((m for m in summary if m != "scratch_ce"), key=lambda m: summary[m]["ppl_heldout_mean"])
        gain = 1 - summary[best_name]["ppl_heldout_mean"] / scratch
        per_seed = summary[best_name].get("reduction_vs_scratch", {}).get("values", [])
        out["kd_vs_scratch"] = {"best": best_name, "reduction": round(gain, 4), "target": 0.15, "met": gain >= 0.15,
                                "reduction_per_seed": [round(g, 4) for g in per_seed],
                                "met_every_seed": bool(per_seed) and min(per_seed) >= 0.15}
    for fmt in ("onnx", "kv.onnx", "tflite", "kv.tflite", "litertlm"):
        fp, q = files.get(f"student.{fmt}", {}), files.get(f"student.int8.{fmt}", {})
        if "perplexity" in fp and "perplexity" in q:
            rel = q["perplexity"] / fp["perplexity"] - 1
            out[f"int8_{fmt.replace('.', '_')}_vs_fp32"] = {"relative": round(rel, 4), "target": 0.03,
                                                            "met": abs(rel) <= 0.03}
    return out


if __name__ == "__main__":
    raise SystemExit(main())
