"""Packaging: optional extras (a missing one is one line naming it), pyproject declarations, test tiers."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgekd.errors import EdgeKDError
from edgekd.extras import EXTRA_OF_MODULE, missing_extra, require

REPO = Path(__file__).resolve().parents[1]


def test_require_imports_what_is_installed():
    assert require("yaml", "core").safe_load("a: 1") == {"a": 1}


def test_require_names_the_extra_when_the_package_is_missing():
    with pytest.raises(EdgeKDError, match=r"TFLite export needs the 'litert' extra \(edgekd_no_such_pkg is not "
                                          r"installed\): pip install 'edgekd\[litert\]'$"):
        require("edgekd_no_such_pkg.sub", "litert", feature="TFLite export")


def test_require_shows_a_broken_install_as_it_is(tmp_path, monkeypatch):
    """A package that is there but whose own import fails is not hidden behind a wrong 'install the extra' hint."""
    (tmp_path / "edgekd_half_pkg").mkdir()
    (tmp_path / "edgekd_half_pkg" / "__init__.py").write_text("import edgekd_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModuleNotFoundError, match="edgekd_missing_dependency"):
        require("edgekd_half_pkg", "vision")


def test_cli_turns_a_missing_optional_package_into_one_line(monkeypatch):
    from edgekd import api
    from edgekd.cli import main

    def export(*args, **kwargs):
        raise ModuleNotFoundError("No module named 'litert_torch'", name="litert_torch")

    monkeypatch.setattr(api, "export", export)
    result = CliRunner().invoke(main, ["export", "s.pt", "--format", "tflite", "--out", "s.tflite"])
    assert result.exit_code == 2
    assert result.output == ("edgekd: error: litert_torch is not installed; it comes with the 'litert' extra: "
                             "pip install 'edgekd[litert]'\n")
    # any other missing module is a bug, not a missing extra: it keeps its traceback
    assert missing_extra(ModuleNotFoundError("x", name="edgekd.nonexistent")) is None
    assert "--no-deps tflite-support" in str(missing_extra(ModuleNotFoundError("x", name="tensorflow_lite_support.a")))


def test_every_extra_named_in_code_is_declared_and_all_holds_them():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    extras = meta["optional-dependencies"]
    assert set(EXTRA_OF_MODULE.values()) <= set(extras), set(EXTRA_OF_MODULE.values()) - set(extras)
    (everything,) = extras["all"]
    named = set(everything.split("[")[1].rstrip("]").split(","))
    assert named == set(extras) - {"all"}, named
    core = " ".join(meta["dependencies"])
    for heavy in ("tensorflow", "litert", "torchvision", "timm", "transformers"):
        assert heavy not in core, f"{heavy} is in the core install"
    assert meta["requires-python"] == ">=3.11,<3.13"


def test_test_tiers_are_consistent():
    """`make test` skips slow, export and device tests; `make test-all` runs everything that needs no device."""
    import re

    ini = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["pytest"]["ini_options"]
    assert "-m 'not slow and not export and not device'" in ini["addopts"]
    assert {m.split(":")[0] for m in ini["markers"]} == {"slow", "export", "device"}
    make = (REPO / "Makefile").read_text()
    targets = dict(re.findall(r"^(test[\w-]*):.*\n\t\$\(PYTEST\) -q(.*)$", make, flags=re.M))
    assert targets == {"test": "", "test-export": " -m export", "test-slow": " -m slow", "test-device": " -m device",
                       "test-all": ' -m "not device"'}, targets


def test_default_calibration_recipe_resolves_from_any_directory(tmp_path, monkeypatch):
    from edgekd.quant import load_calibration_recipe
    from edgekd.resources import locate, shipped_path

    monkeypatch.chdir(tmp_path)
    assert load_calibration_recipe("calibration/default.yaml").size > 0
    assert locate("calibration/default.yaml") == shipped_path("calibration/default.yaml")
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "default.yaml").write_text("size: 7\n")
    assert load_calibration_recipe("calibration/default.yaml").size == 7  # the user's own file comes first
    with pytest.raises(EdgeKDError, match=r"calibration recipe not found: calibration/nope\.yaml$"):
        load_calibration_recipe("calibration/nope.yaml")
