"""The terminal, Markdown and HTML reports of a scan with an input range show the certified-dead
count next to the data-dead count, and the sites that could not be bounded."""

from __future__ import annotations

import torch
from cert_models import WithErf

from reludoctor import scan
from reludoctor.reporters import html, markdown, terminal
from reludoctor.reporters.common import RenderOptions


def test_every_human_format_shows_certified_and_not_certifiable():
    report = scan(WithErf(), torch.rand(16, 4), input_range="0,1", device="cpu")
    second = report.sites[1].name
    text = terminal.render(report, RenderOptions(width=200))
    assert "cert" in text.splitlines()[4]  # the site table's header
    assert "certified dead (input range 0,1): 4 of " in text
    assert f"1 site(s) not certifiable: {second}" in text and "erf" in text
    md = markdown.render(report)
    assert "| dead | certified |" in md and "| certified dead |" in md
    page = html.render(report)
    assert "certified dead</th>" in page and "not certifiable" in page


def test_without_a_range_no_certified_column():
    report = scan(WithErf(), torch.rand(16, 4), device="cpu")
    assert "cert" not in terminal.render(report, RenderOptions(width=200))
    assert "certified" not in markdown.render(report)
    assert "certified" not in html.render(report)
