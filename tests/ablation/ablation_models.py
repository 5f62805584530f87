"""Tiny models with planted near-dead and tau-dormant units, and the independent oracle: plain
torch on a deepcopy, units zeroed by a forward hook on the activation module."""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Module):
    """act1: units 0, 1 rarely fire (bias -4.5, strong outgoing weights), unit 2 dead (bias -50), units 3, 4 tiny (dormant);
    act2: unit 0 rarely fires."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act1 = nn.Linear(8, 16), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(16, 12), nn.ReLU()
        self.head = nn.Linear(12, 5)
        with torch.no_grad():
            self.fc1.weight[:2] = torch.ones(8)
            self.fc1.bias[:2] = -4.5
            self.fc2.weight[:, :2] *= 20
            self.fc1.bias[2] = -50.0
            self.fc1.weight[3:5] *= 0.002
            self.fc1.bias[3:5] = 0.001
            self.fc2.bias[0] = -2.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))


class CNN(nn.Module):
    """act1 (channels on axis 1): channels 0, 1 rarely fire, 2 dormant; act2 feeds a pool and head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.conv1, self.bn1, self.act1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU()
        self.conv2, self.act2 = nn.Conv2d(8, 6, 3, padding=1), nn.ReLU()
        self.head = nn.Linear(6, 4)
        with torch.no_grad():
            self.bn1.bias[:2] = -1.1
            self.bn1.weight[2] = 0.003
            self.bn1.bias[2] = 0.0
        self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        return self.head(h.mean((2, 3)))


def mlp_data(n: int = 90) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 8)).astype(np.float32)


def cnn_data(n: int = 30) -> np.ndarray:
    return np.random.default_rng(1).standard_normal((n, 3, 6, 6)).astype(np.float32)


def _zeroing(units: list[int]):  # noqa: ANN202
    def hook(_module, _inputs, output):  # noqa: ANN001, ANN202
        out = output.clone()
        out[:, units] = 0.0
        return out
    return hook


def outputs(model: nn.Module, x: np.ndarray, site: str | None = None, units: list[int] = ()) -> torch.Tensor:
    """The model's outputs on all of ``x`` at once, ``units`` of module ``site`` zeroed (a copy)."""
    copy_ = copy.deepcopy(model).eval()
    if site is not None:
        getattr(copy_, site).register_forward_hook(_zeroing(list(units)))
    with torch.no_grad():
        return copy_(torch.from_numpy(x)).double()


def change(model: nn.Module, x: np.ndarray, site: str, units: list[int], labels: np.ndarray | None = None) -> dict:
    """The four metrics, computed here in float64 from the two outputs."""
    y, z = outputs(model, x), outputs(model, x, site, units)
    target = torch.from_numpy(labels).long() if labels is not None else y.argmax(1)
    loss = (F.cross_entropy(z, target, reduction="sum") - F.cross_entropy(y, target, reduction="sum")) / len(x)
    return {"output_change": float((z - y).norm() / y.norm()), "max_abs_change": float((z - y).abs().max()),
            "loss_change": float(loss), "argmax_flips": float((z.argmax(1) != y.argmax(1)).double().mean())}


def scores(model: nn.Module, x: np.ndarray, site: str) -> np.ndarray:
    """Per unit: mean over samples of |sum over positions of a * dL/da|, L the summed
    cross-entropy against the model's own argmax, by autograd on a copy."""
    copy_ = copy.deepcopy(model).eval()
    kept = {}
    getattr(copy_, site).register_forward_hook(lambda _m, _i, out: kept.setdefault("a", out))
    y = copy_(torch.from_numpy(x))
    loss = F.cross_entropy(y, y.detach().argmax(1), reduction="sum")
    (g,) = torch.autograd.grad(loss, [kept["a"]])
    product = (kept["a"] * g).double()
    per_sample = product.sum(tuple(range(2, product.ndim))) if product.ndim > 2 else product
    return per_sample.abs().mean(0).detach().numpy()


class FixMLP(nn.Module):
    """For --prune-near-dead: act1 unit 2 dead, units 3, 4 dormant with a tiny output (cheap to
    remove); act2 units 0, 1 rarely fire but weigh heavily on the head (costly to remove);
    act3 units 0, 1 dormant, a little more costly than act1's."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.fc1, self.act1 = nn.Linear(8, 16), nn.ReLU()
        self.fc2, self.act2 = nn.Linear(16, 12), nn.ReLU()
        self.fc3, self.act3 = nn.Linear(12, 10), nn.ReLU()
        self.head = nn.Linear(10, 5)
        with torch.no_grad():
            self.fc1.bias[2] = -50.0
            self.fc1.weight[3:5] *= 0.002
            self.fc1.bias[3:5] = 0.001
            self.fc2.weight[:2] = 0.0
            self.fc2.weight[:2, 5] = 1.0  # fires only when act1's unit 5 is large
            self.fc2.bias[:2] = -0.9
            self.fc3.weight[:, :2] *= 10
            self.fc3.weight[:2] *= 0.0003
            self.fc3.bias[:2] = 0.00012

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.act3(self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)))))))


def export_to(model: nn.Module, x: np.ndarray, path) -> None:  # noqa: ANN001
    program = torch.export.export(model, (torch.from_numpy(x[:2]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, path)


def zeroed(model: nn.Module, x: np.ndarray, plan: dict[str, list[int]]) -> torch.Tensor:
    """Outputs with several sites' units zeroed at once (a copy)."""
    copy_ = copy.deepcopy(model).eval()
    for site, units in plan.items():
        getattr(copy_, site).register_forward_hook(_zeroing(list(units)))
    with torch.no_grad():
        return copy_(torch.from_numpy(x)).double()


class TokenFFN(nn.Module):
    """A sequence model whose FFN runs on tokens flattened to rows, [N*T, F], as OPT's does;
    ffn units 0, 1 rarely fire."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.up, self.act, self.down = nn.Linear(6, 20), nn.ReLU(), nn.Linear(20, 6)
        self.head = nn.Linear(6, 3)
        with torch.no_grad():
            self.up.weight[:2] = 1.0
            self.up.bias[:2] = -4.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape
        h = self.down(self.act(self.up(x.reshape(n * t, d)))).reshape(n, t, d)
        return self.head(h).mean(1)


def token_data(n: int = 24) -> np.ndarray:
    return np.random.default_rng(4).standard_normal((n, 5, 6)).astype(np.float32)


def token_scores(model: TokenFFN, x: np.ndarray) -> np.ndarray:
    """The score oracle for TokenFFN: the rows of one sample summed before the absolute value."""
    copy_ = copy.deepcopy(model).eval()
    kept = {}
    copy_.act.register_forward_hook(lambda _m, _i, out: kept.setdefault("a", out))
    y = copy_(torch.from_numpy(x))
    loss = F.cross_entropy(y, y.detach().argmax(1), reduction="sum")
    (g,) = torch.autograd.grad(loss, [kept["a"]])
    per_sample = (kept["a"] * g).double().reshape(len(x), -1, g.shape[-1]).sum(1)
    return per_sample.abs().mean(0).detach().numpy()
