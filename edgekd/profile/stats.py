"""Latency statistics and the stopping rule: repeat until the running median is stable or a time cap is hit."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

CV_FLAG = 0.05  # docs/design.md §5: flag a coefficient of variation above 5%


@dataclass(frozen=True)
class LatencyStats:
    """Summary of per-run latencies in milliseconds (percentiles by numpy's linear interpolation)."""

    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    std_ms: float
    cv: float
    cv_flag: bool
    min_ms: float
    max_ms: float
    runs: int


def summarize(samples_ms: "list[float] | np.ndarray", cv_limit: float = CV_FLAG) -> LatencyStats:
    """Percentiles, mean, population std (ddof=0) and CV = std / mean; cv_flag when CV > cv_limit."""
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        raise ValueError("no latency samples to summarize (runs must be >= 1)")
    if not np.all(np.isfinite(x)) or np.any(x < 0):
        raise ValueError(f"latency samples must be finite and >= 0; got min={x.min()}, max={x.max()}")
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    mean = float(x.mean())
    std = float(x.std())
    cv = std / mean if mean > 0 else 0.0
    return LatencyStats(float(p50), float(p90), float(p99), mean, std, cv, bool(cv > cv_limit),
                        float(x.min()), float(x.max()), int(x.size))


@dataclass(frozen=True)
class StopRule:
    """When to stop timing: after `min_runs` and `min_time_s`, stop once the running median moved less than
    `rel_tol` over the last `block` runs, or once `time_cap_s` has passed; never more than `max_runs`."""

    min_runs: int = 30
    max_runs: int = 5000
    block: int = 20
    rel_tol: float = 0.01
    time_cap_s: float = 10.0
    min_time_s: float = 0.5

    def __post_init__(self):
        problems = []
        if self.min_runs < 1:
            problems.append(f"min_runs must be >= 1, got {self.min_runs}")
        if self.max_runs < self.min_runs:
            problems.append(f"max_runs ({self.max_runs}) must be >= min_runs ({self.min_runs})")
        if self.block < 1:
            problems.append(f"block must be >= 1, got {self.block}")
        if not 0 < self.rel_tol < 1:
            problems.append(f"rel_tol must be in (0, 1), e.g. 0.01 for 1%; got {self.rel_tol}")
        if self.time_cap_s <= 0:
            problems.append(f"time_cap_s must be > 0 seconds, got {self.time_cap_s}")
        if not 0 <= self.min_time_s <= self.time_cap_s:
            problems.append(f"min_time_s must be in [0, time_cap_s={self.time_cap_s}], got {self.min_time_s}")
        if problems:
            raise ValueError("; ".join(problems))


def time_until_stable(fn: Callable[[], object], rule: StopRule, on_block: Callable[[int], None] | None = None,
                      clock: Callable[[], float] = time.perf_counter) -> tuple[list[float], str]:
    """Call `fn` repeatedly, timing each call with perf_counter; returns (latencies in ms, why it stopped).

    Stops with "stable", "time_cap" or "max_runs". `on_block(n)` is told how many runs each block added;
    `clock` (seconds) is replaceable for tests.
    """
    samples: list[float] = []
    prev_median: float | None = None
    start = clock()
    while True:
        n = min(rule.block, rule.max_runs - len(samples))
        for _ in range(n):
            t0 = clock()
            fn()
            samples.append((clock() - t0) * 1e3)
        if on_block:
            on_block(n)
        median = float(np.median(samples))
        if len(samples) >= rule.max_runs:
            return samples, "max_runs"
        elapsed = clock() - start
        if len(samples) >= rule.min_runs and elapsed >= rule.min_time_s:
            if prev_median is not None and prev_median > 0 and abs(median - prev_median) / prev_median < rule.rel_tol:
                return samples, "stable"
            if elapsed >= rule.time_cap_s:
                return samples, "time_cap"
        prev_median = median
