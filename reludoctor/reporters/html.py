"""HTML: one self-contained page that works offline.

No scripts, no external fonts, stylesheets, images or links to load: the styles are inline and
the plots are matplotlib SVG embedded in the page (a Content-Security-Policy forbids loading
anything else). Every piece of text is escaped: site names and messages come from model files.

Sections: headline numbers and the gate verdict; dead units per site along depth; the
distribution of activation rates per site; pre-activation histograms of the worst sites;
gradient flow along depth (only when sites carry a ``gradient`` object); the site table; changes
against a baseline; gate failures; findings with suggestions; model and calibration metadata.
"""

from __future__ import annotations

import dataclasses
import html
import re
from collections import defaultdict
from typing import Any

from reludoctor.report.model import Report
from reludoctor.reporters import plots, profile_plots
from reludoctor.reporters.common import (
    SEVERITIES,
    RenderOptions,
    SiteRows,
    certification_text,
    certified_cell,
    definition_table,
    human,
    percent,
    preview,
    rank_worst,
    slice_table,
    xml_safe,
)

FINDINGS_SHOWN = 6


def esc(value: Any) -> str:
    return html.escape(xml_safe(value), quote=True)


CSS = """
:root { --ink:#1d2433; --mute:#5b6475; --line:#e3e6ec; --bg:#f6f7f9; --dead:#d62728;
        --warn:#b26b00; --ok:#1b7f5b; --info:#2563a8; --card:#ffffff; }
* { box-sizing: border-box; }
body { margin:0; font-family: system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue",
       Arial, sans-serif; color:var(--ink); background:var(--bg); line-height:1.45; font-size:14px; }
main { max-width: 1120px; margin: 0 auto; padding: 24px 20px 48px; }
h1 { font-size: 22px; margin: 0 0 2px; }
h1 .model { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-weight: 600;
            word-break: break-all; }
h2 { font-size: 17px; margin: 30px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
.sub { color: var(--mute); margin: 0 0 16px; }
.banner { border-radius: 8px; padding: 10px 14px; margin: 12px 0 18px; font-weight: 600; }
.banner.pass { background: #e6f4ee; color: var(--ok); border: 1px solid #b7e0cd; }
.banner.fail { background: #fdeaea; color: #a61b1b; border: 1px solid #f3b9b9; }
.banner.warn { background: #fff4e0; color: var(--warn); border: 1px solid #f5d49a; }
.cards { display: grid; grid-template-columns: repeat(auto-fill, minmax(165px, 1fr)); gap: 10px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px; }
.card .k { color: var(--mute); font-size: 12px; text-transform: uppercase; letter-spacing: .03em; }
.card .v { font-size: 21px; font-weight: 700; margin-top: 2px; word-break: break-all; }
.card .v.small { font-size: 14px; font-family: ui-monospace, Menlo, Consolas, monospace; }
.card .d { color: var(--mute); font-size: 12px; }
.bad { color: var(--dead); } .good { color: var(--ok); }
figure { margin: 0 0 18px; background: var(--card); border: 1px solid var(--line); border-radius: 8px;
         padding: 8px; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { color: var(--mute); font-size: 12.5px; padding: 4px 6px 2px; }
table { border-collapse: collapse; width: 100%; background: var(--card); font-size: 13px; }
th, td { padding: 5px 8px; border-bottom: 1px solid var(--line); text-align: left; vertical-align: top; }
th { background: #eef0f4; font-weight: 600; position: sticky; top: 0; }
td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.name, code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px;
                overflow-wrap: anywhere; }
td.name { min-width: 18ch; }
td.gate { color: var(--dead); font-weight: 600; white-space: nowrap; }
tr.failing td.name { color: var(--dead); font-weight: 700; }
.bar { background: #edf0f3; border-radius: 3px; height: 9px; width: 90px; overflow: hidden; }
.bar span { display: block; height: 100%; background: var(--dead); }
.scroll { max-height: 520px; overflow: auto; border: 1px solid var(--line); border-radius: 8px; }
.finding { background: var(--card); border: 1px solid var(--line); border-left: 4px solid var(--info);
           border-radius: 6px; padding: 10px 14px; margin: 10px 0; }
.finding.error { border-left-color: var(--dead); } .finding.warning { border-left-color: #e69500; }
.finding h3 { font-size: 14.5px; margin: 0 0 6px; }
.sev { display: inline-block; font-size: 11px; font-weight: 700; text-transform: uppercase;
       border-radius: 4px; padding: 1px 6px; margin-right: 6px; color: #fff; background: var(--info); }
.sev.error { background: var(--dead); } .sev.warning { background: #e69500; }
.finding ul { margin: 4px 0 8px; padding-left: 20px; }
.fix { background: #eef7f3; border-radius: 5px; padding: 7px 10px; color: #11543c; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; background: var(--card);
          border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px; margin: 0 0 12px; }
dl.meta dt { color: var(--mute); } dl.meta dd { margin: 0; word-break: break-all; }
details summary { cursor: pointer; color: var(--info); }
footer { color: var(--mute); font-size: 12px; margin-top: 36px; }
"""


def render(report: Report, options: RenderOptions | None = None) -> str:
    figures = _figures(report)
    model = report.model.path or "in-memory model"
    parts = [
        *page_start(f"reludoctor: {model}"),
        f'<h1>reludoctor report: <span class="model">{esc(model)}</span></h1>',
        f'<p class="sub">{esc(report.model.format)} model, observed via {esc(report.model.method)}; '
        f"calibrated on {esc(report.calibration.source)} ({esc(human(report.calibration.samples))} "
        f"samples) on {esc(report.device)}</p>",
    ]
    parts += _banners(report)
    parts += _cards(report)
    parts.append('<h2 id="plots">Along depth</h2>')
    for figure_id, caption, svg in figures:
        parts.append(figure(figure_id, caption, svg))
    parts += _site_table(report)
    parts += _definitions(report)
    parts += _slices(report)
    parts += _ablation(report)
    if report.baseline is not None:
        parts += _baseline(report)
    if report.gates is not None and report.gates.failures:
        parts += _gates(report)
    parts += _findings(report)
    parts += _metadata(report)
    parts.append(f"<footer>reludoctor {esc(report.tool.get('version', ''))} · report schema_version "
                 f"{esc(report.schema_version)} · self-contained page, no scripts</footer>")
    parts += ["</main>", "</body>", "</html>"]
    return "\n".join(parts) + "\n"


def page_start(title: str) -> list[str]:
    """The page up to ``<main>``: the styles, and a policy that loads nothing from anywhere."""
    return [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">",
        '<meta name="generator" content="reludoctor">',
        f"<title>{esc(title)}</title>",
        f"<style>{CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
    ]


def figure(figure_id: str, caption: str, svg: str) -> str:
    """A plot (already ``scoped``) with its caption."""
    return f'<figure id="{figure_id}">{svg}<figcaption>{esc(caption)}</figcaption></figure>'


def _figures(report: Report) -> list[tuple[str, str, str]]:
    made: list[tuple[str, str, str | None]] = [
        ("plot-dead", "Share of each site's units that are dead (red), near-dead (orange, alive "
                      "but firing on fewer than "
                      f"{report.thresholds.near_dead:g} of positions) and tau-dormant (yellow, alive), "
                      "in execution order.", plots.dead_ratio(report) if report.sites else None),
        ("plot-rates", "Distribution of the units' activation rates per site: boxes span the "
                       "quartiles, whiskers the 5th to 95th percentile; dead units sit at 0.",
         plots.activation_rates(report) if report.sites else None),
        ("plot-histograms", "Pre-activation values of the worst sites on symmetric-log bins "
                            "(edges ±1e-3 … ±1e3); values left of the dashed line produce no output.",
         plots.histograms(report)),
        ("plot-gradient", "Gradient statistics per site along depth, as recorded in the report.",
         plots.gradient_flow(report)),
        ("plot-sparsity", "Language model FFN sites: the share of (token, neuron) pairs where the "
                          "neuron did not fire (sparsity) and of neurons that never fired, per layer.",
         profile_plots.sparsity(report)),
        ("plot-frequency", "Each FFN layer's neuron activation frequencies (fired tokens / tokens), "
                           "sorted high to low: the steeper the head, the fewer hot neurons carry "
                           "the activations.", profile_plots.frequencies(report)),
        ("plot-slices", "Per slice (--slices; rows) and site (columns, in execution order): the "
                        "share of the site's units that never fired on a sample of the slice (the colour "
                        "scale ends at the highest ratio, at least 5%); blank where the site saw no "
                        "sample of it.", plots.slice_heatmap(report)),
    ]
    return [(fid, caption, scoped(svg, fid, caption)) for fid, caption, svg in made if svg]


def scoped(svg: str, prefix: str, label: str) -> str:
    """Element ids made unique per figure; root size made responsive; namespace URLs dropped
    (the HTML parser puts inline SVG and xlink:href in their namespaces by itself)."""
    svg = re.sub(r'\bid="([^"]+)"', lambda m: f'id="{prefix}-{m.group(1)}"', svg)
    svg = re.sub(r'(xlink:href|href)="#([^"]+)"', lambda m: f'{m.group(1)}="#{prefix}-{m.group(2)}"', svg)
    svg = re.sub(r"url\(#([^)]+)\)", lambda m: f"url(#{prefix}-{m.group(1)})", svg)
    svg = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", svg)

    def root(match: re.Match) -> str:
        attributes = re.sub(r'\s(width|height)="[^"]*"', "", match.group(1))
        return f'<svg{attributes} role="img" aria-label="{esc(label)}">'

    return re.sub(r"<svg([^>]*)>", root, svg, count=1)


def _banners(report: Report) -> list[str]:
    out = []
    if report.gates is not None:
        if report.gates.passed:
            out.append(f'<div class="banner pass">✓ Gates passed ({esc(", ".join(report.gates.checks))})</div>')
        else:
            out.append(f'<div class="banner fail">✗ Gates failed: {len(report.gates.failures)} failure(s) '
                       f'({esc(", ".join(report.gates.checks))}); see <a href="#gates">below</a></div>')
    if report.calibration.synthetic:
        out.append('<div class="banner warn">Calibrated on synthetic standard-normal inputs: dead units '
                   "on real data may differ.</div>")
    return out


def _card(key: str, value: str, detail: str = "", cls: str = "") -> str:
    return (f'<div class="card"><div class="k">{esc(key)}</div><div class="v {cls}">{value}</div>'
            + (f'<div class="d">{detail}</div>' if detail else "") + "</div>")


def _cards(report: Report) -> list[str]:
    s = report.summary
    dead_class = "bad" if s.dead_units else "good"
    cards = [
        _card("dead units", f'<span class="{dead_class}">{esc(human(s.dead_units))}</span>',
              f"of {esc(human(s.units))} units ({esc(percent(s.dead_ratio))})"),
        _card("sites", esc(human(s.sites)), f"{len(s.fully_dead_sites)} fully dead"
              + (f", {s.unobserved_sites} not observed" if s.unobserved_sites else "")),
        _card("worst site", esc(s.worst_site or "-"), f"{esc(percent(s.worst_site_dead_ratio))} dead",
              "small"),
        _card("near-dead", esc(human(s.near_dead_units)), f"alive, rate &lt; {esc(f'{report.thresholds.near_dead:g}')}"),
        _card("dormant", esc(human(s.dormant_units)), f"tau {esc(f'{report.thresholds.dormant_tau:g}')}, includes dead"),
        _card("saturated", esc(human(s.saturated_units)), "bounded activations"),
        _card("confidence", esc(f"{s.firing_rate_bound_95:.2%}"),
              f"0 firings in {esc(human(report.calibration.samples))} samples: rate below this (95%)")
        if s.firing_rate_bound_95 < 1 else  # 1-3 samples bound nothing: no 300% card
        _card("confidence", "none", f"{esc(human(report.calibration.samples))} sample(s): too few to "
              "bound a dead unit's firing rate"),
    ]
    c = report.certification
    if c is not None:
        cards.append(_card("certified dead", f'<span class="{"bad" if c.certified_dead_units else "good"}">'
                                             f"{esc(human(c.certified_dead_units))}</span>",
                           f"of {esc(human(c.dead_units))} data-dead units cannot fire for any input in "
                           f"{esc(c.input_range.spec)}" if c.status != "unsupported" else esc(c.note or "")))
    if report.baseline is not None:
        b = report.baseline
        cards.append(_card("vs baseline", f'<span class="{"bad" if b.newly_dead_units else "good"}">'
                                          f"+{esc(human(b.newly_dead_units))}</span>",
                           f"newly dead; {esc(human(b.revived_units))} revived"))
    return ['<div class="cards">', *cards, "</div>"]


def _site_table(report: Report) -> list[str]:
    failing: dict[str, list[str]] = defaultdict(list)
    if report.gates is not None:
        for failure in report.gates.failures:
            if failure.site is not None and failure.gate not in failing[failure.site]:
                failing[failure.site].append(failure.gate)
    worst = set(rank_worst(report.sites)[:3])
    certified = report.certification is not None
    out = ['<h2 id="sites">Sites in execution order</h2>', '<div class="scroll"><table>',
           '<thead><tr><th class="n">#</th><th>site</th><th>op</th><th class="n">units</th>'
           '<th class="n">dead</th>' + ('<th class="n">certified dead</th>' if certified else "")
           + '<th class="n">dead %</th><th></th><th class="n">near-dead</th>'
           '<th class="n">dormant</th><th class="n">saturated</th><th class="n">mean rate</th>'
           "<th>gate</th></tr></thead>", "<tbody>"]
    for index, site in enumerate(report.sites):
        rates = site.activation_rate
        mean_rate = sum(rates) / len(rates) if rates else 0.0
        classes = "failing" if site.name in failing else ""
        if index in worst and site.dead_units and not classes:
            classes = "worst"
        width = f"{max(site.dead_ratio, 0.02 if site.dead_units else 0.0) * 100:.1f}"
        saturated = "-" if site.saturated_units is None else esc(human(len(site.saturated_units)))
        gate = ("✗ " + ", ".join(failing[site.name])) if site.name in failing else ""
        out.append(
            f'<tr class="{classes}"><td class="n">{index}</td><td class="name">{esc(site.name)}</td>'
            f"<td>{esc(site.op)}</td><td class=\"n\">{esc(human(site.units))}</td>"
            f'<td class="n">{esc(human(len(site.dead_units)))}</td>'
            + (f'<td class="n">{esc(certified_cell(site))}</td>' if certified else "")
            + f'<td class="n">{esc(percent(site.dead_ratio))}</td>'
            f'<td><div class="bar"><span style="width:{width}%"></span></div></td>'
            f'<td class="n">{esc(human(len(site.near_dead_units)))}</td>'
            f'<td class="n">{esc(human(len(site.dormant_units)))}</td><td class="n">{saturated}</td>'
            f'<td class="n">{esc(percent(mean_rate))}</td><td class="gate">{esc(gate)}</td></tr>')
    out += ["</tbody></table></div>"]
    certification = certification_text(report, limit=len(report.sites))
    if certification is not None:
        out.append(f"<p>{esc(certification[0].upper() + certification[1:])}.</p>")
    if report.unobserved_sites:
        out.append("<p>Not observed: " + ", ".join(
            f"<code>{esc(u.name)}</code> ({esc(u.reason)})" for u in report.unobserved_sites) + "</p>")
    return out


def _site_rows(found: SiteRows, anchor: str | None = None) -> list[str]:
    """A per-site table of an optional section (``common.SiteRows``), under its title when
    ``anchor`` is given, then its legend."""
    out = [] if anchor is None else [f'<h2 id="{anchor}">{esc(found.title[0].upper() + found.title[1:])}</h2>']
    out += ['<div class="scroll"><table>', f"<thead><tr><th>{esc(found.first)}</th>"
            + "".join(f'<th class="n">{esc(h)}</th>' for h in found.headers) + "</tr></thead>", "<tbody>"]
    for name, cells in found.rows:
        out.append(f'<tr><td class="name">{esc(name)}</td>'
                   + "".join(f'<td class="n">{esc(c)}</td>' for c in cells) + "</tr>")
    if found.total is not None:
        out.append("<tr><td><b>all sites</b></td>" + "".join(f'<td class="n">{esc(c)}</td>' for c in found.total)
                   + "</tr>")
    out.append("</tbody></table></div>")
    if found.legend:
        out.append(f"<p>{esc(found.legend)}</p>")
    return out


def _definitions(report: Report) -> list[str]:
    """--definitions: flagged units per site under each definition from the literature."""
    found = definition_table(report)
    return [] if found is None else _site_rows(found, "definitions")


def _slices(report: Report) -> list[str]:
    """--slices / --dead-points: per site, liveness over the slices and the dead points."""
    found = slice_table(report)
    return [] if found is None else _site_rows(found, "slices")


def _ablation(report: Report) -> list[str]:
    """--ablate: the measured cost of zeroing each site's dormant and near-dead units."""
    from reludoctor.reporters.ablation_view import ablation_view

    view = ablation_view(report)
    if view is None:
        return []
    out = ['<h2 id="ablation">Measured ablation</h2>', f"<p>{esc(view.headline)}</p>"]
    for table in view.tables:
        out += _site_rows(table)
    if view.legend:
        out.append(f"<p>{esc(view.legend)}</p>")
    return out


def _baseline(report: Report) -> list[str]:
    b = report.baseline
    assert b is not None
    out = ['<h2 id="baseline">Against the baseline</h2>',
           f"<p>Baseline <code>{esc(b.source)}</code>: <strong>{esc(human(b.newly_dead_units))} newly "
           f"dead</strong>, {esc(human(b.revived_units))} revived, {esc(human(b.still_dead_units))} "
           "still dead units.</p>"]
    for label, names in (("Added", b.added_sites), ("Removed", b.removed_sites), ("Resized", b.resized_sites)):
        if names:
            out.append(f"<p>{label} sites: " + ", ".join(f"<code>{esc(n)}</code>" for n in names) + "</p>")
    out += ['<div class="scroll"><table><thead><tr><th>site</th><th>status</th><th class="n">dead % before</th>'
            '<th class="n">dead % now</th><th>newly dead</th><th>revived</th><th class="n">still dead</th>'
            "</tr></thead><tbody>"]
    for change in b.sites:
        cls = "failing" if change.newly_dead else ""
        out.append(f'<tr class="{cls}"><td class="name">{esc(change.name)}</td><td>{esc(change.status)}</td>'
                   f'<td class="n">{esc(percent(change.dead_ratio_before))}</td>'
                   f'<td class="n">{esc(percent(change.dead_ratio_after))}</td>'
                   f"<td>{esc(preview(change.newly_dead, 12)) or '-'}</td>"
                   f"<td>{esc(preview(change.revived, 12)) or '-'}</td>"
                   f'<td class="n">{len(change.still_dead)}</td></tr>')
    out.append("</tbody></table></div>")
    return out


def _gates(report: Report) -> list[str]:
    gates = report.gates
    assert gates is not None
    out = ['<h2 id="gates">Gate failures</h2>', f"<p>Checked: {esc(', '.join(gates.checks))}</p>", "<ul>"]
    for failure in gates.failures:
        where = f"<code>{esc(failure.site)}</code>" if failure.site is not None else "scan"
        out.append(f"<li><strong>{esc(failure.gate)}</strong> {where}: {esc(failure.message)}</li>")
    out.append("</ul>")
    return out


def _findings(report: Report) -> list[str]:
    out = ['<h2 id="findings">Findings</h2>']
    if not report.findings:
        return out + ["<p>No findings.</p>"]
    by_rule: dict[tuple[str, str], list] = defaultdict(list)
    for finding in report.findings:
        by_rule[(finding.severity, finding.rule)].append(finding)
    for severity in SEVERITIES:
        for (level, rule), findings in by_rule.items():
            if level != severity:
                continue
            count = f" ({len(findings)} sites)" if len(findings) > 1 else ""
            sev = esc(severity)
            out.append(f'<div class="finding {sev}"><h3><span class="sev {sev}">{sev}</span>'
                       f"<code>{esc(rule)}</code>{esc(count)}</h3><ul>")
            for finding in findings[:FINDINGS_SHOWN]:
                out.append(f"<li>{esc(finding.message)}</li>")
            out.append("</ul>")
            if len(findings) > FINDINGS_SHOWN:
                out.append(f"<details><summary>{len(findings) - FINDINGS_SHOWN} more</summary><ul>")
                out += [f"<li>{esc(f.message)}</li>" for f in findings[FINDINGS_SHOWN:]]
                out.append("</ul></details>")
            suggestions = list(dict.fromkeys(f.suggestion for f in findings))
            out.append(f'<div class="fix"><strong>Fix:</strong> {esc(suggestions[0])}</div>')
            if len(suggestions) > 1:
                out.append("<details><summary>suggestions for each site</summary><ul>")
                out += [f"<li>{esc(text)}</li>" for text in suggestions[1:]]
                out.append("</ul></details>")
            out.append("</div>")
    return out


def _dl(rows: list[tuple[str, Any]]) -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in rows)
    return f'<dl class="meta">{items}</dl>'


def _gradient_info(report: Report) -> list[tuple[str, Any]]:
    """How gradient statistics were computed, when the report says (read defensively: the
    gradient fields are optional)."""
    info = getattr(report, "gradients", None)
    if info is None:
        return []
    if dataclasses.is_dataclass(info):
        info = dataclasses.asdict(info)
    if not isinstance(info, dict):
        return []
    if not info.get("computed"):
        return [("gradient statistics", f"not computed: {info.get('reason') or 'not requested'}")]
    rows = [("gradient statistics", "computed")]
    for key, label in (("loss", "loss"), ("method", "gradient method"), ("samples", "gradient samples")):
        if info.get(key) not in (None, ""):
            rows.append((label, info[key]))
    return rows


def _metadata(report: Report) -> list[str]:
    m, c, t = report.model, report.calibration, report.thresholds
    out = ['<h2 id="metadata">Model and calibration</h2>',
           _dl([("model", m.path or "in-memory model"), ("format", m.format), ("sha256", m.sha256 or "-"),
                ("observed via", m.method), ("inputs", ", ".join(m.inputs) or "-"),
                ("device", report.device)]),
           _dl([("calibration data", c.source), ("samples", f"{c.samples:,}"),
                ("synthetic", "yes" if c.synthetic else "no"), ("batch size", c.batch_size),
                ("near-dead threshold", f"{t.near_dead:g}"), ("dormant tau", f"{t.dormant_tau:g}"),
                ("unit axis", "default" if t.unit_axis is None else t.unit_axis)])]
    gradients = _gradient_info(report)
    if gradients:
        out.append(_dl(gradients))
    if report.warnings:
        out.append("<p><strong>Warnings</strong></p><ul>" + "".join(
            f"<li>{esc(w)}</li>" for w in report.warnings) + "</ul>")
    return out
