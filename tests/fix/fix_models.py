"""Small PyTorch models with planted dead units for the fix tests (deterministic weights).

A unit is planted dead by a bias of -100 on its pre-activation (the BatchNorm's beta, or the
layer's own bias): with weights of order 1/sqrt(fan_in) and standard-normal inputs it never
fires. ``dead_units`` finds the dead units of any site independently of reludoctor (forward hooks
on the pre-activation), so tests never trust the planting alone.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

DEAD_BIAS = -100.0


def _init(module: nn.Module, seed: int) -> nn.Module:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.1 * torch.randn(param.shape, generator=gen))
            elif param.ndim == 1:
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=gen))
            else:
                param.copy_(torch.randn(param.shape, generator=gen) / param[0].numel() ** 0.5)
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.running_mean.copy_(0.1 * torch.randn(sub.running_mean.shape, generator=gen))
                sub.running_var.copy_(0.5 + torch.rand(sub.running_var.shape, generator=gen))
    return module.eval()


class PlantedCNN(nn.Module):
    """conv1(3->8)+bn1+relu (site ``act1``, dead 1, 5) -> conv2(8->6)+F.relu (site ``relu()``,
    dead 2) -> avgpool 2x2 -> flatten -> fc(24->5)."""

    DEAD = {"act1": (1, 5), "relu()": (2,)}

    def __init__(self, seed: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv2d(8, 6, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 5)
        _init(self, seed)
        with torch.no_grad():
            self.bn1.bias[list(self.DEAD["act1"])] = DEAD_BIAS
            self.conv2.bias[list(self.DEAD["relu()"])] = DEAD_BIAS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = F.relu(self.conv2(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class PlantedMLP(nn.Module):
    """fc1(10->16)+ReLU (``layers.1``, dead 0, 3, 7) -> fc2(16->12)+ReLU (``layers.3``, dead 5)
    -> fc3(12->4)."""

    DEAD = {"layers.1": (0, 3, 7), "layers.3": (5,)}

    def __init__(self, seed: int = 2):
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(),
                                    nn.Linear(12, 4))
        _init(self, seed)
        with torch.no_grad():
            self.layers[0].bias[list(self.DEAD["layers.1"])] = DEAD_BIAS
            self.layers[2].bias[list(self.DEAD["layers.3"])] = DEAD_BIAS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class PlantedResidual(nn.Module):
    """stem conv+bn+ReLU (``stem_act``, dead 0: coupled with the block's residual sum) ->
    block: conv_a+bn_a+ReLU (``act_a``, dead 2, 4: prunable) -> conv_b+bn_b, ``relu(x + y)``
    (``relu()``: a residual sum, no simple producer) -> mean over H, W -> fc(8->3)."""

    DEAD = {"stem_act": (0,), "act_a": (2, 4)}

    def __init__(self, seed: int = 3):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(8)
        self.stem_act = nn.ReLU()
        self.conv_a = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(8)
        self.act_a = nn.ReLU()
        self.conv_b = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 3)
        _init(self, seed)
        with torch.no_grad():
            self.stem_bn.bias[list(self.DEAD["stem_act"])] = DEAD_BIAS
            self.bn_a.bias[list(self.DEAD["act_a"])] = DEAD_BIAS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_bn(self.stem(x)))
        y = self.bn_b(self.conv_b(self.act_a(self.bn_a(self.conv_a(x)))))
        x = F.relu(x + y)
        return self.fc(x.mean((2, 3)))


class WithReLU6(nn.Module):
    """fc1(6->8)+ReLU (``act``) -> fc2(8->8)+ReLU6 (``act6``) -> fc3(8->3)."""

    def __init__(self, seed: int = 4):
        super().__init__()
        self.fc1, self.act = nn.Linear(6, 8), nn.ReLU()
        self.fc2, self.act6 = nn.Linear(8, 8), nn.ReLU6()
        self.fc3 = nn.Linear(8, 3)
        _init(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(self.act6(self.fc2(self.act(self.fc1(x)))))


def dead_units(module: nn.Module, layer: nn.Module, x: torch.Tensor, axis: int = 1) -> list[int]:
    """Units whose value at ``layer``'s output (a pre-activation) is never > 0 on ``x``."""
    seen = []
    handle = layer.register_forward_hook(lambda _m, _i, out: seen.append(out.detach().clone()))
    try:
        with torch.no_grad():
            module(x)
    finally:
        handle.remove()
    pre = seen[0].movedim(axis, 0).reshape(seen[0].shape[axis], -1)
    return [int(u) for u in torch.nonzero(pre.amax(1) <= 0).flatten()]


# ----------------------------------------------------------------------------- data and checks


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def images(samples: int = 48, channels: int = 3, size: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((samples, channels, size, size)).astype(np.float32)


def vectors(samples: int = 64, features: int = 10, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((samples, features)).astype(np.float32)


def assert_one_line_error(result, code: int = 2, contains: str | None = None) -> str:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reludoctor: error:"), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    if contains is not None:
        assert contains in lines[0], lines[0]
    return lines[0]
