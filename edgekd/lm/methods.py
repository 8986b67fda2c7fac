"""The distillation methods a benchmark or recipe compares, each one student init + objective + training text:
scratch CE, token-level forward KL / reverse KL / generalized JSD against the cached teacher top-k,
sequence-level KD (CE on teacher-written continuations), and mixtures (e.g. teacher init + forward KL + CE)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from edgekd.errors import EdgeKDError
from edgekd.lm.objectives import Term


@dataclass(frozen=True)
class Method:
    """`terms` on `text` ('data' or 'teacher' = sequence-level KD text), student `init` ('scratch'|'teacher')."""

    name: str
    terms: tuple[Term, ...]
    text: str = "data"
    init: str = "scratch"
    notes: str = ""

    @property
    def needs_cache(self) -> bool:
        return any(t.name != "ce" for t in self.terms)


def _t(name: str, weight: float = 1.0, **options: Any) -> Term:
    return Term(name, weight, options)


BUILTIN: dict[str, Method] = {m.name: m for m in (
    Method("scratch_ce", (_t("ce"),), notes="no teacher: CE on the data"),
    Method("forward_kl", (_t("forward_kl", temperature=1.0),)),
    Method("reverse_kl", (_t("reverse_kl", temperature=1.0),)),
    Method("gjsd", (_t("gjsd", beta=0.5, temperature=1.0),)),
    Method("seqkd", (_t("ce"),), text="teacher", notes="CE on teacher-generated continuations"),
    Method("fkl_ce", (_t("forward_kl", temperature=1.0), _t("ce", 0.5))),
    Method("teacher_init_ce", (_t("ce"),), init="teacher", notes="student initialised from the teacher, CE only"),
    Method("teacher_init_fkl_ce", (_t("forward_kl", temperature=1.0), _t("ce", 0.5)), init="teacher",
           notes="best combination: teacher init + forward KL + CE"),
)}


def get_method(name: str) -> Method:
    if name not in BUILTIN:
        raise EdgeKDError(f"LM method {name!r} unknown; choose from {', '.join(BUILTIN)}")
    return BUILTIN[name]


def method_from_dict(data: dict[str, Any]) -> Method:
    """A recipe's `distill:` section: {method: NAME} or {losses: [...], text: data|teacher, init: ...}."""
    from edgekd.lm.objectives import parse_terms

    if "method" in data:
        base = get_method(data["method"])
        return replace(base, init=data.get("init", base.init))
    if "losses" not in data:
        raise EdgeKDError("LM distill section needs `method: NAME` or `losses: [...]`")
    text = data.get("text", "data")
    if text not in ("data", "teacher"):
        raise EdgeKDError(f"distill.text must be 'data' or 'teacher' (sequence-level KD), got {text!r}")
    return Method("custom", tuple(parse_terms(data["losses"])), text=text, init=data.get("init", "scratch"))


__all__ = ["BUILTIN", "Method", "get_method", "method_from_dict"]
