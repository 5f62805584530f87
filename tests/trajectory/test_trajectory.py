"""The trajectory's pieces: natural order of a folder, sites that change between checkpoints
(resized, renamed), the JSON (schema, round trip), the HTML page and the terminal table."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from rich.console import Console

from reludoctor.report.schema import TRAJECTORY_SCHEMA_FILE, validate
from reludoctor.report.trajectory import Trajectory
from reludoctor.trajectory import checkpoint_files, natural_key, trajectory

try:
    import jsonschema  # noqa: F401

    VALIDATORS = [True, False]  # the jsonschema package, and the built-in fallback checker
except ImportError:  # pragma: no cover
    VALIDATORS = [False]

pytestmark = pytest.mark.usefixtures("one_thread_seeded")


def test_natural_order():
    names = ["ckpt_10.pt", "ckpt_2.pt", "ckpt_1.pt", "Ckpt_3.pt", "ckpt_02.pt", "ckpt_final.pt"]
    assert sorted(names, key=natural_key) == ["ckpt_1.pt", "ckpt_02.pt", "ckpt_2.pt", "Ckpt_3.pt",
                                              "ckpt_10.pt", "ckpt_final.pt"]


def test_a_folder_is_read_in_natural_order(trained, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    for name, source in zip(["ckpt_10.pt", "ckpt_2.pt", "ckpt_1.pt"], trained.files):
        shutil.copyfile(source, folder / name)
    (folder / ".DS_Store").write_bytes(b"hidden: skipped")
    assert [p.name for p in checkpoint_files([folder])] == ["ckpt_1.pt", "ckpt_2.pt", "ckpt_10.pt"]
    assert [p.name for p in checkpoint_files([folder / "ckpt_10.pt", folder / "ckpt_1.pt"])] == [
        "ckpt_10.pt", "ckpt_1.pt"]  # files keep the order they are given in


def _planted(tmp_path, name: str, hidden: int, second: str, dead: list[int]):
    """An exported MLP whose first ReLU (``act``, ``hidden`` units) has ``dead`` units planted
    (bias -100) and whose second ReLU module is called ``second`` (a rename between checkpoints)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Module()
    model.fc = nn.Linear(4, hidden)
    model.act = nn.ReLU()
    setattr(model, second, nn.Sequential(nn.Linear(hidden, 3), nn.ReLU()))

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc, self.act = model.fc, model.act
            setattr(self, second, getattr(model, second))
            self.second = second

        def forward(self, x):
            return getattr(self, self.second)(self.act(self.fc(x)))

    net = Net().eval()
    with torch.no_grad():
        net.fc.bias[dead] = -100.0
    path = tmp_path / f"{name}.pt2"
    example = (torch.randn(2, 4),)
    torch.export.save(torch.export.export(net, example, dynamic_shapes=({0: torch.export.Dim("batch")},)), path)
    return path


@pytest.fixture(scope="module")
def changing(tmp_path_factory) -> Trajectory:
    """Three .pt2 checkpoints: ``act`` dead units {1} -> {1, 3} -> resized to 5 units with {0};
    the second block renamed from ``head`` to ``tail`` at the third."""
    tmp_path = tmp_path_factory.mktemp("changing")
    files = [_planted(tmp_path, "c0", 6, "head", [1]), _planted(tmp_path, "c1", 6, "head", [1, 3]),
             _planted(tmp_path, "c2", 5, "tail", [0])]
    data = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    return trajectory(files, data, on_warning=lambda message: None)


def test_resized_and_renamed_sites(changing):
    sites = {s.name: s for s in changing.sites}
    act = sites["act"]
    assert [e.change for e in act.events] == ["resized"] and act.events[0].checkpoint == 2
    assert act.tracked_from == 2 and act.units == 5
    assert act.first_dead == (2, None, None, None, None)  # indices before the resize mean other units
    assert act.died_at == (2, None, None, None, None) and act.died == 0
    assert act.dead_units[:2] == ((1,), (1, 3)) and act.dead_ratio[:2] == (1 / 6, 2 / 6)
    head = next(s for name, s in sites.items() if name.startswith("head"))
    tail = next(s for name, s in sites.items() if name.startswith("tail"))
    assert [(e.checkpoint, e.change) for e in head.events] == [(2, "removed")]
    assert head.dead_ratio[2] is None and head.dead_units[2] is None
    assert [(e.checkpoint, e.change) for e in tail.events] == [(2, "added")]
    assert tail.dead_ratio[:2] == (None, None) and tail.tracked_from == 2
    assert [s.name for s in changing.sites][-1] == head.name  # absent at the end: listed last


@pytest.mark.parametrize("use_jsonschema", VALIDATORS)
def test_json_validates_and_round_trips(changing, use_jsonschema):
    text = changing.to_json()
    data = json.loads(text)
    validate(data, use_jsonschema=use_jsonschema, schema_file=TRAJECTORY_SCHEMA_FILE)
    assert Trajectory.from_dict(data) == changing
    assert Trajectory.from_dict(data).to_json() == text
    broken = json.loads(text)
    broken["sites"][0]["events"][0]["change"] = "renamed"
    with pytest.raises(ValueError, match="trajectory schema"):
        validate(broken, use_jsonschema=use_jsonschema, schema_file=TRAJECTORY_SCHEMA_FILE)
    # what a schema cannot say: one value per checkpoint, one per unit
    for site in data["sites"]:
        assert len(site["dead_ratio"]) == len(site["dead_units"]) == len(data["checkpoints"])
        assert len(site["first_dead"]) == len(site["died_at"]) == site["units"]


def test_html_page_has_the_plots(changing):
    from reludoctor.reporters.trajectory import render_html

    page = render_html(changing)
    assert page.startswith("<!DOCTYPE html>") and "<script" not in page
    assert page.count("<svg") == 2
    assert 'id="plot-curves"' in page and 'id="plot-units"' in page
    assert render_html(changing) == page  # deterministic


def test_terminal_table_lists_every_site(changing):
    from reludoctor.reporters.trajectory import print_table

    console = Console(width=200, record=True, color_system=None)
    print_table(changing, console)
    text = console.export_text()
    for site in changing.sites:
        assert site.name in text
    assert "#1" in text and "#3" in text and "resized at c2.pt2" in text


def _made_up(sites: int, checkpoints: int) -> Trajectory:
    """A trajectory written by hand: site k has k dead units out of 20 at the last checkpoint."""
    from reludoctor.report.model import CalibrationInfo
    from reludoctor.report.trajectory import Checkpoint, SiteTrajectory

    marks = tuple(Checkpoint(None, None, f"c{i}") for i in range(checkpoints))
    made = []
    for k in range(sites):
        last = tuple(range(min(k, 20)))
        dead = ((),) * (checkpoints - 1) + (last,)
        made.append(SiteTrajectory(
            name=f"s{k}", op="relu", units=20, tracked_from=0,
            dead_ratio=tuple(len(d) / 20 for d in dead), dead_units=dead,
            first_dead=tuple(checkpoints - 1 if u in last else None for u in range(20)),
            died_at=tuple(checkpoints - 1 if u in last else None for u in range(20)), revived=()))
    return Trajectory({"name": "reludoctor", "version": "0"}, marks, CalibrationInfo("x", 1, False, 1), tuple(made))


def test_many_sites_and_checkpoints_are_chosen_not_crammed():
    from reludoctor.reporters import trajectory_plots
    from reludoctor.reporters.trajectory import render_html, shown_checkpoints

    assert shown_checkpoints(5) == [0, 1, 2, 3, 4]
    columns = shown_checkpoints(31)
    assert len(columns) == 10 and columns[0] == 0 and columns[-1] == 30
    many = _made_up(15, 3)
    drawn = trajectory_plots.curve_sites(many)
    assert [s.name for s in drawn] == [f"s{k}" for k in range(3, 15)]  # the 12 where most died, in order
    assert [s.name for s in trajectory_plots.heatmap_sites(many)] == ["s14", "s13", "s12", "s11"]
    assert "the 12 sites where most units died" in render_html(many)
    assert trajectory_plots.heatmap(_made_up(1, 2)) is None  # no unit ever dead: no map
