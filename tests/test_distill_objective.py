"""Objective: weighted parts that sum to the total, taps and needs, all-at-once validation."""
from __future__ import annotations

import re

import pytest
import torch
from torch import nn

from edgekd.distill import FeatureTap, HintLoss, SoftTargetKD, TopKLogits, build_objective
from edgekd.distill.divergences import ForwardKL
from edgekd.errors import ConfigError, EdgeKDError

RECIPE = [{"name": "ce", "weight": 0.1}, {"name": "kd_soft", "weight": 0.9, "temperature": 4},
          {"name": "hint", "weight": 1.0, "student": "features.1", "teacher": "features.2"}]


def batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(4, 5, generator=g, requires_grad=True)
    t = torch.randn(4, 5, generator=g)
    y = torch.tensor([0, 1, 2, 3])
    sf = {"features.1": torch.randn(4, 3, 4, 4, generator=g, requires_grad=True)}
    tf = {"features.2": torch.randn(4, 6, 2, 2, generator=g)}
    return s, t, y, sf, tf


def test_parts_are_weighted_and_sum_to_total():
    obj = build_objective(RECIPE)
    s, t, y, sf, tf = batch()
    out = obj(s, y, t, sf, tf)
    assert set(out) == {"loss", "ce", "kd_soft", "hint"}
    assert out["loss"].item() == pytest.approx(sum(out[k].item() for k in ("ce", "kd_soft", "hint")), rel=1e-6)
    assert out["ce"].item() == pytest.approx(0.1 * torch.nn.functional.cross_entropy(s, y).item(), rel=1e-6)
    assert out["kd_soft"].item() == pytest.approx(0.9 * SoftTargetKD(4.0)(s, t).item(), rel=1e-6)
    assert not out["kd_soft"].requires_grad and out["loss"].requires_grad
    out["loss"].backward()
    assert s.grad.abs().sum() > 0 and sf["features.1"].grad.abs().sum() > 0
    hint = obj.losses["hint"]
    assert isinstance(hint, HintLoss) and hint.adapter.weight.grad.abs().sum() > 0


def test_taps_and_needs():
    obj = build_objective(RECIPE + [{"name": "attention", "student": "features.1", "teacher": "features.3",
                                     "weight": 500}])
    assert obj.student_taps == ["features.1"]
    assert obj.teacher_taps == ["features.2", "features.3"]
    assert obj.needs_teacher_logits and obj.needs_teacher and obj.needs_targets
    assert obj.accepts_topk
    ce_only = build_objective([{"name": "ce"}])
    assert not ce_only.needs_teacher and not ce_only.needs_teacher_logits and ce_only.student_taps == []
    feats_only = build_objective([{"name": "sp", "student": "a", "teacher": "b"}])
    assert feats_only.needs_teacher and not feats_only.needs_teacher_logits
    assert not build_objective([{"name": "dkd"}]).accepts_topk
    assert not build_objective([{"name": "kd_soft", "standardize": True}]).accepts_topk


def test_adapters_built_before_optimizer():
    obj = build_objective(RECIPE)
    assert obj.has_unbuilt_adapters and not list(obj.parameters())
    _, _, _, sf, tf = batch()
    obj.build_adapters(sf, tf)
    assert not obj.has_unbuilt_adapters
    assert [p.shape for p in obj.parameters()] == [torch.Size([6, 3, 1, 1])]
    assert "losses.hint.adapter.weight" in obj.state_dict()


def test_topk_teacher_logits_through_objective():
    obj = build_objective([{"name": "ce", "weight": 0.5}, {"name": "kd_soft", "temperature": 2.0}])
    s, t, y, _, _ = batch()
    v, i = torch.topk(t, 5)
    full = obj(s, y, t)["loss"]
    sparse = obj(s, y, (v, i))["loss"]
    assert sparse.item() == pytest.approx(full.item(), rel=1e-5)
    dkd = build_objective([{"name": "dkd"}])
    with pytest.raises(EdgeKDError, match="'dkd' needs full teacher logits"):
        dkd(s, y, TopKLogits(v[:, :2], i[:, :2]))


def test_mask_reaches_divergences():
    obj = build_objective([{"name": "reverse_kl", "weight": 2.0}, {"name": "ce"}])
    g = torch.Generator().manual_seed(3)
    s, t = torch.randn(2, 3, 4, generator=g), torch.randn(2, 3, 4, generator=g)
    y = torch.tensor([[0, 1, -100], [2, -100, -100]])
    mask = y != -100
    from edgekd.distill.divergences import ReverseKL

    out = obj(s, y, t, mask=mask)
    assert out["reverse_kl"].item() == pytest.approx(2 * ReverseKL()(s, t, mask=mask).item(), rel=1e-6)
    assert out["reverse_kl"].item() != pytest.approx(2 * ReverseKL()(s, t).item(), rel=1e-3)


def test_duplicate_losses_get_suffixes_and_labels():
    obj = build_objective([{"name": "hint", "student": "a", "teacher": "b"},
                           {"name": "hint", "student": "c", "teacher": "d", "weight": 0.5},
                           {"name": "forward_kl", "label": "fkl"}])
    assert [t.label for t in obj.terms] == ["hint", "hint_2", "fkl"]


def test_missing_inputs_are_clear():
    obj = build_objective(RECIPE)
    s, t, y, sf, tf = batch()
    with pytest.raises(EdgeKDError, match=r"'kd_soft' \(kd_soft\) needs teacher_logits"):
        obj(s, y, None, sf, tf)
    with pytest.raises(EdgeKDError, match=r"needs the teacher feature 'features.2'.*given were: none"):
        obj(s, y, t, sf, None)
    with pytest.raises(EdgeKDError, match=r"'ce' \(ce\) needs targets"):
        obj(s, None, t, sf, tf)


def test_validation_collects_every_problem():
    with pytest.raises(ConfigError) as info:
        build_objective([
            {"name": "kd_sotf"},
            {"name": "kd_soft", "temperature": -1, "weight": -2},
            {"name": "hint"},
            {"name": "dkd", "alpah": 1},
            {"name": "ce", "student": "features.1"},
            "ce",
            {"weight": 1},
            {"name": "gjsd", "beta": 2},
        ])
    problems = info.value.problems
    assert len(problems) == 10, problems
    text = str(info.value)
    assert text.startswith("distill.losses has 10 problem(s)")
    for pattern in [r"\[1\] \(kd_sotf\): unknown loss 'kd_sotf'; did you mean 'kd_soft'\?",
                    r"\[2\] \(kd_soft\): weight must be a finite number >= 0, got -2",
                    r"\[2\] \(kd_soft\): temperature must be > 0, got -1",
                    r"\[3\] \(hint\): feature loss needs 'student'",
                    r"\[3\] \(hint\): feature loss needs 'teacher'",
                    r"\[4\] \(dkd\): unknown option\(s\) 'alpah'; did you mean 'alpha'\? allowed: alpha, beta",
                    r"\[5\] \(ce\): 'student'/'teacher' feature names apply only to feature losses",
                    r"\[6\]: a loss term must be a mapping",
                    r"\[7\]: missing 'name'",
                    r"\[8\] \(gjsd\): beta must be >= 0.0 and <= 1.0, got 2"]:
        assert any(re.search(pattern, p) for p in problems), pattern


@pytest.mark.parametrize("terms,match", [
    ([], r"must be a non-empty list of loss terms"),
    ([{"name": "ce", "weight": 0}], r"every weight is 0"),
    ([{"name": "ce", "label": "loss"}], r"label must be a unique non-empty name without '.', not 'loss'"),
    ([{"name": "ce", "label": "a.b"}], r"label must be a unique"),
    ([{"name": "ce", "weight": "1"}], r"weight must be a finite number >= 0, got '1'"),
])
def test_validation_single_problems(terms, match):
    with pytest.raises(ConfigError, match=match):
        build_objective(terms)


def test_end_to_end_with_feature_taps_trains():
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 16, 4))
    teacher = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 16, 4)).eval()
    obj = build_objective([{"name": "ce", "weight": 0.1}, {"name": "kd_soft", "weight": 0.9},
                           {"name": "hint", "student": "1", "teacher": "1"}])
    x, y = torch.randn(16, 1, 4, 4), torch.randint(0, 4, (16,))
    s_tap, t_tap = FeatureTap(student, obj.student_taps), FeatureTap(teacher, obj.teacher_taps)
    with torch.no_grad():
        t_logits, t_feats = t_tap.run(teacher, x)
    s_logits, s_feats = s_tap.run(student, x)
    obj.build_adapters(s_feats, t_feats)
    opt = torch.optim.Adam([*student.parameters(), *obj.parameters()], lr=1e-2)
    first = None
    for _ in range(30):
        s_logits, s_feats = s_tap.run(student, x)
        loss = obj(s_logits, y, t_logits, s_feats, t_feats)["loss"]
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first


def test_forward_kl_term_equals_module():
    obj = build_objective([{"name": "forward_kl", "temperature": 2.0, "weight": 3.0}])
    s, t, y, _, _ = batch()
    assert obj(s, y, t)["loss"].item() == pytest.approx(3 * ForwardKL(temperature=2.0)(s, t).item(), rel=1e-6)
