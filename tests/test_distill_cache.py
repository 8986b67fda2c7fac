"""Teacher-logit cache: reuse, rebuild on any fingerprint change, top-k, float16 error, augmentation refusal."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from edgekd.distill import (SoftTargetKD, TeacherCache, TopKLogits, TorchTeacher, check_cache_allowed, load_or_build,
                            tensor_sha256)
from edgekd.errors import EdgeKDError


class Counting(TorchTeacher):
    """A torch teacher that counts the samples it was run on."""

    def __init__(self, module):
        super().__init__(module)
        self.seen = 0

    def logits(self, x):
        self.seen += len(x)
        return super().logits(x)


def make_teacher(seed=0, classes=6):
    torch.manual_seed(seed)
    return Counting(nn.Sequential(nn.Flatten(), nn.Linear(12, classes)))


def make_data(n=50, seed=1):
    return torch.randn(n, 3, 2, 2, generator=torch.Generator().manual_seed(seed))


def test_build_then_reuse_and_index(tmp_path):
    teacher, x = make_teacher(), make_data()
    first = load_or_build(teacher, x, tmp_path, "normalize(0.5,0.5)", batch_size=16, progress=False)
    assert first.rebuilt and teacher.seen == 50 and len(first) == 50 and first.num_classes == 6
    assert first.path.parent == tmp_path and first.path.is_file()
    assert [p.name for p in tmp_path.iterdir()] == [first.path.name]        # no temporary left behind
    again = load_or_build(teacher, x, tmp_path, "normalize(0.5,0.5)", batch_size=16, progress=False)
    assert not again.rebuilt and teacher.seen == 50 and again.fingerprint == first.fingerprint
    idx = torch.tensor([3, 0, 49, 3])
    expected = teacher.module(x[idx]).detach()
    torch.testing.assert_close(again[idx], expected)
    assert again[idx].dtype == torch.float32 and again[7].shape == (6,)


@pytest.mark.parametrize("change", ["weights", "data", "preprocessing", "topk"])
def test_rebuild_when_fingerprint_changes(tmp_path, change):
    teacher, x = make_teacher(), make_data()
    base = load_or_build(teacher, x, tmp_path, "pre", progress=False)
    kwargs = {"preprocessing": "pre", "topk": None}
    if change == "weights":
        with torch.no_grad():
            teacher.module[1].weight[0, 0] += 0.5
    elif change == "data":
        x = x.clone()
        x[10, 0, 0, 0] += 1e-3
    elif change == "preprocessing":
        kwargs["preprocessing"] = "pre+resize32"
    else:
        kwargs["topk"] = 3
    seen = teacher.seen
    other = load_or_build(teacher, x, tmp_path, progress=False, **kwargs)
    assert other.rebuilt and other.fingerprint != base.fingerprint and teacher.seen == seen + 50
    if change in ("weights", "data"):
        torch.testing.assert_close(other[torch.arange(50)], teacher.module(x).detach())
    # the first cache is still there and still reused for its own inputs
    assert base.path.is_file()


def test_topk_cache(tmp_path):
    teacher, x = make_teacher(classes=10), make_data()
    cached = load_or_build(teacher, x, tmp_path, "pre", topk=3, progress=False)
    idx = torch.tensor([1, 2, 40])
    out = cached[idx]
    assert isinstance(out, TopKLogits) and out.values.shape == (3, 3) and out.indices.dtype == torch.int64
    v, i = torch.topk(teacher.module(x[idx]).detach(), 3)
    torch.testing.assert_close(out.values, v)
    assert torch.equal(out.indices, i)
    reused = load_or_build(teacher, x, tmp_path, "pre", topk=3, progress=False)
    assert not reused.rebuilt and torch.equal(reused[idx].indices, i) and reused.num_classes == 10


def test_float16_storage_error_is_negligible(tmp_path):
    torch.manual_seed(0)
    teacher = TorchTeacher(nn.Sequential(nn.Flatten(), nn.Linear(12, 10)))
    x = make_data(200) * 4                                       # logits of magnitude up to ~10
    full = load_or_build(teacher, x, tmp_path, "pre", progress=False)
    half = load_or_build(teacher, x, tmp_path, "pre", progress=False, dtype="float16")
    assert half.fingerprint != full.fingerprint and half.logits.dtype == torch.float16
    idx = torch.arange(200)
    z32, z16 = full[idx], half[idx]
    max_abs = (z32 - z16).abs().max().item()
    assert max_abs <= 2 ** -11 * z32.abs().max().item() + 1e-6   # float16 rounding: half an ulp, relative 2^-11
    student = torch.randn(200, 10)
    kd32, kd16 = SoftTargetKD(4.0)(student, z32).item(), SoftTargetKD(4.0)(student, z16).item()
    assert abs(kd32 - kd16) / kd32 < 1e-4


def test_corrupt_or_foreign_cache_file_is_rebuilt(tmp_path):
    teacher, x = make_teacher(), make_data()
    cached = load_or_build(teacher, x, tmp_path, "pre", progress=False)
    cached.path.write_bytes(b"truncated")
    again = load_or_build(teacher, x, tmp_path, "pre", progress=False)
    assert again.rebuilt and teacher.seen == 100
    torch.save({"fingerprint": "someone-else", "meta": {"n": 50}}, cached.path)
    assert load_or_build(teacher, x, tmp_path, "pre", progress=False).rebuilt


def test_data_fingerprint_exact_and_stable():
    x = make_data()
    assert tensor_sha256(x) == tensor_sha256(x.clone())
    assert tensor_sha256(x) != tensor_sha256(x.double())
    assert tensor_sha256(x) != tensor_sha256(x.reshape(50, 12))
    y = x.clone()
    y[-1, -1, -1, -1] = torch.nextafter(y[-1, -1, -1, -1], torch.tensor(1e9))
    assert tensor_sha256(x) != tensor_sha256(y)


def test_cache_refused_with_augmentation():
    assert check_cache_allowed(False) is None
    reason = check_cache_allowed(True)
    assert "augmentation" in reason and "online" in reason
    with pytest.raises(EdgeKDError, match="random augmentation changes each input every epoch"):
        check_cache_allowed(True, strict=True)


@pytest.mark.parametrize("kwargs,match", [
    ({"topk": 0}, r"topk must be a positive integer or null \(full logits\), got 0"),
    ({"topk": 11}, r"topk=11 exceeds the teacher's 6 classes"),
    ({"batch_size": 0}, r"batch_size must be a positive integer, got 0"),
    ({"dtype": "bfloat16"}, r"cache dtype must be one of float32, float16, got 'bfloat16'"),
    ({"preprocessing": None}, r"preprocessing must be a string"),
])
def test_bad_arguments(tmp_path, kwargs, match):
    args = {"preprocessing": "pre", "progress": False, **kwargs}
    with pytest.raises(EdgeKDError, match=match):
        TeacherCache(tmp_path).load_or_build(make_teacher(), make_data(), **args)


def test_plain_module_accepted_as_teacher(tmp_path):
    torch.manual_seed(0)
    module = nn.Sequential(nn.Flatten(), nn.Linear(12, 4))
    cached = load_or_build(module, make_data(), tmp_path, "pre", progress=False)
    assert cached.rebuilt and cached[0].shape == (4,)
