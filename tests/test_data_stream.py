"""Streamed image folders and manifests keep the BatchSource contract (edgekd.data.source)."""
import numpy as np
import pytest
import torch

from data_fixtures import label_from_pixels, same_batches as _same, write_folder, write_manifest
from edgekd.data.streaming import StreamOptions, load_streaming
from edgekd.data.transforms import ImageTransform, center_crop_box, random_resized_crop_box

MEAN, STD = [100.0], [50.0]


def _ds(root, kind="image_folder", workers=0, **kw):
    opts = StreamOptions(resolution=16, workers=workers, **kw)
    return load_streaming(kind, str(root), mean=MEAN, std=STD, val_fraction=0.1, options=opts)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_folder(tmp_path_factory.mktemp("imgs"))



def test_splits_and_metadata(folder):
    ds = _ds(folder)
    assert ds.labels == ["c0", "c1", "c2"] and ds.input_shape == (3, 16, 16)
    assert ds.split["train"] + ds.split["val"] + ds.split["test"] == 36 and ds.split["test"] == 7
    parts = [set(s.select.tolist()) for s in (ds.train, ds.val, ds.test)]
    assert not (parts[0] & parts[1]) and not (parts[0] & parts[2]) and not (parts[1] & parts[2])
    assert _ds(folder).digest() == ds.digest()


def test_order_and_augmentation_depend_only_on_seed_and_epoch(folder):
    src = _ds(folder).train_source(True)
    a, b = list(src.epoch(1, 5, 8)), list(_ds(folder).train_source(True).epoch(1, 5, 8))
    _same(a, b)
    c = list(src.epoch(2, 5, 8))
    assert [x.idx.tolist() for x in a] != [x.idx.tolist() for x in c]
    assert sorted(torch.cat([x.idx for x in a]).tolist()) == list(range(len(src)))


def test_worker_processes_give_the_same_batches(folder):
    inproc = list(_ds(folder).train_source(True).epoch(0, 3, 8))
    workers = _ds(folder, workers=2).train_source(True)
    _same(inproc, list(workers.epoch(0, 3, 8)))
    _same(inproc[2:], list(workers.epoch(0, 3, 8, start=2)))  # persistent workers, second pass


def test_resume_at_start_skips_exactly(folder):
    src = _ds(folder).train_source(True)
    full = list(src.epoch(3, 0, 5))
    _same(full[3:], list(src.epoch(3, 0, 5, start=3)))


def test_rank_shares_are_disjoint_with_equal_batch_counts(folder):
    src = _ds(folder).train_source(True)
    full = list(src.epoch(0, 1, 8))
    shares = [list(src.epoch(0, 1, 8, rank=r, world=3)) for r in range(3)]
    assert len({len(s) for s in shares}) == 1 == len({len(full)})  # every rank takes the same number of steps
    for b, whole in enumerate(full):
        ids = [set(s[b].idx.tolist()) for s in shares]
        assert set().union(*ids) == set(whole.idx.tolist()) and sum(map(len, ids)) == len(whole.idx)


def test_labels_follow_images(folder):
    ds = _ds(folder)
    for src in (ds.train_source(True), ds.test_source()):
        for b in src.epoch(0, 0, 8):
            assert label_from_pixels(b.x) == b.y.tolist()
    x = ds.x_test[torch.tensor([2, 0])]
    assert label_from_pixels(x) == ds.y_test[[2, 0]].tolist()


@pytest.mark.parametrize("kind", ["csv", "jsonl"])
def test_manifest(tmp_path, kind):
    path = write_manifest(tmp_path, kind)
    ds = _ds(path, "manifest")
    assert ds.num_classes == 3 and len(ds.train.select) + len(ds.val.select) + len(ds.test.select) == 24
    src = ds.train_source(True)
    _same(list(src.epoch(0, 0, 4))[1:], list(src.epoch(0, 0, 4, start=1)))
    for b in src.epoch(0, 0, 4):
        assert label_from_pixels(b.x) == b.y.tolist()


def test_train_and_test_subfolders(tmp_path):
    write_folder(tmp_path / "train", per_class=5)
    write_folder(tmp_path / "test", per_class=2)
    ds = load_streaming("image_folder", str(tmp_path), mean=MEAN, std=STD, options=StreamOptions(resolution=8,
                                                                                                   workers=0))
    assert ds.split["train"] == 15 and ds.split["test"] == 6


def test_random_resized_crop_box_in_bounds_and_scale():
    import random

    rng = random.Random(0)
    for _ in range(200):
        l, t, r, b = random_resized_crop_box(40, 30, rng, (0.2, 0.9))
        assert 0 <= l < r <= 40 and 0 <= t < b <= 30
        assert (r - l) * (b - t) <= 0.9 * 1200 * 1.02 + 2
    # shorter side 50 -> 32 (= 28 / 0.875): the 28 px crop is 43.75 source pixels wide, centred
    assert center_crop_box(100, 50, 28) == pytest.approx((28.125, 3.125, 71.875, 46.875))


def test_eval_transform_of_a_known_image():
    """A left-dark/right-bright image keeps that layout through the eval crop; flip mirrors it."""
    import io

    from PIL import Image

    a = np.zeros((40, 60, 3), np.uint8)
    a[:, 30:] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    t = ImageTransform(resolution=16, policy="none")
    out = t.apply(buf.getvalue(), "x.png", 0, 0, 0)
    assert out.shape == (16, 16, 3) and out[:, :6].max() < 30 and out[:, 10:].min() > 225
    flipped = [ImageTransform(resolution=16, policy="flip").apply(buf.getvalue(), "x.png", 0, 0, i) for i in range(8)]
    assert any(f[:, 0].mean() > 200 for f in flipped) and any(f[:, 0].mean() < 30 for f in flipped)


def test_shift_transform_moves_the_eval_crop_inside_the_image_without_flipping():
    import io
    import random

    from PIL import Image

    from edgekd.data.transforms import center_crop_box, shifted_box

    a = np.zeros((40, 60, 3), np.uint8)
    a[:, 30:] = 255
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    outs = [ImageTransform(resolution=16, policy="shift", shift_pixels=2).apply(buf.getvalue(), "x.png", 0, 0, i)
            for i in range(16)]
    assert all(o[:, 0].mean() < 30 and o[:, -1].mean() > 225 for o in outs)  # never mirrored
    edges = {int(np.argmax(o[8, :, 0] > 127)) for o in outs}  # where dark turns bright: moves with the shift
    assert len(edges) > 1
    side = 40 * 16 / 18  # shorter side resized to int(16 / 0.875) = 18: the crop covers 320/9 source pixels
    box = center_crop_box(60, 40, 16)
    assert box == pytest.approx(((60 - side) / 2, (40 - side) / 2, (60 + side) / 2, (40 + side) / 2))
    rng = random.Random(0)
    tops = set()
    for _ in range(50):  # one step = side/16 = 2.22 px; the vertical margin is 2.22 px: +-2 steps are clamped
        left, top, right, bottom = shifted_box(box, 60, 40, 16, 2, rng)
        assert 0 <= top and bottom <= 40 + 1e-9 and 0 <= left and right <= 60 and right - left == pytest.approx(side)
        tops.add(round(top, 6))
    assert tops == {0.0, round(box[1], 6), round(2 * box[1], 6)}


def test_decoders_agree_on_jpeg():
    import io

    from PIL import Image

    from edgekd.data.transforms import _simplejpeg, decode

    if _simplejpeg() is None:
        pytest.skip("simplejpeg (edgekd[data]) not installed: only Pillow decodes")
    from data_fixtures import class_image

    buf = io.BytesIO()
    Image.fromarray(class_image(1, 0, (32, 40))).save(buf, "JPEG", quality=95)
    a = np.asarray(decode(buf.getvalue(), "a.jpg", decoder="pil"), np.int16)
    b = np.asarray(decode(buf.getvalue(), "a.jpg", decoder="simplejpeg"), np.int16)
    assert a.shape == b.shape and np.abs(a - b).max() <= 3


@pytest.mark.parametrize("kind", ["folder", "shards"])
def test_killed_training_resumes_to_the_same_weights(folder, tmp_path, kind):
    """The real loop over a streamed source: stop mid-epoch, resume from the checkpoint, same final weights."""
    from edgekd.data.files import scan_folder, write_shards
    from edgekd.train import TrainConfig, train

    if kind == "folder":
        make = lambda: _ds(folder).train_source(True)  # noqa: E731
    else:
        pattern = write_shards(scan_folder(folder), tmp_path / "tars", per_shard=7)
        make = lambda: load_streaming("shards", pattern, mean=MEAN, std=STD, val_fraction=0.1,  # noqa: E731
                                      options=StreamOptions(resolution=16, workers=0, shuffle_buffer=4)
                                      ).train_source(True)
    cfg = TrainConfig(epochs=2, lr=0.05, checkpoint_every=3)

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                   torch.nn.Flatten(), torch.nn.Linear(4, 3))

    whole = model()
    train(whole, make(), None, cfg, batch_size=8, progress=False)
    ckpt = tmp_path / "ckpt.pt"
    resumed = model()
    train(resumed, make(), None, cfg, batch_size=8, progress=False, checkpoint=ckpt, checkpoint_key="k",
          stop_after_steps=3)
    resumed = model()  # a fresh process would start from scratch weights and load the checkpoint
    result = train(resumed, make(), None, cfg, batch_size=8, progress=False, checkpoint=ckpt, checkpoint_key="k")
    assert result.resumed_from_step == 3
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b)
