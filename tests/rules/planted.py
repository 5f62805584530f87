"""Models with a planted cause of dead units, each meant to trigger one diagnosis.

Built in code with seeded weights; data is seeded standard normal (passed as an array, so the
scan does not flag it as synthetic). Nothing here imports reludoctor.
"""

from __future__ import annotations

import torch
import torch.nn as nn

SAMPLES = 400


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def normal_data(shape: tuple[int, ...], samples: int = SAMPLES, seed: int = 0) -> torch.Tensor:
    return torch.randn(samples, *shape, generator=gen(seed))


def he_init_(module: nn.Module, seed: int) -> nn.Module:
    """kaiming_normal_(fan_in, relu) for every Conv/Linear weight, zero biases (He et al. 2015)."""
    g = gen(seed)
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (nn.Linear, nn.Conv1d, nn.Conv2d)):
                fan_in = sub.weight[0].numel()
                sub.weight.copy_(torch.randn(sub.weight.shape, generator=g) * (2.0 / fan_in) ** 0.5)
                if sub.bias is not None:
                    sub.bias.zero_()
    return module


class NegativeBeta(nn.Module):
    """Conv -> BatchNorm -> ReLU -> mean -> Linear. BatchNorm beta of channels NEGATIVE_UNITS is
    -10, far below the others (0), while the conv's output reaches about +5 on its own."""

    NEGATIVE_UNITS = (1, 5)

    def __init__(self, seed: int = 0):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.head = nn.Linear(8, 4)
        he_init_(self, seed)
        with torch.no_grad():
            self.bn.bias[list(self.NEGATIVE_UNITS)] = -10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.bn(self.conv(x))).mean((2, 3)))


class CollapsedRows(nn.Module):
    """Linear(16 -> 32) -> ReLU -> Linear(32 -> 5), He init. Rows COLLAPSED of fc1.weight are
    scaled by 1e-5: units 3 and 7 (bias -0.05) are dead, unit 11 (bias +1e-3) is dormant."""

    COLLAPSED = (3, 7, 11)

    def __init__(self, seed: int = 1):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 5)
        he_init_(self, seed)
        with torch.no_grad():
            self.fc1.weight[list(self.COLLAPSED)] *= 1e-5
            self.fc1.bias[[3, 7]] = -0.05
            self.fc1.bias[11] = 1e-3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def deep_narrow(depth: int = 20, width: int = 8, seed: int = 2) -> nn.Sequential:
    """A deep, narrow, plain MLP at PyTorch's default initialisation (not He's): the signal and
    the gradient shrink layer by layer and the biases take over."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    layers.append(nn.Linear(width, 4))
    return nn.Sequential(*layers).eval()


def healthy(seed: int = 4) -> nn.Sequential:
    """A He-initialised MLP 32 -> 64 -> 64 -> 64 -> 10 with zero biases."""
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
    return he_init_(model, seed).eval()
