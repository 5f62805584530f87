"""The terminal report (rich): a table of sites, a summary and the findings."""

from __future__ import annotations

from collections import defaultdict

from rich import box
from rich.console import Console
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from reludoctor.report import Report

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
BAR_WIDTH = 8
FINDINGS_PER_RULE = 3  # the terminal shows a few per rule; the JSON report has them all


def _bar(ratio: float) -> Text:
    filled = round(ratio * BAR_WIDTH)
    if ratio > 0 and filled == 0:
        filled = 1  # any dead unit shows
    return Text("█" * filled, style="red") + Text("·" * (BAR_WIDTH - filled), style="dim")


def _count(value: int, style: str) -> Text:
    return Text(str(value), style=style if value else "dim")


def _worst(report: Report, limit: int = 3) -> set[str]:
    ranked = sorted((s for s in report.sites if s.dead_units), key=lambda s: -s.dead_ratio)
    return {s.name for s in ranked[:limit]}


def site_table(report: Report) -> Table:
    table = Table(title="ReLU sites in execution order", title_justify="left", box=box.SIMPLE_HEAD,
                  pad_edge=False)
    table.add_column("#", justify="right", style="dim")
    table.add_column("site", no_wrap=True, overflow="ellipsis", min_width=12)
    table.add_column("op", no_wrap=True)
    table.add_column("units", justify="right", min_width=5)
    table.add_column("dead", justify="right", min_width=4)
    table.add_column("dead%", justify="right", min_width=5)
    table.add_column("near", justify="right", min_width=4)
    table.add_column("dorm", justify="right", min_width=4)
    table.add_column("sat", justify="right", min_width=3)
    table.add_column("", no_wrap=True)
    worst = _worst(report)
    for index, site in enumerate(report.sites):
        style = "bold red" if site.name in worst else None
        saturated = "-" if site.saturated_units is None else str(len(site.saturated_units))
        table.add_row(
            str(index),
            Text(site.name, style=style or ""),
            site.op,
            str(site.units),
            _count(len(site.dead_units), "red"),
            Text(f"{site.dead_ratio:.1%}", style=style or ("" if site.dead_units else "dim")),
            _count(len(site.near_dead_units), "yellow"),
            _count(len(site.dormant_units), "yellow"),
            Text(saturated, style="magenta" if saturated not in ("-", "0") else "dim"),
            _bar(site.dead_ratio),
        )
    return table


def _summary_lines(report: Report) -> list[Text]:
    s = report.summary
    n = report.calibration.samples
    lines = [
        Text.assemble(("dead units: ", "bold"), f"{s.dead_units} of {s.units} ",
                      (f"({s.dead_ratio:.1%})", "bold red" if s.dead_units else "green"),
                      f" across {s.sites} sites"),
    ]
    if s.worst_site and s.worst_site_dead_ratio > 0:
        lines.append(Text.assemble(("worst site: ", "bold"), s.worst_site,
                                   f" ({s.worst_site_dead_ratio:.1%} dead)"))
    if report.unobserved_sites:
        names = ", ".join(f"{u.name} ({u.reason})" for u in report.unobserved_sites[:3])
        more = len(report.unobserved_sites) - 3
        lines.append(Text.assemble((f"not observed: {s.unobserved_sites} sites: ", "bold yellow"),
                                   names + (f", ... {more} more" if more > 0 else "")))
    if s.fully_dead_sites:
        lines.append(Text.assemble(("fully dead sites: ", "bold red"), ", ".join(s.fully_dead_sites)))
    lines.append(Text(
        f"near-dead (alive, firing rate < {report.thresholds.near_dead:g}): {s.near_dead_units}   "
        f"dormant (tau {report.thresholds.dormant_tau:g}, includes dead): {s.dormant_units}   "
        f"saturated: {s.saturated_units}"))
    lines.append(Text(
        f"confidence: 0 firings in {n} samples bounds a dead unit's firing rate below "
        f"3/{n} = {s.firing_rate_bound_95:.2%} (95%)", style="dim"))
    return lines


def render(report: Report, console: Console) -> None:
    model = report.model
    calibration = report.calibration
    console.print(Text.assemble(("reludoctor ", "bold"), f"{model.path or 'in-memory model'} ",
                                (f"[{model.format}, observed via {model.method}]", "dim")))
    data_style = "bold yellow" if calibration.synthetic else ""
    console.print(Text.assemble("calibration: ", (calibration.source, data_style),
                                f", {calibration.samples} samples, batch {calibration.batch_size}, "
                                f"device {report.device}"))
    console.print(site_table(report))
    for line in _summary_lines(report):
        console.print(line)
    if report.findings:
        console.print(Text("findings", style="bold underline"))
        for indent, line in _finding_lines(report):
            console.print(Padding(line, (0, 0, 0, indent), expand=False))


def _finding_lines(report: Report) -> list[tuple[int, Text]]:
    """Grouped by severity then rule; a few sites per rule, the suggestion once."""
    by_rule = defaultdict(list)
    for finding in report.findings:
        by_rule[(finding.severity, finding.rule)].append(finding)
    lines = []
    for severity in ("error", "warning", "info"):
        for (level, rule), findings in by_rule.items():
            if level != severity:
                continue
            where = f" ({len(findings)} sites)" if len(findings) > 1 else ""
            lines.append((0, Text.assemble((f"{severity:<7} ", SEVERITY_STYLE[severity]),
                                           (f"{rule}{where}", "bold"))))
            for finding in findings[:FINDINGS_PER_RULE]:
                lines.append((4, Text(f"- {finding.message}")))
            if len(findings) > FINDINGS_PER_RULE:
                lines.append((4, Text(f"... {len(findings) - FINDINGS_PER_RULE} more (see --json)",
                                      style="dim")))
            lines.append((4, Text(f"fix: {findings[0].suggestion}", style="green")))
    return lines
