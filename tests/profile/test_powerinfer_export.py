"""scan --export-activations: read back as PowerInfer reads it, counts equal to the oracle."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from profile_kit import TokenModel, fired_by_hooks, powerinfer_export_split_read, powerinfer_solver_read, token_ids

BLOCKS = 12  # more than 10: a string sort of unpadded names is not the layer order


@pytest.fixture(scope="module")
def lm(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("lm")
    model = TokenModel(blocks=BLOCKS).eval()
    ids = token_ids(9)
    np.savez(root / "ids.npz", input_ids=ids)
    example = (torch.from_numpy(ids[:2]),)
    program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, root / "lm.pt2")
    fired = fired_by_hooks(model, {"input_ids": ids})
    expected = [fired[f"layers.{i}.act"].sum(axis=0) for i in range(BLOCKS)]
    return root, expected


def _scan(lm, out: Path, *extra: str):  # noqa: ANN202
    from typer.testing import CliRunner

    from reludoctor.cli import app

    root, _ = lm
    argv = ["scan", str(root / "lm.pt2"), "--data", str(root / "ids.npz"), "-q", "--format", "json",
            "--export-activations", str(out), *extra]
    return CliRunner().invoke(app, argv, env={"COLUMNS": "200"})


def _same(tensors: list[torch.Tensor], expected: list[np.ndarray]) -> None:
    assert len(tensors) == len(expected)
    for tensor, counts in zip(tensors, expected):
        assert tensor.dtype == torch.int64 and tensor.shape == (len(counts),)
        np.testing.assert_array_equal(tensor.numpy(), counts)


def test_padded_names_read_back_in_layer_order_by_export_split(lm, tmp_path: Path) -> None:
    out = tmp_path / "new" / "activation"  # created, parents too
    result = _scan(lm, out, "--export-naming", "padded")
    assert result.exit_code == 0, result.output
    assert "head_act is left out: its module path has no block index" in result.stderr
    assert sorted(p.name for p in out.iterdir())[:3] == ["activation_00.pt", "activation_01.pt",
                                                         "activation_02.pt"]
    _same(powerinfer_export_split_read(out), lm[1])


def test_index_names_are_what_the_solver_opens(lm, tmp_path: Path) -> None:
    result = _scan(lm, tmp_path)
    assert result.exit_code == 0, result.output
    assert "sorts these names as strings" in result.stderr  # the documented conflict
    _same(powerinfer_solver_read(tmp_path, BLOCKS), lm[1])
    by_export_split = powerinfer_export_split_read(tmp_path)  # activation_10.pt comes third
    np.testing.assert_array_equal(by_export_split[2].numpy(), lm[1][10])


def test_the_index_names_every_file_with_its_digest(lm, tmp_path: Path) -> None:
    result = _scan(lm, tmp_path, "--export-naming", "padded")
    report = json.loads(result.stdout)
    index = json.loads((tmp_path / "reludoctor-activations.json").read_text())
    assert index["naming"] == "padded" and index["dtype"] == "int64"
    assert [entry["layer"] for entry in index["layers"]] == list(range(BLOCKS))
    for entry in index["layers"]:
        data = (tmp_path / entry["file"]).read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["site"] == f"layers.{entry['layer']}.act"
        assert (entry["neurons"], entry["tokens"]) == (16, 9 * 7)
    assert [layer["layer"] for layer in report["profile"]["layers"]] == [*range(BLOCKS), None]


def test_a_rerun_replaces_its_own_files_and_nothing_else(lm, tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert _scan(lm, tmp_path, "--export-naming", "padded").exit_code == 0
    assert _scan(lm, tmp_path).exit_code == 0  # unpadded now: the padded files are stale
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == sorted(["notes.txt", "reludoctor-activations.json",
                            *(f"activation_{i}.pt" for i in range(BLOCKS))])  # no temp files left
    assert (tmp_path / "notes.txt").read_text() == "mine"
    _same(powerinfer_solver_read(tmp_path, BLOCKS), lm[1])


def _one_line_error(result) -> str:  # noqa: ANN001
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    return result.stderr


def test_refusals_exit_2(lm, tmp_path: Path) -> None:
    root, _ = lm
    afile = tmp_path / "file"
    afile.write_text("x")
    assert "is not a folder" in _one_line_error(_scan(lm, afile))
    assert "is an input of this run" in _one_line_error(_scan(lm, root / "ids.npz"))
    assert "choose one of index, padded" in _one_line_error(_scan(lm, tmp_path, "--export-naming", "x"))
    foreign = tmp_path / "theirs"
    foreign.mkdir()
    (foreign / "activation_0.pt").write_bytes(b"not ours")
    assert "activation files reludoctor did not write" in _one_line_error(_scan(lm, foreign))
    assert (foreign / "activation_0.pt").read_bytes() == b"not ours"
    assert sorted(p.name for p in foreign.iterdir()) == ["activation_0.pt"]


def test_a_model_without_token_sites_has_nothing_to_export(tmp_path: Path) -> None:
    from reludoctor.errors import ReludoctorError
    from reludoctor.report import powerinfer

    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU())
    import reludoctor

    report = reludoctor.scan(mlp, np.ones((4, 4), np.float32))
    with pytest.raises(ReludoctorError, match="no FFN"):
        powerinfer.export(report, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_interrupted_export_is_replaced_by_the_next(lm, tmp_path: Path, monkeypatch) -> None:
    import reludoctor
    from reludoctor.report import powerinfer

    report = reludoctor.scan(TokenModel(blocks=BLOCKS), {"input_ids": token_ids(9)})
    real_save, calls = torch.save, []

    def failing_save(obj, path):  # noqa: ANN001, ANN202
        calls.append(path)
        if len(calls) == 3:
            raise KeyboardInterrupt  # as if interrupted while writing the third file
        return real_save(obj, path)

    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        powerinfer.export(report, tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "activation_0.pt", "activation_1.pt", "reludoctor-activations.json"]  # no temp file left
    monkeypatch.setattr(torch, "save", real_save)
    powerinfer.export(report, tmp_path)  # its own leftovers: not refused
    assert json.loads((tmp_path / "reludoctor-activations.json").read_text())["complete"] is True
    _same(powerinfer_solver_read(tmp_path, BLOCKS), lm[1])


def test_powerinfer_tensor_operations_accept_the_files(lm, tmp_path: Path) -> None:
    """What solver.py and export_split.py do with each tensor, on int64 counts."""
    assert _scan(lm, tmp_path).exit_code == 0
    for i, counts in enumerate(powerinfer_solver_read(tmp_path, BLOCKS)):
        ranked, _ = torch.sort(counts, descending=True)  # solver.py
        grouped = (ranked * -1.0).view(-1, 8).sum(dim=1).tolist()  # batch 8 divides 16 neurons
        assert sum(grouped) == -float(lm[1][i].sum())
        _, indices = torch.topk(counts, k=4)  # export_split.py: the 4 hottest neurons on the GPU
        gpu_idx = torch.zeros_like(counts)
        gpu_idx[indices] = 1
        assert gpu_idx.numpy().astype(np.int32).sum() == 4
        assert counts[indices].min() >= np.sort(lm[1][i])[-4]
