"""CI gates on a report: exit 1 when one fails. Typed results for JUnit, the terminal and JSON.

- ``fail-over RATIO``: a site whose dead ratio exceeds RATIO fails.
- per-site limits (glob patterns on site names, ``[tool.reludoctor.sites]`` or
  ``--fail-over-site``): the first pattern matching a site replaces ``fail-over`` for it.
- ``fail-on SEVERITY|RULE``: a finding of that severity or worse (``warning`` also catches
  ``error``), or with that rule id, fails (at its site, or scan-wide for findings without one).
- a baseline (``--baseline``, compared in ``reludoctor.report.baseline``) makes every gate relative:
  a site fails the baseline gate when units died since the baseline (a site that is new counts
  all its dead units); a dead-ratio limit fails only where the dead ratio also rose (or the site
  is new); ``fail-on`` only on findings (rule, site) the baseline did not have.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from reludoctor.core.rules import RULE_IDS
from reludoctor.report.baseline import got_worse
from reludoctor.report.config import SEVERITIES, Settings
from reludoctor.report.model import GateFailure, GateOutcome, Report, SiteChange, SiteStats

SEVERITY_RANK = {name: rank for rank, name in enumerate(SEVERITIES)}
# --fail-on warns about an id that is neither a rule nor in the report (a typo would otherwise
# never fail).
KNOWN_RULES = RULE_IDS


def limit_for(site: str, settings: Settings) -> tuple[float | None, str | None]:
    """(max dead ratio, the pattern that set it; None for --fail-over) for a site name."""
    for pattern, limit in settings.site_limits:
        if fnmatchcase(site, pattern):
            return limit, pattern
    return settings.fail_over, None


def checks(settings: Settings, report: Report) -> tuple[str, ...]:
    described = []
    if settings.fail_over is not None:
        described.append(f"fail-over {settings.fail_over:g}")
    described.extend(f"site-threshold {pattern} {limit:g}" for pattern, limit in settings.site_limits)
    described.extend(f"fail-on {token}" for token in settings.fail_on)
    if report.baseline is not None:
        described.append(f"baseline {report.baseline.source}")
    return tuple(described)


def _rose(site: SiteStats, report: Report) -> bool:
    """Without a baseline every site counts; with one, a dead ratio that rose, or a new site."""
    if report.baseline is None:
        return True
    change = report.baseline.site(site.name)
    if change is None or change.status == "added" or change.dead_ratio_before is None:
        return True
    return site.dead_ratio > change.dead_ratio_before + 1e-12


def _matches(token: str, rule: str, severity: str) -> bool:
    if token in SEVERITY_RANK:
        return SEVERITY_RANK.get(severity, -1) >= SEVERITY_RANK[token]
    return rule == token


def evaluate(report: Report, settings: Settings) -> GateOutcome | None:
    """The gates ``settings`` configure (and the baseline gate when ``report.baseline`` is set)
    evaluated on ``report``; None when there is no gate at all."""
    described = checks(settings, report)
    if not described:
        return None
    failures: list[GateFailure] = []
    for site in report.sites:
        limit, pattern = limit_for(site.name, settings)
        if limit is not None and site.dead_ratio > limit and _rose(site, report):
            how = f"site threshold {pattern!r}" if pattern is not None else "--fail-over"
            failures.append(GateFailure(
                gate="fail-over" if pattern is None else "site-threshold", site=site.name,
                message=f"{site.dead_ratio:.1%} dead ({len(site.dead_units)} of {site.units} units) "
                        f"> {limit:.1%} ({how})",
                value=site.dead_ratio, limit=limit))
        change = report.baseline.site(site.name) if report.baseline is not None else None
        if change is not None and got_worse(change):
            failures.append(_baseline_failure(change))
    if settings.fail_on:
        known = set() if report.baseline is None else {
            (ref.rule, ref.site) for ref in report.baseline.findings_before}
        for finding in report.findings:
            token = next((t for t in settings.fail_on if _matches(t, finding.rule, finding.severity)), None)
            if token is None or (finding.rule, finding.site) in known:
                continue
            failures.append(GateFailure(
                gate="fail-on", site=finding.site,
                message=f"{finding.severity} {finding.rule}: {finding.message} (--fail-on {token})",
                rule=finding.rule))
    return GateOutcome(passed=not failures, checks=described, failures=tuple(failures))


def preview(units: tuple[int, ...], limit: int = 8) -> str:
    shown = ", ".join(map(str, units[:limit]))
    return shown + (f", ... ({len(units)} in all)" if len(units) > limit else "")


def _baseline_failure(change: SiteChange) -> GateFailure:
    if change.status == "resized":
        message = (f"resized from {change.units_before} to {change.units_after} units and the dead "
                   f"ratio rose from {change.dead_ratio_before:.1%} to {change.dead_ratio_after:.1%}")
        return GateFailure("baseline", change.name, message, change.dead_ratio_after,
                           change.dead_ratio_before)
    count = len(change.newly_dead)
    units = "unit" if count == 1 else "units"
    if change.status == "added":
        message = f"new since the baseline, with {count} dead {units}: {preview(change.newly_dead)}"
    else:
        message = f"{count} {units} newly dead since the baseline: {preview(change.newly_dead)}"
    return GateFailure("baseline", change.name, message, float(count), 0.0)


def unknown_fail_on(settings: Settings, report: Report) -> list[str]:
    """--fail-on rule ids that are neither known nor in the report (probably typos)."""
    seen = {finding.rule for finding in report.findings}
    return [t for t in settings.fail_on
            if t not in SEVERITY_RANK and t not in KNOWN_RULES and t not in seen]


def summary_lines(outcome: GateOutcome) -> list[str]:
    """One line per failing gate kind, for stderr: 'gate failed: ...'."""
    lines = []
    by_gate: dict[str, list[GateFailure]] = {}
    for failure in outcome.failures:
        by_gate.setdefault(failure.gate, []).append(failure)
    for gate, failures in by_gate.items():
        if gate in ("fail-over", "site-threshold"):
            worst = max(failures, key=lambda f: f.value or 0.0)
            what = "--fail-over" if gate == "fail-over" else "its site threshold"
            limit = f" {worst.limit:g}" if gate == "fail-over" and worst.limit is not None else ""
            lines.append(f"gate failed: {len(failures)} site(s) over {what}{limit}; worst "
                         f"{worst.site} at {worst.value:.1%} dead")
        elif gate == "fail-on":
            rules = sorted({f.rule or "" for f in failures})
            lines.append(f"gate failed: --fail-on matched {len(failures)} finding(s): {', '.join(rules)}")
        elif gate == "baseline":
            first = failures[0]
            lines.append(f"gate failed: {len(failures)} site(s) got worse than the baseline; "
                         f"first {first.site}: {first.message}")
        else:  # pragma: no cover - a gate added later
            lines.append(f"gate failed: {gate}: {failures[0].message}")
    return lines
