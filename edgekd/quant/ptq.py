"""Post-training quantization through PT2E observers, and representative-set (calibration) recipes."""
from __future__ import annotations

import os
from dataclasses import dataclass, fields
from typing import Iterable

import torch
from torch import nn

from edgekd.errors import ConfigError, EdgeKDError
from edgekd.quant.capture import capture, conversion_error
from edgekd.quant.quantizer import (avg_pools_as_depthwise_conv, build_quantizer, pt2e_patches,
                                    snap_bias_to_int32_grid, snap_weights_to_grid)
from edgekd.quant.schemes import Scheme, get_scheme
from edgekd.registry import Registry
from edgekd.resources import locate

CALIBRATION_METHODS: Registry = Registry("calibration method")


def _percentile_observer(percentile: float):
    from torchao.quantization.pt2e import MinMaxObserver

    class PercentileObserver(MinMaxObserver):
        """Range = running mean over batches of the (100-p, p) percentiles: clips rare outliers that min-max keeps."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.percentile = percentile
            self.batches = 0

        def forward(self, x_orig):
            if x_orig.numel() == 0:
                return x_orig
            x = x_orig.detach().float().flatten()
            if x.numel() > 1_000_000:  # quantile's input limit and speed: a fixed-stride subsample
                x = x[:: x.numel() // 1_000_000 + 1]
            q = torch.tensor([1 - percentile / 100, percentile / 100])
            lo, hi = torch.quantile(x, q)
            n = self.batches
            if n == 0:
                self.min_val.copy_(lo)
                self.max_val.copy_(hi)
            else:
                self.min_val.copy_((self.min_val * n + lo) / (n + 1))
                self.max_val.copy_((self.max_val * n + hi) / (n + 1))
            self.batches = n + 1
            return x_orig

    return PercentileObserver


def _mse_observer(samples: int = 65536, grid: int = 64):
    from torchao.quantization.pt2e import MinMaxObserver

    class MSEObserver(MinMaxObserver):
        """Range = the shrink of the min-max range (grid search) with the least quantization MSE on a sample.

        Keeps a fixed-size random sample of the activations seen; the full range is one of the candidates, so its
        error is never above min-max's on that sample.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.sample = torch.empty(0)
            self.searched = False

        def forward(self, x_orig):
            if x_orig.numel() == 0:
                return x_orig
            super().forward(x_orig)
            x = x_orig.detach().float().flatten()
            keep = max(1, samples // 8)
            if x.numel() > keep:
                x = x[torch.randperm(x.numel(), generator=torch.Generator().manual_seed(x.numel()))[:keep]]
            self.sample = torch.cat([self.sample, x])[-samples:]
            self.searched = False
            return x_orig

        def quantization_mse(self, lo: float, hi: float) -> float:
            scale, zp = self._calculate_qparams(torch.tensor(lo), torch.tensor(hi))
            q = torch.clamp(torch.round(self.sample / scale) + zp, self.quant_min, self.quant_max)
            return float(((q - zp) * scale - self.sample).pow(2).mean())

        def calculate_qparams(self):
            if not self.searched and self.sample.numel():
                lo, hi = float(self.min_val), float(self.max_val)
                best = min((self.quantization_mse(lo * a, hi * a), a) for a in torch.linspace(0.05, 1.0, grid).tolist())
                self.min_val.fill_(lo * best[1])
                self.max_val.fill_(hi * best[1])
                self.searched = True
            return super().calculate_qparams()

    return MSEObserver


@CALIBRATION_METHODS.register("mse")
def _mse(**_):
    return _mse_observer()


@CALIBRATION_METHODS.register("minmax")
def _minmax(**_):
    from torchao.quantization.pt2e import MinMaxObserver

    return MinMaxObserver


@CALIBRATION_METHODS.register("percentile")
def _percentile(percentile: float = 99.99, **_):
    if not 50.0 < percentile <= 100.0:
        raise ValueError(f"percentile must be in (50, 100], got {percentile}")
    return _percentile_observer(percentile)


@CALIBRATION_METHODS.register("histogram")
def _histogram(**_):
    """torchao's HistogramObserver: an L2-error range search over a histogram (conservative at 8 bits)."""
    from torchao.quantization.pt2e import HistogramObserver

    return HistogramObserver


def quantize_ptq(model: nn.Module, example_inputs, scheme: Scheme | str,
                 calibration_batches: Iterable[torch.Tensor], method: str = "minmax", *,
                 percentile: float = 99.99, keep_float: Iterable[str] = ()) -> torch.fx.GraphModule:
    """Calibrate `model` on `calibration_batches` (float NCHW tensors) and return its int8 Q/DQ simulation.

    BatchNorm is folded into the preceding conv by PT2E; weights use per-channel min-max, activations `method`
    ("minmax"; "percentile" (uses `percentile`); "mse": grid search of the clip range with the least
    quantization MSE on a sample; "histogram": torchao's HistogramObserver, an L2 search that at 8 bits rarely
    clips).
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    scheme = get_scheme(scheme)
    observer = CALIBRATION_METHODS.get(method)(percentile=percentile)
    gm = capture(model, example_inputs, train=False)
    avg_pools_as_depthwise_conv(gm)
    quantizer = build_quantizer(scheme, is_qat=False, activation_observer=observer, keep_float=keep_float)
    try:
        with pt2e_patches():
            prepared = prepare_pt2e(gm, quantizer)
    except Exception as e:
        raise conversion_error(e, gm, f"PTQ prepare ({scheme.name})") from e
    n = 0
    with torch.no_grad():
        for batch in calibration_batches:
            if isinstance(batch, (tuple, list)):
                batch = batch[0]
            prepared(batch.float())
            n += 1
    if n == 0:
        raise EdgeKDError("quantize_ptq got no calibration batches; pass at least one (e.g. select_calibration(...))")
    try:
        with pt2e_patches():
            converted = convert_pt2e(prepared, fold_quantize=False)
    except Exception as e:
        raise conversion_error(e, gm, f"PTQ convert ({scheme.name})") from e
    for m in converted.modules():  # eval semantics; exporters warn about modules flagged as training
        m.training = False
    snap_weights_to_grid(converted)
    snap_bias_to_int32_grid(converted)
    converted.meta.update({k: v for k, v in gm.meta.items() if k.startswith("edgekd_")})
    converted.meta["edgekd_scheme"] = scheme.to_dict()
    converted.meta["edgekd_method"] = f"ptq_{method}"
    return converted


@dataclass(frozen=True)
class CalibrationRecipe:
    """Representative set for PTQ: how many training samples, class-balanced or not, which seed."""

    size: int = 512
    balanced: bool = True
    seed: int = 0
    batch_size: int = 64
    split: str = "train"

    def __post_init__(self) -> None:
        problems = []
        if not isinstance(self.size, int) or self.size < 1:
            problems.append(f"size must be an int >= 1, got {self.size!r}")
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            problems.append(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not isinstance(self.seed, int):
            problems.append(f"seed must be an int, got {self.seed!r}")
        if not isinstance(self.balanced, bool):
            problems.append(f"balanced must be true or false, got {self.balanced!r}")
        if self.split not in ("train", "val"):
            problems.append(f"split must be 'train' or 'val' (never the test set), got {self.split!r}")
        if problems:
            raise ConfigError(problems, source="calibration recipe")


def load_calibration_recipe(path: str | os.PathLike) -> CalibrationRecipe:
    """Read a calibration/*.yaml recipe; unknown keys and bad values are reported all at once."""
    import yaml

    path = locate(path)  # the shipped calibration/*.yaml from any working directory
    if not path.is_file():
        raise EdgeKDError(f"calibration recipe not found: {path}")
    data = yaml.safe_load(path.read_text()) or {}
    if not isinstance(data, dict):
        raise ConfigError([f"expected a mapping, got {type(data).__name__}"], source=str(path))
    known = {f.name for f in fields(CalibrationRecipe)}
    unknown = sorted(set(data) - known - {"name", "description"})
    if unknown:
        raise ConfigError([f"unknown key {k!r}; known: {sorted(known)}" for k in unknown], source=str(path))
    try:
        return CalibrationRecipe(**{k: v for k, v in data.items() if k in known})
    except ConfigError as e:
        raise ConfigError(e.problems, source=str(path)) from None


def calibration_indices(y: torch.Tensor, recipe: CalibrationRecipe) -> torch.Tensor:
    """Indices of the representative set: per-class quotas (remainder to the rarest-first classes), seeded."""
    y = torch.as_tensor(y).flatten()
    n = y.numel()
    g = torch.Generator().manual_seed(recipe.seed)
    if recipe.size >= n:
        return torch.arange(n)
    if not recipe.balanced:
        return torch.randperm(n, generator=g)[: recipe.size].sort().values
    classes = y.unique().tolist()
    pools = {c: (y == c).nonzero().flatten() for c in classes}
    pools = {c: p[torch.randperm(p.numel(), generator=g)] for c, p in pools.items()}
    quota = {c: 0 for c in classes}
    left = recipe.size
    while left > 0:  # round-robin fill: equal shares, classes that run out give their share to the others
        open_classes = [c for c in classes if quota[c] < pools[c].numel()]
        share = max(1, left // len(open_classes))
        for c in open_classes:
            take = min(share, pools[c].numel() - quota[c], left)
            quota[c] += take
            left -= take
            if left == 0:
                break
    return torch.cat([pools[c][: quota[c]] for c in classes]).sort().values


def select_calibration(x: torch.Tensor, y: torch.Tensor, recipe: CalibrationRecipe) -> torch.Tensor:
    """The class-balanced representative sample of `x` (labels `y`) that `recipe` describes."""
    if len(x) != len(y):
        raise EdgeKDError(f"x has {len(x)} rows but y has {len(y)}; pass matching images and labels")
    return x[calibration_indices(y, recipe)]


def calibration_batches(x: torch.Tensor, batch_size: int = 64) -> list[torch.Tensor]:
    """Split a representative sample into batches for quantize_ptq."""
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]
