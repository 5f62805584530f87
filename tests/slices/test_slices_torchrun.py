"""Slices under torchrun: two CPU processes (gloo) give exactly the single-process per-slice
counts and dead points, with --sample picking the samples (the ids follow them through the
shards), for a .pt2, a fixed-batch .pt2 (padded last batches) and an ONNX model."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from reludoctor import scan
from tests.distributed.compare import DATA, MODELS
from tests.distributed.test_multiprocess import TIMEOUT, _env, _free_port


@pytest.mark.slow
@pytest.mark.parametrize("model", ["digits_cnn.pt2", "digits_cnn_fixed16.pt2", "digits_cnn.onnx"])
def test_torchrun_slices_equal_one_process(tmp_path, model):
    if model.endswith(".onnx"):
        pytest.importorskip("onnxruntime")
    images = np.load(DATA / "digits_calib.npy")[:357]
    np.save(tmp_path / "x.npy", images)
    labels = np.random.default_rng(0).integers(0, 10, len(images)) * 3 - 7
    np.save(tmp_path / "labels.npy", labels)
    out = tmp_path / "report.json"
    options = ["--sample", "300", "--seed", "5", "-b", "16"]
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "reludoctor", "scan", str(MODELS / model), "--data", str(tmp_path / "x.npy"),
               "--slices", str(tmp_path / "labels.npy"), "--device", "cpu", "--json", str(out), *options]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    want = scan(str(MODELS / model), str(tmp_path / "x.npy"), slices=str(tmp_path / "labels.npy"),
                sample=300, seed=5, batch_size=16, device="cpu").to_dict()
    assert got["slices"] == want["slices"]
    assert sum(got["slices"]["samples"]) == 300
    for a, b in zip(got["sites"], want["sites"]):
        assert a["slices"] == b["slices"] and a["dead_points"] == b["dead_points"], a["name"]
