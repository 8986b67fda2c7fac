"""Subpackages that share a name with an `edgekd.api` operation (export, verify, profile, bundle, report) are callable.

`import edgekd.export` binds the subpackage to `edgekd.export`, replacing a re-exported function of that name, so
`edgekd.export(...)` would work once and then fail with "'module' object is not callable". Instead each such package
ends with `make_callable(__name__)`: it stays the package (`edgekd.export.onnx`, `from edgekd.export import ...`)
and calling it calls the `edgekd.api` function of the same name, any number of times.
"""
from __future__ import annotations

import sys
from types import ModuleType
from typing import Any


class CallableModule(ModuleType):
    """A module whose call delegates to the `edgekd.api` function named like its last dotted part."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from edgekd import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


def make_callable(module_name: str) -> None:
    """Make the already-imported module `module_name` (e.g. "edgekd.export") callable as its edgekd.api function."""
    sys.modules[module_name].__class__ = CallableModule
