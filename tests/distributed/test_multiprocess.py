"""Multi-process scans on loopback (gloo, 2 CPU processes) against one-process scans of the
same data: the rank-0 report must be the same report (dead sets, counts, rates, maxima,
histograms exactly; float sums within tolerance)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reludoctor import scan
from tests.distributed.compare import MODELS, ROOT, assert_same_scan

WORKER = Path(__file__).resolve().parent / "scan_worker.py"
ARCH = "fixtures.digits_models:DigitsMLP"  # the state_dict's architecture (exported at scan time)
TIMEOUT = 240


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
                        "TORCHELASTIC_RUN_ID", "GROUP_RANK", "LOCAL_WORLD_SIZE")}
    env.update({"OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
                "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),
                "COLUMNS": "120"})
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray, flat: np.ndarray) -> dict:
    root = tmp_path_factory.mktemp("distributed")
    paths = {"images": root / "images357.npy", "flat": root / "flat357.npy",
             "few": root / "images20.npy", "flatfew": root / "flat20.npy",
             "nan": root / "nan_in_batch_1.npy"}
    np.save(paths["images"], images)
    np.save(paths["flat"], flat)
    np.save(paths["few"], images[:20])
    np.save(paths["flatfew"], flat[:20])
    broken = images[:40].copy()
    broken[9, 0, 0, 0] = np.nan  # in batch 1 of 8: rank 1's shard only
    np.save(paths["nan"], broken)
    return {"root": root, **{k: str(v) for k, v in paths.items()}}


@pytest.mark.slow
@pytest.mark.parametrize("gate", [None, "0.05"])
def test_torchrun_cli_scan_equals_a_single_process_scan(files, tmp_path, gate):
    """`torchrun --nproc_per_node 2 -m reludoctor scan ...`: rank 0 writes the report and the
    table, rank 1 prints nothing; 357 samples in batches of 25 (15 batches: 8 + 7, the last
    one partial). A failed gate (a site 6% dead): rank 0 writes the whole report and says so,
    then torchrun exits 1."""
    out = tmp_path / "report.json"
    model = str(MODELS / "digits_cnn.pt2")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "reludoctor", "scan", model, "--data", files["images"], "-b", "25",
               "--device", "cpu", "--json", str(out)] + (["--fail-over", gate] if gate else [])
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=_env(),
                          cwd=tmp_path)
    assert proc.stdout.count("ReLU sites in execution order") == 1  # one table: rank 0's
    if gate is None:
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert proc.stderr == ""
    else:  # torchrun adds its own account of the failed process (and stops rank 1 if it still
        # runs) after rank 0's line: rank 0 fails only once its report is written
        assert proc.returncode == 1, proc.stderr[-3000:]
        assert proc.stderr.count("gate failed: 1 site(s) over --fail-over 0.05") == 1
    got = json.loads(out.read_text())
    want = scan(model, files["images"], batch_size=25, device="cpu").to_dict()
    assert got["calibration"]["samples"] == 357
    assert_same_scan(got, want)


def _iterable(path: str):  # noqa: ANN202 - as the worker builds it
    array = np.load(path)
    return (array[i:i + 7] for i in range(0, len(array), 7))


@pytest.mark.slow
def test_two_ranks_give_the_single_process_report_for_every_backend(files, tmp_path):
    """Two processes launched like torchrun launches them, several scans in one process group:
    ONNX, TorchDispatchMode (sites found as they run), torch.export with an iterable of batches,
    a rank with no batch at all (20 samples, batch 32: exported, ONNX, and a state_dict that is
    traced from the data's first samples), a rank that fails (its shard holds a NaN: every rank
    fails, naming it), a refused --gradients; the group still works after both."""
    def job(name: str, model: str, data: str, batch: int, **kwargs) -> dict:  # noqa: ANN003
        return {"model": str(MODELS / model), "data": files[data], "batch_size": batch,
                "out": str(tmp_path / f"{name}.json"), **kwargs}

    jobs = [
        job("onnx", "digits_mlp_dead.onnx", "flat", 32),
        job("dispatch", "digits_cnn.pt2", "images", 32, kwargs={"method": "dispatch"}),
        job("iterable", "digits_cnn.pt2", "images", 16, iterable=True),
        job("nan", "digits_cnn.pt2", "nan", 8),
        job("gradients", "digits_mlp_dead.pt2", "flat", 32, kwargs={"gradients": True}),
        job("few", "digits_cnn.pt2", "few", 32),
        job("few-onnx", "digits_mlp_dead.onnx", "flatfew", 32),
        job("few-state-dict", "digits_mlp_dead.pt", "flatfew", 32, kwargs={"arch": ARCH}),
    ]
    (tmp_path / "jobs.json").write_text(json.dumps(jobs))
    port = str(_free_port())
    procs = [subprocess.Popen([sys.executable, str(WORKER), str(tmp_path / "jobs.json")],
                              env=_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                                       MASTER_ADDR="127.0.0.1", MASTER_PORT=port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    outputs = [p.communicate(timeout=TIMEOUT) for p in procs]
    for proc, (_, err) in zip(procs, outputs):
        assert proc.returncode == 0, err[-3000:]
    for name in ("onnx", "dispatch", "iterable", "few", "few-onnx", "few-state-dict"):
        assert not list(tmp_path.glob(f"{name}.json.rank*.error")), name
    oracle = {
        "onnx": scan(str(MODELS / "digits_mlp_dead.onnx"), files["flat"], batch_size=32, device="cpu"),
        "dispatch": scan(str(MODELS / "digits_cnn.pt2"), files["images"], batch_size=32, device="cpu",
                         method="dispatch"),
        "iterable": scan(str(MODELS / "digits_cnn.pt2"), _iterable(files["images"]), batch_size=16,
                         device="cpu"),
        "few": scan(str(MODELS / "digits_cnn.pt2"), files["few"], batch_size=32, device="cpu"),
        "few-onnx": scan(str(MODELS / "digits_mlp_dead.onnx"), files["flatfew"], batch_size=32,
                         device="cpu"),
        "few-state-dict": scan(str(MODELS / "digits_mlp_dead.pt"), files["flatfew"], batch_size=32,
                               device="cpu", arch=ARCH),
    }
    for name, want in oracle.items():
        got = json.loads((tmp_path / f"{name}.json").read_text())
        assert_same_scan(got, want.to_dict())
    # the failing shard: rank 1 names its own error, rank 0 says which rank failed and why
    assert not (tmp_path / "nan.json").exists()
    own = json.loads((tmp_path / "nan.json.rank1.error").read_text())
    told = json.loads((tmp_path / "nan.json.rank0.error").read_text())
    assert own["type"] == "DataError" and "NaN" in own["message"]
    assert told["type"] == "DistributedError" and told["exit_code"] == 2
    assert told["message"].startswith("rank 1 of 2 failed: ") and "NaN" in told["message"]
    for rank in range(2):
        refused = json.loads((tmp_path / f"gradients.json.rank{rank}.error").read_text())
        assert refused["type"] == "UsageError" and "--gradients" in refused["message"]


def test_a_rank_other_than_0_writes_and_prints_nothing_and_exits_0(files, tmp_path, monkeypatch):
    """In one process, as rank 1 would run it: no report file, no table, no warning, no check of
    the output folder (it may exist only where rank 0 runs), and exit code 0 even when the gate
    fails: rank 0 carries it (torchrun stops every rank when one exits non-zero, and rank 0 must
    not be stopped while it writes)."""
    from typer.testing import CliRunner

    from reludoctor.cli import app
    from reludoctor.core import distributed

    monkeypatch.setattr(distributed, "is_writer", lambda: False)
    out = tmp_path / "report.json"
    args = ["scan", str(MODELS / "digits_mlp_dead.pt2"), "--data", files["flat"], "--device", "cpu",
            "--json", str(out), "--markdown", str(tmp_path / "elsewhere" / "summary.md"),
            "--fail-over", "0.01"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.stderr  # the dead MLP fails the gate: rank 0 says so
    assert result.stdout == "" and result.stderr == ""
    assert not out.exists()


@pytest.mark.slow
def test_torchrun_scan_of_a_checkpoint_folder_with_texts_equals_one_process(tmp_path):
    """A Hugging Face checkpoint folder with text data under torchrun (2 ranks, padded
    documents in batches of 2): the same per-neuron counts over real tokens, the same dead
    units and the same neuron activation profile as one process."""
    pytest.importorskip("transformers")
    from tests.lm.conftest import save_model, tiny_model

    folder = save_model(tiny_model("opt"), tmp_path / "opt")
    texts = tmp_path / "texts.jsonl"
    docs = ["the cat sat on the mat", "a dog ran", "the dog sat", "cat on mat", "a a the", "ran dog cat sat on"]
    texts.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs))
    out = tmp_path / "report.json"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
               "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
               "-m", "reludoctor", "scan", str(folder), "--data", str(texts), "-b", "2",
               "--device", "cpu", "--json", str(out), "-q"]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT, env=_env(), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = json.loads(out.read_text())
    want = scan(str(folder), str(texts), batch_size=2, device="cpu").to_dict()
    assert got["calibration"]["samples"] == len(docs)
    for mine, theirs in zip(got["sites"], want["sites"]):
        assert mine["name"] == theirs["name"] and mine["positions"] == theirs["positions"]
        assert mine["accumulators"]["positive_count"] == theirs["accumulators"]["positive_count"]
        assert mine["dead_units"] == theirs["dead_units"]
    assert got["profile"] == want["profile"]
