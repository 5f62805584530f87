"""Producer evidence: per site, the Conv/Linear layer feeding it (through BatchNorm), per unit.

Rules compare dead and alive units on it: incoming weight norms, biases, BatchNorm gamma/beta,
fan-in. The pre-activation of unit u is then exactly ``scale[u] * (w_u . x) + shift[u]``:

- no normalisation: ``scale = 1``, ``shift = bias`` (0 without a bias);
- an eval-mode BatchNorm after the layer: ``scale = gamma / sqrt(var + eps)``,
  ``shift = beta + scale * (bias - running_mean)``.

Only chains where this holds are used: the producer, optionally one BatchNorm, and value-preserving
ops (clone, dropout in eval, dtype copies). A residual sum, a scaling or a training-mode
BatchNorm in between gives no evidence for that site (rules then fall back to the statistics).

Each backend finds it (``Backend.evidence``): PyTorch from the exported graph's producer nodes or
the ATen calls of one forward pass under a TorchDispatchMode (``backends.torch.evidence``), ONNX
from the graph's initializers (``backends.onnx.evidence``). The engine never lets it fail a
scan: a model it does not understand just has no evidence at its sites.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ProducerEvidence:
    """The layer feeding one site, per unit (arrays of length ``units``)."""

    site: str
    layer: str  # module path of the Conv/Linear, e.g. "layer3.1.conv1" (ONNX: the node name)
    kind: str  # conv | linear
    weight: str  # the weight's parameter name, e.g. "layer3.1.conv1.weight"
    fan_in: int
    weight_norm: np.ndarray  # L2 norm of each unit's incoming weights
    bias: np.ndarray | None  # the layer's own bias
    norm_layer: str | None  # the BatchNorm between producer and activation, if any
    gamma: np.ndarray | None
    beta: np.ndarray | None
    running_mean: np.ndarray | None
    running_var: np.ndarray | None
    scale: np.ndarray  # multiplies w_u . x
    shift: np.ndarray  # added: the effective bias of each unit

    @property
    def units(self) -> int:
        return int(self.weight_norm.shape[0])

    @property
    def signal_scale(self) -> np.ndarray:
        """How large each unit's weighted input ``scale * (w . x)`` is, up to the layer's input
        scale (shared by all its units, so only ratios between units mean anything):

        - after a BatchNorm: ``|scale| * sqrt(running_var)``, its running variance being that of
          ``w . x + bias`` (``|gamma|`` when the statistics are current). Not ``|scale| * |w|``:
          BatchNorm makes the weight norm arbitrary, and ``|w| / sqrt(running_var)`` depends on
          how the rows align with the input's covariance;
        - otherwise: ``|scale| * |w|`` (the incoming weight norm).

        A unit whose signal scale is a small fraction of its alive neighbours' has a weak input.
        """
        if self.running_var is not None:
            return np.abs(self.scale) * np.sqrt(np.maximum(self.running_var, 0.0))
        return np.abs(self.scale) * self.weight_norm


def to_numpy(values: Any) -> np.ndarray | None:
    """A tensor or an array as a flat float64 numpy copy (ONNX evidence never imports torch)."""
    if values is None:
        return None
    if hasattr(values, "detach"):
        return values.detach().to("cpu").double().numpy().reshape(-1).copy()
    return np.array(values, dtype=np.float64).reshape(-1)


def build(site: str, layer: str, kind: str, weight_name: str, weight: Any, bias: Any,
           norm: tuple | None) -> ProducerEvidence | None:
    """norm: (module path, gamma, beta, mean, var, eps) tensors/arrays/values or None."""
    w = weight.detach().to("cpu").double().numpy() if hasattr(weight, "detach") \
        else np.asarray(weight, dtype=np.float64)  # a torch tensor, or an ONNX initializer
    if w.ndim < 2:
        return None
    rows = w.reshape(w.shape[0], -1)
    weight_norm = np.sqrt(np.einsum("ij,ij->i", rows, rows))
    units = rows.shape[0]
    b = to_numpy(bias)
    if b is not None and b.shape[0] != units:
        return None
    scale = np.ones(units)
    shift = b.copy() if b is not None else np.zeros(units)
    gamma = beta = mean = var = None
    norm_layer = None
    if norm is not None:
        norm_layer, g, be, mu, v, eps = norm
        mean, var = to_numpy(mu), to_numpy(v)
        if mean is None or var is None or mean.shape[0] != units:
            return None
        gamma = to_numpy(g) if g is not None else np.ones(units)
        beta = to_numpy(be) if be is not None else np.zeros(units)
        scale = gamma / np.sqrt(var + float(eps))
        shift = beta + scale * ((b if b is not None else 0.0) - mean)
    return ProducerEvidence(site, layer, kind, weight_name, int(rows.shape[1]), weight_norm, b,
                            norm_layer, gamma, beta, mean, var, scale, shift)



# ----------------------------------------------------------------------------- eager / TorchScript



# ----------------------------------------------------------------------------- ONNX



def finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None
