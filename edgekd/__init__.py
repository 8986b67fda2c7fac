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
__version__ = "0.1.0"

_API = ("run", "run_stage", "validate", "demo", "export", "verify", "profile", "quantize", "bundle",
        "bundle_verify", "report")

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        import importlib
        import importlib.util

        if importlib.util.find_spec(f"edgekd.{name}") is not None:
            return importlib.import_module(f"edgekd.{name}")  # a callable module (edgekd.callable_modules)
        from edgekd import api

        return getattr(api, name)
    raise AttributeError(f"module 'edgekd' has no attribute {name!r}")
