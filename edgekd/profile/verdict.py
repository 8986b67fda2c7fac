"""Is int8 faster than fp32 on this target and runtime? One ratio and one sentence per (target, runtime).

Predictions carry a relative uncertainty; when the fp32 and int8 intervals (median x (1 +- uncertainty)) overlap,
the answer is "unknown": two +-100% predictions cannot say that one file is 1.27x faster than the other.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Sequence

from edgekd.profile.result import LatencyResult

SAME_BAND = 0.05  # within +-5% we call the speeds the same: below what one run-to-run comparison resolves


@dataclass(frozen=True)
class Verdict:
    """int8 vs fp32 on one target and runtime: speedup = fp32 median / int8 median (>1: int8 is faster)."""

    target: str
    runtime: str
    int8_vs_fp32_speedup: float
    measured: bool
    text: str
    size_ratio: float | None = None
    outcome: str = ""  # faster | slower | same | unknown

    def to_dict(self) -> dict:
        d = asdict(self)
        if d["size_ratio"] is None:
            d.pop("size_ratio")
        return d


def outcome(speedup: float, known: bool = True) -> str:
    """faster, slower or same (within SAME_BAND); unknown when the figures cannot tell."""
    if not known:
        return "unknown"
    return "faster" if speedup >= 1 + SAME_BAND else "slower" if speedup <= 1 - SAME_BAND else "same"


def verdict_text(target: str, runtime: str, speedup: float, measured: bool, size_ratio: float | None = None,
                 known: bool = True) -> str:
    """'On cpu-local with onnxruntime, int8 is 0.86x the speed of fp32 (measured): slower; its gain here is size.'

    With known=False (overlapping prediction intervals): 'On pixel-8 with litert, int8 vs fp32 is unknown: ...'.
    """
    how = "measured" if measured else "predicted"
    size = f" ({size_ratio:.1f}x smaller)" if size_ratio else ""
    if not known:
        tail = f" The int8 file is {size_ratio:.1f}x smaller." if size_ratio and size_ratio >= 1 + SAME_BAND else ""
        return (f"On {target} with {runtime}, int8 vs fp32 speed is unknown ({how} {speedup:.2f}x, but the "
                f"uncertainty intervals overlap): measure on the device.{tail}")
    if speedup >= 1 + SAME_BAND:
        tail = "faster."
    elif speedup <= 1 - SAME_BAND:
        tail = f"slower; its gain here is size{size}."
    else:
        tail = f"about the same speed; its gain here is size{size}."
    return f"On {target} with {runtime}, int8 is {speedup:.2f}x the speed of fp32 ({how}): {tail}"


def compare(fp32: LatencyResult, int8: LatencyResult, target: str | None = None) -> Verdict:
    """Verdict from one fp32 and one int8 result of the same model; measured only when both were measured."""
    if not fp32.p50_ms or not int8.p50_ms:
        raise ValueError(f"both results need a median latency; got fp32={fp32.p50_ms}, int8={int8.p50_ms}")
    speedup = fp32.p50_ms / int8.p50_ms
    measured = fp32.measured and int8.measured
    size = fp32.bytes / int8.bytes if fp32.bytes and int8.bytes else None
    tgt = target or fp32.target or int8.target or "this target"
    known = not _overlap(fp32, int8)
    return Verdict(tgt, fp32.runtime, speedup, measured,
                   verdict_text(tgt, fp32.runtime, speedup, measured, size, known), size, outcome(speedup, known))


def _overlap(a: LatencyResult, b: LatencyResult) -> bool:
    """Whether the uncertainty intervals of two results overlap (a measurement's interval is its median)."""
    if a.measured and b.measured:
        return False
    ua, ub = (0.0 if r.measured else float(r.uncertainty or 0.0) for r in (a, b))
    lo_a, hi_a = a.p50_ms * (1 - ua), a.p50_ms * (1 + ua)  # type: ignore[operator]
    lo_b, hi_b = b.p50_ms * (1 - ub), b.p50_ms * (1 + ub)  # type: ignore[operator]
    return lo_a <= hi_b and lo_b <= hi_a


def _base_name(name: str) -> str:
    name = re.sub(r"\.(onnx|tflite|pt2|pt)$", "", name.lower())
    return re.sub(r"[_.-]?(fp32|float32|float|int8|quant(ized)?|qdq|q8)$", "", name.lower())


def verdicts(results: Sequence[LatencyResult]) -> list[Verdict]:
    """Pair fp32 and int8 results per (target, runtime) and model (names minus a precision suffix, or the only
    pair there is) and give one verdict per pair."""
    out = []
    groups: dict[tuple[str, str], list[LatencyResult]] = {}
    for r in results:
        groups.setdefault((r.target, r.runtime), []).append(r)
    for (target, runtime), rs in groups.items():
        fp = [r for r in rs if r.precision == "fp32"]
        q = [r for r in rs if r.precision == "int8"]
        if not fp or not q:
            continue
        if len(fp) == 1 and len(q) == 1:
            out.append(compare(fp[0], q[0], target or None))
            continue
        by_base = {_base_name(r.name): r for r in fp}
        for r in q:
            if _base_name(r.name) in by_base:
                out.append(compare(by_base[_base_name(r.name)], r, target or None))
    return out
