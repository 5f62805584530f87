"""Which ATen calls are ReLU-family sites, and how sites are named."""

from __future__ import annotations

import pytest
import torch

from reludoctor.backends.torch.sites import base_name, classify
from reludoctor.core.sites import choose_unit_axis, unique_names

aten = torch.ops.aten


@pytest.mark.parametrize(
    ("target", "args", "kwargs", "expected"),
    [
        (aten.relu.default, ("x",), {}, ("relu", 0.0, None, False)),
        (aten.relu_.default, ("x",), {}, ("relu", 0.0, None, True)),
        (aten.relu6.default, ("x",), {}, ("relu6", 0.0, 6.0, False)),
        (aten.hardtanh.default, ("x", 0.0, 6.0), {}, ("relu6", 0.0, 6.0, False)),
        (aten.hardtanh_.default, ("x",), {}, ("hardtanh", -1.0, 1.0, True)),
        (aten.clamp.default, ("x", 0), {}, ("clamp", 0.0, None, False)),
        (aten.clamp.default, ("x",), {"min": 0.0, "max": 6.0}, ("clamp", 0.0, 6.0, False)),
        (aten.clamp_min.default, ("x", 0.0), {}, ("clamp", 0.0, None, False)),
        (aten.threshold.default, ("x", 0.0, 0.0), {}, ("threshold", 0.0, None, False)),
    ],
)
def test_relu_family(target, args, kwargs, expected) -> None:  # noqa: ANN001
    activation = classify(target, args, kwargs)
    assert activation is not None
    assert (activation.op, activation.lower, activation.upper, activation.inplace) == expected


@pytest.mark.parametrize(
    ("target", "args", "kwargs"),
    [
        (aten.clamp.default, ("x", -1.0), {}),  # not a ReLU: lower bound -1
        (aten.clamp.default, ("x", None, 6.0), {}),  # only an upper bound
        (aten.threshold.default, ("x", 0.5, 0.0), {}),
        (aten.gelu.default, ("x",), {}),
        (aten.leaky_relu.default, ("x",), {}),
        (aten.add.Tensor, ("x", "y"), {}),
    ],
)
def test_not_relu_family(target, args, kwargs) -> None:  # noqa: ANN001
    assert classify(target, args, kwargs) is None


def test_names() -> None:
    assert base_name("layer1.0.relu", "torch.nn.modules.activation.ReLU", "relu") == "layer1.0.relu"
    assert base_name("layer1.0", "torchvision.models.resnet.BasicBlock", "relu") == "layer1.0.relu()"
    assert base_name("", "Net", "relu") == "relu()"
    assert unique_names(["a", "b", "a", "c", "a"]) == ["a#1", "b", "a#2", "c", "a#3"]


def test_unit_axis_rules() -> None:
    assert choose_unit_axis(4, "conv", None) == 1
    assert choose_unit_axis(2, "linear", None) == 1
    assert choose_unit_axis(3, "linear", None) == 2  # sequence [N, T, F]
    assert choose_unit_axis(3, "conv", None) == 1  # Conv1d [N, C, L]
    assert choose_unit_axis(4, "conv", -1) == 3
    from reludoctor.errors import UsageError

    with pytest.raises(UsageError):
        choose_unit_axis(4, "conv", 0)
