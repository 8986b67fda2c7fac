"""Report plots (matplotlib, Agg): accuracy vs latency with the Pareto front, training curves, int8 vs fp32."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

PRECISION_COLOR = {"fp32": "#3b6fb6", "int8": "#e07b39"}
RUNTIME_MARKER = {"litert": "o", "onnxruntime": "s", "torch": "^", "tensorrt": "D"}
PHASE_TITLE = {"teacher": "teacher", "student": "student (distillation)", "qat": "quantization-aware training"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.spines.top": False, "axes.spines.right": False,
                         "axes.grid": True, "grid.alpha": 0.3, "figure.dpi": 110})
    return plt


def _ok(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def accuracy_vs_latency(results: dict[str, Any], path: Path) -> Path | None:
    """One panel per target: each file's p50 latency against its accuracy; the Pareto front joined by a line."""
    targets = [t for t, rows in results["latency"].items() if any(_ok(r.get("p50_ms")) and _ok(r.get("accuracy"))
                                                               for r in rows)]
    if not targets:
        return None
    plt = _pyplot()
    cols = min(3, len(targets))
    nrows = math.ceil(len(targets) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.6 * nrows), squeeze=False)
    for ax, target in zip(axes.flat, targets):
        rows = [r for r in results["latency"][target] if _ok(r.get("p50_ms")) and _ok(r.get("accuracy"))]
        front = results["pareto"].get(target, [])
        pts = sorted((r for r in rows if r["name"] in front), key=lambda r: r["p50_ms"])
        if pts:
            ax.step([r["p50_ms"] for r in pts], [r["accuracy"] * 100 for r in pts], where="post", color="#2a9d8f",
                    lw=1.5, alpha=0.8, label="Pareto front", zorder=1)
        for r in rows:
            color = PRECISION_COLOR.get(r.get("precision"), "#777777")
            marker = RUNTIME_MARKER.get(r.get("runtime"), "o")
            measured = bool(r.get("measured"))
            if not measured and _ok(r.get("uncertainty")):
                ax.errorbar(r["p50_ms"], r["accuracy"] * 100, xerr=r["p50_ms"] * r["uncertainty"], fmt="none",
                            ecolor=color, alpha=0.6, capsize=3, zorder=2)
            ax.scatter(r["p50_ms"], r["accuracy"] * 100, s=70 if r["name"] in front else 45, marker=marker,
                       facecolors=color if measured else "white", edgecolors=color, linewidths=1.6, zorder=3)
            if r.get("parity_ok") is False:
                ax.scatter(r["p50_ms"], r["accuracy"] * 100, s=140, marker="x", color="#c0392b", zorder=4)
            ax.annotate(r["name"], (r["p50_ms"], r["accuracy"] * 100), textcoords="offset points", xytext=(5, 4),
                        fontsize=7, color="#333333")
        kinds = {bool(r.get("measured")) for r in rows}
        kind = "measured" if kinds == {True} else "predicted" if kinds == {False} else "measured + predicted"
        ax.set_title(f"{target} ({kind})")
        ax.set_xlabel("p50 latency (ms), lower is better")
        ax.set_ylabel("top-1 accuracy (%)")
        ax.margins(x=0.25, y=0.25)
    for ax in list(axes.flat)[len(targets):]:
        ax.axis("off")
    _legend(fig, axes.flat[0], plt)
    fig.tight_layout(rect=(0, 0, 1, 0.9))
    return _save(fig, path, plt)


def _legend(fig, ax, plt) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], ls="", marker="o", color=c, label=p) for p, c in PRECISION_COLOR.items()]
    handles += [Line2D([], [], ls="", marker=m, color="#555555", mfc="white", label=r) for r, m in
                RUNTIME_MARKER.items() if r in ("litert", "onnxruntime")]
    handles += [Line2D([], [], ls="", marker="o", color="#555555", label="measured (filled)"),
                Line2D([], [], ls="", marker="o", color="#555555", mfc="white", label="predicted (hollow, ±unc.)"),
                Line2D([], [], color="#2a9d8f", label="Pareto front"),
                Line2D([], [], ls="", marker="x", color="#c0392b", label="parity failed")]
    fig.legend(handles=handles, loc="upper center", ncol=len(handles), fontsize=7.5, frameon=False)


def training_curves(results: dict[str, Any], path: Path) -> Path | None:
    """Loss (total and each part) and accuracy per step for the teacher, the student and QAT."""
    phases = [(k, v) for k, v in results["training"].items() if v]
    if not phases:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(phases), figsize=(4.2 * len(phases), 5.4), squeeze=False, sharex="col")
    for col, (phase, history) in enumerate(phases):
        steps = [h.get("step", h.get("epoch", i)) for i, h in enumerate(history)]
        top, bottom = axes[0][col], axes[1][col]
        # Loss parts from the fine-grained curve (~50 points a phase) when the run logged one, else per epoch.
        losses = (results.get("loss_curves") or {}).get(phase) or history
        loss_steps = [h.get("step", h.get("epoch", i)) for i, h in enumerate(losses)]
        top.plot(loss_steps, [h.get("loss") for h in losses], color="#222222", lw=2, label="loss (total)")
        parts = sorted({p for h in losses for p in (h.get("parts") or {})})
        for part in parts:
            top.plot(loss_steps, [(h.get("parts") or {}).get(part) for h in losses], lw=1.2, ls="--", label=part)
        top.set_title(PHASE_TITLE.get(phase, phase))
        top.set_ylabel("loss")
        top.legend(fontsize=7, frameon=False)
        for key, style in (("train_accuracy", ":"), ("test_accuracy", "-")):
            vals = [h.get(key) for h in history]
            if any(_ok(v) for v in vals):
                bottom.plot(steps, [v * 100 if _ok(v) else None for v in vals], ls=style, marker=".",
                            label=key.replace("_", " "))
        bottom.set_xlabel("step")
        bottom.set_ylabel("accuracy (%)")
        bottom.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return _save(fig, path, plt)


def int8_vs_fp32(results: dict[str, Any], path: Path) -> Path | None:
    """Per runtime, fp32 and int8 side by side: p50 latency on each target and file size."""
    lat = [(t, r) for t, rows in results["latency"].items() for r in rows if _ok(r.get("p50_ms"))]
    sizes = [f for f in results["files"] if _ok(f.get("bytes"))]
    if not lat and not sizes:
        return None
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6), gridspec_kw={"width_ratios": [2, 1]})
    groups = sorted({(t, r.get("runtime")) for t, r in lat}, key=str)
    _bars(axes[0], [f"{rt}\n{t}" for t, rt in groups],
          {p: [_first(r.get("p50_ms") for t, r in lat if (t, r.get("runtime")) == g and r.get("precision") == p)
               for g in groups] for p in PRECISION_COLOR},
          {p: [_first(not r.get("measured") for t, r in lat if (t, r.get("runtime")) == g and r.get("precision") == p)
               for g in groups] for p in PRECISION_COLOR}, "{:.3g} ms")
    axes[0].set_title("p50 latency (hatched = predicted)")
    axes[0].set_ylabel("ms")
    runtimes = sorted({f.get("runtime") for f in sizes}, key=str)
    _bars(axes[1], runtimes, {p: [_first(f["bytes"] / 1000 for f in sizes if f.get("runtime") == rt and
                                         f.get("precision") == p) for rt in runtimes] for p in PRECISION_COLOR},
          None, "{:.1f} kB")
    axes[1].set_title("file size")
    axes[1].set_ylabel("kB")
    axes[0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return _save(fig, path, plt)


def _bars(ax, labels: list[str], values: dict[str, list], predicted: dict[str, list] | None, fmt: str) -> None:
    width = 0.38
    for i, (precision, vals) in enumerate(values.items()):
        xs = [j + (i - 0.5) * width for j in range(len(labels))]
        heights = [v if _ok(v) else 0 for v in vals]
        bars = ax.bar(xs, heights, width, color=PRECISION_COLOR[precision], label=precision)
        for j, (bar, v) in enumerate(zip(bars, vals)):
            if predicted and predicted[precision][j]:
                bar.set_hatch("///")
                bar.set_edgecolor("white")
            if _ok(v):
                ax.annotate(fmt.format(v), (bar.get_x() + bar.get_width() / 2, v), ha="center", va="bottom",
                            fontsize=7, xytext=(0, 2), textcoords="offset points")
    ax.set_xticks(range(len(labels)), labels, fontsize=8)


def _first(it) -> Any:
    return next(iter(it), None)


def _save(fig, path: Path, plt) -> Path:
    from edgekd.fileio import atomic_path

    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    plt.close(fig)
    return path
