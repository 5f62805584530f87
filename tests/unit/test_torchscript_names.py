"""TorchScript sites get the same module-path names as the exported program of the same model."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F

import reludoctor


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(6, 8)
        self.bn = torch.nn.BatchNorm1d(8)  # has a training branch, with no activation in it
        self.act = torch.nn.ReLU()
        self.fc2 = torch.nn.Linear(8, 8)
        self.six = torch.nn.ReLU6()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.bn(self.fc1(x)))
        y = self.act(self.fc2(y))
        return self.six(F.relu(y - 0.1))


class Branchy(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if bool(x.sum() > 0):
            return torch.relu(x)
        return torch.relu(-x)


def _script(model: torch.nn.Module) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.script(model.eval())


def test_torchscript_names_match_export() -> None:
    torch.manual_seed(0)
    model = Net().eval()
    data = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    exported = reludoctor.scan(model, data, method="export")
    scripted = reludoctor.scan(_script(model), data)
    assert scripted.model.method == "dispatch"
    assert [s.name for s in scripted.sites] == [s.name for s in exported.sites]
    assert [s.name for s in exported.sites] == ["act#1", "act#2", "relu()", "six"]
    for a, b in zip(scripted.sites, exported.sites):
        assert a.dead_units == b.dead_units


def test_activation_inside_a_branch_keeps_op_names() -> None:
    data = np.random.default_rng(1).standard_normal((10, 4)).astype(np.float32)
    report = reludoctor.scan(_script(Branchy()), data)
    assert [s.name for s in report.sites] == ["relu()"]
