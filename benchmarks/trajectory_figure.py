"""The picture in docs/training.md: a digits MLP trained with plain SGD at a learning
rate high enough that units die, 9 checkpoints, ``reludoctor.trajectory`` over them, and the
HTML page's two plots saved as PNG (docs/images/trajectory.png, trajectory-units.png).

    python benchmarks/trajectory_figure.py

Deterministic for the same torch/scikit-learn versions; prints the terminal table too.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from sklearn.datasets import load_digits
from torch import nn

from reludoctor.reporters.plots import _rc
from reludoctor.reporters.trajectory import print_table
from reludoctor.reporters.trajectory_plots import curves_figure, heatmap_figure
from reludoctor.trajectory import trajectory

IMAGES = Path(__file__).resolve().parents[1] / "docs" / "images"
STEPS = range(0, 41, 5)


def main() -> None:
    x, y = load_digits(return_X_y=True)
    x = x / 16.0
    x = ((x - x.mean(0)) / (x.std(0) + 1e-6)).astype(np.float32)
    xs, ys = torch.from_numpy(x), torch.from_numpy(y)
    torch.manual_seed(0)
    model = nn.Sequential()
    model.fc1, model.act1 = nn.Linear(64, 32), nn.ReLU()
    model.fc2, model.act2 = nn.Linear(32, 32), nn.ReLU()
    model.out = nn.Linear(32, 10)
    optimiser = torch.optim.SGD(model.parameters(), lr=2.0)
    generator = torch.Generator().manual_seed(0)
    with tempfile.TemporaryDirectory() as folder:
        for step in range(STEPS[-1] + 1):
            if step:
                batch = torch.randint(0, len(xs), (64,), generator=generator)
                loss = nn.functional.cross_entropy(model(xs[batch]), ys[batch])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
            if step in STEPS:
                exported = torch.export.export(model.eval(), (xs[:2],),
                                               dynamic_shapes=({0: torch.export.Dim("batch")},))
                torch.export.save(exported, Path(folder) / f"step_{step}.pt2")
                model.train()
        result = trajectory([folder], x, on_warning=print)
    print_table(result, Console(width=120))
    IMAGES.mkdir(exist_ok=True)
    with _rc():
        curves_figure(result).savefig(IMAGES / "trajectory.png", dpi=110, metadata={"Software": None})
        heatmap_figure(result).savefig(IMAGES / "trajectory-units.png", dpi=110, metadata={"Software": None})
    print(f"wrote {IMAGES / 'trajectory.png'} and trajectory-units.png")


if __name__ == "__main__":
    main()
