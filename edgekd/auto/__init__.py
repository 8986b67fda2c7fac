"""Automatic distillation (docs/auto.md): the no-teacher baseline and its verdict, KD settings tuned on the
validation split, and student search under latency budgets. The stages are declared in edgekd.auto.stage."""
from edgekd.auto.stats import paired_bootstrap, spearman

__all__ = ["paired_bootstrap", "search", "search_students", "spearman", "tune", "tune_losses"]


def __getattr__(name: str):
    """The heavier entry points load on first use (importing edgekd.auto stays light)."""
    if name in ("tune", "search"):
        from edgekd.auto import commands

        return getattr(commands, name)
    if name == "tune_losses":
        from edgekd.auto.tune import tune_losses

        return tune_losses
    if name == "search_students":
        from edgekd.auto.search import search_students

        return search_students
    raise AttributeError(f"module 'edgekd.auto' has no attribute {name!r}")
