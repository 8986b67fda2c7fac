"""Automatic distillation: the no-teacher baseline and its verdict, KD settings tuned on the validation split,
and student search under latency budgets (docs/auto.md). Stages in edgekd.auto.stage."""
