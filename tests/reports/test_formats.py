"""Every output format on reports built in code: golden files, the format registry, JSON schema
and round trip, JUnit parsed back, SARIF 2.1.0 structure, Markdown and HTML escaping."""

from __future__ import annotations

import dataclasses
import html
import json
import re
import xml.etree.ElementTree as ET

import pytest
from fixed import NASTY, fixed_report, judged_report, make_report, make_site, with_gradients

from reludoctor.report.model import Report, ReportFormatError
from reludoctor.report.schema import validate
from reludoctor.reporters import RENDERERS, STDOUT_FORMATS, OutputFormat, RenderOptions, render
from reludoctor.reporters.common import human, md_code

GOLDEN_NAMES = {
    OutputFormat.TABLE: "table.txt",
    OutputFormat.JSON: "report.json",
    OutputFormat.MARKDOWN: "summary.md",
    OutputFormat.JUNIT: "junit.xml",
    OutputFormat.SARIF: "sarif.json",
    OutputFormat.HTML: "page.html",
}
REPORTS = {"fixed": fixed_report, "judged": judged_report}


def normalise_html(text: str) -> str:
    """The page without the plots' SVG bodies (matplotlib's output varies between versions; the
    plots are checked separately and in the browser)."""
    count = iter(range(1, 1000))
    return re.sub(r"<svg\b.*?</svg>", lambda m: f'<svg data-plot="{next(count)}"/>', text, flags=re.S)


def clean_report() -> Report:
    return make_report((make_site("fc1.relu", 8, seed=1), make_site("fc2.relu", 4, seed=2)))


# --- the registry ----------------------------------------------------------------------------


def test_every_format_has_a_renderer_and_a_golden_file():
    assert set(RENDERERS) == set(OutputFormat)
    assert set(GOLDEN_NAMES) == set(OutputFormat)
    assert [f.value for f in STDOUT_FORMATS] == ["table", "json", "markdown"]
    assert all(isinstance(f, str) and str(f) == f.value for f in OutputFormat)


@pytest.mark.parametrize("fmt", list(OutputFormat), ids=lambda f: f.value)
@pytest.mark.parametrize("which", list(REPORTS))
def test_every_format_matches_its_golden_file(fmt, which, golden):
    text = render(fmt, REPORTS[which]())
    assert text.endswith("\n") and text.strip()
    assert render(fmt, REPORTS[which]()) == text  # deterministic
    if fmt is OutputFormat.HTML:
        text = normalise_html(text)
    golden(f"{which}.{GOLDEN_NAMES[fmt]}", text)


@pytest.mark.parametrize("fmt", list(OutputFormat), ids=lambda f: f.value)
def test_every_format_renders_a_clean_report(fmt):
    """Machine formats are emitted even when there is nothing to report."""
    text = render(fmt.value, clean_report())
    assert text.strip()
    if fmt is OutputFormat.JSON:
        validate(json.loads(text))
    elif fmt is OutputFormat.JUNIT:
        suite = ET.fromstring(text).find("testsuite")
        assert suite.get("tests") == "2" and suite.get("failures") == "0"
    elif fmt is OutputFormat.SARIF:
        assert json.loads(text)["runs"][0]["results"] == []


def test_human_numbers():
    assert [human(n) for n in (0, 7, 999, 1000, 1234, 12345, 123456, 999_499, 999_500, 1_200_000,
                               2_500_000_000)] == \
        ["0", "7", "999", "1k", "1.23k", "12.3k", "123k", "999k", "1M", "1.2M", "2.5G"]


# --- JSON ------------------------------------------------------------------------------------


@pytest.mark.parametrize("which", list(REPORTS))
@pytest.mark.parametrize("use_jsonschema", [True, False])
def test_json_output_is_schema_valid(which, use_jsonschema):
    if use_jsonschema:
        pytest.importorskip("jsonschema")
    validate(json.loads(render("json", REPORTS[which]())), use_jsonschema=use_jsonschema)


@pytest.mark.parametrize("which", list(REPORTS))
def test_round_trip_to_dict_from_dict_to_dict(which):
    report = REPORTS[which]()
    data = report.to_dict()
    again = Report.from_dict(json.loads(json.dumps(data)))
    assert again == report  # the typed report itself comes back
    assert again.to_dict() == data


def test_plain_reports_have_null_baseline_and_gates():
    data = fixed_report().to_dict()
    assert data["baseline"] is None and data["gates"] is None
    judged = judged_report().to_dict()
    assert judged["gates"]["passed"] is False and judged["baseline"]["newly_dead_units"] == 6


def test_from_dict_turns_null_extremes_into_nan_and_back():
    data = fixed_report().to_dict()
    data["sites"][0]["max_preactivation"][0] = None
    report = Report.from_dict(data)
    assert report.sites[0].max_preactivation[0] != report.sites[0].max_preactivation[0]
    assert report.to_dict()["sites"][0]["max_preactivation"][0] is None


def test_from_dict_ignores_unknown_keys_and_fills_optional_ones():
    data = fixed_report().to_dict()
    data["added_by_a_newer_version"] = {"x": 1}
    data["sites"][0]["also_new"] = 3
    del data["baseline"], data["gates"]  # as in reports written before these keys were added
    assert Report.from_dict(data) == fixed_report()


@pytest.mark.parametrize("mutate, mentions", [
    (lambda d: d.update(schema_version=2), "schema_version 2 is not supported"),
    (lambda d: d.pop("schema_version"), "no schema_version"),
    (lambda d: d.update(schema_version="1"), "not an integer"),
    (lambda d: d.pop("sites"), "'sites' is missing"),
    (lambda d: d["sites"][0].update(units="many"), "sites[0].units: expected an integer"),
    (lambda d: d["summary"].update(dead_ratio="high"), "summary.dead_ratio: expected a number"),
    (lambda d: d["calibration"].update(synthetic=1), "calibration.synthetic: expected true or false"),
])
def test_from_dict_refuses_bad_reports(mutate, mentions):
    data = fixed_report().to_dict()
    mutate(data)
    with pytest.raises(ReportFormatError) as info:
        Report.from_dict(data)
    assert mentions in str(info.value)
    assert info.value.exit_code == 2


def test_from_dict_refuses_non_objects():
    with pytest.raises(ReportFormatError, match="JSON object, not an array"):
        Report.from_dict([1, 2])


# --- JUnit -----------------------------------------------------------------------------------


def _cases(text: str) -> dict[str, ET.Element]:
    root = ET.fromstring(text)
    assert root.tag == "testsuites"
    suites = root.findall("testsuite")
    assert len(suites) == 1
    return {case.get("name"): case for case in suites[0].findall("testcase")}


def test_junit_has_one_testcase_per_site_and_fails_where_gates_fail():
    report = judged_report()
    text = render("junit", report)
    root = ET.fromstring(text)
    cases = _cases(text)
    names = [s.name for s in report.sites]
    assert list(cases) == names + ["tail.relu", "(scan)"]
    # Expected independently: fail-over 0.2 (layer1.* limited to 0.3), fail-on error, baseline.
    expected = {"stem.relu": {"baseline"},  # unit 9 newly dead; 12.5% is under 0.2
                "layer2.0.relu": {"fail-over", "baseline", "fail-on"},  # 100% > 20%, 4 new, dead-site
                NASTY: {"fail-over", "baseline"}}  # 25% > 20%, a new site with a dead unit
    failing = {name: case.find("failure") for name, case in cases.items() if case.find("failure") is not None}
    assert set(failing) == set(expected)
    for name, failure in failing.items():
        assert set(failure.get("type").split(", ")) == expected[name]
        assert all(f"[{gate}]" in failure.text for gate in expected[name])
    message = failing["layer2.0.relu"].get("message")
    assert message.startswith("fail-over: ") and "100.0%" in message and "20.0%" in message
    assert "4, 5, 6, 7" in failing["layer2.0.relu"].text  # the newly dead units
    assert "layer1.0.relu" not in failing  # 21.9% is over 0.2 but under its own limit 0.3
    assert cases["tail.relu"].find("skipped") is not None
    for element in (root, root.find("testsuite")):
        assert element.get("tests") == str(len(names) + 2)
        assert element.get("failures") == "3"
        assert element.get("skipped") == "1"
        assert element.get("errors") == "0"


def test_junit_without_gates_passes_every_site():
    cases = _cases(render("junit", fixed_report()))
    assert "(scan)" not in cases
    assert all(case.find("failure") is None for name, case in cases.items() if name != "tail.relu")


def test_junit_survives_control_characters_in_site_names():
    report = make_report((make_site("bad\x00\x07name\ud800", 4, dead=(0,)),))
    cases = _cases(render("junit", report))
    assert list(cases) == ["bad\ufffd\ufffdname\ufffd"]


# --- SARIF 2.1.0 -------------------------------------------------------------------------------

# Properties each object may have in the SARIF 2.1.0 schema (which forbids additional ones).
SARIF_KEYS = {
    "log": {"$schema", "version", "runs", "inlineExternalProperties", "properties"},
    "run": {"tool", "invocations", "conversion", "language", "versionControlProvenance",
            "originalUriBaseIds", "artifacts", "logicalLocations", "graphs", "results",
            "automationDetails", "runAggregates", "baselineGuid", "redactionTokens",
            "defaultEncoding", "defaultSourceLanguage", "newlineSequences", "columnKind",
            "externalPropertyFileReferences", "threadFlowLocations", "taxonomies", "addresses",
            "translations", "policies", "webRequests", "webResponses", "specialLocations",
            "properties"},
    "tool": {"driver", "extensions", "properties"},
    "driver": {"guid", "name", "organization", "product", "productSuite", "shortDescription",
               "fullDescription", "fullName", "version", "semanticVersion", "dottedQuadFileVersion",
               "releaseDateUtc", "downloadUri", "informationUri", "globalMessageStrings",
               "notifications", "rules", "taxa", "locations", "language", "contents",
               "isComprehensive", "localizedDataSemanticVersion",
               "minimumRequiredLocalizedDataSemanticVersion", "associatedComponent",
               "translationMetadata", "supportedTaxonomies", "properties"},
    "rule": {"id", "deprecatedIds", "guid", "deprecatedGuids", "name", "deprecatedNames",
             "shortDescription", "fullDescription", "messageStrings", "defaultConfiguration",
             "helpUri", "help", "relationships", "properties"},
    "multiformat": {"text", "markdown", "properties"},
    "configuration": {"enabled", "level", "rank", "parameters", "properties"},
    "result": {"ruleId", "ruleIndex", "rule", "kind", "level", "message", "analysisTarget",
               "locations", "guid", "correlationGuid", "occurrenceCount", "partialFingerprints",
               "fingerprints", "stacks", "codeFlows", "graphs", "graphTraversals",
               "relatedLocations", "suppressions", "baselineState", "rank", "attachments",
               "hostedViewerUri", "workItemUris", "provenance", "fixes", "taxa", "webRequest",
               "webResponse", "properties"},
    "message": {"text", "markdown", "id", "arguments", "properties"},
    "location": {"id", "physicalLocation", "logicalLocations", "message", "annotations",
                 "relationships", "properties"},
    "physical": {"address", "artifactLocation", "region", "contextRegion", "properties"},
    "artifactLocation": {"uri", "uriBaseId", "index", "description", "properties"},
    "logical": {"name", "index", "fullyQualifiedName", "decoratedName", "parentIndex", "kind",
                "properties"},
    "artifact": {"description", "location", "parentIndex", "offset", "length", "roles", "mimeType",
                 "contents", "encoding", "sourceLanguage", "hashes", "lastModifiedTimeUtc",
                 "properties"},
    "invocation": {"commandLine", "arguments", "responseFiles", "startTimeUtc", "endTimeUtc",
                   "exitCode", "ruleConfigurationOverrides", "notificationConfigurationOverrides",
                   "toolExecutionNotifications", "toolConfigurationNotifications",
                   "exitCodeDescription", "exitSignalName", "exitSignalNumber", "processStartFailureMessage",
                   "executionSuccessful", "machine", "account", "processId", "executableLocation",
                   "workingDirectory", "environmentVariables", "stdin", "stdout", "stderr",
                   "stdoutStderr", "properties"},
}
LEVELS = {"none", "note", "warning", "error"}


def _keys(obj: dict, kind: str, required: set[str] = frozenset()) -> None:
    assert isinstance(obj, dict), kind
    assert set(obj) <= SARIF_KEYS[kind], (kind, set(obj) - SARIF_KEYS[kind])
    assert required <= set(obj), (kind, required - set(obj))


def check_sarif(log: dict) -> None:
    """The SARIF 2.1.0 structure, required properties checked by hand."""
    _keys(log, "log", {"version", "runs"})
    assert log["version"] == "2.1.0"
    assert isinstance(log["runs"], list) and log["runs"]
    for run in log["runs"]:
        _keys(run, "run", {"tool"})
        _keys(run["tool"], "tool", {"driver"})
        driver = run["tool"]["driver"]
        _keys(driver, "driver", {"name"})
        assert isinstance(driver["name"], str) and driver["name"]
        rules = driver.get("rules", [])
        ids = [rule["id"] for rule in rules]
        assert len(set(ids)) == len(ids)
        for rule in rules:
            _keys(rule, "rule", {"id"})
            for key in ("shortDescription", "fullDescription", "help"):
                if key in rule:
                    _keys(rule[key], "multiformat", {"text"})
            if "defaultConfiguration" in rule:
                _keys(rule["defaultConfiguration"], "configuration")
                assert rule["defaultConfiguration"].get("level", "warning") in LEVELS
            if "helpUri" in rule:
                assert re.match(r"^[a-z][a-z0-9+.-]*:", rule["helpUri"])  # an absolute URI
        for result in run.get("results", []):
            _keys(result, "result", {"message"})
            _keys(result["message"], "message")
            assert "text" in result["message"] or "id" in result["message"]
            assert result.get("level", "warning") in LEVELS
            if "ruleIndex" in result:
                assert ids[result["ruleIndex"]] == result["ruleId"]
            assert result.get("baselineState", "new") in {"new", "unchanged", "updated", "absent"}
            for location in result.get("locations", []):
                _keys(location, "location")
                if "physicalLocation" in location:
                    physical = location["physicalLocation"]
                    _keys(physical, "physical")
                    assert "artifactLocation" in physical or "address" in physical
                    _keys(physical["artifactLocation"], "artifactLocation")
                for logical in location.get("logicalLocations", []):
                    _keys(logical, "logical")
        for artifact in run.get("artifacts", []):
            _keys(artifact, "artifact")
            _keys(artifact["location"], "artifactLocation")
        for invocation in run.get("invocations", []):
            _keys(invocation, "invocation", {"executionSuccessful"})
        assert run.get("columnKind", "unicodeCodePoints") in {"utf16CodeUnits", "unicodeCodePoints"}


@pytest.mark.parametrize("which", list(REPORTS))
def test_sarif_structure(which):
    report = REPORTS[which]()
    log = json.loads(render("sarif", report))
    check_sarif(log)
    run = log["runs"][0]
    assert run["tool"]["driver"]["name"] == "reludoctor"
    results = run["results"]
    assert len(results) == len(report.findings)
    level = {"error": "error", "warning": "warning", "info": "note"}
    for finding, result in zip(report.findings, results):
        assert result["ruleId"] == finding.rule
        assert result["level"] == level[finding.severity]
        assert finding.message in result["message"]["text"]
        (location,) = result["locations"]
        assert location["physicalLocation"]["artifactLocation"]["uri"] == "models/net.pt2"
        if finding.site is None:
            assert "logicalLocations" not in location
        else:
            assert location["logicalLocations"][0]["fullyQualifiedName"] == finding.site
    rule_ids = {rule["id"] for rule in run["tool"]["driver"]["rules"]}
    assert {f.rule for f in report.findings} <= rule_ids


def test_sarif_baseline_states():
    results = json.loads(render("sarif", judged_report()))["runs"][0]["results"]
    states = {(r["ruleId"], r["locations"][0].get("logicalLocations", [{}])[0].get("fullyQualifiedName")):
              r.get("baselineState") for r in results}
    assert states[("dead-units", "stem.relu")] == "updated"  # unit 9 newly dead
    assert states[("dead-units", "layer1.0.relu")] == "unchanged"
    assert states[("dead-site", "layer2.0.relu")] == "updated"
    assert states[("dead-units", NASTY)] == "new"
    assert states[("few-samples", None)] is None


@pytest.mark.parametrize("path, uri", [
    ("models/net.pt2", "models/net.pt2"),
    ("my models/net v2.pt2", "my%20models/net%20v2.pt2"),
    ("/abs/model.onnx", "file:///abs/model.onnx"),
])
def test_sarif_artifact_uris(path, uri):
    report = make_report((make_site("a", 2, dead=(0,)),),
                         (dataclasses.replace(fixed_report().findings[1], site="a"),), path=path)
    result = json.loads(render("sarif", report))["runs"][0]["results"][0]
    assert result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"] == uri


def test_sarif_for_an_in_memory_model_has_no_physical_location():
    report = make_report((make_site("a", 2, dead=(0,)),),
                         (dataclasses.replace(fixed_report().findings[1], site="a"),), path=None)
    log = json.loads(render("sarif", report))
    check_sarif(log)
    assert "physicalLocation" not in log["runs"][0]["results"][0]["locations"][0]


# --- Markdown --------------------------------------------------------------------------------


def _outside_code(markdown: str) -> str:
    return re.sub(r"(`+)(?:(?!\1).)+?\1", "", markdown)


def test_markdown_escapes_names_and_messages():
    text = render("markdown", judged_report())
    rest = _outside_code(text).replace("<sub>", "").replace("</sub>", "")
    assert not re.search(r"(?<!\\)<[A-Za-z/!?]", rest)  # no raw HTML tag outside code spans
    assert md_code(NASTY, table=True) in text


def test_markdown_summary_lists_the_worst_sites_first():
    text = render("markdown", fixed_report())
    assert "**18** of 98 units dead (**18.4%**) across 6 sites" in text
    rows = [line for line in text.splitlines() if re.match(r"^\| \d+ \|", line)]
    assert [row.split("|")[1].strip() for row in rows] == ["3", "5", "1", "0", "2", "4"]
    top2 = render("markdown", fixed_report(), RenderOptions(top=2))
    assert "### Worst sites (2 of 6)" in top2
    assert len([line for line in top2.splitlines() if re.match(r"^\| \d+ \|", line)]) == 2


def test_markdown_shows_the_gate_verdict_and_baseline():
    text = render("markdown", judged_report())
    assert "❌ gates failed** (6 failure(s))" in text
    assert "**6 newly dead**" in text and "Removed sites: `old.relu`" in text


# --- HTML ------------------------------------------------------------------------------------


def test_html_is_self_contained_and_escaped():
    text = render("html", judged_report())
    assert text.startswith("<!DOCTYPE html>")
    lowered = text.lower()
    for forbidden in ("<script", "http://", "https://", "@import", "<link", " src=", "<iframe",
                      "<object", "<embed", "javascript:"):
        assert forbidden not in lowered, forbidden
    assert re.findall(r"url\(([^)]*)\)", text) and all(
        ref.startswith("#") for ref in re.findall(r"url\(([^)]*)\)", text))
    assert "Content-Security-Policy" in text and "default-src 'none'" in text
    assert NASTY not in text and html.escape(NASTY) in text
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids)), "duplicate element ids"
    for ref in re.findall(r'href="#([^"]+)"', text):
        assert ref in ids, ref


def test_html_has_the_plots_and_sections():
    text = render("html", judged_report())
    for figure in ("plot-dead", "plot-rates", "plot-histograms"):
        assert f'<figure id="{figure}">' in text
    assert "plot-gradient" not in text  # no site carries gradient statistics
    assert text.count("<svg") == 3
    for section in ("Sites in execution order", "Against the baseline", "Gate failures", "Findings",
                    "Model and calibration", "Fix:"):
        assert section in text
    assert "abab" * 16 in text  # the model's sha256


def test_html_of_a_report_without_sites_still_renders():
    report = make_report(())
    text = render("html", report)
    assert "<svg" not in text and "Findings" in text


def test_html_draws_gradient_flow_only_when_present():
    text = render("html", with_gradients(fixed_report()))
    assert '<figure id="plot-gradient">' in text
    assert text.count("<svg") == 4
