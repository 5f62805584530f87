"""ReLU variants of language models: squared ReLU (relu(x)**2, Primer) and a gated FFN with a
ReLU gate (relu(gate(x)) * up(x), Llama with hidden_act="relu"). The site is the ReLU, the unit
the FFN neuron (last axis); per-neuron counts equal forward hooks on the gate, real tokens only."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from reludoctor import scan
from tests.lm.conftest import ffn_oracle, tiny_model
from tests.lm.test_padding import LENGTHS, padded, sequences

pytestmark = pytest.mark.usefixtures("one_thread_seeded")


class GatedSquaredLM(nn.Module):
    """Embedding, a gated FFN with a ReLU gate, then a squared-ReLU FFN (functional calls)."""

    def __init__(self, vocab: int = 100, width: int = 16, hidden: int = 24):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.gate = nn.Linear(width, hidden)
        self.up = nn.Linear(width, hidden)
        self.down = nn.Linear(hidden, width)
        self.fc1 = nn.Linear(width, hidden)
        self.fc2 = nn.Linear(hidden, width)
        with torch.no_grad():  # a few neurons that never fire
            self.gate.bias[:3] = -50.0
            self.fc1.bias[-2:] = -50.0

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(input_ids)
        x = x + self.down(torch.relu(self.gate(x)) * self.up(x))
        return x + self.fc2(nn.functional.relu(self.fc1(x)) ** 2)


def check(report, oracle: dict, total: int) -> None:
    assert [site.op for site in report.sites] == ["relu"] * len(oracle)
    for site, expected in zip(report.sites, oracle.values()):
        assert site.unit_axis == 2 and site.units == expected["positive"].shape[0], site.name
        assert site.positions == expected["positions"] == total
        np.testing.assert_array_equal(site.accumulators.positive_count, expected["positive"].numpy())
        np.testing.assert_array_equal(site.max_preactivation, expected["max"].double().numpy())
        assert set(site.dead_units) == set(np.flatnonzero(expected["positive"].numpy() == 0))


@pytest.mark.parametrize("method", ["dispatch", "export"])
def test_gated_and_squared_relu(method: str) -> None:
    torch.manual_seed(0)
    model = GatedSquaredLM().eval()
    data = padded(sequences(), 12)
    oracle = ffn_oracle(model, [(data["input_ids"], data["attention_mask"])],
                        {"gate": model.gate, "fc1": model.fc1})
    report = scan(model, data, batch_size=5, method=method, device="cpu")
    assert report.model.method == method
    check(report, oracle, sum(LENGTHS))
    assert report.sites[0].dead_units[:3] == (0, 1, 2)
    assert report.sites[1].dead_units == (22, 23)


def test_llama_squared_relu() -> None:
    model = tiny_model("llama", hidden_act="relu2")
    data = padded(sequences(), 12)
    feeds = {str(i): layer.mlp.gate_proj for i, layer in enumerate(model.model.layers)}
    oracle = ffn_oracle(model, [(data["input_ids"], data["attention_mask"])], feeds)
    check(scan(model, data, batch_size=5, method="dispatch", device="cpu"), oracle, sum(LENGTHS))
