"""The public Python API: the same operations and argument names as the CLI commands.

    import edgekd
    run_dir = edgekd.run("my_recipe.yaml", until="export", overrides={"distill.train.epochs": 2})
    edgekd.export("student.pt", format="tflite", out="student.tflite")
    edgekd.profile(["student.tflite"], target="cpu-local", threads=1)

Each CLI command calls one function here whose keyword arguments are named like its options (`--set` is
`overrides`, `--no-progress` is `progress=False`); tests/test_cli.py checks that they stay in step.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:
    from edgekd.config import Recipe
    from edgekd.profile import Target

DEMO_RECIPE = Path(__file__).parent / "recipes" / "fashion_mnist_demo.yaml"

__all__ = ["run", "run_stage", "validate", "demo", "export", "verify", "profile", "quantize", "bundle",
           "bundle_verify", "bundle_keygen", "report", "targets", "target", "calibrate", "tune", "search",
           "DEMO_RECIPE"]


def _recipe(recipe: str | Path | Recipe, overrides: dict[str, Any] | None) -> Recipe:
    """A Recipe from a YAML path or a Recipe, with dotted-key overrides ({"distill.train.epochs": 2}) applied."""
    from edgekd.config import Recipe, load_recipe, parse_recipe, resolve_paths, set_dotted

    if not isinstance(recipe, Recipe):
        return load_recipe(recipe, overrides)
    if not overrides:
        return recipe
    data = recipe.to_dict()
    for key, value in overrides.items():
        set_dotted(data, key, value)
    out = parse_recipe(data, f"recipe {recipe.name!r} with overrides")
    resolve_paths(out, Path.cwd())
    return out


def run(recipe: str | Path | Recipe, *, run_dir: str | Path | None = None, until: str | None = None,
        only: Sequence[str] = (), force: bool = False, overrides: dict[str, Any] | None = None,
        progress: bool = True) -> Path:
    """Run every stage of `recipe` (finished, unchanged stages are skipped; training resumes); returns the run dir.

    overrides: recipe values by dotted key, as `edgekd run --set distill.train.epochs=2` gives them.
    Under torchrun (`torchrun --nproc-per-node N -m edgekd run recipe.yaml`) every process joins the process group
    torchrun describes (NCCL on GPUs, gloo on CPUs) and trains its share of each batch; rank 0 writes the run.
    """
    from edgekd import pipeline
    from edgekd.train import distributed

    parsed = _recipe(recipe, overrides)
    with distributed.session():
        return pipeline.run(parsed, run_dir=run_dir, until=until, only=list(only), force=force, progress=progress)


def validate(recipe: str | Path | Recipe) -> Recipe:
    """Dry-run a recipe (edgekd.validate.dry_run): raises ConfigError listing every problem before anything trains."""
    from edgekd.validate import dry_run

    return dry_run(recipe)[0]


def run_stage(recipe: str | Path | Recipe, stage: str, *, run_dir: str | Path | None = None,
              force: bool = False, overrides: dict[str, Any] | None = None, progress: bool = True) -> Path:
    """Run the recipe up to and including `stage` (earlier stages are reused when unchanged)."""
    return run(recipe, run_dir=run_dir, until=stage, force=force, overrides=overrides, progress=progress)


def demo(*, run_dir: str | Path | None = None, overrides: dict[str, Any] | None = None,
         progress: bool = True) -> Path:
    """Run the shipped Fashion-MNIST recipe end to end."""
    return run(DEMO_RECIPE, run_dir=run_dir, overrides=overrides, progress=progress)


def split_names(values: str | Sequence[str]) -> list[str]:
    """Names given as a comma list, repeats, or both: "a,b" / ["a", "b"] / ["a,b", "c"] -> ["a", "b", "c"]."""
    items = [values] if isinstance(values, str) else list(values)
    return [name.strip() for item in items for name in str(item).split(",") if name.strip()]


def _load_any_model(path: Path, model: str | None = None):
    from edgekd.models import load_model_file

    if path.suffix == ".pt2":
        from edgekd.quant import load_quantized

        return load_quantized(path)
    return load_model_file(path, model)[0]


def export(model_path: str | Path, *, format: str, out: str | Path, model: str | None = None,
           input_shape: Sequence[int] = (1, 1, 28, 28), opset: int | None = None) -> Path:
    """Export an edgekd model file (.pt fp32, or .pt2 quantized) to a registered format (onnx, tflite, pt2).

    `opset` is an ONNX option (default 18); formats that do not take it refuse it in one line.
    """
    import torch

    from edgekd.formats import export_model

    module = _load_any_model(Path(model_path), model)
    example = (torch.zeros(*input_shape),)
    return export_model(format, module, example, Path(out), **({} if opset is None else {"opset": opset}))


def verify(files: Sequence[str | Path], *, reference: str | Path, dataset: str = "fashion_mnist",
           data_dir: str | None = None, model: str | None = None, tolerance: float = 1e-4,
           test_subset: int | None = None) -> dict[str, Any]:
    """Parity of each file with `reference` (an edgekd model file) and each file's accuracy in its runtime."""
    from edgekd.data import load_dataset
    from edgekd.formats import describe_file
    from edgekd.verify import verify_files

    ds = load_dataset(dataset, data_dir, subset_test=test_subset)
    ref_path = Path(reference)
    ref = _load_any_model(ref_path, model)
    quantized = ref_path.suffix == ".pt2"
    described = [describe_file(f) for f in files]
    return verify_files(described, None if quantized else ref, ref if quantized else None, ds.x_test, ds.y_test,
                        tolerance=tolerance)


def profile(files: Sequence[str | Path], *, target: str = "cpu-local", threads: int | None = None,
            max_seconds: float = 2.0, min_runs: int = 50, remote: str = "auto", progress: bool = True,
            timeout_s: float | None = None) -> dict[str, Any]:
    """Latency of each file on `target`: measured on this CPU, over adb/SSH when reachable, else predicted.

    remote: "auto" (measure when reachable, else predict), "measure" (fail when unreachable), "predict".
    timeout_s: the longest one device command may take (default: the target's connect timeouts).
    Raises EdgeKDError when the target runs none of the files.
    """
    from edgekd.fileio import existing_model_file
    from edgekd.profile.stage import profile_run_files

    paths = [existing_model_file(f) for f in files]
    return profile_run_files(paths, [target], threads=threads, max_seconds=max_seconds, min_runs=min_runs,
                             remote=remote, progress=progress, timeout_s=timeout_s, require_runnable=True)


def quantize(model_path: str | Path, *, out: str | Path, method: str = "minmax",
             runtime: str | Sequence[str] = ("litert",),
             scheme: str | None = None, dataset: str = "fashion_mnist", data_dir: str | None = None,
             calibration: str | Path = "calibration/default.yaml", model: str | None = None) -> Path:
    """Post-training quantization of an fp32 edgekd model file with a calibration recipe; writes a .pt2.

    runtime: the runtime(s) that will run the file ("litert", ["litert", "onnxruntime"] or "litert,onnxruntime");
    they choose the int8 scheme. calibration: a calibration recipe; the shipped ones resolve from any directory.
    """
    from edgekd.data import load_dataset
    from edgekd.quant import (calibration_batches, load_calibration_recipe, quantize_ptq, save_quantized,
                              scheme_for_runtimes, select_calibration)

    ds = load_dataset(dataset, data_dir)
    student = _load_any_model(Path(model_path), model)
    sch = scheme_for_runtimes(split_names(runtime), override=scheme)
    calib = select_calibration(ds.x_train, ds.y_train, load_calibration_recipe(calibration))
    q = quantize_ptq(student, ds.x_test[:2], sch, calibration_batches(calib, 64), method=method)
    return save_quantized(q, ds.x_test[:2], Path(out))


def bundle(run_dir: str | Path, *, target: str = "cpu-local", out: str | Path | None = None,
           sign_key: str | Path | None = None) -> Path:
    """Make the mobile-app archive for `target` from a finished run directory (signed with `sign_key` if given)."""
    from edgekd.bundle import bundle_run

    run_dir = Path(run_dir)
    return bundle_run(run_dir, target, Path(out) if out else run_dir / "bundle", signing_key=sign_key)


def bundle_verify(archive: str | Path, *, run_models: bool = True, key: str | Path | None = None):
    """Check an archive's checksums, signature (with `key`, an Ed25519 public key PEM) and metadata; run each model."""
    from edgekd.bundle import verify_bundle

    return verify_bundle(Path(archive), run_models=run_models, key=key)


def bundle_keygen(key: str | Path) -> tuple[Path, Path]:
    """Write an Ed25519 signing key pair: `key` (private, mode 0600) and KEY.pub.pem beside it."""
    from edgekd.bundle.signing import generate_keypair

    return generate_keypair(key)


def report(run_dir: str | Path):
    """Rebuild report.md, report.html, results.json and plots from the run directory alone."""
    from edgekd.report import build_report

    return build_report(Path(run_dir))


def targets() -> list[Target]:
    """Every bundled target (targets/*.yaml, or $EDGEKD_TARGETS_DIR), loaded."""
    from edgekd.profile import list_targets, load_target

    return [load_target(name) for name in list_targets()]


def target(name: str | Path) -> Target:
    """One target by name (`pixel-8`) or a YAML path; an unknown name suggests the closest."""
    from edgekd.profile import load_target

    return load_target(name)


def calibrate(target: str = "cpu-local", *, runtime: str = "onnxruntime", precision: str = "fp32",
              threads: int | None = None, rounds: int = 5, time_cap: float = 2.0, out: str | Path | None = None,
              progress: bool = True) -> Path:
    """Fit the latency predictor for `target` from micro-benchmarks measured on it; returns the calibration file.

    rounds: interleaved passes over the micro-models (each keeps its lowest median); time_cap: seconds at most per
    micro-model and pass; out: default calibration/latency/<target>/<runtime>-<precision>.json.
    """
    from edgekd.profile import calibrate_target

    return calibrate_target(target, runtime=runtime, precision=precision, threads=threads, rounds=rounds,
                            time_cap_s=time_cap, out_path=Path(out) if out else None, progress=progress, log=None)


def tune(recipe: str | Path | Recipe, *, budget_s: float | None = None, trials: int | None = None,
         out: str | Path | None = None, run_dir: str | Path | None = None, overrides: dict[str, Any] | None = None,
         force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Choose KD losses on the validation split with Optuna (docs/auto.md); write the tuned recipe to `out`."""
    from edgekd.auto.commands import tune as run_tune

    return run_tune(recipe, budget_s=budget_s, trials=trials, out=out, run_dir=run_dir, overrides=overrides,
                    force=force, progress=progress)


def search(recipe: str | Path | Recipe, *, target: Sequence[str] = (), budget_ms: Sequence[float] = (),
           out: str | Path | None = None, run_dir: str | Path | None = None,
           overrides: dict[str, Any] | None = None, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """The most accurate student inside a latency budget per target (docs/auto.md); its recipe written to `out`."""
    from edgekd.auto.commands import search as run_search

    return run_search(recipe, targets=target, budget_ms=budget_ms, out=out, run_dir=run_dir, overrides=overrides,
                      force=force, progress=progress)
