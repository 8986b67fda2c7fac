"""Target YAMLs: every bundled one loads, validation reports every problem, names resolve with suggestions."""
import pytest
import yaml

from edgekd.errors import ConfigError, EdgeKDError
from edgekd.profile.targets import Target, format_target, format_targets_table, list_targets, load_target

BUNDLED = ["cpu-local", "galaxy-s24", "jetson-agx-orin", "jetson-nano", "jetson-orin-nano", "pixel-8",
           "raspberry-pi-5"]


def test_bundled_targets_load_with_sources():
    assert list_targets() == BUNDLED
    for name in BUNDLED:
        t = load_target(name)
        assert t.name == name and t.peak.fp32_gflops > 0 and t.peak.int8_gops > 0 and t.peak.mem_gbps > 0
        assert "Source" in open(t.source).read() or "ESTIMATE" in open(t.source).read()
    assert load_target("pixel-8").kind == "android" and load_target("jetson-nano").connect["port"] == 22
    assert load_target("cpu-local").runtimes == ("onnxruntime", "litert", "torch")


def test_unknown_name_suggests_closest():
    with pytest.raises(EdgeKDError, match="unknown target 'pixel8'; did you mean 'pixel-8'\\? known: cpu-local"):
        load_target("pixel8")


def test_user_yaml_path(tmp_path):
    p = tmp_path / "my-board.yaml"
    p.write_text(yaml.safe_dump({"name": "my-board", "kind": "linux", "runtimes": ["onnxruntime"], "threads": 2,
                                 "connect": {"host": "10.0.0.2", "user": "me"},
                                 "peak": {"fp32_gflops": 50, "int8_gops": 200, "mem_gbps": 8}}))
    t = load_target(str(p))
    assert t.name == "my-board" and t.connect["host"] == "10.0.0.2" and t.threads == 2
    with pytest.raises(EdgeKDError, match="target file not found"):
        load_target(str(tmp_path / "nope.yaml"))


def test_validation_lists_every_problem():
    bad = {"name": "", "kind": "phone", "runtimes": ["tflite"], "threads": 0, "conect": {},
           "peak": {"fp32_gflops": -1, "int8_gops": "fast", "gops": 3}}
    with pytest.raises(ConfigError) as e:
        Target.from_dict(bad, "bad.yaml")
    msg = str(e.value)
    for part in ["unknown field 'conect' (did you mean 'connect'?)", "name: must be a non-empty string",
                 "kind: 'phone' is not one of cpu, android, jetson, linux", "runtimes: 'tflite' is not one of",
                 "threads: must be an integer >= 1, got 0", "peak.gops: unknown figure",
                 "peak.fp32_gflops: must be a number > 0", "peak.int8_gops: must be a number > 0",
                 "peak.mem_gbps: must be a number > 0"]:
        assert part in msg, part
    assert len(e.value.problems) == 9


def test_connect_settings_checked_per_kind():
    base = {"name": "x", "runtimes": ["onnxruntime"], "peak": {"fp32_gflops": 1, "int8_gops": 1, "mem_gbps": 1}}
    with pytest.raises(ConfigError, match="connect.host: a jetson/linux target needs"):
        Target.from_dict({**base, "kind": "jetson", "connect": {"port": 22}})
    with pytest.raises(ConfigError, match="connect.adb_serial: not a jetson setting"):
        Target.from_dict({**base, "kind": "jetson", "connect": {"host": "h", "adb_serial": "x"}})
    with pytest.raises(ConfigError, match="connect.port: must be an integer 1..65535"):
        Target.from_dict({**base, "kind": "linux", "connect": {"host": "h", "port": 70000}})


def test_formatting():
    table = format_targets_table()
    assert table.splitlines()[0].split()[:3] == ["name", "kind", "runtimes"]
    assert len(table.splitlines()) == len(BUNDLED) + 1 and "pixel-8" in table
    text = format_target("jetson-orin-nano")
    assert "jetson-orin-nano (jetson)" in text and "int8 20000 GOPS" in text and "sources:" in text
    assert "NVIDIA" in text
