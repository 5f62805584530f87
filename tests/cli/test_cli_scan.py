"""`reludoctor scan` on good inputs: exit codes, stdout/stderr separation, the table, --json,
--quiet, --fail-over, determinism, and input files left untouched."""

from __future__ import annotations

import json
import os

import pytest
import reludoctor_cli_zoo as zoo
from reludoctor_cli_checks import sha256

import reludoctor
from reludoctor.report.schema import validate


def table_rows(stdout: str, names) -> dict[str, dict]:  # noqa: ANN001
    """Rows of the site table: {site: {index, op, units, dead}} (the width is pinned to 200)."""
    rows = {}
    for line in stdout.splitlines():
        tokens = line.split()
        if len(tokens) >= 6 and tokens[0].isdigit() and tokens[1] in names:
            rows[tokens[1]] = {"index": int(tokens[0]), "op": tokens[2], "units": int(tokens[3]),
                               "dead": int(tokens[4]), "dead%": tokens[5]}
    return rows


def test_good_scan_exits_0_with_the_table_on_stdout(cli, art):
    result = cli(art.pt2, "--data", art.npy)
    assert result.exit_code == 0, result.stderr
    assert "ReLU sites in execution order" in result.stdout
    dead = sum(len(units) for units in art.expected.values())
    assert f"dead units: {dead} of 40" in result.stdout
    assert result.stderr == ""  # real data, nothing to warn about, no progress off a terminal


def test_table_lists_every_site_with_independently_computed_dead_counts(cli, art):
    result = cli(art.pt2, "--data", art.npy)
    assert result.exit_code == 0, result.stderr
    rows = table_rows(result.stdout, zoo.SITE_NAMES)
    assert list(rows) == list(zoo.SITE_NAMES)  # every site, in execution order
    assert [rows[n]["index"] for n in zoo.SITE_NAMES] == [0, 1, 2, 3]
    assert {n: rows[n]["dead"] for n in rows} == {n: len(d) for n, d in art.expected.items()}
    assert {n: rows[n]["units"] for n in rows} == {"act#1": 16, "act#2": 12, "relu()": 6, "out": 6}
    assert rows["out"]["op"] == "relu6"
    for name, dead in zoo.PLANTED_DEAD.items():  # the planted units are among the dead
        assert set(dead) <= set(art.expected[name])


def test_json_file_is_schema_valid_and_matches_the_independent_computation(cli, art, tmp_path):
    out = tmp_path / "report.json"
    result = cli(art.pt2, "--data", art.npy, "--json", out)
    assert result.exit_code == 0, result.stderr
    assert "ReLU sites in execution order" in result.stdout  # --json PATH keeps the table
    report = json.loads(out.read_text())
    validate(report)
    assert report["model"]["format"] == "torch-export"
    assert report["model"]["sha256"] == sha256(art.pt2)
    assert report["calibration"]["samples"] == 64
    assert {s["name"]: s["dead_units"] for s in report["sites"]} == art.expected
    assert report["summary"]["dead_units"] == sum(len(d) for d in art.expected.values())


def test_json_dash_writes_only_json_to_stdout(cli, art):
    # No --data: synthetic inputs, so there is a warning - and it must go to stderr.
    result = cli(art.pt2, "--json", "-", "--limit", "40")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)  # the whole of stdout is one JSON document
    validate(report)
    assert report["calibration"]["synthetic"] is True
    assert report["calibration"]["samples"] == 40
    assert "synthetic" in result.stderr and "warning" in result.stderr
    assert "ReLU sites" not in result.stdout + result.stderr


@pytest.mark.slow
def test_json_dash_stream_separation_in_a_real_process(run_cli, art):
    # TTY_COMPATIBLE=1 makes rich treat both streams as terminals, so the progress bar is
    # drawn: it must land on stderr, and stdout must still be exactly the JSON report.
    proc = run_cli("scan", art.pt2, "--json", "-", "--limit", "40", "--batch-size", "8",
                   env={"TTY_COMPATIBLE": "1"})
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    validate(report)
    assert report["warnings"] and "synthetic" in report["warnings"][0]
    assert "synthetic" in proc.stderr
    assert "scanning" in proc.stderr  # the progress bar
    assert "Traceback" not in proc.stderr


def test_progress_goes_to_stderr_and_quiet_silences_it(cli, art):
    loud = cli(art.pt2, "--data", art.npy, "--batch-size", "8", env={"TTY_COMPATIBLE": "1"})
    quiet = cli(art.pt2, "--data", art.npy, "--batch-size", "8", "--quiet", env={"TTY_COMPATIBLE": "1"})
    assert loud.exit_code == quiet.exit_code == 0
    assert "scanning" in loud.stderr
    assert "scanning" not in loud.stdout
    assert "scanning" not in quiet.stdout + quiet.stderr
    assert "ReLU sites in execution order" in quiet.stdout


def test_quiet_keeps_the_report(cli, art):
    plain = cli(art.pt2, "--data", art.npy)
    quiet = cli(art.pt2, "--data", art.npy, "-q")
    assert quiet.exit_code == 0
    assert quiet.stdout == plain.stdout


@pytest.mark.parametrize("ratio, code", [
    ("0.2", 1),  # relu() and out are 2/6 dead
    ("0", 1),
    ("0.5", 0),
    (repr(1 / 3), 0),  # "exceeds": a ratio equal to the worst site's passes
    ("1", 0),
])
def test_fail_over_gate(cli, art, tmp_path, ratio, code):
    out = tmp_path / "r.json"
    result = cli(art.pt2, "--data", art.npy, "--fail-over", ratio, "--json", out)
    assert result.exit_code == code, result.stderr
    assert "ReLU sites in execution order" in result.stdout  # the report is written either way
    validate(json.loads(out.read_text()))
    if code == 1:
        assert "gate failed" in result.stderr
        assert "relu()" in result.stderr  # the worst site is named
    else:
        assert "gate failed" not in result.stderr


def test_fail_over_with_json_dash_keeps_stdout_pure_json(cli, art):
    result = cli(art.pt2, "--data", art.npy, "--fail-over", "0.1", "--json", "-")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    validate(report)
    assert report["summary"]["worst_site_dead_ratio"] > 0.1
    assert "gate failed" in result.stderr and "gate failed" not in result.stdout


def test_fail_over_zero_passes_a_model_without_dead_units(cli, art, tmp_path):
    out = tmp_path / "r.json"
    result = cli(art.clean_pt2, "--data", art.npy, "--fail-over", "0", "--json", out)
    assert result.exit_code == 0, result.stderr
    assert json.loads(out.read_text())["summary"]["dead_units"] == 0


@pytest.mark.parametrize("ratio", ["1.5", "-0.1", "nan"])
def test_fail_over_out_of_range_is_a_usage_error(cli, art, ratio):
    result = cli(art.pt2, "--data", art.npy, "--fail-over", ratio)
    from reludoctor_cli_checks import assert_input_error

    assert_input_error(result.exit_code, result.stdout, result.stderr, "--fail-over")


def test_fail_over_not_a_number_is_a_usage_error(cli, art):
    result = cli(art.pt2, "--fail-over", "lots")
    assert result.exit_code == 2
    assert "Traceback" not in result.stdout + result.stderr
    assert "--fail-over" in result.stderr


def test_same_inputs_give_the_same_report(cli, art, tmp_path):
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    one = cli(art.pt2, "--data", art.npy, "--json", first, "-b", "16")
    two = cli(art.pt2, "--data", art.npy, "--json", second, "-b", "16")
    assert one.exit_code == two.exit_code == 0
    assert first.read_bytes() == second.read_bytes()
    assert one.stdout == two.stdout


def test_batch_size_does_not_change_the_statistics(cli, art, tmp_path):
    reports = []
    for batch in ("64", "5"):
        out = tmp_path / f"b{batch}.json"
        assert cli(art.pt2, "--data", art.npy, "--json", out, "-b", batch).exit_code == 0
        reports.append(json.loads(out.read_text()))
    for a, b in zip(reports[0]["sites"], reports[1]["sites"]):
        assert a["dead_units"] == b["dead_units"]
        assert a["activation_rate"] == pytest.approx(b["activation_rate"])


def test_inputs_are_never_modified_and_no_stray_files(cli, art, tmp_path):
    inputs = [art.pt2, art.npy, art.torchscript, art.state_dict]
    before = {p: (sha256(p), p.stat().st_mtime_ns) for p in inputs}
    listing = set(os.listdir(art.root))
    out = tmp_path / "r.json"
    assert cli(art.pt2, "--data", art.npy, "--json", out).exit_code == 0
    assert cli(art.torchscript, "--data", art.npy, "--trust-model").exit_code == 0
    assert cli(art.state_dict, "--data", art.npy, "--arch", "reludoctor_cli_zoo:planted").exit_code == 0
    assert {p: (sha256(p), p.stat().st_mtime_ns) for p in inputs} == before
    assert set(os.listdir(art.root)) == listing
    assert os.listdir(tmp_path) == ["r.json"]  # written atomically: no temp file left behind


def test_json_overwrites_an_existing_report_atomically(cli, art, tmp_path):
    out = tmp_path / "r.json"
    out.write_text("stale")
    assert cli(art.pt2, "--data", art.npy, "--json", out).exit_code == 0
    validate(json.loads(out.read_text()))
    assert os.listdir(tmp_path) == ["r.json"]


@pytest.mark.parametrize("which, args, fmt, method", [
    ("torchscript", ["--trust-model"], "torchscript", "dispatch"),
    ("state_dict", ["--arch", "reludoctor_cli_zoo:planted"], "state-dict", "export"),
    ("state_dict", ["--arch", "reludoctor_cli_zoo:planted", "--arch-kwargs", '{"hidden": 16}',
                    "--method", "dispatch"], "state-dict", "dispatch"),
    ("pickled_module", ["--trust-model"], "pickled-module", "export"),
])
def test_every_model_format_scans(cli, art, tmp_path, which, args, fmt, method):
    out = tmp_path / "r.json"
    result = cli(getattr(art, which), "--data", art.npy, "--json", out, *args)
    assert result.exit_code == 0, result.stderr
    report = json.loads(out.read_text())
    validate(report)
    assert report["model"]["format"] == fmt
    assert report["model"]["method"] == method
    # Site names differ by format (TorchScript has no module paths); dead sets do not.
    assert [s["dead_units"] for s in report["sites"]] == list(art.expected.values())


def test_version(cli):
    result = cli("--version", command=None)
    assert result.exit_code == 0
    assert result.stdout.strip() == f"reludoctor {reludoctor.__version__}"


def test_version_in_a_real_process_matches_the_installed_metadata(run_cli):
    from importlib.metadata import version

    proc = run_cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"reludoctor {version('reludoctor')}"
    assert proc.stderr == ""


def test_help(cli):
    result = cli("--help", command=None)
    assert result.exit_code == 0
    assert "scan" in result.stdout
    result = cli("--help")
    assert result.exit_code == 0
    for option in ("--data", "--json", "--fail-over", "--trust-model", "--debug", "--quiet"):
        assert option in result.stdout


def _data_file(kind: str, x, tmp_path):  # noqa: ANN001, ANN202
    import numpy as np
    import torch

    path = tmp_path / f"data.{kind.split('-')[0]}"
    if kind == "npy-float64":
        np.save(path, x.astype(np.float64))
    elif kind == "npz-named":
        np.savez(path, x=x)
    elif kind == "npz-single-unnamed":
        np.savez(path, x)
    elif kind == "pt-tensor":
        torch.save(torch.from_numpy(x), path)
    elif kind == "pt-dict":
        torch.save({"x": torch.from_numpy(x)}, path)
    return path


@pytest.mark.parametrize("kind", ["npy-float64", "npz-named", "npz-single-unnamed", "pt-tensor", "pt-dict"])
def test_every_data_format_gives_the_same_dead_units(cli, art, tmp_path, kind):
    data = _data_file(kind, art.x, tmp_path)
    digest = sha256(data)
    out = tmp_path / "r.json"
    result = cli(art.pt2, "--data", data, "--json", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads(out.read_text())
    assert {s["name"]: s["dead_units"] for s in report["sites"]} == art.expected
    assert report["calibration"]["source"] == str(data)
    assert sha256(data) == digest


def test_limit_caps_the_samples(cli, art, tmp_path):
    out = tmp_path / "r.json"
    assert cli(art.pt2, "--data", art.npy, "--limit", "10", "--json", out).exit_code == 0
    report = json.loads(out.read_text())
    assert report["calibration"]["samples"] == 10
    assert all(s["samples"] == 10 for s in report["sites"])


def test_verbose_times_every_phase_of_the_scan_nested(cli, art):
    """`scan -v` says where the time went: the scan's own phases, nested under it, each with a
    time that adds up (a phase never takes longer than the phase it is part of)."""
    result = cli(art.pt2, "--data", art.npy, "-q", "-v")
    assert result.exit_code == 0, result.stderr
    lines = [line.split("time:", 1)[1] for line in result.stderr.splitlines() if "time:" in line]
    phases = {line.strip().rsplit(None, 2)[0]: (len(line) - len(line.lstrip()),
                                                 float(line.split()[-2])) for line in lines}
    for name in ("scan", "load model", "observe", "data pass", "write the report"):
        assert name in phases, lines
    assert phases["load model"][0] > phases["scan"][0]  # nested under the scan
    assert phases["data pass"][0] > phases["observe"][0]
    assert phases["load model"][1] + phases["observe"][1] <= phases["scan"][1] + 1e-3
