import gzip

import numpy as np
import pytest
import torch

from edgekd.data import augment_batch, iterate_batches, load_dataset
from edgekd.data.datasets import read_idx, stratified_subset
from edgekd.errors import EdgeKDError
from edgekd.models import MODELS, build_model, count_params, load_model_file, save_model_file


def write_idx(path, array: np.ndarray, gz=True):
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    data = header + array.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


@pytest.fixture
def fake_fashion(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 20)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_fashion_mnist_from_idx_dir_option_and_env(fake_fashion, monkeypatch):
    ds = load_dataset("fashion_mnist", str(fake_fashion))
    assert ds.x_train.shape == (40, 1, 28, 28) and ds.y_test.tolist()[:3] == [0, 1, 2]
    assert abs(float(ds.x_train.mean())) < 1e-4 and abs(float(ds.x_train.std()) - 1) < 1e-2
    assert ds.labels[9] == "Ankle boot"
    monkeypatch.setenv("EDGEKD_DATA", str(fake_fashion))
    assert len(load_dataset("fashion_mnist").x_test) == 20


def test_missing_fashion_mnist_says_what_to_install(tmp_path):
    with pytest.raises(EdgeKDError, match="install Debian package 'dataset-fashion-mnist'"):
        load_dataset("fashion_mnist", str(tmp_path))


def test_truncated_idx_file_is_reported(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    write_idx(p, np.zeros((3, 4, 4)), gz=False)
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(EdgeKDError, match="truncated or corrupt"):
        read_idx(p)
    p.write_bytes(b"\x01\x02\x03")
    with pytest.raises(EdgeKDError, match="bad magic"):
        read_idx(p)


def test_digits_and_stratified_subset():
    ds = load_dataset("digits", subset_train=200, seed=0)
    assert len(ds.x_train) == 200 and ds.input_shape == (1, 8, 8)
    counts = torch.bincount(ds.y_train, minlength=10)
    assert counts.min() >= 19
    y = torch.arange(100) % 4
    assert torch.equal(stratified_subset(y, 20, 1), stratified_subset(y, 20, 1))


def test_npz_dataset(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 255, (10, 6, 6, 3), dtype=np.uint8), y_train=np.arange(10) % 2,
             x_test=rng.integers(0, 255, (4, 6, 6, 3), dtype=np.uint8), y_test=np.arange(4) % 2)
    ds = load_dataset("npz", str(tmp_path / "d.npz"))
    assert ds.input_shape == (3, 6, 6) and ds.num_classes == 2
    np.savez(tmp_path / "bad.npz", x_train=np.zeros(3))
    with pytest.raises(EdgeKDError, match="lacks array"):
        load_dataset("npz", str(tmp_path / "bad.npz"))


def test_batches_cover_every_index_once_and_resume_skips():
    g = torch.Generator().manual_seed(0)
    idx = torch.cat(list(iterate_batches(10, 3, True, g)))
    assert sorted(idx.tolist()) == list(range(10))
    assert len(list(iterate_batches(10, 3, False, start=2))) == 2


def test_augment_batch_crops_and_flips_consistently():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    g = torch.Generator().manual_seed(0)
    y = augment_batch(x, g, pad=0, flip=True)
    for a, b in zip(x, y):
        assert torch.equal(a, b) or torch.equal(a.flip(-1), b)
    z = augment_batch(x, torch.Generator().manual_seed(1), pad=1, flip=False)
    assert z.shape == x.shape
    # every output row is a shifted window of the padded input: values come from x or the pad value
    assert set(z.unique().tolist()) <= set(x.unique().tolist())


@pytest.mark.parametrize("name", ["teacher_cnn", "tiny_cnn", "mobilenet_student", "resnet_student"])
def test_zoo_models_give_logits(name):
    m = build_model(name, num_classes=7, in_channels=3)
    assert m(torch.randn(2, 3, 28, 28)).shape == (2, 7)


def test_student_is_a_tenth_of_the_teacher():
    assert count_params(build_model("tiny_cnn")) * 10 <= count_params(build_model("teacher_cnn"))
    assert count_params(build_model("mobilenet_student", width_mult=0.75)) * 20 <= count_params(build_model("teacher_cnn"))


def test_build_model_errors():
    with pytest.raises(EdgeKDError, match="did you mean 'tiny_cnn'"):
        build_model("tiny_cn")
    with pytest.raises(EdgeKDError, match="cannot import model"):
        build_model("nonexistent.module:Net")
    with pytest.raises(EdgeKDError, match="rejected its arguments"):
        build_model("tiny_cnn", colour=3)
    assert "mlp" in MODELS


def test_model_file_round_trip_and_mismatch(tmp_path):
    m = build_model("tiny_cnn", width=8)
    save_model_file(m, "tiny_cnn", {"width": 8}, tmp_path / "m.pt", note="x")
    m2, info = load_model_file(tmp_path / "m.pt")
    x = torch.randn(2, 1, 28, 28)
    m.eval()
    assert torch.equal(m(x), m2(x)) and info["note"] == "x"
    torch.save(m.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(EdgeKDError, match="bare state_dict"):
        load_model_file(tmp_path / "bare.pt")
    with pytest.raises(EdgeKDError, match="do not fit the model"):
        load_model_file(tmp_path / "bare.pt", "tiny_cnn", {"width": 16})
    (tmp_path / "junk.pt").write_bytes(b"not a zip")
    with pytest.raises(EdgeKDError, match="cannot read"):
        load_model_file(tmp_path / "junk.pt")
