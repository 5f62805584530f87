"""JUnit XML: one testcase per site, failing where a gate fails for that site.

CI systems (GitLab, Jenkins, Azure, GitHub test-report actions) then list the failing sites.
A failing testcase has one ``<failure>`` whose ``type`` names the gates and whose message gives
the numbers; sites that could not be observed are ``<skipped>``; scan-wide gate failures
(``--fail-on`` matching a finding without a site) go to a testcase named ``(scan)``, present
whenever ``--fail-on`` is set. Deterministic: no timestamps, ``time="0"``.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import PurePath

from reludoctor.report.model import GateFailure, Report
from reludoctor.reporters.common import RenderOptions, xml_safe

SCAN_CASE = "(scan)"


def _classname(report: Report) -> str:
    if report.model.path:
        return "reludoctor." + xml_safe(PurePath(report.model.path).name)
    return "reludoctor.model"


def _failure(case: ET.Element, failures: tuple[GateFailure, ...]) -> None:
    gates = ", ".join(dict.fromkeys(f.gate for f in failures))
    first = failures[0]
    message = first.message if len(failures) == 1 else f"{first.message} (and {len(failures) - 1} more)"
    element = ET.SubElement(case, "failure", {"type": xml_safe(gates), "message": xml_safe(f"{first.gate}: {message}")})
    element.text = "\n".join(xml_safe(f"[{f.gate}] {f.message}") for f in failures)


def render(report: Report, options: RenderOptions | None = None) -> str:
    classname = _classname(report)
    gates = report.gates
    suites = ET.Element("testsuites", {"name": "reludoctor"})
    suite = ET.SubElement(suites, "testsuite", {"name": xml_safe(f"reludoctor {report.model.path or 'in-memory model'}")})
    properties = ET.SubElement(suite, "properties")
    s = report.summary
    for name, value in (
        ("model", report.model.path or ""),
        ("model.format", report.model.format),
        ("model.sha256", report.model.sha256 or ""),
        ("calibration.source", report.calibration.source),
        ("calibration.samples", report.calibration.samples),
        ("calibration.synthetic", str(report.calibration.synthetic).lower()),
        ("summary.dead_units", s.dead_units),
        ("summary.units", s.units),
        ("summary.dead_ratio", f"{s.dead_ratio:.6g}"),
        ("gates", ", ".join(gates.checks) if gates is not None else "none"),
        ("reludoctor.version", report.tool.get("version", "")),
    ):
        ET.SubElement(properties, "property", {"name": name, "value": xml_safe(value)})
    tests = failed = skipped = 0
    for site in report.sites:
        tests += 1
        case = ET.SubElement(suite, "testcase", {"classname": classname, "name": xml_safe(site.name),
                                                 "time": "0"})
        site_failures = gates.for_site(site.name) if gates is not None else ()
        if site_failures:
            failed += 1
            _failure(case, site_failures)
        out = ET.SubElement(case, "system-out")
        out.text = xml_safe(f"{site.op}: {len(site.dead_units)} of {site.units} units dead "
                            f"({site.dead_ratio:.1%}), {len(site.near_dead_units)} near-dead, "
                            f"{len(site.dormant_units)} dormant")
    for unobserved in report.unobserved_sites:
        tests += 1
        skipped += 1
        case = ET.SubElement(suite, "testcase", {"classname": classname, "name": xml_safe(unobserved.name),
                                                 "time": "0"})
        ET.SubElement(case, "skipped", {"message": xml_safe(f"not observed: {unobserved.reason}")})
    scan_failures = gates.for_site(None) if gates is not None else ()
    known = {site.name for site in report.sites}
    # Failures at sites that are not in the report (none today) stay visible, scan-wide.
    stray = tuple(f for f in (gates.failures if gates is not None else ()) if f.site is not None
                  and f.site not in known)
    if scan_failures or stray or (gates is not None and any(c.startswith("fail-on") for c in gates.checks)):
        tests += 1
        case = ET.SubElement(suite, "testcase", {"classname": classname, "name": SCAN_CASE, "time": "0"})
        if scan_failures or stray:
            failed += 1
            _failure(case, scan_failures + stray)
    for element in (suites, suite):
        element.set("tests", str(tests))
        element.set("failures", str(failed))
        element.set("errors", "0")
        element.set("skipped", str(skipped))
        element.set("time", "0")
    ET.indent(suites, space="  ")
    body = ET.tostring(suites, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"
