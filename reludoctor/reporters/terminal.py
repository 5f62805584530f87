"""The terminal report (rich): a table of sites, a summary, the findings, gates and baseline.

``print_report`` writes to a rich Console (which respects NO_COLOR and the terminal's width);
``render`` returns the same report as plain text (the ``table`` format's ``render``).
``print_diff`` prints ``reludoctor diff``.
"""

from __future__ import annotations

import io
import math
from collections import Counter, defaultdict
from typing import Callable

from rich import box
from rich.console import Console
from rich.measure import Measurement
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from reludoctor.report.model import NOT_REQUESTED, BaselineComparison, GateOutcome, Report
from reludoctor.reporters.common import (
    RenderOptions,
    SiteRows,
    certification_text,
    certified_cell,
    definition_table,
    human,
    percent,
    preview,
    printable_copy,
    slice_table,
    top_sites,
)

SEVERITY_STYLE = {"error": "bold red", "warning": "yellow", "info": "cyan"}
BAR_WIDTH = 8
FINDINGS_PER_RULE = 3  # the terminal shows a few per rule; the JSON report has them all


def _bar(ratio: float) -> Text:
    filled = round(ratio * BAR_WIDTH)
    if ratio > 0 and filled == 0:
        filled = 1  # any dead unit shows
    return Text("█" * filled, style="red") + Text("·" * (BAR_WIDTH - filled), style="dim")


def _count(value: int, style: str) -> Text:
    return Text(human(value), style=style if value else "dim")


def _gradient_columns(report: Report) -> tuple[bool, bool]:
    """(RMS column, pass-through column): shown when any site carries them."""
    grads = [s.gradient for s in report.sites if s.gradient is not None]
    return any(g.rms_preactivation is not None for g in grads), bool(grads)


def _rms(value: float | None) -> Text:
    return Text("-" if value is None else f"{value:.1e}", style="dim" if not value else "")


def _worst(report: Report, limit: int = 3) -> set[str]:
    ranked = sorted((s for s in report.sites if s.dead_units), key=lambda s: -s.dead_ratio)
    return {s.name for s in ranked[:limit]}


NAME_MIN = 12


_SEPARATORS = "./#:_-"


def shorten_middle(name: str, width: int, head: int | None = None) -> str:
    """``name`` in at most ``width`` characters, shortened in the middle: the end of a site name
    (``layers.11.fc1#2``) tells sites apart, the start (``model.decoder.``) is shared by many, so
    the end keeps about two thirds of the room, from the start of a part (``…11.fc1``, not
    ``…1.fc1``) when that part fits. ``head``: characters kept at the start (then no rounding)."""
    if len(name) <= width:
        return name
    if width <= 1:
        return "…"[:width]
    budget = width - 1
    if head is None:
        head = budget // 3
        start = len(name) - (budget - head)
        cut = max(name.rfind(separator, 0, start) for separator in _SEPARATORS)
        if name[start - 1] not in _SEPARATORS and cut >= 0 and len(name) - cut - 1 <= budget:
            head = budget - (len(name) - cut - 1)
    head = max(0, min(head, budget))
    return name[:head] + "…" + name[len(name) - (budget - head):]


def shorten_names(names: list[str], widths: list[int]) -> list[str]:
    """``shorten_middle`` for a column: names that would read the same keep only their end."""
    short = [shorten_middle(name, width) for name, width in zip(names, widths)]
    counts = Counter(short)
    return [shorten_middle(name, width, head=0) if counts[text] > 1 else text
            for name, width, text in zip(names, widths, short)]


def fitted(build: Callable[[int, bool], Table], console: Console | None) -> Table:
    """The widest table that fits the console. Full site names come first: the bar column goes
    before any name is shortened; only then are long names shortened in the middle (the
    builder does it, ``shorten_middle``, keeping the distinguishing end)."""
    if console is None:
        return build(10_000, True)
    width = console.width

    def need(table: Table) -> int:
        return Measurement.get(console, console.options.update_width(100_000), table).maximum

    for with_bar in (True, False):
        table = build(10_000, with_bar)
        if need(table) <= width:
            return table
    return build(NAME_MIN + max(0, width - need(build(NAME_MIN, False))), False)


def _site_order(model_format: str) -> str:
    """How the backend lists its sites (ONNX: the graph's topological order, its execution order)."""
    from reludoctor.backends import registry

    try:
        return registry.for_format(model_format).site_order
    except KeyError:  # a report from a newer version, or edited by hand
        return "execution order"


def site_table(report: Report, top: int | None = None, console: Console | None = None) -> Table:
    """The site table, worst sites highlighted, fitted to ``console``'s width."""
    shown, hidden = top_sites(report, top)
    title = "ReLU sites in " + _site_order(report.model.format)
    if hidden:
        title += f" (the {len(shown)} worst of {len(report.sites)})"
    worst = _worst(report)
    with_rms, with_pass = _gradient_columns(report)
    certified = report.certification is not None
    failing = set()
    if report.gates is not None:
        failing = {f.site for f in report.gates.failures if f.site is not None}

    def build(name_width: int, with_bar: bool) -> Table:
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("#", justify="right", style="dim", no_wrap=True)
        table.add_column("site", no_wrap=True, overflow="ellipsis", min_width=NAME_MIN,
                         max_width=max(NAME_MIN, name_width))
        table.add_column("op", no_wrap=True)
        table.add_column("units", justify="right", min_width=5, no_wrap=True)
        table.add_column("dead", justify="right", min_width=4, no_wrap=True)
        if certified:
            table.add_column("cert", justify="right", min_width=4, no_wrap=True)  # certified dead
        table.add_column("dead%", justify="right", min_width=6, no_wrap=True)
        table.add_column("near", justify="right", min_width=4, no_wrap=True)
        table.add_column("dorm", justify="right", min_width=4, no_wrap=True)
        table.add_column("sat", justify="right", min_width=3, no_wrap=True)
        if with_rms:
            table.add_column("grad", justify="right", no_wrap=True)  # RMS dL/d(pre-activation)
        if with_pass:
            table.add_column("pass", justify="right", no_wrap=True)  # gradient pass-through
        if with_bar:
            table.add_column("", no_wrap=True)
        short_names = dict(zip(shown, shorten_names(
            [report.sites[i].name for i in shown],
            [max(NAME_MIN, name_width) - (2 if report.sites[i].name in failing else 0) for i in shown])))
        for index in shown:
            site = report.sites[index]
            style = "bold red" if site.name in worst else None
            saturated = "-" if site.saturated_units is None else human(len(site.saturated_units))
            name = Text(short_names[index], style=style or "")
            if site.name in failing:
                name.append(" ✗", style="bold red")
            cells = [
                str(index),
                name,
                site.op,
                human(site.units),
                _count(len(site.dead_units), "red"),
                *([Text(certified_cell(site), style="red" if site.certified_dead_units else "dim")]
                  if certified else []),
                Text(f"{site.dead_ratio:.1%}", style=style or ("" if site.dead_units else "dim")),
                _count(len(site.near_dead_units), "yellow"),
                _count(len(site.dormant_units), "yellow"),
                Text(saturated, style="magenta" if saturated not in ("-", "0") else "dim"),
            ]
            gradient = site.gradient
            if with_rms:
                cells.append(_rms(None if gradient is None else gradient.rms_preactivation))
            if with_pass:
                cells.append("-" if gradient is None else f"{gradient.pass_through:.0%}")
            table.add_row(*cells, *([_bar(site.dead_ratio)] if with_bar else []))
        return table

    return fitted(build, console)


def profile_table(report: Report, console: Console | None = None) -> Table | None:
    """Language models: one row per FFN site (its block, neurons, sparsity, the sizes of the
    hot sets covering 80/90/99% of its activations, dead neurons); None without a profile."""
    profile = report.profile
    if profile is None:
        return None
    title = f"neuron activation profile (FFN sites; sparsity {profile.sparsity:.1%})"

    def build(name_width: int, with_bar: bool) -> Table:
        table = Table(title=title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
        table.add_column("layer", justify="right", no_wrap=True)
        table.add_column("site", no_wrap=True, overflow="ellipsis", min_width=NAME_MIN,
                         max_width=max(NAME_MIN, name_width))
        table.add_column("neurons", justify="right", no_wrap=True)
        table.add_column("sparsity", justify="right", no_wrap=True)
        for hot in profile.layers[0].hot:
            table.add_column(f"hot{hot.coverage:.0%}", justify="right", no_wrap=True)
        table.add_column("dead", justify="right", min_width=4, no_wrap=True)
        names = shorten_names([layer.site for layer in profile.layers],
                              [max(NAME_MIN, name_width)] * len(profile.layers))
        for layer, name in zip(profile.layers, names):
            cells = ["-" if layer.layer is None else str(layer.layer), name, human(layer.neurons),
                     f"{layer.sparsity:.1%}", *(human(hot.neurons) for hot in layer.hot),
                     _count(layer.dead_neurons, "red")]
            table.add_row(*cells)  # no bar: sparsity is not a defect
        return table

    return fitted(build, console)


def site_rows_table(found: SiteRows, console: Console | None = None) -> Table:
    """A per-site table of an optional section (``common.SiteRows``), fitted to the console."""

    def build(name_width: int, with_bar: bool) -> Table:
        table = Table(title=found.title, title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False,
                      caption=found.legend or None, caption_justify="left")
        table.add_column(found.first, no_wrap=True, overflow="ellipsis", min_width=NAME_MIN,
                         max_width=max(NAME_MIN, name_width))
        for header in found.headers:
            table.add_column(header, justify="right", no_wrap=True)
        names = shorten_names([name for name, _ in found.rows], [max(NAME_MIN, name_width)] * len(found.rows))
        for name, (_, cells) in zip(names, found.rows):
            table.add_row(name, *cells)
        if found.total is not None:
            table.add_row(Text("all sites", style="bold"), *found.total)
        return table

    return fitted(build, console)


def definitions_table(report: Report, console: Console | None = None) -> Table | None:
    """--definitions: flagged units per site under each definition from the literature."""
    found = definition_table(report)
    return None if found is None else site_rows_table(found, console)


def slices_table(report: Report, console: Console | None = None) -> Table | None:
    """--slices / --dead-points: per site, liveness over the slices and the dead points."""
    found = slice_table(report)
    return None if found is None else site_rows_table(found, console)


def ablation_parts(report: Report, console: Console | None = None) -> list:
    """--ablate: a headline, then the site and unit tables (the measured cost of zeroing)."""
    from reludoctor.reporters.ablation_view import ablation_view

    view = ablation_view(report)
    if view is None:
        return []
    parts: list = [Text(view.headline, style="bold")]
    parts += [site_rows_table(table, console) for table in view.tables]
    if view.legend:
        parts.append(Text(view.legend, style="dim"))
    return parts


def _summary_lines(report: Report) -> list[Text]:
    s = report.summary
    n = report.calibration.samples
    lines = [
        Text.assemble(("dead units: ", "bold"), f"{human(s.dead_units)} of {human(s.units)} ",
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
        f"near-dead (alive, firing rate < {report.thresholds.near_dead:g}): {human(s.near_dead_units)}   "
        f"dormant (tau {report.thresholds.dormant_tau:g}, includes dead): {human(s.dormant_units)}   "
        f"saturated: {human(s.saturated_units)}"))
    lines.extend(gradient_lines(report))
    certification = certification_text(report)
    if certification is not None:
        lines.append(Text(certification, style="bold" if report.certification.certified_dead_units else ""))
    if s.firing_rate_bound_95 < 1:
        lines.append(Text(
            f"confidence: 0 firings in {human(n)} samples bounds a dead unit's firing rate below "
            f"3/{n} = {s.firing_rate_bound_95:.2%} (95%)", style="dim"))
    else:  # 3/N >= 100%: the rule of three says nothing about so few samples
        lines.append(Text(
            f"confidence: {human(n)} sample{'' if n == 1 else 's'} cannot bound a dead unit's firing "
            f"rate (3/{n} is not below 100%): use more samples, e.g. 300 for a bound of 1%",
            style="dim"))
    return lines


SPARK = "▁▂▃▄▅▆▇█"


def depth_profile(values: list[float | None]) -> str:
    """One character per site: log10 of the value scaled between the smallest and largest
    (gradients span decades); a space where there is no value, ▁ for an exact zero."""
    logs = [math.log10(v) if v else None for v in values]
    known = [v for v in logs if v is not None]
    low, high = (min(known), max(known)) if known else (0.0, 0.0)
    chars = []
    for value, log in zip(values, logs):
        if value is None:
            chars.append(" ")
        elif log is None:
            chars.append(SPARK[0])
        else:
            fraction = 0.0 if high == low else (log - low) / (high - low)
            chars.append(SPARK[round(fraction * (len(SPARK) - 1))])
    return "".join(chars)


def gradient_lines(report: Report) -> list[Text]:
    """The gradient pass: which loss, the RMS of dL/d(pre-activation) along depth, and the
    attenuation from the first site to the last; or why it is unavailable."""
    info = report.gradients
    if not info.computed:
        if info.reason and info.reason != NOT_REQUESTED:
            passes = [s.gradient.pass_through for s in report.sites if s.gradient is not None]
            extra = f"; mask pass-through {min(passes):.0%}-{max(passes):.0%}" if passes else ""
            return [Text.assemble(("gradients: ", "bold"), ("unavailable: ", "yellow"),
                                  info.reason + extra)]
        return []
    rms = [None if s.gradient is None else s.gradient.rms_preactivation for s in report.sites]
    line = Text.assemble(("gradient flow: ", "bold"), f"loss {info.loss}, {human(info.samples)} samples; "
                         "RMS dL/d(pre-activation) by depth ", (depth_profile(rms), "cyan"))
    known = [v for v in rms if v is not None]
    if len(known) > 1 and known[-1] > 0 and known[0] > 0:
        line.append(f" (first site at {known[0] / known[-1]:.3g}x the last)")
    return [line]


def print_report(report: Report, console: Console, options: RenderOptions | None = None) -> None:
    """The whole terminal report onto ``console``. Every name and message is shown with its
    control characters as visible ``\\x1b`` text: names come from model files and saved reports,
    and a terminal would act on an escape sequence (clear the screen, retitle the window...)."""
    options = options or RenderOptions()
    report = printable_copy(report)
    model = report.model
    calibration = report.calibration
    console.print(Text.assemble(("reludoctor ", "bold"), f"{model.path or 'in-memory model'} ",
                                (f"[{model.format}, observed via {model.method}]", "dim")))
    data_style = "bold yellow" if calibration.synthetic else ""
    console.print(Text.assemble("calibration: ", (calibration.source, data_style),
                                f", {human(calibration.samples)} samples, batch {calibration.batch_size}, "
                                f"device {report.device}"))
    console.print(site_table(report, options.top, console))
    _, hidden = top_sites(report, options.top)
    if hidden:
        console.print(Text(f"{hidden} more site(s) hidden by --top {options.top} "
                           "(sites with the fewest dead units)", style="dim"))
    for line in _summary_lines(report):
        console.print(line)
    profile = profile_table(report, console)
    if profile is not None:
        console.print(profile)
    definitions = definitions_table(report, console)
    if definitions is not None:
        console.print(definitions)
    sliced = slices_table(report, console)
    if sliced is not None:
        console.print()
        console.print(sliced)
    for index, part in enumerate(ablation_parts(report, console)):
        if index == 0:
            console.print()
        console.print(part)
    if report.baseline is not None:
        for indent, line in baseline_lines(report.baseline):
            console.print(Padding(line, (0, 0, 0, indent), expand=False))
    if report.findings:
        console.print(Text("findings", style="bold underline"))
        for indent, line in _finding_lines(report):
            console.print(Padding(line, (0, 0, 0, indent), expand=False))
    if report.gates is not None:
        for indent, line in gate_lines(report.gates):
            console.print(Padding(line, (0, 0, 0, indent), expand=False))


def render(report: Report, options: RenderOptions | None = None) -> str:
    """The terminal report as plain text (no colour), ``options.width`` columns wide."""
    options = options or RenderOptions()
    buffer = io.StringIO()
    console = Console(file=buffer, width=options.width, color_system=None, force_terminal=False,
                      highlight=False, emoji=False, soft_wrap=False)
    print_report(report, console, options)
    return "".join(line.rstrip() + "\n" for line in buffer.getvalue().splitlines())


GATE_LINES = 10  # failures listed in the terminal; the JSON/JUnit outputs have them all


def gate_lines(outcome: GateOutcome) -> list[tuple[int, Text]]:
    checked = ", ".join(outcome.checks)
    if outcome.passed:
        return [(0, Text.assemble(("gates: ", "bold"), ("passed", "bold green"), f" ({checked})"))]
    lines = [(0, Text.assemble(("gates: ", "bold"), ("FAILED", "bold red"),
                               f" ({checked}): {len(outcome.failures)} failure(s)"))]
    for failure in outcome.failures[:GATE_LINES]:
        where = failure.site if failure.site is not None else "scan"
        lines.append((4, Text.assemble(("✗ ", "bold red"), (f"{failure.gate} ", "bold"),
                                       f"{where}: {failure.message}")))
    if len(outcome.failures) > GATE_LINES:
        lines.append((4, Text(f"... {len(outcome.failures) - GATE_LINES} more (see --json or --junit)",
                              style="dim")))
    return lines


BASELINE_LINES = 10


def baseline_lines(comparison: BaselineComparison) -> list[tuple[int, Text]]:
    c = comparison
    head = Text.assemble(
        ("baseline: ", "bold"), f"{c.source}: ",
        (f"{human(c.newly_dead_units)} newly dead", "bold red" if c.newly_dead_units else "green"),
        ", ", (f"{human(c.revived_units)} revived", "green" if c.revived_units else ""),
        f", {human(c.still_dead_units)} still dead units")
    lines = [(0, head)]
    if c.added_sites or c.removed_sites or c.resized_sites:
        parts = []
        for label, names in (("added", c.added_sites), ("removed", c.removed_sites),
                             ("resized", c.resized_sites)):
            if names:
                shown = ", ".join(names[:5]) + (f", ... {len(names) - 5} more" if len(names) > 5 else "")
                parts.append(f"{label} {len(names)}: {shown}")
        lines.append((4, Text("sites " + "; ".join(parts), style="yellow")))
    changed = [s for s in c.sites if s.newly_dead or s.revived or s.status == "resized"]
    for change in changed[:BASELINE_LINES]:
        text = Text(f"{change.name}: ")
        if change.status == "resized":
            text.append(f"resized {change.units_before} -> {change.units_after} units, dead "
                        f"{percent(change.dead_ratio_before)} -> {percent(change.dead_ratio_after)}")
        if change.newly_dead:
            label = "dead (new site)" if change.status == "added" else "newly dead"
            text.append(f"{label} {preview(change.newly_dead, 6)}", style="red")
        if change.newly_dead and change.revived:
            text.append("; ")
        if change.revived:
            text.append(f"revived {preview(change.revived, 6)}", style="green")
        lines.append((4, text))
    if len(changed) > BASELINE_LINES:
        lines.append((4, Text(f"... {len(changed) - BASELINE_LINES} more sites changed (see --json)",
                              style="dim")))
    return lines


def print_diff(rows: list, comparison: BaselineComparison, console: Console, a: str, b: str,
               tolerance: float) -> None:
    """``reludoctor diff A B``: per site dead ratio A -> B, newly dead, revived, dormant change
    (names with their control characters as visible text)."""
    rows, comparison, a, b = printable_copy((list(rows), comparison, a, b))
    def build(name_width: int, with_worse: bool) -> Table:
        table = Table(title=f"A: {a}\nB: {b}", title_justify="left", box=box.SIMPLE_HEAD,
                      pad_edge=False, collapse_padding=True)
        table.add_column("site", no_wrap=True, overflow="ellipsis", min_width=NAME_MIN,
                         max_width=max(NAME_MIN, name_width))
        table.add_column("status", no_wrap=True)
        table.add_column("dead A", justify="right", no_wrap=True)
        table.add_column("dead B", justify="right", no_wrap=True)
        table.add_column("change", justify="right", no_wrap=True)
        table.add_column("died", justify="right", no_wrap=True)
        table.add_column("revived", justify="right", no_wrap=True)
        table.add_column("dormant", justify="right", no_wrap=True)
        if with_worse:
            table.add_column("", no_wrap=True)
        short_names = dict(zip(map(id, rows), shorten_names(
            [row.change.name for row in rows],
            [max(NAME_MIN, name_width) - (2 if row.worse and not with_worse else 0) for row in rows])))
        for row in rows:
            change = row.change
            delta = "-" if change.status == "removed" else f"{row.increase * 100:+.1f}pt"
            dormant = (f"{'-' if change.dormant_before is None else human(change.dormant_before)}→"
                       f"{'-' if change.dormant_after is None else human(change.dormant_after)}")
            name = Text(short_names[id(row)], style="bold red" if row.worse else "")
            if row.worse and not with_worse:
                name.append(" ▲", style="bold red")
            cells = [
                name,
                Text(change.status, style="dim" if change.status == "matched" else "yellow"),
                percent(change.dead_ratio_before),
                percent(change.dead_ratio_after),
                Text(delta, style="red" if row.increase > 0 else ("green" if row.increase < 0 else "dim")),
                _count(len(change.newly_dead), "red"),
                _count(len(change.revived), "green"),
                dormant,
            ]
            if with_worse:
                cells.append(Text("worse", style="bold red") if row.worse else Text(""))
            table.add_row(*cells)
        return table

    table = fitted(build, console)
    console.print(table)
    c = comparison
    console.print(Text(f"units: {human(c.newly_dead_units)} newly dead (died), {human(c.revived_units)} "
                       f"revived, {human(c.still_dead_units)} still dead; sites: "
                       f"{len(c.added_sites)} added, {len(c.removed_sites)} removed, "
                       f"{len(c.resized_sites)} resized"))
    worse = [row.change.name for row in rows if row.worse]
    if worse:
        shown = ", ".join(worse[:5]) + (f", ... {len(worse) - 5} more" if len(worse) > 5 else "")
        console.print(Text.assemble(("worse: ", "bold red"),
                                    f"{len(worse)} site(s) whose dead ratio rose by more than "
                                    f"{tolerance:g}: {shown}"))
    else:
        console.print(Text.assemble(("no site got worse", "bold green"),
                                    f" (dead-ratio tolerance {tolerance:g})"))


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
