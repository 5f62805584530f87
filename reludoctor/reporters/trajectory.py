"""``reludoctor trajectory``'s outputs: the terminal table (site x checkpoint dead ratios, then
units died and revived) and the self-contained HTML page (the HTML report's page, styles and
figure helpers, with the trajectory plots). The JSON is ``Trajectory.to_json()``.
"""

from __future__ import annotations

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from reludoctor.report.trajectory import SiteTrajectory, Trajectory
from reludoctor.reporters.common import human, percent, printable_copy
from reludoctor.reporters.html import esc, figure, page_start, scoped
from reludoctor.reporters.terminal import NAME_MIN, fitted, shorten_names

MAX_COLUMNS = 10  # checkpoint columns in the terminal; the JSON and HTML have every one


def shown_checkpoints(count: int, limit: int = MAX_COLUMNS) -> list[int]:
    """Indices of the checkpoint columns: all, or ``limit`` spread evenly, first and last kept."""
    if count <= limit:
        return list(range(count))
    return sorted({round(k * (count - 1) / (limit - 1)) for k in range(limit)})


def _ratio(site: SiteTrajectory, index: int, before: float | None) -> Text:
    value = site.dead_ratio[index]
    if value is None:
        return Text("-", style="dim")
    style = "red" if before is not None and value > before else "green" if before is not None and value < before else ""
    return Text(percent(value), style=style)


def _events(site: SiteTrajectory, trajectory: Trajectory) -> str:
    return ", ".join(f"{e.change} at {trajectory.checkpoints[e.checkpoint].label}" for e in site.events)


def print_table(trajectory: Trajectory, console: Console) -> None:
    """The site x checkpoint table (a ratio red where it rose, green where it fell since the
    column before), the checkpoints' legend and the totals."""
    trajectory = printable_copy(trajectory)  # names come from model files
    columns = shown_checkpoints(len(trajectory.checkpoints))
    sites = trajectory.sites
    changed = any(s.events for s in sites)

    def build(name_width: int, wide: bool) -> Table:
        with_events = wide and changed  # the column goes first when the table is too wide
        table = Table(title="dead ratio per site over checkpoints", title_justify="left",
                      box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
        table.add_column("site", no_wrap=True, overflow="ellipsis", min_width=NAME_MIN,
                         max_width=max(NAME_MIN, name_width))
        table.add_column("units", justify="right", no_wrap=True)
        for index in columns:
            table.add_column(f"#{index + 1}", justify="right", no_wrap=True)
        table.add_column("died", justify="right", no_wrap=True)
        table.add_column("revived", justify="right", no_wrap=True)
        if with_events:
            table.add_column("changes", no_wrap=True)
        names = shorten_names([s.name for s in sites], [max(NAME_MIN, name_width)] * len(sites))
        for site, name in zip(sites, names):
            cells = [Text(name), human(site.units)]
            before = None
            for index in columns:
                cells.append(_ratio(site, index, before))
                before = site.dead_ratio[index]
            cells += [Text(human(site.died), style="red" if site.died else "dim"),
                      Text(human(len(site.revived)), style="green" if site.revived else "dim")]
            if with_events:
                cells.append(Text(_events(site, trajectory), style="yellow"))
            table.add_row(*cells)
        return table

    console.print(fitted(build, console))
    for line in legend(trajectory, columns):
        console.print(Text(line), highlight=False)


def legend(trajectory: Trajectory, columns: list[int]) -> list[str]:
    """The checkpoints behind the column numbers, the totals and the sites that changed shape."""
    lines = ["checkpoints: " + ", ".join(f"#{i + 1} {trajectory.checkpoints[i].label}" for i in columns)]
    if len(columns) < len(trajectory.checkpoints):
        lines[0] += f" ({len(columns)} of {len(trajectory.checkpoints)} shown; --json and --html have all)"
    sites = trajectory.sites
    dead = sum(s.dead_at_end for s in sites)
    units = sum(s.units for s in sites)
    lines.append(f"units: {human(dead)} of {human(units)} dead at the last checkpoint; "
                 f"{human(sum(s.died for s in sites))} died during the run (alive at the first "
                 f"checkpoint, dead since); {human(sum(len(s.revived) for s in sites))} revived")
    changed = [s for s in sites if s.events]
    if changed:
        lines.append("sites that changed (units compared from the change on): "
                     + "; ".join(f"{s.name} {_events(s, trajectory)}" for s in changed))
    return lines


def render_html(trajectory: Trajectory) -> str:
    """One self-contained page: the dead-ratio curves, the unit maps of the worst sites, the
    site table and the checkpoints."""
    from reludoctor.reporters import trajectory_plots  # matplotlib: only when a page is asked for

    first, last = trajectory.checkpoints[0], trajectory.checkpoints[-1]
    data = trajectory.data
    parts = [*page_start(f"reludoctor trajectory: {first.label} … {last.label}"),
             f'<h1>reludoctor trajectory: <span class="model">{esc(first.label)} … {esc(last.label)}</span></h1>',
             f'<p class="sub">{len(trajectory.checkpoints)} checkpoints, each scanned on {esc(data.source)} '
             f"({esc(human(data.samples))} samples{', synthetic' if data.synthetic else ''})</p>",
             '<h2 id="plots">Over checkpoints</h2>']
    caption = ("Share of each site's units that are dead at each checkpoint"
               + (f" (the {trajectory_plots.MAX_CURVES} sites where most units died)"
                  if len(trajectory.sites) > trajectory_plots.MAX_CURVES else "") + "; gaps: the site is absent.")
    parts.append(figure("plot-curves", caption, scoped(trajectory_plots.curves(trajectory), "plot-curves", caption)))
    heatmap = trajectory_plots.heatmap(trajectory)
    if heatmap is not None:
        caption = ("Each unit of the sites where most units died, per checkpoint: dead (red) or alive "
                   "(green); grey where the site is absent or its unit indices meant other units.")
        parts.append(figure("plot-units", caption, scoped(heatmap, "plot-units", caption)))
    else:
        parts.append("<p>No unit was dead at any checkpoint.</p>")
    parts += _site_table(trajectory)
    rows = "".join(f'<tr><td class="n">{i + 1}</td><td class="name">{esc(c.label)}</td>'
                   f'<td class="name">{esc(c.path or "-")}</td><td class="name">{esc(c.sha256 or "-")}</td></tr>'
                   for i, c in enumerate(trajectory.checkpoints))
    parts += ['<h2 id="checkpoints">Checkpoints</h2>',
              '<table><thead><tr><th class="n">#</th><th>label</th><th>path</th><th>sha256</th></tr></thead>'
              f"<tbody>{rows}</tbody></table>"]
    if trajectory.warnings:
        parts.append("<p><strong>Warnings</strong></p><ul>"
                     + "".join(f"<li>{esc(w)}</li>" for w in trajectory.warnings) + "</ul>")
    parts.append(f"<footer>reludoctor {esc(trajectory.tool.get('version', ''))} · trajectory schema_version "
                 f"{esc(trajectory.schema_version)} · self-contained page, no scripts</footer>")
    parts += ["</main>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def _site_table(trajectory: Trajectory) -> list[str]:
    heads = "".join(f'<th class="n">#{i + 1}</th>' for i in range(len(trajectory.checkpoints)))
    out = ['<h2 id="sites">Sites</h2>', '<div class="scroll"><table>',
           f'<thead><tr><th>site</th><th>op</th><th class="n">units</th>{heads}<th class="n">died</th>'
           '<th class="n">revived</th><th>changes</th></tr></thead>', "<tbody>"]
    for site in trajectory.sites:
        ratios = "".join(f'<td class="n">{esc(percent(r))}</td>' for r in site.dead_ratio)
        out.append(f'<tr><td class="name">{esc(site.name)}</td><td>{esc(site.op)}</td>'
                   f'<td class="n">{esc(human(site.units))}</td>{ratios}<td class="n">{esc(human(site.died))}</td>'
                   f'<td class="n">{esc(human(len(site.revived)))}</td><td>{esc(_events(site, trajectory))}</td></tr>')
    out.append("</tbody></table></div>")
    return out
