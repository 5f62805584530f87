"""The HTML report's plots, drawn with matplotlib (imported here only) as standalone SVG text.

No pyplot and no global backend switch: each figure is a ``matplotlib.figure.Figure`` on an Agg
canvas, styled inside ``rc_context`` (so a notebook's settings are untouched), saved as SVG with
text as paths (no fonts needed), a fixed hash salt (deterministic ids), no metadata, and mathtext
escaped (``$`` in a site name is just a character, not mathtext).
"""

from __future__ import annotations

import dataclasses
import io
import math
import re
from typing import Any

from reludoctor.report.model import Report, SiteStats
from reludoctor.reporters.common import rank_worst

DEAD, NEAR, DORMANT, ALIVE, GREY, BOUND = "#d62728", "#ff9f1c", "#f2d16b", "#2a9d8f", "#b0b0b0", "#7b2cbf"
NAME_CHARS = 28
MAX_LABELLED_SITES = 40
HISTOGRAM_SITES = 4

RC = {
    "svg.hashsalt": "reludoctor",
    "svg.fonttype": "path",
    "font.size": 8.5,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlesize": 9.5,
    "axes.titleweight": "bold",
    "axes.grid": True,
    "grid.alpha": 0.35,
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "figure.dpi": 72,
}


def label(text: str) -> str:
    """Text for matplotlib: a ``$`` would start mathtext (and may fail to parse)."""
    return text.replace("$", r"\$")


def short(name: str, limit: int = NAME_CHARS) -> str:
    """A site name for an axis label or title: one line, at most ``limit`` characters."""
    name = " ".join(name.split())
    return label(name if len(name) <= limit else name[: limit - 1] + "…")


def _figure(width: float, height: float):  # noqa: ANN202
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _svg(figure: Any) -> str:
    buffer = io.StringIO()
    figure.savefig(buffer, format="svg", metadata={"Date": None, "Creator": None, "Format": None,
                                                   "Type": None})
    text = buffer.getvalue()
    text = re.sub(r"<\?xml[^>]*\?>\s*", "", text)
    text = re.sub(r"<!DOCTYPE[^>]*>\s*", "", text)
    text = re.sub(r"<metadata>.*?</metadata>\s*", "", text, flags=re.S)
    return text.strip()


def _site_axis(ax: Any, sites: tuple[SiteStats, ...] | list[SiteStats]) -> None:
    n = len(sites)
    ax.set_xlim(-0.7, n - 0.3)
    if n <= MAX_LABELLED_SITES:
        ax.set_xticks(range(n), [short(s.name) for s in sites], rotation=55, ha="right",
                      rotation_mode="anchor", fontsize=7.5)
    else:
        step = max(1, math.ceil(n / 25))
        ax.set_xticks(range(0, n, step))
        ax.set_xlabel("site (execution order)")


def dead_ratio(report: Report) -> str:
    """Stacked bars along depth: dead, near-dead (alive) and dormant (alive) shares per site."""
    sites = report.sites
    with _rc():
        figure = _figure(10, 3.6 if len(sites) <= MAX_LABELLED_SITES else 3.0)
        ax = figure.add_subplot()
        x = range(len(sites))
        dead = [s.dead_ratio for s in sites]
        near = [len(s.near_dead_units) / s.units if s.units else 0.0 for s in sites]
        dormant = [len(set(s.dormant_units) - set(s.dead_units) - set(s.near_dead_units)) / s.units
                   if s.units else 0.0 for s in sites]
        ax.bar(x, dead, color=DEAD, label="dead", width=0.8)
        ax.bar(x, near, bottom=dead, color=NEAR, label="near-dead", width=0.8)
        ax.bar(x, dormant, bottom=[a + b for a, b in zip(dead, near)], color=DORMANT,
               label="dormant (alive)", width=0.8)
        tallest = max((a + b + c for a, b, c in zip(dead, near, dormant)), default=0.0)
        ax.set_ylim(0, min(1.02, max(0.1, tallest * 1.25)))  # small shares stay readable
        ax.yaxis.set_major_formatter(_percent_formatter())
        ax.set_ylabel("share of the site's units")
        ax.set_title("Dead units per site along depth")
        ax.grid(axis="x", visible=False)
        _site_axis(ax, sites)
        ax.legend(loc="upper left", ncols=3, fontsize=7.5)
        return _svg(figure)


def slice_heatmap(report: Report) -> str | None:
    """--slices: the dead ratio of every (slice, site) as a heatmap (slices down, sites across);
    blank where the site saw no sample of the slice. None without slices."""
    if report.slices is None:
        return None
    sites = report.sites
    ids = report.slices.ids
    grid = [[math.nan if s.slices is None or s.slices.dead_ratio[row] is None else s.slices.dead_ratio[row]
             for s in sites] for row in range(len(ids))]
    with _rc():
        figure = _figure(10, min(8.0, 1.8 + 0.22 * len(ids)))
        ax = figure.add_subplot()
        known = [v for row in grid for v in row if not math.isnan(v)]
        top = min(1.0, max(0.05, max(known, default=0.0)))  # small ratios stay readable
        image = ax.imshow(grid, aspect="auto", cmap="Reds", vmin=0.0, vmax=top, interpolation="nearest")
        ax.grid(visible=False)
        _site_axis(ax, sites)
        step = max(1, math.ceil(len(ids) / 30))
        ax.set_yticks(range(0, len(ids), step), [label(str(ids[i])) for i in range(0, len(ids), step)],
                      fontsize=7.5)
        ax.set_ylabel("slice id")
        ax.set_title("Dead ratio per slice and site")
        figure.colorbar(image, ax=ax, format=_percent_formatter(), fraction=0.03, pad=0.01)
        return _svg(figure)


def activation_rates(report: Report) -> str:
    """Per site, the distribution of its units' activation rates (box: quartiles, whiskers:
    5th-95th percentile, dots: the rest)."""
    sites = report.sites
    with _rc():
        figure = _figure(10, 3.6 if len(sites) <= MAX_LABELLED_SITES else 3.0)
        ax = figure.add_subplot()
        data = [list(s.activation_rate) or [0.0] for s in sites]
        boxes = ax.boxplot(data, positions=list(range(len(sites))), widths=0.6, whis=(5, 95),
                           patch_artist=True, manage_ticks=False,
                           flierprops={"marker": ".", "markersize": 2.5, "alpha": 0.5,
                                       "markeredgecolor": "#555555"},
                           medianprops={"color": "#1d3557", "linewidth": 1.2})
        for patch, site in zip(boxes["boxes"], sites):
            patch.set_facecolor(DEAD if site.units and site.dead_ratio == 1.0 else
                                NEAR if site.dead_units else ALIVE)
            patch.set_alpha(0.55)
        ax.set_ylim(-0.03, 1.03)
        ax.yaxis.set_major_formatter(_percent_formatter())
        ax.set_ylabel("activation rate per unit")
        ax.set_title("How often units fire, per site (rate = positions > 0 / positions)")
        ax.grid(axis="x", visible=False)
        _site_axis(ax, sites)
        return _svg(figure)


def histogram_sites(report: Report) -> list[SiteStats]:
    """The worst sites (by dead ratio) that have a usable histogram, at most HISTOGRAM_SITES."""
    chosen = []
    for index in rank_worst(report.sites):
        site = report.sites[index]
        h = site.histogram
        if len(h.edges) >= 1 and len(h.counts) == len(h.edges) + 1 and sum(h.counts) > 0:
            chosen.append(site)
        if len(chosen) == HISTOGRAM_SITES:
            break
    return chosen


def _edge_label(value: float) -> str:
    return f"{value:g}"


def _labelled_edge(edge: float) -> bool:
    """0 and the even decades (0.01, 1, 100, ...): enough ticks without crowding."""
    if edge == 0:
        return True
    exponent = math.log10(abs(edge))
    return abs(exponent - round(exponent)) < 1e-9 and round(exponent) % 2 == 0


def histograms(report: Report) -> str | None:
    """Pre-activation histograms of the worst sites, one bar per bin (the bins are symmetric-log,
    so equal widths read as a symlog axis); grey: at or below the lower bound (no output)."""
    sites = histogram_sites(report)
    if not sites:
        return None
    columns = min(2, len(sites))
    rows = math.ceil(len(sites) / columns)
    with _rc():
        figure = _figure(10, 2.5 * rows + 0.2)
        axes = figure.subplots(rows, columns, squeeze=False)
        for ax in axes.flat[len(sites):]:
            ax.set_visible(False)
        for ax, site in zip(axes.flat, sites):
            edges = list(site.histogram.edges)
            counts = list(site.histogram.counts)
            colours = []
            for k in range(len(counts)):
                upper = edges[k] if k < len(edges) else math.inf
                lower = edges[k - 1] if k > 0 else -math.inf
                if upper <= site.lower_bound:
                    colours.append(GREY)
                elif site.upper_bound is not None and lower >= site.upper_bound:
                    colours.append(BOUND)
                else:
                    colours.append(ALIVE)
            ax.bar(range(len(counts)), counts, width=1.0, color=colours, edgecolor="white",
                   linewidth=0.3)
            ticks, labels = [], []
            for j, edge in enumerate(edges):
                if _labelled_edge(edge):
                    ticks.append(j + 0.5)
                    labels.append(_edge_label(edge))
            ax.set_xticks(ticks, labels, fontsize=7)
            threshold = _position(edges, site.lower_bound)
            if threshold is not None:
                ax.axvline(threshold, color=DEAD, linewidth=1, linestyle="--")
            ax.set_title(f"{short(site.name, 40)}: {site.dead_ratio:.1%} dead", loc="left")
            ax.set_ylabel("values")
            ax.grid(axis="x", visible=False)
        figure.suptitle("Pre-activation histograms of the worst sites (dashed: the activation's "
                        "threshold; grey: no output)", fontsize=9, fontweight="bold")
        return _svg(figure)


def _position(edges: list[float], value: float) -> float | None:
    """x of ``value`` on the bin-index axis (edge j sits at j + 0.5)."""
    for j, edge in enumerate(edges):
        if edge == value:
            return j + 0.5
        if edge > value:
            if j == 0:
                return None
            previous = edges[j - 1]
            return j - 0.5 + (value - previous) / (edge - previous)
    return None


def gradient_values(site: SiteStats) -> dict[str, float]:
    """Numeric scalars of a site's ``gradient`` object (dataclass or dict), when it has one."""
    gradient = getattr(site, "gradient", None)
    if gradient is None:
        return {}
    if dataclasses.is_dataclass(gradient):
        gradient = dataclasses.asdict(gradient)
    if not isinstance(gradient, dict):
        return {}
    values = {}
    for key, value in gradient.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            values[str(key)] = float(value)
    return values


FRACTION_WORDS = ("zero", "pass", "frac")  # shares of elements: a 0-100% axis
MAGNITUDE_WORDS = ("rms", "grad", "atten")  # gradient sizes and their ratios: a log axis


def _is_fraction(key: str, values: list[float]) -> bool:
    name = key.lower()
    return all(0 <= v <= 1 for v in values) and any(w in name for w in FRACTION_WORDS)


def gradient_flow(report: Report) -> str | None:
    """Gradient statistics along depth, when sites carry a ``gradient`` object: magnitudes
    (RMS, gradient norms, attenuation) on a log axis, fractions (zero gradient by the mask or
    downstream, pass-through) on a 0-100% axis. Other values (weight norms) are not drawn."""
    per_site = [gradient_values(site) for site in report.sites]
    if not any(per_site):
        return None
    keys: list[str] = []
    for values in per_site:
        keys.extend(k for k in values if k not in keys)
    series = {k: [v.get(k, math.nan) for v in per_site] for k in keys}
    fractions = [k for k in keys if _is_fraction(k, [x for x in series[k] if not math.isnan(x)])]
    magnitudes = [k for k in keys if k not in fractions and any(w in k.lower() for w in MAGNITUDE_WORDS)
                  and any(x > 0 for x in series[k] if not math.isnan(x))]
    panels = [p for p in (magnitudes, fractions) if p]
    if not panels:
        return None
    with _rc():
        figure = _figure(10, 2.9 * len(panels) + 0.6)
        axes = figure.subplots(len(panels), 1, squeeze=False, sharex=True)
        x = list(range(len(report.sites)))
        for ax, group in zip(axes[:, 0], panels):
            for key in group[:8]:
                ys = [v if (group is fractions or v > 0) else math.nan for v in series[key]]
                ax.plot(x, ys, marker="o", markersize=3, linewidth=1.3, label=label(key))
            if group is magnitudes:
                ax.set_yscale("log")
                ax.set_ylabel("magnitude (log)")
            else:
                ax.set_ylim(-0.03, 1.03)
                ax.yaxis.set_major_formatter(_percent_formatter())
                ax.set_ylabel("fraction")
            ax.legend(loc="best", fontsize=7)
        axes[0, 0].set_title("Gradient flow along depth")
        _site_axis(axes[-1, 0], report.sites)
        return _svg(figure)


def _percent_formatter():  # noqa: ANN202
    from matplotlib.ticker import PercentFormatter

    return PercentFormatter(1.0, decimals=0)


def _rc():  # noqa: ANN202
    import matplotlib

    return matplotlib.rc_context(RC)
