"""edgekd: distill, quantize, export, verify, profile and bundle compact models for edge devices.

    import edgekd
    run_dir = edgekd.demo()                                   # the shipped Fashion-MNIST recipe
    edgekd.run("my_recipe.yaml", until="export")
    edgekd.profile(["student_int8.tflite"], target="pixel-8")

The public operations live in `edgekd.api` (same names and arguments as the CLI commands) and are loaded on
first use, so `import edgekd` stays fast. Where an operation shares its name with a subpackage (export, verify,
profile, bundle, report), `edgekd.<name>` is that subpackage, made callable as the operation
(edgekd.callable_modules), so both `edgekd.export(...)` and `edgekd.export.onnx` keep working.
"""
import sys as _sys

from edgekd.callable_modules import Package as _Package

__version__ = "0.1.0"

_API = ("run", "run_stage", "validate", "demo", "export", "verify", "profile", "quantize", "bundle",
        "bundle_verify", "report", "targets", "target", "calibrate")

__all__ = ["__version__", *_API]

_sys.modules[__name__].__class__ = _Package  # edgekd.export & co.: the subpackage, callable as the operation


def __getattr__(name: str):
    if name in _API:
        import importlib
        import importlib.util

        if importlib.util.find_spec(f"edgekd.{name}") is not None:
            return importlib.import_module(f"edgekd.{name}")  # bound as a CallableModule by _Package
        from edgekd import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgekd' has no attribute {name!r}")
