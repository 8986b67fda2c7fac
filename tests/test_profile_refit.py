"""Re-fitting the cpu-local calibration to this machine: the two-number fit and the re-scaled node costs."""
from __future__ import annotations

import math

import pytest

from edgekd.errors import EdgeKDError
from edgekd.profile.predict.predictor import NODE_FEATURES, Calibration
from edgekd.profile.predict.refit import fit_scale_offset, rescaled


def test_fit_recovers_an_exact_scale_and_overhead():
    predicted = [1e-5, 2e-5, 5e-5, 1e-4]
    measured = [2.0 * p + 8e-6 for p in predicted]
    scale, overhead, loo, res = fit_scale_offset(predicted, measured)
    assert scale == pytest.approx(2.0, rel=1e-6)
    assert overhead == pytest.approx(8e-6, rel=1e-6)
    assert loo < 1e-6 and max(abs(r) for r in res) < 1e-6


def test_fit_minimises_relative_error_by_hand():
    # Three points, overhead forced to 0 by the data: measured = 2x, 3x, 2.5x the prediction and the model
    # a*p (+ b >= 0). Minimising sum((a p_i + b)/m_i - 1)^2 over a, b >= 0 by hand: with b = 0 the relative
    # residual of point i is a/r_i - 1 (r = m/p = 2, 3, 2.5); d/da sum (a/r_i - 1)^2 = 0 gives
    # a = sum(1/r_i) / sum(1/r_i^2).
    predicted = [1.0, 1.0, 1.0]  # equal predictions: b and a are not separable, so compare the fitted times
    measured = [2.0, 3.0, 2.5]
    scale, overhead, _, res = fit_scale_offset(predicted, measured)
    inv = [1 / 2.0, 1 / 3.0, 1 / 2.5]
    a_hand = sum(inv) / sum(v * v for v in inv)
    assert scale + overhead == pytest.approx(a_hand, rel=1e-6)
    assert res == pytest.approx([a_hand / m - 1 for m in measured], rel=1e-6)


def test_fit_refuses_too_few_or_non_positive_times():
    with pytest.raises(EdgeKDError, match=">= 3 reference models"):
        fit_scale_offset([1e-5, 2e-5], [1e-5, 2e-5])
    with pytest.raises(EdgeKDError, match="must be > 0"):
        fit_scale_offset([1e-5, 2e-5, 3e-5], [1e-5, 0.0, 3e-5])


def _calibration(node_costs):
    return Calibration(target="cpu-local", runtime="onnxruntime", precision="fp32", threads=1, multipliers={},
                       costs={}, uncertainty=0.1, node_costs=node_costs)


def test_rescaled_multiplies_every_node_cost_and_adds_the_overhead_to_the_call():
    costs = {k: 1e-9 * (i + 1) for i, k in enumerate(NODE_FEATURES)}
    costs.update(l2_bytes=2.0 ** 19, l3_bytes=2.0 ** 24, sharpness=4.0)
    out = rescaled(_calibration(costs), 1.5, 3e-6)
    for k in NODE_FEATURES:
        expect = costs[k] * 1.5 + (3e-6 if k == "t0" else 0.0)
        assert math.isclose(out.node_costs[k], expect, rel_tol=1e-12)
    assert out.node_costs["l2_bytes"] == 2.0 ** 19 and out.node_costs["sharpness"] == 4.0  # shapes unchanged


def test_rescaled_refuses_a_calibration_without_a_node_model():
    with pytest.raises(EdgeKDError, match="no ONNX Runtime node model"):
        rescaled(_calibration({}), 1.0, 0.0)


def test_fit_parts_recovers_separate_compute_and_fixed_scales_and_an_overhead():
    from edgekd.profile.predict.refit import fit_parts

    parts = [[1e-5, 4e-6], [5e-5, 5e-6], [2e-4, 8e-6], [8e-4, 1.2e-5], [3e-6, 3e-6]]
    measured = [2.0 * c + 1.5 * f + 2e-6 for c, f in parts]
    (a, b, o), loo, res = fit_parts([[c, f, 1.0] for c, f in parts], measured)
    assert (a, b, o) == pytest.approx((2.0, 1.5, 2e-6), rel=1e-5)
    assert loo < 1e-5


def test_rescaled_scales_dispatch_costs_by_their_own_factor():
    from edgekd.profile.predict.predictor import NODE_DISPATCH

    costs = {k: 1e-9 for k in NODE_FEATURES}
    costs.update(l2_bytes=2.0 ** 19, l3_bytes=2.0 ** 24, sharpness=4.0)
    out = rescaled(_calibration(costs), 2.0, 1e-6, dispatch_scale=1.25)
    for k in NODE_FEATURES:
        expect = 1e-9 * (1.25 if k in NODE_DISPATCH else 2.0) + (1e-6 if k == "t0" else 0.0)
        assert math.isclose(out.node_costs[k], expect, rel_tol=1e-12)


def test_the_split_prediction_adds_up_to_the_node_model_prediction(tmp_path):
    import torch
    from torch import nn

    from edgekd.profile.predict import load_calibration, predict
    from edgekd.profile.predict.calibrate import export_model
    from edgekd.profile.predict.refit import split_prediction

    calib = load_calibration("cpu-local", "onnxruntime", "fp32")
    torch.manual_seed(0)
    path = export_model(nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                      nn.Linear(8, 10)), (1, 1, 28, 28), tmp_path / "m.onnx")
    compute, fixed = split_prediction(path, calib)
    assert compute > 0 and fixed > 0
    assert (compute + fixed) * 1e3 == pytest.approx(predict(path, "cpu-local", threads=1, calibration=calib).ms,
                                                    rel=1e-9)
