"""Re-fitting the cpu-local calibration to this machine: per-part scales (compute, per-node dispatch, per-call cost),
the robust fit, the form chosen by leave-one-out, and the re-scaled node costs."""
from __future__ import annotations

import math

import pytest

from edgekd.errors import EdgeKDError
from edgekd.profile.predict.predictor import NODE_FEATURES, Calibration
from edgekd.profile.predict.refit import fit_parts


def test_fit_parts_recovers_an_exact_scale_and_overhead():
    predicted = [1e-5, 2e-5, 5e-5, 1e-4]
    measured = [2.0 * p + 8e-6 for p in predicted]
    (scale, overhead), loo, res = fit_parts([[p, 1.0] for p in predicted], measured)
    assert scale == pytest.approx(2.0, rel=1e-6)
    assert overhead == pytest.approx(8e-6, rel=1e-6)
    assert loo < 1e-6 and max(abs(r) for r in res) < 1e-6


def test_fit_parts_minimises_relative_error_by_hand():
    # Three points, model a*p (+ b >= 0) with equal predictions p = 1: measured = 2, 3, 2.5. Minimising
    # sum((a + b)/m_i - 1)^2 by hand: d/dc sum (c/m_i - 1)^2 = 0 gives c = a + b = sum(1/m_i) / sum(1/m_i^2).
    measured = [2.0, 3.0, 2.5]
    (scale, overhead), _, res = fit_parts([[1.0, 1.0]] * 3, measured)
    inv = [1 / m for m in measured]
    c_hand = sum(inv) / sum(v * v for v in inv)
    assert scale + overhead == pytest.approx(c_hand, rel=1e-6)
    assert res == pytest.approx([c_hand / m - 1 for m in measured], rel=1e-6)


def test_fit_parts_refuses_too_few_or_non_positive_times():
    with pytest.raises(EdgeKDError, match="more reference models"):
        fit_parts([[1e-5, 1.0], [2e-5, 1.0]], [1e-5, 2e-5])
    with pytest.raises(EdgeKDError, match="must be > 0"):
        fit_parts([[1e-5, 1.0], [2e-5, 1.0], [3e-5, 1.0]], [1e-5, 0.0, 3e-5])


def _calibration(node_costs):
    return Calibration(target="cpu-local", runtime="onnxruntime", precision="fp32", threads=1, multipliers={},
                       costs={}, uncertainty=0.1, node_costs=node_costs)


# --- per-part re-fit: compute, per-node dispatch and per-call cost, robust loss, form chosen by leave-one-out ---

def _parts(rows):
    return [{"compute": c, "dispatch": d, "call": k} for c, d, k in rows]


PARTS = _parts([(0.0, 0.3e-6, 4.3e-6), (2.1e-6, 2.9e-6, 4.3e-6), (60e-6, 1.6e-6, 4.3e-6), (1.4e-6, 3.5e-6, 4.3e-6),
                (425e-6, 5.8e-6, 4.3e-6), (0.1e-6, 10e-6, 4.3e-6), (14.5e-6, 4.0e-6, 4.3e-6), (3.2e-6, 0.9e-6, 4.3e-6)])


def test_choose_form_recovers_three_separate_part_scales():
    from edgekd.profile.predict.refit import choose_form

    measured = [1.6 * p["compute"] + 1.05 * p["dispatch"] + 1.7 * p["call"] for p in PARTS]
    fit = choose_form(PARTS, measured)
    assert fit["form"] == "compute+dispatch+call"
    assert fit["coefficients"] == pytest.approx({"compute": 1.6, "dispatch": 1.05, "call": 1.7}, rel=1e-4)
    assert fit["loo_mean_abs"] < 1e-4
    # one scale cannot follow parts that grew differently: its held-out error is larger
    assert fit["forms"]["scale"]["loo_mean_abs"] > 0.05


def test_choose_form_keeps_the_fewest_terms_when_one_scale_explains_the_references():
    from edgekd.profile.predict.refit import choose_form

    measured = [1.5 * sum(p.values()) for p in PARTS]
    fit = choose_form(PARTS, measured)
    assert fit["form"] == "scale"
    assert fit["coefficients"] == pytest.approx({"compute": 1.5, "dispatch": 1.5, "call": 1.5}, rel=1e-6)


def test_the_robust_fit_solves_the_soft_l1_stationarity_equation_and_resists_an_outlier():
    # Scale only, model a * p: six references 2x slower than predicted and one the stored model got wrong
    # (measured = predicted). Soft-L1 with scale f minimises sum 2 f^2 (sqrt(1 + (z_i/f)^2) - 1) with
    # z_i = a / r_i - 1 (r_i = measured/predicted); its derivative is sum (z_i / sqrt(1 + (z_i/f)^2)) / r_i = 0,
    # solved here by bisection. Plain least squares gives a = sum(1/r) / sum(1/r^2) (hand formula).
    from edgekd.profile.predict.refit import ROBUST_SCALE, fit_parts

    predicted = [1e-5, 2e-5, 3e-5, 5e-5, 8e-5, 1e-4, 4e-5]
    ratios = [2.0] * 6 + [1.0]
    measured = [p * r for p, r in zip(predicted, ratios)]
    f = ROBUST_SCALE

    def slope(a):
        return sum((a / r - 1) / math.sqrt(1 + ((a / r - 1) / f) ** 2) / r for r in ratios)

    lo, hi = 1.0, 3.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if slope(mid) < 0 else (lo, mid)
    (a_robust,), _, _ = fit_parts([[p] for p in predicted], measured, robust=f)
    assert a_robust == pytest.approx(lo, rel=1e-4)
    (a_plain,), _, _ = fit_parts([[p] for p in predicted], measured)
    a_hand = sum(1 / r for r in ratios) / sum(1 / r ** 2 for r in ratios)
    assert a_plain == pytest.approx(a_hand, rel=1e-6)
    assert abs(a_robust - 2.0) < 0.05 < abs(a_plain - 2.0)  # the outlier pulls plain least squares, not soft-L1


def test_leave_one_out_predicts_each_reference_from_the_others():
    from edgekd.profile.predict.refit import leave_one_out

    # scale only, squares: leaving out reference i, a = sum_{j != i}(1/r_j) / sum_{j != i}(1/r_j^2), error a/r_i - 1
    ratios = [2.0, 3.0, 2.5, 2.0]
    coef, res, loo = leave_one_out([[1.0]] * 4, ratios)
    for i, r in enumerate(ratios):
        rest = [q for j, q in enumerate(ratios) if j != i]
        a = sum(1 / q for q in rest) / sum(1 / q ** 2 for q in rest)
        assert loo[i] == pytest.approx(a / r - 1, rel=1e-6)
    a_all = sum(1 / q for q in ratios) / sum(1 / q ** 2 for q in ratios)
    assert coef == pytest.approx([a_all]) and res == pytest.approx([a_all / r - 1 for r in ratios], rel=1e-6)


def test_rescaled_parts_multiplies_each_cost_by_its_part_coefficient():
    from edgekd.profile.predict.predictor import NODE_DISPATCH
    from edgekd.profile.predict.refit import CALL_COSTS, rescaled_parts

    costs = {k: 1e-9 * (i + 1) for i, k in enumerate(NODE_FEATURES)}
    costs.update(l2_bytes=2.0 ** 19, l3_bytes=2.0 ** 24, sharpness=4.0)
    out = rescaled_parts(_calibration(costs), {"compute": 1.6, "dispatch": 1.05, "call": 1.7})
    for k in NODE_FEATURES:
        factor = 1.7 if k in CALL_COSTS else 1.05 if k in NODE_DISPATCH else 1.6
        assert math.isclose(out.node_costs[k], costs[k] * factor, rel_tol=1e-12), k
    assert out.node_costs["l2_bytes"] == 2.0 ** 19 and out.node_costs["sharpness"] == 4.0
    assert {"t0", "io_in_elems", "io_out_elems"} == set(CALL_COSTS)
    with pytest.raises(EdgeKDError, match="no coefficient for part"):
        rescaled_parts(_calibration(costs), {"compute": 1.0, "dispatch": 1.0})
    with pytest.raises(EdgeKDError, match="no ONNX Runtime node model"):
        rescaled_parts(_calibration({}), {"compute": 1.0, "dispatch": 1.0, "call": 1.0})


def test_split_parts_add_up_and_the_rescaled_prediction_is_the_weighted_sum(tmp_path):
    import torch

    from edgekd.profile.predict import load_calibration, predict
    from edgekd.profile.predict.calibrate import export_model
    from edgekd.profile.predict.refit import rescaled_parts, split_parts, tiny_networks

    calib = load_calibration("cpu-local", "onnxruntime", "fp32")
    name, build, shape = tiny_networks((1, 1, 8, 8))[0]
    assert name == "net_strided_w6_d2@8x8" and shape == (1, 1, 8, 8)
    torch.manual_seed(0)
    path = export_model(build(), shape, tmp_path / "m.onnx")
    parts = split_parts(path, calib)
    assert all(v > 0 for v in parts.values())
    stored = predict(path, "cpu-local", threads=1, calibration=calib).ms
    assert sum(parts.values()) * 1e3 == pytest.approx(stored, rel=1e-9)
    coef = {"compute": 1.6, "dispatch": 1.05, "call": 1.7}
    refit = predict(path, "cpu-local", threads=1, calibration=rescaled_parts(calib, coef)).ms
    assert refit == pytest.approx(sum(parts[k] * coef[k] for k in coef) * 1e3, rel=1e-9)


def test_tiny_networks_keep_their_names_at_28x28_and_run_at_another_shape():
    import torch

    from edgekd.profile.predict.refit import REFERENCE_MODELS, tiny_networks

    at28 = tiny_networks()
    assert all(n in REFERENCE_MODELS for n, _, _ in at28)
    for name, build, shape in tiny_networks((1, 3, 8, 8)):
        assert name.endswith("@8x8c3") and shape == (1, 3, 8, 8)
        assert build().eval()(torch.zeros(shape)).shape == (1, 10)


def test_tiny_shapes_always_add_the_small_input_and_the_candidates_own_shape():
    from edgekd.profile.predict.refit import tiny_shapes

    # 1x28x28 tiny networks are already among REFERENCE_MODELS: only 8x8 joins
    assert tiny_shapes((1, 1, 28, 28)) == [(1, 1, 8, 8)]
    assert tiny_shapes() == [(1, 1, 8, 8)]
    assert tiny_shapes((1, 1, 8, 8)) == [(1, 1, 8, 8)]
    # the small input takes the candidates' channels; the candidates' shape joins with batch 1
    assert tiny_shapes((4, 3, 32, 32)) == [(1, 3, 8, 8), (1, 3, 32, 32)]
    assert tiny_shapes((1, 1, 16, 16)) == [(1, 1, 8, 8), (1, 1, 16, 16)]
    assert tiny_shapes((1, 64)) == [(1, 1, 8, 8)]


def test_dispatch_heavy_references_let_leave_one_out_separate_dispatch_from_compute():
    """Hand-built references, measured = 1.6 compute + 1.1 dispatch + 1.6 call exactly, except one whose compute
    the stored model over-states 2x (as the 5x-expansion net): with compute-heavy references alone the dispatch
    column is nearly proportional to the rest and one scale is kept; with dispatch-heavy ones added the three
    parts are chosen and the dispatch scale is recovered."""
    from edgekd.profile.predict.refit import choose_form

    def ref(c, d, k, compute_error=1.0):
        return {"compute": c * compute_error, "dispatch": d, "call": k}, 1.6 * c + 1.1 * d + 1.6 * k

    heavy = [ref(60, 2, 4), ref(40, 4, 4), ref(80, 5, 4), ref(20, 5, 4), ref(10, 2, 4), ref(100, 10, 4, 2.0)]
    small = [ref(1, 4, 4), ref(2, 5, 4), ref(0.5, 3, 4), ref(3, 6, 4)]
    parts, measured = zip(*heavy)
    assert choose_form(list(parts), list(measured))["form"] == "scale"
    parts, measured = zip(*(heavy + small))
    fit = choose_form(list(parts), list(measured))
    assert fit["form"] == "compute+dispatch+call"
    # the outlier still pulls a little (10 references): within 0.1 of the true scales, dispatch clearly apart
    for part, true in (("compute", 1.6), ("dispatch", 1.1), ("call", 1.6)):
        assert abs(fit["coefficients"][part] - true) < 0.1, (part, fit["coefficients"])
