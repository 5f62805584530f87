"""The terminal report's gradient parts on built reports: the grad/pass columns, the depth
profile line, and the line that says why gradients are unavailable."""

from __future__ import annotations

from dataclasses import replace

from fixed import fixed_report, with_gradients

from reludoctor.report.model import GradientInfo, SiteGradient
from reludoctor.reporters.common import RenderOptions
from reludoctor.reporters.terminal import render


def rows(text: str, report) -> dict[str, list[str]]:  # noqa: ANN001
    names = {s.name for s in report.sites}
    return {tokens[1]: tokens for tokens in (line.split() for line in text.splitlines())
            if len(tokens) > 2 and tokens[0].isdigit() and tokens[1] in names}


def test_columns_hold_each_sites_rms_and_pass_through():
    report = with_gradients(fixed_report())
    text = render(report, RenderOptions(width=220))
    table = rows(text, report)
    for index, site in enumerate(report.sites):
        row = table[site.name]
        rms = 0.1 / (index + 1) ** 2  # what with_gradients planted
        assert f"{rms:.1e}" in row
        assert "50%" in row
    profile = next(line for line in text.splitlines() if line.startswith("gradient flow:"))
    assert "loss cross-entropy-argmax" in profile
    first_over_last = len(report.sites) ** 2  # 0.1 / 0.1 * n^2
    assert f"first site at {first_over_last:.3g}x the last" in profile


def test_pass_through_only_when_gradients_were_unavailable():
    report = fixed_report()
    sites = tuple(replace(s, gradient=SiteGradient(pass_through=0.25 + 0.5 * (i % 2)))
                  for i, s in enumerate(report.sites))
    report = replace(report, sites=sites,
                     gradients=GradientInfo(False, reason="onnx2torch is not installed"))
    text = render(report, RenderOptions(width=220))
    header = next(line for line in text.splitlines() if " site " in line).split()
    assert "pass" in header and "grad" not in header
    line = next(line for line in text.splitlines() if line.startswith("gradients:"))
    assert line == "gradients: unavailable: onnx2torch is not installed; mask pass-through 25%-75%"


def test_nothing_about_gradients_when_not_requested():
    text = render(fixed_report(), RenderOptions(width=220))
    assert "gradient flow" not in text and "gradients:" not in text
    header = next(line for line in text.splitlines() if " site " in line).split()
    assert "grad" not in header and "pass" not in header
