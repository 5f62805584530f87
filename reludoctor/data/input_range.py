"""The model's input domain for certification (``--input-range``): a box [low, high], one pair
for every element or one per channel (axis 1), in the units the model sees (after any
normalisation). Presets reuse the image presets' constants (``data.images``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

from reludoctor.errors import UsageError

PRESETS = ("imagenet",)  # pixels in [0, 1] through the ImageNet mean/std (``--normalize imagenet``)
HINT = "e.g. --input-range 0,1 or --input-range imagenet (pixels in [0, 1] through ImageNet mean/std)"


@dataclass(frozen=True)
class InputRange:
    spec: str  # as the user wrote it: "0,1", "imagenet"
    low: tuple[float, ...]  # one value for every element, or one per channel (axis 1)
    high: tuple[float, ...]

    @property
    def per_channel(self) -> bool:
        return len(self.low) > 1


def parse_input_range(value: Any) -> InputRange | None:
    """``"LOW,HIGH"``, a preset name, an ``InputRange`` or a (low, high) pair of numbers or of
    per-channel sequences -> InputRange; None stays None. Anything else: a one-line UsageError."""
    if value is None or isinstance(value, InputRange):
        return value
    if isinstance(value, str):
        text = value.strip()
        if text.lower() in PRESETS:
            return _imagenet()
        parts = text.split(",")
        if len(parts) != 2:
            raise UsageError(f"--input-range {value!r} is not LOW,HIGH or a preset", HINT)
        try:
            low, high = float(parts[0]), float(parts[1])
        except ValueError:
            raise UsageError(f"--input-range {value!r}: LOW and HIGH must be numbers", HINT) from None
        return _checked(text, (low,), (high,))
    if isinstance(value, Sequence) and len(value) == 2:
        low, high = (_floats(v, value) for v in value)
        if len(low) != len(high):
            raise UsageError(f"input_range {value!r}: low and high have different lengths")
        return _checked(f"{value[0]},{value[1]}", low, high)
    raise UsageError(f"input_range {value!r:.60} is not (low, high), 'LOW,HIGH' or a preset", HINT)


def _floats(item: Any, whole: Any) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in item) if isinstance(item, Sequence) else (float(item),)
    except (TypeError, ValueError):
        raise UsageError(f"input_range {whole!r:.60}: bounds must be numbers", HINT) from None


def _checked(spec: str, low: tuple[float, ...], high: tuple[float, ...]) -> InputRange:
    if not all(math.isfinite(v) for v in low + high):
        raise UsageError(f"--input-range {spec}: bounds must be finite numbers", HINT)
    if any(lo > hi for lo, hi in zip(low, high)):
        raise UsageError(f"--input-range {spec}: LOW must not exceed HIGH", HINT)
    return InputRange(spec, low, high)


def _imagenet() -> InputRange:
    from reludoctor.data.images import IMAGENET_MEAN, IMAGENET_STD

    low = tuple((0.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    high = tuple((1.0 - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD))
    return InputRange("imagenet", low, high)
