"""edgekd command line: thin click commands over edgekd.api (same names as its keyword arguments)."""
from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

import click

from edgekd.errors import EdgeKDError



class StageChoice(click.Choice):
    """The stage names of edgekd.stages, read when first needed (so `edgekd --help` imports no stage)."""

    def __init__(self) -> None:
        super().__init__(())

    @property
    def choices(self):
        from edgekd.stages import STAGES as REGISTRY

        return tuple(dict.fromkeys(n for task in (None, *REGISTRY.tasks()) for n in REGISTRY.names(task)))

    @choices.setter
    def choices(self, value) -> None:
        pass


STAGES = StageChoice()


def user_errors(fn):
    """Turn EdgeKDError (and a missing optional package) into one clear line on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except EdgeKDError as e:
            click.echo(f"edgekd: error: {e}", err=True)
            sys.exit(2)
        except ModuleNotFoundError as e:
            from edgekd.extras import missing_extra

            hint = missing_extra(e)
            if hint is None:
                raise
            click.echo(f"edgekd: error: {hint}", err=True)
            sys.exit(2)
        except KeyboardInterrupt:
            click.echo("edgekd: interrupted; finished stages and the last checkpoint are kept, re-run to resume",
                       err=True)
            sys.exit(130)

    return wrapper


def parse_overrides(items: tuple[str, ...]) -> dict:
    from edgekd.config import parse_overrides as parse  # one parser: plain YAML values, tags refused in one line

    return parse(items)


def comma_list(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    """A repeatable option that also takes comma lists (--runtime litert,onnxruntime --runtime torch)."""
    from edgekd.api import split_names

    return tuple(split_names(values))


def print_summary(run_dir: Path) -> None:
    """The headline figures: accuracy of every model and file, latency per file and runtime, sizes."""
    from edgekd.report import results_json

    results = results_json(run_dir)
    click.echo("")
    for row in results.get("accuracy", []):
        extra = f"  max|diff| {row['max_abs_diff']:.1e}" if row.get("max_abs_diff") is not None else ""
        click.echo(f"accuracy  {row['model']:<34} {row['runtime']:<12} {row['precision']:<17} "
                   f"{row['accuracy'] * 100:6.2f}%{extra}")
    for target, rows in (results.get("latency") or {}).items():
        for r in rows:
            basis = "measured" if r.get("measured") else f"predicted ±{(r.get('uncertainty') or 0) * 100:.0f}%"
            p99 = f"{r['p99_ms']:.3f} ms" if r.get("p99_ms") is not None else "-"
            click.echo(f"latency   {target:<12} {r['name']:<22} {r['runtime']:<12} p50 {r['p50_ms']:.3f} ms  "
                       f"p99 {p99:<9} {(r.get('bytes') or 0) / 1024:6.1f} KiB  {basis}")
    for line in results.get("summary", []):
        click.echo(f"- {line}")
    if results.get("headline"):
        click.echo(results["headline"]["text"])
    click.echo(f"report: {run_dir / 'report' / 'report.html'}  (and report.md, results.json)")


def _no_progress(_ctx, _param, value: bool) -> bool:
    if value:  # before any library imports tqdm: theirs go too
        from edgekd.logs import no_third_party_progress

        no_third_party_progress()
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgekd")
def main() -> None:
    """Distill, quantize, export, verify, profile and bundle compact models for edge devices."""
    from edgekd.logs import no_third_party_progress, quiet_third_party_logs

    quiet_third_party_logs()
    if not sys.stderr.isatty():  # a log file or CI: no library's progress bar either
        no_third_party_progress()


@main.command()
@click.option("--run-dir", type=click.Path(path_type=Path), help="Where the run goes (default runs/fashion-mnist-demo).")
@click.option("--set", "overrides", multiple=True, help="Override a recipe value, e.g. --set distill.train.epochs=2.")
@click.option("--no-progress", is_flag=True, callback=_no_progress, help="No progress bars.")
@user_errors
def demo(run_dir: Path | None, overrides: tuple[str, ...], no_progress: bool) -> None:
    """Run the shipped Fashion-MNIST recipe end to end and print the headline figures."""
    import time

    from edgekd import api

    t0 = time.perf_counter()
    out = api.demo(run_dir=run_dir, overrides=parse_overrides(overrides), progress=not no_progress)
    print_summary(out)
    click.echo(f"demo wall time: {time.perf_counter() - t0:.0f} s")


def _run_task(run_dir: Path) -> str | None:
    """The task a run directory's recipe.yaml names (None for the default image task)."""
    import yaml

    try:
        data = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return None
    return data.get("task") if isinstance(data, dict) else None


@main.command("run")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--run-dir", type=click.Path(path_type=Path), help="Run directory (default runs/<recipe name>).")
@click.option("--until", type=STAGES, help="Stop after this stage.")
@click.option("--only", type=STAGES, multiple=True, help="Run only these stages (others must be done).")
@click.option("--force", is_flag=True, help="Re-run stages even when their inputs are unchanged.")
@click.option("--set", "overrides", multiple=True, help="Override a recipe value, e.g. --set seed=1.")
@click.option("--no-progress", is_flag=True, callback=_no_progress)
@user_errors
def run_cmd(recipe: Path, run_dir: Path | None, until: str | None, only: tuple[str, ...], force: bool,
            overrides: tuple[str, ...], no_progress: bool) -> None:
    """Run every stage of RECIPE (finished, unchanged stages are skipped; training resumes)."""
    from edgekd import api

    out = api.run(recipe, run_dir=run_dir, until=until, only=only, force=force, overrides=parse_overrides(overrides),
                  progress=not no_progress)
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun rank 0 reports; the others trained their share
        return
    if _run_task(out) == "causal_lm" and (out / "report" / "report.md").exists():
        click.echo((out / "report" / "report.md").read_text())  # the LM report (edgekd.lm.report)
    elif (out / "report" / "stage.json").exists():
        print_summary(out)
    else:
        click.echo(f"run directory: {out}")


@main.command()
@click.argument("recipe", type=click.Path(path_type=Path))
@user_errors
def validate(recipe: Path) -> None:
    """Check RECIPE and report every problem at once."""
    from edgekd import api

    r = api.validate(recipe)
    if hasattr(r, "describe"):  # a task recipe with its own sections (edgekd.lm.recipe.LMRecipe)
        return click.echo(f"{recipe}: ok ({r.describe()})")
    click.echo(f"{recipe}: ok ({r.name}: {r.data.dataset}, teacher {r.teacher.model}, student {r.student.model})")


def _stage_command(stage: str, doc: str):
    @click.argument("recipe", type=click.Path(path_type=Path))
    @click.option("--run-dir", type=click.Path(path_type=Path))
    @click.option("--force", is_flag=True, help="Re-run even when inputs are unchanged.")
    @click.option("--set", "overrides", multiple=True)
    @click.option("--no-progress", is_flag=True, callback=_no_progress)
    @user_errors
    def command(recipe: Path, run_dir: Path | None, force: bool, overrides: tuple[str, ...], no_progress: bool):
        from edgekd import api

        out = api.run_stage(recipe, stage, run_dir=run_dir, force=force, overrides=parse_overrides(overrides),
                            progress=not no_progress)
        click.echo(f"{stage}: done in {out}")

    command.__doc__ = doc
    return main.command(stage)(command)


_stage_command("teacher", "Train or load the teacher of RECIPE (weights, TorchScript, ONNX or ensemble).")
_stage_command("distill", "Distill the student of RECIPE from its teacher (runs the teacher stage first if needed).")


@main.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), help="PTQ: where to write the quantized .pt2.")
@click.option("--method", default="minmax", show_default=True, help="PTQ calibration: minmax, percentile, mse.")
@click.option("--runtime", multiple=True, default=("litert",), show_default=True, callback=comma_list,
              help="Runtime(s) that will run the file, repeated or comma-separated; they choose the int8 scheme.")
@click.option("--scheme", default=None, help="Override the scheme by name.")
@click.option("--dataset", default="fashion_mnist", show_default=True)
@click.option("--data-dir", default=None)
@click.option("--calibration", default="calibration/default.yaml", show_default=True,
              help="Calibration recipe (the shipped ones resolve from any directory).")
@click.option("--model", default=None, help="Architecture of a bare state_dict.")
@click.option("--run-dir", type=click.Path(path_type=Path))
@user_errors
def quantize(source: Path, out: Path | None, method: str, runtime: tuple[str, ...], scheme: str | None,
             dataset: str, data_dir: str | None, calibration: str, model: str | None, run_dir: Path | None) -> None:
    """QAT(+KD) of a recipe's student (SOURCE = RECIPE.yaml), or PTQ of a model file (SOURCE = student.pt)."""
    from edgekd import api

    if source.suffix in (".yaml", ".yml"):
        click.echo(f"quantize: done in {api.run_stage(source, 'quantize', run_dir=run_dir)}")
        return
    if out is None:
        raise EdgeKDError("PTQ of a model file needs --out PATH.pt2")
    path = api.quantize(source, out=out, method=method, runtime=runtime, scheme=scheme, dataset=dataset,
                        data_dir=data_dir, calibration=calibration, model=model)
    click.echo(f"quantized: {path}")


@main.command()
@click.argument("model_path", type=click.Path(path_type=Path))
@click.option("--format", "format_", type=click.Choice(["onnx", "tflite"]), required=True)
@click.option("--out", type=click.Path(path_type=Path), required=True)
@click.option("--model", default=None, help="Architecture of a bare state_dict.")
@click.option("--input-shape", default="1,1,28,28", show_default=True)
@user_errors
def export(model_path: Path, format_: str, out: Path, model: str | None, input_shape: str) -> None:
    """Export MODEL_PATH (.pt fp32 edgekd model file or .pt2 quantized) to ONNX or TFLite."""
    from edgekd import api

    shape = tuple(int(s) for s in input_shape.split(","))
    path = api.export(model_path, format=format_, out=out, model=model, input_shape=shape)
    click.echo(f"exported: {path} ({path.stat().st_size / 1024:.1f} KiB)")


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--reference", required=True, type=click.Path(path_type=Path),
              help="The trained model: student.pt (fp32) or student_int8.pt2 (fake-quant).")
@click.option("--dataset", default="fashion_mnist", show_default=True)
@click.option("--data-dir", default=None)
@click.option("--model", default=None, help="Architecture of a bare state_dict reference.")
@click.option("--tolerance", default=1e-4, show_default=True)
@click.option("--test-subset", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
@user_errors
def verify(files, reference, dataset, data_dir, model, tolerance, test_subset, as_json) -> None:
    """Parity and accuracy of exported FILES, each run in its own runtime."""
    from edgekd import api

    res = api.verify(files, reference=reference, dataset=dataset, data_dir=data_dir, model=model,
                     tolerance=tolerance, test_subset=test_subset)
    if as_json:
        click.echo(json.dumps(res, indent=2, default=str))
    else:
        for f in res["files"]:
            click.echo(f"{f['name']:<28} {f['runtime']:<12} acc {f['accuracy']:.4f}  max|diff| "
                       f"{f['max_abs_diff']:.2e}  top-1 agree {f['top1_agreement']:.4f}  "
                       f"{'ok' if f['parity_ok'] else 'PARITY FAILED'}")
    if not res["ok"]:  # exit 1: the files were checked and failed (2 is a usage/input error)
        failed = [f["name"] for f in res["files"] if not f["parity_ok"]]
        click.echo(f"verify failed: {', '.join(failed) or 'no files'}", err=True)
        sys.exit(1)


@main.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--target", default="cpu-local", show_default=True, help="Target name or YAML path.")
@click.option("--threads", type=int, default=None, help="Threads (default: the target's).")
@click.option("--max-seconds", default=2.0, show_default=True, help="Time cap per file.")
@click.option("--min-runs", default=50, show_default=True)
@click.option("--remote", type=click.Choice(["auto", "measure", "predict"]), default="auto", show_default=True,
              help="Remote targets: measure when reachable else predict, always measure, or only predict.")
@click.option("--timeout", "timeout_s", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Seconds one device command may take (default: the target's connect timeouts).")
@click.option("--no-progress", is_flag=True, callback=_no_progress,
              help="No progress bars (never drawn when output is not a terminal).")
@click.option("--json", "as_json", is_flag=True)
@user_errors
def profile(files, target, threads, max_seconds, min_runs, remote, timeout_s, no_progress, as_json) -> None:
    """Latency of FILES on TARGET (measured when reachable, else predicted and labelled so)."""
    from edgekd import api
    from edgekd.profile.stage import format_profile

    res = api.profile(files, target=target, threads=threads, max_seconds=max_seconds, min_runs=min_runs,
                      remote=remote, progress=not (as_json or no_progress), timeout_s=timeout_s)
    click.echo(json.dumps(res, indent=2, default=str) if as_json else format_profile(res))


@main.command(context_settings={"ignore_unknown_options": False})
@click.argument("args", nargs=-1, required=True, metavar="RUN_DIR | verify ARCHIVE | keygen KEY.pem")
@click.option("--target", default="cpu-local", show_default=True, help="Target whose archive to make.")
@click.option("--out", type=click.Path(path_type=Path), help="Folder for the archive (default RUN_DIR/bundle).")
@click.option("--sign-key", type=click.Path(path_type=Path),
              help="Ed25519 private key (PEM): sign the manifest (manifest.sig in the archive).")
@click.option("--key", type=click.Path(path_type=Path),
              help="verify: Ed25519 public key (PEM) the archive must be signed with.")
@click.option("--no-run", is_flag=True, help="verify: check checksums and metadata only; do not load the models.")
@user_errors
def bundle(args: tuple[str, ...], target: str, out: Path | None, sign_key: Path | None, key: Path | None,
           no_run: bool) -> None:
    """Make the app archive for TARGET from RUN_DIR, `bundle verify ARCHIVE` to check one, or `bundle keygen
    KEY.pem` to make a signing key pair (KEY.pem private, KEY.pub.pem public).

    verify checks every checksum against the manifest (and, with --key, the manifest's signature), reads the model
    metadata back, and runs each model once in its runtime; a tampered, truncated or mismatched archive exits
    with status 2. Without a signature the checksums catch damage, not deliberate tampering.
    """
    from edgekd import api

    if args[0] == "verify":
        if len(args) != 2:
            raise EdgeKDError("usage: edgekd bundle verify ARCHIVE.zip [--key PUBLIC.pem]")
        report = api.bundle_verify(Path(args[1]), run_models=not no_run, key=key)
        click.echo(report.summary())
        return
    if args[0] == "keygen":
        if len(args) != 2:
            raise EdgeKDError("usage: edgekd bundle keygen KEY.pem")
        private, public = api.bundle_keygen(Path(args[1]))
        click.echo(f"private key {private} (keep it secret), public key {public} (give it to whoever verifies)")
        return
    if len(args) != 1:
        raise EdgeKDError("usage: edgekd bundle RUN_DIR [--target NAME] (or: edgekd bundle verify ARCHIVE.zip)")
    click.echo(f"bundle: {api.bundle(Path(args[0]), target=target, out=out, sign_key=sign_key)}")


@main.command()
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print results.json for scripts.")
@user_errors
def report(run_dir: Path, as_json: bool) -> None:
    """Rebuild the report of RUN_DIR from its files alone."""
    from edgekd import api
    from edgekd.report import results_json

    if not run_dir.is_dir():
        raise EdgeKDError(f"run directory not found: {run_dir}")
    api.report(run_dir)
    if as_json:
        click.echo(json.dumps(results_json(run_dir), indent=2, default=str))
    else:
        click.echo(f"report: {run_dir / 'report' / 'report.md'}, {run_dir / 'report' / 'report.html'}")


@main.group(invoke_without_command=True)
@click.pass_context
@user_errors
def targets(ctx) -> None:
    """List targets; `edgekd targets show NAME` prints one."""
    if ctx.invoked_subcommand is None:
        from edgekd import api
        from edgekd.profile import format_targets_table

        click.echo(format_targets_table(api.targets()))


@targets.command("show")
@click.argument("name")
@user_errors
def targets_show(name: str) -> None:
    """Print target NAME (a name from targets/ or a YAML path)."""
    from edgekd import api
    from edgekd.profile import format_target

    click.echo(format_target(api.target(name)))


@main.command()
@click.option("--target", default="cpu-local", show_default=True)
@click.option("--runtime", default="onnxruntime", show_default=True)
@click.option("--precision", default="fp32", show_default=True, type=click.Choice(["fp32", "int8"]))
@click.option("--threads", type=int, default=None)
@click.option("--rounds", type=click.IntRange(min=1), default=5, show_default=True,
              help="interleaved passes over the micro-models; each keeps its lowest median")
@click.option("--time-cap", type=click.FloatRange(min=0.05), default=2.0, show_default=True,
              help="seconds at most per micro-model and pass")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="where to write the fit [default: calibration/latency/TARGET/RUNTIME-PRECISION.json]")
@click.option("--no-progress", is_flag=True, callback=_no_progress)
@user_errors
def calibrate(target: str, runtime: str, precision: str, threads: int | None, rounds: int, time_cap: float,
              out: Path | None, no_progress: bool) -> None:
    """Fit the latency predictor for TARGET from micro-benchmarks measured on it (~8 minutes for cpu-local)."""
    from edgekd import api
    from edgekd.profile.predict import Calibration

    path = api.calibrate(target, runtime=runtime, precision=precision, threads=threads, rounds=rounds,
                         time_cap=time_cap, out=out, progress=not no_progress)
    calib = Calibration.load(path)
    model = "ONNX Runtime node model" if calib.node_costs else "per-layer model"
    click.echo(f"calibration written: {path} ({len(calib.residuals)} micro-models, {model}, "
               f"predictions carry +-{calib.uncertainty:.0%})")


@main.command("tune")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--budget-s", type=float, help="Wall-clock budget of the search (default tune.budget_s).")
@click.option("--trials", type=int, help="Optuna trials (default tune.trials).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write RECIPE with the chosen losses here.")
@click.option("--run-dir", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Tune again even when the inputs are unchanged.")
@click.option("--set", "overrides", multiple=True)
@click.option("--no-progress", is_flag=True, callback=_no_progress)
@user_errors
def tune_cmd(recipe: Path, budget_s: float | None, trials: int | None, out: Path | None, run_dir: Path | None,
             force: bool, overrides: tuple[str, ...], no_progress: bool) -> None:
    """Choose KD losses, temperature and weights for RECIPE by short proxy runs on its validation split."""
    from edgekd import api
    from edgekd.auto.tune import describe_losses

    res = api.tune(recipe, budget_s=budget_s, trials=trials, out=out, run_dir=run_dir,
                   overrides=parse_overrides(overrides), force=force, progress=not no_progress)
    for row in res["trials"]:
        mark = "*" if row["name"] == res["chosen"]["source"] else " "
        acc = f"{row['val_accuracy'] * 100:6.2f}%" if row.get("val_accuracy") is not None else "   n/a "
        click.echo(f"{mark} {row['name']:<10} {acc}  {row['state']:<9} {describe_losses(row.get('losses'))}")
    c = res["chosen"]
    click.echo(f"chosen: {c['source']} ({describe_losses(c['losses'])}): {c['why']}; {res['spent_s']:.0f} s")
    click.echo(f"run directory: {res['run_dir']}" + (f"; tuned recipe: {res['recipe']}" if res["recipe"] else ""))


@main.command("search")
@click.argument("recipe", type=click.Path(path_type=Path))
@click.option("--target", "targets", multiple=True, help="Target to meet a budget on (repeat for several).")
@click.option("--budget-ms", "budgets", type=float, multiple=True, help="p50 budget in ms, one per --target.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write RECIPE with the chosen student here.")
@click.option("--run-dir", type=click.Path(path_type=Path))
@click.option("--force", is_flag=True, help="Search again even when the inputs are unchanged.")
@click.option("--set", "overrides", multiple=True)
@click.option("--no-progress", is_flag=True, callback=_no_progress)
@user_errors
def search_cmd(recipe: Path, targets: tuple[str, ...], budgets: tuple[float, ...], out: Path | None,
               run_dir: Path | None, force: bool, overrides: tuple[str, ...], no_progress: bool) -> None:
    """Find the most accurate student of a declared space inside a latency budget per target."""
    from edgekd import api

    res = api.search(recipe, target=targets, budget_ms=budgets, out=out, run_dir=run_dir,
                     overrides=parse_overrides(overrides), force=force, progress=not no_progress)
    for target, front in res["fronts"].items():
        click.echo(f"Pareto front on {target}: {', '.join(front)}")
    c = res["chosen"]
    lat = ", ".join(f"{t} {v['ms']:.3g} ms" for t, v in c["latency"].items())
    click.echo(f"chosen: {c['name']} ({c['params']:,} params, {lat}, proxy validation {c['val_accuracy'] * 100:.2f}%)")
    rho = (res.get("rank_check") or {}).get("spearman")
    if rho is not None:
        click.echo(f"proxy vs full training rank agreement (Spearman): {rho:.2f}")
    click.echo(f"recipe: {res['recipe']}  (edgekd run it to continue)")


if __name__ == "__main__":
    main()
