"""PTQ: calibration methods differ as they should, representative-set recipes, validation."""
from pathlib import Path

import pytest
import torch

from edgekd.errors import ConfigError, EdgeKDError
from edgekd.quant.ptq import (CALIBRATION_METHODS, CalibrationRecipe, calibration_batches, calibration_indices,
                              load_calibration_recipe, quantize_ptq, select_calibration)
from quant_fixtures import TinyNet, separable_task, train_briefly

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")
torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[1]


def _observer(method, data, **kw):
    obs = CALIBRATION_METHODS.get(method)(**kw)(dtype=torch.int8, quant_min=-128, quant_max=127)
    for batch in data:
        obs(batch)
    return obs


def _observer_range(method, data, **kw):
    scale, _ = _observer(method, data, **kw).calculate_qparams()
    return float(scale)


def _quant_mse(scale, zp, x):
    q = torch.clamp(torch.round(x / scale) + zp, -128, 127)
    return float(((q - zp) * scale - x).pow(2).mean())


def test_percentile_and_histogram_clip_outliers_that_minmax_keeps():
    g = torch.Generator().manual_seed(0)
    data = [torch.randn(4096, generator=g) for _ in range(4)]
    data[1][7] = 80.0  # one outlier
    s_minmax = _observer_range("minmax", data)
    s_pct = _observer_range("percentile", data, percentile=99.9)
    assert s_minmax == pytest.approx((80.0 - float(min(d.min() for d in data))) / 255, rel=1e-4)
    assert s_pct < s_minmax / 4
    # MSE search: never worse than min-max on the data it saw (at 8 bits it rarely clips: far outliers cost more
    # squared error clipped than the rounding noise they cause).
    tail = [torch.tan(torch.pi * (torch.rand(4096, generator=g) - 0.5)) for _ in range(4)]  # Cauchy
    for d in (data, tail):
        mse, minmax = _observer("mse", d), _observer("minmax", d)
        x = torch.cat(d)
        assert _quant_mse(*mse.calculate_qparams(), x) <= _quant_mse(*minmax.calculate_qparams(), x) * 1.001
        assert float(mse.max_val) <= float(minmax.max_val)
    assert _observer_range("histogram", data) <= s_minmax
    # Percentile at 100 is min-max of each batch, averaged over batches: never wider than global min-max.
    assert _observer_range("percentile", data, percentile=100.0) <= s_minmax
    with pytest.raises(ValueError, match=r"percentile must be in \(50, 100\], got 20"):
        CALIBRATION_METHODS.get("percentile")(percentile=20)
    with pytest.raises(EdgeKDError, match="unknown calibration method 'minmx'; did you mean 'minmax'"):
        CALIBRATION_METHODS.get("minmx")


def test_quantize_ptq_methods_keep_accuracy_and_scheme_ranges():
    x, y = separable_task(512, size=8)
    xt, yt = separable_task(512, size=8, seed=1)
    torch.manual_seed(0)
    model = train_briefly(TinyNet(), x, y, steps=100)
    with torch.no_grad():
        fp32 = (model(xt).argmax(1) == yt).float().mean().item()
    assert fp32 > 0.85
    for method in ("minmax", "percentile", "mse", "histogram"):
        q = quantize_ptq(model, x[:1], "ort_x86_novnni", calibration_batches(x[:128], 64), method)
        assert q.meta["edgekd_method"] == f"ptq_{method}"
        with torch.no_grad():
            acc = (q(xt).argmax(1) == yt).float().mean().item()
        assert acc >= fp32 - 0.03, method
        w = [n for n in q.graph.nodes if str(n.target).startswith("quantized_decomposed.quantize_per_channel")]
        assert len(w) == 4 and all(n.args[4:6] == (-64, 63) for n in w)
        assert not any("batch_norm" in str(n.target) for n in q.graph.nodes)
    with pytest.raises(EdgeKDError, match="got no calibration batches"):
        quantize_ptq(model, x[:1], "litert_int8", [], "minmax")


def test_calibration_selection_is_balanced_seeded_and_validated(tmp_path):
    y = torch.tensor([0] * 50 + [1] * 30 + [2] * 5)
    recipe = CalibrationRecipe(size=30, balanced=True, seed=0)
    idx = calibration_indices(y, recipe)
    counts = torch.bincount(y[idx], minlength=3).tolist()
    assert len(idx) == 30 and counts[2] == 5 and abs(counts[0] - counts[1]) <= 1  # rare class gives its share
    assert torch.equal(idx, calibration_indices(y, recipe))
    assert not torch.equal(idx, calibration_indices(y, CalibrationRecipe(size=30, seed=1)))
    x = torch.arange(len(y)).float()
    assert torch.equal(select_calibration(x, y, recipe), x[idx])
    assert len(calibration_indices(y, CalibrationRecipe(size=1000))) == len(y)
    default = load_calibration_recipe(REPO / "calibration" / "default.yaml")
    assert default == CalibrationRecipe(size=512, balanced=True, seed=0, batch_size=64, split="train")
    bad = tmp_path / "bad.yaml"
    bad.write_text("size: 0\nsplit: test\nsed: 1\n")
    with pytest.raises(ConfigError, match="unknown key 'sed'"):
        load_calibration_recipe(bad)
    bad.write_text("size: 0\nsplit: test\n")
    with pytest.raises(ConfigError, match=r"(?s)size must be an int >= 1, got 0.*split must be 'train' or 'val'"):
        load_calibration_recipe(bad)
    with pytest.raises(EdgeKDError, match="x has 3 rows but y has 85"):
        select_calibration(x[:3], y, recipe)
