"""Which axis holds the units, and units that fire once in the last, partial batch.

Oracles: hand-written numpy forwards (float64) reduced per unit along the axis DESIGN.md
prescribes: channels (axis 1) of convolutional maps [N, C, H, W] and [N, C, L], features of
[N, F], the last axis of sequence activations [N, T, F]; or the axis given by ``unit_axis``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reludoctor
from reludoctor.errors import UsageError
from tests import models as zoo
from tests.engine.oracle import (
    assert_report_matches,
    assert_reports_agree,
    np_batch_norm,
    np_conv1d,
    np_conv2d,
    np_linear,
    reduce_site,
    to_numpy,
    weights,
)

METHODS = ("export", "dispatch")


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------------------------------------
# default unit axes
# ---------------------------------------------------------------------------------------------
def test_conv2d_units_are_channels(method: str) -> None:
    model = zoo.ConvNet2d().eval()
    x = torch.randn(11, 3, 5, 6, generator=_gen(0))
    p = weights(model)
    pre = np_conv2d(to_numpy(x), p["conv.weight"], p["conv.bias"], padding=1)
    report = reludoctor.scan(model, x, method=method, batch_size=4)
    assert_report_matches(report, [reduce_site(pre, axis=1, name="act", op="relu")])
    site = report.sites[0]
    assert (site.unit_axis, site.units, site.shape, site.positions) == (1, 4, (4, 5, 6), 11 * 30)


def test_linear_units_are_features(method: str) -> None:
    model = zoo.ReusedReLU().eval()
    x = torch.randn(9, 6, generator=_gen(1))
    p = weights(model)
    pre1 = np_linear(to_numpy(x), p["fc1.weight"], p["fc1.bias"])
    pre2 = np_linear(np.maximum(pre1, 0), p["fc2.weight"], p["fc2.bias"])
    report = reludoctor.scan(model, x, method=method, batch_size=4)
    assert_report_matches(report, [reduce_site(pre1, axis=1, name="act#1", op="relu"),
                                   reduce_site(pre2, axis=1, name="act#2", op="relu")])
    assert [(s.unit_axis, s.units, s.positions) for s in report.sites] == [(1, 8, 9), (1, 5, 9)]


def test_sequence_units_are_the_last_axis(method: str) -> None:
    model = zoo.SeqLinear().eval()
    x = torch.randn(10, 4, 5, generator=_gen(2))
    p = weights(model)
    pre = np_linear(to_numpy(x), p["fc.weight"], p["fc.bias"])  # [N, T, 6]
    report = reludoctor.scan(model, x, method=method, batch_size=3)
    assert_report_matches(report, [reduce_site(pre, axis=2, name="act", op="relu")])
    site = report.sites[0]
    assert (site.unit_axis, site.units, site.shape, site.positions) == (2, 6, (4, 6), 40)


def test_sequence_from_token_ids_units_are_the_last_axis(method: str) -> None:
    model = zoo.TokenSeq().eval()
    ids = torch.randint(0, 10, (9, 7), generator=_gen(5))
    p = weights(model)
    pre = np_linear(p["emb.weight"][ids.numpy()], p["fc.weight"], p["fc.bias"])  # [N, T, 8]
    report = reludoctor.scan(model, ids, method=method, batch_size=4)
    assert_report_matches(report, [reduce_site(pre, axis=2, name="act", op="relu")])
    assert (report.sites[0].unit_axis, report.sites[0].units, report.sites[0].positions) == (2, 8, 63)


class _ScalarHead(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 1)
        zoo.seeded_init_(self, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x).squeeze(1))


def test_one_dimensional_activation_is_one_unit(method: str) -> None:
    model = _ScalarHead().eval()
    x = torch.randn(11, 4, generator=_gen(6))
    p = weights(model)
    pre = np_linear(to_numpy(x), p["fc.weight"], p["fc.bias"])[:, 0]  # [N]
    report = reludoctor.scan(model, x, method=method, batch_size=4)
    assert_report_matches(report, [reduce_site(pre, name="relu()", op="relu")])
    assert (report.sites[0].units, report.sites[0].positions) == (1, 11)


def _conv1d_pre(model: zoo.Conv1dNet, x: torch.Tensor) -> np.ndarray:
    p = weights(model)
    xn = to_numpy(x)
    y = np_conv1d(xn, p["conv.weight"], p["conv.bias"], padding=1)
    if model.variant == "bn":
        y = np_batch_norm(y, p, "bn")
    elif model.variant in ("residual_left", "residual_right"):
        y = y + xn
    return y




@pytest.mark.parametrize("method, variant", [
    ("export", "plain"), ("dispatch", "plain"),
    ("export", "bn"), ("dispatch", "bn"),
    ("export", "residual_left"), ("dispatch", "residual_left"),
    ("export", "residual_right"), ("dispatch", "residual_right"),
])
def test_conv1d_units_are_channels(method: str, variant: str) -> None:
    """[N, C, L] from Conv1d (also through BatchNorm1d or a residual add) -> axis 1, even
    though the shape alone looks like a sequence [N, T, F] (whose default is the last axis)."""
    model = zoo.Conv1dNet(variant).eval()
    x = torch.randn(10, 3, 7, generator=_gen(3))
    report = reludoctor.scan(model, x, method=method, batch_size=4)
    assert_report_matches(report, [reduce_site(_conv1d_pre(model, x), axis=1, name="relu()", op="relu")])
    assert (report.sites[0].unit_axis, report.sites[0].units) == (1, 3)


def test_conv1d_methods_agree() -> None:
    model = zoo.Conv1dNet("bn").eval()
    x = torch.randn(10, 3, 7, generator=_gen(3))
    reports = [reludoctor.scan(model, x, method=m, batch_size=4) for m in METHODS]
    assert_reports_agree(*reports)


# ---------------------------------------------------------------------------------------------
# unit_axis override
# ---------------------------------------------------------------------------------------------
def _conv_and_linear_pre(model: zoo.ConvAndLinear, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    p = weights(model)
    pre1 = np_conv2d(to_numpy(x), p["conv.weight"], p["conv.bias"], padding=1)
    pre2 = np_linear(np.maximum(pre1, 0).mean((2, 3)), p["fc.weight"], p["fc.bias"])
    return pre1, pre2


@pytest.mark.parametrize("unit_axis, axis", [(1, 1), (2, 2), (3, 3), (-1, 3), (-2, 2), (-3, 1)])
def test_unit_axis_override_on_conv_maps(method: str, unit_axis: int, axis: int) -> None:
    """A negative axis counts from the end of the activation's dimensions."""
    model = zoo.ConvNet2d().eval()
    x = torch.randn(6, 3, 5, 7, generator=_gen(4))  # H=5, W=7: every axis has its own size
    p = weights(model)
    pre = np_conv2d(to_numpy(x), p["conv.weight"], p["conv.bias"], padding=1)
    report = reludoctor.scan(model, x, method=method, batch_size=4, unit_axis=unit_axis)
    assert_report_matches(report, [reduce_site(pre, axis=axis, name="act", op="relu")])
    assert report.sites[0].units == pre.shape[axis]
    assert report.thresholds.unit_axis == unit_axis


@pytest.mark.parametrize("unit_axis, conv_axis", [(None, 1), (1, 1), (-1, 3)])
def test_unit_axis_override_applies_to_every_site(method: str, unit_axis: int | None,
                                                  conv_axis: int) -> None:
    model = zoo.ConvAndLinear().eval()
    x = torch.randn(6, 3, 5, 7, generator=_gen(4))
    pre1, pre2 = _conv_and_linear_pre(model, x)
    report = reludoctor.scan(model, x, method=method, batch_size=4, unit_axis=unit_axis)
    assert_report_matches(report, [reduce_site(pre1, axis=conv_axis, name="act1", op="relu"),
                                   reduce_site(pre2, axis=1, name="act2", op="relu")])
    assert [s.units for s in report.sites] == [pre1.shape[conv_axis], 5]
    assert report.thresholds.unit_axis == unit_axis


@pytest.mark.parametrize("unit_axis, axis", [(1, 1), (-2, 1), (2, 2), (-1, 2)])
def test_unit_axis_override_on_sequences(method: str, unit_axis: int, axis: int) -> None:
    model = zoo.SeqLinear().eval()
    x = torch.randn(10, 4, 5, generator=_gen(2))
    p = weights(model)
    pre = np_linear(to_numpy(x), p["fc.weight"], p["fc.bias"])
    report = reludoctor.scan(model, x, method=method, batch_size=3, unit_axis=unit_axis)
    assert_report_matches(report, [reduce_site(pre, axis=axis, name="act", op="relu")])
    assert report.sites[0].units == (4 if axis == 1 else 6)




@pytest.mark.parametrize("method", ["export", "dispatch"])
@pytest.mark.parametrize("model_name, unit_axis", [
    ("SeqLinear", 0), ("SeqLinear", 3), ("SeqLinear", -4),
    ("ConvAndLinear", 2), ("ConvAndLinear", 3), ("ConvAndLinear", -2),  # fit conv, not [N, 5]
])
def test_unit_axis_that_does_not_fit_a_site_is_a_usage_error(method: str, model_name: str,
                                                             unit_axis: int) -> None:
    model = getattr(zoo, model_name)().eval()
    x = torch.randn(4, 4, 5, generator=_gen(2)) if model_name == "SeqLinear" \
        else torch.randn(4, 3, 5, 7, generator=_gen(2))
    with pytest.raises(UsageError, match="unit-axis"):
        reludoctor.scan(model, x, method=method, unit_axis=unit_axis)


# ---------------------------------------------------------------------------------------------
# a unit that fires once, in the last (partial) batch
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size, hot", [(5, 36), (8, 36), (8, 32), (16, 32), (16, 36), (36, 36)])
def test_unit_firing_once_in_the_last_partial_batch(method: str, batch_size: int, hot: int) -> None:
    samples = 37
    assert samples % batch_size and hot >= samples - samples % batch_size  # really the last batch
    model = zoo.LinearAct("nn.ReLU").eval()
    x = zoo.detector_data(samples, 6, hot=hot)
    p = weights(model)
    pre = np_linear(to_numpy(x), p["fc.weight"], p["fc.bias"])
    report = reludoctor.scan(model, x, method=method, batch_size=batch_size, near_dead=0.05)
    assert_report_matches(report, [reduce_site(pre, name="act", op="relu")], near_dead=0.05)
    site = report.sites[0]
    assert zoo.DETECTOR_UNIT not in site.dead_units
    assert site.activation_rate[zoo.DETECTOR_UNIT] == 1 / samples
    assert site.positions == samples and report.calibration.samples == samples
    assert report.calibration.batch_size == batch_size


@pytest.mark.parametrize("batch_size", [5, 16])
def test_conv_channel_firing_at_one_position_of_one_sample(method: str, batch_size: int) -> None:
    samples, size = 37, 3
    model = zoo.OneHotConv().eval()
    x = zoo.one_hot_images(samples, size)
    p = weights(model)
    pre = np_conv2d(to_numpy(x), p["conv.weight"], p["conv.bias"])
    report = reludoctor.scan(model, x, method=method, batch_size=batch_size, near_dead=0.01)
    assert_report_matches(report, [reduce_site(pre, name="act", op="relu")], near_dead=0.01)
    site = report.sites[0]
    assert 0 not in site.dead_units
    assert site.activation_rate[0] == 1 / (samples * size * size)
    assert 0 in site.near_dead_units  # 1/333 < 0.01
    assert site.positions == samples * size * size
