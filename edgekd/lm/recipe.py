"""The causal-LM recipe (`task: causal_lm`): the same top-level layout as the image recipe (name, seed, runs_dir,
one section per stage), with LM sections. Parsed with edgekd.config's typed builder, so an unknown or misspelt
field is reported with its closest match, every problem at once.

    task: causal_lm
    data:     {source: sotu | [my.txt, folder/, rows.jsonl], seq_len, train_blocks, eval_blocks, heldout_last, ood}
    teacher:  {path: smollm2 | model.gguf | hf_folder/, topk, seqkd_prompt}
    student:  {layers, hidden, heads, kv_heads, intermediate, init: scratch | teacher}
    distill:  {method: NAME | losses: [{name, weight, temperature, beta}], text: data | teacher, steps, batch_size, lr}
    quantize: {enabled}                    int8 dynamic-range copy of every exported file
    export:   {formats: [onnx, tflite], kv_cache, cache_len, prefill_len}
    verify:   {new_tokens, prompt_len}
    profile:  {prompt_len, decode_tokens, repeats, threads, memory, phones: [pixel-8, ...]}
    bundle:   {enabled, model_name, version, target, signing_key}   Android-ready archive (edgekd.lm.bundle)
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from edgekd.config import Recipe, _build, resolve_path
from edgekd.errors import ConfigError, EdgeKDError

TASK = "causal_lm"


@dataclass
class LMDataConfig:
    source: str | list[str] = "sotu"
    seq_len: int = 128
    train_blocks: int = 128
    eval_blocks: int = 8
    heldout_last: int = 10
    ood: bool = True                   # Moby-Dick perplexity too (needs the npm corpus)
    max_chars: int | None = 40_000     # text read per document (None: all)


@dataclass
class LMTeacherConfig:
    path: str = "smollm2"
    topk: int = 64
    seqkd_prompt: int = 32             # prompt tokens kept when the teacher writes sequence-level KD text


@dataclass
class LMStudentConfig:
    layers: int = 4
    hidden: int | None = 256
    heads: int | None = None
    kv_heads: int | None = None
    intermediate: int | None = None
    init: Literal["scratch", "teacher"] = "teacher"


@dataclass
class LMDistillConfig:
    method: str | None = "teacher_init_fkl_ce"
    losses: list[dict[str, Any]] | None = None
    text: Literal["data", "teacher"] = "data"
    steps: int = 200
    batch_size: int = 8
    lr: float = 5e-4
    warmup: int = 20


@dataclass
class LMQuantizeConfig:
    enabled: bool = True


@dataclass
class LMExportConfig:
    formats: list[Literal["onnx", "tflite"]] = field(default_factory=lambda: ["onnx", "tflite"])
    kv_cache: bool = True
    cache_len: int = 256
    prefill_len: int = 64


@dataclass
class LMVerifyConfig:
    new_tokens: int = 16
    prompt_len: int = 32
    int8_ppl_tolerance: float = 0.03


@dataclass
class LMProfileConfig:
    prompt_len: int = 64
    decode_tokens: int = 16
    repeats: int = 5
    threads: int = 1
    memory: bool = True                # peak RSS of each file in a child process
    phones: list[str] = field(default_factory=lambda: ["pixel-8", "galaxy-s24"])  # measured over adb if attached,
    #                                                                              else PREDICTED (marked so)


@dataclass
class LMBundleConfig:
    enabled: bool = True
    model_name: str | None = None      # default: the recipe name
    version: str = "0.1.0"
    target: str = "android"
    signing_key: str | None = None     # Ed25519 private key (PEM): the archive carries manifest.sig


@dataclass
class LMRecipe(Recipe):
    """A Recipe whose sections are the LM ones (it is a Recipe, so the pipeline runs it as any other)."""

    task: str = TASK
    data: LMDataConfig = field(default_factory=LMDataConfig)              # type: ignore[assignment]
    teacher: LMTeacherConfig = field(default_factory=LMTeacherConfig)     # type: ignore[assignment]
    student: LMStudentConfig = field(default_factory=LMStudentConfig)     # type: ignore[assignment]
    distill: LMDistillConfig = field(default_factory=LMDistillConfig)     # type: ignore[assignment]
    quantize: LMQuantizeConfig = field(default_factory=LMQuantizeConfig)  # type: ignore[assignment]
    export: LMExportConfig = field(default_factory=LMExportConfig)        # type: ignore[assignment]
    verify: LMVerifyConfig = field(default_factory=LMVerifyConfig)        # type: ignore[assignment]
    profile: LMProfileConfig = field(default_factory=LMProfileConfig)     # type: ignore[assignment]
    bundle: LMBundleConfig = field(default_factory=LMBundleConfig)        # type: ignore[assignment]

    def describe(self) -> str:
        """One line for `edgekd validate`."""
        s = self.student
        return (f"{self.name}: causal_lm on {self.data.source}, teacher {self.teacher.path}, student {s.layers} layers "
                f"x {s.hidden or 'teacher'} wide (init {s.init})")

    def problems(self) -> list[str]:
        """The dry run of an LM recipe (edgekd.validate.dry_run asks a task recipe for its own problems)."""
        return _checks(self)

    def resolve_paths(self, base: Path) -> None:
        """Relative teacher and text paths are read beside the recipe (then the working directory)."""
        if self.teacher.path != "smollm2":
            self.teacher.path = resolve_path(self.teacher.path, base)
        if self.bundle.signing_key:
            self.bundle.signing_key = resolve_path(self.bundle.signing_key, base)
        src = self.data.source
        if src not in ("sotu", "moby-dick"):
            self.data.source = [resolve_path(s, base) for s in ([src] if isinstance(src, str) else src)]


def parse_lm_recipe(data: dict[str, Any], source: str = "recipe") -> LMRecipe:
    """An LMRecipe from a mapping with `task: causal_lm`; ConfigError lists every problem."""
    problems: list[str] = []
    recipe = _build(LMRecipe, data, "", problems)
    problems += _checks(recipe)
    if problems:
        raise ConfigError(problems, source)
    return recipe


def _checks(r: LMRecipe) -> list[str]:
    problems = []
    for where, value, low in (("data.seq_len", r.data.seq_len, 8), ("data.train_blocks", r.data.train_blocks, 1),
                              ("data.eval_blocks", r.data.eval_blocks, 1), ("teacher.topk", r.teacher.topk, 1),
                              ("student.layers", r.student.layers, 1), ("distill.steps", r.distill.steps, 1),
                              ("distill.batch_size", r.distill.batch_size, 1)):
        if isinstance(value, int) and value < low:
            problems.append(f"{where}: must be >= {low}, got {value}")
    try:
        text = method_of(r).text
    except EdgeKDError as e:
        problems.append(f"distill: {e}")
        text = None
    if text == "teacher" and not 0 < r.teacher.seqkd_prompt < r.data.seq_len:
        problems.append(f"teacher.seqkd_prompt must be between 1 and data.seq_len - 1 ({r.data.seq_len - 1}), "
                        f"got {r.teacher.seqkd_prompt}")
    if r.export.kv_cache and r.export.prefill_len + r.verify.new_tokens > r.export.cache_len:
        problems.append(f"export.cache_len ({r.export.cache_len}) must hold prefill_len ({r.export.prefill_len}) "
                        f"+ verify.new_tokens ({r.verify.new_tokens})")
    if r.bundle.enabled and r.bundle.signing_key and not Path(r.bundle.signing_key).is_file():
        problems.append(f"bundle.signing_key: {r.bundle.signing_key} not found (edgekd bundle keygen KEY.pem makes one)")
    if r.profile.phones:
        from edgekd.profile.targets import list_targets

        known = list_targets()
        for name in r.profile.phones:
            if name not in known:
                problems.append(f"profile.phones: unknown target {name!r}; known: {', '.join(known)}")
    return problems


def method_of(r: LMRecipe):
    """The distillation Method the recipe asks for (`losses` wins over `method`)."""
    from edgekd.lm.methods import method_from_dict

    d = r.distill
    spec = {"losses": d.losses, "text": d.text} if d.losses else {"method": d.method or "teacher_init_fkl_ce"}
    method = method_from_dict(spec)
    return dataclasses.replace(method, init=r.student.init)
