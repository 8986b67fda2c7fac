"""What an exported file is (format, precision, runtime, batch, size), read from the file itself.

The reading lives in edgekd.formats (`describe_file`, each Format's `describe`); `ExportedFile` is the export
stage's record of one file.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from edgekd.formats import describe_file

__all__ = ["ExportedFile", "describe_file"]


@dataclass
class ExportedFile:
    """One exported model file, as the export stage lists it."""

    name: str
    path: str
    format: str
    precision: str
    runtime: str
    bytes: int
    batch: int | None

    def to_dict(self) -> dict:
        return asdict(self)
