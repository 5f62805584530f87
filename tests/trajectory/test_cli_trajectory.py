"""``reludoctor trajectory`` on the command line: the outputs it writes, and the refusals (exit 2,
one line on stderr, no traceback, nothing written, inputs untouched)."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.trajectory.conftest import ARCH, sha256

pytestmark = pytest.mark.usefixtures("one_thread_seeded")


def test_writes_json_html_and_the_table(trained, cli, tmp_path):
    result = cli(*trained.files[:3], "--data", trained.data, "--arch", ARCH, "--limit", "300",
                 "--json", tmp_path / "t.json", "--html", tmp_path / "t.html")
    assert result.exit_code == 0, result.stderr
    assert "act1" in result.stdout and "act2" in result.stdout and "died" in result.stdout
    assert json.loads((tmp_path / "t.json").read_text())["data"]["samples"] == 300
    page = (tmp_path / "t.html").read_text()
    assert 'id="plot-curves"' in page
    assert [p.name for p in tmp_path.iterdir()] and not list(tmp_path.glob(".*tmp*"))  # no temp left


def test_json_to_stdout_replaces_the_table(trained, cli):
    result = cli(*trained.files[:2], "--data", trained.data, "--arch", ARCH, "--limit", "100", "--json", "-", "-q")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["kind"] == "trajectory"


def refusal(result, *words: str) -> None:
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reludoctor: error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for word in words:
        assert word in lines[0], lines[0]


def test_refusals(trained, cli, tmp_path):
    hashes = {p: sha256(p) for p in [*trained.files, trained.data]}
    a, b = trained.files[:2]
    common = ("--data", trained.data, "--arch", ARCH)
    refusal(cli(a, *common), "at least 2 checkpoints")
    refusal(cli(a, tmp_path / "missing.pt", *common), "missing.pt")
    refusal(cli(a, b, *common, "--json", b), "would overwrite an input")
    refusal(cli(a, b, *common, "--html", trained.data), "would overwrite an input")
    refusal(cli(trained.folder, *common, "--json", trained.folder / "step_50.pt"), "would overwrite an input")
    empty = tmp_path / "empty"
    empty.mkdir()
    refusal(cli(empty, *common), "no checkpoint files")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "readme.txt").write_text("not a model")
    (notes / "losses.csv").write_text("step,loss\n")
    refusal(cli(notes, *common), "not a recognised model file", "checkpoint folder")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    shutil.copyfile(a, mixed / "ckpt_1.pt")
    shutil.copyfile(b, mixed / "ckpt_2.pt")
    (mixed / "log.txt").write_text("epoch 1\n")
    refusal(cli(mixed, *common), "log.txt")
    refusal(cli(trained.folder, a, *common), "is a folder")
    one = tmp_path / "one"
    one.mkdir()
    shutil.copyfile(a, one / "ckpt_1.pt")
    refusal(cli(one, *common), "holds 1")
    assert not list(tmp_path.glob("*.json"))
    assert {p: sha256(p) for p in hashes} == hashes
