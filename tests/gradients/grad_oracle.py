"""An independent gradient computation: plain autograd on a non-inplace deep copy.

Every activation module of the copy is made non-inplace, its input and output keep their
``.grad`` (``retain_grad``), and one backward pass of the summed loss over the whole data (one
batch) gives each element its own sample's gradient. Sites are the activation-module calls in
execution order, ``#k``-suffixed when a module is called more than once, as reludoctor names
them. Nothing here imports reludoctor.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


@dataclass
class OracleGradient:
    rms_output: float
    rms_preactivation: float
    zero_fraction: float
    zero_by_mask: float
    zero_downstream: float
    output_zero_fraction: float
    pass_through: float
    elements: int


def _bounds(module: nn.Module) -> tuple[float, float | None]:
    if isinstance(module, nn.ReLU):
        return 0.0, None
    return float(module.min_val), float(module.max_val)


def oracle(model: nn.Module, x: torch.Tensor, *, labels: torch.Tensor | None = None,
           loss: str = "argmax") -> tuple[dict[str, OracleGradient], dict[str, float]]:
    """(per-site gradients, {parameter name: ||d mean-loss / dW||})."""
    clone = copy.deepcopy(model).eval()
    names = {module: name for name, module in clone.named_modules()}
    calls: list[tuple[str, nn.Module, torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        pre = args[0]
        pre.retain_grad()
        out.retain_grad()
        calls.append((names[module], module, pre, out))

    for module in clone.modules():
        if isinstance(module, ACTIVATIONS):
            module.inplace = False
            module.register_forward_hook(hook)
    leaf = x.detach().clone().requires_grad_()
    output = clone(leaf)
    if loss == "labels":
        value = F.cross_entropy(output, labels, reduction="sum")
    elif loss == "argmax":
        value = F.cross_entropy(output, output.detach().argmax(1), reduction="sum")
    else:
        value = 0.5 * output.pow(2).sum()
    value.backward()

    totals: dict[str, int] = {}
    for name, *_ in calls:
        totals[name] = totals.get(name, 0) + 1
    seen: dict[str, int] = {}
    sites = {}
    for name, module, pre, out in calls:
        seen[name] = seen.get(name, 0) + 1
        site = f"{name}#{seen[name]}" if totals[name] > 1 else name
        lower, upper = _bounds(module)
        g_pre = pre.grad if pre.grad is not None else torch.zeros_like(pre)
        g_out = out.grad if out.grad is not None else torch.zeros_like(out)
        blocked = pre.detach() <= lower
        if upper is not None:
            blocked |= pre.detach() >= upper
        n = pre.numel()
        zero = g_pre == 0
        sites[site] = OracleGradient(
            rms_output=math.sqrt(float(g_out.double().pow(2).mean())),
            rms_preactivation=math.sqrt(float(g_pre.double().pow(2).mean())),
            zero_fraction=float(zero.sum()) / n,
            zero_by_mask=float((zero & blocked).sum()) / n,
            zero_downstream=float((zero & ~blocked).sum()) / n,
            output_zero_fraction=float((g_out == 0).sum()) / n,
            pass_through=float((~blocked).sum()) / n,
            elements=n,
        )
    weight_grads = {name: float(p.grad.double().norm()) / x.shape[0]
                    for name, p in clone.named_parameters() if p.grad is not None}
    return sites, weight_grads


class InplaceReused(nn.Module):
    """fc1 -> bn1 -> act (inplace ReLU) -> fc2 -> act again (the same module) -> fc3 -> six
    (inplace ReLU6) -> fc4. Sites act#1 [N, 12], act#2 [N, 10], six [N, 8]. Unit 0 of act#1 is
    dead (bias -100); unit 1 of six is saturated (bias +100)."""

    def __init__(self, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.fc1, self.bn1 = nn.Linear(6, 12), nn.BatchNorm1d(12)
        self.fc2, self.fc3, self.fc4 = nn.Linear(12, 10), nn.Linear(10, 8), nn.Linear(8, 5)
        self.act = nn.ReLU(inplace=True)
        self.six = nn.ReLU6(inplace=True)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.6 if p.ndim > 1 else 0.3))
            self.bn1.running_mean.copy_(torch.randn(12, generator=g) * 0.1)
            self.bn1.running_var.copy_(0.5 + torch.rand(12, generator=g))
            self.bn1.bias[0] = -100.0
            self.fc3.bias[1] = 100.0
            self.fc3.weight *= 3.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.bn1(self.fc1(x)))
        h = self.act(self.fc2(h))
        return self.fc4(self.six(self.fc3(h)))


class PoolNet(nn.Module):
    """conv1 -> stem (inplace ReLU) -> MaxPool2d(2) -> conv2 -> act -> mean -> fc: MaxPool's
    backward zeroes 3 of 4 gradients at the stem's output."""

    def __init__(self, seed: int = 1):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.stem = nn.ReLU(inplace=True)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(4, 6, 3, padding=1)
        self.act = nn.ReLU()
        self.fc = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.stem(self.conv1(x)))
        return self.fc(self.act(self.conv2(h)).mean((2, 3)))


class Regressor(nn.Module):
    """fc1 -> act -> fc2 with one output: the loss is 0.5 * ||output||^2."""

    def __init__(self, seed: int = 2):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.act, self.fc2 = nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Branchy(nn.Module):
    """Data-dependent control flow (torch.export cannot capture it): observed via dispatch."""

    def __init__(self, seed: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.fc1, self.act, self.fc2 = nn.Linear(5, 9), nn.ReLU(inplace=True), nn.Linear(9, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.fc1(x))
        if h.sum() > -1e9:  # always true, but data-dependent
            h = h * 1.0
        return self.fc2(h)
