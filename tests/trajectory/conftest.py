"""A small MLP trained on scikit-learn's digits with plain SGD and a learning rate high enough
that hidden units die, saved as 5 state_dict checkpoints (plus a copy in a folder), with its
``--arch`` factory module written next to them; built once per session."""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

ARCH_MODULE = "traj_digits_arch"
ARCH = f"{ARCH_MODULE}:mlp"
SITES = ("act1", "act2")  # the hidden ReLUs, as the scan names them
STEPS = (0, 10, 20, 30, 40)  # the SGD steps at which a checkpoint is saved
LR = 2.0  # found by trying: at this rate units of act2 die over the steps, a few revive

ARCH_SOURCE = '''
from torch import nn


class MLP(nn.Module):
    def __init__(self, hidden: int = 32):
        super().__init__()
        self.fc1, self.act1 = nn.Linear(64, hidden), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(hidden, 32), nn.ReLU()
        self.out = nn.Linear(32, 10)

    def forward(self, x):
        return self.out(self.act2(self.fc2(self.act1(self.fc1(x)))))


def mlp(hidden: int = 32):
    return MLP(hidden)
'''


@dataclass(frozen=True)
class Run:
    root: Path
    data: Path  # digits, standardised, float32 [1797, 64]
    files: list[Path]  # the 5 checkpoints in step order
    folder: Path  # the same checkpoints in one folder, named so only a natural sort orders them


def digits() -> np.ndarray:
    from sklearn.datasets import load_digits

    x, _ = load_digits(return_X_y=True)
    x = x / 16.0
    return ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Run:
    import torch
    from sklearn.datasets import load_digits

    root = tmp_path_factory.mktemp("trajectory")
    (root / f"{ARCH_MODULE}.py").write_text(ARCH_SOURCE, encoding="utf-8")
    sys.path.insert(0, str(root))
    import importlib

    arch = importlib.import_module(ARCH_MODULE)
    x = digits()
    np.save(root / "digits.npy", x)
    _, y = load_digits(return_X_y=True)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(0)
    model = arch.mlp()
    optimiser = torch.optim.SGD(model.parameters(), lr=LR)
    generator = torch.Generator().manual_seed(0)
    folder = root / "ckpts"
    folder.mkdir()
    files = []
    for step in range(STEPS[-1] + 1):
        if step:
            batch = torch.randint(0, len(xs), (64,), generator=generator)
            loss = torch.nn.functional.cross_entropy(model(xs[batch]), ys[batch])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        if step in STEPS:
            path = root / f"ckpt_step{step}.pt"
            torch.save(model.state_dict(), path)
            # step_50 ... step_1050: sorted as text, step_1050 would come first
            torch.save(model.state_dict(), folder / f"step_{step * 25 + 50}.pt")
            files.append(path)
    return Run(root, root / "digits.npy", files, folder)


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, trained: Run) -> Callable:
    """``reludoctor trajectory ARGS`` in-process, with a pinned terminal width."""
    from typer.testing import CliRunner

    from reludoctor.cli import app

    monkeypatch.syspath_prepend(str(trained.root))

    def invoke(*args: object):
        env = {"COLUMNS": "200", "TTY_COMPATIBLE": None, "TTY_INTERACTIVE": None, "FORCE_COLOR": None,
               "NO_COLOR": None}
        return CliRunner().invoke(app, ["trajectory", *map(str, args)], env=env)

    return invoke
