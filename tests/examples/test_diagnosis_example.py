"""The example of docs/diagnosis.md ("one model, three verdicts") runs, and what the page says it
shows holds, checked against plain torch on the same files (not against the report alone)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[2] / "docs" / "examples" / "diagnosis_in_depth.py"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    spec = importlib.util.spec_from_file_location("diagnosis_in_depth", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    threads = torch.get_num_threads()
    folder = tmp_path_factory.mktemp("diagnosis")
    try:
        found = module.main(folder)
    finally:
        torch.set_num_threads(threads)
    return folder, found


def _fired(folder: Path, x: np.ndarray) -> list[np.ndarray]:
    """Per hidden layer, per unit: whether it fired on any row of x (plain matmuls)."""
    module = torch.export.load(str(folder / "model.pt2")).module()
    h = torch.from_numpy(x)
    out = []
    with torch.no_grad():
        for layer in (module.fc1, module.fc2):
            pre = h @ layer.weight.T + layer.bias
            out.append((pre > 0).any(0).numpy())
            h = pre.clamp(min=0)
    return out


def test_slices_show_what_the_new_data_alone_calls_dead(example):
    folder, found = example
    x, y = np.load(folder / "calib.npy"), np.load(folder / "labels.npy")
    old_fired, new_fired = _fired(folder, x[y < 5]), _fired(folder, x[y >= 5])
    for index, (first, deep) in enumerate(zip(found["first"].sites, found["deep"].sites)):
        assert set(first.dead_units) == set(np.flatnonzero(~new_fired[index]))
        assert set(deep.dead_units) == set(np.flatnonzero(~new_fired[index] & ~old_fired[index]))
        old_only = {u.unit for u in deep.slices.specialised_units if tuple(u.alive_on) == (0,)}
        assert old_only == set(np.flatnonzero(~new_fired[index] & old_fired[index]))
    assert sum(len(f.dead_units) - len(d.dead_units) for f, d in zip(found["first"].sites, found["deep"].sites)) > 0
    # pruning what the new data calls dead costs the old task, not the new one
    accuracy = found["accuracy"]
    assert accuracy[("old", "pruned")] < accuracy[("old", "original")] - 0.05
    assert accuracy[("new", "pruned")] == accuracy[("new", "original")]


def test_certified_units_are_safe_everywhere_the_data_dead_ones_are_not(example):
    _, found = example
    for site in found["deep"].sites:
        assert set(site.certified_dead_units) <= set(site.dead_units)
    certified = sum(len(s.certified_dead_units) for s in found["deep"].sites)
    dead = sum(len(s.dead_units) for s in found["deep"].sites)
    assert 0 < certified < dead
    assert found["corner_preactivation"] > 0  # a data-dead unit fires on an input in the box
    assert found["prune-dead"]["corner_change"] > 1e-2
    assert found["prune-dead --certified-only"]["corner_change"] < 1e-5
    assert found["prune-dead --certified-only"]["removed"] < found["prune-dead"]["removed"]


def test_measured_ablation_decides_the_near_dead_pruning(example):
    _, found = example
    dead = {s.name: len(s.dead_units) for s in found["deep"].sites}
    joint = {a.site: a.joint for a in found["deep"].ablation.sites if a.joint is not None}
    assert joint, "the example needs a site with alive dormant or near-dead units"
    tight, loose = found["near-dead 0.001"], found["near-dead 0.01"]
    assert tight["pruned"] == {name: count for name, count in dead.items() if count}
    for name, change in joint.items():
        assert 1e-3 < change.output_change <= 1e-2
        assert loose["pruned"][name] > dead[name]
    assert loose["output_change"] <= 1e-2
