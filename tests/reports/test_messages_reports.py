"""Issue 11, section 4, in the reporters: the confidence line for very few samples, and long
site names shortened in the middle at 80 columns (the distinguishing end kept)."""

from __future__ import annotations

import re
from dataclasses import replace

from fixed import make_report, make_site

from reludoctor.reporters.common import RenderOptions
from reludoctor.reporters.markdown import render as render_markdown
from reludoctor.reporters.terminal import render, shorten_middle


def _with_samples(report, samples: int):  # noqa: ANN001, ANN202
    return replace(report, calibration=replace(report.calibration, samples=samples),
                   summary=replace(report.summary, firing_rate_bound_95=3.0 / samples))


def _confidence(text: str) -> str:
    return " ".join(line for line in text.splitlines() if "confidence" in line)


def test_confidence_line_never_claims_a_bound_of_100_percent_or_more():
    base = make_report((make_site("stem.relu", 8, dead=(1,)),))
    for samples in (1, 2, 3):
        report = _with_samples(base, samples)
        for text in (render(report, RenderOptions(width=200)), render_markdown(report)):
            line = _confidence(text)
            assert line, text
            assert re.search(r"= *\d+(\.\d+)?%", line) is None, line  # no "3/1 = 300.00%"
            assert f"{300 / samples:.2f}%" not in line
            assert f"3/{samples} =" not in line
            assert "cannot bound" in line or "too few" in line
    one = _confidence(render(_with_samples(base, 1), RenderOptions(width=200)))
    assert "1 sample " in one  # singular
    for text in (render(_with_samples(base, 4), RenderOptions(width=200)),
                 render_markdown(_with_samples(base, 4))):
        assert "75.00%" in _confidence(text)  # 3/4: a real (if loose) bound stays
    assert "3/200 = 1.50% (95%)" in _confidence(render(base, RenderOptions(width=200)))


def test_shorten_middle_keeps_both_ends_and_fits():
    name = "m.model.decoder.layers.11.fc1#2"
    for width in range(1, len(name) + 3):
        short = shorten_middle(name, width)
        assert len(short) <= width
        if width >= len(name):
            assert short == name
        elif width > 1:
            head, _, tail = short.partition("…")
            assert name.startswith(head) and name.endswith(tail)
            assert len(tail) >= len(head)


def test_long_names_at_80_columns_stay_distinct_and_keep_their_end():
    names = [f"m.model.decoder.layers.{i}.activation_fn" for i in (0, 1, 2, 10, 11)]
    report = make_report(tuple(make_site(n, 32, dead=(i,), seed=i) for i, n in enumerate(names)))
    lines = render(report, RenderOptions(width=80)).splitlines()
    start = next(i for i, line in enumerate(lines) if " site " in line)
    rows = lines[start + 2:start + 2 + len(names)]
    assert all(len(line) <= 80 for line in lines[start:start + 2 + len(names)])
    shown = [row.split()[1] for row in rows]
    assert len(set(shown)) == len(names), shown  # the rows are still told apart
    for full, short in zip(names, shown):
        assert "…" in short, short  # the premise: 80 columns are too few for the full names
        head, _, tail = short.partition("…")
        assert full.startswith(head) and full.endswith(tail)
        index = full.split(".")[4]  # the layer number, whole: "10", never just its "0"
        assert tail.startswith(f"{index}.") or f".{index}." in tail, (full, short)


def test_html_confidence_card_never_claims_a_bound_of_100_percent_or_more():
    from reludoctor.reporters.html import render as render_html

    base = make_report((make_site("stem.relu", 8, dead=(1,)),))
    for samples in (1, 3):
        card = re.sub(r"<[^>]+>", " ", render_html(_with_samples(base, samples), RenderOptions()))
        card = card[card.index("confidence"):][:200]
        assert f"{300 / samples:.2f}%" not in card and "too few" in card, card
    card = re.sub(r"<[^>]+>", " ", render_html(_with_samples(base, 4), RenderOptions()))
    assert "75.00%" in card[card.index("confidence"):][:200]
