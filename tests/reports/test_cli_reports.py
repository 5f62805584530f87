"""The command line around reports: `reludoctor report`, `reludoctor diff`, several outputs in one
run, gates and settings files, baselines, NO_COLOR, terminal width, --top, and a real scan."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fixed import NASTY, baseline_report, fixed_report, judged_report, make_report, make_site

from reludoctor.report.schema import validate


def save(path: Path, report) -> Path:  # noqa: ANN001
    path.write_text(report.to_json())
    return path


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    return save(tmp_path / "saved.json", fixed_report())


def one_line_error(result, *mentions: str) -> str:  # noqa: ANN001
    assert result.exit_code == 2, (result.exit_code, result.stdout, result.stderr)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reludoctor: error:"), result.stderr
    assert "Traceback" not in result.stderr
    for text in mentions:
        assert text in lines[0], (text, lines[0])
    return lines[0]


# --- report: a saved JSON report in every format -------------------------------------------


def test_report_json_round_trip_is_byte_identical(cli, saved, tmp_path):
    out = tmp_path / "again.json"
    result = cli("report", saved, "--json", out)
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes() == saved.read_bytes()
    assert "ReLU sites in execution order" in result.stdout  # the table still goes to stdout
    stdout = cli("report", saved, "--format", "json")
    assert stdout.exit_code == 0 and stdout.stdout == saved.read_text()


def test_report_writes_every_format_in_one_run(cli, saved, tmp_path):
    paths = {fmt: tmp_path / f"out.{fmt}" for fmt in ("json", "markdown", "sarif", "html")}
    args = [a for fmt, path in paths.items() for a in (f"--{fmt}", path)]
    result = cli("report", saved, *args, "--junit", "-")
    assert result.exit_code == 0, result.stderr
    root = ET.fromstring(result.stdout)  # stdout is exactly the JUnit XML
    assert root.tag == "testsuites"
    validate(json.loads(paths["json"].read_text()))
    assert json.loads(paths["sarif"].read_text())["version"] == "2.1.0"
    assert paths["html"].read_text().startswith("<!DOCTYPE html>")
    assert paths["markdown"].read_text().startswith("## reludoctor")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["saved.json", "work"] + [p.name for p in paths.values()])  # no temp files left


def test_report_markdown_to_stdout(cli, saved):
    result = cli("report", saved, "--format", "markdown", "--top", "2")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.startswith("## reludoctor") and "Worst sites (2 of 6)" in result.stdout


@pytest.mark.parametrize("args, mentions", [
    (["--json", "-", "--junit", "-"], ["--json -", "--junit -", "only one output"]),
    (["--markdown", "-", "--format", "json"], ["--markdown -", "--format json"]),
    (["--format", "junit"], ["--format 'junit'", "table, json, markdown"]),
    (["--top", "0"], ["--top"]),
    (["--fail-over", "1.5"], ["--fail-over"]),
    (["--fail-on", "bad rule!"], ["--fail-on", "bad rule!"]),
    (["--fail-over-site", "layer4"], ["--fail-over-site", "PATTERN=RATIO"]),
    (["--fail-over-site", "layer4.*=lots"], ["--fail-over-site", "lots"]),
    (["--config", "missing.toml"], ["missing.toml", "not found"]),
])
def test_report_usage_errors(cli, saved, args, mentions):
    one_line_error(cli("report", saved, *args), *mentions)


def test_outputs_may_not_collide_or_overwrite_inputs(cli, saved, tmp_path):
    out = tmp_path / "x.md"
    one_line_error(cli("report", saved, "--markdown", out, "--html", out), "--markdown", "--html", "both write")
    one_line_error(cli("report", saved, "--html", saved), "--html", "would overwrite an input")
    one_line_error(cli("report", saved, "--sarif", tmp_path), "--sarif", "is a directory")
    one_line_error(cli("report", saved, "--junit", tmp_path / "no" / "x.xml"), "--junit", "does not exist")


@pytest.mark.parametrize("content, mentions", [
    ('{"schema_version": 2, "sites": []}', ["schema_version 2 is not supported", "schema_version 1 only"]),
    ("{not json", ["not valid JSON", "line 1"]),
    ("[1, 2]", ["JSON object"]),
    ('{"hello": 1}', ["no schema_version"]),
    ("", ["not valid JSON"]),
])
def test_unreadable_saved_reports_exit_2(cli, tmp_path, content, mentions):
    path = tmp_path / "bad.json"
    path.write_text(content)
    one_line_error(cli("report", path, "--html", tmp_path / "out.html"), str(path), *mentions)
    assert not (tmp_path / "out.html").exists()


def test_schema_invalid_report_exits_2(cli, tmp_path):
    data = fixed_report().to_dict()
    data["sites"][0]["units"] = -3
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    one_line_error(cli("report", path), "sites[0].units")


def test_reports_written_before_baseline_and_gates_existed_still_load(cli, tmp_path):
    data = fixed_report().to_dict()
    del data["baseline"], data["gates"]
    old = tmp_path / "old-v1.json"
    old.write_text(json.dumps(data))
    out = tmp_path / "now.json"
    result = cli("report", old, "--json", out)
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text()) == fixed_report().to_dict()


def test_missing_saved_report(cli, tmp_path):
    one_line_error(cli("report", tmp_path / "nope.json"), "nope.json", "not found")


# --- gates on saved reports ------------------------------------------------------------------


def test_report_gates_exit_1_and_junit_lists_failing_sites(cli, saved, tmp_path):
    junit = tmp_path / "j.xml"
    result = cli("report", saved, "--fail-over", "0.2", "--junit", junit)
    assert result.exit_code == 1, result.stderr
    assert "gate failed: 3 site(s) over --fail-over 0.2; worst layer2.0.relu at 100.0% dead" in result.stderr
    failing = {case.get("name") for case in ET.parse(junit).getroot().iter("testcase")
               if case.find("failure") is not None}
    assert failing == {"layer1.0.relu", "layer2.0.relu", NASTY}  # 21.9%, 100%, 25% > 20%
    assert "gates: FAILED" in result.stdout
    assert cli("report", saved, "--fail-over", "1").exit_code == 0


@pytest.mark.parametrize("tokens, code", [
    (["error"], 1), (["warning"], 1), (["saturated-units"], 1), (["error,saturated-units"], 1),
    (["synthetic-data"], 0),
])
def test_report_fail_on(cli, saved, tokens, code):
    args = [a for token in tokens for a in ("--fail-on", token)]
    result = cli("report", saved, *args)
    assert result.exit_code == code, result.stderr


def test_unknown_fail_on_rule_warns(cli, saved):
    result = cli("report", saved, "--fail-on", "dead-sites")
    assert result.exit_code == 0
    assert "warning:" in result.stderr and "dead-sites" in result.stderr


def test_saved_gate_outcome_is_kept_unless_gates_are_configured(cli, tmp_path):
    judged = save(tmp_path / "judged.json", judged_report())
    kept = cli("report", judged, "--format", "json")
    assert kept.exit_code == 1  # the saved outcome failed
    assert json.loads(kept.stdout)["gates"] == judged_report().to_dict()["gates"]
    again = cli("report", judged, "--fail-over", "1", "--format", "json")
    # gates set now replace the saved outcome; the saved baseline comparison still gates
    gates = json.loads(again.stdout)["gates"]
    assert gates["checks"] == ["fail-over 1", "baseline reports/baseline.json"]
    assert {f["gate"] for f in gates["failures"]} == {"baseline"}
    assert again.exit_code == 1


# --- settings files on the command line ------------------------------------------------------


def test_settings_file_found_from_the_current_directory(cli, saved):
    Path("reludoctor.toml").write_text('fail-over = 0.2\n[sites]\n"layer1.*" = 0.5\n"<script>*" = 0.5\n')
    result = cli("report", saved, "--format", "json")
    assert result.exit_code == 1
    gates = json.loads(result.stdout)["gates"]
    assert [f["site"] for f in gates["failures"]] == ["layer2.0.relu"]  # the others have 0.5
    assert cli("report", saved, "--fail-over-site", "layer2.*=1").exit_code == 0  # CLI wins


def test_pyproject_settings_and_config_option(cli, saved, tmp_path):
    Path("pyproject.toml").write_text('[project]\nname = "demo"\n[tool.reludoctor]\nfail-on = "error"\n')
    assert cli("report", saved).exit_code == 1
    other = tmp_path / "other.toml"
    other.write_text("fail-over = 1\n")
    assert cli("report", saved, "--config", other).exit_code == 0


def test_unknown_settings_key_exits_2_naming_it(cli, saved):
    Path("pyproject.toml").write_text("[tool.reludoctor]\nfail_ovr = 0.2\n")
    one_line_error(cli("report", saved), "pyproject.toml", "fail_ovr", "[tool.reludoctor]")


def test_settings_baseline_is_relative_to_the_file(cli, tmp_path):
    folder = tmp_path / "project"
    (folder / "reports").mkdir(parents=True)
    save(folder / "reports" / "base.json", baseline_report())
    (folder / "reludoctor.toml").write_text('baseline = "reports/base.json"\n')
    current = save(tmp_path / "current.json", fixed_report())
    result = cli("report", current, "--config", folder / "reludoctor.toml", "--format", "json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["baseline"]["newly_dead_units"] == 6


# --- baselines and diff ----------------------------------------------------------------------


def test_report_with_a_baseline_lists_changes(cli, saved, tmp_path):
    old = save(tmp_path / "old.json", baseline_report())
    out = tmp_path / "with-baseline.json"
    result = cli("report", saved, "--baseline", old, "--json", out)
    assert result.exit_code == 1
    data = json.loads(out.read_text())
    validate(data)
    stem = next(s for s in data["baseline"]["sites"] if s["name"] == "stem.relu")
    assert (stem["still_dead"], stem["newly_dead"], stem["revived"]) == ([3], [9], [5])
    words = " ".join(result.stdout.split())  # long temporary paths wrap
    assert "baseline:" in words and "6 newly dead, 1 revived" in words
    assert "gate failed: 3 site(s) got worse than the baseline" in result.stderr
    same = cli("report", saved, "--baseline", saved)
    assert same.exit_code == 0, same.stderr


def test_bad_baseline_exits_2(cli, saved, tmp_path):
    bad = tmp_path / "old.json"
    bad.write_text('{"schema_version": 7}')
    one_line_error(cli("report", saved, "--baseline", bad), "baseline", "schema_version 7")


def test_diff_exit_codes_and_tolerance(cli, tmp_path):
    a = save(tmp_path / "a.json", make_report((make_site("x", 10, dead=(0,)), make_site("y", 4))))
    b = save(tmp_path / "b.json", make_report((make_site("x", 10, dead=(0, 1, 2)), make_site("y", 4))))
    same = cli("diff", a, a)
    assert same.exit_code == 0 and "no site got worse" in same.stdout
    worse = cli("diff", a, b)
    assert worse.exit_code == 1
    assert "worse: 1 site(s)" in worse.stdout and "+20.0pt" in worse.stdout
    assert cli("diff", b, a).exit_code == 0  # better is fine
    assert cli("diff", a, b, "--tolerance", "0.2").exit_code == 0  # exactly the tolerance
    assert cli("diff", a, b, "--tolerance", "0.19").exit_code == 1


def test_diff_json(cli, tmp_path):
    a = save(tmp_path / "a.json", baseline_report())
    b = save(tmp_path / "b.json", fixed_report())
    result = cli("diff", a, b, "--json", "-")
    assert result.exit_code == 1
    data = json.loads(result.stdout)
    assert data["worse_sites"] == ["layer2.0.relu", NASTY]  # +50pt and a new site at 25%
    assert (data["newly_dead_units"], data["revived_units"], data["still_dead_units"]) == (6, 1, 12)
    assert data["removed_sites"] == ["old.relu"]
    out = tmp_path / "d.json"
    to_file = cli("diff", a, b, "--json", out, "--tolerance", "0.5")
    assert to_file.exit_code == 0 and json.loads(out.read_text())["worse"] is False
    assert "A: " in to_file.stdout  # the table too


@pytest.mark.parametrize("args, mentions", [
    (["--tolerance", "2"], ["--tolerance"]),
    (["--tolerance", "-0.1"], ["--tolerance"]),
])
def test_diff_usage_errors(cli, tmp_path, args, mentions):
    a = save(tmp_path / "a.json", fixed_report())
    one_line_error(cli("diff", a, a, *args), *mentions)


def test_diff_refuses_other_schema_versions(cli, tmp_path):
    a = save(tmp_path / "a.json", fixed_report())
    b = tmp_path / "b.json"
    b.write_text('{"schema_version": 2}')
    one_line_error(cli("diff", a, b), "report B", "schema_version 2")


# --- terminal polish -------------------------------------------------------------------------

SGR = re.compile(r"\x1b\[([0-9;]*)m")


def colour_codes(text: str) -> set[str]:
    """SGR parameters that set a colour (30-38, 40-48, 90-97, 100-107); bold etc. are not colour."""
    found = set()
    for params in SGR.findall(text):
        parts = params.split(";")
        i = 0
        while i < len(parts):
            p = int(parts[i] or 0)
            if p in (38, 48):
                found.add(";".join(parts[i:i + 3]))
                i += 3 if i + 1 < len(parts) and parts[i + 1] == "5" else 5
                continue
            if 30 <= p <= 37 or 40 <= p <= 47 or 90 <= p <= 97 or 100 <= p <= 107:
                found.add(str(p))
            i += 1
    return found


def test_no_color_is_respected(cli, saved):
    coloured = cli("report", saved, env={"TTY_COMPATIBLE": "1"})
    assert coloured.exit_code == 0
    assert colour_codes(coloured.stdout)  # a terminal gets colours...
    plain = cli("report", saved, env={"TTY_COMPATIBLE": "1", "NO_COLOR": "1"})
    assert plain.exit_code == 0
    assert not colour_codes(plain.stdout)  # ...unless NO_COLOR is set
    assert SGR.sub("", plain.stdout) == SGR.sub("", coloured.stdout)
    piped = cli("report", saved)
    assert "\x1b[" not in piped.stdout  # not a terminal: no escape codes at all


@pytest.mark.parametrize("width", [60, 80, 132])
def test_terminal_width_is_respected(cli, saved, width):
    result = cli("report", saved, env={"COLUMNS": str(width)})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert max(len(line) for line in lines) <= width
    assert any("layer2.0.relu" in line and "100.0%" in line for line in lines)  # numbers kept


def test_top_limits_the_table_and_says_how_many_are_hidden(cli, saved):
    result = cli("report", saved, "--top", "2")
    assert result.exit_code == 0
    rows = [line.split() for line in result.stdout.splitlines()
            if re.match(r"^\s*\d+\s+\S", line) and "%" in line]
    assert [row[0] for row in rows] == ["3", "5"]  # the worst two, in execution order
    assert "(the 2 worst of 6)" in result.stdout
    assert "4 more site(s) hidden by --top 2" in result.stdout
    full = cli("report", saved, "--top", "10")
    assert "hidden" not in full.stdout


def test_human_readable_numbers_in_the_table(cli, tmp_path):
    big = make_report((make_site("wide.relu", 12_345, dead=tuple(range(1_500))),))
    path = save(tmp_path / "big.json", big)
    result = cli("report", path)
    assert result.exit_code == 0
    assert "12.3k" in result.stdout and "1.5k" in result.stdout
    assert "dead units: 1.5k of 12.3k" in result.stdout


def test_rendering_a_saved_report_does_not_import_torch(tmp_path):
    path = save(tmp_path / "r.json", fixed_report())
    code = ("import sys\n"
            f"sys.argv = ['reludoctor', 'report', {str(path)!r}, '--markdown', '-']\n"
            "import reludoctor.cli as cli\n"
            "try:\n"
            "    cli.main()\n"
            "except SystemExit as exc:\n"
            "    assert exc.code == 0, exc.code\n"
            "assert 'torch' not in sys.modules\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("## reludoctor")


# --- a real scan -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An MLP with units 0-2 of the first ReLU planted dead, exported with a dynamic batch."""
    import torch

    root = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.ReLU(), torch.nn.Linear(8, 5),
                                torch.nn.ReLU()).eval()
    with torch.no_grad():
        model[0].bias[:3] = -1e3
    example = (torch.randn(2, 6),)
    torch.export.save(torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},)),
                      root / "tiny.pt2")
    np.save(root / "x.npy", np.random.default_rng(0).standard_normal((64, 6)).astype(np.float32))
    return {"model": root / "tiny.pt2", "data": root / "x.npy", "root": root}


def test_scan_writes_every_format_and_gates(cli, tiny, tmp_path):
    outputs = {fmt: tmp_path / f"scan.{fmt}" for fmt in ("json", "markdown", "sarif", "html")}
    args = [a for fmt, path in outputs.items() for a in (f"--{fmt}", path)]
    result = cli("scan", tiny["model"], "--data", tiny["data"], *args, "--junit", "-",
                 "--fail-over-site", "*=0.3")
    assert result.exit_code == 1, result.stderr  # 3 of 8 dead at the first site: 37.5% > 30%
    cases = {c.get("name"): c for c in ET.fromstring(result.stdout).iter("testcase")}
    report = json.loads(outputs["json"].read_text())
    validate(report)
    first = report["sites"][0]["name"]
    assert report["sites"][0]["dead_units"] == [0, 1, 2]
    assert cases[first].find("failure") is not None
    assert "37.5%" in cases[first].find("failure").get("message")
    assert report["gates"]["failures"][0]["gate"] == "site-threshold"
    assert "gate failed" in result.stderr
    assert outputs["html"].read_text().count("<svg") == 3
    log = json.loads(outputs["sarif"].read_text())
    assert log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] \
        .endswith("tiny.pt2")


def test_scan_against_its_own_baseline_passes_and_against_a_better_one_fails(cli, tiny, tmp_path):
    first = tmp_path / "first.json"
    assert cli("scan", tiny["model"], "--data", tiny["data"], "--json", first).exit_code == 0
    again = cli("scan", tiny["model"], "--data", tiny["data"], "--baseline", first, "--format", "json")
    assert again.exit_code == 0, again.stderr
    data = json.loads(first.read_text())
    assert json.loads(again.stdout)["baseline"]["still_dead_units"] == data["summary"]["dead_units"]
    data["sites"][0]["dead_units"] = [0]  # pretend the baseline had only unit 0 dead
    better = tmp_path / "better.json"
    better.write_text(json.dumps(data))
    worse = cli("scan", tiny["model"], "--data", tiny["data"], "--baseline", better, "--format", "json")
    assert worse.exit_code == 1
    change = json.loads(worse.stdout)["baseline"]["sites"][0]
    assert (change["still_dead"], change["newly_dead"]) == ([0], [1, 2])


def test_scan_refuses_a_bad_baseline_before_scanning(cli, tiny, tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    one_line_error(cli("scan", tiny["model"], "--data", tiny["data"], "--baseline", bad), "bad.json")


def test_scan_clean_model_emits_machine_formats(cli, tiny, tmp_path):
    junit, sarif = tmp_path / "j.xml", tmp_path / "s.sarif"
    result = cli("scan", tiny["model"], "--data", tiny["data"], "--junit", junit, "--sarif", sarif,
                 "--fail-over", "0.5")
    assert result.exit_code == 0, result.stderr
    suite = ET.parse(junit).getroot().find("testsuite")
    assert suite.get("failures") == "0" and suite.get("tests") == "2"
    assert json.loads(sarif.read_text())["version"] == "2.1.0"


def test_gated_scan_report_round_trips_through_report(cli, tiny, tmp_path):
    out = tmp_path / "gated.json"
    cli("scan", tiny["model"], "--data", tiny["data"], "--json", out, "--fail-on", "warning")
    again = tmp_path / "again.json"
    result = cli("report", out, "--json", again)
    assert result.exit_code == 1  # the saved, failed outcome is kept
    assert again.read_bytes() == out.read_bytes()


def test_report_of_a_changed_report_keeps_unknown_fields_out(cli, tmp_path):
    data = replace(fixed_report()).to_dict()
    data["future_key"] = 1
    path = tmp_path / "future.json"
    path.write_text(json.dumps(data))
    result = cli("report", path, "--format", "json")
    assert result.exit_code == 0
    assert "future_key" not in json.loads(result.stdout)
