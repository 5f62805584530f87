"""`scan FOLDER --max-memory SIZE`: a checkpoint larger than the memory given is loaded by
accelerate (device_map="auto", the rest on disk) and scanned where it was placed, with the
statistics of the same checkpoint scanned in memory; the offload folder does not outlive it."""

from __future__ import annotations

import glob
import json
import os
import tempfile
from pathlib import Path

import pytest

from tests.cli.reludoctor_cli_checks import assert_input_error
from tests.lm.conftest import save_model, tiny_model

pytest.importorskip("accelerate")


def _scan(cli, *args) -> dict:  # noqa: ANN001
    result = cli("scan", *args, "--device", "cpu", "--json", "-", "-q")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


def test_an_offloaded_checkpoint_scans_like_the_same_checkpoint_in_memory(cli, tmp_path: Path, texts_jsonl: Path):
    folder = save_model(tiny_model("opt"), tmp_path / "opt")
    weights = sum(p.stat().st_size for p in folder.glob("*.safetensors"))
    leftovers = set(glob.glob(os.path.join(tempfile.gettempdir(), "reludoctor-offload-*")))
    in_memory = _scan(cli, folder, "--data", texts_jsonl, "--batch-size", "2")
    offloaded = _scan(cli, folder, "--data", texts_jsonl, "--batch-size", "2", "--max-memory", str(weights // 4))
    assert offloaded["model"]["method"] == "dispatch"
    assert [s["name"] for s in offloaded["sites"]] == [s["name"] for s in in_memory["sites"]]
    for got, want in zip(offloaded["sites"], in_memory["sites"]):
        assert got["positions"] == want["positions"]
        assert got["accumulators"]["positive_count"] == want["accumulators"]["positive_count"]
        assert got["dead_units"] == want["dead_units"]
        assert got["max_preactivation"] == pytest.approx(want["max_preactivation"], rel=1e-5, abs=1e-6)
    # the offload folder went with the model
    assert set(glob.glob(os.path.join(tempfile.gettempdir(), "reludoctor-offload-*"))) <= leftovers


def test_max_memory_refusals(cli, tmp_path: Path, texts_jsonl: Path):
    folder = save_model(tiny_model("opt"), tmp_path / "opt")
    result = cli("scan", folder, "--data", texts_jsonl, "--max-memory", "lots")
    assert_input_error(result.exit_code, result.stdout, result.stderr, "--max-memory")
    fixture = Path(__file__).resolve().parents[2] / "fixtures" / "models"
    for model in ("digits_mlp_dead.pt2", "digits_mlp_dead.onnx"):
        result = cli("scan", fixture / model, "--max-memory", "1GiB")
        assert_input_error(result.exit_code, result.stdout, result.stderr, "--max-memory")
