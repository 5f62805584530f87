"""fix --prune-near-dead --max-output-change EPS: the units pruned are those whose measured joint
removal fits, the written model's change (checked here with plain torch) stays within EPS."""

from __future__ import annotations

import json
from typing import Callable

import numpy as np
import pytest
import torch
from ablation_models import FixMLP, export_to, mlp_data, outputs, zeroed

TERMINAL_ENV = ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR")
pytest.importorskip("torch_pruning")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):  # noqa: ANN201
    root = tmp_path_factory.mktemp("near-dead")
    model, x = FixMLP(), mlp_data(120)
    np.save(root / "x.npy", x)
    export_to(model, x, root / "mlp.pt2")
    return model, x, root


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable:
    from typer.testing import CliRunner

    from reludoctor.cli import app

    def invoke(*args: object):
        env = {name: None for name in TERMINAL_ENV}
        env["COLUMNS"] = "200"
        return CliRunner().invoke(app, ["fix", *map(str, args)], env=env)

    return invoke


def _fix(cli, planted, eps, *extra):  # noqa: ANN001, ANN202
    model, x, root = planted
    out, summary = root / f"out-{eps}.pt2", root / f"summary-{eps}.json"
    result = cli(root / "mlp.pt2", "-d", root / "x.npy", "-o", out, "--prune-near-dead",
                 "--max-output-change", eps, "--summary", summary, "--force", *extra)
    assert result.exit_code == 0, result.output
    data = json.loads(summary.read_text())
    return data, {s["site"]: s for s in data["sites"]}, torch.export.load(str(out)).module()


def _relative(model, x, program_module) -> float:  # noqa: ANN001
    y = outputs(model, x)
    with torch.no_grad():
        z = program_module(torch.from_numpy(x)).double()
    return float((z - y).norm() / y.norm())


def test_prunes_the_sites_whose_near_dead_units_fit(cli, planted):
    model, x, _ = planted
    data, sites, fixed = _fix(cli, planted, 0.01)
    assert data["strategy"] == "prune-near-dead"
    assert sites["act1"]["action"] == "pruned" and sites["act1"]["targets"] == [2, 3, 4]
    assert sites["act3"]["action"] == "pruned" and sites["act3"]["targets"] == [0, 1, 8, 9]
    # act2's rarely-firing units change the outputs by ~0.06 > 0.01: only its dead unit goes
    assert sites["act2"]["targets"] == [5] and "> 0.01" in sites["act2"]["reason"]
    oracle = zeroed(model, x, {"act1": [2, 3, 4], "act3": [0, 1, 8, 9]})
    with torch.no_grad():
        got = fixed(torch.from_numpy(x)).double()
    assert torch.allclose(got, oracle, atol=1e-5)
    measured = _relative(model, x, fixed)
    v = data["verification"]
    assert v["max_output_change"] == 0.01 and v["output_change"] <= 0.01
    assert v["output_change"] == pytest.approx(measured, rel=1e-3)
    assert data["params"]["after"] < data["params"]["before"]


def test_too_small_a_limit_prunes_no_near_dead_unit(cli, planted):
    model, x, _ = planted
    data, sites, fixed = _fix(cli, planted, 1e-9)
    assert {name: s["targets"] for name, s in sites.items()} == {"act1": [2], "act2": [5], "act3": [8, 9]}
    assert all("kept" in s["reason"] for s in sites.values())
    assert data["verification"]["equal"] and data["verification"]["lossless_expected"]
    assert _relative(model, x, fixed) < 1e-6


def test_sites_that_fit_alone_but_not_together_drop_the_costliest(cli, planted):
    import reludoctor

    model, x, root = planted
    report = reludoctor.scan(str(root / "mlp.pt2"), str(root / "x.npy"), ablate=True, ablate_top=0)
    joint = {s.site: s.joint.output_change for s in report.ablation.sites if s.joint is not None}
    both = float((zeroed(model, x, {"act1": [3, 4], "act3": [0, 1]}) - outputs(model, x)).norm()
                 / outputs(model, x).norm())
    assert max(joint["act1"], joint["act3"]) < both
    eps = (max(joint["act1"], joint["act3"]) + both) / 2
    data, sites, fixed = _fix(cli, planted, eps)
    costly, cheap = ("act3", "act1") if joint["act3"] > joint["act1"] else ("act1", "act3")
    dead = {"act1": [2], "act3": [8, 9]}
    assert sites[costly]["targets"] == dead[costly] and "with the other sites pruned" in sites[costly]["reason"]
    assert sites[cheap]["targets"] == sorted(dead[cheap] + ([3, 4] if cheap == "act1" else [0, 1]))
    assert _relative(model, x, fixed) <= eps
    assert data["verification"]["output_change"] <= eps


@pytest.mark.parametrize("args, contains", [
    (("--prune-near-dead",), "needs --max-output-change"),
    (("--prune-near-dead", "--max-output-change", "0"), "must be a finite number > 0"),
    (("--prune-near-dead", "--max-output-change", "-1"), "must be a finite number > 0"),
    (("--prune-near-dead", "--max-output-change", "nan"), "must be a finite number > 0"),
    (("--prune-dead", "--max-output-change", "0.1"), "only for --prune-near-dead"),
    (("--prune-dead", "--prune-near-dead", "--max-output-change", "0.1"), "choose exactly one strategy"),
])
def test_refuses_bad_limits_in_one_line(cli, planted, args, contains):
    _, _, root = planted
    out = root / "never.pt2"
    result = cli(root / "mlp.pt2", "-d", root / "x.npy", "-o", out, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert contains in lines[0] and "Traceback" not in result.output
    assert len([line for line in lines if line.startswith("error")]) <= 1
    assert not out.exists()


def test_python_api_dry_run_plans_without_writing(planted):
    from reludoctor.fix import fix

    _, _, root = planted
    summary = fix(str(root / "mlp.pt2"), str(root / "x.npy"), None, strategy="prune-near-dead",
                  max_output_change=0.01, dry_run=True)
    planned = {s.site: s.targets for s in summary.sites}
    assert planned["act1"] == (2, 3, 4) and summary.output is None


def test_onnx_models_are_refused_in_one_line(cli, planted, tmp_path):
    import warnings

    pytest.importorskip("onnxruntime")
    model, x, root = planted
    path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(x[:2]),), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes={"x": {0: "n"}})
    out = tmp_path / "out.onnx"
    result = cli(path, "-d", root / "x.npy", "-o", out, "--prune-near-dead", "--max-output-change", "0.01")
    assert result.exit_code == 2, result.output
    assert "not supported for onnx models" in result.output and "Traceback" not in result.output
    assert not out.exists()
