"""The JSON report of every bundled fixture model, byte for byte: a restructuring of the code must
not change what a scan reports. Goldens are rewritten with ``pytest tests/reports --update-goldens``
(review the diff: a change here is a change in behaviour)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXPECTED = json.loads((ROOT / "fixtures" / "expected.json").read_text())

# (golden name, reludoctor arguments), paths relative to the repository root so the JSON is the
# same in any clone.
CASES: list[tuple[str, list[str]]] = []
for _name, _entry in EXPECTED["models"].items():
    _data = f"fixtures/{_entry['data']}"
    for _file in _entry["files"]:
        _args = ["scan", f"fixtures/{_file}", "--data", _data]
        if _file.endswith((".pt", ".safetensors")):
            _args += ["--arch", _entry["arch"], "--arch-kwargs", json.dumps(_entry["arch_kwargs"])]
        if _file.endswith(".ts"):
            _args.append("--trust-model")  # TorchScript is code: trusted here
        CASES.append((Path(_file).name, _args))
CASES += [
    ("digits_cnn.pt2.gradients", ["scan", "fixtures/models/digits_cnn.pt2", "--data", "fixtures/data/digits_calib.npy",
                                  "--gradients", "--labels", "fixtures/data/digits_labels.npy"]),
    ("digits_cnn.onnx.gradients", ["scan", "fixtures/models/digits_cnn.onnx", "--data", "fixtures/data/digits_calib.npy",
                                   "--gradients", "--labels", "fixtures/data/digits_labels.npy"]),
    ("digits_mlp_dead.pt.dispatch", ["scan", "fixtures/models/digits_mlp_dead.pt", "--data",
                                     "fixtures/data/digits_calib_flat.npy", "--arch",
                                     EXPECTED["models"]["digits_mlp_dead"]["arch"], "--arch-kwargs",
                                     json.dumps(EXPECTED["models"]["digits_mlp_dead"]["arch_kwargs"]),
                                     "--method", "dispatch", "--gradients"]),
    ("digits_mlp_dead.onnx.synthetic", ["scan", "fixtures/models/digits_mlp_dead.onnx", "--limit", "64"]),
]


@pytest.mark.parametrize("name, args", CASES, ids=[name for name, _ in CASES])
def test_fixture_report_json_is_unchanged(name, args, golden, monkeypatch, one_thread_seeded):
    from typer.testing import CliRunner

    from reludoctor.cli import app

    monkeypatch.chdir(ROOT)
    result = CliRunner().invoke(app, [*args, "--format", "json", "--quiet"], env={"COLUMNS": "100"})
    assert result.exit_code in (0, 1), result.output
    json.loads(result.stdout)  # a whole JSON document
    golden(f"fixtures/{name}.json", result.stdout)
