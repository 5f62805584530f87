"""`reludoctor scan --gradients [--labels FILE]`: the gradient columns and depth profile in the
table, the per-site gradient objects in the JSON, and the label errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
import reludoctor_cli_zoo as zoo
from reludoctor_cli_checks import assert_input_error, sha256

from reludoctor.reporters.terminal import SPARK, depth_profile


def test_depth_profile_is_log_scaled_between_the_extremes():
    assert depth_profile([1e-3, 1e-2, 1e-1]) == SPARK[0] + SPARK[4] + SPARK[-1]  # 0, 3.5 -> 4, 7
    assert depth_profile([None, 0.0, 5.0]) == " " + SPARK[0] + SPARK[0]  # one value: lowest bar
    assert depth_profile([]) == ""


@pytest.fixture
def labels(art, tmp_path):
    path = tmp_path / "labels.npy"
    np.save(path, np.arange(len(art.x)) % 6)
    return path


def site_rows(stdout: str) -> dict[str, list[str]]:
    return {tokens[1]: tokens for tokens in (line.split() for line in stdout.splitlines())
            if len(tokens) > 2 and tokens[0].isdigit() and tokens[1] in zoo.SITE_NAMES}


def test_gradients_add_columns_a_profile_and_json_objects(cli, art, labels, tmp_path):
    out = tmp_path / "report.json"
    before = sha256(labels)
    result = cli(art.pt2, "--data", art.npy, "--gradients", "--labels", labels, "--json", out)
    assert result.exit_code == 0, result.stderr
    report = json.loads(out.read_text())
    assert report["gradients"]["computed"] is True
    assert report["gradients"]["loss"] == "cross-entropy-labels"
    assert report["gradients"]["samples"] == len(art.x)
    header = next(line for line in result.stdout.splitlines() if " site " in line).split()
    assert header[-2:] == ["grad", "pass"]
    rows = site_rows(result.stdout)
    assert set(rows) == set(zoo.SITE_NAMES)
    for site in report["sites"]:
        gradient = site["gradient"]
        row = rows[site["name"]]
        # The table's cells are the JSON's values, rounded.
        assert row[header.index("grad")] == f"{gradient['rms_preactivation']:.1e}"
        assert row[header.index("pass")] == f"{gradient['pass_through']:.0%}"
        # The mask passes gradient where the pre-activation fired: the mean activation rate
        # (every unit has the same number of positions here).
        if site["upper_bound"] is None:
            assert gradient["pass_through"] == pytest.approx(np.mean(site["activation_rate"]), abs=1e-9)
    assert "gradient flow: loss cross-entropy-labels, 64 samples" in result.stdout
    assert sha256(labels) == before


def test_without_gradients_there_are_no_gradient_columns(cli, art):
    result = cli(art.pt2, "--data", art.npy)
    assert result.exit_code == 0, result.stderr
    assert "grad" not in result.stdout.split("dead units:")[0]
    assert "gradient flow" not in result.stdout


def test_no_gradients_flag_is_accepted(cli, art):
    result = cli(art.pt2, "--data", art.npy, "--no-gradients")
    assert result.exit_code == 0, result.stderr
    assert "gradient flow" not in result.stdout


def test_labels_without_gradients_is_a_usage_error(cli, art, labels):
    result = cli(art.pt2, "--data", art.npy, "--labels", labels)
    line = assert_input_error(result.exit_code, result.stdout, result.stderr)
    assert "--gradients" in line


def test_too_few_labels_is_one_line(cli, art, tmp_path):
    path = tmp_path / "short.npy"
    np.save(path, np.zeros(10, dtype=np.int64))
    result = cli(art.pt2, "--data", art.npy, "--gradients", "--labels", path)
    assert_input_error(result.exit_code, result.stdout, result.stderr, "labels")


def test_missing_labels_file_is_one_line(cli, art, tmp_path):
    path = tmp_path / "absent.npy"
    result = cli(art.pt2, "--data", art.npy, "--gradients", "--labels", path)
    assert_input_error(result.exit_code, result.stdout, result.stderr, str(path))


def test_json_may_not_overwrite_the_labels(cli, art, labels):
    before = sha256(labels)
    result = cli(art.pt2, "--data", art.npy, "--gradients", "--labels", labels, "--json", labels)
    assert_input_error(result.exit_code, result.stdout, result.stderr, "overwrite")
    assert sha256(labels) == before
