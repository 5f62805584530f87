"""Report outputs behind one small interface: ``render(report, options) -> str`` per format.

``OutputFormat`` lists the formats; ``RENDERERS`` maps every member to its module (a test walks
them all, and the mapping is checked to be exhaustive at import). Each format lives in its own
module, imported only when used (HTML pulls in matplotlib). ``emit`` writes atomically.
"""

from __future__ import annotations

import importlib
import os
import sys
from enum import Enum
from typing import TYPE_CHECKING

from reludoctor.reporters.common import RenderOptions

if TYPE_CHECKING:  # pragma: no cover
    from reludoctor.report.model import Report

__all__ = ["OutputFormat", "RENDERERS", "STDOUT_FORMATS", "RenderOptions", "emit", "render"]


class OutputFormat(str, Enum):
    TABLE = "table"  # the rich terminal report (stdout)
    JSON = "json"  # Report.to_dict(): the schema_version 1 contract
    MARKDOWN = "markdown"  # a CI job summary / pull-request comment
    JUNIT = "junit"  # JUnit XML: one testcase per site, failing where a gate fails
    SARIF = "sarif"  # SARIF 2.1.0: findings with rule ids, levels, model file + site
    HTML = "html"  # one self-contained page with matplotlib plots (inline SVG)

    def __str__(self) -> str:
        return self.value


# What --format may send to stdout (the others are written with --junit/--sarif/--html PATH|-).
STDOUT_FORMATS = (OutputFormat.TABLE, OutputFormat.JSON, OutputFormat.MARKDOWN)

# The module of reludoctor.reporters that renders each format with ``render(report, options)``.
RENDERERS: dict[OutputFormat, str] = {
    OutputFormat.TABLE: "terminal",
    OutputFormat.JSON: "json",
    OutputFormat.MARKDOWN: "markdown",
    OutputFormat.JUNIT: "junit",
    OutputFormat.SARIF: "sarif",
    OutputFormat.HTML: "html",
}
_missing = set(OutputFormat) - set(RENDERERS)
if _missing:  # pragma: no cover - a member without a renderer is a programming error
    raise AssertionError(f"formats without a renderer: {sorted(m.value for m in _missing)}")


def render(fmt: OutputFormat | str, report: Report, options: RenderOptions | None = None) -> str:
    """The report in format ``fmt`` (an OutputFormat or its name)."""
    module = importlib.import_module(f"reludoctor.reporters.{RENDERERS[OutputFormat(fmt)]}")
    return module.render(report, options or RenderOptions())


def emit(text: str, destination: str, option: str | None = None) -> None:
    """Write to stdout for '-', else through ``safeio.atomic_path`` (temp file in the same folder,
    then rename; refused when ``destination`` is a file this run read; an OSError is a
    ReludoctorError naming ``option`` and ``destination``)."""
    from reludoctor import safeio
    from reludoctor.errors import ReludoctorError

    if destination == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    with safeio.atomic_path(destination, option) as temp:
        try:
            with os.fdopen(os.open(temp, os.O_WRONLY | os.O_TRUNC), "w", encoding="utf-8",
                           newline="\n") as handle:
                handle.write(text)
        except OSError as exc:
            label = f"{option} {destination}" if option else destination
            raise ReludoctorError(f"cannot write {label}: {safeio.os_reason(exc)}") from None
