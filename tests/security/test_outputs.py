"""Outputs never hit inputs (issue 10): no output path may overwrite a file the run reads, through
any name, symlink or hard link. Checked before the scan where the inputs are known (model, data,
labels, baseline, settings, images of a --data folder) and again right before the rename, where the
input ledger also knows an ONNX model's external-data files and every image read. Fuzzing found
``--json`` at an external-data file, ``--json`` at an image inside the --data folder and
``fix -o <external-data file> --force`` overwriting their input with exit 0.

Also: an output folder that cannot be written is exit 2 (not an internal error), and nothing is left
behind (no temp files) when a write is refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.security.kit import CALIB, CALIB_FLAT, CNN_ONNX, MLP_PT2, cli
from tests.security.kit import refused as one_line_error


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def temp_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if ".tmp" in name)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def external_onnx(work: Path) -> tuple[Path, Path]:
    """digits_cnn.onnx with every weight in one external-data file ``weights.onnx`` (a name with
    a model suffix, so that ``fix -o`` accepts it)."""
    import onnx

    model = onnx.load(str(CNN_ONNX))
    path = work / "model.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.onnx", size_threshold=0)
    weights = work / "weights.onnx"
    assert weights.stat().st_size > 1000
    return path, weights


@pytest.fixture
def image_folder(work: Path) -> Path:
    """A folder of 8x8 grayscale PNGs that digits_cnn.onnx can read."""
    from PIL import Image

    folder = work / "images"
    (folder / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(6):
        where = folder / "deeper" if i % 2 else folder
        Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(where / f"img{i}.png")
    return folder


# --- before the scan: the inputs named on the command line -----------------------------------


@pytest.mark.parametrize("option", ["--json", "--markdown", "--junit", "--sarif", "--html"])
def test_every_report_output_refuses_the_model_through_a_hard_link(work, option):
    model = work / "model.onnx"
    shutil.copy(CNN_ONNX, model)
    os.link(model, work / "alias.json")
    before = digest(model)
    one_line_error(cli("scan", model, "--data", CALIB, "-q", option, "alias.json"),
                   option, "alias.json", "would overwrite an input file")
    assert digest(model) == before and temp_files(work) == []


def test_json_at_an_image_inside_the_data_folder_is_refused_before_the_scan(work, image_folder):
    image = image_folder / "deeper" / "img1.png"
    before = digest(image)
    one_line_error(cli("scan", CNN_ONNX, "--data", image_folder, "-q", "--json", image),
                   "--json", "img1.png", "would overwrite an input file")
    assert digest(image) == before and temp_files(image.parent) == []


def test_json_at_a_hard_link_of_an_image_is_refused_before_the_rename(work, image_folder):
    """Outside the folder, only the ledger (every image read) knows the link is an input."""
    image = image_folder / "img0.png"
    link = work / "report.json"
    os.link(image, link)
    before = digest(image)
    one_line_error(cli("scan", CNN_ONNX, "--data", image_folder, "-q", "--json", link),
                   "--json", "report.json", "input file")
    assert digest(image) == before and temp_files(work) == []


@pytest.mark.parametrize("what", ["settings", "baseline", "labels"])
def test_outputs_refuse_settings_baseline_and_labels(work, what):
    model = work / "model.onnx"
    shutil.copy(CNN_ONNX, model)
    saved = work / "saved.json"
    assert cli("scan", model, "--data", CALIB, "-q", "--json", saved, "--format", "json").exit_code == 0
    args: list[object] = ["report", saved]
    if what == "settings":
        target = work / "reludoctor.toml"
        target.write_text("top = 5\n")
    elif what == "baseline":
        target = work / "old.json"
        shutil.copy(saved, target)
        args += ["--baseline", target]
    else:
        target = work / "labels.npy"
        np.save(target, np.zeros(360, dtype=np.int64))
        args = ["scan", model, "--data", CALIB, "-q", "--labels", target]
    before = digest(target)
    one_line_error(cli(*args, "--markdown", target), "--markdown", target.name, "input file")
    assert digest(target) == before and temp_files(work) == []


def test_diff_json_refuses_its_reports_and_settings(work):
    saved = work / "a.json"
    assert cli("scan", CNN_ONNX, "--data", CALIB, "-q", "--json", saved, "--format", "json").exit_code == 0
    shutil.copy(saved, work / "b.json")
    os.link(work / "b.json", work / "b-link.json")
    one_line_error(cli("diff", "a.json", "b.json", "--json", "b-link.json"), "--json", "b-link.json", "input")
    (work / "reludoctor.toml").write_text("tolerance = 0.1\n")
    one_line_error(cli("diff", "a.json", "b.json", "--json", "reludoctor.toml"), "--json", "reludoctor.toml")
    assert temp_files(work) == []


# --- after the scan: the ledger knows external data -------------------------------------------


def test_json_at_the_external_data_file_is_refused(work, external_onnx):
    model, weights = external_onnx
    before = digest(weights)
    one_line_error(cli("scan", model, "--data", CALIB, "-q", "--json", weights),
                   "--json", "weights.onnx", "input file")
    assert digest(weights) == before and temp_files(work) == []
    assert cli("scan", model, "--data", CALIB, "-q").exit_code == 0  # the model still loads


def test_fix_output_at_the_external_data_file_is_refused_even_with_force(work, external_onnx):
    model, weights = external_onnx
    before = digest(weights)
    result = cli("fix", model, "--data", CALIB, "--prune-dead", "-o", weights, "--force")
    one_line_error(result, "-o", "weights.onnx", "input file")
    assert digest(weights) == before and temp_files(work) == []


def test_fix_output_at_the_external_data_file_is_refused_before_the_scan(work, external_onnx, monkeypatch):
    import reludoctor.engine

    def no_scan(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the scan ran before -o was checked against the external data")

    monkeypatch.setattr(reludoctor.engine, "scan", no_scan)
    model, weights = external_onnx
    result = cli("fix", model, "--data", CALIB, "--prune-dead", "-o", weights, "--force")
    one_line_error(result, "-o", "weights.onnx", "input file")


def test_fix_summary_at_the_external_data_file_is_refused(work, external_onnx):
    model, weights = external_onnx
    before = digest(weights)
    result = cli("fix", model, "--data", CALIB, "--prune-dead", "-o", work / "fixed.onnx",
                 "--summary", weights)
    one_line_error(result, "--summary", "weights.onnx", "input file")
    assert digest(weights) == before and temp_files(work) == []


def test_fix_summary_at_an_image_of_the_data_folder_is_refused_before_the_fix(work, image_folder):
    image = image_folder / "img2.png"
    before = digest(image)
    result = cli("fix", CNN_ONNX, "--data", image_folder, "--prune-dead", "-o", work / "fixed.onnx",
                 "--summary", image)
    one_line_error(result, "--summary", "img2.png", "input file")
    assert digest(image) == before and not (work / "fixed.onnx").exists()


# --- the writers themselves, inside a ledger ---------------------------------------------------


def test_emit_and_atomic_path_consult_the_ledger(tmp_path):
    from reludoctor import safeio
    from reludoctor.errors import UsageError
    from reludoctor.fix.output import atomic_path
    from reludoctor.reporters import emit

    source = tmp_path / "input.bin"
    source.write_bytes(b"precious")
    os.link(source, tmp_path / "alias.bin")
    emit("fine\n", str(tmp_path / "scratch.bin"))  # outside a ledger nothing is known
    assert (tmp_path / "scratch.bin").read_text() == "fine\n"
    with safeio.ledger():
        safeio.note_read(source)
        with pytest.raises(UsageError, match="input file"):
            emit("oops\n", str(tmp_path / "alias.bin"), "--json")
        with pytest.raises(UsageError, match="input file"):
            with atomic_path(tmp_path / "alias.bin") as temp:
                temp.write_bytes(b"oops")
        with atomic_path(tmp_path / "other.pt2") as temp:  # a file nobody read: written
            temp.write_bytes(b"model")
    assert source.read_bytes() == b"precious"
    assert (tmp_path / "other.pt2").read_bytes() == b"model"
    assert temp_files(tmp_path) == [] and safeio._TEMPS == set()


def test_the_ledger_check_runs_again_right_before_the_rename(tmp_path):
    """An input noted after the temp file was made (the ledger grows during a run) still wins."""
    from reludoctor import safeio
    from reludoctor.errors import UsageError
    from reludoctor.fix.output import atomic_path

    source = tmp_path / "late.onnx"
    source.write_bytes(b"precious")
    with safeio.ledger():
        with pytest.raises(UsageError, match="input file"):
            with atomic_path(source) as temp:
                temp.write_bytes(b"oops")
                safeio.note_read(source)
    assert source.read_bytes() == b"precious" and temp_files(tmp_path) == []


# --- folders that cannot be written ------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0,
                    reason="root writes into read-only folders")
def test_fix_into_a_read_only_folder_is_exit_2(work):
    locked = work / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        result = cli("fix", MLP_PT2, "--data", CALIB_FLAT, "--prune-dead", "-o", locked / "fixed.pt2")
        one_line_error(result, "fixed.pt2")
        assert os.listdir(locked) == []
    finally:
        locked.chmod(0o755)


@pytest.mark.parametrize("command", ["fix", "scan", "diff"])
def test_a_permission_error_making_the_temp_file_is_exit_2(work, monkeypatch, command):
    """The same as a read-only folder, also when the tests run as root."""
    from reludoctor import safeio

    def refuse(folder, prefix, suffix):  # noqa: ANN001, ANN202
        raise PermissionError(13, "Permission denied", str(folder))

    monkeypatch.setattr(safeio, "create_temp", refuse)
    if command == "fix":
        result = cli("fix", CNN_ONNX, "--data", CALIB, "--prune-dead", "-o", work / "fixed.onnx")
        line = one_line_error(result, "-o", "fixed.onnx", "Permission denied")
    elif command == "scan":
        result = cli("scan", CNN_ONNX, "--data", CALIB, "-q", "--json", work / "out.json")
        line = one_line_error(result, "--json", "out.json", "Permission denied")
    else:
        report = work / "a.json"
        monkeypatch.undo()
        assert cli("scan", CNN_ONNX, "--data", CALIB, "-q", "--json", report, "--format", "json").exit_code == 0
        monkeypatch.setattr(safeio, "create_temp", refuse)
        result = cli("diff", report, report, "--json", work / "d.json")
        line = one_line_error(result, "--json", "d.json", "Permission denied")
    assert "internal error" not in line
    assert temp_files(work) == []


def test_a_written_report_is_a_plain_readable_file(work):
    out = work / "out.json"
    assert cli("scan", CNN_ONNX, "--data", CALIB, "-q", "--json", out).exit_code == 0
    assert json.loads(out.read_text())["schema_version"] == 1
    assert out.stat().st_mode & 0o444 and temp_files(work) == []


def test_symlink_loops_as_outputs_or_merge_parts_are_exit_2(work):
    os.symlink("loop-b", work / "loop-a")
    os.symlink("loop-a", work / "loop-b")
    saved = work / "a.json"
    assert cli("scan", CNN_ONNX, "--data", CALIB, "-q", "--json", saved, "--format", "json").exit_code == 0
    one_line_error(cli("report", saved, "--json", "loop-a"), "--json", "loop-a", "symlink loop")
    one_line_error(cli("diff", saved, saved, "--json", "loop-a"), "--json", "loop-a", "symlink loop")
    one_line_error(cli("merge", "loop-a", saved), "loop-a", "symlink loop")
    one_line_error(cli("fix", CNN_ONNX, "--data", CALIB, "--prune-dead", "-o", "loop-a/x.onnx"),
                   "loop-a", "symlink loop")
