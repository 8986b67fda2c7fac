"""Subpackages that share a name with an `edgekd.api` operation (export, verify, profile, bundle, report) are callable.

Importing `edgekd.export` binds the subpackage to the attribute `edgekd.export`, where a re-exported function of that
name would be replaced, so `edgekd.export(...)` would work once and then fail with "'module' object is not
callable". Instead the `edgekd` module's class (`Package`) turns each such subpackage, as the import system binds
it, into a `CallableModule`: it stays the package (`edgekd.export.onnx`, `from edgekd.export import ...`) and calling
it calls the `edgekd.api` function of the same name, any number of times. A new module named like an operation
(e.g. edgekd/validate.py) is covered without a line of its own.
"""
from __future__ import annotations

from types import ModuleType
from typing import Any


class CallableModule(ModuleType):
    """A module whose call delegates to the `edgekd.api` function named like its last dotted part."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from edgekd import api

        return getattr(api, self.__name__.rpartition(".")[2])(*args, **kwargs)


class Package(ModuleType):
    """The class of the `edgekd` module: a submodule bound under an operation's name becomes a CallableModule."""

    def __setattr__(self, name: str, value: Any) -> None:
        if (isinstance(value, ModuleType) and not isinstance(value, CallableModule)
                and name in getattr(self, "_API", ()) and value.__name__ == f"{self.__name__}.{name}"):
            value.__class__ = CallableModule
        super().__setattr__(name, value)
