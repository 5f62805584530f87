"""The acceptance test of issue 14 part 2: a digits MLP trained with plain SGD at a high learning
rate, 5 checkpoints. ``reludoctor trajectory`` must report, per hidden unit, the checkpoint where
it first died (and its current dead streak, and revivals) exactly as an independent oracle
computes them from the saved weights with plain torch matmuls, and agree with per-checkpoint
``reludoctor.scan``. Files in order and the same checkpoints as a folder give the same answer."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.trajectory.conftest import ARCH, SITES, sha256

pytestmark = pytest.mark.usefixtures("one_thread_seeded")


def oracle_dead_sets(files, x: np.ndarray) -> list[dict[str, set[int]]]:
    """Per checkpoint, per hidden layer: units whose max pre-activation over the data is <= 0."""
    import torch

    xs = torch.from_numpy(x).double()
    out = []
    for path in files:
        state = {k: v.double() for k, v in torch.load(path, weights_only=True).items()}
        h1 = xs @ state["fc1.weight"].T + state["fc1.bias"]
        h2 = torch.relu(h1) @ state["fc2.weight"].T + state["fc2.bias"]
        out.append({name: {int(u) for u in torch.nonzero(h.amax(0) <= 0).flatten()}
                    for name, h in zip(SITES, (h1, h2))})
    return out


def oracle_history(dead: list[set[int]], units: int) -> tuple[list, list, list]:
    """first_dead, died_at, revived from per-checkpoint dead sets, by the definitions."""
    n = len(dead)
    first = [next((c for c in range(n) if u in dead[c]), None) for u in range(units)]
    died = []
    for u in range(units):
        at = None
        for c in range(n - 1, -1, -1):
            if u not in dead[c]:
                break
            at = c
        died.append(at)
    revived = [u for u in range(units)
               if any(u in dead[c] and u not in dead[d] for c in range(n) for d in range(c + 1, n))]
    return first, died, revived


def test_trajectory_matches_the_oracle_and_scan(trained, cli, tmp_path):
    from reludoctor import scan

    x = np.load(trained.data)
    hashes = {p: sha256(p) for p in [*trained.files, trained.data, *trained.folder.iterdir()]}
    dead = oracle_dead_sets(trained.files, x)
    # The run is the one we want: units die, and at least one dies between checkpoints.
    assert dead[-1]["act2"], "no hidden unit died: the training set-up changed"
    first, died, revived = oracle_history([d["act2"] for d in dead], 32)
    assert any(c is not None and c > 0 for c in first)  # not all dead from the first checkpoint
    assert revived, "no unit revived: the revival path would go untested"

    by_files = cli(*trained.files, "--data", trained.data, "--arch", ARCH, "--json", tmp_path / "a.json")
    by_folder = cli(trained.folder, "--data", trained.data, "--arch", ARCH, "--json", tmp_path / "b.json", "-q")
    assert by_files.exit_code == 0, by_files.stderr
    assert by_folder.exit_code == 0, by_folder.stderr
    assert by_files.stderr.count("scanned ") == 5 and by_folder.stderr == ""
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert [c["label"] for c in b["checkpoints"]] == [f"step_{s * 25 + 50}.pt" for s in (0, 10, 20, 30, 40)]
    assert [c["sha256"] for c in a["checkpoints"]] == [hashes[p] for p in trained.files]
    assert a["sites"] == b["sites"]

    sites = {s["name"]: s for s in a["sites"]}
    assert list(sites) == list(SITES)
    for name in SITES:
        site = sites[name]
        first, died, revived = oracle_history([d[name] for d in dead], 32)
        assert site["first_dead"] == first, name
        assert site["died_at"] == died, name
        assert site["revived"] == revived, name
        assert site["dead_units"] == [sorted(d[name]) for d in dead], name
        assert site["dead_ratio"] == [len(d[name]) / 32 for d in dead], name
        assert site["tracked_from"] == 0 and site["events"] == []

    for index, path in enumerate(trained.files):  # the same as one scan per checkpoint
        report = scan(str(path), str(trained.data), arch=ARCH)
        for site in report.sites:
            assert list(site.dead_units) == sites[site.name]["dead_units"][index]
            assert site.dead_ratio == sites[site.name]["dead_ratio"][index]

    assert {p: sha256(p) for p in hashes} == hashes  # inputs untouched
