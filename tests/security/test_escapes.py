"""Control characters in names never reach the terminal or Markdown raw (issue 10): ONNX node and
input names, report and site names of saved reports can hold ESC/CSI sequences (clear the screen,
retitle the window, fake output), BEL, DEL and C1 controls. Every such character is shown as
visible escape text (``\\x1b``) by one helper (``reludoctor.errors.printable``) in the terminal
table, the diff, gate lines, warnings, error lines and Markdown; JSON stays exact (json.dumps
escapes them as ``\\u001b``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
TERMINAL_ENV = ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR")
EVIL = "evil\x1b[2J\x07name"  # clear screen + bell
EVIL_SHOWN = "evil\\x1b[2J\\x07name"
C1 = "csi\x9b2Jdel\x7f"  # an 8-bit CSI and DEL
C1_SHOWN = "csi\\x9b2Jdel\\x7f"
INPUT = "in\x1b]0;pwned\x07put"  # an OSC sequence: set the window title
INPUT_SHOWN = "in\\x1b]0;pwned\\x07put"
# What must never be printed raw (newlines and, in tables, nothing else is a control character).
RAW_CONTROL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def cli(*args: object):
    from typer.testing import CliRunner

    from reludoctor.cli import app

    env = {name: None for name in TERMINAL_ENV}
    env["COLUMNS"] = "200"
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def assert_clean(*texts: str) -> None:
    for text in texts:
        found = RAW_CONTROL.findall(text)
        assert not found, (found, text)


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def evil_onnx(work: Path) -> Path:
    """Two fully dead ReLU sites named EVIL and C1, on an input named INPUT."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    b = numpy_helper.from_array(np.full((3,), -100.0, np.float32), "b")
    nodes = [helper.make_node("MatMul", [INPUT, "w"], ["mm"], name="mm\x9bnode"),
             helper.make_node("Add", ["mm", "b"], ["pre"], name="add"),
             helper.make_node("Relu", ["pre"], ["y"], name=EVIL),
             helper.make_node("Relu", ["pre"], ["z"], name=C1)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]),
         helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", 3])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path = work / "evil.onnx"
    onnx.save(model, str(path))
    np.save(work / "calib.npy", np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32))
    return path


@pytest.fixture
def evil_report(evil_onnx: Path, work: Path) -> Path:
    out = work / "evil.json"
    result = cli("scan", evil_onnx, "--data", "calib.npy", "-q", "--json", out, "--format", "json")
    assert result.exit_code == 0, result.stderr
    return out


# --- the helper --------------------------------------------------------------------------------


def test_printable_shows_every_control_character():
    from reludoctor.errors import printable

    assert printable(EVIL) == EVIL_SHOWN
    assert printable(C1) == C1_SHOWN
    assert printable("a\tb\nc\x00\u202e") == "a\\x09b\\x0ac\\x00\\u202e"
    assert printable("plain ünïcode, emoji 🔴 and [markup]") == "plain ünïcode, emoji 🔴 and [markup]"
    assert_clean(printable("".join(map(chr, range(0x00, 0xA0)))))


def test_error_lines_fold_whitespace_and_show_controls():
    from reludoctor.errors import DataError

    line = DataError(f"input {INPUT!s} is\n  wrong", f"rename {EVIL}").one_line()
    assert line == f"input {INPUT_SHOWN} is wrong (rename {EVIL_SHOWN})"


# --- the terminal -------------------------------------------------------------------------------


def test_scan_table_findings_and_gate_lines_show_names_escaped(evil_onnx):
    result = cli("scan", evil_onnx, "--data", "calib.npy", "-q", "--fail-over", "0.1")
    assert result.exit_code == 1, result.stderr
    assert_clean(result.stdout, result.stderr)
    assert EVIL_SHOWN in result.stdout and C1_SHOWN in result.stdout
    assert "mm\\x9bnode" in result.stdout  # in the findings' suggestion
    assert EVIL_SHOWN in result.stderr  # the gate lines name the failing site


def test_a_saved_report_with_control_characters_renders_escaped(evil_report):
    data = json.loads(evil_report.read_text())
    assert data["sites"][0]["name"] == EVIL  # JSON keeps the exact name
    assert "\\u001b" in evil_report.read_text() and "\x1b" not in evil_report.read_text()
    data["model"]["path"] = f"models/{EVIL}.onnx"
    data["calibration"]["source"] = f"data/{C1}.npy"
    data["warnings"] = [f"a warning about {EVIL}"]
    evil_report.write_text(json.dumps(data))
    for args in ([], ["--format", "markdown"], ["--top", "1"]):
        result = cli("report", evil_report, *args)
        assert result.exit_code == 0, result.stderr
        assert_clean(result.stdout, result.stderr)
        assert EVIL_SHOWN in result.stdout


def test_markdown_shows_controls_as_text(evil_report, work):
    out = work / "summary.md"
    assert cli("report", evil_report, "--markdown", out, "--fail-over", "0.1").exit_code == 1
    text = out.read_text(encoding="utf-8")
    assert_clean(text.replace("\n", ""))
    assert "\\x1b" in text and "\\x07" in text and "\\x9b" in text and "\\x7f" in text


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_renderers_never_pass_control_bytes(evil_report, fmt):
    """Every string of the report (names, paths, messages, suggestions) through the renderer."""
    from reludoctor.report.baseline import load_report
    from reludoctor.reporters import render

    data = json.loads(evil_report.read_text())
    every = "".join(map(chr, range(0x00, 0xA0)))
    data["model"]["path"] = f"m{every}.onnx"
    for finding in data["findings"]:
        finding["message"] += every
        finding["suggestion"] += every
    evil_report.write_text(json.dumps(data))
    text = render(fmt, load_report(evil_report))
    assert_clean(text.replace("\n", ""))
    assert "\\x1b" in text


def test_diff_table_shows_names_escaped(evil_report, work):
    data = json.loads(evil_report.read_text())
    data["sites"][0]["dead_units"] = []
    data["sites"][0]["dead_ratio"] = 0.0
    older = work / f"older{EVIL}.json"
    older.write_text(json.dumps(data))
    result = cli("diff", older, evil_report)
    assert result.exit_code == 1, result.stderr
    assert_clean(result.stdout, result.stderr)
    assert EVIL_SHOWN in result.stdout


def test_error_lines_show_controls_escaped(evil_onnx, work):
    np.save(work / "wrong.npy", np.zeros((5, 7), np.float32))
    result = cli("scan", evil_onnx, "--data", "wrong.npy", "-q")
    assert result.exit_code == 2
    assert_clean(result.stderr.replace("\n", ""))
    assert INPUT_SHOWN in result.stderr
    missing = cli("report", f"{EVIL}.json")
    assert missing.exit_code == 2 and EVIL_SHOWN in missing.stderr
    assert_clean(missing.stderr.replace("\n", ""))


def test_warnings_show_controls_escaped():
    import io

    from rich.console import Console

    from reludoctor.cli import _warner

    buffer = io.StringIO()
    _warner(Console(file=buffer, width=200, color_system=None))(f"site {EVIL} [bold]x[/]")
    assert buffer.getvalue() == f"warning: site {EVIL_SHOWN} [bold]x[/]\n"


def test_json_output_stays_exact(evil_onnx):
    result = cli("scan", evil_onnx, "--data", "calib.npy", "-q", "--format", "json")
    assert result.exit_code == 0
    assert_clean(result.stdout.replace("\n", ""))
    names = [site["name"] for site in json.loads(result.stdout)["sites"]]
    assert names == [EVIL, C1]
