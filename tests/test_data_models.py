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


def test_augmentation_policies_shift_flip_or_both():
    """A left/right-asymmetric digit: "shift" never mirrors it, "flip" never moves it, "standard" does both."""
    from edgekd.data.loader import Augmentation

    x = torch.zeros(64, 1, 8, 8)
    x[:, :, 2:6, 1] = 1.0  # a bar near the left edge
    g = lambda: torch.Generator().manual_seed(3)
    shifted = Augmentation("shift", 1)(x, g())
    cols = shifted.sum(dim=(1, 2)).argmax(-1).flatten()  # the bar's column per sample
    assert set(cols.tolist()) == {0, 1, 2}  # moved by -1, 0 or +1 pixel: all three drawn in 64 samples
    flipped = Augmentation("flip", 2)(x, g())
    assert set(flipped.sum(dim=(1, 2)).argmax(-1).flatten().tolist()) == {1, 6}  # mirrored or unchanged
    both = Augmentation("standard", 1)(x, g())
    assert set(both.sum(dim=(1, 2)).argmax(-1).flatten().tolist()) - {0, 1, 2}  # some mirrored
    assert torch.equal(Augmentation("none", 2)(x, g()), x) and not Augmentation("shift", 0).active


def test_recipe_augment_policy_reaches_in_memory_training_batches():
    from edgekd.config import parse_recipe
    from edgekd.data import dataset_from_config

    recipe = parse_recipe({"data": {"dataset": "digits", "augment": "shift", "shift_pixels": 1}})
    ds = dataset_from_config(recipe.data, seed=0)
    src = ds.train_source(augment=True)
    assert src.augment == ds.augmentation and ds.augmentation.policy == "shift"
    assert ds.train_source(augment=False).augment is None
    with pytest.raises(EdgeKDError, match="data.shift_pixels: must be >= 0"):
        parse_recipe({"data": {"shift_pixels": -1}})
    with pytest.raises(EdgeKDError, match="augment"):
        parse_recipe({"data": {"augment": "mirror"}})


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


def _npz(path, y_train, y_test=None, x_dtype=np.uint8, channels=None):
    rng = np.random.default_rng(0)
    shape = (6, 6) if channels is None else (6, 6, channels)
    y_test = np.arange(4) % 2 if y_test is None else y_test
    np.savez(path, x_train=rng.integers(0, 255, (len(y_train), *shape)).astype(x_dtype), y_train=y_train,
             x_test=rng.integers(0, 255, (len(y_test), *shape)).astype(x_dtype), y_test=y_test)
    return str(path)


def test_labels_must_be_0_to_k_minus_1_finite_integers(tmp_path):
    with pytest.raises(EdgeKDError, match=r"training labels run 1\.\.10 \(10 distinct\) but class\(es\) \[0\] never "
                                          r"appear: labels must be 0\.\.K-1; subtract 1 \(y - 1\)"):
        load_dataset("npz", _npz(tmp_path / "a.npz", np.arange(20) % 10 + 1, np.arange(4) % 10 + 1))
    with pytest.raises(EdgeKDError, match=r"class\(es\) \[2\] never appear.*renumber"):
        load_dataset("npz", _npz(tmp_path / "b.npz", np.array([0, 1, 3] * 4)))
    y = (np.arange(12) % 2).astype(np.float32)
    y[5] = np.nan
    with pytest.raises(EdgeKDError, match=r"y_train labels hold NaN or inf \(1 of them, first at index 5\)"):
        load_dataset("npz", _npz(tmp_path / "c.npz", y))
    y[5] = 1.5
    with pytest.raises(EdgeKDError, match=r"y_train labels hold non-integer values \(1\.5 at index 5\)"):
        load_dataset("npz", _npz(tmp_path / "d.npz", y))
    with pytest.raises(EdgeKDError, match=r"y_test labels hold NaN or inf"):
        load_dataset("npz", _npz(tmp_path / "e.npz", np.arange(12) % 2, np.array([0, np.inf])))
    with pytest.raises(EdgeKDError, match=r"negative"):
        load_dataset("npz", _npz(tmp_path / "f.npz", np.arange(12) % 2 - 1))
    ds = load_dataset("npz", _npz(tmp_path / "g.npz", (np.arange(12) % 2).astype(np.float64)))
    assert ds.y_train.dtype == torch.int64 and ds.num_classes == 2


def test_class_names_list_or_file_and_count(tmp_path):
    path = _npz(tmp_path / "d.npz", np.arange(12) % 3, np.arange(6) % 3)
    assert load_dataset("npz", path, class_names=["cat", "dog", "eel"]).labels == ["cat", "dog", "eel"]
    (tmp_path / "labels.txt").write_text("cat\ndog\n\neel\nfox\n")
    ds = load_dataset("npz", path, class_names=str(tmp_path / "labels.txt"))
    assert ds.labels == ["cat", "dog", "eel", "fox"] and ds.num_classes == 4  # a class absent from the data is fine
    with pytest.raises(EdgeKDError, match=r"labels go up to 2 but 2 class names are given"):
        load_dataset("npz", path, class_names=["cat", "dog"])
    with pytest.raises(EdgeKDError, match="class names file not found"):
        load_dataset("npz", path, class_names=str(tmp_path / "nope.txt"))


def test_normalization_from_recipe_values_presets_or_dataset(tmp_path):
    path = _npz(tmp_path / "d.npz", np.arange(12) % 2, channels=3)
    raw = np.load(path)["x_train"].astype(np.float32).transpose(0, 3, 1, 2)
    ds = load_dataset("npz", path, mean=[10, 20, 30], std=[2, 4, 5])
    assert ds.mean == (10, 20, 30) and ds.std == (2, 4, 5) and ds.pixel_max == 255
    expected = (raw - np.array([10, 20, 30], np.float32)[None, :, None, None]) / np.array(
        [2, 4, 5], np.float32)[None, :, None, None]
    np.testing.assert_allclose(ds.x_train.numpy(), expected, rtol=1e-6)
    inet = load_dataset("npz", path, mean="imagenet", std="imagenet")
    assert inet.mean == pytest.approx((123.675, 116.28, 103.53)) and inet.std[0] == pytest.approx(58.395)
    own = load_dataset("npz", path, mean="dataset", std="dataset")
    assert own.mean == pytest.approx(tuple(raw.mean(axis=(0, 2, 3))), abs=1e-3)
    assert load_dataset("npz", path, mean=[5], std=[2]).mean == (5, 5, 5)
    with pytest.raises(EdgeKDError, match=r"data.mean: 2 values for images with 3 channel"):
        load_dataset("npz", path, mean=[1, 2])
    with pytest.raises(EdgeKDError, match=r"data.std: every value must be > 0"):
        load_dataset("npz", path, std=[1, 0, 1])
    with pytest.raises(EdgeKDError, match=r"data.mean: 'imagnet' is not known"):
        load_dataset("npz", path, mean="imagnet")


def test_validation_split_is_stratified_disjoint_seeded_and_recorded():
    full = load_dataset("digits")
    ds = load_dataset("digits", val_fraction=0.1, seed=3)
    assert len(ds.y_val) == round(0.1 * len(full.y_train)) and len(ds.y_train) + len(ds.y_val) == len(full.y_train)
    # disjoint and together the whole training split: compare the images themselves
    rows = lambda t: {r.numpy().tobytes() for r in t.flatten(1)}  # noqa: E731
    assert not rows(ds.x_val) & rows(ds.x_train) and rows(ds.x_val) | rows(ds.x_train) == rows(full.x_train)
    per_class = torch.bincount(ds.y_val, minlength=10).float() / torch.bincount(full.y_train, minlength=10)
    assert per_class.min() >= 0.08 and per_class.max() <= 0.12  # every class in proportion
    assert ds.split["val"] == len(ds.y_val) and ds.split["train"] == len(ds.y_train) and ds.split["seed"] == 3
    again = load_dataset("digits", val_fraction=0.1, seed=3)
    other = load_dataset("digits", val_fraction=0.1, seed=4)
    assert again.split["val_indices_sha256"] == ds.split["val_indices_sha256"] != other.split["val_indices_sha256"]
    assert torch.equal(again.x_val, ds.x_val) and ds.digest() == again.digest() != other.digest()
    sized = load_dataset("digits", val_fraction=0.1, val_size=50)
    assert len(sized.y_val) == 50 and set(sized.y_val.tolist()) == set(range(10))
    assert len(load_dataset("digits", val_fraction=0.0).y_val) == 0
    sub = load_dataset("digits", subset_train=200, val_fraction=0.25)
    assert len(sub.y_train) == 150 and len(sub.y_val) == 50
    with pytest.raises(EdgeKDError, match="val_fraction: a fraction in"):
        load_dataset("digits", val_fraction=1.0)
    with pytest.raises(EdgeKDError, match="leaves too few"):
        load_dataset("digits", subset_train=20, val_size=15)


def test_recipe_data_section_flows_into_the_dataset(tmp_path):
    from edgekd.config import parse_recipe
    from edgekd.data import dataset_from_config

    path = _npz(tmp_path / "d.npz", np.arange(40) % 2, np.arange(6) % 2)
    recipe = parse_recipe({"data": {"dataset": "npz", "root": path, "mean": [100], "std": [50],
                                    "class_names": ["no", "yes"], "val_size": 10}})
    ds = dataset_from_config(recipe.data, seed=0)
    assert ds.labels == ["no", "yes"] and ds.mean == (100,) and len(ds.y_val) == 10 and len(ds.y_train) == 30
    written = dataset_from_config(recipe.to_dict()["data"])  # the dict form in a run's recipe.yaml (bundle)
    assert written.labels == ["no", "yes"] and written.std == (50,) and written.split == ds.split
    with pytest.raises(EdgeKDError, match=r"data.val_fraction: a fraction in \[0, 1\)"):
        parse_recipe({"data": {"val_fraction": 1.5}})


def test_recipe_model_problems_lists_data_and_model_misfits(tmp_path):
    from edgekd.config import parse_recipe
    from edgekd.models import recipe_model_problems

    ok = parse_recipe({"data": {"dataset": "digits"}, "student": {"model": "tiny_cnn", "kwargs": {"width": 4}},
                       "teacher": {"model": "tiny_cnn"}, "profile": {"targets": ["cpu-local"]},
                       "bundle": {"targets": ["cpu-local"]}})
    assert recipe_model_problems(ok) == []
    bad = parse_recipe({"data": {"dataset": "digits", "val_fraction": 0},
                        "student": {"model": "mlp", "kwargs": {"input_size": 28}},
                        "teacher": {"model": "torch.nn:Linear", "kwargs": {"in_features": 3, "out_features": 2}},
                        "profile": {"targets": ["cpu-local"]}, "bundle": {"targets": ["cpu-local"]}})
    problems = recipe_model_problems(bad)
    assert problems[0].startswith("student: model 'mlp' does not fit the data: the model's fully connected layer "
                                  "expects 784 features, images of the data's size give 64")
    assert any(p.startswith("teacher: model 'torch.nn:Linear' does not fit the data") for p in problems)
    assert any(p.startswith("quantize.sensitivity: needs a validation split") for p in problems)
    labels = parse_recipe({"data": {"dataset": "npz", "root": _npz(tmp_path / "a.npz", np.arange(12) % 3 + 1,
                                                                    np.arange(3) + 1)},
                           "profile": {"targets": ["cpu-local"]}, "bundle": {"targets": ["cpu-local"]}})
    assert recipe_model_problems(labels)[0].startswith("data: ") and "subtract 1" in recipe_model_problems(labels)[0]
