"""The example of docs/diagnosis.md ("Diagnosis in depth: one model, three verdicts").

A digits MLP learns an old task (digits 0-4), then a new one (digits 5-9) with a fifth of the old
task's samples replayed, at a learning rate that kills units. The user has the new task's data at hand and asks
what to prune. The script makes the files, runs the scans, and prints every number the page
quotes:

    python docs/examples/diagnosis_in_depth.py [FOLDER]

Deterministic on one thread (seeded); about 10 s on a 2-core machine.
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


def accuracy(program_path: Path, x: np.ndarray, y: np.ndarray) -> float:
    module = torch.export.load(str(program_path)).module()
    with torch.no_grad():
        return float((module(torch.from_numpy(x)).argmax(1).numpy() == y).mean())


def main(folder: Path) -> dict:
    """Run the example in ``folder``; print the page's numbers and return them (tests read them)."""
    import reludoctor
    from reludoctor.fix import fix

    files = make(folder)
    x, y = np.load(files["calib"]), np.load(files["labels"])
    old = y < 5
    quiet = {"device": "cpu", "on_warning": lambda message: None}
    found: dict = {}

    # The first look: the new task's data, as the user has it.
    first = reludoctor.scan(str(files["model"]), str(files["new"]), **quiet)
    found["first"] = first
    print("1. scan on the new task's data:", ", ".join(f"{s.name} {len(s.dead_units)} dead of {s.units}"
                                                     for s in first.sites))

    # Dead on which data: every digit, each sample's task as its slice (0 old, 1 new).
    deep = reludoctor.scan(str(files["model"]), str(files["calib"]), slices=str(files["task"]),
                           input_range="0,1", ablate=True, labels=str(files["labels"]), **quiet)
    found["deep"] = deep
    for site in deep.sites:
        old_only = [u.unit for u in site.slices.specialised_units if tuple(u.alive_on) == (0,)]
        print(f"2. {site.name}: dead on every slice {len(site.slices.dead_on_every_slice)}, "
              f"alive on the old task only {len(old_only)}, dead points "
              f"{site.dead_points.count}/{site.dead_points.samples}")

    pruned = folder / "pruned-on-new.pt2"
    fix(str(files["model"]), str(files["new"]), pruned, strategy="prune-dead", **quiet)
    found["accuracy"] = {(task, model): accuracy(path, x[rows], y[rows])
                         for task, rows in (("old", old), ("new", ~old))
                         for model, path in (("original", files["model"]), ("pruned", pruned))}
    print(f"   fix --prune-dead on the new task's data: old-task accuracy "
          f"{accuracy(files['model'], x[old], y[old]):.1%} -> {accuracy(pruned, x[old], y[old]):.1%}, "
          f"new-task accuracy {accuracy(files['model'], x[~old], y[~old]):.1%} -> "
          f"{accuracy(pruned, x[~old], y[~old]):.1%}")

    # Cannot fire vs did not fire, on the domain [0, 1]^64.
    for site in deep.sites:
        print(f"3. {site.name}: {len(site.dead_units)} dead on all the data, "
              f"{len(site.certified_dead_units)} certified dead on [0, 1]^64")
    program = torch.export.load(str(files["model"])).module()
    w, b = program.fc1.weight.detach(), program.fc1.bias.detach()
    first_site = deep.sites[0]
    uncertified = [u for u in first_site.dead_units if u not in set(first_site.certified_dead_units)]
    unit = uncertified[0]
    corner = (w[unit] > 0).float()  # the input in the box that maximises unit's pre-activation
    found["corner_preactivation"] = float(w[unit] @ corner + b[unit])
    print(f"   {first_site.name} unit {unit} is data-dead: on the input with pixels lit where its weights "
          f"are positive ({int(corner.sum())} of 64) its pre-activation is {float(w[unit] @ corner + b[unit]):.2f}")
    for name, certified_only in (("prune-dead", False), ("prune-dead --certified-only", True)):
        out = folder / f"{name.replace(' --', '-')}.pt2"
        summary = fix(str(files["model"]), str(files["calib"]), out, strategy="prune-dead",
                                 certified_only=certified_only, input_range="0,1", **quiet)
        with torch.no_grad():
            change = float((torch.export.load(str(out)).module()(corner[None]) - program(corner[None])).abs().max())
        found[name] = {"removed": summary.params_before - summary.params_after, "corner_change": change}
        print(f"   fix --{name}: {summary.params_before - summary.params_after} parameters removed; "
              f"on that input the outputs move by {change:.3g}")

    # What removing the alive but weak units costs, measured.
    for site in deep.ablation.sites:
        if site.joint is None:
            continue
        units = ", ".join(f"{u.unit} (score {u.score:.3g}, output change {u.output_change:.2%})" for u in site.units)
        print(f"4. {site.site}: {len(site.candidates)} dormant or near-dead units; zeroed together: output "
              f"change {site.joint.output_change:.2%}, argmax flips {site.joint.argmax_flips:.2%}, "
              f"loss change {site.joint.loss_change:+.4f}; one at a time: {units}")
    for eps in (1e-3, 1e-2):
        out = folder / f"near-dead-{eps:g}.pt2"
        summary = fix(str(files["model"]), str(files["calib"]), out, strategy="prune-near-dead",
                                 max_output_change=eps, **quiet)
        verified = summary.verification.to_dict()
        pruned_units = {s.site: len(s.targets) for s in summary.sites if s.action == "pruned"}
        found[f"near-dead {eps:g}"] = {"pruned": pruned_units, "output_change": verified.get("output_change")}
        print(f"   fix --prune-near-dead --max-output-change {eps:g}: pruned {pruned_units}, measured output "
              f"change {verified.get('output_change', 0.0):.3%}")
    return found


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
