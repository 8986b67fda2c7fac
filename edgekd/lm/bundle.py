"""The causal-LM bundle: an Android-ready archive with the on-device files (the `.litertlm`, the KV-cache
`.tflite` files, and the KV-cache `.onnx` files for ONNX Runtime Mobile), the tokenizer (`tokenizer.json`),
`lm_config.json` (how to drive each file: inputs, cache, special tokens), a model card (teacher, data,
perplexities, tokens/s, memory) and the shared manifest (sha256 and size of every file, optional Ed25519
signature), written and checked by edgekd.bundle's own code (`write_archive`, and `verify_bundle` with the
manifest's `kind: causal_lm` dispatching to the checks here): `edgekd bundle verify ARCHIVE [--key PUB.pem]`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from edgekd.bundle.archive import BUNDLE_FORMAT, write_archive
from edgekd.bundle.verify import BundleKind, BundleReport, _read_member, register_bundle_kind
from edgekd.errors import EdgeKDError

KIND = "causal_lm"
TOKENIZER, LM_CONFIG = "tokenizer.json", "lm_config.json"
MODEL_SUFFIXES = (".litertlm", ".tflite", ".onnx")


def device_files(names) -> list[str]:
    """The exported files a phone app generates with: the .litertlm and the KV-cache .tflite / .onnx files."""
    return [n for n in names if n.endswith(".litertlm") or (".kv." in n and n.endswith((".tflite", ".onnx")))]


def describe_file(path: Path) -> dict[str, Any]:
    """How to drive one file (for lm_config.json), read from the file itself."""
    if path.suffix == ".litertlm":
        return {"runtime": "litert-lm", "layout": "LiteRT-LM container: the KV-cache .tflite + tokenizer + LLM "
                                                  "metadata (see the .kv.tflite entry for its signatures); runs "
                                                  "in the LiteRT-LM runtime (Engine / Session API)"}
    from edgekd.lm.runtime import open_lm_session

    s = open_lm_session(path)
    if path.suffix == ".tflite":
        cache = f"float32 {list(s.cache_shape)} per layer i < {getattr(s, 'layers', 0)}" if s.kind == "kv" else ""
        return {"runtime": "litert", "layout": "litert_lm_kv_cache" if s.kind == "kv" else "fixed_length",
                "signatures": {f"prefill_{s.prefill_len}": {"tokens": f"int32 (1, {s.prefill_len})",
                                                            "input_pos": f"int32 ({s.prefill_len},)",
                                                            "kv_cache_k_<i>": cache, "kv_cache_v_<i>": cache,
                                                            "outputs": "logits (1, S, vocab), kv_cache_k_<i>, "
                                                                       "kv_cache_v_<i>"},
                               "decode": {"tokens": "int32 (1, 1)", "input_pos": "int32 (1,)",
                                          "kv_cache_k_<i>": cache, "kv_cache_v_<i>": cache,
                                          "outputs": "as prefill"}}
                if s.kind == "kv" else {"ids": f"int32 (1, {s.seq_len})", "logits": "float32 (1, T, vocab)"},
                "cache_len": s.max_len, "prefill_len": s.prefill_len}
    return {"runtime": "onnxruntime", "layout": "past_key_values" if s.kind == "kv" else "fixed_length",
            "inputs": [i.name for i in s.sess.get_inputs()], "outputs": [o.name for o in s.sess.get_outputs()],
            "max_len": s.max_len}


def make_lm_bundle(files: dict[str, Path], tokenizer_json: Path, card: dict[str, Any], out_path: str | Path, *,
                   name: str, version: str = "0.1.0", target: str = "android", special_tokens: dict[str, Any],
                   signing_key: str | Path | None = None) -> Path:
    """Write the LM bundle zip (see the module docstring) and return its path.

    files: {archive name: path} of the device files; card: the model-card dict (see `card_from_lm_run`).
    """
    from edgekd.bundle.archive import _SAFE

    if not files:
        raise EdgeKDError("no device files to bundle (.litertlm or KV-cache .tflite/.onnx): run the export stage "
                          "with export.kv_cache: true")
    for arc, path in files.items():
        if not _SAFE.match(arc) or not arc.endswith(MODEL_SUFFIXES):
            raise EdgeKDError(f"bundle file name {arc!r}: letters, digits, '_', '.', '+', '-' and a model suffix "
                              f"{MODEL_SUFFIXES}")
        if not Path(path).is_file():
            raise EdgeKDError(f"bundle file {arc!r} not found at {path}; re-run the export stage")
    if not Path(tokenizer_json).is_file():
        raise EdgeKDError(f"tokenizer.json not found at {tokenizer_json}; re-run the teacher stage")
    config = {"format": "edgekd-lm-config/1", "vocab_size": _vocab_size(Path(tokenizer_json).read_bytes()),
              **special_tokens, "files": {f"models/{a}": describe_file(Path(p)) for a, p in files.items()}}
    card = {**card, "name": name, "version": version, "target": target}
    entries: dict[str, bytes | Path] = {f"models/{a}": Path(p) for a, p in files.items()}
    entries[TOKENIZER] = Path(tokenizer_json)
    entries[LM_CONFIG] = (json.dumps(config, indent=2) + "\n").encode()
    entries["model_card.json"] = (json.dumps(card, indent=2, default=str) + "\n").encode()
    entries["model_card.md"] = card_markdown(card).encode()
    entries["README.md"] = readme(name, version, target, sorted(files)).encode()
    head = {"format": BUNDLE_FORMAT, "kind": KIND, "name": name, "version": version, "target": target}
    return write_archive(entries, head, out_path, signing_key=signing_key)


def _vocab_size(tokenizer_bytes: bytes) -> int:
    """Token ids a tokenizer.json can produce: its model vocabulary plus added tokens."""
    tok = json.loads(tokenizer_bytes)
    vocab = tok.get("model", {}).get("vocab")
    if not isinstance(vocab, dict) or not vocab:
        raise EdgeKDError("tokenizer.json has no model.vocab mapping")
    ids = set(vocab.values()) | {t.get("id") for t in tok.get("added_tokens", []) if isinstance(t, dict)}
    return max(i for i in ids if isinstance(i, int)) + 1


def readme(name: str, version: str, target: str, files: list[str]) -> str:
    litertlm = next((f for f in files if f.endswith(".litertlm")), None)
    tflite = [f for f in files if f.endswith(".tflite")]
    onnx = [f for f in files if f.endswith(".onnx")]
    lines = [f"# {name} {version} for {target}", "",
             "A small causal language model distilled with edgekd. model_card.md has the teacher, data, "
             "perplexities and tokens/s (which figures are measured and which are predicted); lm_config.json how "
             "to drive each file; manifest.json every file's sha256 and size.", "", "## Contents", ""]
    if litertlm:
        lines.append(f"- `models/{litertlm}`: LiteRT-LM container (KV-cache model, tokenizer, LLM metadata). Push "
                     f"it to the phone (`adb push models/{litertlm} /data/local/tmp/`) or download it at first "
                     "launch; it is too large for APK assets. Run it with LiteRT-LM (Engine + Session on the CPU "
                     "backend; edgekd verified and profiled it in LiteRT-LM's Python runtime, litert-lm-api).")
    for f in tflite:
        lines.append(f"- `models/{f}`: LiteRT model with `prefill_<P>` and `decode` signatures over an external KV "
                     "cache in the LiteRT-LM layout (`tokens`, `input_pos`, `kv_cache_k_<i>`/`kv_cache_v_<i>`); "
                     "run with the LiteRT `Interpreter` (the prefill signature once, then `\"decode\"` once per "
                     "token), feeding back the returned caches.")
    for f in onnx:
        lines.append(f"- `models/{f}`: ONNX decoder in the Hugging Face past-key-values layout (`input_ids`, "
                     "`attention_mask`, `position_ids`, `past_key_values.N.key/value` -> `logits`, "
                     "`present.N.key/value`), for ONNX Runtime Mobile or an onnxruntime-genai-style loop.")
    lines += [f"- `{TOKENIZER}`: the Hugging Face tokenizer (shared with the teacher).",
              f"- `{LM_CONFIG}`: vocabulary size, special token ids, each file's inputs and cache length.", "",
              "Check the archive with `edgekd bundle verify ARCHIVE.zip [--key PUBLIC.pem]`: checksums, signature, "
              "tokenizer, and one prefill + decode step of every runnable file.", ""]
    return "\n".join(lines)


def card_markdown(card: dict[str, Any]) -> str:
    """model_card.md from the card dict (so both always say the same)."""
    t, s = card.get("teacher", {}), card.get("student", {})
    lines = [f"# {card['name']} {card['version']}", "", card.get("description", ""), "",
             f"- Target: **{card.get('target')}**",
             f"- Teacher: `{t.get('path')}` ({_n(t.get('params'))} parameters, fingerprint {t.get('fingerprint')}): "
             f"held-out perplexity {_f(t.get('ppl_heldout'))}, out-of-domain {_f(t.get('ppl_ood'))}",
             f"- Student: {s.get('method')} (init {s.get('init')}), {_n(s.get('params'))} parameters: held-out "
             f"perplexity {_f(s.get('ppl_heldout'))}, out-of-domain {_f(s.get('ppl_ood'))}; trained on "
             f"{_n(s.get('train_tokens'))} tokens",
             f"- Data: {json.dumps(card.get('data', {}), default=str)}", "",
             "## Files (measured on the build machine, cpu-local, each in its own runtime)", "",
             "| file | MB | runtime | perplexity | greedy agreement | TTFT ms p50 | prefill tok/s p50 | "
             "decode tok/s p50/p90 | peak RSS MB |", "|---|---|---|---|---|---|---|---|---|"]
    for f in card.get("files", []):
        d = f.get("decode_tokens_per_s") or {}
        lines.append(f"| {f['name']} | {f['bytes'] / 1e6:.1f} | {f.get('runtime', '—')} | {_f(f.get('perplexity'))} | "
                     f"{_f(f.get('greedy_agreement'))} | {_f(f.get('ttft_ms'), '.1f')} | "
                     f"{_f(f.get('prefill_tokens_per_s'), '.0f')} | {_f(d.get('p50'), '.1f')} / "
                     f"{_f(d.get('p90'), '.1f')} | {_f(f.get('peak_rss_mb'), '.0f')} |")
    phones = card.get("phones", [])
    if phones:
        lines += ["", "## Phones", "", "| file | target | source | TTFT ms | prefill tok/s | decode tok/s |",
                  "|---|---|---|---|---|---|"]
        for p in phones:
            src = "**PREDICTED** (not measured)" if p.get("source") == "predicted" else f"measured on {p.get('device')}"
            lines.append(f"| {p['file']} | {p['target']} | {src} | {_f(p.get('ttft_ms'), '.1f')} | "
                         f"{_f(p.get('prefill_tokens_per_s'), '.0f')} | {_f(p.get('decode_tokens_per_s'), '.1f')} |")
        assumptions = sorted({p["assumptions"] for p in phones if p.get("assumptions")})
        lines += [""] + [f"Predicted figures assume: {a}" for a in assumptions]
    for smp in card.get("samples", []):
        lines += ["", f"**Prompt** {smp['prompt']!r}", f"- teacher: {smp['teacher']!r}",
                  f"- student: {smp['student']!r}"]
    lines += ["", "## Limitations", ""] + [f"- {x}" for x in card.get("limitations", [])]
    return "\n".join(lines) + "\n"


def _f(x: Any, spec: str = ".2f") -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "—"


def _n(x: Any) -> str:
    return f"{x:,}" if isinstance(x, int) else "—"


LIMITATIONS = (
    "A tiny student trained on a small budget: far weaker than its teacher (compare the perplexities); it continues "
    "text in the style of its training data and is not an instruction-following assistant.",
    "Phone figures marked PREDICTED come from the target's peak figures and stated efficiencies, not from a device.",
    "The .litertlm is checked in LiteRT-LM's Python runtime (CPU, x86-64) when litert-lm-api is installed (the "
    "files table says which runtime measured each row); on a phone it has not been run here.",
)


def card_from_lm_run(metrics: dict[str, dict[str, Any]], files: list[str]) -> dict[str, Any]:
    """The card dict from the causal_lm stage metrics ({teacher, distill, export, verify, profile})."""
    t, d = metrics.get("teacher", {}), metrics.get("distill", {})
    ver, prof = metrics.get("verify", {}).get("files", {}), metrics.get("profile", {})
    sizes = {f["name"]: f["bytes"] for f in metrics.get("export", {}).get("files", [])}
    rows = []
    for name in files:
        v, p = ver.get(name, {}), prof.get("files", {}).get(name, {})
        runtime = v.get("runtime") or p.get("runtime") or ("litert-lm (not run here)" if name.endswith(".litertlm")
                                                            else None)
        rows.append({"name": name, "bytes": sizes.get(name, 0), "runtime": runtime,
                     "perplexity": v.get("perplexity"), "greedy_agreement": v.get("greedy_agreement"),
                     "max_abs_logit_diff": v.get("max_abs_logit_diff"), "ppl_vs_fp32": v.get("ppl_vs_fp32"),
                     "ttft_ms": (p.get("ttft_ms") or {}).get("p50"),
                     "prefill_tokens_per_s": (p.get("prefill_tokens_per_s") or {}).get("p50"),
                     "decode_tokens_per_s": p.get("decode_tokens_per_s"),
                     "peak_rss_mb": (p.get("memory") or {}).get("peak_rss_mb")})
    phones = [{"file": f, **rec} for tgt in prof.get("phones", {}).values() for f, rec in tgt.items()
              if f in files or f.replace(".litertlm", ".kv.tflite") in files]
    return {"description": "Causal language model distilled with edgekd (shares the teacher's tokenizer).",
            "teacher": {"path": t.get("teacher"), "fingerprint": t.get("fingerprint"), "params": t.get("params"),
                        "ppl_heldout": t.get("ppl_heldout"), "ppl_ood": t.get("ppl_ood")},
            "student": {"method": d.get("method"), "init": d.get("init"), "params": d.get("params"),
                        "ppl_heldout": d.get("ppl_heldout"), "ppl_ood": d.get("ppl_ood"),
                        "train_tokens": (d.get("train") or {}).get("tokens")},
            "data": t.get("data", {}), "files": rows, "phones": phones, "samples": d.get("samples", []),
            "limitations": list(LIMITATIONS)}


def bundle_lm_run(run_dir: str | Path, out_dir: str | Path, *, recipe=None, target: str | None = None,
                  name: str | None = None, version: str | None = None,
                  signing_key: str | Path | None = None) -> tuple[Path, list[str]]:
    """Bundle a causal_lm run directory (its teacher, distill, export, verify, profile records) into
    out_dir/<name>-<target>.zip; arguments left None come from the recipe's `bundle` section."""
    from edgekd.runs import load_run

    run = load_run(run_dir)
    recipe = recipe or run.recipe
    if recipe is None:
        raise EdgeKDError(f"{run.root}: recipe.yaml is missing; cannot tell the bundle's name and files")
    export = run.records.get("export")
    if export is None or run.records.get("teacher") is None:
        raise EdgeKDError(f"{run.root} has no teacher/export records: run the causal_lm pipeline first")
    b = recipe.bundle
    names = device_files(export.outputs)
    metrics = {n: run.metrics(n) for n in ("teacher", "distill", "export", "verify", "profile")}
    distill = run.records.get("distill")
    student_config = distill.path(run.root, "config") if distill else None
    eos = json.loads(student_config.read_text()).get("eos_token_id") if student_config else None
    name = name or b.model_name or recipe.name
    target = target or b.target
    path = make_lm_bundle({n: export.path(run.root, n) for n in names},
                          run.records["teacher"].path(run.root, "tokenizer"), card_from_lm_run(metrics, names),
                          Path(out_dir) / f"{name}-{target}.zip", name=name, version=version or b.version,
                          target=target, signing_key=signing_key or b.signing_key,
                          special_tokens={"eos_token_ids": [eos] if isinstance(eos, int) else list(eos or [])})
    return path, names


# ---- verification (edgekd.bundle.verify dispatches here for manifest kind 'causal_lm') ----

def _check_members(report: BundleReport, zf, digests, small, manifest, limits):
    if TOKENIZER not in digests:
        report.problems.append(f"{TOKENIZER} is missing: the app cannot tokenize without it")
        vocab = None
    else:
        try:
            vocab = _vocab_size(_read_member(zf, zf.getinfo(TOKENIZER), limits))
        except (ValueError, EdgeKDError) as e:
            report.problems.append(f"{TOKENIZER} does not parse as a Hugging Face tokenizer ({e})")
            vocab = None
    config: dict[str, Any] = {}
    if LM_CONFIG not in digests:
        report.problems.append(f"{LM_CONFIG} is missing")
    else:
        try:
            config = json.loads(_read_member(zf, zf.getinfo(LM_CONFIG), limits))
        except ValueError as e:
            report.problems.append(f"{LM_CONFIG} is not valid JSON ({e})")
    if vocab is not None and config.get("vocab_size") not in (None, vocab):
        report.problems.append(f"{LM_CONFIG} says vocab_size {config.get('vocab_size')}, {TOKENIZER} has {vocab}")
    models = sorted(n for n in digests if n.startswith("models/") and n.endswith(MODEL_SUFFIXES))
    if not models:
        report.problems.append(f"no model files ({', '.join(MODEL_SUFFIXES)}) under models/")
    for name in models:
        report.metadata[name] = (config.get("files") or {}).get(name, {})
        if name not in (config.get("files") or {}):
            report.problems.append(f"{name}: not described in {LM_CONFIG}")
        if name.endswith(".litertlm"):
            with zf.open(name) as f:
                magic = f.read(8)
            if magic != b"LITERTLM":
                report.problems.append(f"{name}: does not start with the LiteRT-LM magic 'LITERTLM' (got {magic!r})")
    return (models, vocab or config.get("vocab_size")) if models else None


def _run_models(report: BundleReport, root: Path, state) -> None:
    """One prefill and one decode step (KV-cache files) or one forward (fixed-length) per runnable file."""
    from edgekd.lm.runtime import empty_cache, open_lm_session

    models, vocab = state
    for name in models:
        row: dict[str, Any] = {"name": name, "ok": False}
        report.models.append(row)
        if name.endswith(".litertlm"):
            _run_litertlm(report, root / name, row)
            continue
        try:
            s = open_lm_session(root / name)
            if s.kind == "kv":
                n = s.prefill_len or 4
                ids = (np.arange(n) % max(vocab or 2, 2))[None]
                k, v = empty_cache(s)
                logits, k, v = s.step(ids, np.arange(n), k, v)
                logits, _, _ = s.step(ids[:, :1], np.asarray([n]), k, v)
            else:
                ids = (np.arange(s.seq_len) % max(vocab or 2, 2))[None]
                logits = s.forward(ids)
        except Exception as e:  # a runtime's own error types: report, keep checking the others
            report.problems.append(f"{name}: inference failed ({type(e).__name__}: {str(e).splitlines()[0]})")
            continue
        row.update(runtime=s.runtime, input_shape=list(ids.shape), output_shape=list(np.shape(logits)))
        if vocab and np.shape(logits)[-1] < vocab:  # larger is fine (padded embeddings); smaller loses tokens
            report.problems.append(f"{name}: logits over {np.shape(logits)[-1]} tokens, but the tokenizer has "
                                   f"{vocab}")
        elif not np.all(np.isfinite(logits)):
            report.problems.append(f"{name}: logits have NaN or inf")
        else:
            row["ok"] = True


def _run_litertlm(report: BundleReport, path: Path, row: dict[str, Any]) -> None:
    """Open the .litertlm in LiteRT-LM and generate a few tokens, when the runtime is installed; else the
    container check (magic) is all."""
    from edgekd.lm import litertlm

    if not litertlm.available():
        row.update(ok=True, runtime="litert-lm (container checked, not run here: litert-lm-api not installed)")
        return
    try:
        info = litertlm.profile_litertlm(path, prompt_len=4, decode_tokens=2, repeats=1)
    except EdgeKDError as e:
        report.problems.append(f"{path.name}: {e}")
        return
    row.update(ok=True, runtime="litert-lm", decode_tokens=info["timed_tokens"]["decode"])


register_bundle_kind(KIND, BundleKind(_check_members, _run_models))
