"""Memory-mapped teacher-logit cache for streamed data: built once, looked up by Batch.idx, fp16, optional top-k."""
import numpy as np
import pytest
import torch

from data_fixtures import write_folder
from edgekd.distill import TorchTeacher
from edgekd.distill.cache import load_or_build_source
from edgekd.distill.losses import TopKLogits
from edgekd.data.streaming import StreamOptions, load_streaming


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = write_folder(tmp_path_factory.mktemp("c"), per_class=6)
    ds = load_streaming("image_folder", str(root), mean=[100.0], std=[50.0],
                        options=StreamOptions(resolution=8, workers=0))
    torch.manual_seed(0)
    teacher = TorchTeacher(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval())
    return ds, teacher


def test_rows_match_the_teacher_on_the_unaugmented_images(setup, tmp_path):
    ds, teacher = setup
    src = ds.train_source(False)
    cached = load_or_build_source(teacher, src, tmp_path, ds.digest(), "p", batch_size=4, progress=False)
    assert cached.rebuilt and cached.logits.dtype == torch.float16 and cached.logits.shape == (len(src), 5)
    for b in src.epoch(0, 9, 5):  # shuffled training batches look their rows up by idx
        expect = teacher.logits(b.x)
        assert torch.allclose(cached[b.idx], expect, atol=2e-3, rtol=1e-3)
    again = load_or_build_source(teacher, src, tmp_path, ds.digest(), "p", batch_size=4, progress=False)
    assert not again.rebuilt and torch.equal(again.logits, cached.logits)
    assert isinstance(np.load(cached.path, mmap_mode="r"), np.memmap)


def test_topk_stores_int32_indices(setup, tmp_path):
    ds, teacher = setup
    src = ds.train_source(False)
    cached = load_or_build_source(teacher, src, tmp_path, ds.digest(), "p", topk=2, progress=False)
    assert cached.indices.dtype == torch.int32
    b = next(iter(src.epoch(0, 1, 6)))
    out = cached[b.idx]
    assert isinstance(out, TopKLogits)
    v, i = torch.topk(teacher.logits(b.x), 2, dim=-1)
    assert torch.equal(out.indices, i) and torch.allclose(out.values, v, atol=2e-3)


def test_another_data_fingerprint_or_teacher_rebuilds(setup, tmp_path):
    ds, teacher = setup
    src = ds.train_source(False)
    load_or_build_source(teacher, src, tmp_path, "data-a", "p", progress=False)
    assert load_or_build_source(teacher, src, tmp_path, "data-b", "p", progress=False).rebuilt
    other = TorchTeacher(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 5)).eval())
    assert load_or_build_source(other, src, tmp_path, "data-a", "p", progress=False).rebuilt


def test_a_cache_without_its_json_is_rebuilt(setup, tmp_path):
    ds, teacher = setup
    src = ds.train_source(False)
    first = load_or_build_source(teacher, src, tmp_path, "d", "p", progress=False)
    first.path.with_suffix(".json").unlink()
    assert load_or_build_source(teacher, src, tmp_path, "d", "p", progress=False).rebuilt
