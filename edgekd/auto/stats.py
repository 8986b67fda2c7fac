"""Honest error bars for "distillation gained X ± Y pt": paired bootstrap over test images, seed spread, ranks.

Both models are scored on the same images, so the difference is measured per image (paired): resampling images
with replacement and taking the accuracy difference of each resample gives the sampling error of the gain. With
several seeds, the same image resample is applied to every seed (the images are shared) and the seed-to-seed
spread of the gain is added in quadrature as the standard error of the mean over seeds.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

Z95 = 1.959963984540054


def _as_matrix(correct: Any) -> np.ndarray:
    """(seeds, images) boolean matrix from one vector or a list of per-seed vectors."""
    a = np.asarray(correct, dtype=bool)
    return a[None, :] if a.ndim == 1 else a


def paired_bootstrap(correct_a: Any, correct_b: Any, *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Gain of A over B in percentage points, with a paired bootstrap over images (and seeds when given).

    Args:
        correct_a, correct_b: per-image correctness (bool) of the two models on the SAME test images; a 2-D
            array (or list of vectors) holds one row per seed, rows of A and B paired by seed.
    Returns:
        {"gain_pt", "ci95_pt": [lo, hi] (bootstrap percentiles), "se_images_pt", "se_seeds_pt" (None for one
         seed), "pm_pt" (the ± half-width: 1.96 x the combined standard error), "per_seed_pt", "images",
         "seeds", "n_boot", "p_worse" (share of resamples where A is not better)}
    """
    a, b = _as_matrix(correct_a), _as_matrix(correct_b)
    if a.shape != b.shape:
        raise ValueError(f"paired comparison needs the same images and seeds, got {a.shape} vs {b.shape}")
    seeds, n = a.shape
    diff = a.astype(np.float64) - b.astype(np.float64)          # per seed, per image: -1, 0, +1
    per_seed = diff.mean(axis=1) * 100
    gain = float(per_seed.mean())
    rng = np.random.default_rng(seed)
    boots = np.empty(n_boot)
    mean_over_seeds = diff.mean(axis=0)                          # the same image resample for every seed
    for i in range(n_boot):
        idx = rng.integers(0, n, n)
        boots[i] = mean_over_seeds[idx].mean() * 100
    se_img = float(boots.std(ddof=1)) if n_boot > 1 else 0.0
    se_seed = float(per_seed.std(ddof=1) / math.sqrt(seeds)) if seeds > 1 else None
    total = math.sqrt(se_img ** 2 + (se_seed or 0.0) ** 2)
    return {"gain_pt": gain, "ci95_pt": [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))],
            "se_images_pt": se_img, "se_seeds_pt": se_seed, "pm_pt": Z95 * total,
            "per_seed_pt": [float(x) for x in per_seed], "images": int(n), "seeds": int(seeds), "n_boot": n_boot,
            "p_worse": float((boots <= 0).mean())}


def paired_se_pt(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> float:
    """The analytic standard error of a paired accuracy difference (pt): sqrt((p10 + p01 - d^2) / n)."""
    a, b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    n = len(a)
    p10, p01 = float((a & ~b).mean()), float((~a & b).mean())
    return math.sqrt(max(0.0, p10 + p01 - (p10 - p01) ** 2) / n) * 100


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks for ties); None with fewer than 3 pairs or a constant side."""
    if len(x) != len(y) or len(x) < 3:
        return None
    rx, ry = _ranks(np.asarray(x, float)), _ranks(np.asarray(y, float))
    if rx.std() == 0 or ry.std() == 0:
        return None
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = v.argsort(kind="mergesort")
    ranks = np.empty(len(v))
    ranks[order] = np.arange(len(v), dtype=float)
    for value in np.unique(v):                                   # ties share their average rank
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, float)
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0
