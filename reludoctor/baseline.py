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

from reludoctor.report import (
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
    (exit 2) naming the file: unreadable, not JSON, another schema version, not a report."""
    from reludoctor.schema import ReportValidationError, validate

    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportFormatError(f"{what} {path} not found") from None
    except IsADirectoryError:
        raise ReportFormatError(f"{what} {path} is a directory", "give a JSON report file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ReportFormatError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        data: Any = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ReportFormatError(f"{what} {path} is not valid JSON: {exc.msg} at line {exc.lineno} "
                                f"column {exc.colno}", "give a report written by reludoctor scan --json") from None
    try:
        check_schema_version(data)  # first: it gives the clearest message
        data = with_defaults(Report, data)  # keys added to version 1 after it was written
        validate(data)
        return Report.from_dict(data)
    except ReportFormatError as exc:
        raise ReportFormatError(f"{what} {path}: {exc.message}", exc.hint) from None
    except ReportValidationError as exc:
        raise ReportFormatError(f"{what} {path}: {exc}", "give a report written by reludoctor scan --json") from None


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
