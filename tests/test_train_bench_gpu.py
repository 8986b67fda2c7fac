"""tools/bench_gpu.py --smoke: every code path of the GPU benchmark runs on the CPU with tiny models (so it cannot
rot between the runs on a lent GPU); its figures are marked as no GPU figures."""
import importlib.util
import json
from pathlib import Path

from click.testing import CliRunner

TOOL = Path(__file__).parents[1] / "tools" / "bench_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("bench_gpu", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_smoke_mode_runs_every_path_on_the_cpu(tmp_path):
    out = tmp_path / "gpu.json"
    result = CliRunner().invoke(_load().main, ["--smoke", "--images", "48", "--out", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["smoke"] is True and "no GPU figures" in report["note"]
    assert set(report["rows"]) == {"plain_amp_online", "edgekd_online", "edgekd_cached", "plain_amp_cached"}
    for row in report["rows"].values():
        assert row["images_per_s"] > 0 and row["peak_gpu_mib"] is None
    assert report["ratios"]["online_over_cached_epoch_time"] > 0
    assert report["rows"]["edgekd_cached"]["cache_build_seconds"] > 0
    assert report["tensorrt"] == {"built": False, "why": "smoke mode (CPU)"}


def test_full_mode_refuses_without_a_gpu_in_one_line(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = CliRunner().invoke(_load().main, ["--out", str(tmp_path / "gpu.json")])
    assert result.exit_code == 1 and "no CUDA GPU here" in result.output
    assert not (tmp_path / "gpu.json").exists()
