"""Settings files and saved reports are untrusted input (issue 10): a broken one is exit 2 with one
line naming the file, never a silent skip, a hang, unbounded memory or a traceback.

- settings: a TOML syntax error anywhere in a pyproject.toml on the search path used to be passed
  over, dropping the [tool.reludoctor] gate (exit 1 became 0); deep nesting, huge integers, bad
  UTF-8, FIFOs, devices and oversized files;
- saved reports and baselines (``report``, ``--baseline``, ``baseline =`` in settings, ``diff``,
  ``merge``): /dev/zero, FIFOs, deep nesting (RecursionError), a 100,000-digit integer, NaN and
  Infinity, numbers that overflow a float, files over the size limit.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.security.kit import CALIB, CNN_ONNX, ROOT, TERMINAL_ENV, cli
from tests.security.kit import refused as one_line_error

# --- helpers --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def saved_report(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real report: digits_cnn.onnx scanned on the bundled calibration data (it has dead units)."""
    from typer.testing import CliRunner

    from reludoctor.cli import app

    out = tmp_path_factory.mktemp("saved") / "report.json"
    result = CliRunner().invoke(app, ["scan", str(CNN_ONNX), "--data", str(CALIB), "-q", "--json", str(out),
                                      "--format", "json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text())["summary"]["dead_units"] > 0
    return out


@pytest.fixture
def work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty working folder (a child of tmp_path, so tests can put settings in its parent)."""
    folder = tmp_path / "project" / "sub"
    folder.mkdir(parents=True)
    monkeypatch.chdir(folder)
    return folder


def run(*args: object, cwd: Path, timeout: float = 120) -> subprocess.CompletedProcess:
    """``python -m reludoctor ARGS`` in a real process (FIFOs and devices: a regression would
    block or grow memory, so it must not run inside the test process)."""
    env = {k: v for k, v in os.environ.items() if k not in TERMINAL_ENV}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return subprocess.run([sys.executable, "-m", "reludoctor", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=env, timeout=timeout)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --- settings --------------------------------------------------------------------------------

GATE = "[tool.reludoctor]\nfail-over = 0.01\n"
BROKEN_PROJECT = '[project]\nname = "demo"\nversion = 1.0.0\n'  # unquoted version: a syntax error


def test_a_valid_pyproject_gate_fails_the_report(work, saved_report):
    """The control: the same gate in a valid pyproject.toml fails (exit 1)."""
    write(work / "pyproject.toml", '[project]\nname = "demo"\nversion = "1.0.0"\n' + GATE)
    assert cli("report", saved_report).exit_code == 1


@pytest.mark.parametrize("where", ["here", "parent"])
def test_broken_pyproject_is_an_error_not_a_skipped_gate(work, saved_report, where):
    folder = work if where == "here" else work.parent
    path = write(folder / "pyproject.toml", BROKEN_PROJECT + GATE)
    line = one_line_error(cli("report", saved_report), str(path), "line 3", "not valid TOML")
    assert "reludoctor.toml" not in line


def test_broken_pyproject_without_our_table_is_still_an_error(work, saved_report):
    """Whether it holds [tool.reludoctor] cannot be known: it is never passed over."""
    path = write(work.parent / "pyproject.toml", BROKEN_PROJECT)
    one_line_error(cli("report", saved_report), str(path), "line 3")


def test_broken_pyproject_stops_a_scan_too(work):
    path = write(work / "pyproject.toml", BROKEN_PROJECT + GATE)
    one_line_error(cli("scan", CNN_ONNX, "--data", CALIB, "-q"), str(path), "line 3")


@pytest.mark.parametrize("text, mentions", [
    pytest.param("fail-over = " + "[" * 5000 + "]" * 5000 + "\n", ["nested too deeply"], id="deep-arrays"),
    pytest.param("sites = " + "{a = " * 3000 + "1" + "}" * 3000 + "\n", ["nested too deeply"], id="deep-tables"),
    pytest.param("top = " + "9" * 100_000 + "\n", ["4300"], id="huge-integer"),
    pytest.param("fail-over = 0.2\nfail-on = [\n", ["line", "not valid TOML"], id="syntax"),
])
def test_unparsable_reludoctor_toml_is_exit_2(work, saved_report, text, mentions):
    path = write(work / "reludoctor.toml", text)
    one_line_error(cli("report", saved_report), str(path), *mentions)
    one_line_error(cli("report", saved_report, "--config", path), str(path), *mentions)


def test_settings_that_are_not_utf8_name_the_line(work, saved_report):
    path = work / "reludoctor.toml"
    path.write_bytes(b"top = 3\n# caf\xe9\n")
    one_line_error(cli("report", saved_report), str(path), "line 2", "UTF-8")


def test_settings_over_the_size_limit_are_refused(work, saved_report, monkeypatch):
    from reludoctor import safeio

    path = write(work / "reludoctor.toml", "top = 3\n" + "# padding\n" * 20)
    monkeypatch.setattr(safeio, "MAX_SETTINGS_BYTES", 64)
    one_line_error(cli("report", saved_report), str(path), "limit")


def test_the_documented_settings_limit():
    from reludoctor import safeio

    assert safeio.MAX_SETTINGS_BYTES == 4 << 20
    assert safeio.MAX_REPORT_BYTES == 256 << 20


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
@pytest.mark.parametrize("name", ["reludoctor.toml", "pyproject.toml"])
def test_a_fifo_as_settings_does_not_block(tmp_path, saved_report, name):
    os.mkfifo(tmp_path / name)
    result = run("report", saved_report, cwd=tmp_path)
    one_line_error(result, name, "FIFO")
    result = run("report", saved_report, "--config", tmp_path / name, cwd=tmp_path)
    one_line_error(result, name, "FIFO")


def test_a_directory_as_config_is_exit_2(work, saved_report):
    (work / "conf.toml").mkdir()
    one_line_error(cli("report", saved_report, "--config", work / "conf.toml"), "conf.toml", "directory")


# --- saved reports and baselines -------------------------------------------------------------


def report_text(saved_report: Path) -> str:
    return saved_report.read_text(encoding="utf-8")


def with_value(saved_report: Path, old: str, new: str) -> str:
    text = report_text(saved_report)
    assert old in text
    return text.replace(old, new, 1)


ODDITIES = {
    "deep-arrays": lambda r: "[" * 100_000 + "]" * 100_000,
    "deep-objects": lambda r: '{"a": ' * 50_000 + "1" + "}" * 50_000,
    "deep-inside-a-report": lambda r: with_value(r, '"warnings": [', '"warnings": [' + "[" * 100_000 + "]" * 100_000 + ","),
    "huge-integer": lambda r: with_value(r, '"schema_version": 1', '"schema_version": ' + "1" * 100_000),
    "huge-negative-integer": lambda r: with_value(r, '"schema_version": 1', '"schema_version": -' + "7" * 100_000),
    "nan": lambda r: with_value(r, '"dead_ratio": ', '"dead_ratio": NaN, "x": '),
    "infinity": lambda r: with_value(r, '"dead_ratio": ', '"dead_ratio": Infinity, "x": '),
    "minus-infinity": lambda r: with_value(r, '"dead_ratio": ', '"dead_ratio": -Infinity, "x": '),
    "overflowing-float": lambda r: with_value(r, '"dead_ratio": ', '"dead_ratio": 1e999, "x": '),
    "huge-float": lambda r: with_value(r, '"dead_ratio": ', '"dead_ratio": 0.' + "1" * 100_000 + ', "x": '),
    "not-utf8": None,
}


@pytest.mark.parametrize("oddity", sorted(ODDITIES))
def test_malformed_saved_reports_are_one_line_exit_2(work, saved_report, oddity):
    bad = work / "bad.json"
    if oddity == "not-utf8":
        bad.write_bytes(report_text(saved_report).encode()[:200] + b"\xff\xfe")
    else:
        bad.write_text(ODDITIES[oddity](saved_report), encoding="utf-8")
    one_line_error(cli("report", bad), "bad.json")
    one_line_error(cli("report", saved_report, "--baseline", bad), "baseline", "bad.json")
    one_line_error(cli("diff", saved_report, bad), "report B", "bad.json")
    one_line_error(cli("merge", saved_report, bad), "bad.json")


def test_load_report_raises_report_format_error(work, saved_report):
    from reludoctor.report.baseline import load_report
    from reludoctor.report.model import ReportFormatError

    bad = write(work / "nan.json", with_value(saved_report, '"dead_ratio": ', '"dead_ratio": NaN, "x": '))
    with pytest.raises(ReportFormatError) as info:
        load_report(bad, "baseline")
    assert info.value.exit_code == 2 and "NaN" in info.value.one_line()
    assert load_report(saved_report).summary.dead_units > 0  # the real report still loads


def test_reports_over_the_size_limit_are_refused(work, saved_report, monkeypatch):
    from reludoctor import safeio

    monkeypatch.setattr(safeio, "MAX_REPORT_BYTES", 1000)
    one_line_error(cli("report", saved_report), "report.json", "limit")


def test_dev_zero_as_a_report_is_refused(tmp_path):
    one_line_error(run("report", "/dev/zero", cwd=tmp_path), "/dev/zero", "device")


def test_dev_zero_as_a_baseline_in_parent_settings_is_refused(tmp_path, saved_report):
    """``baseline = "/dev/zero"`` in a parent folder's settings grew memory without bound."""
    write(tmp_path / "reludoctor.toml", 'baseline = "/dev/zero"\n')
    (tmp_path / "child").mkdir()
    one_line_error(run("report", saved_report, cwd=tmp_path / "child"), "baseline", "/dev/zero", "device")
    one_line_error(run("scan", CNN_ONNX, "--data", CALIB, "-q", cwd=tmp_path / "child"),
                   "baseline", "/dev/zero")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="FIFOs are POSIX")
def test_a_fifo_as_report_or_baseline_does_not_hang(tmp_path, saved_report):
    os.mkfifo(tmp_path / "pipe.json")
    one_line_error(run("report", "pipe.json", cwd=tmp_path), "pipe.json", "FIFO")
    one_line_error(run("report", saved_report, "--baseline", "pipe.json", cwd=tmp_path), "pipe.json", "FIFO")
    write(tmp_path / "reludoctor.toml", 'baseline = "pipe.json"\n')
    one_line_error(run("scan", CNN_ONNX, "--data", CALIB, "-q", cwd=tmp_path), "baseline", "FIFO")


def test_missing_and_directory_reports_keep_their_messages(work):
    one_line_error(cli("report", work / "nope.json"), "nope.json", "not found")
    (work / "folder.json").mkdir()
    one_line_error(cli("report", work / "folder.json"), "folder.json", "directory")


@pytest.mark.parametrize("change", ["schema_version", "sites", "model"])
def test_error_lines_quote_huge_values_only_in_part(work, saved_report, change):
    """A report is untrusted: a 1 MB value in it does not become a 1 MB error line."""
    data = json.loads(report_text(saved_report))
    data[change] = "A" * 1_000_000 if change != "model" else {"k" * 100_000: 1}
    bad = work / "huge.json"
    bad.write_text(json.dumps(data))
    line = one_line_error(cli("report", bad), "huge.json")
    assert len(line) < 1000


def test_settings_errors_quote_huge_keys_and_values_only_in_part(work, saved_report):
    write(work / "reludoctor.toml", '"' + "k" * 100_000 + '" = 1\n')
    assert len(one_line_error(cli("report", saved_report), "unknown key")) < 1000
    write(work / "reludoctor.toml", 'fail-on = "' + "x!" * 100_000 + '"\n')
    assert len(one_line_error(cli("report", saved_report), "fail-on")) < 1000


def test_reading_a_small_file_under_a_huge_limit_allocates_only_its_size(tmp_path):
    """read_limited asks for the size it found, not the limit: reading 9 bytes under a 1 TiB
    limit used to ask Python for a 1 TiB buffer (a MemoryError under an address-space limit, as
    a 6-line texts file under the 1 GiB text limit was in the fuzz harness)."""
    from reludoctor import safeio
    from reludoctor.errors import DataError

    path = tmp_path / "small.txt"
    path.write_bytes(b"a dog ran")
    assert safeio.read_limited(path, 1 << 40, "text data", DataError) == b"a dog ran"
    with pytest.raises(DataError, match="more than the limit"):
        safeio.read_limited(path, 4, "text data", DataError)
