"""The causal_lm task's stage functions, `fn(ctx) -> (outputs, metrics)` (declared in edgekd/lm/stage.py).

teacher: tokenizes the text (train / held-out / out-of-domain blocks saved as .npy), builds the teacher's top-k
cache (shared across runs under ~/.cache/edgekd/lm-topk, keyed by teacher, tokenizer, blocks and k), writes the
sequence-level KD text when the method trains on it, and measures the teacher's perplexity.
distill: builds the student (scratch or from the teacher), trains it, saves it as an HF-format folder, and writes
sample generations of teacher and student for the same prompts.
export: fixed-length and KV-cache .onnx / .tflite files, plus their int8 dynamic-range copies (`quantize.enabled`);
a converter failure is recorded with its exact message and the other files go on.
verify / profile: each file in its own runtime (edgekd.lm.verify, edgekd.lm.profile). report: report.md + JSON.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    from edgekd.pipeline import RunContext

Result = tuple[dict[str, Path], dict[str, Any]]
_TEACHERS: dict[str, tuple] = {}  # one teacher load per process (teacher and distill stages of one run)


def _teacher(spec: str):
    from edgekd.lm.teacher import load_teacher

    if spec not in _TEACHERS:
        _TEACHERS.clear()
        _TEACHERS[spec] = load_teacher(spec)
    return _TEACHERS[spec]


def _blocks(ctx: "RunContext", key: str) -> torch.Tensor | None:
    rec = ctx.record("teacher")
    return torch.from_numpy(np.load(rec.path(ctx.run_dir, key))) if key in rec.outputs else None


def _data(ctx: "RunContext"):
    from edgekd.lm.workflow import LMData

    return LMData(_blocks(ctx, "train"), _blocks(ctx, "heldout"), _blocks(ctx, "ood"))


def run_teacher(ctx: "RunContext") -> Result:
    from edgekd.lm.assets import work_cache
    from edgekd.lm.evaluate import perplexity
    from edgekd.lm.recipe import method_of
    from edgekd.lm.workflow import load_lm_data, teacher_signals

    r, out = ctx.recipe, ctx.stage_dir("teacher")
    teacher, tok, fp = _teacher(r.teacher.path)
    d = r.data
    data = load_lm_data(tok, source=d.source, seq_len=d.seq_len, train_blocks=d.train_blocks,
                        eval_blocks=d.eval_blocks, heldout_last=d.heldout_last, ood=d.ood, max_chars=d.max_chars)
    method = method_of(r)
    sig = teacher_signals(teacher, tok, fp, data, topk=r.teacher.topk, cache_root=work_cache() / "lm-topk",
                          seqkd_prompt=r.teacher.seqkd_prompt if method.text == "teacher" else None, log=ctx.log)
    outputs = {}
    for key, blocks in (("train", data.train), ("heldout", data.heldout), ("ood", data.ood),
                        ("seqkd", sig["seqkd_blocks"])):
        if blocks is not None:
            np.save(out / f"{key}.npy", blocks.numpy())
            outputs[key] = out / f"{key}.npy"
    tok.save_pretrained(out / "tokenizer")
    outputs["tokenizer"] = out / "tokenizer" / "tokenizer.json"
    metrics = {"teacher": r.teacher.path, "fingerprint": fp, "data": data.describe, "cache": sig["cache_meta"],
               "cache_path": str(sig["cache"].path), "seqkd_tokens_per_s": sig.get("seqkd_tokens_per_s"),
               "params": sum(p.numel() for p in teacher.parameters()),
               "ppl_heldout": perplexity(teacher, data.heldout)}
    if data.ood is not None:
        metrics["ppl_ood"] = perplexity(teacher, data.ood)
    ctx.log(f"teacher: held-out perplexity {metrics['ppl_heldout']:.2f}")
    return outputs, metrics


def run_distill(ctx: "RunContext") -> Result:
    from edgekd.lm.recipe import method_of
    from edgekd.lm.student import StudentSpec
    from edgekd.lm.topk_cache import TopKCache
    from edgekd.lm.train import LMTrainConfig
    from edgekd.lm.workflow import train_method

    r, out = ctx.recipe, ctx.stage_dir("distill")
    teacher, tok, _ = _teacher(r.teacher.path)
    method = method_of(r)
    s = r.student
    spec = StudentSpec(s.layers, s.hidden, s.heads, s.kv_heads, s.intermediate, s.init)
    cfg = LMTrainConfig(steps=r.distill.steps, batch_size=r.distill.batch_size, lr=r.distill.lr,
                        warmup=r.distill.warmup, seed=r.seed)
    cache = TopKCache.open(Path(ctx.record("teacher").metrics["cache_path"])) if method.needs_cache else None
    student, record = train_method(method, teacher, _data(ctx), spec, cfg, cache=cache,
                                   seqkd_blocks=_blocks(ctx, "seqkd"), log=ctx.log)
    student.save_pretrained(out / "student", safe_serialization=True)
    record["samples"] = samples(teacher, student, tok, _blocks(ctx, "heldout"))
    ctx.log(f"distill: {method.name} held-out perplexity {record['ppl_heldout']:.2f}")
    return {"config": out / "student" / "config.json", "weights": out / "student" / "model.safetensors"}, record


def samples(teacher, student, tok, heldout: torch.Tensor, prompts: int = 2, prompt_len: int = 16,
            new_tokens: int = 24) -> list[dict[str, str]]:
    """Greedy continuations of the same held-out prompts by teacher and student, as text."""
    from edgekd.lm.evaluate import greedy

    out = []
    for block in heldout[:prompts]:
        prompt = block[None, :prompt_len]
        out.append({"prompt": tok.decode(prompt[0]),
                    "teacher": tok.decode(greedy(teacher, prompt, new_tokens)[0, prompt_len:]),
                    "student": tok.decode(greedy(student, prompt, new_tokens)[0, prompt_len:])})
    return out


def load_student(ctx: "RunContext"):
    from edgekd.lm.teacher import import_transformers

    folder = ctx.record("distill").path(ctx.run_dir, "config").parent
    return import_transformers().LlamaForCausalLM.from_pretrained(folder).float().eval()


def run_export(ctx: "RunContext") -> Result:
    from edgekd.lm import export as ex

    r, out = ctx.recipe, ctx.stage_dir("export")
    student, e = load_student(ctx), r.export
    makers: dict[str, Any] = {}
    for fmt in e.formats:
        fixed = (lambda p, f=fmt: (ex.export_onnx if f == "onnx" else ex.export_tflite)(student, r.data.seq_len, p))
        makers[f"student.{fmt}"] = fixed
        if e.kv_cache:
            makers[f"student.kv.{fmt}"] = ((lambda p: ex.export_onnx_kv(student, e.cache_len, p)) if fmt == "onnx"
                                           else (lambda p: ex.export_tflite_kv(student, e.cache_len, e.prefill_len, p)))
    if r.quantize.enabled:
        for name in list(makers):
            quant = ex.quantize_onnx_int8 if name.endswith(".onnx") else ex.quantize_tflite_int8
            makers[name.replace("student.", "student.int8.")] = (lambda p, n=name, q=quant: q(out / n, p))
    outputs, files, errors = {}, [], {}
    for name, make in makers.items():
        t0 = time.perf_counter()
        try:
            path = make(out / name)
        except Exception as err:  # the converter's own message is the useful part: record it, go on
            errors[name] = f"{type(err).__name__}: {err}"[:4000]
            ctx.log(f"export: {name} FAILED: {errors[name][:200]}")
            continue
        outputs[name] = path
        files.append({"name": name, "bytes": path.stat().st_size, "seconds": round(time.perf_counter() - t0, 1),
                      "precision": "int8" if ".int8." in name else "fp32", "kv_cache": ".kv." in name})
        ctx.log(f"export: {name} ({path.stat().st_size / 1e6:.1f} MB)")
    for kv_name in ("student.kv.tflite", "student.int8.kv.tflite"):   # the LiteRT-LM containers
        if kv_name not in outputs:
            continue
        name = kv_name.replace(".kv.tflite", ".litertlm")
        try:
            tok = ctx.record("teacher").path(ctx.run_dir, "tokenizer")
            eos = student.config.eos_token_id
            outputs[name] = ex.package_litertlm(
                outputs[kv_name], tok, out / name, context_length=e.cache_len,
                stop_token_ids=[eos] if isinstance(eos, int) else list(eos or []))
            files.append({"name": name, "bytes": outputs[name].stat().st_size,
                          "precision": "int8" if ".int8." in name else "fp32", "kv_cache": True})
        except Exception as err:
            errors[name] = f"{type(err).__name__}: {err}"[:4000]
    return outputs, {"files": files, "errors": errors}


def _reference(student, session, r):
    from edgekd.lm.decoder import CachedLM, FixedLengthLM
    from edgekd.lm.runtime import TorchSession

    if session.kind == "kv":
        return TorchSession(CachedLM(student, r.export.cache_len), "kv")
    return TorchSession(FixedLengthLM(student, r.data.seq_len), "fixed")


def runnable(outputs) -> list[str]:
    """Exported files a runtime here executes through edgekd.lm.runtime (the .litertlm goes to LiteRT-LM, below)."""
    return [n for n in outputs if n.endswith((".onnx", ".tflite"))]


def _litertlm_skipped() -> dict[str, str]:
    from edgekd.lm.litertlm import INSTALL_HINT

    return {"runtime": "litert-lm (not run here)", "skipped": f"LiteRT-LM runtime not installed: {INSTALL_HINT}"}


def run_verify(ctx: "RunContext") -> Result:
    from edgekd.lm.runtime import open_lm_session
    from edgekd.lm.verify import verify_file

    r, student, heldout = ctx.recipe, load_student(ctx), _blocks(ctx, "heldout")
    rec, results = ctx.record("export"), {}
    for name in runnable(rec.outputs):
        session = open_lm_session(rec.path(ctx.run_dir, name))
        results[name] = verify_file(session, _reference(student, session, r), heldout, new_tokens=r.verify.new_tokens,
                                    prompt_len=r.verify.prompt_len)
        ctx.log(f"verify: {name} perplexity {results[name]['perplexity']:.2f} "
                f"(torch {results[name]['reference_perplexity']:.2f}), greedy {results[name]['greedy_agreement']:.2f}")
    for name in [n for n in rec.outputs if n.endswith(".litertlm")]:
        from edgekd.lm import litertlm
        from edgekd.lm.decoder import CachedLM
        from edgekd.lm.runtime import TorchSession

        results[name] = _litertlm_skipped() if not litertlm.available() else litertlm.verify_litertlm(
            rec.path(ctx.run_dir, name), TorchSession(CachedLM(student, r.export.cache_len), "kv"), heldout,
            new_tokens=r.verify.new_tokens, prompt_len=r.verify.prompt_len)
        ctx.log(f"verify: {name} " + (results[name].get("skipped") or
                                      f"perplexity {results[name]['perplexity']:.2f} in LiteRT-LM (torch "
                                      f"{results[name]['reference_perplexity']:.2f}), greedy "
                                      f"{results[name]['greedy_agreement']:.2f}"))
    for name, res in results.items():
        if ".int8." in name and "perplexity" in results.get(name.replace(".int8.", "."), {}) and "perplexity" in res:
            rel = res["perplexity"] / results[name.replace(".int8.", ".")]["perplexity"] - 1
            res["ppl_vs_fp32"] = rel
            res["within_tolerance"] = abs(rel) <= r.verify.int8_ppl_tolerance
    out = ctx.stage_dir("verify") / "verify.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    return {"verify": out}, {"files": results}


def run_profile(ctx: "RunContext") -> Result:
    from edgekd.lm.decoder import FixedLengthLM
    from edgekd.lm.phone import attached_phone, phone_figures
    from edgekd.lm.profile import peak_memory, profile_session
    from edgekd.lm.runtime import TorchSession, open_lm_session

    r, rec, p = ctx.recipe, ctx.record("export"), ctx.recipe.profile
    torch.set_num_threads(p.threads)
    student = load_student(ctx)
    results = {"torch": profile_session(TorchSession(FixedLengthLM(student, r.data.seq_len), "fixed"),
                                        p.prompt_len, p.decode_tokens, p.repeats)}
    for name in runnable(rec.outputs):
        path = rec.path(ctx.run_dir, name)
        session = open_lm_session(path, threads=p.threads)
        results[name] = profile_session(session, p.prompt_len, p.decode_tokens, p.repeats)
        if p.memory:
            results[name]["memory"] = peak_memory(path, results[name]["prompt_len"], p.decode_tokens, p.threads)
        ctx.log(f"profile: {name} TTFT {results[name]['ttft_ms']['p50']:.1f} ms, decode "
                f"{results[name]['decode_tokens_per_s']['p50']:.1f} tokens/s"
                + (f", peak RSS {results[name]['memory'].get('peak_rss_mb')} MB" if p.memory else ""))
    for name in [n for n in rec.outputs if n.endswith(".litertlm")]:
        from edgekd.lm import litertlm

        if litertlm.available():
            path = rec.path(ctx.run_dir, name)
            results[name] = litertlm.profile_litertlm(path, r.export.prefill_len, p.decode_tokens, p.repeats, p.threads)
            if p.memory:
                results[name]["memory"] = peak_memory(path, r.export.prefill_len, p.decode_tokens, p.threads)
            ctx.log(f"profile: {name} in LiteRT-LM TTFT {results[name]['ttft_ms']['p50']:.1f} ms, decode "
                    f"{results[name]['decode_tokens_per_s']['p50']:.1f} tokens/s")
        else:
            results[name] = _litertlm_skipped()
    serial = attached_phone() if p.phones else None
    files = {n: rec.path(ctx.run_dir, n) for n in runnable(rec.outputs)}
    phones = {t: phone_figures(t, files, student.config.to_dict(), prompt_len=p.prompt_len,
                               decode_tokens=p.decode_tokens, serial=serial) for t in p.phones}
    for t, figs in phones.items():
        for name, f in figs.items():
            ctx.log(f"profile: {name} on {t}: {f['source'].upper()} decode "
                    f"{f.get('decode_tokens_per_s', float('nan')):.1f} tokens/s")
    out = ctx.stage_dir("profile") / "profile.json"
    out.write_text(json.dumps({"files": results, "phones": phones}, indent=2) + "\n")
    return {"profile": out}, {"target": "cpu-local", "threads": p.threads, "files": results, "phones": phones,
                              "phone_attached": serial}


def run_bundle(ctx: "RunContext") -> Result:
    """The Android-ready archive (edgekd.lm.bundle): device files, tokenizer, lm_config, model card, manifest."""
    from edgekd.bundle import archive_record
    from edgekd.lm.bundle import bundle_lm_run

    b = ctx.recipe.bundle
    path, names = bundle_lm_run(ctx.run_dir, ctx.stage_dir("bundle"), recipe=ctx.recipe)
    ctx.log(f"bundle: {path.name} ({path.stat().st_size / 1e6:.1f} MB, {len(names)} model files)")
    record = archive_record(path, b.target, f"bundle/{path.name}")  # where publish puts it
    return {path.name: path}, {"archives": [record], "files": names}


def run_report(ctx: "RunContext") -> Result:
    from edgekd.lm.report import write_report

    out = ctx.stage_dir("report")
    records = {name: ctx.record(name) for name in ("teacher", "distill", "export", "verify", "profile", "bundle")
               if (ctx.run_dir / name / "stage.json").is_file() or name in ctx.records}
    return write_report(out, ctx.recipe, {k: v.metrics for k, v in records.items()})
