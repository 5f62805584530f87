"""A zoo of tiny PyTorch models for tests, built in code with deterministic weights.

Every model here is small enough to scan in well under a second. Models whose weights are
*designed* (dead, always-on, dormant and one-sample "detector" units) say so in their
docstring; the others are seeded random initialisations.

Factories that a state_dict test can name with ``arch="tests.models:NAME"`` take keyword
arguments only and return a fresh model (the weights are then replaced by ``load_state_dict``).

Nothing here imports reludoctor: the models are inputs, not oracles.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# ---------------------------------------------------------------------------------------------
# Designed units (used by LinearAct and OneHotConv)
# ---------------------------------------------------------------------------------------------
DEAD_UNIT = 0  # bias -100: never fires (for every activation kind below)
ALWAYS_UNIT = 1  # bias +100: always fires, saturates every bounded activation
DORMANT_UNIT = 2  # zero weights, bias 1e-3: fires everywhere but its output is tiny
DETECTOR_UNIT = 3  # fires only where input feature 0 is hot (see detector_data)
HOT_VALUE = 20.0  # value of the hot feature; the detector's pre-activation is HOT_VALUE - 10


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def seeded_init_(module: nn.Module, seed: int) -> nn.Module:
    """Overwrite every parameter and BatchNorm buffer with seeded values (no global RNG)."""
    gen = _generator(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("bias"):
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
            elif param.ndim == 1:  # norm weights
                param.copy_(1.0 + 0.2 * torch.randn(param.shape, generator=gen))
            else:
                fan_in = param[0].numel()
                param.copy_(torch.randn(param.shape, generator=gen) / fan_in ** 0.5)
        for sub in module.modules():
            if isinstance(sub, nn.modules.batchnorm._BatchNorm):
                sub.running_mean.copy_(0.2 * torch.randn(sub.running_mean.shape, generator=gen))
                sub.running_var.copy_(0.5 + torch.rand(sub.running_var.shape, generator=gen))
    return module


def detector_data(samples: int = 37, features: int = 6, hot: int | None = None,
                  seed: int = 0) -> torch.Tensor:
    """Standard-normal inputs with feature 0 zero everywhere except HOT_VALUE at sample ``hot``
    (default: the last sample)."""
    x = torch.randn(samples, features, generator=_generator(seed))
    x[:, 0] = 0.0
    x[samples - 1 if hot is None else hot, 0] = HOT_VALUE
    return x


# ---------------------------------------------------------------------------------------------
# Every ReLU-family spelling
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ActivationKind:
    """One way to write a ReLU-family activation, and the site the scan should report."""

    module: Callable[[], nn.Module] | None  # an activation module (called as self.act)
    function: Callable[[torch.Tensor], torch.Tensor] | None  # or a functional call
    site: str  # expected site name when used at the root of LinearAct
    op: str
    lower: float
    upper: float | None
    inplace: bool


def _inplace_clamp(x: torch.Tensor) -> torch.Tensor:
    return x.clamp_(min=0)


ACTIVATIONS: dict[str, ActivationKind] = {
    "nn.ReLU": ActivationKind(nn.ReLU, None, "act", "relu", 0.0, None, False),
    "nn.ReLU(inplace)": ActivationKind(lambda: nn.ReLU(inplace=True), None, "act", "relu", 0.0, None, True),
    "F.relu": ActivationKind(None, F.relu, "relu()", "relu", 0.0, None, False),
    "F.relu(inplace)": ActivationKind(None, lambda x: F.relu(x, inplace=True), "relu()", "relu", 0.0, None, True),
    "torch.relu": ActivationKind(None, torch.relu, "relu()", "relu", 0.0, None, False),
    "torch.relu_": ActivationKind(None, torch.relu_, "relu()", "relu", 0.0, None, True),
    "Tensor.relu": ActivationKind(None, lambda x: x.relu(), "relu()", "relu", 0.0, None, False),
    "Tensor.relu_": ActivationKind(None, lambda x: x.relu_(), "relu()", "relu", 0.0, None, True),
    "nn.ReLU6": ActivationKind(nn.ReLU6, None, "act", "relu6", 0.0, 6.0, False),
    "nn.ReLU6(inplace)": ActivationKind(lambda: nn.ReLU6(inplace=True), None, "act", "relu6", 0.0, 6.0, True),
    "F.relu6": ActivationKind(None, F.relu6, "relu6()", "relu6", 0.0, 6.0, False),
    "F.relu6(inplace)": ActivationKind(None, lambda x: F.relu6(x, inplace=True), "relu6()", "relu6", 0.0, 6.0, True),
    "F.hardtanh": ActivationKind(None, F.hardtanh, "hardtanh()", "hardtanh", -1.0, 1.0, False),
    "F.hardtanh(inplace)": ActivationKind(None, lambda x: F.hardtanh(x, inplace=True), "hardtanh()", "hardtanh", -1.0, 1.0, True),
    "nn.Hardtanh(-2,3)": ActivationKind(lambda: nn.Hardtanh(-2.0, 3.0), None, "act", "hardtanh", -2.0, 3.0, False),
    "clamp(min=0)": ActivationKind(None, lambda x: x.clamp(min=0), "clamp()", "clamp", 0.0, None, False),
    "torch.clamp(min=0.0)": ActivationKind(None, lambda x: torch.clamp(x, min=0.0), "clamp()", "clamp", 0.0, None, False),
    "torch.clamp_min": ActivationKind(None, lambda x: torch.clamp_min(x, 0.0), "clamp()", "clamp", 0.0, None, False),
    "clamp_(min=0)": ActivationKind(None, _inplace_clamp, "clamp()", "clamp", 0.0, None, True),
    "clamp(0,6)": ActivationKind(None, lambda x: torch.clamp(x, 0.0, 6.0), "clamp()", "clamp", 0.0, 6.0, False),
    "nn.Threshold(0,0)": ActivationKind(lambda: nn.Threshold(0.0, 0.0), None, "act", "threshold", 0.0, None, False),
    "F.threshold(0,0)": ActivationKind(None, lambda x: F.threshold(x, 0.0, 0.0), "threshold()", "threshold", 0.0, None, False),
}


class LinearAct(nn.Module):
    """``act(fc(x))`` with designed units, for every spelling in ACTIVATIONS.

    fc: in_features -> units. Unit DEAD_UNIT has bias -100, ALWAYS_UNIT +100, DORMANT_UNIT
    zero weights and bias 1e-3, DETECTOR_UNIT computes ``x[:, 0] - 10`` (fires only on a hot
    sample of detector_data); the other units are seeded random with no weight on feature 0.
    """

    def __init__(self, kind: str = "nn.ReLU", in_features: int = 6, units: int = 8, seed: int = 0):
        super().__init__()
        spec = ACTIVATIONS[kind]
        self.kind = kind
        self.fc = nn.Linear(in_features, units)
        if spec.module is not None:
            self.act = spec.module()
        self._function = spec.function
        gen = _generator(seed)
        with torch.no_grad():
            weight = torch.randn(units, in_features, generator=gen) * 0.7
            bias = torch.randn(units, generator=gen) * 0.2
            weight[:, 0] = 0.0
            weight[DEAD_UNIT] *= 0.1
            bias[DEAD_UNIT] = -100.0
            weight[ALWAYS_UNIT] *= 0.1
            bias[ALWAYS_UNIT] = 100.0
            weight[DORMANT_UNIT] = 0.0
            bias[DORMANT_UNIT] = 1e-3
            weight[DETECTOR_UNIT] = 0.0
            weight[DETECTOR_UNIT, 0] = 1.0
            bias[DETECTOR_UNIT] = -10.0
            self.fc.weight.copy_(weight)
            self.fc.bias.copy_(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self._function is not None:
            return self._function(h)
        return self.act(h)


# ---------------------------------------------------------------------------------------------
# Reuse and naming
# ---------------------------------------------------------------------------------------------
class ReusedReLU(nn.Module):
    """One nn.ReLU module called at two places: sites ``act#1`` (8 units) then ``act#2`` (5)."""

    def __init__(self, seed: int = 1):
        super().__init__()
        self.fc1 = nn.Linear(6, 8)
        self.fc2 = nn.Linear(8, 5)
        self.act = nn.ReLU()
        seeded_init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc2(self.act(self.fc1(x))))


class ReusedBlock(nn.Module):
    """A whole block (Linear + ReLU) called twice: sites ``block.1#1`` and ``block.1#2``."""

    def __init__(self, seed: int = 2):
        super().__init__()
        self.block = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
        seeded_init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(self.block(x))


class _FunctionalSub(nn.Module):
    def __init__(self, features: int):
        super().__init__()
        self.fc = nn.Linear(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc(x))


class TwoFunctional(nn.Module):
    """F.relu inside two distinct submodules: sites ``a.relu()`` and ``b.relu()`` (no suffix)."""

    def __init__(self, seed: int = 3):
        super().__init__()
        self.a = _FunctionalSub(6)
        self.b = _FunctionalSub(6)
        seeded_init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


class _SubWithActivation(nn.Module):
    def __init__(self, act: nn.Module):
        super().__init__()
        self.fc = nn.Linear(6, 6)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


class SharedActivation(nn.Module):
    """One nn.ReLU instance registered in two submodules (``a.act`` is ``b.act``), each calling
    it once: two sites, both made by the same module object."""

    def __init__(self, seed: int = 12):
        super().__init__()
        act = nn.ReLU()
        self.a = _SubWithActivation(act)
        self.b = _SubWithActivation(act)
        seeded_init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(self.a(x))


# ---------------------------------------------------------------------------------------------
# Unit layouts
# ---------------------------------------------------------------------------------------------
class ConvNet2d(nn.Module):
    """Conv2d(3 -> 4, 3x3, padding 1) -> nn.ReLU: one site, [N, 4, H, W], units on axis 1."""

    def __init__(self, seed: int = 4):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        seeded_init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


class SeqLinear(nn.Module):
    """Linear(5 -> 6) on [N, T, 5] -> nn.ReLU: one site, [N, T, 6], units on the last axis."""

    def __init__(self, seed: int = 5):
        super().__init__()
        self.fc = nn.Linear(5, 6)
        self.act = nn.ReLU()
        seeded_init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


CONV1D_VARIANTS = ("plain", "bn", "residual_left", "residual_right")


class Conv1dNet(nn.Module):
    """Conv1d(3 -> 3, k=3, padding 1) then F.relu of: the conv ("plain"), BatchNorm1d of it
    ("bn"), ``conv(x) + x`` ("residual_left") or ``x + conv(x)`` ("residual_right").
    One site ``relu()``, [N, 3, L], units on axis 1 (the channels) in every variant."""

    def __init__(self, variant: str = "plain", seed: int = 6):
        super().__init__()
        if variant not in CONV1D_VARIANTS:
            raise ValueError(variant)
        self.variant = variant
        self.conv = nn.Conv1d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm1d(3)
        seeded_init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.variant == "bn":
            y = self.bn(y)
        elif self.variant == "residual_left":
            y = y + x
        elif self.variant == "residual_right":
            y = x + y
        return F.relu(y)


class TokenSeq(nn.Module):
    """Token ids [N, T] (int64) -> Embedding(10, 6) -> Linear(6 -> 8) -> nn.ReLU: one site
    ``act``, [N, T, 8], units on the last axis (an OPT-style feed-forward layer)."""

    def __init__(self, seed: int = 13):
        super().__init__()
        self.emb = nn.Embedding(10, 6)
        self.fc = nn.Linear(6, 8)
        self.act = nn.ReLU()
        seeded_init_(self, seed)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(self.emb(ids)))


class TwoInputs(nn.Module):
    """forward(a [N, 4], b [N, 3]) -> F.relu(fc_a(a) + fc_b(b)): one site ``relu()`` [N, 5]."""

    def __init__(self, seed: int = 14):
        super().__init__()
        self.fc_a = nn.Linear(4, 5)
        self.fc_b = nn.Linear(3, 5)
        seeded_init_(self, seed)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.relu(self.fc_a(a) + self.fc_b(b))


class ConvAndLinear(nn.Module):
    """A conv site ``act1`` [N, 4, H, W] and a linear site ``act2`` [N, 5] (for --unit-axis)."""

    def __init__(self, seed: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.act1 = nn.ReLU()
        self.fc = nn.Linear(4, 5)
        self.act2 = nn.ReLU()
        seeded_init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.conv(x))
        return self.act2(self.fc(h.mean((2, 3))))


class OneHotConv(nn.Module):
    """Conv2d(2 -> 3, 1x1) -> nn.ReLU. Channel 0 computes ``x[:, 0] - 10``: it fires only where
    input channel 0 is hot (see one_hot_images); channels 1 and 2 are seeded random and ignore
    input channel 0."""

    def __init__(self, seed: int = 8):
        super().__init__()
        self.conv = nn.Conv2d(2, 3, 1)
        self.act = nn.ReLU()
        seeded_init_(self, seed)
        with torch.no_grad():
            self.conv.weight[:, 0] = 0.0
            self.conv.weight[0] = 0.0
            self.conv.weight[0, 0] = 1.0
            self.conv.bias[0] = -10.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))


def one_hot_images(samples: int = 37, size: int = 3, hot: tuple[int, int, int] | None = None,
                   seed: int = 0) -> torch.Tensor:
    """[samples, 2, size, size] normal inputs; channel 0 is zero except HOT_VALUE at one
    (sample, row, col), by default the last sample's bottom-right pixel."""
    x = torch.randn(samples, 2, size, size, generator=_generator(seed))
    x[:, 0] = 0.0
    n, r, c = hot if hot is not None else (samples - 1, size - 1, size - 1)
    x[n, 0, r, c] = HOT_VALUE
    return x


# ---------------------------------------------------------------------------------------------
# A small CNN for the load-format, data-format, mutation and determinism tests
# ---------------------------------------------------------------------------------------------
class SmallConvNet(nn.Module):
    """conv1 -> bn1 -> act1 (nn.ReLU inplace) -> conv2 -> act2 (nn.ReLU6) -> mean(H, W)
    -> [dropout] -> fc1 -> F.relu -> fc2. Input [N, 3, H, W]. Sites, in order: ``act1``
    [N, channels, H, W], ``act2`` [N, channels, H, W] (bounded), ``relu()`` [N, hidden].
    ``dead`` channels of bn1 get bias -50 (dead at act1)."""

    def __init__(self, channels: int = 4, hidden: int = 6, classes: int = 3, dropout: float = 0.0,
                 seed: int = 9, dead: tuple[int, ...] = (0,)):
        super().__init__()
        self.conv1 = nn.Conv2d(3, channels, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(channels)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.act2 = nn.ReLU6()
        self.dropout = nn.Dropout(dropout)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, classes)
        seeded_init_(self, seed)
        with torch.no_grad():
            self.conv2.bias += 1.0  # keep ReLU6 busy (some saturation, fewer dead channels)
            for channel in dead:
                self.bn1.bias[channel] = -50.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act1(self.bn1(self.conv1(x)))
        h = self.act2(self.conv2(h) * 4.0)
        h = self.dropout(h.mean((2, 3)))
        return self.fc2(F.relu(self.fc1(h)))


def small_convnet(channels: int = 4, hidden: int = 6, classes: int = 3, dropout: float = 0.0,
                  seed: int = 9) -> SmallConvNet:
    """Factory for ``arch="tests.models:small_convnet"`` (keyword arguments = arch_kwargs)."""
    return SmallConvNet(channels=channels, hidden=hidden, classes=classes, dropout=dropout,
                        seed=seed)


def images(samples: int = 23, size: int = 5, seed: int = 0) -> torch.Tensor:
    """[samples, 3, size, size] standard-normal images."""
    return torch.randn(samples, 3, size, size, generator=_generator(seed))


# ---------------------------------------------------------------------------------------------
# Models the engine has to handle specially
# ---------------------------------------------------------------------------------------------
class DataDependent(nn.Module):
    """Branches on the batch mean (torch.export cannot capture it): ``act_a(fc_a(x))`` when
    the mean is positive, else ``act_b(fc_b(x))``. Sites ``act_a`` and ``act_b``."""

    def __init__(self, seed: int = 10):
        super().__init__()
        self.fc_a = nn.Linear(4, 5)
        self.fc_b = nn.Linear(4, 5)
        self.act_a = nn.ReLU()
        self.act_b = nn.ReLU()
        seeded_init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return self.act_a(self.fc_a(x))
        return self.act_b(self.fc_b(x))


class BranchingFunctional(nn.Module):
    """Like DataDependent, but both branches call F.relu at the root module, on different
    widths: ``F.relu(fc_a(x))`` (8 units) when the batch mean is positive, else
    ``F.relu(fc_b(x))`` (5 units). Two distinct call sites of the source code."""

    def __init__(self, seed: int = 15):
        super().__init__()
        self.fc_a = nn.Linear(4, 8)
        self.fc_b = nn.Linear(4, 5)
        seeded_init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.mean() > 0:
            return F.relu(self.fc_a(x)).sum(1)
        return F.relu(self.fc_b(x)).sum(1)


class InputInplace(nn.Module):
    """Rectifies its own input in place (``x.relu_()``), then fc -> nn.ReLU.
    Sites ``relu()`` (on the raw input, [N, 4]) and ``act`` ([N, 5])."""

    def __init__(self, seed: int = 11):
        super().__init__()
        self.fc = nn.Linear(4, 5)
        self.act = nn.ReLU()
        seeded_init_(self, seed)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x.relu_()
        return self.act(self.fc(x))
