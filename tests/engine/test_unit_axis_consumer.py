"""The unit axis looks at the consumer too (reludoctor/core/sites.py ``unit_axis_choice``).

An LSTM's output [N, T, 128], transposed to [N, 128, T] and rectified before a Conv1d, has its
units (the Conv1d's input channels) on axis 1; with T = 1 the last axis holds 1 "unit" and every
dead channel would be missed. The oracle is a plain torch forward pass: per-channel max of the
pre-activation along axis 1.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import reludoctor

HIDDEN = 128
DEAD = list(range(0, HIDDEN, 5))[:24]  # 24 planted dead channels


class LstmConv(nn.Module):
    """x [N, T, 5] -> LSTM(5 -> 128) -> transpose -> ReLU -> Conv1d(128 -> 16, 1)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(5, HIDDEN, batch_first=True)
        self.act = nn.ReLU()
        self.conv = nn.Conv1d(HIDDEN, 16, 1)
        with torch.no_grad():  # cell candidate g = tanh(-100) = -1: c < 0, h = o * tanh(c) < 0
            for channel in DEAD:
                self.lstm.bias_ih_l0[2 * HIDDEN + channel] = -100.0

    def pre_activation(self, x: torch.Tensor) -> torch.Tensor:
        return self.lstm(x)[0].transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.act(self.pre_activation(x)))


def _oracle(model: LstmConv, x: torch.Tensor) -> list[int]:
    with torch.no_grad():
        pre = model.pre_activation(x)  # [N, 128, T]
    return torch.nonzero(pre.amax(dim=(0, 2)) <= 0).flatten().tolist()


@pytest.mark.parametrize("method", ["export", "dispatch"])
def test_lstm_into_conv1d_counts_channels_on_axis_1(method: str) -> None:
    torch.manual_seed(0)
    model = LstmConv().eval()
    x = torch.randn(20, 1, 5)
    dead = _oracle(model, x)
    assert set(DEAD) <= set(dead)  # the planted channels (and any random init left dead)
    report = reludoctor.scan(model, x, batch_size=8, method=method)
    assert report.model.method == method
    (site,) = report.sites
    assert (site.name, site.unit_axis, site.units, site.shape) == ("act", 1, HIDDEN, (HIDDEN, 1))
    assert site.unit_axis_reason == "consumer conv"
    assert list(site.dead_units) == dead
    assert report.to_dict()["sites"][0]["unit_axis_reason"] == "consumer conv"


def test_without_a_conv_consumer_a_sequence_keeps_its_last_axis() -> None:
    class LstmLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm = nn.LSTM(5, 8, batch_first=True)
            self.fc = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.lstm(x)[0]))

    torch.manual_seed(0)
    for method in ("export", "dispatch"):
        (site,) = reludoctor.scan(LstmLinear().eval(), torch.randn(6, 4, 5), method=method).sites
        assert (site.unit_axis, site.units, site.unit_axis_reason) == (2, 8, "consumer linear: last axis")


def test_unit_axis_override_is_the_stated_reason() -> None:
    torch.manual_seed(0)
    (site,) = reludoctor.scan(LstmConv().eval(), torch.randn(6, 1, 5), unit_axis=-1,
                              method="dispatch").sites
    assert (site.unit_axis, site.units, site.unit_axis_reason) == (2, 1, "--unit-axis")


def test_lstm_into_conv1d_through_onnx() -> None:
    pytest.importorskip("onnxruntime")
    import io

    import onnx

    torch.manual_seed(0)
    model = LstmConv().eval()
    x = torch.randn(20, 1, 5)
    buffer = io.BytesIO()
    torch.onnx.export(model, (x[:2],), buffer, dynamo=False, input_names=["x"],
                      dynamic_axes={"x": {0: "N"}})
    proto = onnx.load_from_string(buffer.getvalue())
    (site,) = reludoctor.scan(proto, x.numpy(), batch_size=8).sites
    assert (site.unit_axis, site.units, site.unit_axis_reason) == (1, HIDDEN, "consumer conv")
    assert list(site.dead_units) == _oracle(model, x)
