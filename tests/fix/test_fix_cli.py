"""``reludoctor fix`` on the command line: a full run with a summary, and every refusal path
(exit 2, one line on stderr, no traceback, the input file unchanged, nothing written)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from fix_models import assert_one_line_error, sha256


def _listing(folder):
    return sorted(p.name for p in folder.iterdir())


def test_cli_prune_writes_model_and_summary(cli, files, tmp_path):
    pytest.importorskip("torch_pruning")
    import torch

    out, summary = tmp_path / "fixed.pt2", tmp_path / "summary.json"
    before = sha256(files.mlp_pt2)
    result = cli(files.mlp_pt2, "--data", files.x_npy, "-o", out, "--prune-dead", "--summary", summary)
    assert result.exit_code == 0, result.stderr
    assert sha256(files.mlp_pt2) == before
    torch.export.load(str(out))
    data = json.loads(summary.read_text())
    assert data["schema_version"] == 1 and data["strategy"] == "prune-dead"
    assert data["params"]["after"] < data["params"]["before"]
    assert data["verification"]["equal"] is True
    assert data["output"]["sha256"] == sha256(out)
    assert [s["action"] for s in data["sites"]] == ["pruned", "pruned"]
    assert "pruned" in result.stdout and "outputs equal" in result.stdout
    assert _listing(tmp_path) == ["fixed.pt2", "summary.json"]  # no temporary files left


def test_cli_summary_to_stdout_and_dry_run(cli, files, tmp_path):
    out = tmp_path / "never.pt2"
    result = cli(files.mlp_pt2, "--data", files.x_npy, "-o", out, "--leaky", "0.1", "--dry-run",
                 "--summary", "-")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["dry_run"] is True and data["output"] is None
    assert not out.exists() and _listing(tmp_path) == []


def _refused(cli, files, tmp_path, *args, contains=None, code=2):
    before = sha256(files.mlp_pt2)
    listing = _listing(tmp_path)
    result = cli(*args)
    line = assert_one_line_error(result, code, contains)
    assert sha256(files.mlp_pt2) == before
    assert _listing(tmp_path) == listing  # nothing written, no temporary file left
    return line


def test_refuses_output_onto_input(cli, files, tmp_path):
    _refused(cli, files, tmp_path, files.mlp_pt2, "-d", files.x_npy, "-o", files.mlp_pt2,
             "--prune-dead", "--force", contains="is the input file")


@pytest.mark.skipif(sys.platform == "win32", reason="links")
def test_refuses_symlink_and_hardlink_to_input(cli, files, tmp_path):
    link = tmp_path / "link.pt2"
    link.symlink_to(files.mlp_pt2)
    hard = tmp_path / "hard.pt2"
    os.link(files.mlp_pt2, hard)
    for target in (link, hard):
        _refused(cli, files, tmp_path, files.mlp_pt2, "-d", files.x_npy, "-o", target, "--reinit",
                 "--force", contains="is the input file")


def test_refuses_existing_output_without_force(cli, files, tmp_path):
    existing = tmp_path / "exists.pt2"
    existing.write_bytes(b"keep me")
    _refused(cli, files, tmp_path, files.mlp_pt2, "-d", files.x_npy, "-o", existing, "--prune-dead",
             contains="--force")
    assert existing.read_bytes() == b"keep me"


@pytest.mark.parametrize("args, contains", [
    ((), "choose exactly one strategy"),
    (("--prune-dead", "--reinit"), "not --prune-dead and --reinit"),
    (("--leaky", "0.1", "--prune-dead"), "choose exactly one strategy"),
    (("--leaky", "0"), "(0, 1)"),
    (("--leaky", "1.5"), "(0, 1)"),
    (("--leaky", "nan"), "(0, 1)"),
])
def test_refuses_bad_strategy_combinations(cli, files, tmp_path, args, contains):
    _refused(cli, files, tmp_path, files.mlp_pt2, "-d", files.x_npy, "-o", tmp_path / "o.pt2", *args,
             contains=contains)


def test_refuses_missing_data_output_and_bad_suffix(cli, files, tmp_path):
    _refused(cli, files, tmp_path, files.mlp_pt2, "-o", tmp_path / "o.pt2", "--reinit",
             contains="--data is required")
    _refused(cli, files, tmp_path, files.mlp_pt2, "-d", files.x_npy, "--reinit",
             contains="-o OUT is required")
    _refused(cli, files, tmp_path, files.mlp_pt2, "-d", files.x_npy, "-o", tmp_path / "o.onnx",
             "--reinit", contains="not ONNX")
    _refused(cli, files, tmp_path, files.mlp_pt2, "-d", files.x_npy, "-o", tmp_path / "o.bin",
             "--reinit", contains="unknown suffix")
    _refused(cli, files, tmp_path, files.mlp_pt2, "-d", files.x_npy, "-o", tmp_path / "o.pt2",
             "--reinit", "--dry-run", "--summary", tmp_path / "s.json", contains="writes nothing")


def test_refuses_state_dict_output_for_pruning(cli, files, tmp_path):
    _refused(cli, files, tmp_path, files.mlp_state, "-d", files.x_npy, "-o", tmp_path / "o.pt",
             "--prune-dead", "--arch", "fix_models:PlantedMLP", contains="state_dict cannot")


def test_refuses_sites_matching_nothing(cli, files, tmp_path):
    _refused(cli, files, tmp_path, files.mlp_pt2, "-d", files.x_npy, "-o", tmp_path / "o.pt2",
             "--leaky", "0.1", "--sites", "nothing.*", contains="matches no site")


def test_refuses_torchscript(cli, files, tmp_path):
    _refused(cli, files, tmp_path, files.mlp_ts, "-d", files.x_npy, "-o", tmp_path / "o.pt2",
             "--prune-dead", contains="--trust-model")  # untrusted: code
    _refused(cli, files, tmp_path, files.mlp_ts, "-d", files.x_npy, "-o", tmp_path / "o.pt2",
             "--prune-dead", "--trust-model", contains="TorchScript")  # trusted: fix cannot edit it


def test_missing_torch_pruning(cli, files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_pruning", None)  # import raises ImportError
    line = _refused(cli, files, tmp_path, files.mlp_pt2, "-d", files.x_npy, "-o", tmp_path / "o.pt2",
                    "--prune-dead")
    assert "pip install reludoctor[fix]" in line
    # --leaky does not need it
    result = cli(files.mlp_pt2, "-d", files.x_npy, "-o", tmp_path / "leaky.pt2", "--leaky", "0.01")
    assert result.exit_code == 0, result.stderr


def test_failed_verification_leaves_nothing_behind(cli, files, tmp_path, monkeypatch):
    pytest.importorskip("torch_pruning")
    from dataclasses import replace

    from reludoctor.fix import verify

    real = verify.compare

    def broken(*args, **kwargs):
        return replace(real(*args, **kwargs), equal=False, max_rel_diff=1.0)

    monkeypatch.setattr(verify, "compare", broken)
    out = tmp_path / "o.pt2"
    _refused(cli, files, tmp_path, files.mlp_pt2, "-d", files.x_npy, "-o", out, "--prune-dead",
             contains="nothing was written", code=3)
    assert not out.exists()


def test_refuses_a_model_torch_export_cannot_capture(tmp_path):
    import numpy as np

    from reludoctor.errors import UsageError
    from reludoctor.fix import fix

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from models import DataDependent

    out = tmp_path / "o.pt2"
    with pytest.raises(UsageError, match="torch.export could not capture"):
        fix(DataDependent(), np.ones((8, 4), np.float32), out, strategy="leaky", alpha=0.1)
    assert not out.exists() and _listing(tmp_path) == []


def test_cli_onnx_run_and_refusal(cli, tmp_path):
    import warnings

    import numpy as np
    import torch
    from fix_models import PlantedMLP

    model_path = tmp_path / "mlp.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(PlantedMLP(), (torch.zeros(2, 10),), str(model_path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((32, 10)).astype(np.float32))
    before = sha256(model_path)
    result = cli(model_path, "-d", data, "-o", model_path, "--prune-dead", "--force")
    assert_one_line_error(result, 2, "is the input file")
    out = tmp_path / "fixed.onnx"
    result = cli(model_path, "-d", data, "-o", out, "--prune-dead", "--summary", "-")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["output"]["format"] == "onnx" and summary["verification"]["equal"]
    assert [s["action"] for s in summary["sites"]] == ["pruned", "pruned"]
    assert sha256(model_path) == before
