"""Small models for the certification tests, with hand-set weights where a test needs a unit
that is provably dead, or dead on the data but alive elsewhere in the box."""

from __future__ import annotations

import torch
import torch.nn as nn


class TwoUnits(nn.Module):
    """Linear(4 -> 3) then ReLU on inputs in [0, 1]^4:
    unit 0: weights all -1, bias -0.5: pre-activation <= -0.5 on the whole box (certified);
    unit 1: weights (1, 0, 0, 0), bias -0.5: fires only where x0 > 0.5, and the calibration data
    keeps x0 <= 0.4 (dead on the data, alive in the box);
    unit 2: weights all +1, bias 0: fires on the data."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[-1.0] * 4, [1.0, 0, 0, 0], [1.0] * 4]))
            self.fc.bias.copy_(torch.tensor([-0.5, -0.5, 0.0]))
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc(x))


def calibration_for_two_units(samples: int = 64) -> torch.Tensor:
    """Inputs in [0, 1]^4 with feature 0 in [0, 0.4]: unit 1 never fires on them."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(samples, 4, generator=gen)
    x[:, 0] *= 0.4
    return x


class SmallCNN(nn.Module):
    """Conv-BN-ReLU, max pool, a residual block (conv-BN-ReLU-conv-BN + skip, ReLU), average
    pool, a linear layer with hardtanh, and a ReLU6 head; seeded weights, a few BN biases pushed
    down so that some units are dead."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(1)
            self._build()

    def _build(self) -> None:
        gen = torch.Generator().manual_seed(1)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True))
        self.pool = nn.MaxPool2d(2)
        self.conv1, self.bn1 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 6)
        self.head = nn.Linear(6, 4)
        with torch.no_grad():
            for bn in (self.stem[1], self.bn1, self.bn2):
                bn.weight.copy_(torch.randn(8, generator=gen))  # some negative scales
                bn.bias.copy_(torch.randn(8, generator=gen))
                bn.running_mean.copy_(torch.randn(8, generator=gen) * 0.1)
                bn.running_var.copy_(torch.rand(8, generator=gen) + 0.5)
            self.stem[1].bias[:2] = -30.0
            self.bn1.bias[0] = -30.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(self.stem(x))
        z = nn.functional.relu(self.bn1(self.conv1(y)))
        y = nn.functional.relu(self.bn2(self.conv2(z)) + y)
        y = nn.functional.adaptive_avg_pool2d(y, 1).flatten(1)
        y = nn.functional.hardtanh(self.fc(y) / 2 - 0.1)
        return nn.functional.relu6(self.head(y) * 3)


class MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(2)
            self.net = nn.Sequential(nn.Linear(10, 32), nn.ReLU(), nn.Linear(32, 32), nn.Sigmoid(),
                                     nn.Linear(32, 16), nn.LeakyReLU(0.1), nn.Linear(16, 8), nn.ReLU(),
                                     nn.Hardswish(), nn.Linear(8, 8), nn.Tanh(), nn.Linear(8, 8), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class WithErf(nn.Module):
    """A linear layer, an op without an interval rule (erf), then a ReLU: that site cannot be
    certified; the ReLU before the erf can."""

    def __init__(self) -> None:
        super().__init__()
        with torch.random.fork_rng():
            torch.manual_seed(3)
            self.fc1, self.fc2 = nn.Linear(4, 4), nn.Linear(4, 4)
        with torch.no_grad():
            self.fc1.weight.fill_(-1.0)
            self.fc1.bias.fill_(-1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.fc1(x))
        return torch.relu(self.fc2(torch.special.erf(y)))


class TwoUnitsHead(nn.Module):
    """TwoUnits followed by a linear head, so that its units can be pruned."""

    def __init__(self) -> None:
        super().__init__()
        self.body = TwoUnits()
        with torch.random.fork_rng():
            torch.manual_seed(4)
            self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
