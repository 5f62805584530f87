"""The trajectory page's plots: dead ratio over checkpoints, and unit x checkpoint maps of the
sites where most units died. Drawn with the HTML report's helpers (``plots``: a Figure on Agg,
its rc style, deterministic SVG), so both pages look and serialise alike.

``*_figure`` functions return the matplotlib Figure (call them inside ``plots._rc()``; the
docs' PNG is saved from them); the others return SVG text.
"""

from __future__ import annotations

import math
from typing import Any

from reludoctor.report.trajectory import SiteTrajectory, Trajectory
from reludoctor.reporters.plots import ALIVE, DEAD, GREY, _figure, _percent_formatter, _rc, _svg, short

MAX_CURVES = 12  # more lines than this are unreadable: the worst ones are drawn
HEATMAP_SITES = 4
ALIVE_STATE, DEAD_STATE, UNTRACKED = 0, 1, 2


def worst(trajectory: Trajectory) -> list[SiteTrajectory]:
    """Sites worst first: most units died during the run, then highest final and peak dead
    ratio, then the trajectory's order (stable, deterministic)."""
    def key(item: tuple[int, SiteTrajectory]) -> tuple:
        index, site = item
        ratios = [r for r in site.dead_ratio if r is not None]
        return (-site.died, -(ratios[-1] if ratios else 0.0), -max(ratios, default=0.0), index)

    return [site for _, site in sorted(enumerate(trajectory.sites), key=key)]


def curve_sites(trajectory: Trajectory) -> list[SiteTrajectory]:
    """The sites drawn as lines: all up to MAX_CURVES, else the MAX_CURVES worst (in order)."""
    if len(trajectory.sites) <= MAX_CURVES:
        return list(trajectory.sites)
    chosen = {id(site) for site in worst(trajectory)[:MAX_CURVES]}
    return [site for site in trajectory.sites if id(site) in chosen]


def heatmap_sites(trajectory: Trajectory) -> list[SiteTrajectory]:
    """Up to HEATMAP_SITES worst sites that had a dead unit at some tracked checkpoint."""
    return [s for s in worst(trajectory) if any(at is not None for at in s.first_dead)][:HEATMAP_SITES]


def _checkpoint_axis(ax: Any, trajectory: Trajectory) -> None:
    n = len(trajectory.checkpoints)
    step = max(1, math.ceil(n / 16))
    ticks = list(range(0, n, step))
    ax.set_xticks(ticks, [short(trajectory.checkpoints[i].label, 18) for i in ticks], rotation=35,
                  ha="right", rotation_mode="anchor", fontsize=7.5)
    ax.set_xlim(-0.3, n - 0.7)


def curves_figure(trajectory: Trajectory) -> Any:
    sites = curve_sites(trajectory)
    figure = _figure(10, 3.8)
    ax = figure.add_subplot()
    x = list(range(len(trajectory.checkpoints)))
    for index, site in enumerate(sites):
        y = [math.nan if r is None else r for r in site.dead_ratio]  # absent: a gap in the line
        style = "-" if index < 10 else "--"  # the colour cycle has 10 colours: tell 11 and 12 apart
        ax.plot(x, y, marker="o", markersize=3.5, linewidth=1.4, linestyle=style, label=short(site.name))
    top = max((r for s in sites for r in s.dead_ratio if r is not None), default=0.0)
    ax.set_ylim(-0.01, min(1.02, max(0.1, top * 1.2)))
    ax.yaxis.set_major_formatter(_percent_formatter())
    ax.set_ylabel("dead units of the site")
    hidden = len(trajectory.sites) - len(sites)
    ax.set_title("Dead ratio per site over checkpoints"
                 + (f" (the {len(sites)} worst of {len(trajectory.sites)} sites)" if hidden else ""))
    _checkpoint_axis(ax, trajectory)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7.5)
    return figure


def curves(trajectory: Trajectory) -> str:
    with _rc():
        return _svg(curves_figure(trajectory))


def states(site: SiteTrajectory, checkpoints: int) -> list[list[int]]:
    """Per unit (row), per checkpoint: dead, alive, or untracked (the site absent, or before its
    current track, where unit indices meant other units)."""
    rows = [[UNTRACKED] * checkpoints for _ in range(site.units)]
    for c in range(site.tracked_from, checkpoints):
        dead = site.dead_units[c]
        if dead is None:
            continue
        for row in rows:
            row[c] = ALIVE_STATE
        for unit in dead:
            rows[unit][c] = DEAD_STATE
    return rows


def heatmap_figure(trajectory: Trajectory) -> Any | None:
    sites = heatmap_sites(trajectory)
    if not sites:
        return None
    from matplotlib.colors import ListedColormap

    n = len(trajectory.checkpoints)
    figure = _figure(10, 2.6 * len(sites) + 0.5)
    axes = figure.subplots(len(sites), 1, squeeze=False)
    colours = ListedColormap([ALIVE, DEAD, GREY])
    for ax, site in zip(axes[:, 0], sites):
        grid = states(site, n)
        ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=colours, vmin=0, vmax=2)
        ax.grid(visible=False)
        ax.set_ylabel("unit")
        ax.set_title(f"{short(site.name, 48)}: {site.died} of {site.units} units died, "
                     f"{len(site.revived)} revived", loc="left")
        _checkpoint_axis(ax, trajectory)
        ax.set_xlim(-0.5, n - 0.5)
    figure.suptitle("Units over checkpoints (red: dead, green: alive, grey: not tracked)",
                    fontsize=9, fontweight="bold")
    return figure


def heatmap(trajectory: Trajectory) -> str | None:
    with _rc():
        figure = heatmap_figure(trajectory)
        return _svg(figure) if figure is not None else None
