"""The CLI: help on every command, user errors as one line with exit status 2, no traceback."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekd.cli import main

REPO = Path(__file__).resolve().parents[1]
COMMANDS = ["demo", "run", "validate", "teacher", "distill", "quantize", "export", "verify", "profile", "bundle",
            "report", "targets", "calibrate", "tune", "search"]


@pytest.mark.parametrize("command", COMMANDS)
def test_help_on_every_command(command):
    result = CliRunner().invoke(main, [command, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output


def test_validate_reports_every_problem_and_exits_2(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("data: {datset: fashion_mnist}\nstudent: {model: tiny_cn}\ndistill: {losses: [{name: kd_sotf}]}\n")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 2
    assert "3 problem(s)" in result.output
    assert "did you mean 'dataset'" in result.output
    assert "did you mean 'tiny_cnn'" in result.output
    assert "unknown loss 'kd_sotf'; did you mean 'kd_soft'" in result.output
    assert "Traceback" not in result.output


def test_validate_ok(tmp_path):
    recipe = tmp_path / "ok.yaml"
    recipe.write_text("data: {dataset: digits}\nstudent: {model: tiny_cnn}\n")
    result = CliRunner().invoke(main, ["validate", str(recipe)])
    assert result.exit_code == 0 and "ok" in result.output


def test_wrong_paths_are_one_line_errors(tmp_path):
    runner = CliRunner()
    for args in (["validate", str(tmp_path / "nope.yaml")],
                 ["export", str(tmp_path / "nope.pt"), "--format", "onnx", "--out", str(tmp_path / "x.onnx")],
                 ["report", str(tmp_path / "no-run")],
                 ["profile", str(tmp_path / "nope.tflite"), "--target", "cpu-local"],
                 ["targets", "show", "pixel-88"]):
        result = runner.invoke(main, args)
        assert result.exit_code == 2, (args, result.output)
        assert result.output.startswith("edgekd: error:") and result.output.count("\n") == 1
    assert not (tmp_path / "x.onnx").exists()


def test_real_process_exit_status_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "edgekd.cli", "run", str(tmp_path / "missing.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"edgekd: error: recipe not found: {tmp_path / 'missing.yaml'}"


def test_calibrate_refuses_what_it_cannot_measure_in_one_line(tmp_path):
    out = tmp_path / "c.json"
    for args, says in [(["--precision", "int8"], "fp32 micro-models only"),
                       (["--runtime", "tensorrt"], "not listed for target cpu-local"),
                       (["--target", "cpu-locl"], "did you mean 'cpu-local'")]:
        result = CliRunner().invoke(main, ["calibrate", *args, "--out", str(out)])
        assert result.exit_code == 2 and says in result.output and "Traceback" not in result.output, result.output
    result = CliRunner().invoke(main, ["calibrate", "--rounds", "0", "--out", str(out)])
    assert result.exit_code == 2 and "--rounds" in result.output
    assert not out.exists()


# --- every command is one edgekd.api call whose keyword arguments carry the options' names ---------------------------

# command -> the api function it calls; option names that are not api arguments, and how they are renamed.
API_OF_COMMAND = {"demo": "demo", "run": "run", "validate": "validate", "teacher": "run_stage", "distill": "run_stage",
                  "quantize": "quantize", "export": "export", "verify": "verify", "profile": "profile",
                  "report": "report", "calibrate": "calibrate"}
RENAMED = {"no_progress": "progress", "format_": "format"}
DISPLAY_ONLY = {"as_json"}  # how the CLI prints, not what the api does
NOT_API = {"quantize": {"source", "run_dir"}}  # SOURCE is a model file (api.quantize) or a recipe (api.run_stage)


@pytest.mark.parametrize("command", sorted(API_OF_COMMAND))
def test_option_names_are_the_api_argument_names(command):
    import inspect

    from edgekd import api

    params = set(inspect.signature(getattr(api, API_OF_COMMAND[command])).parameters)
    cmd = main.commands[command]
    names = {RENAMED.get(p.name, p.name) for p in cmd.params} - DISPLAY_ONLY - NOT_API.get(command, set())
    assert names <= params, f"edgekd {command}: options {sorted(names - params)} are not api arguments"


def _record(monkeypatch, name, result):
    from edgekd import api

    calls = []

    def fake(*args, **kwargs):
        calls.append((args, kwargs))
        return result(*args, **kwargs) if callable(result) else result

    monkeypatch.setattr(api, name, fake)
    return calls


def test_run_and_stage_commands_call_the_api_with_overrides(monkeypatch, tmp_path):
    calls = _record(monkeypatch, "run", tmp_path)
    result = CliRunner().invoke(main, ["run", "r.yaml", "--until", "export", "--only", "verify", "--force",
                                       "--set", "distill.train.epochs=2", "--no-progress"])
    assert result.exit_code == 0, result.output
    (args, kwargs), = calls
    assert str(args[0]) == "r.yaml" and kwargs["until"] == "export" and tuple(kwargs["only"]) == ("verify",)
    assert kwargs["overrides"] == {"distill.train.epochs": 2} and kwargs["force"] and not kwargs["progress"]

    for stage in ("teacher", "distill"):
        calls = _record(monkeypatch, "run_stage", tmp_path)
        result = CliRunner().invoke(main, [stage, "r.yaml", "--set", "seed=3"])
        assert result.exit_code == 0, result.output
        (args, kwargs), = calls
        assert args[1] == stage and kwargs["overrides"] == {"seed": 3}


def test_api_run_applies_overrides_to_a_path_and_to_a_recipe(monkeypatch, tmp_path):
    from edgekd import api, pipeline
    from edgekd.config import load_recipe

    seen = []
    monkeypatch.setattr(pipeline, "run", lambda recipe, **kw: seen.append(recipe) or tmp_path)
    path = tmp_path / "r.yaml"
    path.write_text("data: {dataset: digits}\nstudent: {model: tiny_cnn}\n")
    api.run(path, overrides={"distill.train.epochs": 3, "seed": 7})
    api.run(load_recipe(path), overrides={"distill.train.epochs": 4})
    api.run_stage(path, "distill", overrides={"seed": 9})
    assert (seen[0].distill.train.epochs, seen[0].seed) == (3, 7)
    assert seen[1].distill.train.epochs == 4 and seen[1].data.dataset == "digits"
    assert seen[2].seed == 9


def test_targets_and_calibrate_call_the_api(monkeypatch, tmp_path):
    from edgekd import api

    calls = _record(monkeypatch, "targets", lambda: [api.target("pixel-8")])
    result = CliRunner().invoke(main, ["targets"])
    assert result.exit_code == 0 and len(calls) == 1 and "pixel-8" in result.output
    assert "cpu-local" not in result.output  # the table is what api.targets returned
    from edgekd.profile import load_target

    calls = _record(monkeypatch, "target", load_target)
    result = CliRunner().invoke(main, ["targets", "show", "pixel-8"])
    assert result.exit_code == 0 and calls == [(("pixel-8",), {})] and result.output.startswith("pixel-8")

    from edgekd.resources import shipped_path

    fitted = shipped_path("calibration/latency/cpu-local/onnxruntime-fp32.json")
    calls = _record(monkeypatch, "calibrate", fitted)
    result = CliRunner().invoke(main, ["calibrate", "--target", "cpu-local", "--rounds", "2", "--time-cap", "0.5",
                                       "--out", str(tmp_path / "c.json"), "--no-progress"])
    assert result.exit_code == 0 and f"calibration written: {fitted}" in result.output, result.output
    (args, kwargs), = calls
    assert args == ("cpu-local",) and kwargs["rounds"] == 2 and kwargs["time_cap"] == 0.5
    assert kwargs["out"] == tmp_path / "c.json" and kwargs["progress"] is False


def test_runtime_takes_a_comma_list_and_repeats(monkeypatch, tmp_path):
    from edgekd.api import split_names

    assert split_names("litert, onnxruntime") == ["litert", "onnxruntime"]
    assert split_names(["litert,onnxruntime", "torch"]) == ["litert", "onnxruntime", "torch"]
    calls = _record(monkeypatch, "quantize", tmp_path / "q.pt2")
    result = CliRunner().invoke(main, ["quantize", "s.pt", "--out", str(tmp_path / "q.pt2"),
                                       "--runtime", "litert,onnxruntime", "--runtime", "torch"])
    assert result.exit_code == 0, result.output
    assert tuple(calls[0][1]["runtime"]) == ("litert", "onnxruntime", "torch")


def test_error_hints_name_options_that_exist():
    """Every `edgekd CMD ... --option` a message suggests is a real option of CMD; every command that loads a
    model file takes --model (the hint for a bare state_dict)."""
    import re

    hints = set()
    for path in (REPO / "edgekd").rglob("*.py"):
        for cmd, tail in re.findall(r"edgekd ([a-z]+)((?: [A-Z_.]+| --[a-z-]+(?: \{?[A-Za-z_.}]+\}?)?)*)",
                                    path.read_text()):
            hints.update((cmd, opt) for opt in re.findall(r"--[a-z-]+", tail))
    assert hints, "no hints found: the pattern is broken"
    for cmd, opt in sorted(hints):
        assert cmd in main.commands, f"a message names a command that does not exist: edgekd {cmd}"
        opts = {o for p in main.commands[cmd].params for o in p.opts}
        assert opt in opts, f"a message suggests `edgekd {cmd} {opt}`, which does not exist"
    for cmd in ("export", "quantize", "verify"):
        assert "--model" in {o for p in main.commands[cmd].params for o in p.opts}, cmd


def test_verify_suggests_model_and_takes_it(tmp_path, digits):
    import torch

    from edgekd.models import build_model

    bare = tmp_path / "bare.pt"
    torch.save(build_model("tiny_cnn", num_classes=10, in_channels=1).state_dict(), bare)
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "x.onnx"), "--reference", str(bare),
                                       "--dataset", "digits"])
    assert result.exit_code == 2 and "--model" in result.output, result.output
    result = CliRunner().invoke(main, ["verify", str(tmp_path / "x.onnx"), "--reference", str(bare),
                                       "--dataset", "digits", "--model", "tiny_cnn"])
    assert result.exit_code == 2 and "--model" not in result.output and "x.onnx" in result.output, result.output


def test_api_docstring_examples_match_the_signatures():
    """The examples in edgekd's and edgekd.api's docstrings pass only arguments the functions take."""
    import ast
    import inspect

    import edgekd
    from edgekd import api

    calls = 0
    for doc in (edgekd.__doc__, api.__doc__):
        for line in doc.splitlines():
            for expr in re.findall(r"^ {4}(?:\w+ = )?(edgekd\.\w+\(.*\))(?:\s+#.*)?$", line):  # example lines
                call = ast.parse(expr, mode="eval").body
                fn = getattr(api, call.func.attr)
                inspect.signature(fn).bind(*[None] * len(call.args), **{k.arg: None for k in call.keywords})
                calls += 1
    assert calls >= 5


# --- edgekd.export(...) & co. keep working after their subpackage is imported (issue 11 item 4) ----------------------

def test_operations_named_like_subpackages_stay_callable():
    """In a fresh process: each call twice, then after importing the subpackages explicitly, then once more."""
    code = """
import importlib, sys
from edgekd import api
import edgekd
names = [n for n in edgekd._API if importlib.util.find_spec("edgekd." + n)]
assert {"export", "verify", "profile", "bundle", "report"} <= set(names), names
for n in names:
    setattr(api, n, lambda *a, _n=n, **k: (_n, a, k))
for n in names:
    assert getattr(edgekd, n)(1, x=2) == (n, (1,), {"x": 2}), n
    assert getattr(edgekd, n)(3) == (n, (3,), {}), n
    importlib.import_module("edgekd." + n)
    assert getattr(edgekd, n)(4) == (n, (4,), {}), n
    assert getattr(edgekd, n) is sys.modules["edgekd." + n]
import edgekd.export.onnx, edgekd.profile.targets
assert edgekd.export.onnx.__name__ == "edgekd.export.onnx" and edgekd.profile.targets.list_targets()
from edgekd.export import export_onnx
print("ok", names)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and proc.stdout.startswith("ok"), proc.stderr[-3000:]


def test_profile_called_twice_for_real(tmp_path):
    import edgekd
    from tests.test_wheel import _tiny_onnx

    model = _tiny_onnx(tmp_path / "tiny.onnx")
    first = edgekd.profile([model], target="raspberry-pi-5", remote="predict", progress=False)
    import edgekd.profile  # noqa: F401  the import that used to replace the function

    second = edgekd.profile([model], target="raspberry-pi-5", remote="predict", progress=False)
    assert first["targets"][0]["results"][0]["p50_ms"] == second["targets"][0]["results"][0]["p50_ms"] > 0



def test_no_progress_turns_off_library_progress_bars_too(tmp_path, monkeypatch):
    """transformers' GGUF conversion draws its own tqdm bar into logs. tqdm takes its TQDM_* defaults when it is
    imported, so --no-progress acts while options are parsed, and a CLI without a terminal acts at start."""
    from edgekd.cli import _no_progress

    for key in ("TQDM_DISABLE", "HF_HUB_DISABLE_PROGRESS_BARS"):
        monkeypatch.delenv(key, raising=False)
    assert _no_progress(None, None, False) is False and "TQDM_DISABLE" not in os.environ
    assert _no_progress(None, None, True) is True
    assert os.environ["TQDM_DISABLE"] == "1" and os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "1"

    code = ("import os, sys\nfrom edgekd.cli import main\ntry: main(sys.argv[1:])\n"
            "except SystemExit as e: status = e.code\n"
            "from tqdm.auto import tqdm\nprint(status, tqdm(range(2)).disable)")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TQDM_", "HF_HUB_DISABLE"))}
    for args in (["profile", "--no-progress", str(tmp_path / "missing.onnx")], ["profile", str(tmp_path / "x.onnx")]):
        out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                             timeout=120)
        assert out.stdout.split() == ["2", "True"], out.stdout + out.stderr  # stderr is a pipe here: no terminal


def test_progress_bars_are_drawn_only_on_a_terminal():
    import io

    from edgekd.logs import progress_bar

    assert progress_bar(range(3), enabled=False).disable is True
    log = io.StringIO()  # a log file: not a terminal
    bar = progress_bar(range(3), enabled=True, file=log)
    assert bar.disable is True and list(bar) == [0, 1, 2] and log.getvalue() == ""
