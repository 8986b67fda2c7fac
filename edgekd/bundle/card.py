"""The model card: what the bundled files are, how well and how fast they run, how to feed them, where not to."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

from edgekd.bundle.metadata import ModelInfo, Normalization

_SAFE_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")
DEFAULT_LIMITS = (
    "Accuracy is measured on the held-out test split of the training data set; images from another distribution "
    "(camera photos, other lighting, other classes) will score lower.",
    "The model always answers with one of its labels; it has no 'none of these' class.",
    "Predicted latencies are estimates (see their ± uncertainty), not measurements; measure on the device before "
    "relying on them.",
)


@dataclass
class ModelCard:
    """Facts about a trained, exported model that travel with it (bundle) and are shown to users (model_card.md)."""

    name: str
    version: str = "0.1.0"
    description: str = "Image classifier distilled and quantized with edgekd."
    author: str = "edgekd"
    license: str = "Apache-2.0"
    input_shape: tuple[int, ...] = ()
    input_description: str = "Normalized image batch, NCHW float32."
    output_description: str = "Logits, one per label (apply softmax for probabilities)."
    intended_use: str = "On-device classification of images like those of the training data set."
    limitations: tuple[str, ...] = DEFAULT_LIMITS
    recipe: dict[str, Any] = field(default_factory=dict)
    reference_accuracy: dict[str, float | None] = field(default_factory=dict)
    accuracy: dict[str, dict[str, Any]] = field(default_factory=dict)
    latency: list[dict[str, Any]] = field(default_factory=list)
    params: dict[str, int | None] = field(default_factory=dict)
    recommended: str | None = None

    def __post_init__(self) -> None:
        if not _SAFE_NAME.match(self.name or ""):
            raise ValueError(f"model card name {self.name!r} must start with a letter and use only letters, digits, "
                             f"'_', '.', '-' (max 64): it names folders in the app layouts")
        if not str(self.version).strip():
            raise ValueError("model card version must not be empty (e.g. '1.0.0')")
        self.input_shape = tuple(int(d) for d in self.input_shape)
        self.limitations = tuple(self.limitations)

    def info(self) -> ModelInfo:
        return ModelInfo(self.name, str(self.version), self.description, self.author, self.license,
                         self.input_description, self.output_description)


def card_json(card: ModelCard, files: list[dict[str, Any]], labels: list[str], norm: Normalization,
              target: str) -> dict[str, Any]:
    """The card as JSON: `files` are the bundled model files (name, path, format, precision, runtime, bytes, io)."""
    d = asdict(card)
    d["input_shape"] = list(card.input_shape)
    d["limitations"] = list(card.limitations)
    d["target"] = target
    d["labels"] = list(labels)
    d["normalization"] = {"mean": list(norm.mean), "std": list(norm.std), "pixel_max": norm.pixel_max,
                          "unit_mean": norm.unit_mean, "unit_std": norm.unit_std, "formula": norm.formula()}
    d["files"] = [{**f, **{k: v for k, v in card.accuracy.get(f["name"], {}).items() if k != "name"}}
                  for f in files]
    d["latency"] = [r for r in card.latency if r.get("target") in (None, target)] or list(card.latency)
    return d


def card_markdown(d: dict[str, Any]) -> str:
    """model_card.md rendered from card_json's dict, so both always say the same thing."""
    ref = d.get("reference_accuracy") or {}
    lines = [f"# {d['name']} {d['version']}", "", d["description"], "",
             f"- Target: **{d['target']}**" + (f"; recommended file: **{d['recommended']}**" if d.get("recommended") else ""),
             f"- Author: {d['author']}; license: {d['license']}",
             f"- Input: shape {d['input_shape'] or 'see files'} (C, H, W), batch first; {d['input_description']}",
             f"- Normalization: {d['normalization']['formula']}",
             f"- Output: {d['output_description']} Labels: {len(d['labels'])} ({', '.join(d['labels'][:12])}"
             f"{', ...' if len(d['labels']) > 12 else ''}) in labels.txt, in output order.", ""]
    lines += ["## Accuracy", "", "| model | runtime | precision | top-1 | parity vs reference | size |",
              "|---|---|---|---|---|---|"]
    for key, label in (("teacher", "teacher"), ("student_fp32", "student (torch)"),
                       ("fake_quant", "student fake-quant (torch)")):
        if ref.get(key) is not None:
            lines.append(f"| {label} | torch | {'int8 sim' if key == 'fake_quant' else 'fp32'} | {_pct(ref[key])} | | |")
    for f in d["files"]:
        parity = "n/a" if f.get("parity_ok") is None else \
            ("ok" if f["parity_ok"] else "FAILED") + (f" (max diff {f['max_abs_diff']:.2g} vs {f.get('reference')})"
                                                    if f.get("max_abs_diff") is not None else "")
        lines.append(f"| {f['name']} | {f['runtime']} | {f['precision']} | {_pct(f.get('accuracy'))} | {parity} | "
                     f"{f['bytes']:,} B |")
    lines += ["", "## Latency", ""]
    if d["latency"]:
        lines += ["| file | target | runtime | precision | threads | p50 ms | p90 ms | source |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in d["latency"]:
            src = f"measured on {r.get('device') or r.get('target')}" if r.get("measured") else \
                "predicted" + (f" ±{r['uncertainty'] * 100:.0f}%" if r.get("uncertainty") is not None else "")
            if r.get("cv_flag"):
                src += " (noisy: CV > 5%)"
            lines.append(f"| {r.get('name')} | {r.get('target')} | {r.get('runtime')} | {r.get('precision')} | "
                         f"{r.get('threads', '')} | {_ms(r.get('p50_ms'))} | {_ms(r.get('p90_ms'))} | {src} |")
    else:
        lines.append("No latency figures: the run was not profiled for this target.")
    lines += ["", "## Training recipe", ""]
    params = {k: v for k, v in (d.get("params") or {}).items() if v is not None}
    if params:
        lines.append("- Parameters: " + ", ".join(f"{k} {v:,}" for k, v in params.items()))
    lines += [f"- `{k}`: {v}" for k, v in (d.get("recipe") or {}).items()] or ["- (recipe not recorded)"]
    lines += ["", "## Intended use", "", d["intended_use"], "", "## Limitations", ""]
    lines += [f"- {x}" for x in d["limitations"]]
    lines += ["", "## Files", ""]
    for f in d["files"]:
        io = f.get("io") or {}
        q = io.get("input", {})
        extra = f"; input {q.get('dtype')} {q.get('shape')}" if q else ""
        if q.get("scale") is not None:
            extra += f", scale {q['scale']:.6g}, zero point {q['zero_point']}"
        lines.append(f"- `{f['path']}` ({f['format']}, {f['precision']}, {f['runtime']}){extra}")
    return "\n".join(lines) + "\n"


def _pct(x: Any) -> str:
    return f"{x * 100:.2f}%" if isinstance(x, (int, float)) else "n/a"


def _ms(x: Any) -> str:
    return f"{x:.3g}" if isinstance(x, (int, float)) else "n/a"
