"""Gates, baselines and settings files on reports built in code, with expectations written out
independently of reludoctor's code."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from fixed import baseline_report, finding, fixed_report, make_report, make_site

from reludoctor.report import gates
from reludoctor.report.baseline import compare, diff_rows, diff_to_dict, got_worse
from reludoctor.report.config import ConfigError, Overrides, Settings, find_config, load_config, resolve


def three_sites():
    """a: 2/10 dead, b.x: 5/10 dead, b.y: 0/4 dead; findings: a warning at a, an error at b.x,
    a scan-wide warning."""
    sites = (make_site("a", 10, dead=(0, 1)), make_site("b.x", 10, dead=(0, 1, 2, 3, 4)),
             make_site("b.y", 4))
    findings = (finding("dead-units", "warning", "a", "2 dead"),
                finding("dead-site", "error", "b.x", "half dead"),
                finding("synthetic-data", "warning", None, "synthetic"),
                finding("dormant-units", "info", "b.y", "dormant"))
    return make_report(sites, findings)


def failing(outcome) -> set[tuple[str, str | None]]:  # noqa: ANN001
    return {(f.gate, f.site) for f in outcome.failures}


# --- gates -----------------------------------------------------------------------------------


def test_no_gates_no_outcome():
    assert gates.evaluate(three_sites(), Settings()) is None


@pytest.mark.parametrize("ratio, expected", [
    (0.1, {"a", "b.x"}), (0.2, {"b.x"}), (0.49, {"b.x"}), (0.5, set()), (0.0, {"a", "b.x"}), (1.0, set()),
])
def test_fail_over_fails_sites_strictly_above_the_ratio(ratio, expected):
    outcome = gates.evaluate(three_sites(), Settings(fail_over=ratio))
    assert {site for _, site in failing(outcome)} == expected
    assert outcome.passed == (not expected)
    assert outcome.checks == (f"fail-over {ratio:g}",)


def test_site_thresholds_override_fail_over_first_pattern_wins():
    settings = Settings(fail_over=0.1, site_limits=(("b.*", 0.6), ("*", 0.0)))
    outcome = gates.evaluate(three_sites(), settings)
    # b.x: 50% <= 60% (its pattern); a: 20% > 0% (the catch-all pattern, not fail-over 0.1)
    assert failing(outcome) == {("site-threshold", "a")}
    assert outcome.failures[0].limit == 0.0 and outcome.failures[0].value == 0.2
    assert "'*'" in outcome.failures[0].message


def test_site_threshold_without_fail_over_only_checks_matching_sites():
    outcome = gates.evaluate(three_sites(), Settings(site_limits=(("b.?", 0.3),)))
    assert failing(outcome) == {("site-threshold", "b.x")}
    assert gates.limit_for("a", Settings(site_limits=(("b.?", 0.3),))) == (None, None)


@pytest.mark.parametrize("tokens, expected", [
    (("error",), {("fail-on", "b.x")}),
    (("warning",), {("fail-on", "a"), ("fail-on", "b.x"), ("fail-on", None)}),  # warning or worse
    (("info",), {("fail-on", "a"), ("fail-on", "b.x"), ("fail-on", None), ("fail-on", "b.y")}),
    (("dormant-units",), {("fail-on", "b.y")}),
    (("synthetic-data", "error"), {("fail-on", None), ("fail-on", "b.x")}),
    (("saturated-units",), set()),
])
def test_fail_on_severity_or_worse_and_rule_ids(tokens, expected):
    outcome = gates.evaluate(three_sites(), Settings(fail_on=tokens))
    assert failing(outcome) == expected
    assert outcome.passed == (not expected)


def test_unknown_fail_on_rule_ids_are_reported():
    report = three_sites()
    settings = Settings(fail_on=("dead-sites", "warning", "dead-units", "saturated-units"))
    assert gates.unknown_fail_on(settings, report) == ["dead-sites"]


def test_gate_summary_lines_name_the_worst_site():
    outcome = gates.evaluate(three_sites(), Settings(fail_over=0.1, fail_on=("error",)))
    lines = gates.summary_lines(outcome)
    assert lines[0] == "gate failed: 2 site(s) over --fail-over 0.1; worst b.x at 50.0% dead"
    assert lines[1] == "gate failed: --fail-on matched 1 finding(s): dead-site"


# --- baselines -------------------------------------------------------------------------------


def test_compare_lists_still_dead_newly_dead_revived_added_removed_resized():
    comparison = compare(baseline_report(), fixed_report(), "old.json")
    by_name = {c.name: c for c in comparison.sites}
    stem = by_name["stem.relu"]  # before (3, 5), now (3, 9)
    assert (stem.status, stem.still_dead, stem.newly_dead, stem.revived) == ("matched", (3,), (9,), (5,))
    layer1 = by_name["layer1.0.relu"]
    assert layer1.still_dead == (0, 1, 2, 4, 8, 16, 31) and not layer1.newly_dead and not layer1.revived
    layer2 = by_name["layer2.0.relu"]  # before 0-3, now 0-7
    assert layer2.newly_dead == (4, 5, 6, 7) and layer2.still_dead == (0, 1, 2, 3)
    assert (layer2.dead_ratio_before, layer2.dead_ratio_after) == (0.5, 1.0)
    head = by_name["head.act"]
    assert head.status == "resized" and (head.units_before, head.units_after) == (8, 6)
    assert not head.newly_dead and not head.revived and not head.still_dead
    assert by_name["old.relu"].status == "removed" and by_name["old.relu"].units_after is None
    assert comparison.added_sites == ('<script>alert("x")</script>|*$a$_`b`&amp;',)
    assert comparison.removed_sites == ("old.relu",)
    assert comparison.resized_sites == ("head.act",)
    assert [c.name for c in comparison.sites][-1] == "old.relu"  # removed sites last
    assert (comparison.still_dead_units, comparison.newly_dead_units, comparison.revived_units) == (12, 6, 1)


def test_a_report_against_itself_changes_nothing():
    comparison = compare(fixed_report(), fixed_report(), "same.json")
    assert comparison.newly_dead_units == comparison.revived_units == 0
    assert not (comparison.added_sites or comparison.removed_sites or comparison.resized_sites)
    assert not any(got_worse(c) for c in comparison.sites)
    outcome = gates.evaluate(replace(fixed_report(), baseline=comparison), Settings(baseline="same.json"))
    assert outcome.passed and outcome.checks == ("baseline same.json",)


def _with_baseline(before, after):  # noqa: ANN001, ANN202
    return replace(after, baseline=compare(before, after, "old.json"))


def test_baseline_fails_only_on_newly_dead_units():
    before = make_report((make_site("a", 10, dead=(0, 1, 2)), make_site("b", 10, dead=(5,))))
    swapped = make_report((make_site("a", 10, dead=(0, 1)), make_site("b", 10, dead=(6,))))
    outcome = gates.evaluate(_with_baseline(before, swapped), Settings(baseline="old.json"))
    assert failing(outcome) == {("baseline", "b")}  # a only improved; b: unit 6 newly dead
    assert outcome.failures[0].value == 1.0 and "6" in outcome.failures[0].message
    better = make_report((make_site("a", 10, dead=(0,)), make_site("b", 10)))
    assert gates.evaluate(_with_baseline(before, better), Settings(baseline="old.json")).passed


def test_with_a_baseline_dead_ratio_limits_only_fail_where_the_ratio_rose():
    before = make_report((make_site("a", 10, dead=(0, 1, 2)), make_site("b", 10, dead=(0,))))
    after = make_report((make_site("a", 10, dead=(0, 1, 2)), make_site("b", 10, dead=(0, 1)),
                         make_site("c", 10, dead=(0, 1, 2, 3))))
    outcome = gates.evaluate(_with_baseline(before, after), Settings(fail_over=0.15, baseline="old.json"))
    # a: 30% > 15% but unchanged; b: 20% > 15% and rose; c: new with 40%
    assert failing(outcome) == {("fail-over", "b"), ("baseline", "b"), ("fail-over", "c"), ("baseline", "c")}
    without = gates.evaluate(after, Settings(fail_over=0.15))
    assert failing(without) == {("fail-over", "a"), ("fail-over", "b"), ("fail-over", "c")}


def test_with_a_baseline_fail_on_ignores_findings_the_baseline_had():
    before = three_sites()
    after = replace(three_sites(), findings=three_sites().findings + (
        finding("saturated-units", "warning", "b.y", "new finding"),))
    outcome = gates.evaluate(_with_baseline(before, after), Settings(fail_on=("warning",)))
    assert failing(outcome) == {("fail-on", "b.y")}


def test_resized_sites_fail_only_when_their_dead_ratio_rose():
    before = make_report((make_site("a", 8, dead=(0,)), make_site("b", 8, dead=(0,))))
    after = make_report((make_site("a", 16, dead=(0,)), make_site("b", 4, dead=(0, 1))))
    outcome = gates.evaluate(_with_baseline(before, after), Settings(baseline="old.json"))
    assert failing(outcome) == {("baseline", "b")}  # a: 12.5% -> 6.25%; b: 12.5% -> 50%


# --- diff ------------------------------------------------------------------------------------


def test_diff_rows_and_tolerance():
    before = make_report((make_site("a", 10, dead=(0,)), make_site("b", 10, dead=(0, 1, 2)),
                          make_site("gone", 2, dead=(0, 1))))
    after = make_report((make_site("a", 10, dead=(0, 1, 2)), make_site("b", 10, dead=(0,)),
                         make_site("new", 4, dead=(0,))))
    comparison = compare(before, after, "A.json")
    rows = {row.change.name: row for row in diff_rows(comparison, 0.0)}
    assert rows["a"].increase == pytest.approx(0.2) and rows["a"].worse
    assert rows["b"].increase == pytest.approx(-0.2) and not rows["b"].worse
    assert rows["new"].increase == pytest.approx(0.25) and rows["new"].worse
    assert rows["gone"].increase == 0 and not rows["gone"].worse
    assert {r.change.name for r in diff_rows(comparison, 0.2) if r.worse} == {"new"}  # 0.2 is allowed
    assert not any(r.worse for r in diff_rows(comparison, 0.25))
    data = diff_to_dict("A.json", "B.json", comparison, 0.0)
    assert data["worse"] is True and data["worse_sites"] == ["a", "new"]
    assert [s["name"] for s in data["sites"]] == ["a", "b", "new", "gone"]
    assert data["sites"][0]["newly_dead"] == [1, 2] and data["sites"][1]["revived"] == [1, 2]


# --- settings files --------------------------------------------------------------------------


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_pyproject_tool_table(tmp_path):
    path = write(tmp_path / "pyproject.toml", """
[project]
name = "x"

[tool.reludoctor]
fail-over = 0.25
fail_on = ["error", "saturated-units"]
baseline = "reports/base.json"
top = 7
tolerance = 0.01

[tool.reludoctor.sites]
"layer4.*" = 0.2
"fc" = 1
""")
    settings = load_config(path)
    assert settings.fail_over == 0.25
    assert settings.fail_on == ("error", "saturated-units")
    assert settings.site_limits == (("layer4.*", 0.2), ("fc", 1.0))
    assert Path(settings.baseline) == tmp_path / "reports" / "base.json"  # relative to the file
    assert (settings.top, settings.tolerance, settings.source) == (7, 0.01, str(path))
    assert settings.has_gates


def test_reludoctor_toml_uses_top_level_keys(tmp_path):
    settings = load_config(write(tmp_path / "reludoctor.toml", 'fail-on = "warning"\n[sites]\n"a*" = 0.5\n'))
    assert settings.fail_on == ("warning",) and settings.site_limits == (("a*", 0.5),)


@pytest.mark.parametrize("text, mentions", [
    ("fail-ovr = 0.2\n", ["unknown key 'fail-ovr'", "known keys"]),
    ("[tool]\nx = 1\n", ["unknown key 'tool'"]),
    ("fail-over = 2\n", ["fail-over", "between 0 and 1"]),
    ("fail-over = 'high'\n", ["fail-over"]),
    ("fail-on = ['fatal!']\n", ["fatal!", "severity"]),
    ("fail-on = 3\n", ["fail-on"]),
    ("top = 0\n", ["top"]),
    ("sites = 0.3\n", ["sites"]),
    ("[sites]\n'a*' = -1\n", ["'a*'"]),
    ("fail-over = \n", ["not valid TOML"]),
])
def test_bad_settings_files_name_the_key(tmp_path, text, mentions):
    path = write(tmp_path / "reludoctor.toml", text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.exit_code == 2
    for text in [str(path)] + mentions:
        assert text in info.value.one_line()


def test_settings_search_goes_upwards_and_prefers_reludoctor_toml(tmp_path, monkeypatch):
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    write(tmp_path / "pyproject.toml", "[tool.reludoctor]\nfail-over = 0.3\n")
    write(tmp_path / "a" / "pyproject.toml", "[project]\nname = 'no tool table here'\n")
    assert find_config(deep) == tmp_path / "pyproject.toml"  # a/pyproject.toml is passed over
    write(tmp_path / "a" / "b" / "reludoctor.toml", "fail-over = 0.4\n")
    write(tmp_path / "a" / "b" / "pyproject.toml", "[tool.reludoctor]\nfail-over = 0.5\n")
    assert find_config(deep) == tmp_path / "a" / "b" / "reludoctor.toml"
    monkeypatch.chdir(deep)
    assert resolve(None, Overrides()).fail_over == 0.4
    assert resolve(None, Overrides(fail_over=0.1)).fail_over == 0.1  # the command line wins
    assert resolve(str(tmp_path / "pyproject.toml"), Overrides()).fail_over == 0.3  # --config


def test_command_line_overrides_merge_with_the_file(tmp_path):
    path = write(tmp_path / "reludoctor.toml",
                 'fail-over = 0.3\nfail-on = ["error"]\ntop = 5\n[sites]\n"a*" = 0.5\n"b*" = 0.6\n')
    merged = resolve(str(path), Overrides(fail_on=("warning",), site_limits=(("b*", 0.1), ("c", 0.2))))
    assert merged.fail_over == 0.3 and merged.top == 5
    assert merged.fail_on == ("warning",)  # replaced, not merged
    assert merged.site_limits == (("b*", 0.1), ("c", 0.2), ("a*", 0.5))  # the command line's first


def test_the_readme_settings_example_loads(tmp_path):
    import re

    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    block = re.search(r"```toml\n(.*?)```", readme, re.S).group(1)
    settings = load_config(write(tmp_path / "pyproject.toml", block))
    assert settings.has_gates and settings.site_limits
