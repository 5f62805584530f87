"""The example of docs/diagnosis.md ("Diagnosis in depth: one model, three verdicts").

A digits MLP learns an old task (digits 0-4), then a new one (digits 5-9) with a fifth of the old
task's samples replayed, at a learning rate that kills units. The user has the new task's data at hand and asks
what to prune. The script makes the files, runs the scans, and prints every number the page
quotes:

    python docs/examples/diagnosis_in_depth.py [FOLDER]

Deterministic on one thread (seeded); about 20 s on a laptop CPU.
"""

from __future__ import annotations

import sys
import tempfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch

SEED = 0
HIDDEN = 64


def digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    return torch.tensor(x / 16.0, dtype=torch.float32), torch.tensor(y)


def train(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor, epochs: int,
          lr: float) -> None:
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(epochs):
        order = rows[torch.randperm(len(rows))]
        for start in range(0, len(order), 32):
            batch = order[start:start + 32]
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def make(folder: Path) -> dict[str, Path]:
    """The model (.pt2) and its data: every digit (calib.npy, labels.npy, task.npy: 0 old, 1 new)
    and the new task's digits alone (new.npy)."""
    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    x, y = digits()
    model = torch.nn.Sequential(OrderedDict(fc1=torch.nn.Linear(64, HIDDEN), relu1=torch.nn.ReLU(),
                                            fc2=torch.nn.Linear(HIDDEN, HIDDEN), relu2=torch.nn.ReLU(),
                                            out=torch.nn.Linear(HIDDEN, 10)))
    old, new = torch.nonzero(y < 5).flatten(), torch.nonzero(y >= 5).flatten()
    train(model, x, y, old, epochs=20, lr=1e-3)  # the old task
    replay = old[torch.randperm(len(old))[:len(old) // 5]]
    train(model, x, y, torch.cat([new, replay]), epochs=20, lr=5e-2)  # the new task, 20% replay
    model.eval()
    folder.mkdir(parents=True, exist_ok=True)
    files = {"model": folder / "model.pt2", "calib": folder / "calib.npy", "labels": folder / "labels.npy",
             "task": folder / "task.npy", "new": folder / "new.npy"}
    torch.export.save(torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      files["model"])
    np.save(files["calib"], x.numpy())
    np.save(files["labels"], y.numpy())
    np.save(files["task"], (y >= 5).numpy().astype(np.int64))
    np.save(files["new"], x[new].numpy())
    return files


def main(folder: Path) -> None:
    files = make(folder)
    import reludoctor

    report = reludoctor.scan(str(files["model"]), str(files["new"]), input_range="0,1", device="cpu")
    for site in report.sites:
        print(site.name, "dead", len(site.dead_units), "certified", len(site.certified_dead_units or ()))


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
