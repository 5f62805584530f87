"""Compare a report with an older one (``--baseline``, ``reludoctor diff``), and read saved reports.

Sites are matched by name. Per site: units dead in both (still dead), dead now but not before
(newly dead), dead before but not now (revived). A site only in the new report is ``added`` (its
dead units all count as newly dead); only in the old one, ``removed``; in both with a different
unit count, ``resized`` (indices are not comparable: only the dead ratios are).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reludoctor.errors import first_line
from reludoctor.report.model import (
    BaselineComparison,
    FindingRef,
    Report,
    ReportFormatError,
    SiteChange,
    check_schema_version,
    with_defaults,
)


def load_report(path: str | Path, what: str = "report") -> Report:
    """Read a saved JSON report (``scan --json``); anything unusable is a ReportFormatError
    (exit 2) naming the file: missing, not a regular file (a FIFO never blocks, a device such as
    /dev/zero is never read), larger than ``safeio.MAX_REPORT_BYTES``, not UTF-8, not JSON,
    nested too deeply, integers longer than ``safeio.MAX_JSON_INT_DIGITS`` digits, NaN or
    Infinity (JSON has neither), another schema version, not a report."""
    from reludoctor import safeio
    from reludoctor.report.schema import ReportValidationError, validate

    path = Path(path)
    if not path.is_symlink() and not path.exists():
        raise ReportFormatError(f"{what} {path} not found")
    if path.is_dir():
        raise ReportFormatError(f"{what} {path} is a directory", "give a JSON report file")
    raw = safeio.read_limited(path, safeio.MAX_REPORT_BYTES, what, ReportFormatError)
    safeio.note_read(path)  # outputs never overwrite it
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ReportFormatError(f"cannot read {what} {path}: not UTF-8 text (byte {exc.start})",
                                "give a report written by reludoctor scan --json") from None
    try:
        data: Any = parse_json(text)
        check_schema_version(data)  # first: it gives the clearest message
        data = with_defaults(Report, data)  # keys added to version 1 after it was written
        validate(data)
        return Report.from_dict(data)
    except json.JSONDecodeError as exc:
        raise ReportFormatError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                                f"column {exc.colno}", "give a report written by reludoctor scan --json") from None
    except ReportFormatError as exc:
        raise ReportFormatError(f"{what} {path}: {exc.message}", exc.hint) from None
    except ReportValidationError as exc:
        raise ReportFormatError(f"{what} {path}: {exc}", "give a report written by reludoctor scan --json") from None
    except RecursionError:
        raise ReportFormatError(f"{what} {path} is not a reludoctor report: JSON nested too deeply",
                                "give a report written by reludoctor scan --json") from None
    except (ValueError, TypeError, OverflowError) as exc:  # JSON that parses but no report can hold
        detail = first_line(exc, type(exc).__name__)[:200]
        raise ReportFormatError(f"{what} {path} is not a reludoctor report: {detail}",
                                "give a report written by reludoctor scan --json") from None


def parse_json(text: str) -> Any:
    """``json.loads`` for untrusted reports: NaN, Infinity and -Infinity are refused (JSON has
    none of them; reludoctor writes null), so are numbers that overflow a float (1e999) and
    integers of more than ``safeio.MAX_JSON_INT_DIGITS`` digits (ValueError, before Python
    converts them). Nesting deeper than Python's recursion limit raises RecursionError."""
    from reludoctor.safeio import MAX_JSON_INT_DIGITS

    def constant(name: str) -> Any:
        raise ValueError(f"{name} is not JSON (reports write null for a missing number)")

    def integer(digits: str) -> int:
        if len(digits.lstrip("-")) > MAX_JSON_INT_DIGITS:
            raise ValueError(f"an integer of {len(digits.lstrip('-')):,} digits (at most "
                             f"{MAX_JSON_INT_DIGITS:,})")
        return int(digits)

    def number(digits: str) -> float:
        if len(digits) > MAX_JSON_INT_DIGITS:
            raise ValueError(f"a number of {len(digits):,} characters")
        value = float(digits)
        if value in (float("inf"), float("-inf")):
            raise ValueError(f"the number {digits[:20]}{'...' if len(digits) > 20 else ''} overflows")
        return value

    return json.loads(text, parse_constant=constant, parse_int=integer, parse_float=number)


def compare(before: Report, after: Report, source: str) -> BaselineComparison:
    """``after`` (this scan) against ``before`` (the baseline), site by site (by name)."""
    old = {site.name: site for site in before.sites}
    changes: list[SiteChange] = []
    for site in after.sites:
        dead = set(site.dead_units)
        prior = old.get(site.name)
        if prior is None:
            changes.append(SiteChange(site.name, "added", None, site.units, None, site.dead_ratio,
                                      None, len(site.dormant_units), (), tuple(site.dead_units), ()))
            continue
        was_dead = set(prior.dead_units)
        if prior.units != site.units:
            changes.append(SiteChange(site.name, "resized", prior.units, site.units,
                                      prior.dead_ratio, site.dead_ratio, len(prior.dormant_units),
                                      len(site.dormant_units), (), (), ()))
            continue
        changes.append(SiteChange(
            site.name, "matched", prior.units, site.units, prior.dead_ratio, site.dead_ratio,
            len(prior.dormant_units), len(site.dormant_units),
            tuple(sorted(dead & was_dead)), tuple(sorted(dead - was_dead)),
            tuple(sorted(was_dead - dead))))
    current = {site.name for site in after.sites}
    for site in before.sites:
        if site.name not in current:
            changes.append(SiteChange(site.name, "removed", site.units, None, site.dead_ratio, None,
                                      len(site.dormant_units), None, (), (), ()))
    return BaselineComparison(
        source=source,
        model_sha256=before.model.sha256,
        still_dead_units=sum(len(c.still_dead) for c in changes),
        newly_dead_units=sum(len(c.newly_dead) for c in changes),
        revived_units=sum(len(c.revived) for c in changes),
        added_sites=tuple(c.name for c in changes if c.status == "added"),
        removed_sites=tuple(c.name for c in changes if c.status == "removed"),
        resized_sites=tuple(c.name for c in changes if c.status == "resized"),
        sites=tuple(changes),
        findings_before=tuple(FindingRef(f.rule, f.site) for f in before.findings),
    )


def got_worse(change: SiteChange) -> bool:
    """Whether a site is worse than in the baseline: units newly dead, or (resized) a higher
    dead ratio. Removed sites never are."""
    if change.status in ("matched", "added"):
        return bool(change.newly_dead)
    if change.status == "resized":
        return (change.dead_ratio_after or 0.0) > (change.dead_ratio_before or 0.0)
    return False


@dataclass(frozen=True)
class DiffRow:
    change: SiteChange
    increase: float  # dead ratio after - before (a new site: after - 0; removed: 0)
    worse: bool  # increase > tolerance


def diff_rows(comparison: BaselineComparison, tolerance: float) -> list[DiffRow]:
    """``reludoctor diff``: a site is worse when its dead ratio rose by more than ``tolerance``."""
    rows = []
    for change in comparison.sites:
        if change.status == "removed":
            increase = 0.0
        else:
            increase = (change.dead_ratio_after or 0.0) - (change.dead_ratio_before or 0.0)
        rows.append(DiffRow(change, increase, increase > tolerance + 1e-12))
    return rows


def diff_to_dict(a: str, b: str, comparison: BaselineComparison, tolerance: float) -> dict[str, Any]:
    """The JSON of ``reludoctor diff --json``: per site the comparison plus its dead-ratio
    increase and whether that exceeds the tolerance."""
    from dataclasses import asdict

    rows = diff_rows(comparison, tolerance)
    return _plain({
        "a": a,
        "b": b,
        "tolerance": tolerance,
        "worse": any(row.worse for row in rows),
        "worse_sites": [row.change.name for row in rows if row.worse],
        "still_dead_units": comparison.still_dead_units,
        "newly_dead_units": comparison.newly_dead_units,
        "revived_units": comparison.revived_units,
        "added_sites": comparison.added_sites,
        "removed_sites": comparison.removed_sites,
        "resized_sites": comparison.resized_sites,
        "sites": [{**asdict(row.change), "dead_ratio_increase": row.increase, "worse": row.worse}
                  for row in rows],
    })


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, float) and value != value:
        return None
    return value
