"""Helpers shared by the output formats: ranking sites, human-readable numbers, safe text."""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any, Sequence, TypeVar

from reludoctor.errors import printable
from reludoctor.report.gates import preview  # noqa: F401 - shared: unit lists in every format
from reludoctor.report.model import Report, SiteStats

# Characters XML 1.0 cannot hold even escaped (most C0 controls, lone surrogates, U+FFFE/F).
_NOT_XML = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
# The same minus the controls ``printable`` writes visibly (so Markdown shows them as \x1b).
_NOT_XML_NOR_CONTROL = re.compile("[\ud800-\udfff\ufffe\uffff]")
_SPACES = re.compile("[ \t\n\r\f\v]+")
# What could change the meaning of Markdown text (emphasis, links, HTML, tables, code).
_MARKDOWN_SPECIAL = re.compile(r"([\\`*_\[\]<>|~&#!])")

T = TypeVar("T")
SEVERITIES = ("error", "warning", "info")
SEVERITY_RANK = {"info": 0, "warning": 1, "error": 2}


@dataclass(frozen=True)
class RenderOptions:
    """Options every renderer accepts; each format uses the ones that apply to it.

    top: the N worst sites in the site table (terminal and Markdown); None: every site
    (terminal), the 10 worst (Markdown). width: columns of the terminal table rendered as text.
    """

    top: int | None = None
    width: int = 100


def human(n: int | float) -> str:
    """12 -> '12', 1234 -> '1.23k', 12345 -> '12.3k', 1200000 -> '1.2M' (3 significant digits)."""
    value = float(n)
    sign = "-" if value < 0 else ""
    value = abs(value)
    if value < 999.5:
        return f"{sign}{value:.0f}" if value.is_integer() else f"{sign}{value:.3g}"
    for suffix in "kMGT":
        value /= 1000
        if value < 999.5 or suffix == "T":
            text = f"{value:.2f}" if value < 9.995 else f"{value:.1f}" if value < 99.95 else f"{value:.0f}"
            if "." in text:
                text = text.rstrip("0").rstrip(".")
            return f"{sign}{text}{suffix}"
    raise AssertionError("unreachable")


def percent(ratio: float | None) -> str:
    if ratio is None or ratio != ratio:
        return "-"
    return f"{ratio:.1%}"


def rank_worst(sites: tuple[SiteStats, ...] | list[SiteStats]) -> list[int]:
    """Indices of ``sites``, worst first: dead ratio, then dead units, then near-dead and dormant
    units, then execution order (stable, deterministic)."""
    return sorted(range(len(sites)), key=lambda i: (
        -sites[i].dead_ratio, -len(sites[i].dead_units), -len(sites[i].near_dead_units),
        -len(sites[i].dormant_units), i))


def top_sites(report: Report, top: int | None) -> tuple[list[int], int]:
    """(indices of the sites to show, in execution order; how many are hidden)."""
    indices = list(range(len(report.sites)))
    if top is None or top >= len(indices):
        return indices, 0
    kept = sorted(rank_worst(report.sites)[:top])
    return kept, len(indices) - len(kept)


def fold(text: str) -> str:
    """Runs of spaces, tabs and line breaks -> one space, stripped (other controls are left for
    ``printable``)."""
    return _SPACES.sub(" ", text).strip(" ")


def xml_safe_keep(text: object) -> str:
    """Like ``xml_safe`` but leaves control characters for ``printable`` to show."""
    return _NOT_XML_NOR_CONTROL.sub("\ufffd", str(text))


def xml_safe(text: object) -> str:
    """Text XML 1.0 can hold: characters it forbids become U+FFFD."""
    return _NOT_XML.sub("\ufffd", str(text))


_PLAIN = frozenset((int, float, bool, type(None)))


def printable_copy(value: T) -> T:
    """``value`` with every string in it made printable (``errors.printable``: control characters
    as visible ``\\x1b`` text), walking dataclasses, tuples, lists and dicts: what a terminal
    renderer shows of a report whose names come from a model file or a saved report."""
    if isinstance(value, str):
        return printable(value)  # type: ignore[return-value]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        changes = {}
        for spec in dataclasses.fields(value):
            if not spec.init:
                continue
            old = getattr(value, spec.name)
            new = printable_copy(old)
            if new is not old:
                changes[spec.name] = new
        return dataclasses.replace(value, **changes) if changes else value
    if isinstance(value, (tuple, list)):
        if all(type(v) in _PLAIN for v in value):  # per-unit numbers: the bulk of a report
            return value
        items = [printable_copy(v) for v in value]
        if all(a is b for a, b in zip(items, value)):
            return value
        return type(value)(items) if not hasattr(value, "_fields") else type(value)(*items)  # type: ignore[return-value]
    if isinstance(value, dict):
        pairs = [(printable_copy(k), printable_copy(v)) for k, v in value.items()]
        if all(a is k and b is v for (a, b), (k, v) in zip(pairs, value.items())):
            return value
        return type(value)(pairs)  # type: ignore[return-value]
    return value


def md_escape(text: object) -> str:
    """Plain text for Markdown (GitHub): specials backslash-escaped, newlines folded, control
    characters written as visible ``\\x1b`` text."""
    cleaned = printable(fold(xml_safe_keep(text)))
    return _MARKDOWN_SPECIAL.sub(r"\\\1", cleaned)


def md_code(text: object, table: bool = False) -> str:
    """An inline code span for names (site names come from model files). In a table cell a pipe
    is written as \\| (GitHub unescapes it inside code spans too). Control characters become
    visible ``\\x1b`` text."""
    cleaned = printable(fold(xml_safe_keep(text)))
    if table:
        cleaned = cleaned.replace("|", "\\|")
    fence = "`"
    while fence in cleaned:
        fence += "`"
    pad = " " if cleaned.startswith("`") or cleaned.endswith("`") else ""
    return f"{fence}{pad}{cleaned}{pad}{fence}"


def model_name(report: Report) -> str:
    return report.model.path or "in-memory model"


def certified_cell(site: SiteStats) -> str:
    """A site's certified-dead count for the site tables; '-' where it could not be bounded."""
    return "-" if site.certified_dead_units is None else human(len(site.certified_dead_units))


def certification_text(report: Report, limit: int = 3) -> str | None:
    """One sentence on certified dead units (``--input-range``), or None without a range."""
    c = report.certification
    if c is None:
        return None
    head = f"certified dead (input range {c.input_range.spec}): "
    if c.status == "unsupported" and c.note:
        return head + f"none checked: {c.note}"
    text = head + (f"{human(c.certified_dead_units)} of {human(c.dead_units)} dead units cannot fire "
                   "for any input in the range; the others only did not fire on this data")
    if c.not_certifiable:
        shown = ", ".join(f"{n.site} ({n.reason})" for n in c.not_certifiable[:limit])
        more = len(c.not_certifiable) - limit
        text += (f"; {len(c.not_certifiable)} site(s) not certifiable: {shown}"
                 + (f", ... {more} more" if more > 0 else ""))
    return text


# Column labels of the definitions table (--definitions), in the report's key order, and each rule.
DEFINITION_LABELS = {"redo_tau_dormant": "ReDo", "dohare_rarely_active": "Dohare", "apoz": "APoZ",
                     "grama": "GraMa"}
_DEFINITION_RULES = {"redo_tau_dormant": "score <= {:g}", "dohare_rarely_active": "rate < {:g}",
                     "apoz": "zeros > {:g}", "grama": "score <= {:g}"}


@dataclass(frozen=True)
class SiteRows:
    """A per-site table of an optional section (definitions, slices, ablation), as every format
    shows it: the first column names the site, the others are right-aligned values."""

    title: str
    headers: list[str]  # the value columns (the first column is ``first``)
    rows: list[tuple[str, list[str]]]  # (site name, cells)
    total: list[str] | None = None  # an "all sites" row
    legend: str = ""
    first: str = "site"


def definition_table(report: Report) -> SiteRows | None:
    """The definitions table, or None when the scan was not asked for definitions."""
    totals = report.definitions
    if totals is None:
        return None
    thresholds: dict[str, float] = {}
    rows = []
    for site in report.sites:
        cells = []
        for key in DEFINITION_LABELS:
            found = getattr(site.definitions, key, None) if site.definitions is not None else None
            if found is not None:
                thresholds.setdefault(key, found.threshold)
            cells.append("-" if found is None else human(len(found.units)))
        rows.append((site.name, cells))
    total = []
    for key in DEFINITION_LABELS:
        count = getattr(totals, key)
        total.append("-" if count is None else f"{human(count.units)} ({percent(count.ratio)})")
    rules = [f"{label}: {_DEFINITION_RULES[key].format(thresholds[key])}"
             for key, label in DEFINITION_LABELS.items() if key in thresholds]
    if totals.grama_reason:
        rules.append(f"GraMa: {totals.grama_reason}")
    return SiteRows("definitions from the literature (units flagged)", list(DEFINITION_LABELS.values()),
                    rows, total, "; ".join(rules))


def slice_table(report: Report) -> SiteRows | None:
    """The slices / dead points table, or None when the scan asked for neither."""
    summary = report.slices
    points = any(site.dead_points is not None for site in report.sites)
    if summary is None and not points:
        return None
    headers: list[str] = []
    rules: list[str] = []
    if summary is not None:
        headers += ["dead all", "special.", "slice dead", "worst slice"]
        rules += ["dead all: dead on every slice (dead)",
                  "special.: alive on some slices only (specialised: keep them, pruning hurts those slices)",
                  "slice dead: lowest-highest dead ratio over the slices",
                  "worst slice: the slice with the highest (first of equals)"]
    if points:
        headers.append("dead points")
        rules.append("dead points: samples on which no unit of the site fires at any position")
    rows = []
    for site in report.sites:
        cells = _slice_cells(site.slices) if summary is not None else []
        if points:
            found = site.dead_points
            cells.append("-" if found is None else f"{human(found.count)} ({percent(found.fraction)})")
        rows.append((site.name, cells))
    total = None
    if summary is not None:
        total = [human(summary.dead_on_every_slice), human(summary.specialised_units),
                 _ratio_range(summary.dead_ratio), _worst(zip(summary.dead_ratio, summary.ids))]
        total += ["-"] if points else []
    title = (f"dead on which data: {len(summary.ids)} slices ({summary.source})" if summary is not None
             else "dead points")
    return SiteRows(title, headers, rows, total, "; ".join(rules))


def _slice_cells(slices: Any) -> list[str]:
    if slices is None:
        return ["-"] * 4
    seen = [(ratio, id_) for ratio, id_ in zip(slices.dead_ratio, slices.ids) if ratio is not None]
    return [human(len(slices.dead_on_every_slice)), human(len(slices.specialised_units)),
            _ratio_range([ratio for ratio, _ in seen]), _worst(seen)]


def _worst(pairs: Any) -> str:
    """The slice with the highest dead ratio, "id (ratio)"; '-' when none has a dead unit."""
    ratio, id_ = max(pairs, default=(0.0, None), key=lambda pair: pair[0])
    return "-" if not ratio else f"{id_} ({percent(ratio)})"


def _ratio_range(ratios: Sequence[float]) -> str:
    if not ratios:
        return "-"
    low, high = min(ratios), max(ratios)
    return percent(low) if low == high else f"{percent(low)}-{percent(high)}"
