"""The BatchSource contract (edgekd.data.source): deterministic per (seed, epoch), resumable, disjoint rank shares."""
import torch

from edgekd.data.loader import augment_batch
from edgekd.data.source import TensorSource, derived_seed


def _source(n=10, augment=None):
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 4, 4).contiguous()
    return TensorSource(x, torch.arange(n) % 3, augment)


def test_epoch_order_depends_only_on_seed_and_epoch():
    s = _source()
    a = [b.idx.tolist() for b in s.epoch(2, 7, 4)]
    assert a == [b.idx.tolist() for b in s.epoch(2, 7, 4)]
    assert a != [b.idx.tolist() for b in s.epoch(3, 7, 4)]
    assert sorted(sum(a, [])) == list(range(10)) and [len(i) for i in a] == [4, 4, 2]


def test_start_skips_batches_exactly():
    s = _source(augment=augment_batch)
    full = list(s.epoch(1, 0, 3))
    tail = list(s.epoch(1, 0, 3, start=2))
    assert len(tail) == len(full) - 2
    for f, t in zip(full[2:], tail):
        assert torch.equal(f.idx, t.idx) and torch.equal(f.x, t.x)  # augmentation seeded per batch, not by state


def test_rank_shares_are_disjoint_and_cover_the_global_batch():
    s = _source(n=11)
    for r0, r1 in zip(s.epoch(0, 3, 4, rank=0, world=2), s.epoch(0, 3, 4, rank=1, world=2)):
        assert not set(r0.idx.tolist()) & set(r1.idx.tolist())
    ranks = [list(s.epoch(0, 3, 4, rank=r, world=2)) for r in (0, 1)]
    assert len(ranks[0]) == len(ranks[1]) == s.steps_per_epoch(4)
    seen = sorted(i for rank in ranks for b in rank for i in b.idx.tolist())
    assert seen == list(range(11))


def test_labels_and_images_travel_with_the_index():
    s = _source()
    for b in s.epoch(0, 1, 4):
        assert torch.equal(b.y, b.idx % 3) and torch.equal(b.x[:, 0, 0, 0], b.idx.float())


def test_derived_seed_is_stable():
    assert derived_seed(0, 1) == derived_seed(0, 1) != derived_seed(1, 0)
    assert 0 <= derived_seed(2**40, 3) < 2**63
