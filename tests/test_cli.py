"""The CLI: help on every command, user errors as one line with exit status 2, no traceback."""
import subprocess
import sys

import pytest
from click.testing import CliRunner

from edgekd.cli import main

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
