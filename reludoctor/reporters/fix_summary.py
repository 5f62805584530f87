"""The FixSummary on the terminal: one rich table of sites, then sizes, verification, notes."""

from __future__ import annotations

from typing import Any

from reludoctor.fix import FixSummary

ACTION_STYLE = {"pruned": "green", "leaky": "yellow", "reinit": "cyan", "skipped": "red",
                "unchanged": "dim"}
WOULD = {"pruned": "would be pruned", "leaky": "would become leaky", "reinit": "would be re-initialised"}


def _units(targets: tuple[int, ...], limit: int = 8) -> str:
    if not targets:
        return ""
    shown = ", ".join(str(t) for t in targets[:limit])
    return shown + (f", ... ({len(targets)})" if len(targets) > limit else "")


def _change(before: int, after: int) -> str:
    if before == after:
        return f"{before:,} (unchanged)"
    percent = 100.0 * (after - before) / before if before else 0.0
    return f"{before:,} -> {after:,} ({percent:+.1f}%)"


def print_summary(summary: FixSummary, console: Any) -> None:
    from rich.markup import escape as markup_escape
    from rich.table import Table

    from reludoctor.errors import printable

    def escape(text: object) -> str:  # markup-escaped, control characters as visible text
        return markup_escape(printable(text))

    title = f"reludoctor fix --{summary.strategy}"
    if summary.alpha is not None:
        title += f" {summary.alpha:g}"
    table = Table(title=title, title_justify="left", show_lines=False)
    for column in ("site", "op", "action", "units", "targets", "layer", "reason"):
        table.add_column(column, overflow="fold")
    for site in summary.sites:
        action = site.action
        shown = WOULD.get(action, action) if summary.dry_run else action
        units = str(site.units) if site.units_after in (None, site.units) \
            else f"{site.units} -> {site.units_after}"
        table.add_row(escape(site.site), escape(site.op), f"[{ACTION_STYLE.get(action, '')}]{escape(shown)}[/]",
                      units, _units(site.targets), escape(site.layer or ""), escape(site.reason or ""))
    console.print(table)
    lines = [f"model: {escape(summary.model.path or summary.model.format)}"]
    if summary.output is not None:
        lines.append(f"written: {escape(summary.output.path or '')} ({summary.output.format})")
    else:
        lines.append("[bold]dry run: nothing written[/]")
    lines.append(f"parameters: {_change(summary.params_before, summary.params_after)}")
    lines.append(f"MACs per sample: {_change(summary.macs_before, summary.macs_after)}")
    v = summary.verification
    if v is not None:
        if v.equal:
            verdict = f"[green]outputs equal[/] within {v.tolerance:g} relative"
        elif v.lossless_expected:
            verdict = "[bold red]outputs differ[/]"
        else:
            verdict = "[yellow]outputs changed (not lossless)[/]"
        lines.append(f"verification on {v.samples} calibration samples: {verdict} "
                     f"(max abs diff {v.max_abs_diff:.3g}, relative {v.max_rel_diff:.3g})")
        if v.argmax_checked:
            agree = v.samples - v.argmax_mismatches
            lines.append(f"argmax (classes) identical for {agree}/{v.samples} samples")
    if summary.rescan is not None:
        at_sites = summary.rescan.get("fixed_sites", {})
        dead = sum(len(units or []) for units in at_sites.values())
        lines.append(f"rescan of the output: {dead} dead units at the {len(at_sites)} changed "
                     f"sites ({summary.rescan.get('dead_units')} in the whole model)")
    for note in summary.notes:
        lines.append(f"note: {escape(note)}")
    for line in lines:
        console.print(line, highlight=False)
