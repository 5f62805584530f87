"""The ablation section in every format, the schema, the CLI end to end, ONNX's note."""

from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
from ablation_models import CNN, MLP, change, cnn_data, export_to, mlp_data, scores

import reludoctor
from reludoctor.core.ablation import candidates
from reludoctor.report.model import Report
from reludoctor.report.schema import ReportValidationError, validate

TERMINAL_ENV = ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR")


@pytest.fixture(scope="module")
def files(tmp_path_factory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("ablation-cli")
    x = mlp_data()
    np.save(root / "x.npy", x)
    export_to(MLP(), x, root / "mlp.pt2")
    return root


@pytest.fixture(scope="module")
def report() -> Report:
    return reludoctor.scan(MLP(), mlp_data(), ablate=True, near_dead=0.1, ablate_top=2)


def _cli(*args: object):  # noqa: ANN202
    from typer.testing import CliRunner

    from reludoctor.cli import app

    env = {name: None for name in TERMINAL_ENV}
    env["COLUMNS"] = "200"
    return CliRunner().invoke(app, [*map(str, args)], env=env)


@pytest.mark.parametrize("jsonschema", [True, False])
def test_the_section_validates_and_round_trips(report, jsonschema):
    if jsonschema:
        pytest.importorskip("jsonschema")
    data = report.to_dict()
    assert set(data["ablation"]) >= {"computed", "top_k", "forwards_per_batch", "method", "loss", "samples",
                                     "sites_ablated", "metrics", "sites", "note"}
    assert set(data["ablation"]["metrics"]) == {"output_change", "max_abs_change", "argmax_flips", "loss_change",
                                                "score"}
    validate(data, use_jsonschema=jsonschema)
    assert Report.from_dict(json.loads(report.to_json())).ablation == report.ablation
    broken = copy.deepcopy(data)
    broken["ablation"]["sites"][0]["joint"]["argmax_flips"] = 2.0
    with pytest.raises(ReportValidationError):
        validate(broken, use_jsonschema=jsonschema)


def test_a_scan_without_ablate_has_no_ablation_key():
    data = reludoctor.scan(MLP(), mlp_data(), near_dead=0.1).to_dict()
    assert "ablation" not in data
    assert Report.from_dict(data).ablation is None


def test_every_format_shows_the_section(report):
    from reludoctor.reporters import html, markdown, terminal
    from reludoctor.reporters.common import RenderOptions

    text = terminal.render(report, RenderOptions(width=160))
    assert "ablation (export, 90 samples" in text and "zeroed together" in text
    assert "zeroed one at a time" in text and "act1" in text
    md = markdown.render(report)
    assert "### Measured ablation" in md and "| site | unit | score |" in md
    page = html.render(report)
    assert 'id="ablation"' in page and "Measured ablation" in page
    plain = reludoctor.scan(MLP(), mlp_data(), near_dead=0.1)
    assert "ablation" not in terminal.render(plain, RenderOptions(width=160))
    assert "Measured ablation" not in markdown.render(plain) + html.render(plain)


def test_cli_end_to_end(files, tmp_path):
    out = tmp_path / "r.json"
    result = _cli("scan", files / "mlp.pt2", "-d", files / "x.npy", "--ablate", "--ablate-top", "1",
                  "--near-dead", "0.1", "--json", out, "--markdown", tmp_path / "r.md", "-q")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    act1 = data["ablation"]["sites"][0]
    assert act1["site"] == "act1" and act1["candidates"] == [0, 1, 3, 4] and len(act1["units"]) == 1
    assert "Measured ablation" in (tmp_path / "r.md").read_text()
    assert "zeroed together" in result.stdout


@pytest.mark.parametrize("args, contains", [
    (("--ablate-top", "-1", "--ablate"), "--ablate-top -1 must be at least 0"),
    (("--ablate-sites", "act1"), "--ablate-sites is for --ablate"),
])
def test_cli_refuses_bad_ablation_options(files, args, contains):
    result = _cli("scan", files / "mlp.pt2", "-d", files / "x.npy", "-q", *args)
    assert result.exit_code == 2 and contains in result.output and "Traceback" not in result.output


def _onnx(model, x, path):
    import torch

    with warnings.catch_warnings():  # the TorchScript-based exporter's deprecation notices
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x[:2]),), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n"}}, opset_version=17)  # onnx2torch converts up to 17
    return str(path)


@pytest.mark.parametrize("make, data", [(MLP, mlp_data), (CNN, cnn_data)])
def test_onnx_models_are_ablated_through_onnx2torch(tmp_path, make, data):
    """The ONNX export of a model: the same changes as zeroing the torch model's units by hand."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx2torch")
    model, x = make(), data()
    report = reludoctor.scan(_onnx(model, x, tmp_path / "m.onnx"), x, ablate=True, ablate_top=2, near_dead=0.1,
                             batch_size=8)
    ablation = report.ablation
    assert ablation.computed and ablation.method == "onnx2torch" and ablation.samples == len(x)
    checked = 0
    for site, module, measured in zip(report.sites, ("act1", "act2"), ablation.sites):
        assert measured.site == site.name and measured.candidates == candidates(site)
        if measured.joint is None:
            continue
        expected = change(model, x, module, list(measured.candidates))
        assert measured.joint.output_change == pytest.approx(expected["output_change"], rel=1e-4, abs=1e-7)
        assert measured.joint.argmax_flips == pytest.approx(expected["argmax_flips"])
        oracle = scores(model, x, module)
        for unit in measured.units:
            assert unit.score == pytest.approx(oracle[unit.unit], rel=1e-3, abs=1e-8)
            single = change(model, x, module, [unit.unit])
            assert unit.output_change == pytest.approx(single["output_change"], rel=1e-4, abs=1e-7)
            checked += 1
    assert checked >= 2
    validate(report.to_dict())


def test_onnx_without_onnx2torch_gets_a_note(tmp_path, monkeypatch):
    import sys

    pytest.importorskip("onnxruntime")
    x = mlp_data()
    path = _onnx(MLP(), x, tmp_path / "mlp.onnx")
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # as if not installed
    report = reludoctor.scan(path, x, ablate=True, near_dead=0.1)
    assert report.ablation.computed is False
    assert "onnx2torch is not installed" in report.ablation.note
    validate(report.to_dict())
    from reludoctor.reporters import terminal

    assert "onnx2torch is not installed" in terminal.render(report)
