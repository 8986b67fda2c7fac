"""WebDataset-layout tar shards: the BatchSource contract, shard/worker splitting and exact resume."""
import io
import tarfile

import pytest
import torch

from data_fixtures import label_from_pixels, same_batches as _same, write_folder
from edgekd.data.files import expand_shards, index_shards, scan_folder, split_key, write_shards
from edgekd.data.streaming import StreamOptions, load_streaming
from edgekd.errors import EdgeKDError


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("sh")
    return write_shards(scan_folder(write_folder(root / "f", per_class=14)), root / "tars", per_shard=6)


def _ds(pattern, workers=0, **kw):
    opts = StreamOptions(resolution=12, workers=workers, shuffle_buffer=5, **kw)
    return load_streaming("shards", pattern, mean=[100.0], std=[50.0], val_fraction=0.1, options=opts)



def test_brace_and_glob_patterns(shards):
    files = expand_shards(shards)
    assert len(files) == 7 and files == expand_shards(shards.replace("{0000..0006}", "*"))
    assert split_key("a/b/x.1.seg.png") == ("a/b/x", "1.seg.png")


def test_index_counts_and_labels(shards):
    st = index_shards(shards)
    assert len(st) == 42 and st.counts.tolist() == [6] * 7 and st.classes == ["0", "1", "2"]


def test_epoch_is_deterministic_and_covers_the_split(shards):
    src = _ds(shards).train_source(True)
    a = list(src.epoch(0, 2, 8))
    _same(a, list(_ds(shards).train_source(True).epoch(0, 2, 8)))
    assert len(a) == src.steps_per_epoch(8)
    ids = torch.cat([b.idx for b in a]).tolist()
    assert len(ids) == len(src) and sorted(set(ids)) == list(range(len(src)))  # one worker, one pass: all once
    assert [b.idx.tolist() for b in a] != [b.idx.tolist() for b in src.epoch(1, 2, 8)]


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_at_start_is_exact(shards, workers):
    src = _ds(shards, workers=workers).train_source(True)
    full = list(src.epoch(1, 0, 4))
    for start in (1, 3, 6):
        _same(full[start:], list(src.epoch(1, 0, 4, start=start)))


def test_ranks_get_disjoint_shards_and_equal_batch_counts(shards):
    src = _ds(shards).train_source(True)
    per_rank = [list(src.epoch(0, 0, 8, rank=r, world=2)) for r in range(2)]
    assert len(per_rank[0]) == len(per_rank[1]) == src.steps_per_epoch(8)
    seen = [set(torch.cat([b.idx for b in bs]).tolist()) for bs in per_rank]
    assert not seen[0] & seen[1]


def test_labels_follow_images_and_eval_reads_each_once(shards):
    ds = _ds(shards, workers=2)
    for b in ds.train_source(True).epoch(0, 0, 8):
        assert label_from_pixels(b.x) == b.y.tolist()
    ev = list(ds.test_source().epoch(0, 0, 5, shuffle=False))
    assert sorted(torch.cat([b.idx for b in ev]).tolist()) == list(range(len(ds.test_source())))
    x = ds.x_val[:3]
    assert label_from_pixels(x) == ds.y_val[:3].tolist()


def test_empty_shard_is_refused(tmp_path):
    with tarfile.open(tmp_path / "empty-0.tar", "w"):
        pass
    with pytest.raises(EdgeKDError, match=r"shard .*empty-0.tar holds no samples"):
        index_shards(str(tmp_path / "empty-*.tar"))


def test_sample_without_label_is_refused(tmp_path):
    with tarfile.open(tmp_path / "s.tar", "w") as tf:
        info = tarfile.TarInfo("k1.png")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"abc"))
    with pytest.raises(EdgeKDError, match=r"k1.*no k1.cls label"):
        index_shards(str(tmp_path / "s.tar"))


def test_missing_shards_are_refused(tmp_path):
    with pytest.raises(EdgeKDError, match="shards not found"):
        expand_shards(str(tmp_path / "train-{0000..0003}.tar"))
