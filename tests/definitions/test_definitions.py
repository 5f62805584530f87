"""Definitions from the literature (scan --definitions) against an independent oracle
(defs_oracle.py: forward hooks, retain_grad, numpy), at their thresholds' boundaries, in the
JSON (schema, round trip, absent keys) and on the command line."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn as nn
from defs_oracle import flagged, oracle

from reludoctor import scan
from reludoctor.core import definitions
from reludoctor.errors import UsageError
from reludoctor.options import ScanOptions
from reludoctor.report.model import Report
from reludoctor.report.schema import validate

SAMPLES = 200
# Units of the designed MLP's first site: positive count over SAMPLES (unit j fires where x_j = 1)
FIRES = {0: 1, 1: 2, 2: 0, 3: 20, 4: 19}  # 0.5% (Dohare), exactly 1% (not), dead, APoZ exactly 0.9 (not), 0.905


def designed_mlp() -> tuple[nn.Module, np.ndarray]:
    """ReLU over the identity minus 0.5, so unit j fires exactly where x_j = 1 (FIRES times;
    unit 5 on normal data), then ReLU6 with one always-saturated and one dead unit."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU6(), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.eye(6))
        model[0].bias.fill_(-0.5)
        model[2].bias[0] = 100.0  # always at 6: APoZ 0 (zeros are the lower bound, not the upper)
        model[2].bias[1] = -100.0  # never above 0: APoZ 1
    x = np.zeros((SAMPLES, 6), dtype=np.float32)
    for unit, count in FIRES.items():
        x[np.arange(count) * 7 % SAMPLES, unit] = 1.0
    x[:, 5] = np.random.default_rng(0).standard_normal(SAMPLES)
    return model, x


def small_cnn() -> tuple[nn.Module, np.ndarray]:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3), nn.ReLU6(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        model[0].bias[0] = -100.0  # dead channel
    x = np.random.default_rng(1).standard_normal((40, 2, 8, 8)).astype(np.float32)
    return model, x


def _check_against_oracle(report: Report, model: nn.Module, x: np.ndarray, apoz_threshold: float,
                          grama_tau: float, unit_axis: int = 1) -> None:
    expected = oracle(model, x, unit_axis)
    assert len(report.sites) == len(expected)
    for site, want in zip(report.sites, expected):
        d = site.definitions
        assert d.redo_tau_dormant.units == tuple(site.dormant_units)
        assert list(d.redo_tau_dormant.units) == flagged(want.redo_score <= report.thresholds.dormant_tau)
        assert list(d.dohare_rarely_active.units) == flagged(want.rate < 0.01)
        np.testing.assert_allclose(d.apoz.per_unit, want.apoz, rtol=0, atol=1e-12)
        assert list(d.apoz.units) == flagged(want.apoz > apoz_threshold)
        # the gradient pass's per-unit accumulator itself, then GraMa's normalisation of it
        np.testing.assert_allclose(site.gradient.unit_abs_output, want.grad_abs_mean, rtol=1e-6, atol=1e-12)
        np.testing.assert_allclose(d.grama.per_unit, want.grama_score, rtol=1e-6, atol=1e-9)
        assert list(d.grama.units) == flagged(want.grama_score <= grama_tau)
        assert (d.apoz.threshold, d.grama.threshold, d.dohare_rarely_active.threshold) == \
            (apoz_threshold, grama_tau, 0.01)


def test_mlp_every_definition_against_the_oracle_and_at_the_boundaries():
    model, x = designed_mlp()
    report = scan(model, data=x, definitions=True, gradients=True, batch_size=32, on_warning=lambda m: None)
    _check_against_oracle(report, model, x, 0.9, 0.025)
    first, second = report.sites[0].definitions, report.sites[1].definitions
    # rate 1/200 and 0 are below 1%; 2/200 is exactly 1%: not "fewer than 1%"
    assert first.dohare_rarely_active.units == (0, 2)
    # APoZ 0.995, 0.99, 1, 0.905 above 0.9; unit 3 at exactly 0.9 is not
    assert first.apoz.units == (0, 1, 2, 4)
    # the unit firing on 0.5% of positions: alive for ReDo (its output, when it fires, is not tiny)
    assert first.redo_tau_dormant.units == (2,)
    # ReLU6: the dead unit's zeros count, the always-saturated unit (output 6) has APoZ 0
    assert second.apoz.per_unit[1] == 1.0 and second.apoz.per_unit[0] == 0.0
    assert 1 in second.apoz.units and 0 not in second.apoz.units


def test_cnn_with_relu6_against_the_oracle_at_other_thresholds():
    model, x = small_cnn()
    report = scan(model, data=x, definitions=True, gradients=True, apoz_threshold=0.5, grama_tau=0.5,
                  batch_size=16, on_warning=lambda m: None)
    _check_against_oracle(report, model, x, 0.5, 0.5)
    assert 0 in report.sites[0].definitions.apoz.units  # the dead channel


def test_sequence_units_on_the_last_axis_against_the_oracle():
    """[N, T, F]: the units are the features (last axis); per-unit gradients sum over N and T."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval()
    x = np.random.default_rng(2).standard_normal((24, 6, 5)).astype(np.float32)
    report = scan(model, data=x, definitions=True, gradients=True, apoz_threshold=0.6, grama_tau=0.8,
                  batch_size=10, on_warning=lambda m: None)
    assert report.sites[0].units == 7
    _check_against_oracle(report, model, x, 0.6, 0.8, unit_axis=2)


def test_summary_counts_and_ratios_over_every_site():
    model, x = small_cnn()
    report = scan(model, data=x, definitions=True, gradients=True, apoz_threshold=0.5, grama_tau=0.5,
                  on_warning=lambda m: None)
    units = sum(s.units for s in report.sites)
    for key in definitions.NAMES:
        count = sum(len(getattr(s.definitions, key).units) for s in report.sites)
        total = getattr(report.definitions, key)
        assert (total.units, total.ratio) == (count, count / units)
    assert report.definitions.redo_tau_dormant.units == report.summary.dormant_units
    assert report.definitions.grama_reason is None


def test_grama_tau_boundary_in_the_pure_derivation():
    model, x = designed_mlp()
    site = scan(model, data=x, gradients=True, on_warning=lambda m: None).sites[0]
    site = replace(site, gradient=replace(site.gradient, unit_abs_output=(0.5, 1.0, 1.0, 1.0, 1.0, 1.5)))
    assert definitions.grama(site, 0.5).units == (0,)  # score 0.5 <= tau 0.5
    assert definitions.grama(site, math.nextafter(0.5, 0)).units == ()
    assert definitions.grama(site, 1.0).units == (0, 1, 2, 3, 4)
    silent = replace(site, gradient=replace(site.gradient, unit_abs_output=(0.0,) * 6))
    assert definitions.grama(silent, 0.0).units == tuple(range(6))  # a layer without gradient: all flagged


def test_grama_is_null_without_gradients_with_the_reason():
    model, x = designed_mlp()
    report = scan(model, data=x, definitions=True, on_warning=lambda m: None)
    assert all(s.definitions.grama is None for s in report.sites)
    assert report.definitions.grama is None
    assert report.definitions.grama_reason == "needs --gradients"
    data = report.to_dict()
    assert data["definitions"]["grama"] is None and data["sites"][0]["definitions"]["grama"] is None
    validate(data)


def test_json_schema_and_round_trip():
    model, x = small_cnn()
    report = scan(model, data=x, definitions=True, gradients=True, on_warning=lambda m: None)
    data = json.loads(report.to_json())
    validate(data)
    validate(data, use_jsonschema=False)
    assert set(data["definitions"]) == {*definitions.NAMES, "grama_reason"}
    assert set(data["sites"][0]["definitions"]) == set(definitions.NAMES)
    assert set(data["sites"][0]["definitions"]["apoz"]) == {"threshold", "units", "per_unit"}
    assert "unit_abs_output" not in data["sites"][0]["gradient"]  # per-unit gradients: in grama only
    back = Report.from_dict(data)
    assert back == report
    assert back.to_dict() == data


def test_keys_absent_without_definitions():
    model, x = small_cnn()
    report = scan(model, data=x, gradients=True, on_warning=lambda m: None)
    data = report.to_dict()
    assert "definitions" not in data
    assert all("definitions" not in site for site in data["sites"])
    assert all("unit_abs_output" not in site["gradient"] for site in data["sites"])
    assert all(site.gradient.unit_abs_output is None for site in report.sites)  # not even accumulated
    validate(data)


@pytest.mark.parametrize("settings, option", [
    ({"apoz_threshold": 1.0}, "--apoz-threshold"), ({"apoz_threshold": -0.1}, "--apoz-threshold"),
    ({"apoz_threshold": math.nan}, "--apoz-threshold"), ({"grama_tau": -1.0}, "--grama-tau"),
    ({"grama_tau": math.inf}, "--grama-tau"),
])
def test_bad_thresholds_are_refused(settings, option):
    with pytest.raises(UsageError, match=option):
        ScanOptions(**settings).check()


# ----------------------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("definitions-cli")
    model, x = designed_mlp()
    example = (torch.from_numpy(x[:2]),)
    program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, root / "mlp.pt2")
    np.save(root / "x.npy", x)
    return root


def _invoke(*args):
    from typer.testing import CliRunner

    from reludoctor.cli import app

    env = {"COLUMNS": "200", "TTY_COMPATIBLE": None, "TTY_INTERACTIVE": None, "FORCE_COLOR": None,
           "NO_COLOR": None}
    return CliRunner().invoke(app, ["scan", *map(str, args)], env=env)


def test_cli_definitions_end_to_end(files, tmp_path):
    out = tmp_path / "report.json"
    result = _invoke(files / "mlp.pt2", "--data", files / "x.npy", "--definitions", "--gradients",
                     "--json", out, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "definitions from the literature" in result.stdout
    assert "Dohare: rate < 0.01" in result.stdout and "APoZ: zeros > 0.9" in result.stdout
    data = json.loads(out.read_text())
    validate(data)
    assert data["sites"][0]["definitions"]["dohare_rarely_active"]["units"] == [0, 2]
    assert data["definitions"]["grama"] is not None


def test_cli_without_gradients_names_the_reason(files):
    result = _invoke(files / "mlp.pt2", "--data", files / "x.npy", "--definitions", "--quiet")
    assert result.exit_code == 0, result.stderr
    assert "GraMa: needs --gradients" in result.stdout


@pytest.mark.parametrize("args", [("--apoz-threshold", "1.5"), ("--grama-tau", "-1"), ("--apoz-threshold", "nan")])
def test_cli_bad_thresholds_exit_2_with_one_line(files, args):
    result = _invoke(files / "mlp.pt2", "--data", files / "x.npy", "--definitions", *args)
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and args[0] in lines[0], result.stderr


@pytest.mark.parametrize("pointer, cls", [
    ("$defs/site_definitions", "SiteDefinitions"), ("$defs/site_definition", "SiteDefinition"),
    ("$defs/definitions", "Definitions"), ("$defs/definition_count", "DefinitionCount"),
])
def test_schema_describes_and_requires_every_field(pointer, cls):
    import dataclasses

    from reludoctor.report import model as report_module
    from reludoctor.report.schema import load_schema

    node = load_schema()
    for part in pointer.split("/"):
        node = node[part]
    fields = {f.name for f in dataclasses.fields(getattr(report_module, cls))}
    assert set(node["required"]) == set(node["properties"]) == fields


def test_markdown_and_html_tables():
    from reludoctor.reporters import html, markdown, terminal

    model, x = designed_mlp()
    report = scan(model, data=x, definitions=True, on_warning=lambda m: None)
    md = markdown.render(report)
    assert "### Definitions from the literature" in md
    assert "| `1` | 1 | 2 | 4 | - |" in md
    assert "| **all sites** | 2 (18.2%) | 3 (27.3%) | 5 (45.5%) | - |" in md  # of 11 units
    assert "GraMa: needs --gradients" in md
    page = html.render(report)
    assert 'id="definitions"' in page and "<td><b>all sites</b></td>" in page
    plain = scan(model, data=x, on_warning=lambda m: None)
    assert "Definitions" not in markdown.render(plain) and 'id="definitions"' not in html.render(plain)
    assert "definitions from the literature" not in terminal.render(plain)
