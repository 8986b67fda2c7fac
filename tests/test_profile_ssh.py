"""SSH runner against a real OpenSSH server on 127.0.0.1 (started here), plus trtexec log parsing."""
import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from edgekd.errors import EdgeKDError
from edgekd.profile.runners.ssh import parse_trtexec_output, profile_ssh

DATA = Path(__file__).parent / "data" / "profile"
SSHD = "/usr/sbin/sshd"


# ---- trtexec parsing (recorded logs) ----

def test_parse_trtexec_8x_one_line_summary():
    out = parse_trtexec_output((DATA / "trtexec_fp16_orin.txt").read_text())
    assert out.latency_ms == {"min": 0.265869, "max": 1.32349, "mean": 0.281377, "median": 0.278076,
                              "p90": 0.288574, "p95": 0.296631, "p99": 0.375488}
    assert out.throughput_qps == 3485.27 and out.engine_build_s == 36.1083 and out.queries == 10458
    assert out.gpu_compute_ms["median"] == 0.250977 and out.trt_version == "8.5.2" and out.device == "Orin"


def test_parse_trtexec_7x_block_summary():
    out = parse_trtexec_output((DATA / "trtexec_int8_trt7_nano.txt").read_text())
    assert out.latency_ms == {"min": 4.58606, "max": 6.93506, "mean": 4.73392, "median": 4.70215, "p99": 5.52417}
    assert out.gpu_compute_ms["mean"] == 4.67507 and out.queries == 634


def test_parse_trtexec_failure_reports_error_lines():
    with pytest.raises(EdgeKDError, match="trtexec failed:.*Parsing model failed"):
        parse_trtexec_output((DATA / "trtexec_fail_parse.txt").read_text())


# ---- a real sshd on 127.0.0.1 ----

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not Path(SSHD).is_file() or shutil.which("ssh") is None:
        pytest.fail(f"{SSHD} or ssh not found: install the Debian packages openssh-server and openssh-client "
                    f"(apt-get install -y openssh-server openssh-client)")
    if os.geteuid() == 0 and not Path("/run/sshd").is_dir():
        try:  # sshd started as root insists on its privilege-separation folder (the service normally makes it)
            Path("/run/sshd").mkdir(mode=0o755, parents=True)
        except OSError as e:
            pytest.fail(f"sshd needs /run/sshd when run as root and it cannot be created: {e}")
    d = tmp_path_factory.mktemp("sshd")
    _keygen(d / "host_key")
    _keygen(d / "client_key")
    _keygen(d / "stranger_key")
    (d / "authorized_keys").write_text((d / "client_key.pub").read_text())
    (d / "authorized_keys").chmod(0o600)
    port = _free_port()
    (d / "sshd_config").write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {d / 'host_key'}
AuthorizedKeysFile {d / 'authorized_keys'}
PidFile {d / 'sshd.pid'}
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
StrictModes no
UsePAM no
Subsystem sftp /usr/lib/openssh/sftp-server
""")
    host_pub = " ".join((d / "host_key.pub").read_text().split()[:2])
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(d / "sshd_config")], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"sshd exited at start: {proc.stdout.read()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        proc.kill()
        pytest.fail("sshd did not start listening within 10 s")
    yield {"dir": d, "port": port}
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def board(sshd, tmp_path):
    """A target YAML for the local sshd; the remote 'device' runs this repo's Python (it has onnxruntime)."""
    remote = tmp_path / "remote"
    remote.mkdir()
    data = {"name": "loopback-board", "kind": "linux", "runtimes": ["onnxruntime", "tensorrt"], "threads": 1,
            "connect": {"host": "127.0.0.1", "port": sshd["port"], "user": getpass.getuser(),
                        "known_hosts": str(sshd["dir"] / "known_hosts"),
                        "identity_file": str(sshd["dir"] / "client_key"), "python": sys.executable,
                        "remote_dir": str(remote), "connect_timeout_s": 5, "command_timeout_s": 60},
            "peak": {"fp32_gflops": 100, "int8_gops": 400, "mem_gbps": 20}}
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, remote


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory):
    """Conv+Relu with its weights in an external-data file, as the dynamo exporter writes them."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    path = tmp_path_factory.mktemp("model") / "tiny_fp32.onnx"
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((4, 1, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Relu", ["c"], ["y"])],
                              "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path),
              save_as_external_data=True, location="tiny_fp32.onnx.data", size_threshold=0)
    assert (path.parent / "tiny_fp32.onnx.data").is_file()
    return path


def test_ssh_onnxruntime_run_and_cleanup(board, onnx_file):
    target, remote = board
    r = profile_ssh(onnx_file, target, time_cap_s=1, min_runs=20)
    assert r.measured and r.runtime == "onnxruntime" and r.precision == "fp32" and r.target == "loopback-board"
    assert r.p50_ms > 0 and r.runs >= 20 and r.runtime_version.startswith("onnxruntime 1.")
    assert r.device.endswith("[127.0.0.1]")
    assert r.bytes == sum(p.stat().st_size for p in onnx_file.parent.glob("tiny_fp32.onnx*"))  # + external data
    assert list(remote.iterdir()) == []  # remote temp folder removed


def test_ssh_trtexec_path_with_stand_in_trtexec(board, onnx_file, tmp_path):
    target, remote = board
    fake = tmp_path / "trtexec"
    fake.write_text(f"#!/bin/sh\ncat {DATA / 'trtexec_fp16_orin.txt'}\n")
    fake.chmod(0o755)
    r = profile_ssh(onnx_file, target, runtime="tensorrt", trtexec=str(fake))
    assert r.runtime == "tensorrt" and r.precision == "fp16" and r.p50_ms == 0.278076 and r.p99_ms == 0.375488
    assert r.runtime_version == "TensorRT 8.5.2" and list(remote.iterdir()) == []


def test_unknown_host_key_is_refused(board, onnx_file, tmp_path):
    target, remote = board
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    with pytest.raises(EdgeKDError, match="unknown host key for .*127.0.0.1.*ssh-keyscan"):
        profile_ssh(onnx_file, target, known_hosts=str(empty))


def test_changed_host_key_is_refused(sshd, board, onnx_file, tmp_path):
    target, _ = board
    _keygen(tmp_path / "other_host")
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{sshd['port']} " + " ".join((tmp_path / "other_host.pub").read_text().split()[:2]))
    with pytest.raises(EdgeKDError, match="host key of .* CHANGED"):
        profile_ssh(onnx_file, target, known_hosts=str(kh))


def test_auth_failure(sshd, board, onnx_file):
    target, _ = board
    with pytest.raises(EdgeKDError, match="authentication failed.*identity_file"):
        profile_ssh(onnx_file, target, identity_file=str(sshd["dir"] / "stranger_key"))


def test_connect_timeout(board, onnx_file):
    target, _ = board
    with socket.socket() as silent:  # accepts TCP but never sends an SSH banner
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        with pytest.raises(EdgeKDError, match="timed out after 1 s"):
            profile_ssh(onnx_file, target, port=silent.getsockname()[1], connect_timeout_s=1)


def test_command_timeout_still_cleans_up(board, onnx_file, tmp_path):
    target, remote = board
    slow = tmp_path / "slow_python"
    slow.write_text("#!/bin/sh\nsleep 5\n")
    slow.chmod(0o755)
    with pytest.raises(EdgeKDError, match="did not finish within 1 s"):
        profile_ssh(onnx_file, target, command_timeout_s=1, python=str(slow))
    assert list(remote.iterdir()) == []


def test_missing_remote_onnxruntime(board, onnx_file, tmp_path):
    target, remote = board
    bare = tmp_path / "bare_python"
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")  # -S: no site-packages, so no onnxruntime
    bare.chmod(0o755)
    with pytest.raises(EdgeKDError, match="No module named .*pip install onnxruntime.*connect.python"):
        profile_ssh(onnx_file, target, python=str(bare))
    assert list(remote.iterdir()) == []


def test_missing_remote_python(board, onnx_file):
    target, _ = board
    with pytest.raises(EdgeKDError, match="python not found on 127.0.0.1"):
        profile_ssh(onnx_file, target, python="/nonexistent/python3")


# ---- option injection, signals, kills ----

BASE = {"name": "b", "kind": "linux", "runtimes": ["onnxruntime"],
        "peak": {"fp32_gflops": 1, "int8_gops": 1, "mem_gbps": 1}}


@pytest.mark.parametrize("field, value", [("host", "-oProxyCommand=touch /tmp/edgekd-pwned"), ("host", "evil host"),
                                          ("host", "board\n-oX=y"), ("user", "-lroot"), ("user", "me\tyou"),
                                          ("user", "a@b")])
def test_option_injection_in_host_or_user_is_refused(field, value, onnx_file, tmp_path, monkeypatch):
    from edgekd.errors import ConfigError
    from edgekd.profile.targets import Target

    connect = {"host": "board.local", field: value}
    with pytest.raises(ConfigError, match=f"connect.{field}: .* is not a valid {field} name"):
        Target.from_dict({**BASE, "connect": connect})
    # as a per-call override it is refused before any ssh runs (a stand-in ssh would record a call)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'calls'}\nexit 255\n")
    (fake / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    target = Target.from_dict({**BASE, "connect": {"host": "board.local"}})
    with pytest.raises(EdgeKDError, match=f"^connect.{field}: .* is not a valid {field} name"):
        profile_ssh(onnx_file, target, **{field: value})
    assert not (tmp_path / "calls").exists() and not Path("/tmp/edgekd-pwned").exists()


def test_ssh_gets_double_dash_before_the_destination(onnx_file, tmp_path, monkeypatch):
    from edgekd.profile.targets import Target

    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text(f"#!/bin/sh\nfor a in \"$@\"; do echo \"$a\"; done > {tmp_path / 'argv'}\n"
                              "echo 'ssh: connect to host board.local port 22: Connection refused' >&2\nexit 255\n")
    (fake / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    target = Target.from_dict({**BASE, "connect": {"host": "board.local", "user": "me", "retries": 0}})
    with pytest.raises(EdgeKDError, match="refused the connection"):
        profile_ssh(onnx_file, target)
    argv = (tmp_path / "argv").read_text().splitlines()
    assert argv[-2:] == ["--", "me@board.local"]


def _short_tmp():
    """A short private temp dir: ssh's control socket path must stay under the 108-byte unix socket limit."""
    import tempfile

    return Path(tempfile.mkdtemp(prefix="ek", dir="/tmp"))


def _processes_mentioning(text):
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if text in cmd and state != "Z":
                out.append((int(d.name), cmd))
    return out


def _wait_for(cond, timeout_s):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return cond()


def _start_measurement(board, onnx_file, tmp_path, tmpdir):
    """profile_ssh in a child process whose remote 'python' signals that it started, then hangs."""
    target, remote = board
    started = tmp_path / "started"
    slow = tmp_path / "slow_python"
    slow.write_text(f"#!/bin/sh\ntouch {started}\nsleep 20\n")
    slow.chmod(0o755)
    code = ("import sys; from edgekd.profile import profile_ssh; "
            "profile_ssh(sys.argv[1], sys.argv[2], python=sys.argv[3], command_timeout_s=120)")
    env = {**os.environ, "TMPDIR": str(tmpdir)}
    proc = subprocess.Popen([sys.executable, "-c", code, str(onnx_file), str(target), str(slow)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if not _wait_for(started.exists, 60):
        proc.kill()
        pytest.fail(f"the remote benchmark never started: {proc.communicate()}")
    assert len(list(remote.iterdir())) == 1 and list(tmpdir.glob("edgekd-ssh-*"))
    assert _processes_mentioning(str(tmpdir))  # the ssh master (and the client running the benchmark)
    return proc, remote


def test_sigterm_mid_measurement_cleans_master_socket_and_remote_folder(board, onnx_file, tmp_path):
    tmpdir = _short_tmp()
    proc, remote = _start_measurement(board, onnx_file, tmp_path, tmpdir)
    t0 = time.time()
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 128 + 15 and time.time() - t0 < 15, err
    assert list(remote.iterdir()) == []  # remote temp folder removed
    assert list(tmpdir.iterdir()) == []  # control socket and its folder removed
    assert _wait_for(lambda: not _processes_mentioning(str(tmpdir)), 5), _processes_mentioning(str(tmpdir))
    shutil.rmtree(tmpdir)


def test_the_next_run_reaps_what_a_sigkill_left(board, onnx_file, tmp_path, monkeypatch):
    import tempfile

    tmpdir = _short_tmp()
    proc, remote = _start_measurement(board, onnx_file, tmp_path, tmpdir)
    proc.kill()
    proc.wait(timeout=10)
    assert len(list(remote.iterdir())) == 1 and list(tmpdir.glob("edgekd-ssh-*"))  # what a kill leaves
    assert _processes_mentioning(str(tmpdir))  # the orphaned master is still running
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    r = profile_ssh(onnx_file, board[0], time_cap_s=0.5, min_runs=5)
    assert r.measured
    assert list(remote.iterdir()) == [] and list(tmpdir.iterdir()) == []
    assert _wait_for(lambda: not _processes_mentioning(str(tmpdir)), 5), _processes_mentioning(str(tmpdir))
    shutil.rmtree(tmpdir)


def test_an_error_mid_measurement_leaves_no_master_socket_or_remote_folder(board, onnx_file, tmp_path, monkeypatch):
    import tempfile

    target, remote = board
    tmpdir = _short_tmp()
    monkeypatch.setattr(tempfile, "tempdir", str(tmpdir))
    slow = tmp_path / "slow_python"
    slow.write_text("#!/bin/sh\nsleep 10\n")
    slow.chmod(0o755)
    t0 = time.time()
    with pytest.raises(EdgeKDError, match="remote onnxruntime benchmark on .* did not finish within 2.5 s"):
        profile_ssh(onnx_file, target, timeout_s=2.5, python=str(slow))
    assert time.time() - t0 < 15  # connect + copies + 2.5 s + a short clean-up, no long second wait
    assert list(remote.iterdir()) == [] and list(tmpdir.iterdir()) == []
    assert _wait_for(lambda: not _processes_mentioning(str(tmpdir)), 5), _processes_mentioning(str(tmpdir))
    shutil.rmtree(tmpdir)
