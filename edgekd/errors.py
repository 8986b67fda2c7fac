"""The project's error types: user mistakes are EdgeKDError and become one CLI line with exit status 2."""
from __future__ import annotations


class EdgeKDError(Exception):
    """A problem the user can fix (bad path, name, shape, value); the message says what and how."""


class ConfigError(EdgeKDError):
    """A recipe with one or more problems; all of them are listed, one per line."""

    def __init__(self, problems: list[str], source: str = "recipe"):
        self.problems = list(problems)
        self.source = source
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class ConversionError(EdgeKDError):
    """A layer or op that a converter or quantization scheme cannot handle; names the layer, op and way out."""
