"""`reludoctor fix --prune-dead --certified-only`: only the certified dead units are pruned."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cert_models import TwoUnitsHead, calibration_for_two_units
from typer.testing import CliRunner

from reludoctor.cli import app
from reludoctor.errors import UsageError
from reludoctor.fix import fix


def _targets(summary) -> dict:
    return {s.site: s.targets for s in summary.sites}


def test_certified_only_prunes_the_certified_units_and_keeps_the_data_dead_one(tmp_path):
    pytest.importorskip("torch_pruning")
    data = calibration_for_two_units()
    everything = fix(TwoUnitsHead(), data, dry_run=True, strategy="prune-dead")
    certified = fix(TwoUnitsHead(), data, dry_run=True, strategy="prune-dead", input_range="0,1",
                    certified_only=True)
    assert _targets(everything) == {"body.act": (0, 1)}
    assert _targets(certified) == {"body.act": (0,)}
    model = TwoUnitsHead().eval()
    out = tmp_path / "pruned.pt2"
    summary = fix(model, data, out, strategy="prune-dead", input_range="0,1", certified_only=True)
    assert summary.sites[0].units_after == 2
    program = torch.export.load(out)
    unseen = torch.tensor([[0.9, 0.0, 0.0, 0.0]])  # unit 1 fires here: it was kept, so outputs agree
    all_dead = tmp_path / "all-dead.pt2"
    fix(model, data, all_dead, strategy="prune-dead")  # pruning every data-dead unit ...
    with torch.no_grad():
        assert torch.allclose(program.module()(unseen), model(unseen), atol=1e-6)
        # ... is lossless on the data, not on the domain
        assert not torch.allclose(torch.export.load(all_dead).module()(unseen), model(unseen), atol=1e-3)


def test_certified_only_needs_prune_dead_and_an_input_range():
    data = calibration_for_two_units()
    with pytest.raises(UsageError, match="--certified-only"):
        fix(TwoUnitsHead(), data, dry_run=True, strategy="prune-dead", certified_only=True)
    with pytest.raises(UsageError, match="--certified-only"):
        fix(TwoUnitsHead(), data, dry_run=True, strategy="reinit", input_range="0,1", certified_only=True)


def test_cli_certified_only(tmp_path):
    pytest.importorskip("torch_pruning")
    from torch.export import Dim

    x = calibration_for_two_units()
    np.save(tmp_path / "x.npy", x.numpy())
    torch.export.save(torch.export.export(TwoUnitsHead().eval(), (x[:2],), dynamic_shapes=({0: Dim("batch")},)),
                      tmp_path / "m.pt2")
    result = CliRunner().invoke(app, ["fix", str(tmp_path / "m.pt2"), "--data", str(tmp_path / "x.npy"),
                                      "--prune-dead", "--certified-only", "--input-range", "0,1",
                                      "--dry-run", "--summary", "-"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["sites"][0]["targets"] == [0]
