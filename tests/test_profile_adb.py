"""Android runner: benchmark_model log parsing (recorded logs) and the adb flow against tests/fakes/adb."""
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgekd.errors import ConfigError, EdgeKDError
from edgekd.profile.runners.adb import parse_benchmark_model_output, profile_android
from edgekd.profile.targets import Target, load_target

DATA = Path(__file__).parent / "data" / "profile"


def read(name):
    return (DATA / name).read_text()


def test_parse_xnnpack_log_with_memory():
    out = parse_benchmark_model_output(read("benchmark_model_xnnpack.txt"))
    assert (out.init_us, out.first_us, out.warmup_avg_us, out.inference_avg_us) == (4213, 812, 172.361, 168.712)
    assert out.inference.count == 5904 and out.inference.get("std") == 24 and out.inference.get("min") == 147
    assert out.warmup.count == 2893
    assert (out.mem_init_mb, out.mem_overall_mb, out.peak_mem_mb) == (3.87891, 4.50391, 11.3281)
    assert out.model_size_mb == 0.136412


def test_parse_legacy_log_without_prefix_or_memory():
    out = parse_benchmark_model_output(read("benchmark_model_legacy.txt"))
    assert out.inference_avg_us == 33071.8 and out.inference.count == 50 and out.warmup.count == 12
    assert out.peak_mem_mb is None and out.mem_overall_mb is None


def test_parse_logcat_log_with_percentiles():
    out = parse_benchmark_model_output(read("benchmark_model_logcat_percentiles.txt"))
    assert out.inference.get("median") == 141253 and out.inference.get("p95") == 187533
    assert out.mem_overall_mb == 73.4102


def test_parse_tf24_nnapi_log_with_scientific_notation_and_old_memory_line():
    out = parse_benchmark_model_output(read("benchmark_model_tf24_nnapi.txt"))
    assert (out.init_us, out.first_us, out.inference_avg_us) == (391207, 1.21408e6, 158802)
    assert out.warmup.count == 3 and out.warmup.get("max") == 1.21408e6 and out.inference.get("std") == 2487
    assert (out.mem_init_mb, out.mem_overall_mb, out.peak_mem_mb) == (6.71875, 60.9961, None)
    assert out.model_size_mb == 28.4413


def test_parse_delegate_failure_names_the_delegate():
    with pytest.raises(EdgeKDError, match="could not apply the GPU delegate.*xnnpack"):
        parse_benchmark_model_output(read("benchmark_model_gpu_fail.txt"))


def test_parse_failed_run_reports_error_lines():
    with pytest.raises(EdgeKDError, match="no 'Inference timings.*Failed to mmap model"):
        parse_benchmark_model_output(read("benchmark_model_missing_graph.txt"))


@pytest.fixture
def phone(tmp_path, fake_phone):
    """The fake adb first on PATH, one authorized device, a fake device file system with benchmark_model."""
    root = fake_phone
    model = tmp_path / "student_fp32.tflite"
    model.write_bytes(b"\0" * 1000)
    return model, root, tmp_path / "adb.log"


def _calls(log):
    return [json.loads(line) for line in log.read_text().splitlines()]


def _leftovers(root):
    return sorted(p.name for p in (root / "data/local/tmp").iterdir() if p.name.startswith("edgekd-"))


def test_profile_android_with_fake_adb(phone):
    model, root, log = phone
    r = profile_android(model, "pixel-8", precision="fp32")
    assert r.measured and r.runtime == "litert" and r.threads == 4 and r.target == "pixel-8"
    assert r.p50_ms == pytest.approx(0.168712) and r.extra["p50_source"].startswith("mean")
    assert r.runs == 5904 and r.init_ms == pytest.approx(4.213) and r.first_ms == pytest.approx(0.812)
    assert r.peak_mem_mb == pytest.approx(11.3281) and r.bytes == 1000
    assert r.device == "Pixel 8 (Tensor G3) [38011FDJH000XY]"
    bench = [c for c in _calls(log) if any("benchmark_model --graph" in a for a in c)]
    assert "--num_threads=4" in bench[0][-1] and "--use_xnnpack=true" in bench[0][-1]
    assert _leftovers(root) == []  # pushed folder removed


def test_profile_android_pushes_a_local_binary_and_gpu_delegate_failure_cleans_up(phone, monkeypatch):
    model, root, log = phone
    (root / "data/local/tmp/benchmark_model").unlink()
    binary = model.parent / "android_aarch64_benchmark_model"
    binary.write_text("binary")
    monkeypatch.setenv("FAKE_ADB_OUTPUT", str(DATA / "benchmark_model_gpu_fail.txt"))
    monkeypatch.setenv("FAKE_ADB_EXIT", "1")
    with pytest.raises(EdgeKDError, match="GPU delegate"):
        profile_android(model, "pixel-8", delegate="gpu", benchmark_binary=binary, precision="int8")
    pushes = [c for c in _calls(log) if "push" in c]
    assert len(pushes) == 2  # model and binary
    assert any("--use_gpu=true" in c[-1] for c in _calls(log) if c[-1].count("--graph"))
    assert _leftovers(root) == []


def test_binary_missing_on_device(phone):
    model, root, _ = phone
    (root / "data/local/tmp/benchmark_model").unlink()
    with pytest.raises(EdgeKDError, match="benchmark_model not found on 38011FDJH000XY.*benchmark_binary="):
        profile_android(model, "pixel-8", precision="fp32")
    assert _leftovers(root) == []


def test_local_binary_path_missing(phone):
    model, _, _ = phone
    with pytest.raises(EdgeKDError, match="benchmark_model binary not found: /nope"):
        profile_android(model, "pixel-8", benchmark_binary="/nope", precision="fp32")


@pytest.mark.parametrize("devices, serial, message", [
    ("", None, "no Android device attached"),
    ("A1:device,B2:device", None, r"several devices attached \(A1, B2\).*adb_serial"),
    ("A1:unauthorized", None, "A1 is unauthorized.*Allow USB debugging"),
    ("A1:offline", None, "A1 is offline"),
    ("A1:device", "Z9", r"'Z9' is not attached; adb lists: A1 \(device\)"),
])
def test_device_selection_errors(phone, monkeypatch, devices, serial, message):
    model, _, _ = phone
    monkeypatch.setenv("FAKE_ADB_DEVICES", devices)
    with pytest.raises(EdgeKDError, match=message):
        profile_android(model, "pixel-8", serial=serial, precision="fp32")


def test_several_devices_with_serial_works(phone, monkeypatch):
    model, _, _ = phone
    monkeypatch.setenv("FAKE_ADB_DEVICES", "A1:device,38011FDJH000XY:device")
    assert profile_android(model, "pixel-8", serial="38011FDJH000XY", precision="fp32").runs == 5904


def test_adb_not_on_path(phone, monkeypatch, tmp_path):
    model, _, _ = phone
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    with pytest.raises(EdgeKDError, match="adb not found on PATH.*platform-tools"):
        profile_android(model, "pixel-8", precision="fp32")


def test_bad_delegate_and_file_type(phone):
    model, _, _ = phone
    with pytest.raises(EdgeKDError, match="unknown delegate 'tpu'; allowed: cpu, xnnpack, gpu, nnapi"):
        profile_android(model, "pixel-8", delegate="tpu")
    onnx = model.with_suffix(".onnx")
    onnx.write_bytes(b"x")
    with pytest.raises(EdgeKDError, match="runs .tflite files"):
        profile_android(onnx, "pixel-8")


@pytest.mark.device
def test_real_phone():
    """Runs on a real phone when `adb devices` lists one; EDGEKD_BENCHMARK_MODEL may name a local binary."""
    adb = shutil.which("adb")
    if adb is None:
        pytest.skip("adb is not on PATH (install Android platform-tools)")
    listed = [ln for ln in subprocess.run([adb, "devices"], capture_output=True, text=True).stdout.splitlines()[1:]
              if ln.strip().endswith("device")]
    if not listed:
        pytest.skip("no authorized Android device in `adb devices`")
    import torch

    import litert_torch

    path = Path(os.environ.get("TMPDIR", "/tmp")) / "edgekd_device_test.tflite"
    litert_torch.convert(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU()).eval(),
                         (torch.randn(1, 1, 28, 28),)).export(str(path))
    r = profile_android(path, "pixel-8", benchmark_binary=os.environ.get("EDGEKD_BENCHMARK_MODEL"))
    assert r.measured and r.p50_ms > 0 and r.runs > 0


def _dead(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as f:  # reparented and not yet reaped: a zombie is dead too
        return f.read().rsplit(")", 1)[1].split()[0] == "Z"


@pytest.mark.parametrize("where, via", [("devices", "yaml"), ("benchmark", "call")])
def test_hung_adb_fails_within_the_timeout_and_kills_its_process_group(phone, monkeypatch, tmp_path, where, via):
    """A hung `adb devices` / `adb shell` fails within the configured timeout (no 121 s / 241 s waits, no second
    wait in the clean-up) and leaves no adb child or grandchild running."""
    import time

    import yaml

    model, root, _ = phone
    pids = tmp_path / "pids"
    monkeypatch.setenv("FAKE_ADB_HANG", where)
    monkeypatch.setenv("FAKE_ADB_PIDS", str(pids))
    data = yaml.safe_load(open(load_target("pixel-8").source))
    kwargs = {}
    if via == "yaml":  # the timeout from the target's connect settings
        data["connect"].update(connect_timeout_s=3, command_timeout_s=3)
    else:  # the per-call timeout (api.profile / edgekd profile --timeout)
        kwargs["timeout_s"] = 3
    target = tmp_path / "phone.yaml"
    target.write_text(yaml.safe_dump(data))
    t0 = time.perf_counter()
    with pytest.raises(EdgeKDError, match=r"did not finish within 3 s.*--timeout"):
        profile_android(model, str(target), precision="fp32", **kwargs)
    assert time.perf_counter() - t0 < 3 + 5  # the kill and the clean-up's short rm, not another long wait
    (adb_pid, sleep_pid), = [map(int, line.split()) for line in pids.read_text().splitlines()]
    # SIGKILL to the group is delivered at once, but a busy kernel may take a moment to finish the exit
    deadline = time.monotonic() + 2.0
    while not (_dead(adb_pid) and _dead(sleep_pid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _dead(adb_pid) and _dead(sleep_pid)
    if where == "benchmark":
        assert _leftovers(root) == []  # the clean-up still ran


def test_transient_adb_failures_are_retried_a_bounded_number_of_times(phone, monkeypatch, tmp_path):
    from edgekd.profile.runners import _process

    model, _, log = phone
    waits = []
    monkeypatch.setattr(_process, "sleep", waits.append)
    monkeypatch.setenv("FAKE_ADB_FLAKY", "2")
    monkeypatch.setenv("FAKE_ADB_FLAKY_COUNT", str(tmp_path / "count"))
    assert profile_android(model, "pixel-8", precision="fp32").runs == 5904  # 2 protocol faults, then fine
    (tmp_path / "count").unlink()
    monkeypatch.setenv("FAKE_ADB_FLAKY", "5")
    with pytest.raises(EdgeKDError, match="'adb devices' failed: error: protocol fault"):
        profile_android(model, "pixel-8", precision="fp32")
    assert (tmp_path / "count").read_text() == "3"  # 1 try + 2 retries (the default connect.retries)
    assert waits == [1.0, 2.0, 1.0, 2.0]  # backing off 1 s, then 2 s, each time


def test_adb_timeouts_in_the_target_yaml_are_validated():
    base = {"name": "x", "kind": "android", "runtimes": ["litert"],
            "peak": {"fp32_gflops": 1, "int8_gops": 1, "mem_gbps": 1}}
    with pytest.raises(ConfigError) as e:
        Target.from_dict({**base, "connect": {"connect_timeout_s": 0, "command_timeout_s": "long", "retries": -1}})
    assert len(e.value.problems) == 3 and "connect.connect_timeout_s: must be a number of seconds > 0" in str(e.value)
    assert Target.from_dict({**base, "connect": {"connect_timeout_s": 5, "retries": 0}}).connect["retries"] == 0
