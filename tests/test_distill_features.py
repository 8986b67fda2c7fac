"""Feature losses against hand/numpy values, the hint adapter, and FeatureTap."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from edgekd.distill import AttentionTransfer, FeatureTap, HintLoss, RelationalKD, SimilarityPreserving
from edgekd.errors import EdgeKDError


def t64(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64)


# --- hint -------------------------------------------------------------------------------------------------
def test_hint_same_shape_is_plain_mse_without_adapter():
    s, t = t64([[1.0, 2.0], [3.0, 4.0]]), t64([[1.0, 0.0], [0.0, 4.0]])
    loss = HintLoss()
    assert loss(s, t).item() == pytest.approx((0 + 4 + 9 + 0) / 4)
    assert isinstance(loss.adapter, nn.Identity) and not list(loss.parameters())


def test_hint_adapter_created_lazily_and_trained():
    torch.manual_seed(0)
    s = torch.randn(2, 3, 8, 8, requires_grad=True)
    t = torch.randn(2, 5, 4, 4)
    loss = HintLoss()
    assert not loss.built
    value = loss(s, t)
    assert isinstance(loss.adapter, nn.Conv2d) and loss.adapter.weight.shape == (5, 3, 1, 1)
    # reference: 1x1 conv = channel matmul, then 2x2 average pooling to the teacher's 4x4, then MSE
    w = loss.adapter.weight.detach()[:, :, 0, 0]
    y = torch.einsum("oc,nchw->nohw", w, s.detach())
    y = y.reshape(2, 5, 4, 2, 4, 2).mean(dim=(3, 5))
    assert value.item() == pytest.approx(((y - t) ** 2).mean().item(), rel=1e-5)
    value.backward()
    assert loss.adapter.weight.grad is not None and loss.adapter.weight.grad.abs().sum() > 0
    assert s.grad is not None and s.grad.abs().sum() > 0


def test_hint_adapter_eager_from_shapes_and_teacher_pooled_when_larger():
    loss = HintLoss(student_shape=[4, 2, 2], teacher_shape=[6, 4, 4])
    assert loss.built and isinstance(loss.adapter, nn.Conv2d)
    assert sum(p.numel() for p in loss.parameters()) == 6 * 4
    s, t = torch.randn(3, 4, 2, 2), torch.randn(3, 6, 4, 4)
    t_pooled = t.reshape(3, 6, 2, 2, 2, 2).mean(dim=(3, 5))
    expected = ((loss.adapter(s) - t_pooled) ** 2).mean()
    assert loss(s, t).item() == pytest.approx(expected.item(), rel=1e-6)


def test_hint_linear_adapter_for_vectors_and_optimizer_step():
    loss = HintLoss()
    s, t = torch.randn(4, 3), torch.randn(4, 7)
    assert not loss.built and not list(loss.parameters())   # nothing to optimize before the first batch
    loss.build(s.shape, t.shape)
    assert isinstance(loss.adapter, nn.Linear) and loss.adapter.weight.shape == (7, 3)
    opt = torch.optim.SGD(loss.parameters(), lr=0.1)
    before = loss(s, t).item()
    for _ in range(20):
        opt.zero_grad()
        loss(s, t).backward()
        opt.step()
    assert loss(s, t).item() < before


def test_hint_errors():
    with pytest.raises(ValueError, match="give both student_shape and teacher_shape"):
        HintLoss(student_shape=[3, 4, 4])
    with pytest.raises(ValueError, match=r"student_shape must be a list of positive ints.*got \[0, 4\]"):
        HintLoss(student_shape=[0, 4], teacher_shape=[3, 4])
    with pytest.raises(EdgeKDError, match="different ranks"):
        HintLoss()(torch.randn(2, 3, 4, 4), torch.randn(2, 3))
    loss = HintLoss(student_shape=[3], teacher_shape=[5])
    with pytest.raises(EdgeKDError, match="adapter was built for other shapes"):
        loss(torch.randn(2, 3), torch.randn(2, 6))


# --- attention transfer -----------------------------------------------------------------------------------
def test_attention_transfer_hand_computed():
    # student: channels [1, 2] and [3, 0] on a 1x2 map -> mean |F|^2 = [5, 2] -> / sqrt(29)
    s = t64([[[[1.0, 2.0]], [[3.0, 0.0]]]])
    # teacher (3 channels): [[1,1]], [[1,1]], [[1,1]] -> [1, 1] -> / sqrt(2)
    t = t64([[[[1.0, 1.0]], [[1.0, 1.0]], [[1.0, 1.0]]]])
    a_s = np.array([5, 2]) / math.sqrt(29)
    a_t = np.array([1, 1]) / math.sqrt(2)
    expected = ((a_s - a_t) ** 2).mean()
    assert AttentionTransfer()(s, t).item() == pytest.approx(expected)


def test_attention_transfer_scale_invariant_and_pools_spatial():
    torch.manual_seed(0)
    s = torch.randn(2, 4, 6, 6)
    assert AttentionTransfer()(s, 3 * torch.cat([s, s], 1)).item() == pytest.approx(0.0, abs=1e-10)
    big = s.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)   # 12x12, each pixel repeated
    value = AttentionTransfer()(torch.randn(2, 4, 6, 6), big)
    assert torch.isfinite(value)
    with pytest.raises(EdgeKDError, match=r"needs 4-D \(N, C, H, W\)"):
        AttentionTransfer()(torch.randn(2, 4), torch.randn(2, 4))
    with pytest.raises(ValueError, match="p must be > 0"):
        AttentionTransfer(p=0)


# --- RKD --------------------------------------------------------------------------------------------------
def np_smooth_l1(a, b):
    d = np.abs(a - b)
    return np.where(d < 1, 0.5 * d * d, d - 0.5).mean()


def np_rkd(s, t, wd, wa):
    def dist(e):
        d = np.sqrt(((e[:, None] - e[None]) ** 2).sum(-1))
        return d / d[d > 0].mean()

    def angle(e):
        n = len(e)
        out = np.zeros((n, n, n))
        for i in range(n):
            for j in range(n):
                for k in range(n):
                    a, b = e[j] - e[i], e[k] - e[i]
                    na, nb = np.linalg.norm(a), np.linalg.norm(b)
                    out[i, j, k] = 0.0 if na == 0 or nb == 0 else a @ b / (na * nb)
        return out.ravel()

    return wd * np_smooth_l1(dist(s), dist(t)) + wa * np_smooth_l1(angle(s), angle(t))


def test_rkd_hand_triangle_distances():
    # 3-4-5 triangle: distances normalized by their mean 4 -> [0.75, 1, 1.25]; teacher a line 0-1-2
    s = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0]])
    t = np.array([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0]])      # distances 1, 2, 1 -> mean 4/3 -> [.75, 1.5, .75]
    # ordered pairs (0,1),(0,2),(1,2): student [.75, 1, 1.25], teacher [.75, 1.5, .75]; each counted twice
    diffs = np.array([0.0, 0.5, 0.5])
    expected_d = (0.5 * diffs ** 2).sum() * 2 / 9               # 9 entries incl. zero diagonal
    got = RelationalKD(distance_weight=1.0, angle_weight=0.0)(t64(s), t64(t)).item()
    assert got == pytest.approx(expected_d)


def test_rkd_numpy_and_scale_invariance():
    g = np.random.default_rng(0)
    s, t = g.normal(size=(4, 3, 2, 2)), g.normal(size=(4, 5))
    got = RelationalKD(distance_weight=25, angle_weight=50)(t64(s), t64(t)).item()
    assert got == pytest.approx(np_rkd(s.reshape(4, -1), t, 25, 50), rel=1e-8)
    assert RelationalKD()(t64(t), t64(3 * t)).item() == pytest.approx(0.0, abs=1e-10)


def test_rkd_errors():
    with pytest.raises(EdgeKDError, match=">= 2 samples"):
        RelationalKD()(torch.randn(1, 3), torch.randn(1, 3))
    with pytest.raises(ValueError, match="angle_weight must be >= 0"):
        RelationalKD(angle_weight=-1)


# --- SP ---------------------------------------------------------------------------------------------------
def np_sp(s, t):
    def g(f):
        f = f.reshape(len(f), -1)
        m = f @ f.T
        return m / np.linalg.norm(m, axis=1, keepdims=True)

    return ((g(t) - g(s)) ** 2).sum() / len(s) ** 2


def test_sp_hand_and_numpy():
    # s rows [1,0],[0,1] -> G = I -> normalized I; t rows [1,0],[1,0] -> G = ones -> rows / sqrt(2)
    s, t = np.array([[1.0, 0.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [1.0, 0.0]])
    r = 1 / math.sqrt(2)
    expected = ((r - 1) ** 2 + r ** 2 + r ** 2 + (r - 1) ** 2) / 4
    assert SimilarityPreserving()(t64(s), t64(t)).item() == pytest.approx(expected)
    g = np.random.default_rng(1)
    s, t = g.normal(size=(5, 2, 3, 3)), g.normal(size=(5, 7))
    assert SimilarityPreserving()(t64(s), t64(t)).item() == pytest.approx(np_sp(s, t), rel=1e-10)
    assert SimilarityPreserving()(t64(t), t64(2 * t)).item() == pytest.approx(0.0, abs=1e-12)


# --- FeatureTap -------------------------------------------------------------------------------------------
class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, stride=2),
                                      nn.ReLU())
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.features(x).mean((2, 3)))


def test_feature_tap_captures_named_outputs_and_removes_hooks():
    torch.manual_seed(0)
    net, x = Net(), torch.randn(2, 1, 8, 8)
    with FeatureTap(net, ["features.1", "features.3"]) as tap:
        out, feats = tap.run(net, x)
    assert torch.equal(out, net(x))
    assert torch.equal(feats["features.1"], torch.relu(net.features[0](x)))
    assert feats["features.3"].shape == (2, 8, 3, 3)
    assert not net.features[1]._forward_hooks and not net.features[3]._forward_hooks


def test_feature_tap_wrong_name_suggests_close_names():
    with pytest.raises(EdgeKDError, match=r"Net has no submodule 'feature.3'; did you mean 'features.3'\?"):
        FeatureTap(Net(), ["feature.3"])
    with pytest.raises(EdgeKDError, match=r"no submodule 'zzz'. Feature taps use the dotted names .*features.0"):
        FeatureTap(Net(), ["zzz"])


def test_feature_tap_tuple_output_takes_first():
    class Pair(nn.Module):
        def forward(self, x):
            return x * 2, x

    net = nn.Sequential(Pair())
    net.forward = lambda x: net[0](x)[0]  # type: ignore[method-assign]
    tap = FeatureTap(net, ["0"])
    _, feats = tap.run(net, torch.ones(1, 2))
    assert torch.equal(feats["0"], torch.full((1, 2), 2.0))
    tap.remove()
