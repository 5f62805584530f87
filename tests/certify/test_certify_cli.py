"""`reludoctor scan --input-range`: the option on a .pt2 file, the imagenet preset, and bad
values refused with exit 2 and one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cert_models import SmallCNN, TwoUnits, calibration_for_two_units
from typer.testing import CliRunner

from reludoctor.cli import app
from reludoctor.report.schema import validate


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    from torch.export import Dim

    root = tmp_path_factory.mktemp("certify")
    x = calibration_for_two_units()
    np.save(root / "x.npy", x.numpy())
    torch.export.save(torch.export.export(TwoUnits().eval(), (x[:2],), dynamic_shapes=({0: Dim("batch")},)),
                      root / "two.pt2")
    images = torch.rand(16, 3, 8, 8)
    np.save(root / "images.npy", images.numpy())
    torch.export.save(torch.export.export(SmallCNN().eval(), (images[:2],), dynamic_shapes=({0: Dim("batch")},)),
                      root / "cnn.pt2")
    return root


def invoke(*args):
    return CliRunner().invoke(app, ["scan", *map(str, args)], env={"COLUMNS": "200"})


def test_input_range_in_the_table_and_the_json(files, tmp_path):
    out = tmp_path / "r.json"
    result = invoke(files / "two.pt2", "--data", files / "x.npy", "--input-range", "0,1", "--json", out, "-q")
    assert result.exit_code == 0, result.stderr
    assert "cert" in result.stdout
    assert "certified dead (input range 0,1): 1 of 2 dead units" in result.stdout
    report = json.loads(out.read_text())
    validate(report)
    assert report["sites"][0]["dead_units"] == [0, 1]
    assert report["sites"][0]["certified_dead_units"] == [0]


def test_imagenet_preset(files):
    result = invoke(files / "cnn.pt2", "--data", files / "images.npy", "--input-range", "imagenet", "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["certification"]["input_range"]["spec"] == "imagenet"
    assert report["certification"]["input_range"]["low"][0] == pytest.approx(-0.485 / 0.229)
    assert report["certification"]["input_range"]["high"][2] == pytest.approx((1 - 0.406) / 0.225)
    assert {0, 1} <= set(next(s for s in report["sites"] if s["name"] == "stem.2")["certified_dead_units"])


def test_without_input_range_no_certification_in_the_output(files):
    result = invoke(files / "two.pt2", "--data", files / "x.npy", "--format", "json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert "certification" not in report
    assert "certified_dead_units" not in report["sites"][0]


@pytest.mark.parametrize("bad", ["1,0", "a,b", "0", "inf,1"])
def test_bad_values_exit_2_with_one_line(files, bad):
    result = invoke(files / "two.pt2", "--data", files / "x.npy", "--input-range", bad)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].lstrip().startswith("hint")), result.stderr
    assert "--input-range" in lines[0]
    assert "Traceback" not in result.stderr
