"""Test fixtures: tiny models and a separable synthetic task for the quant/export/verify tests (no data files)."""
from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """conv-BN-ReLU, depthwise conv-BN-ReLU6, pointwise conv-BN, residual add, pool, linear: every op we export."""

    def __init__(self, num_classes: int = 4, in_channels: int = 1, width: int = 8):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width),
                                  nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(width, width, 3, padding=1, groups=width, bias=False),
                                   nn.BatchNorm2d(width), nn.ReLU6(),
                                   nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.stem(x)
        h = h + self.block(h)
        return self.head(torch.flatten(self.pool(h), 1))


class Erfinv(nn.Module):
    """An op neither ONNX (opset 18) nor TFLite builtins can express: the converters' error-path test layer."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.special.erfinv(torch.clamp(x, -0.5, 0.5))


class UnconvertibleNet(nn.Module):
    """conv -> erfinv ('gaussianize') -> mean: a model whose export must fail naming layer 'gaussianize'."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.gaussianize = Erfinv()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gaussianize(self.conv(x)).mean((2, 3))


def separable_task(n: int = 512, num_classes: int = 4, size: int = 12, seed: int = 0,
                   noise: float = 0.6) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (n, 1, size, size) whose class is the quadrant holding a bright blob, plus Gaussian noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, num_classes, (n,), generator=g)
    x = noise * torch.randn(n, 1, size, size, generator=g)
    h = size // 2
    for c in range(num_classes):
        r, col = divmod(c, 2)
        x[y == c, :, r * h:(r + 1) * h, col * h:(col + 1) * h] += 1.5
    return x, y


def train_briefly(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 60, lr: float = 0.05,
                  batch_size: int = 64, seed: int = 0) -> nn.Module:
    """A few SGD steps: enough for the separable task, cheap enough for unit tests."""
    torch.manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for step in range(steps):
        i = torch.randint(0, len(x), (batch_size,))
        loss = nn.functional.cross_entropy(model(x[i]), y[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
