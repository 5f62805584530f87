"""JSON output: exactly ``Report.to_dict()`` (the schema_version 1 contract)."""

from __future__ import annotations

from reludoctor.report import Report


def render(report: Report) -> str:
    return report.to_json(indent=2)
