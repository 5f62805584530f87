"""Markdown: a summary fit for a CI job summary ($GITHUB_STEP_SUMMARY) or a pull-request comment.

Headline numbers, the gate verdict, a table of the worst sites, baseline changes and the
findings with their suggestions. Every name and message is escaped (site names come from model
files); names are code spans.
"""

from __future__ import annotations

from collections import defaultdict

from reludoctor.report.model import Report
from reludoctor.reporters.common import (
    SEVERITIES,
    RenderOptions,
    SiteRows,
    certification_text,
    certified_cell,
    definition_table,
    human,
    md_code,
    md_escape,
    percent,
    preview,
    rank_worst,
    slice_table,
)

DEFAULT_TOP = 10
FINDINGS_PER_RULE = 5
ICON = {"error": "🔴", "warning": "🟡", "info": "🔵"}


def render(report: Report, options: RenderOptions | None = None) -> str:
    options = options or RenderOptions()
    top = options.top if options.top is not None else DEFAULT_TOP
    s = report.summary
    out: list[str] = []
    out.append(f"## reludoctor: {md_code(report.model.path or 'in-memory model')}")
    out.append("")
    verdict = ""
    if report.gates is not None:
        verdict = ("**✅ gates passed**" if report.gates.passed
                   else f"**❌ gates failed** ({len(report.gates.failures)} failure(s))")
        verdict += " · "
    out.append(f"{verdict}**{human(s.dead_units)}** of {human(s.units)} units dead "
               f"(**{percent(s.dead_ratio)}**) across {human(s.sites)} sites")
    out.append("")
    out.append("| measure | value |")
    out.append("|---|---|")
    if s.worst_site is not None:
        out.append(f"| worst site | {md_code(s.worst_site, table=True)} ({percent(s.worst_site_dead_ratio)} dead) |")
    if s.fully_dead_sites:
        names = ", ".join(md_code(n, table=True) for n in s.fully_dead_sites[:10])
        more = f" and {len(s.fully_dead_sites) - 10} more" if len(s.fully_dead_sites) > 10 else ""
        out.append(f"| fully dead sites | {names}{more} |")
    out.append(f"| near-dead units | {human(s.near_dead_units)} (alive, firing rate < "
               f"{report.thresholds.near_dead:g}) |")
    out.append(f"| dormant units | {human(s.dormant_units)} (tau {report.thresholds.dormant_tau:g}, "
               "includes dead) |")
    out.append(f"| saturated units | {human(s.saturated_units)} |")
    calibration = report.calibration
    synthetic = " **(synthetic)**" if calibration.synthetic else ""
    out.append(f"| calibration | {md_escape(calibration.source)}{synthetic}, "
               f"{human(calibration.samples)} samples |")
    if s.firing_rate_bound_95 < 1:
        out.append(f"| confidence | 0 firings in {human(calibration.samples)} samples: firing rate < "
                   f"{s.firing_rate_bound_95:.2%} (95%) |")
    else:  # 3/N >= 100%: no bound at all
        out.append(f"| confidence | {human(calibration.samples)} sample"
                   f"{'' if calibration.samples == 1 else 's'}: too few to bound a dead unit's "
                   "firing rate (3/N is not below 100%) |")
    model = report.model
    out.append(f"| model | {md_escape(model.format)}, observed via {md_escape(model.method)}"
               + (f", sha256 {md_code(model.sha256[:12])}" if model.sha256 else "") + " |")
    certification = certification_text(report, limit=5)
    if certification is not None:
        out.append(f"| certified dead | {md_escape(certification)} |")
    if report.unobserved_sites:
        out.append(f"| not observed | {len(report.unobserved_sites)} site(s): "
                   + ", ".join(md_code(u.name, table=True) for u in report.unobserved_sites[:5]) + " |")
    out.append("")
    out.extend(_sites(report, top))
    out.extend(_profile(report))
    out.extend(_definitions(report))
    out.extend(_slices(report))
    out.extend(_ablation(report))
    if report.gates is not None and not report.gates.passed:
        out.extend(_gates(report))
    if report.baseline is not None:
        out.extend(_baseline(report))
    out.extend(_findings(report))
    version = report.tool.get("version", "")
    out.append(f"<sub>reludoctor {md_escape(version)} · report schema_version {report.schema_version}</sub>")
    return "\n".join(out).rstrip() + "\n"


def _profile(report: Report) -> list[str]:
    """Language models: the per-layer neuron activation profile (nothing for other models)."""
    profile = report.profile
    if profile is None:
        return []
    hot = [f"hot {h.coverage:.0%}" for h in profile.layers[0].hot]
    out = [f"### Neuron activation profile (sparsity {percent(profile.sparsity)})", "",
           "| layer | site | neurons | sparsity | active per token | " + " | ".join(hot) + " | dead |",
           "|--:|---|--:|--:|--:|" + "--:|" * len(hot) + "--:|"]
    for layer in profile.layers:
        index = "-" if layer.layer is None else str(layer.layer)
        sizes = " | ".join(human(h.neurons) for h in layer.hot)
        out.append(f"| {index} | {md_code(layer.site, table=True)} | {human(layer.neurons)} | "
                   f"{percent(layer.sparsity)} | {layer.mean_active_neurons:.1f} | {sizes} | "
                   f"{human(layer.dead_neurons)} |")
    out.append("")
    return out


def _site_rows(found: SiteRows, titled: bool = True) -> list[str]:
    """A per-site table of an optional section (``common.SiteRows``), under its title and with
    its legend when ``titled``."""
    out = [f"### {md_escape(found.title[0].upper() + found.title[1:])}", ""] if titled else []
    out += [f"| {md_escape(found.first)} | " + " | ".join(md_escape(h) for h in found.headers) + " |",
            "|---|" + "--:|" * len(found.headers)]
    for name, cells in found.rows:
        out.append(f"| {md_code(name, table=True)} | " + " | ".join(md_escape(c) for c in cells) + " |")
    if found.total is not None:
        out.append("| **all sites** | " + " | ".join(md_escape(c) for c in found.total) + " |")
    out.append("")
    if titled and found.legend:
        out += [md_escape(found.legend), ""]
    return out


def _definitions(report: Report) -> list[str]:
    """--definitions: flagged units per site under each definition from the literature."""
    found = definition_table(report)
    return [] if found is None else _site_rows(found)


def _slices(report: Report) -> list[str]:
    """--slices / --dead-points: per site, liveness over the slices and the dead points."""
    found = slice_table(report)
    return [] if found is None else _site_rows(found)


def _ablation(report: Report) -> list[str]:
    """--ablate: the measured cost of zeroing each site's dormant and near-dead units."""
    from reludoctor.reporters.ablation_view import ablation_view

    view = ablation_view(report)
    if view is None:
        return []
    out = ["### Measured ablation", "", md_escape(view.headline), ""]
    for table in view.tables:
        out += _site_rows(table, titled=False)
    if view.legend:
        out += [md_escape(view.legend), ""]
    return out


def _sites(report: Report, top: int) -> list[str]:
    ranked = rank_worst(report.sites)[:top]
    failing: dict[str, list[str]] = defaultdict(list)
    if report.gates is not None:
        for failure in report.gates.failures:
            if failure.site is not None:
                failing[failure.site].append(failure.gate)
    shown = len(ranked)
    title = f"### Worst sites ({shown} of {len(report.sites)})" if shown < len(report.sites) else "### Sites"
    certified = report.certification is not None
    out = [title, "", "| # | site | op | units | dead | " + ("certified | " if certified else "")
           + "dead % | near-dead | dormant | gate |", "|--:|---|---|--:|--:|" + ("--:|" if certified else "")
           + "--:|--:|--:|---|"]
    for index in ranked:
        site = report.sites[index]
        gate = "❌ " + ", ".join(sorted(set(failing[site.name]))) if site.name in failing else ""
        out.append(f"| {index} | {md_code(site.name, table=True)} | {md_escape(site.op)} | "
                   f"{human(site.units)} | {human(len(site.dead_units))} | "
                   + (f"{certified_cell(site)} | " if certified else "") + f"{percent(site.dead_ratio)} | "
                   f"{human(len(site.near_dead_units))} | {human(len(site.dormant_units))} | {gate} |")
    out.append("")
    return out


def _gates(report: Report) -> list[str]:
    gates = report.gates
    assert gates is not None
    out = ["### Gate failures", "", f"Checked: {md_escape(', '.join(gates.checks))}", ""]
    for failure in gates.failures[:20]:
        where = md_code(failure.site) if failure.site is not None else "scan"
        out.append(f"- **{md_escape(failure.gate)}** {where}: {md_escape(failure.message)}")
    if len(gates.failures) > 20:
        out.append(f"- ... {len(gates.failures) - 20} more")
    out.append("")
    return out


def _baseline(report: Report) -> list[str]:
    c = report.baseline
    assert c is not None
    out = ["### Against the baseline", "",
           f"Baseline {md_code(c.source)}: **{human(c.newly_dead_units)} newly dead**, "
           f"{human(c.revived_units)} revived, {human(c.still_dead_units)} still dead units."]
    for label, names in (("Added", c.added_sites), ("Removed", c.removed_sites),
                         ("Resized", c.resized_sites)):
        if names:
            out.append(f"{label} sites: " + ", ".join(md_code(n) for n in names[:10])
                       + (f" and {len(names) - 10} more" if len(names) > 10 else "") + ".")
    changed = [s for s in c.sites if s.newly_dead or s.revived or s.status == "resized"]
    if changed:
        out += ["", "| site | status | dead % before | dead % now | newly dead | revived |",
                "|---|---|--:|--:|---|---|"]
        for change in changed[:20]:
            out.append(f"| {md_code(change.name, table=True)} | {md_escape(change.status)} | "
                       f"{percent(change.dead_ratio_before)} | {percent(change.dead_ratio_after)} | "
                       f"{md_escape(preview(change.newly_dead, 6)) or '-'} | "
                       f"{md_escape(preview(change.revived, 6)) or '-'} |")
        if len(changed) > 20:
            out.append(f"\n... {len(changed) - 20} more sites changed.")
    out.append("")
    return out


def _findings(report: Report) -> list[str]:
    if not report.findings:
        return ["### Findings", "", "No findings.", ""]
    by_rule: dict[tuple[str, str], list] = defaultdict(list)
    for finding in report.findings:
        by_rule[(finding.severity, finding.rule)].append(finding)
    out = ["### Findings", ""]
    for severity in SEVERITIES:
        for (level, rule), findings in by_rule.items():
            if level != severity:
                continue
            count = f" ({len(findings)} sites)" if len(findings) > 1 else ""
            out.append(f"**{ICON.get(severity, '')} {md_escape(severity)}** {md_code(rule)}{count}")
            out.append("")
            for finding in findings[:FINDINGS_PER_RULE]:
                out.append(f"- {md_escape(finding.message)}")
            if len(findings) > FINDINGS_PER_RULE:
                out.append(f"- ... {len(findings) - FINDINGS_PER_RULE} more (see the JSON report)")
            out.append("")
            out.append(f"> **Fix:** {md_escape(findings[0].suggestion)}")
            out.append("")
    return out
