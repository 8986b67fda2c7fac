"""build_report / results_json from a synthetic run directory: figures, Pareto front, shipped file, missing stages."""
from __future__ import annotations

import base64
import json
import re
from pathlib import Path

import pytest
from test_report_synthetic_run import FILES, report_run, write_run  # noqa: F401

from edgekd.errors import EdgeKDError
from edgekd.report import build_report, choose_shipped, pareto_front, results_json

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """One full run and its report, shared by the tests that only read them."""
    run = write_run(tmp_path_factory.mktemp("built") / "runs" / "tiny", None)
    return run, build_report(run)


def test_report_files_are_written_from_the_run_directory_alone(built):
    report_run, paths = built
    assert paths.markdown == report_run / "report" / "report.md"
    assert set(paths.plots) == {"accuracy_vs_latency", "training_curves", "int8_vs_fp32"}
    for p in [paths.markdown, paths.html, paths.results, *paths.plots.values()]:
        assert p.is_file() and p.stat().st_size > 0
    for p in paths.plots.values():
        assert p.read_bytes()[:8] == PNG
    assert json.loads(paths.results.read_text()) == json.loads(json.dumps(results_json(report_run) | {
        "plots": {k: f"{k}.png" for k in paths.plots}}))


def test_results_hold_accuracy_latency_pareto_and_headline(report_run):
    r = results_json(report_run)
    assert [(a["model"], a["accuracy"]) for a in r["accuracy"]] == [
        ("teacher", 0.912), ("student", 0.884), ("student fake-quant (qat_kd)", 0.880),
        *((n, FILES[n][3]) for n in FILES)]
    assert list(r["latency"]) == ["cpu-local", "pixel-8"]  # the recipe's target order
    assert r["pareto"] == {"cpu-local": ["student_int8.tflite", "student_fp32.tflite"],
                           "pixel-8": ["student_int8.tflite", "student_fp32.tflite"]}
    assert r["shipped"]["cpu-local"]["name"] == "student_int8.tflite"
    h = r["headline"]
    assert h["target"] == "cpu-local" and h["measured"] is True and h["p50_ms"] == pytest.approx(0.2)
    assert h["text"].startswith("Ship student_int8.tflite (litert, int8); top-1 87.9% vs teacher 91.2% (-3.3 pt); "
                                "p50 0.2 ms on cpu-local (measured);")
    pixel = {x["name"]: x for x in r["latency"]["pixel-8"]}
    assert pixel["student_int8.tflite"]["measured"] is False and pixel["student_int8.tflite"]["uncertainty"] == 0.35
    assert [len(r["training"][k]) for k in ("teacher", "student", "qat")] == [5, 6, 2]
    assert "student_int8.onnx FAILED parity against fake_quant (max abs diff 2.9): do not ship it." in r["summary"]
    assert r["missing_stages"] == ["baseline", "bundle", "kd_gain"]


def test_markdown_leads_with_the_headline_then_details(built):
    md = built[1].markdown.read_text()
    assert md.index("**Ship student_int8.tflite") < md.index("## Verdicts") < md.index("## Accuracy") \
        < md.index("## Latency on cpu-local") < md.index("## Plots")
    assert "| top-1 accuracy | 87.90% | 91.20% |" in md
    assert "| ★ student_int8.tflite | litert | int8 | 1 | 0.2 | 0.22 | 0.26 | 7.0% ⚠ noisy | 2 | 1.5 kB | 87.90% | measured |" in md
    assert "_Device: x86_64 AVX2; runtimes: litert 2.3.0, onnxruntime 1.32.0. ★ = on the Pareto front" in md
    assert "| ★ student_int8.tflite | litert | int8 | 4 | 0.12 |" in md and "predicted ±35% |" in md
    assert "| student_int8.onnx | exported | onnxruntime | int8 | 86.10% | FAILED (max diff 2.9 vs fake_quant) |" in md
    assert "![accuracy_vs_latency](accuracy_vs_latency.png)" in md


def test_html_is_self_contained(built):
    text = built[1].html.read_text()
    assert not re.search(r"https?://|<link|<script|@import|url\(", text)
    srcs = re.findall(r'<img [^>]*src="([^"]+)"', text)
    assert len(srcs) == 3
    for src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == PNG


def test_a_run_stopped_before_profile_says_what_is_missing(tmp_path):
    run = write_run(tmp_path / "runs" / "early", None, until="verify")
    stale = run / "report" / "accuracy_vs_latency.png"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(PNG)
    paths = build_report(run)
    assert set(paths.plots) == {"training_curves", "int8_vs_fp32"} and not stale.exists()
    md = paths.markdown.read_text()
    assert "- **profile** did not run: no latency: no latency tables, accuracy-vs-latency or int8-vs-fp32 plots." in md
    assert "## Latency" not in md and "## Exported files" in md
    r = results_json(run)
    assert r["latency"] == {} and r["headline"]["p50_ms"] is None
    assert "p50" not in r["headline"]["text"] and r["headline"]["text"].startswith("Ship student_int8.tflite")


def test_a_run_with_only_a_teacher_still_reports(tmp_path):
    run = write_run(tmp_path / "runs" / "t", None, until="teacher")
    paths = build_report(run)
    md = paths.markdown.read_text()
    assert "**No exported file to ship yet.**" in md and "- **export** did not run" in md
    assert list(paths.plots) == ["training_curves"]
    assert "No exported file to ship yet." in paths.html.read_text()


def test_an_empty_run_directory_and_a_missing_one(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(EdgeKDError, match="empty is not an edgekd run directory .no recipe.yaml, no <stage>/stage"):
        results_json(tmp_path / "empty")
    with pytest.raises(EdgeKDError, match="not an edgekd run directory"):
        build_report(tmp_path / "empty")
    assert not (tmp_path / "empty" / "report").exists()
    with pytest.raises(EdgeKDError, match="run directory not found: .*nope"):
        build_report(tmp_path / "nope")


def test_a_run_with_only_a_recipe_lists_every_stage_missing(tmp_path):
    run = tmp_path / "fresh"
    run.mkdir()
    (run / "recipe.yaml").write_text("name: fresh\nbundle: {enabled: false}\n")
    assert results_json(run)["missing_stages"] == ["teacher", "baseline", "distill", "quantize", "export", "verify",
                                                   "profile", "kd_gain"]
    assert build_report(run).plots == {}


def test_a_recipe_that_no_longer_loads_is_a_problem_line(report_run):
    (report_run / "recipe.yaml").write_text("name: t\nprofile: {targets: [no-such-target]}\n")
    r = results_json(report_run)
    assert r["problems"][0].startswith("recipe.yaml does not load (") and "no-such-target" in r["problems"][0]
    assert list(r["latency"]) == ["cpu-local", "pixel-8"]  # without the recipe's order: sorted


def test_report_cli_on_an_empty_directory_is_one_line_and_exit_2(tmp_path):
    from click.testing import CliRunner

    from edgekd.cli import main

    (tmp_path / "empty").mkdir()
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"\xff\xd8")
    for folder in ("empty", "photos"):
        result = CliRunner().invoke(main, ["report", str(tmp_path / folder)])
        assert result.exit_code == 2
        assert result.output.count("\n") == 1 and f"{folder} is not an edgekd run directory" in result.output
        assert not (tmp_path / folder / "report").exists()


def test_an_unreadable_stage_json_is_a_problem_line_not_a_crash(report_run):
    (report_run / "verify" / "stage.json").write_text("{not json")
    r = results_json(report_run)
    assert "verify" in r["missing_stages"]
    assert r["problems"][0].startswith("verify/stage.json is unreadable")
    assert "verify/stage.json is unreadable" in build_report(report_run).markdown.read_text()


def test_int8_size_verdict_says_larger_when_it_is(report_run):
    export = json.loads((report_run / "export" / "stage.json").read_text())
    for f in export["metrics"]["files"]:
        f["bytes"] = {"fp32": 1000, "int8": 2000}[f["precision"]] if f["runtime"] == "onnxruntime" else \
            {"fp32": 4000, "int8": 1000}[f["precision"]]
    (report_run / "export" / "stage.json").write_text(json.dumps(export))
    summary = results_json(report_run)["summary"]
    assert "litert: the int8 file is 4.0x smaller than the fp32 one (1.0 kB vs 4.0 kB)." in summary
    assert "onnxruntime: the int8 file is 2.0x larger than the fp32 one (2.0 kB vs 1.0 kB)." in summary


def test_quantization_verdict_says_cost_or_change_without_double_negatives():
    from edgekd.report.results import verdict_sentences

    def sentence(fp32, fq):
        results = {"models": {"student": {"test_accuracy": fp32}, "quantized": {"method": "qat_kd",
                                                                               "fake_quant_accuracy": fq}},
                   "files": [], "verdicts": []}
        return [s for s in verdict_sentences(results) if s.startswith("Quantization")][0]

    gain = "Quantization (qat_kd) changes top-1 by +0.3 pt in simulation (91.4% vs 91.1% fp32)."
    assert sentence(0.9113, 0.9139) == gain
    assert sentence(0.9113, 0.9050) == "Quantization (qat_kd) costs 0.6 pt in simulation (90.5% vs 91.1% fp32)."


def _row(name, p50, acc, **kw):
    return {"name": name, "p50_ms": p50, "accuracy": acc, **kw}


def test_pareto_front_by_hand():
    rows = [_row("a", 1.0, 0.80), _row("b", 2.0, 0.90), _row("c", 2.5, 0.85), _row("d", 3.0, 0.90),
            _row("e", 0.5, None), _row("f", 4.0, 0.95), _row("g", 1.0, 0.80)]
    # c is beaten by b (faster, more accurate); d ties b on accuracy but is slower; e has no accuracy;
    # a and g are identical: neither beats the other, both stay.
    assert pareto_front(rows) == ["a", "g", "b", "f"]
    assert pareto_front([]) == []


def test_choose_shipped_by_hand():
    files = [{"name": "fp32", "accuracy": 0.90, "parity_ok": True, "bytes": 400},
             {"name": "int8", "accuracy": 0.895, "parity_ok": True, "bytes": 100},
             {"name": "int8_bad", "accuracy": 0.90, "parity_ok": False, "bytes": 90},
             {"name": "int8_lossy", "accuracy": 0.85, "parity_ok": True, "bytes": 80}]
    lat = [_row("fp32", 1.0, 0.90), _row("int8", 0.8, 0.895), _row("int8_bad", 0.1, 0.9), _row("int8_lossy", 0.2, 0.85)]
    assert choose_shipped(files, lat)["name"] == "int8"  # int8_bad fails parity, int8_lossy drops 5 pt
    assert choose_shipped(files, lat, max_drop=0.001)["name"] == "fp32"
    assert choose_shipped(files, [])["name"] == "int8"  # no latency: smallest of the accurate ones
    assert choose_shipped([files[2]], []) is None


def test_choose_shipped_does_not_follow_noise():
    """The demo's case: fp32 .tflite 0.0163 ms (p90 0.0208), int8 .tflite 0.0179 ms, one run to the next they swap.
    Inside the fastest's jitter both are as fast, and the smaller file ships, whichever measured lower."""
    files = [{"name": "fp32.tflite", "accuracy": 0.909, "parity_ok": True, "bytes": 103008},
             {"name": "int8.tflite", "accuracy": 0.912, "parity_ok": True, "bytes": 32952},
             {"name": "int8.onnx", "accuracy": 0.909, "parity_ok": True, "bytes": 40000}]
    run_a = [_row("fp32.tflite", 0.0163, None, p90_ms=0.0208, measured=True),
             _row("int8.tflite", 0.0179, None, p90_ms=0.0272, measured=True),
             _row("int8.onnx", 0.0283, None, p90_ms=0.0472, measured=True)]
    run_b = [dict(run_a[0], p50_ms=0.0181), dict(run_a[1], p50_ms=0.0158, p90_ms=0.0190), run_a[2]]
    for lat in (run_a, run_b):
        pick = choose_shipped(files, lat)
        assert pick["name"] == "int8.tflite"
    assert "2 files within the fastest's noise" in choose_shipped(files, run_a)["reason"]
    # a steady run tells 5% apart: p90 within 1% of p50 -> the band is +5%, and 1.0 vs 1.2 ms is not a tie
    steady = [_row("fp32.tflite", 1.0, None, p90_ms=1.01, measured=True),
              _row("int8.tflite", 1.2, None, p90_ms=1.21, measured=True)]
    assert choose_shipped(files[:2], steady)["name"] == "fp32.tflite"
    # +-100% predictions cannot order the files: the smaller one ships
    pred = [_row("fp32.tflite", 0.059, None, measured=False, uncertainty=1.0),
            _row("int8.tflite", 0.042, None, measured=False, uncertainty=1.0)]
    assert choose_shipped(files[:2], pred)["name"] == "int8.tflite"
    pred_sure = [dict(pred[0], p50_ms=0.02, uncertainty=0.1), dict(pred[1], uncertainty=0.1)]
    assert choose_shipped(files[:2], pred_sure)["name"] == "fp32.tflite"


def test_results_json_cli_shape_is_plain_json(report_run):
    r = results_json(report_run)
    assert json.loads(json.dumps(r)) == r  # no tuples, paths or NaN: scripts read it as is
    assert r["schema"] == "edgekd-results/1" and r["run"] == "tiny"


def test_report_rebuilds_identically(built, tmp_path):
    run, paths = built
    again = build_report(run, out_dir=tmp_path / "again")
    assert again.markdown.read_text() == paths.markdown.read_text()
    assert again.results.read_text() == paths.results.read_text()


def _profile_rows(target):
    return [{"name": "student_fp32.tflite", "runtime": "litert", "precision": "fp32", "p50_ms": 1.0,
             "measured": True, "target": target}]


def test_one_profile_stage_json_for_several_targets(report_run):
    import shutil as _shutil

    metrics = {"targets": [{"target": "cpu-local", "results": _profile_rows("cpu-local"), "verdicts": []},
                           {"target": "pixel-8", "results": _profile_rows("pixel-8"),
                            "verdicts": [{"target": "pixel-8", "text": "pixel verdict"}]}]}
    _shutil.rmtree(report_run / "profile")
    (report_run / "profile").mkdir()
    (report_run / "profile" / "stage.json").write_text(json.dumps({"stage": "profile", "fingerprint": "f",
                                                                   "metrics": metrics}))
    r = results_json(report_run)
    assert list(r["latency"]) == ["cpu-local", "pixel-8"]
    assert [x["p50_ms"] for x in r["latency"]["pixel-8"]] == [1.0]
    assert r["verdicts"] == [{"target": "pixel-8", "text": "pixel verdict"}]


def test_stage_json_is_strict_json_and_not_a_record_is_a_problem(report_run):
    (report_run / "profile" / "stage.json").write_text(json.dumps({"stage": "profile", "metrics": {}}))
    r = results_json(report_run)  # no fingerprint: not a stage record
    assert "profile" in r["missing_stages"] and r["latency"] == {}
    assert r["problems"][0].startswith("profile/stage.json is unreadable")


def test_report_paths_list_every_written_file(built):
    run, paths = built
    assert sorted(p.name for p in paths.all()) == ["accuracy_vs_latency.png", "int8_vs_fp32.png", "report.html",
                                                   "report.md", "results.json", "training_curves.png"]
