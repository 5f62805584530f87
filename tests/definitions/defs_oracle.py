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


def _per_unit(values: np.ndarray) -> np.ndarray:
    """[N, C, ...] -> [C, positions]: the unit axis is 1 (channels, or features of [N, F])."""
    return np.moveaxis(values, 1, 0).reshape(values.shape[1], -1)


def _normalised(per_unit: np.ndarray) -> np.ndarray:
    mean = per_unit.mean()
    return per_unit / mean if mean > 0 else np.zeros_like(per_unit)


def oracle(model: nn.Module, x: np.ndarray) -> list[OracleSite]:
    """Sites in call order. Loss: cross-entropy against the model's own argmax, summed (the
    scan's default for a classifier output)."""
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
    F.cross_entropy(y, y.detach().argmax(1), reduction="sum").backward()
    sites = []
    for pre, out in calls:
        pre_u = _per_unit(pre.double().numpy())
        out_u = _per_unit(out.detach().double().numpy())
        grad_u = _per_unit(out.grad.double().numpy())
        sites.append(OracleSite(rate=(pre_u > 0).mean(1), apoz=(out_u == 0).mean(1),
                                redo_score=_normalised(np.abs(out_u).mean(1)),
                                grama_score=_normalised(np.abs(grad_u).mean(1))))
    return sites


def flagged(mask: np.ndarray) -> list[int]:
    return [int(i) for i in np.flatnonzero(mask)]
