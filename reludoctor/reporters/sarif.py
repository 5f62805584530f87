"""SARIF 2.1.0: the findings as results, for code-scanning tools (GitHub, GitLab, Azure DevOps).

One run; ``tool.driver`` lists the rules (id, short description, help). Each finding is a result
with its rule id, a level from its severity (error -> error, warning -> warning, info -> note),
its message, and a location: the model file as ``physicalLocation.artifactLocation.uri`` and the
site as a ``logicalLocation`` (``fullyQualifiedName`` = the site's name). With a baseline, dead-unit
results carry ``baselineState`` (new / updated / unchanged).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import PurePosixPath, PureWindowsPath
from typing import Any
from urllib.parse import quote

from reludoctor.core.rules import RULES as REGISTRY
from reludoctor.report.model import Finding, Report
from reludoctor.reporters.common import RenderOptions

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json"
INFORMATION_URI = "https://github.com/reludoctor/reludoctor"
HELP_URI = INFORMATION_URI + "#findings"
LEVEL = {"error": "error", "warning": "warning", "info": "note"}

# id -> (short description, default severity), from the rule registry; a report from another
# version may hold other ids, which get their id as description.
RULES: dict[str, tuple[str, str]] = {r.id: (r.title[:1].upper() + r.title[1:], r.severity) for r in REGISTRY}


def artifact_uri(path: str) -> str:
    """A relative path as a relative URI reference; an absolute one as a file:// URI."""
    if PureWindowsPath(path).drive:
        return "file:///" + quote(PureWindowsPath(path).as_posix(), safe="/:")
    posix = PurePosixPath(path.replace("\\", "/"))
    if posix.is_absolute():
        return "file://" + quote(str(posix), safe="/")
    return quote(str(posix), safe="/")


def _rules(report: Report) -> list[dict[str, Any]]:
    ids = list(RULES)
    for finding in report.findings:
        if finding.rule not in ids:
            ids.append(finding.rule)
    suggestions: dict[str, str] = {}
    for finding in report.findings:
        suggestions.setdefault(finding.rule, finding.suggestion)
    rules = []
    for rule_id in ids:
        description, severity = RULES.get(rule_id, (rule_id, None))
        if severity is None:
            severity = next((f.severity for f in report.findings if f.rule == rule_id), "warning")
        rule: dict[str, Any] = {
            "id": rule_id,
            "name": "".join(part.capitalize() for part in rule_id.split("-")),
            "shortDescription": {"text": description},
            "helpUri": HELP_URI,
            "defaultConfiguration": {"level": LEVEL.get(severity, "warning")},
        }
        if rule_id in suggestions:
            rule["help"] = {"text": suggestions[rule_id]}
        rules.append(rule)
    return rules


def _baseline_state(report: Report, finding: Finding) -> str | None:
    if report.baseline is None or finding.rule not in ("dead-units", "dead-site") or finding.site is None:
        return None
    change = report.baseline.site(finding.site)
    if change is None or change.status == "added":
        return "new"
    if change.newly_dead or (change.status == "resized"
                             and (change.dead_ratio_after or 0) > (change.dead_ratio_before or 0)):
        return "updated"
    return "unchanged"


def _result(report: Report, finding: Finding, rule_index: int) -> dict[str, Any]:
    location: dict[str, Any] = {}
    if report.model.path:
        location["physicalLocation"] = {"artifactLocation": {"uri": artifact_uri(report.model.path)}}
    if finding.site is not None:
        location["logicalLocations"] = [{"name": finding.site.rsplit(".", 1)[-1],
                                         "fullyQualifiedName": finding.site}]
    result: dict[str, Any] = {
        "ruleId": finding.rule,
        "ruleIndex": rule_index,
        "level": LEVEL.get(finding.severity, "warning"),
        "message": {"text": f"{finding.message}. Fix: {finding.suggestion}"},
    }
    if location:
        result["locations"] = [location]
    key = f"{finding.rule}\0{finding.site or ''}\0{report.model.path or ''}"
    result["partialFingerprints"] = {"reludoctorFinding/v1": hashlib.sha256(key.encode()).hexdigest()[:32]}
    state = _baseline_state(report, finding)
    if state is not None:
        result["baselineState"] = state
    result["properties"] = {"severity": finding.severity, "evidence": finding.evidence}
    return result


def to_sarif(report: Report) -> dict[str, Any]:
    rules = _rules(report)
    index = {rule["id"]: i for i, rule in enumerate(rules)}
    driver = {
        "name": "reludoctor",
        "version": str(report.tool.get("version", "")),
        "informationUri": INFORMATION_URI,
        "rules": rules,
    }
    run: dict[str, Any] = {
        "tool": {"driver": driver},
        "results": [_result(report, f, index[f.rule]) for f in report.findings],
        "columnKind": "unicodeCodePoints",
        "properties": {
            "summary": {"sites": report.summary.sites, "units": report.summary.units,
                        "dead_units": report.summary.dead_units, "dead_ratio": report.summary.dead_ratio},
            "calibration": {"source": report.calibration.source, "samples": report.calibration.samples,
                            "synthetic": report.calibration.synthetic},
        },
    }
    if report.model.path:
        artifact: dict[str, Any] = {"location": {"uri": artifact_uri(report.model.path)}}
        if report.model.sha256:
            artifact["hashes"] = {"sha-256": report.model.sha256}
        run["artifacts"] = [artifact]
    if report.gates is not None:
        run["invocations"] = [{"executionSuccessful": True,
                               "exitCode": 0 if report.gates.passed else 1}]
    return {"$schema": SARIF_SCHEMA, "version": SARIF_VERSION, "runs": [run]}


def render(report: Report, options: RenderOptions | None = None) -> str:
    from reludoctor.report.model import _jsonable

    return json.dumps(_jsonable(to_sarif(report)), indent=2, ensure_ascii=False, allow_nan=False) + "\n"
