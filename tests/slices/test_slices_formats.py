"""Slices and dead points beyond an in-memory module: ONNX models (dynamic and fixed batch, the
last batch padded), text with padding (a tiny OPT, per document), merging reports of disjoint
parts, and the command line."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from reludoctor import scan
from reludoctor.report.merge import merge_reports
from tests.slices.slices_oracle import check_site, expected, preactivations
from tests.slices.test_slices import cnn, designed_mlp


def _onnx(model: torch.nn.Module, x: np.ndarray, path: Path, fixed: bool = False) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        example = torch.from_numpy(x[:8])
        torch.onnx.export(model, (example,), str(path), dynamo=False, input_names=["x"],
                          dynamic_axes=None if fixed else {"x": {0: "batch"}})
    return path


@pytest.mark.parametrize("build", [designed_mlp, cnn])
@pytest.mark.parametrize("fixed", [False, True])
def test_onnx_slices_equal_the_oracle(tmp_path, build, fixed):
    pytest.importorskip("onnxruntime")
    model, x, labels = build()
    path = _onnx(model, x, tmp_path / "m.onnx", fixed)
    report = scan(str(path), x, slices=labels, batch_size=8)  # 61 samples: the last batch padded
    captured = preactivations(model, torch.from_numpy(x))
    assert len(report.sites) == len(captured)
    for site, pre in zip(report.sites, captured):
        check_site(site, expected(pre, labels, 1))


def test_text_slices_per_document_padding_never_counts():
    pytest.importorskip("transformers")
    from tests.lm.conftest import tiny_model

    model = tiny_model("opt")
    rng = np.random.default_rng(0)
    lengths = [6, 3, 11, 1, 8, 5, 2]
    ids = np.ones((len(lengths), 12), np.int64)
    mask = np.zeros_like(ids)
    for row, length in enumerate(lengths):
        ids[row, :length] = rng.integers(4, 100, length)
        mask[row, :length] = 1
    labels = np.array([2, 0, 2, 1, 0, 1, 2])
    report = scan(model, {"input_ids": ids, "attention_mask": mask}, slices=labels, batch_size=3,
                  method="dispatch", device="cpu")
    captured: list[np.ndarray] = []  # fc1 outputs, the ReLU's input ([N*T, F] in OPT)
    hooks = [layer.fc1.register_forward_hook(lambda _m, _i, out: captured.append(out.detach().numpy()))
             for layer in model.model.decoder.layers]
    try:
        with torch.no_grad():
            model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask))
    finally:
        for hook in hooks:
            hook.remove()
    assert len(report.sites) == len(captured)
    for site, out in zip(report.sites, captured):
        pre = out.reshape(len(lengths), ids.shape[1], -1)
        want = expected(pre, labels, 2, mask=mask.astype(bool))
        check_site(site, want)
        assert list(want.positions) == [sum(n for n, s in zip(lengths, labels) if s == k) for k in (0, 1, 2)]
        assert site.positions == sum(lengths)


@pytest.fixture(scope="module")
def pt2(tmp_path_factory):
    root = tmp_path_factory.mktemp("slices-files")
    model, x, labels = designed_mlp()
    program = torch.export.export(model, (torch.from_numpy(x[:2]),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, root / "mlp.pt2")
    np.save(root / "x.npy", x)
    np.save(root / "labels.npy", labels)
    return root


def _same(merged, whole) -> None:  # noqa: ANN001
    for a, b in zip(merged.sites, whole.sites):
        assert a.slices == b.slices and a.dead_points == b.dead_points, a.name
    assert (merged.slices.ids, merged.slices.samples, merged.slices.dead_ratio) == \
        (whole.slices.ids, whole.slices.samples, whole.slices.dead_ratio)


def test_merge_of_disjoint_parts_equals_one_scan(pt2):
    x, labels = np.load(pt2 / "x.npy"), np.load(pt2 / "labels.npy")
    model = str(pt2 / "mlp.pt2")
    whole = scan(model, x, slices=labels, batch_size=8)
    cut = 30
    parts = [scan(model, x[:cut], slices=labels[:cut], batch_size=8),
             scan(model, x[cut:], slices=labels[cut:], batch_size=8)]
    _same(merge_reports(parts), whole)
    # parts whose slice ids differ: the union
    keep = labels != 11
    first = scan(model, x[keep], slices=labels[keep], batch_size=8)
    second = scan(model, x[~keep], slices=labels[~keep], batch_size=8)
    assert list(first.slices.ids) == [-3, 4, 18] and list(second.slices.ids) == [11]
    merged = merge_reports([first, second])
    assert list(merged.slices.ids) == [-3, 4, 11, 18]
    reordered = scan(model, np.concatenate([x[keep], x[~keep]]),
                     slices=np.concatenate([labels[keep], labels[~keep]]), batch_size=8)
    _same(merged, reordered)


def test_merge_refuses_parts_with_and_without_slices(pt2):
    from reludoctor.errors import MergeError

    x, labels = np.load(pt2 / "x.npy"), np.load(pt2 / "labels.npy")
    model = str(pt2 / "mlp.pt2")
    with pytest.raises(MergeError, match="--slices"):
        merge_reports([scan(model, x[:30], slices=labels[:30]), scan(model, x[30:])])
    with pytest.raises(MergeError, match="--dead-points"):
        merge_reports([scan(model, x[:30], dead_points=True), scan(model, x[30:])])


def _invoke(*args):
    from typer.testing import CliRunner

    from reludoctor.cli import app

    env = {"COLUMNS": "200", "TTY_COMPATIBLE": None, "TTY_INTERACTIVE": None, "FORCE_COLOR": None,
           "NO_COLOR": None}
    return CliRunner().invoke(app, ["scan", *map(str, args)], env=env)


def test_cli_end_to_end(pt2, tmp_path):
    out = tmp_path / "r.json"
    result = _invoke(pt2 / "mlp.pt2", "--data", pt2 / "x.npy", "--slices", pt2 / "labels.npy",
                     "--json", out, "--format", "table", "--quiet")
    assert result.exit_code == 0, result.output
    assert "dead on which data: 4 slices" in result.output
    data = json.loads(out.read_text())
    assert data["slices"]["ids"] == [-3, 4, 11, 18]
    assert all({"slices", "dead_points"} <= set(site) for site in data["sites"])
    from typer.testing import CliRunner

    from reludoctor.cli import app

    saved = CliRunner().invoke(app, ["report", str(out), "--format", "markdown"], env={"COLUMNS": "200"})
    assert saved.exit_code == 0 and "### Dead on which data: 4 slices" in saved.output
    result = _invoke(pt2 / "mlp.pt2", "--data", pt2 / "x.npy", "--dead-points", "--json", out, "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert "slices" not in data and all("dead_points" in site for site in data["sites"])


@pytest.mark.parametrize("bad", [np.zeros(10, np.int64), np.full(61, 0.5), np.zeros((61, 2), np.int64),
                                 np.full(61, 2 ** 63 - 1)])
def test_cli_bad_slices_exit_2_with_one_line(pt2, tmp_path, bad):
    path = tmp_path / "bad.npy"
    np.save(path, bad)
    result = _invoke(pt2 / "mlp.pt2", "--data", pt2 / "x.npy", "--slices", path, "--quiet")
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("reludoctor: error:") and str(path) in lines[0]


def test_cli_too_many_slices(pt2, tmp_path):
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(1100, 4)).astype(np.float32))
    np.save(tmp_path / "ids.npy", np.arange(1100))
    result = _invoke(pt2 / "mlp.pt2", "--data", tmp_path / "x.npy", "--slices", tmp_path / "ids.npy", "--quiet")
    assert result.exit_code == 2 and "1100 distinct slice ids, at most 1024" in result.output


def test_cli_slices_not_a_file(pt2, tmp_path):
    path = tmp_path / "ids.txt"
    path.write_text("1 2 3")
    result = _invoke(pt2 / "mlp.pt2", "--data", pt2 / "x.npy", "--slices", path, "--quiet")
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_torchscript_through_dispatch_equals_the_export():
    from tests.distributed.compare import DATA, MODELS

    x = np.load(DATA / "digits_calib.npy")[:200]
    labels = np.random.default_rng(0).integers(0, 5, 200)
    exported = scan(str(MODELS / "digits_cnn.pt2"), x, slices=labels, batch_size=16)
    scripted = scan(str(MODELS / "digits_cnn.ts"), x, slices=labels, batch_size=16, trust_model=True)
    assert scripted.model.method == "dispatch"
    assert [s.slices for s in scripted.sites] == [s.slices for s in exported.sites]
    assert [s.dead_points for s in scripted.sites] == [s.dead_points for s in exported.sites]
