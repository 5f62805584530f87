"""JSON output: exactly ``Report.to_dict()`` (the schema_version 1 contract)."""

from __future__ import annotations

from reludoctor.report.model import Report
from reludoctor.reporters.common import RenderOptions


def render(report: Report, options: RenderOptions | None = None) -> str:
    return report.to_json(indent=2)
