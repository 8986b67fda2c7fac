"""Token objectives on (B, T, V) logits against values computed by hand, and recipe term parsing."""
from __future__ import annotations

import math

import pytest
import torch

from edgekd.distill.losses import TopKLogits
from edgekd.errors import EdgeKDError
from edgekd.lm.objectives import Term, TokenObjective, flatten, parse_terms


def _kl(p, q):
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_forward_kl_on_btv_with_padding_mask_matches_hand_value():
    # B=1, T=2, V=2; the second position is padding and must not count
    s = torch.tensor([[[0.0, math.log(3.0)], [5.0, -5.0]]])      # q = (1/4, 3/4) at t=0
    t = torch.tensor([[[0.0, 0.0], [-5.0, 5.0]]])                  # p = (1/2, 1/2) at t=0
    mask = torch.tensor([[1, 0]])
    obj = TokenObjective([Term("forward_kl")])
    loss, _ = obj(s, torch.zeros(1, 2, dtype=torch.long), t, mask)
    assert loss.item() == pytest.approx(_kl([0.5, 0.5], [0.25, 0.75]), rel=1e-5)
    rev, _ = TokenObjective([Term("reverse_kl")])(s, torch.zeros(1, 2, dtype=torch.long), t, mask)
    assert rev.item() == pytest.approx(_kl([0.25, 0.75], [0.5, 0.5]), rel=1e-5)


def test_gjsd_and_ce_mixture_by_hand():
    s = torch.tensor([[[0.0, math.log(3.0)]]])
    t = torch.tensor([[[0.0, 0.0]]])
    y = torch.tensor([[1]])
    p, q = [0.5, 0.5], [0.25, 0.75]
    m = [0.5 * a + 0.5 * b for a, b in zip(p, q)]
    jsd = 0.5 * _kl(p, m) + 0.5 * _kl(q, m)
    obj = TokenObjective(parse_terms([{"name": "gjsd", "beta": 0.5}, {"name": "ce", "weight": 2.0}]))
    loss, parts = obj(s, y, t)
    assert parts["gjsd"] == pytest.approx(jsd, rel=1e-5)
    assert parts["ce"] == pytest.approx(-math.log(0.75), rel=1e-5)
    assert loss.item() == pytest.approx(jsd - 2 * math.log(0.75), rel=1e-5)


def test_topk_teacher_equals_dense_when_k_is_vocab_and_temperature_scales():
    torch.manual_seed(0)
    s, t = torch.randn(2, 3, 7), torch.randn(2, 3, 7)
    top = t.topk(7, -1)
    y = torch.zeros(2, 3, dtype=torch.long)
    for name in ("forward_kl", "reverse_kl", "gjsd"):
        obj = TokenObjective([Term(name, 1.0, {"temperature": 2.0})])
        dense, _ = obj(s, y, t)
        sparse, _ = obj(s, y, TopKLogits(top.values, top.indices))
        assert sparse.item() == pytest.approx(dense.item(), rel=1e-4, abs=1e-6)


def test_flatten_keeps_masked_rows_only():
    x = torch.arange(12.0).view(2, 3, 2)
    (rows,) = flatten(x, torch.tensor([[1, 0, 1], [0, 0, 1]]))
    assert rows.tolist() == [[0.0, 1.0], [4.0, 5.0], [10.0, 11.0]]


def test_parse_terms_rejects_unknown_names_and_options():
    with pytest.raises(EdgeKDError, match="unknown"):
        parse_terms("kl")
    with pytest.raises(EdgeKDError, match="temprature"):
        parse_terms([{"name": "forward_kl", "temprature": 2.0}])
    with pytest.raises(EdgeKDError, match="needs teacher"):
        TokenObjective(parse_terms("forward_kl"))(torch.zeros(1, 2, 3), torch.zeros(1, 2, dtype=torch.long))
