"""A distillation objective: the weighted sum of registered loss terms built from a recipe list.

>>> objective = build_objective([{"name": "ce", "weight": 0.1},
...                              {"name": "kd_soft", "weight": 0.9, "temperature": 4},
...                              {"name": "hint", "weight": 1.0, "student": "features.3", "teacher": "features.6"}])
>>> out = objective(student_logits, targets, teacher_logits, student_features, teacher_features)
>>> out["loss"].backward()     # out["ce"], out["kd_soft"], out["hint"]: the weighted parts, detached
"""
from __future__ import annotations

import difflib
import inspect
import math
from dataclasses import dataclass
from typing import Any, Mapping

from torch import Tensor, nn

import edgekd.distill.divergences  # noqa: F401  (registers forward_kl, reverse_kl, gjsd)
import edgekd.distill.features  # noqa: F401  (registers hint, attention, rkd, sp)
from edgekd.distill.losses import LOSSES, TeacherLogits, as_topk
from edgekd.errors import ConfigError, EdgeKDError

RESERVED_KEYS = ("name", "weight", "student", "teacher", "label")


@dataclass
class Term:
    """One resolved recipe term: its output label, loss name, weight and (feature losses) tapped module names."""

    label: str
    name: str
    weight: float
    student: str | None = None
    teacher: str | None = None


class Objective(nn.Module):
    """Weighted sum of loss modules; forward returns {"loss": total, <label>: weighted part (detached), ...}.

    Parts are the weighted contributions, so they sum to the total. Labels are the loss names, with a suffix
    (`hint_2`) when a loss appears twice, or the term's own `label`.
    """

    def __init__(self, terms: list[Term], losses: list[nn.Module]):
        super().__init__()
        if len(terms) != len(losses) or not terms:
            raise ValueError("Objective needs one loss module per term and at least one term")
        self.terms = list(terms)
        self.losses = nn.ModuleDict({term.label: loss for term, loss in zip(terms, losses)})
        self._takes_mask = {term.label: "mask" in inspect.signature(loss.forward).parameters
                            for term, loss in zip(terms, losses)}

    def _feature_terms(self) -> list[Term]:
        return [t for t in self.terms if self.losses[t.label].feature]

    @property
    def student_taps(self) -> list[str]:
        """Student submodule names the feature terms read (tap them with FeatureTap)."""
        return list(dict.fromkeys(t.student for t in self._feature_terms()))

    @property
    def teacher_taps(self) -> list[str]:
        return list(dict.fromkeys(t.teacher for t in self._feature_terms()))

    @property
    def needs_teacher_logits(self) -> bool:
        return any("teacher_logits" in self.losses[t.label].requires for t in self.terms)

    @property
    def needs_teacher(self) -> bool:
        """True when any term reads teacher logits or teacher features (False: plain CE training)."""
        return self.needs_teacher_logits or bool(self.teacher_taps)

    @property
    def needs_targets(self) -> bool:
        return any("targets" in self.losses[t.label].requires for t in self.terms)

    @property
    def accepts_topk(self) -> bool:
        """True when every term that reads teacher logits also accepts top-k (values, indices) from the cache."""
        return all(getattr(self.losses[t.label], "accepts_topk", False) for t in self.terms
                   if "teacher_logits" in self.losses[t.label].requires)

    @property
    def has_unbuilt_adapters(self) -> bool:
        """True while a hint adapter waits for its first batch: call build_adapters before making the optimizer."""
        return any(not getattr(self.losses[t.label], "built", True) for t in self._feature_terms())

    def build_adapters(self, student_features: Mapping[str, Tensor], teacher_features: Mapping[str, Tensor]) -> None:
        """Create lazy adapters (hint) from one batch of tapped features, so the optimizer can include them."""
        for term in self._feature_terms():
            loss = self.losses[term.label]
            if hasattr(loss, "build"):
                s = _feature(student_features, term.student, "student", term.label)
                t = _feature(teacher_features, term.teacher, "teacher", term.label)
                loss.build(s.shape, t.shape, s.device, s.dtype)

    def forward(self, student_logits: Tensor, targets: Tensor | None = None,
                teacher_logits: TeacherLogits | None = None,
                student_features: Mapping[str, Tensor] | None = None,
                teacher_features: Mapping[str, Tensor] | None = None,
                mask: Tensor | None = None) -> dict[str, Tensor]:
        total = student_logits.new_zeros(())
        parts: dict[str, Tensor] = {}
        if teacher_logits is not None:
            topk = as_topk(teacher_logits)
            teacher_logits = topk if topk is not None else teacher_logits
        for term in self.terms:
            loss = self.losses[term.label]
            if loss.feature:
                value = loss(_feature(student_features, term.student, "student", term.label),
                             _feature(teacher_features, term.teacher, "teacher", term.label))
            else:
                kwargs: dict[str, Any] = {}
                for need in loss.requires:
                    given = {"teacher_logits": teacher_logits, "targets": targets}[need]
                    if given is None:
                        raise EdgeKDError(f"loss term {term.label!r} ({term.name}) needs {need}, which was not "
                                          f"given to the objective")
                    kwargs[need] = given
                if mask is not None and self._takes_mask[term.label]:
                    kwargs["mask"] = mask
                value = loss(student_logits, **kwargs)
            weighted = term.weight * value
            total = total + weighted
            parts[term.label] = weighted.detach()
        return {"loss": total, **parts}

    def extra_repr(self) -> str:
        return ", ".join(f"{t.weight:g}*{t.label}" for t in self.terms)


def _feature(features: Mapping[str, Tensor] | None, name: str | None, side: str, label: str) -> Tensor:
    if not features or name not in features:
        have = ", ".join(features) if features else "none"
        raise EdgeKDError(f"loss term {label!r} needs the {side} feature {name!r}, but the {side} features given "
                          f"were: {have}; tap objective.{side}_taps with FeatureTap")
    return features[name]


def _allowed_options(cls: type) -> list[str]:
    params = inspect.signature(cls.__init__).parameters
    return [n for n, p in params.items() if n != "self" and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def build_objective(terms: list[dict[str, Any]], source: str = "distill.losses") -> Objective:
    """Validate every term of a recipe loss list at once and build the Objective.

    Each term is {"name": registered loss, "weight": >= 0 (default 1), options of that loss...}; feature losses
    also need "student" and "teacher" submodule names; "label" renames the term's output key.

    Raises:
        ConfigError: listing every problem found, one per line.
    """
    if not isinstance(terms, (list, tuple)) or not terms:
        raise ConfigError([f"{source} must be a non-empty list of loss terms like "
                           f"[{{'name': 'ce', 'weight': 0.1}}, {{'name': 'kd_soft', 'weight': 0.9}}], "
                           f"got {terms!r}"], source)
    problems: list[str] = []
    resolved: list[Term] = []
    losses: list[nn.Module] = []
    label_counts: dict[str, int] = {}
    for i, spec in enumerate(terms, 1):
        term, loss, term_problems = _build_term(spec, f"{source}[{i}]", label_counts, [t.label for t in resolved])
        problems += term_problems
        if term is not None:
            resolved.append(term)
            losses.append(loss)
    if not problems and all(t.weight == 0 for t in resolved):
        problems.append(f"{source}: every weight is 0, so nothing would be trained; give some term a weight > 0")
    if problems:
        raise ConfigError(problems, source)
    return Objective(resolved, losses)


def _build_term(spec: Any, where: str, label_counts: dict[str, int], taken: list[str]
                ) -> tuple[Term | None, nn.Module | None, list[str]]:
    """One recipe term -> (Term, loss module, []) or (None, None, its problems)."""
    if not isinstance(spec, Mapping):
        return None, None, [f"{where}: a loss term must be a mapping with a 'name', got {spec!r}"]
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        return None, None, [f"{where}: missing 'name' (one of {', '.join(LOSSES.names())})"]
    where = f"{where} ({name})"
    if name not in LOSSES:
        return None, None, [f"{where}: {LOSSES.unknown_message(name)}"]
    cls = LOSSES.get(name)
    weight = spec.get("weight", 1.0)
    problems = _placement_problems(spec, cls, weight, where)
    label = spec.get("label")
    if label is None:
        label_counts[name] = label_counts.get(name, 0) + 1
        label = name if label_counts[name] == 1 else f"{name}_{label_counts[name]}"
    if not isinstance(label, str) or not label or "." in label or label == "loss" or label in taken:
        problems.append(f"{where}: label must be a unique non-empty name without '.', not 'loss', got {label!r}")
    loss, option_problems = _make_loss(cls, {k: v for k, v in spec.items() if k not in RESERVED_KEYS}, where)
    problems += option_problems
    if problems:
        return None, None, problems
    return Term(label, name, float(weight), spec.get("student"), spec.get("teacher")), loss, []


def _placement_problems(spec: Mapping[str, Any], cls: type, weight: Any, where: str) -> list[str]:
    """The term's weight, and the student/teacher submodule names that feature losses (only) need."""
    problems = []
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) or weight < 0:
        problems.append(f"{where}: weight must be a finite number >= 0, got {weight!r}")
    student, teacher = spec.get("student"), spec.get("teacher")
    if cls.feature:
        for side, value in (("student", student), ("teacher", teacher)):
            if not isinstance(value, str) or not value:
                problems.append(f"{where}: feature loss needs '{side}': the {side} submodule name as in "
                                f"model.named_modules() (e.g. 'features.3'), got {value!r}")
    elif student is not None or teacher is not None:
        problems.append(f"{where}: 'student'/'teacher' feature names apply only to feature losses "
                        f"(attention, hint, rkd, sp); remove them")
    return problems


def _make_loss(cls: type, options: dict[str, Any], where: str) -> tuple[nn.Module | None, list[str]]:
    """The loss module built from the term's options; unknown options are named with the allowed ones."""
    allowed = _allowed_options(cls)
    unknown = [k for k in options if k not in allowed]
    if unknown:
        valid = allowed + ["weight", "label"] + (["student", "teacher"] if cls.feature else [])
        close = difflib.get_close_matches(unknown[0], valid, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        return None, [f"{where}: unknown option(s) {', '.join(map(repr, unknown))}{hint} allowed: "
                      f"{', '.join(valid)}"]
    try:
        return cls(**options), []
    except (ValueError, TypeError, EdgeKDError) as e:
        return None, [f"{where}: {e}"]


__all__ = ["Objective", "Term", "build_objective"]
