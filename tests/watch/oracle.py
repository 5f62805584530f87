"""An independent oracle for watch tests: hidden units' per-step maxima computed by hand from
the weights, and the window definitions applied to them by brute force (no streak counters)."""

from __future__ import annotations

import numpy as np
import torch


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def mlp(seed: int = 0) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(64, 64), torch.nn.ReLU(), torch.nn.Linear(64, 64),
                               torch.nn.ReLU(), torch.nn.Linear(64, 10))


def hidden_maxima(layers: list[torch.nn.Linear], x: torch.Tensor) -> list[np.ndarray]:
    """Per hidden layer, per unit: the max pre-activation over the batch, by plain matmul."""
    out = []
    with torch.no_grad():
        h = x
        for layer in layers:
            pre = h @ layer.weight.T + layer.bias
            out.append(pre.max(dim=0).values.double().numpy())
            h = pre * (pre > 0)
    return out


def dead_at(silent: np.ndarray, s: int, window: int) -> np.ndarray:
    """Units silent on each of the ``window`` steps ending at step index ``s``."""
    if s + 1 < window:
        return np.zeros(silent.shape[1], dtype=bool)
    return silent[s + 1 - window:s + 1].all(axis=0)


def death_step(silent: np.ndarray, s: int, unit: int, steps: list[int]) -> int:
    """The first step of the silent run that contains step index ``s``."""
    start = s
    while start > 0 and silent[start - 1, unit]:
        start -= 1
    return steps[start]


def events(maxima: list[np.ndarray], steps: list[int], window: int) -> list[dict]:
    """Per observed step: {"died": {unit: step of death}, "revived": [units], "dead": {unit: step}}."""
    silent = np.stack(maxima) <= 0
    out = []
    for s in range(len(steps)):
        now = dead_at(silent, s, window)
        before = dead_at(silent, s - 1, window) if s else np.zeros_like(now)
        dead = {int(u): death_step(silent, s, int(u), steps) for u in np.flatnonzero(now)}
        out.append({"died": {u: d for u, d in dead.items() if not before[u]},
                    "revived": [int(u) for u in np.flatnonzero(before & ~silent[s])], "dead": dead})
    return out
