"""The profile stage and `edgekd profile`: runners by target kind, every runtime's verdict, one target load, host
detection, progress only on a terminal, exit 2 when nothing is runnable, and a runner registered from a test."""
import subprocess
import sys

import pytest
import yaml
from click.testing import CliRunner

from edgekd.cli import main
from edgekd.errors import ConfigError, EdgeKDError
from edgekd.profile import Job, LatencyResult, Runner, format_target, register_runner, runner_for
from edgekd.profile.runners.local import cpu_device_name
from edgekd.profile.stage import format_profile, profile_run_files
from edgekd.profile.targets import Target, load_target
from test_profile_local import conv_relu_onnx

PEAK = {"fp32_gflops": 10, "int8_gops": 40, "mem_gbps": 5}


@pytest.fixture
def pair(tmp_path):
    return [conv_relu_onnx(tmp_path / "net_fp32.onnx"), conv_relu_onnx(tmp_path / "net_int8.onnx", qdq=True)]


def test_every_runtime_of_the_target_gets_its_verdict_and_the_target_is_loaded_once(pair, monkeypatch):
    loads = []
    real = Target.from_dict.__func__
    monkeypatch.setattr(Target, "from_dict", classmethod(lambda cls, *a, **k: loads.append(a) or real(cls, *a, **k)))
    m = profile_run_files(pair, ["jetson-orin-nano"], remote="predict", input_shape=(1, 1, 8, 8), progress=False)
    assert len(loads) == 1
    (t,) = m["targets"]
    assert sorted((r["name"], r["runtime"]) for r in t["results"]) == [
        ("net_fp32.onnx", "onnxruntime"), ("net_fp32.onnx", "tensorrt"),
        ("net_int8.onnx", "onnxruntime"), ("net_int8.onnx", "tensorrt")]
    assert sorted(v["runtime"] for v in t["verdicts"]) == ["onnxruntime", "tensorrt"]
    # uncalibrated +-100% predictions cannot rank int8 against fp32
    assert all(v["outcome"] == "unknown" and "unknown" in v["text"] for v in t["verdicts"])
    assert "predicted (remote measurement off)" in t["note"] and "unknown" in format_profile(m)


def test_unreachable_remote_target_is_predicted_with_the_reason(pair, tmp_path):
    data = {"name": "nowhere", "kind": "linux", "runtimes": ["onnxruntime"], "peak": PEAK,
            "connect": {"host": "127.0.0.1", "port": 9, "connect_timeout_s": 2, "retries": 0}}
    path = tmp_path / "nowhere.yaml"
    path.write_text(yaml.safe_dump(data))
    m = profile_run_files(pair[:1], [str(path)], input_shape=(1, 1, 8, 8), progress=False)
    (t,) = m["targets"]
    assert t["note"].startswith("not measured (") and "predicted instead" in t["note"]
    assert not t["results"][0]["measured"]
    with pytest.raises(EdgeKDError, match="refused the connection"):
        profile_run_files(pair[:1], [str(path)], remote="measure", progress=False)


def test_cpu_target_describes_the_host_as_detected(tmp_path, pair):
    fake = tmp_path / "cpuinfo"
    fake.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\nflags\t\t: avx512f\n")
    assert cpu_device_name(fake).startswith("Intel(R) Xeon(R) Platinum 8480+ (")
    text = format_target("cpu-local")
    assert f"host:     {cpu_device_name()} (detected)" in text
    assert "AMD EPYC" not in load_target("cpu-local").description
    m = profile_run_files(pair[:1], ["cpu-local"], max_seconds=0.1, min_runs=5, progress=False)
    assert m["targets"][0]["results"][0]["device"] == cpu_device_name()


def test_cli_profile_exits_2_with_one_line_when_the_target_runs_no_file(pair):
    res = CliRunner().invoke(main, ["profile", str(pair[0]), "--target", "pixel-8"])
    assert res.exit_code == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "pixel-8 runs none of these files (net_fp32.onnx): it runs litert" in lines[0]


@pytest.mark.parametrize("extra", [[], ["--no-progress"]])
def test_cli_profile_draws_no_carriage_return_progress_into_a_log(pair, extra):
    res = CliRunner().invoke(main, ["profile", *map(str, pair), "--max-seconds", "0.1", "--min-runs", "5", *extra])
    assert res.exit_code == 0, res.output
    assert "\r" not in res.stdout and "\r" not in res.stderr
    assert "On cpu-local with onnxruntime, int8 is" in res.stdout


def test_cli_profile_timeout_must_be_positive(pair):
    res = CliRunner().invoke(main, ["profile", str(pair[0]), "--timeout", "0"])
    assert res.exit_code == 2 and "--timeout" in res.stderr


def test_a_runtime_the_registry_does_not_know_is_a_one_line_error(tmp_path, pair):
    with pytest.raises(ConfigError, match="runtimes: 'tensorrtx' is not one of litert, onnxruntime, tensorrt"):
        Target.from_dict({"name": "x", "kind": "cpu", "runtimes": ["tensorrtx"], "peak": PEAK})
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"name": "x", "kind": "cpu", "runtimes": ["tensorrtx"], "peak": PEAK}))
    res = CliRunner().invoke(main, ["profile", str(pair[0]), "--target", str(path)])
    assert res.exit_code == 2 and "Traceback" not in res.output and "tensorrtx" in res.stderr


def test_local_runner_does_not_import_the_device_runners():
    code = ("import sys, edgekd.profile.runners.local; "
            "print(sorted(m for m in sys.modules if m.startswith('edgekd.profile.runners.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['edgekd.profile.runners.local']"


def _loopback_measure(target, jobs, *, threads, progress=False, timeout_s=None, **options):
    return [LatencyResult(name=j.name, runtime=j.runtime, precision="int8" if "int8" in j.name else "fp32",
                          threads=threads, measured=True, p50_ms=2.0 if "int8" in j.name else 3.0,
                          target=target.name, device=f"loopback {target.connect['socket']}") for j in jobs]


def test_a_new_target_kind_is_one_runner_registered_from_anywhere(pair, tmp_path):
    """What docs/extending-targets.md describes: register a Runner for a new kind; targets of that kind load,
    validate their connect settings and are measured by it through the same stage."""
    runner = register_runner(Runner(kinds=("test-loopback",), measure=_loopback_measure,
                                    connect_keys=frozenset({"socket"}),
                                    check_connect=lambda c: [] if c.get("socket") else ["connect.socket: needed"]))
    assert runner_for("test-loopback") is runner
    with pytest.raises(ConfigError, match="connect.socket: needed"):
        Target.from_dict({"name": "lb", "kind": "test-loopback", "runtimes": ["onnxruntime"], "peak": PEAK})
    with pytest.raises(ConfigError, match="connect.host: not a test-loopback setting; allowed: socket"):
        Target.from_dict({"name": "lb", "kind": "test-loopback", "runtimes": ["onnxruntime"], "peak": PEAK,
                          "connect": {"socket": "/s", "host": "h"}})
    path = tmp_path / "lb.yaml"
    path.write_text(yaml.safe_dump({"name": "lb", "kind": "test-loopback", "runtimes": ["onnxruntime"],
                                    "peak": PEAK, "connect": {"socket": "/tmp/lb"}}))
    m = profile_run_files(pair, [str(path)], progress=False)
    (t,) = m["targets"]
    assert [r["device"] for r in t["results"]] == ["loopback /tmp/lb"] * 2 and all(r["measured"] for r in t["results"])
    (v,) = t["verdicts"]
    assert v["outcome"] == "faster" and v["measured"]
    assert Job(pair[0], "onnxruntime", "x").runtime == "onnxruntime"


def test_a_runtime_registered_in_one_place_is_profiled_on_the_local_target(tmp_path):
    """A runtime added with edgekd.formats.register_runtime (here from the test) runs its files on cpu-local without
    editing the target YAML; device targets still run only what their YAML lists."""
    import time

    import numpy as np

    from edgekd.formats import RUNTIMES, Runtime, register_runtime
    from edgekd.runtimes.session import Session

    def open_doubler(path, threads):
        return Session("test-doubler", path, (1, 4), "float32", threads, 0.1, "doubler 1.0",
                       lambda x: (time.sleep(1e-4), 2 * np.asarray(x))[1])

    register_runtime(Runtime("test-doubler", (".dbl",), open_doubler))
    try:
        model = tmp_path / "net.dbl"
        model.write_bytes(b"weights")
        m = profile_run_files([model], ["cpu-local"], max_seconds=0.1, min_runs=5, progress=False)
        (r,) = m["targets"][0]["results"]
        assert r["runtime"] == "test-doubler" and r["measured"] and r["p50_ms"] >= 0.1 and r["bytes"] == 7
        assert runner_for("cpu").local and "test-doubler" not in load_target("cpu-local").runtimes
        m = profile_run_files([model], ["pixel-8"], remote="predict", progress=False)
        assert m["targets"][0]["results"] == [] and "net.dbl skipped: pixel-8 runs litert" in m["targets"][0]["note"]
    finally:
        RUNTIMES.unregister("test-doubler")
