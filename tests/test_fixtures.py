"""The bundled fixtures, scanned as a user would: every model file gives the dead units that
fixtures/make_fixtures.py computed with plain torch (fixtures/expected.json), site by site."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import reludoctor

ROOT = Path(__file__).resolve().parents[1]
EXPECTED = json.loads((ROOT / "fixtures" / "expected.json").read_text())
CASES = [(name, file) for name, entry in EXPECTED["models"].items() for file in entry["files"]]


@pytest.mark.parametrize("name, file", CASES, ids=[file for _, file in CASES])
def test_every_bundled_model_file_gives_the_expected_dead_units(name, file, monkeypatch):
    entry = EXPECTED["models"][name]
    monkeypatch.syspath_prepend(str(ROOT))  # --arch fixtures.digits_models:...
    arch = entry["arch"] if file.endswith((".pt", ".safetensors")) else None
    report = reludoctor.scan(str(ROOT / "fixtures" / file), str(ROOT / "fixtures" / entry["data"]),
                             arch=arch, arch_kwargs=json.dumps(entry["arch_kwargs"]) if arch else None,
                             trust_model=file.endswith(".ts"))  # TorchScript is code: trusted here
    expected = [(site["units"], site["dead_units"]) for site in entry["sites"].values()]
    assert [(s.units, list(s.dead_units)) for s in report.sites] == expected
    if report.model.format != "onnx":  # ONNX sites carry the exporter's node names
        assert [s.name for s in report.sites] == list(entry["sites"])
    assert report.calibration.samples == EXPECTED["calibration"]["samples"]
