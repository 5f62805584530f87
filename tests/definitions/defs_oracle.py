"""An independent computation of each definition: per-position activations recorded with
forward hooks on a non-inplace copy, per-unit gradients with ``retain_grad`` and one
``backward`` of the summed loss, then numpy. Nothing here imports reludoctor."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ACTIVATIONS = (nn.ReLU, nn.ReLU6)


@dataclass
class OracleSite:
    rate: np.ndarray  # per unit: positions with pre-activation > lower bound
    apoz: np.ndarray  # per unit: positions with output == lower bound
    redo_score: np.ndarray  # mean |output| / layer mean
    grama_score: np.ndarray  # mean |dL/d output| / layer mean
    grad_abs_mean: np.ndarray  # mean |dL/d output| per unit


def _per_unit(values: np.ndarray, axis: int) -> np.ndarray:
    """[N, ...] -> [units, positions], the units on ``axis``."""
    return np.moveaxis(values, axis, 0).reshape(values.shape[axis], -1)


def _normalised(per_unit: np.ndarray) -> np.ndarray:
    mean = per_unit.mean()
    return per_unit / mean if mean > 0 else np.zeros_like(per_unit)


def oracle(model: nn.Module, x: np.ndarray, unit_axis: int = 1) -> list[OracleSite]:
    """Sites in call order. Loss, summed over samples as the scan's defaults: cross-entropy
    against the model's own argmax for [N, C] outputs, else 0.5 * ||output||^2."""
    clone = copy.deepcopy(model).eval()
    calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
        out.retain_grad()
        calls.append((args[0].detach(), out))

    for module in clone.modules():
        if isinstance(module, ACTIVATIONS):
            module.inplace = False
            module.register_forward_hook(hook)
    y = clone(torch.from_numpy(x))
    loss = F.cross_entropy(y, y.detach().argmax(1), reduction="sum") if y.ndim == 2 else 0.5 * y.pow(2).sum()
    loss.backward()
    sites = []
    for pre, out in calls:
        pre_u = _per_unit(pre.double().numpy(), unit_axis)
        out_u = _per_unit(out.detach().double().numpy(), unit_axis)
        grad_u = _per_unit(out.grad.double().numpy(), unit_axis)
        sites.append(OracleSite(rate=(pre_u > 0).mean(1), apoz=(out_u == 0).mean(1),
                                redo_score=_normalised(np.abs(out_u).mean(1)),
                                grama_score=_normalised(np.abs(grad_u).mean(1)),
                                grad_abs_mean=np.abs(grad_u).mean(1)))
    return sites


def flagged(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)]
