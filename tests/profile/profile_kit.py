"""A tiny token model, an oracle counted by hand from forward hooks, and PowerInfer's reader.

The oracle never looks at reludoctor: it records every ReLU module's output per token and
counts in numpy. The reader follows powerinfer-py/powerinfer/export_split.py
(load_activation_weights: os.walk, re.match(r"activation_\\d+.pt"), list.sort(), torch.load)
and solver.py (torch.load(f"{path}/activation_{i}.pt") for i in range(layers)), with
weights_only=True.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch
from torch import nn

VOCAB, WIDTH, FFN, TOKENS = 50, 8, 16, 7


class Block(nn.Module):
    def __init__(self, dead: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(WIDTH, FFN)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(FFN, WIDTH)
        with torch.no_grad():  # a few dead neurons, and a skewed firing distribution
            self.fc1.bias[:dead] = -100.0
            self.fc1.bias[dead:] += torch.linspace(-1.5, 1.5, FFN - dead)

    def forward(self, x):  # noqa: ANN001, ANN201
        return x + self.fc2(self.act(self.fc1(x)))


class TokenModel(nn.Module):
    """Embedding -> blocks (``layers.i``: Linear, ReLU [N, T, F], Linear) -> a head whose ReLU
    is not in a block (a token site without a block index)."""

    def __init__(self, blocks: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.embed = nn.Embedding(VOCAB, WIDTH)
        self.layers = nn.ModuleList(Block(dead=i % 3) for i in range(blocks))
        self.head_act = nn.ReLU()
        self.head = nn.Linear(WIDTH, VOCAB)

    def forward(self, input_ids):  # noqa: ANN001, ANN201
        x = self.embed(input_ids)
        for block in self.layers:
            x = block(x)
        return self.head(self.head_act(x))


def token_ids(samples: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, size=(samples, TOKENS)).astype(np.int64)


def fired_by_hooks(model: nn.Module, feed: dict) -> dict[str, np.ndarray]:
    """Module path -> bool [tokens, neurons]: whether each ReLU's output was > 0 on each token
    (for ReLU, output > 0 exactly when the pre-activation is)."""
    fired: dict[str, list[np.ndarray]] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU):
            def hook(mod, args, out, name=name):  # noqa: ANN001, ANN202
                fired.setdefault(name, []).append((out.detach().reshape(-1, out.shape[-1]) > 0).numpy())
            handles.append(module.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model.eval()(**{k: torch.from_numpy(v) for k, v in feed.items()})
    finally:
        for handle in handles:
            handle.remove()
    return {name: np.concatenate(parts) for name, parts in fired.items()}


def hot_size_by_brute_force(counts: np.ndarray, coverage: float) -> int:
    total = counts.sum()
    ranked = np.sort(counts)[::-1]
    for k in range(len(counts) + 1):
        if total == 0 or ranked[:k].sum() >= coverage * total - 1e-9:
            return k
    raise AssertionError("unreachable")


def expected_layer(fired: np.ndarray) -> dict:
    """The profile of one site computed from its per-token firing matrix."""
    tokens, neurons = fired.shape
    per_token = fired.sum(axis=1)
    counts = fired.sum(axis=0)
    return {"neurons": neurons, "tokens": tokens, "activations": int(fired.sum()),
            "sparsity": 1.0 - fired.mean(), "mean_active_neurons": per_token.mean(),
            "mean_active_fraction": (per_token / neurons).mean(),
            "hot": [hot_size_by_brute_force(counts, c) for c in (0.8, 0.9, 0.99)],
            "dead_neurons": int((counts == 0).sum()), "frequency": counts / tokens,
            "counts": counts}


def powerinfer_export_split_read(folder: Path) -> list[torch.Tensor]:
    """export_split.py's load_activation_weights: the list index is the layer."""
    *_, files = next(os.walk(folder))
    activation_files = [f for f in files if re.match(r"activation_\d+.pt", f)]
    activation_files.sort()
    return [torch.load(folder / f, weights_only=True) for f in activation_files]


def powerinfer_solver_read(folder: Path, layers: int) -> list[torch.Tensor]:
    """solver.py: activation_{i}.pt for i in range(layers)."""
    return [torch.load(f"{folder}/activation_{i}.pt", weights_only=True) for i in range(layers)]
