"""The profile in the terminal, Markdown and HTML reports (and nowhere in other reports)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from profile_kit import TokenModel, token_ids

import reludoctor
from reludoctor.reporters import RenderOptions, render


@pytest.fixture(scope="module")
def reports():
    lm = reludoctor.scan(TokenModel(blocks=2), {"input_ids": token_ids(6)})
    mlp = reludoctor.scan(torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU()),
                          np.ones((4, 4), np.float32))
    return lm, mlp


def test_terminal_table_has_one_row_per_ffn_site(reports) -> None:
    lm, mlp = reports
    text = render("table", lm, RenderOptions(width=160))
    assert "neuron activation profile" in text
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if "hot80%" in line)
    assert lines[start].split() == ["layer", "site", "neurons", "sparsity", "hot80%", "hot90%", "hot99%",
                                    "dead"]
    row = next(line for line in lines[start:] if line.split()[:2] == ["1", "layers.1.act"])
    layer = lm.profile.layers[1]
    assert row.split()[2:] == [str(layer.neurons), f"{layer.sparsity:.1%}",
                               *(str(h.neurons) for h in layer.hot), str(layer.dead_neurons)]
    assert "neuron activation profile" not in render("table", mlp, RenderOptions(width=160))


def test_markdown_section(reports) -> None:
    lm, mlp = reports
    text = render("markdown", lm)
    assert "### Neuron activation profile" in text
    assert "| - | `head_act` |" in text  # a token site without a block index
    assert "Neuron activation profile" not in render("markdown", mlp)


@pytest.mark.slow
def test_html_plots(reports) -> None:
    pytest.importorskip("matplotlib")
    lm, mlp = reports
    page = render("html", lm)
    assert 'id="plot-sparsity"' in page and 'id="plot-frequency"' in page
    assert "plot-sparsity" not in render("html", mlp)
