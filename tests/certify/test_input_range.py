"""--input-range parsing: LOW,HIGH, the imagenet preset (the image presets' constants), Python
pairs with per-channel sequences, and one-line refusals."""

from __future__ import annotations

import pytest
import torch
from cert_models import SmallCNN

from reludoctor import scan
from reludoctor.data.images import IMAGENET_MEAN, IMAGENET_STD
from reludoctor.data.input_range import InputRange, parse_input_range
from reludoctor.errors import UsageError


def test_low_high():
    assert parse_input_range(" -1.5,2 ") == InputRange("-1.5,2", (-1.5,), (2.0,))
    assert parse_input_range("0,0").low == (0.0,)  # a point is a box too
    assert parse_input_range(None) is None


def test_imagenet_is_the_normalised_unit_box():
    box = parse_input_range("imagenet")
    assert box.per_channel
    for c in range(3):
        assert box.low[c] == pytest.approx((0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])
        assert box.high[c] == pytest.approx((1 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])


def test_python_pairs():
    assert parse_input_range((0, 1)) == InputRange("0,1", (0.0,), (1.0,))
    box = parse_input_range(([0, -1, -2], [1, 1, 2]))
    assert box.low == (0.0, -1.0, -2.0) and box.high == (1.0, 1.0, 2.0)


@pytest.mark.parametrize("bad", ["1,0", "a,b", "1", "1,2,3", "nan,1", "-inf,0", (1, 0), ([0, 0], [1]), "cifar"])
def test_refused(bad):
    with pytest.raises(UsageError) as info:
        parse_input_range(bad)
    assert "\n" not in info.value.one_line()


def test_per_channel_range_on_a_model_with_other_channels_is_refused():
    with pytest.raises(UsageError, match="has 2 channels, but input x has shape"):
        scan(SmallCNN(), torch.rand(8, 3, 8, 8), input_range=([0, 0], [1, 1]), device="cpu")
