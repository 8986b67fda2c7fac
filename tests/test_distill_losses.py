"""Logit losses and divergences against hand-computed values (numpy / closed forms), properties and validation."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edgekd.distill import DIST, LOSSES, CrossEntropy, DecoupledKD, SoftTargetKD, TopKLogits, divergence
from edgekd.distill.divergences import ForwardKL, GeneralizedJSD, ReverseKL
from edgekd.errors import EdgeKDError

LN2, LN3 = math.log(2), math.log(3)


# --- independent numpy references -------------------------------------------------------------------------
def np_softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """KL(p || q) per row."""
    return (p * (np.log(p) - np.log(q))).sum(-1)


def np_zscore(z: np.ndarray) -> np.ndarray:
    return (z - z.mean(-1, keepdims=True)) / (z.std(-1, ddof=1, keepdims=True) + 1e-7)


def t64(a) -> torch.Tensor:
    return torch.tensor(np.asarray(a), dtype=torch.float64)


S = np.array([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])   # student logits, 2 samples x 3 classes
T = np.array([[2.0, 0.5, 0.0], [1.0, 1.0, -2.0]])   # teacher logits
Y = np.array([0, 2])                                # targets


def test_ce_closed_form_and_label_smoothing():
    logits = t64([[LN2, 0.0, 0.0]])                 # softmax = [1/2, 1/4, 1/4]
    y = torch.tensor([0])
    assert CrossEntropy()(logits, y).item() == pytest.approx(LN2, abs=1e-12)
    # (1-eps) * -log p_y + eps * mean_i(-log p_i) = 0.7 ln2 + 0.3 * (ln2 + 2 ln4) / 3 = 1.2 ln2
    assert CrossEntropy(label_smoothing=0.3)(logits, y).item() == pytest.approx(1.2 * LN2, abs=1e-12)


def test_ce_sequence_shape_and_ignore_index():
    logits = t64([[[LN2, 0.0, 0.0], [0.0, 0.0, 0.0]]])   # (B=1, T=2, V=3)
    y = torch.tensor([[0, -100]])                         # second token is padding
    assert CrossEntropy()(logits, y).item() == pytest.approx(LN2, abs=1e-12)


def test_kd_soft_closed_form():
    # teacher p = [3/4, 1/4], student q = [1/2, 1/2]: KL = 3/4 ln(3/2) + 1/4 ln(1/2); T=1 so no scaling
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert SoftTargetKD(temperature=1.0)(t64([[0.0, 0.0]]), t64([[LN3, 0.0]])).item() == pytest.approx(expected)


def test_kd_soft_numpy_temperature():
    t = 4.0
    expected = np_kl(np_softmax(T / t), np_softmax(S / t)).mean() * t * t
    assert SoftTargetKD(temperature=t)(t64(S), t64(T)).item() == pytest.approx(expected, rel=1e-10)


def test_kd_soft_standardized_numpy():
    t = 2.0
    expected = np_kl(np_softmax(np_zscore(T) / t), np_softmax(np_zscore(S) / t)).mean() * t * t
    got = SoftTargetKD(temperature=t, standardize=True)(t64(S), t64(T)).item()
    assert got == pytest.approx(expected, rel=1e-8)
    # standardization removes per-sample shift and scale of the student logits
    assert SoftTargetKD(2.0, standardize=True)(t64(S * 3 + 5), t64(T)).item() == pytest.approx(expected, rel=1e-6)
    assert SoftTargetKD(2.0)(t64(S * 3 + 5), t64(T)).item() != pytest.approx(expected, rel=1e-3)


def np_dkd(s, t, y, alpha, beta, temp):
    ps, pt = np_softmax(s / temp), np_softmax(t / temp)
    total = 0.0
    for i in range(len(y)):
        others = [j for j in range(s.shape[1]) if j != y[i]]
        bs = np.array([ps[i, y[i]], ps[i, others].sum()])
        bt = np.array([pt[i, y[i]], pt[i, others].sum()])
        tckd = (bt * np.log(bt / bs)).sum()
        ns = ps[i, others] / ps[i, others].sum()
        nt = pt[i, others] / pt[i, others].sum()
        nckd = (nt * np.log(nt / ns)).sum()
        total += alpha * tckd + beta * nckd
    return total / len(y) * temp * temp


def test_dkd_numpy():
    got = DecoupledKD(alpha=1.0, beta=8.0, temperature=4.0)(t64(S), t64(T), torch.tensor(Y)).item()
    assert got == pytest.approx(np_dkd(S, T, Y, 1.0, 8.0, 4.0), rel=1e-10)
    got = DecoupledKD(alpha=0.5, beta=2.0, temperature=1.0)(t64(S), t64(T), torch.tensor(Y)).item()
    assert got == pytest.approx(np_dkd(S, T, Y, 0.5, 2.0, 1.0), rel=1e-10)


def test_dkd_reformulates_kd():
    """Zhao et al. Eq. 3: KD = TCKD + (1 - p_t^T) NCKD (one sample, target-class teacher probability p_t^T)."""
    temp = 2.0
    for i in range(2):
        s, t, y = t64(S[i:i + 1]), t64(T[i:i + 1]), torch.tensor(Y[i:i + 1])
        tckd = DecoupledKD(alpha=1.0, beta=0.0, temperature=temp)(s, t, y)
        nckd = DecoupledKD(alpha=0.0, beta=1.0, temperature=temp)(s, t, y)
        pt_target = np_softmax(T[i] / temp)[Y[i]]
        assert (tckd + (1 - pt_target) * nckd).item() == pytest.approx(SoftTargetKD(temp)(s, t).item(), rel=1e-10)


def test_dkd_standardize_and_gradients_finite():
    s = t64(S).requires_grad_()
    loss = DecoupledKD(standardize=True)(s, t64(T), torch.tensor(Y))
    expected = np_dkd(np_zscore(S), np_zscore(T), Y, 1.0, 8.0, 4.0)
    assert loss.item() == pytest.approx(expected, rel=1e-8)
    loss.backward()
    assert torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


def np_dist(s, t, beta, gamma, tau):
    ys, yt = np_softmax(s / tau), np_softmax(t / tau)

    def pearson(a, b):
        a = a - a.mean(1, keepdims=True)
        b = b - b.mean(1, keepdims=True)
        return (a * b).sum(1) / (np.sqrt((a * a).sum(1)) * np.sqrt((b * b).sum(1)) + 1e-8)

    inter = 1 - pearson(ys, yt).mean()
    intra = 1 - pearson(ys.T, yt.T).mean()
    return tau ** 2 * (beta * inter + gamma * intra)


def test_dist_numpy():
    got = DIST(beta=1.0, gamma=2.0, tau=2.0)(t64(S), t64(T)).item()
    assert got == pytest.approx(np_dist(S, T, 1.0, 2.0, 2.0), rel=1e-8)


@pytest.mark.parametrize("name", ["kd_soft", "dkd", "dist", "forward_kl", "reverse_kl", "gjsd"])
@pytest.mark.parametrize("standardize", [False, True])
def test_zero_when_student_equals_teacher(name, standardize):
    loss = LOSSES.build(name, standardize=standardize)
    args = {"teacher_logits": t64(S), "targets": torch.tensor(Y)}
    value = loss(t64(S), **{k: args[k] for k in loss.requires}).item()
    # dist: the official Pearson eps (1e-8 in the denominator) leaves a small residual on near-flat rows
    assert value == pytest.approx(0.0, abs=1e-4 if name == "dist" else 1e-9)
    other = loss(t64(T), **{k: args[k] for k in loss.requires}).item()
    assert other > 1e-3


# --- divergences ------------------------------------------------------------------------------------------
def test_forward_reverse_kl_closed_form_and_asymmetry():
    s, t = t64([[0.0, 0.0]]), t64([[LN3, 0.0]])     # q = [1/2, 1/2], p = [3/4, 1/4]
    fwd = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    rev = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert ForwardKL()(s, t).item() == pytest.approx(fwd)
    assert ReverseKL()(s, t).item() == pytest.approx(rev)
    assert abs(fwd - rev) > 0.01


def test_gjsd_half_is_jensen_shannon_closed_form():
    # P = [3/4, 1/4], Q = [1/4, 3/4], M = [1/2, 1/2]: JSD = 3/4 ln(3/2) + 1/4 ln(1/2)
    s, t = t64([[0.0, LN3]]), t64([[LN3, 0.0]])
    expected = 0.75 * math.log(1.5) + 0.25 * math.log(0.5)
    assert GeneralizedJSD(beta=0.5)(s, t).item() == pytest.approx(expected)


def test_gjsd_numpy_and_endpoints():
    beta, temp = 0.3, 2.0
    p, q = np_softmax(T / temp), np_softmax(S / temp)
    m = beta * p + (1 - beta) * q
    expected = (beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)).mean() * temp * temp
    s, t = t64(S), t64(T)
    assert GeneralizedJSD(beta=beta, temperature=temp)(s, t).item() == pytest.approx(expected, rel=1e-10)
    fwd, rev = ForwardKL()(s, t).item(), ReverseKL()(s, t).item()
    assert fwd != pytest.approx(rev, rel=1e-3)
    assert GeneralizedJSD(beta=0.0)(s, t).item() == pytest.approx(fwd, rel=1e-12)
    assert GeneralizedJSD(beta=1.0)(s, t).item() == pytest.approx(rev, rel=1e-12)
    eps = 1e-5   # near the endpoints gjsd behaves as a scaled forward / reverse KL
    assert GeneralizedJSD(beta=eps)(s, t).item() / eps == pytest.approx(fwd, rel=1e-3)
    assert GeneralizedJSD(beta=1 - eps)(s, t).item() / eps == pytest.approx(rev, rel=1e-3)


def test_forward_kl_agrees_with_kd_soft():
    s, t = torch.randn(5, 7, dtype=torch.float64), torch.randn(5, 7, dtype=torch.float64)
    for std in (False, True):
        assert ForwardKL(temperature=3.0, standardize=std)(s, t).item() == pytest.approx(
            SoftTargetKD(temperature=3.0, standardize=std)(s, t).item(), rel=1e-10)


def test_sequence_logits_with_padding_mask():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 5, generator=g, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    p, q = np_softmax(t.numpy()), np_softmax(s.numpy())
    per_token = np_kl(p, q)                          # (2, 3)
    expected = (per_token[0, 0] + per_token[0, 1] + per_token[1, 0]) / 3
    assert ForwardKL()(s, t, mask=mask).item() == pytest.approx(expected, rel=1e-10)
    assert ForwardKL()(s, t).item() == pytest.approx(per_token.mean(), rel=1e-10)
    # padding positions may hold anything
    s2 = s.clone()
    s2[1, 2] = 1e3
    assert ForwardKL()(s2, t, mask=mask).item() == pytest.approx(expected, rel=1e-10)
    assert ForwardKL()(s, t, mask=torch.zeros(2, 3, dtype=torch.bool)).item() == 0.0


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "gjsd"])
def test_topk_equals_full_when_k_is_vocab(kind):
    g = torch.Generator().manual_seed(1)
    s = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    t = torch.randn(2, 3, 6, generator=g, dtype=torch.float64)
    values, indices = torch.topk(t, 6)
    full = divergence(kind, s, t, temperature=2.0, beta=0.4)
    sparse = divergence(kind, s, (values, indices), temperature=2.0, beta=0.4)
    assert sparse.item() == pytest.approx(full.item(), rel=1e-10)


def test_topk_forward_kl_numpy_convention():
    """Teacher renormalized over its top-k; student full-vocabulary log-probs gathered at the indices."""
    s, t, k, temp = S, T, 2, 2.0
    loss = 0.0
    for i in range(2):
        idx = np.argsort(-t[i])[:k]
        p = np_softmax(t[i, idx] / temp)
        log_q = np.log(np_softmax(s[i] / temp)[idx])
        loss += (p * (np.log(p) - log_q)).sum()
    expected = loss / 2 * temp * temp
    values, indices = torch.topk(t64(t), k)
    assert ForwardKL(temperature=temp)(t64(s), TopKLogits(values, indices)).item() == pytest.approx(expected)
    assert SoftTargetKD(temperature=temp)(t64(s), (values, indices)).item() == pytest.approx(expected)


@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "gjsd"])
def test_topk_divergences_nonnegative_and_zero_at_match(kind):
    g = torch.Generator().manual_seed(2)
    s = torch.randn(4, 10, generator=g, dtype=torch.float64)
    t = torch.randn(4, 10, generator=g, dtype=torch.float64)
    sparse = divergence(kind, s, torch.topk(t, 3))
    assert sparse.item() >= 0
    # a student that puts (almost) all its mass on the teacher's support, in the teacher's proportions
    v, i = torch.topk(t, 3)
    s_match = torch.full_like(s, -60.0).scatter(-1, i, v)
    assert divergence(kind, s_match, (v, i)).item() == pytest.approx(0.0, abs=1e-9)


def test_topk_refused_by_full_logit_losses():
    topk = torch.topk(t64(T), 2)
    with pytest.raises(EdgeKDError, match="'dkd' needs full teacher logits.*topk=None"):
        DecoupledKD()(t64(S), tuple(topk), torch.tensor(Y))
    with pytest.raises(EdgeKDError, match="'dist' needs full teacher logits"):
        DIST()(t64(S), tuple(topk))
    with pytest.raises(EdgeKDError, match="standardize: true"):
        SoftTargetKD(standardize=True)(t64(S), tuple(topk))
    with pytest.raises(EdgeKDError, match="standardize: true needs full teacher logits"):
        ReverseKL(standardize=True)(t64(S), tuple(topk))


def test_gradients_flow_to_student_only():
    s = t64(S).requires_grad_()
    t = t64(T).requires_grad_()
    for name in ("kd_soft", "dkd", "dist", "forward_kl", "reverse_kl", "gjsd"):
        s.grad = None
        loss = LOSSES.build(name)
        args = {"teacher_logits": t.detach(), "targets": torch.tensor(Y)}
        loss(s, **{k: args[k] for k in loss.requires}).backward()
        assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0, name


# --- validation -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name,kwargs,match", [
    ("kd_soft", {"temperature": 0}, r"temperature must be > 0, got 0"),
    ("kd_soft", {"temperature": "4"}, r"temperature must be a finite number \(> 0\), got '4'"),
    ("kd_soft", {"standardize": "yes"}, r"standardize must be true or false, got 'yes'"),
    ("ce", {"label_smoothing": 1.5}, r"label_smoothing must be >= 0.0 and <= 1.0, got 1.5"),
    ("dkd", {"alpha": -1}, r"alpha must be >= 0, got -1"),
    ("dkd", {"beta": float("nan")}, r"beta must be a finite number"),
    ("dist", {"tau": -2.0}, r"tau must be > 0, got -2.0"),
    ("gjsd", {"beta": 1.5}, r"beta must be >= 0.0 and <= 1.0, got 1.5"),
    ("forward_kl", {"temperature": -1}, r"temperature must be > 0"),
])
def test_bad_options_raise_value_error(name, kwargs, match):
    with pytest.raises(ValueError, match=match):
        LOSSES.build(name, **kwargs)


def test_unknown_loss_closest_match():
    with pytest.raises(EdgeKDError, match=r"unknown loss 'kd_sotf'; did you mean 'kd_soft'\? known: .*dkd"):
        LOSSES.get("kd_sotf")


def test_shape_and_target_errors():
    with pytest.raises(EdgeKDError, match=r"differ in shape"):
        SoftTargetKD()(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(EdgeKDError, match=r"targets must be integer class indices of shape \(2,\)"):
        DecoupledKD()(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2))
    with pytest.raises(EdgeKDError, match=r"mask shape \(3,\) must equal"):
        ForwardKL()(torch.zeros(2, 3), torch.zeros(2, 3), mask=torch.ones(3))
