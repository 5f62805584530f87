"""Tiny models for the CLI tests, importable by name so ``--arch reludoctor_cli_zoo:planted``
works (the tests put this folder on sys.path / run subprocesses with it as the cwd).

``Planted`` has four ReLU-family call sites, in execution order:
``act#1`` (16 units), ``act#2`` (the same nn.ReLU called again, 12 units), ``relu()``
(a functional F.relu at the root, 6 units) and ``out`` (nn.ReLU6, 6 units). Units 3 and 7 of
``act#1`` and unit 5 of ``act#2`` are planted dead with a bias of -1e3.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IN_FEATURES = 8
SITE_NAMES = ("act#1", "act#2", "relu()", "out")
PLANTED_DEAD = {"act#1": (3, 7), "act#2": (5,)}


class Planted(nn.Module):
    def __init__(self, hidden: int = 16):
        super().__init__()
        self.fc1 = nn.Linear(IN_FEATURES, hidden)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(hidden, 12)
        self.fc3 = nn.Linear(12, 6)
        self.out = nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        h = self.act(self.fc2(h))  # a reused module: a second call site
        h = F.relu(self.fc3(h))  # a functional call
        return self.out(h * 3)


def planted(hidden: int = 16, seed: int = 0) -> Planted:
    """The architecture factory for --arch (also builds the planted weights)."""
    torch.manual_seed(seed)
    model = Planted(hidden).eval()
    with torch.no_grad():
        for unit in PLANTED_DEAD["act#1"]:
            if unit < hidden:
                model.fc1.bias[unit] = -1e3
        for unit in PLANTED_DEAD["act#2"]:
            model.fc2.bias[unit] = -1e3
    return model


def broken(**kwargs: object) -> nn.Module:
    """An --arch factory whose own code fails (not a reludoctor error)."""
    raise ValueError("unsupported configuration")


def clean(seed: int = 0) -> nn.Module:
    """One ReLU site whose units all fire on standard-normal data."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(IN_FEATURES, 16), nn.ReLU()).eval()
    with torch.no_grad():
        model[0].bias.fill_(0.5)
    return model


@torch.no_grad()
def expected_dead(model: Planted, x) -> dict[str, list[int]]:  # noqa: ANN001
    """Dead units of every site of ``Planted``, computed directly from the pre-activations
    (independently of reludoctor): a unit is dead when it is never > 0."""
    x = torch.as_tensor(x, dtype=torch.float32)
    pre1 = model.fc1(x)
    pre2 = model.fc2(torch.relu(pre1))
    pre3 = model.fc3(torch.relu(pre2))
    pre4 = torch.relu(pre3) * 3
    return {name: [int(i) for i in torch.nonzero((pre > 0).sum(0) == 0).flatten()]
            for name, pre in zip(SITE_NAMES, (pre1, pre2, pre3, pre4))}
