"""What counts as a ReLU-family call site, how it is named, and which axis holds its units: the
format-neutral rule both backends apply (``backends.torch.sites`` to ATen calls, shared by the
torch.export and TorchDispatchMode instrumenters; ``backends.onnx.discover`` to ONNX nodes).

A call is a site when:

1. **Op and bounds** (the backend's classifier, kinds from ``reludoctor.activations``): ``relu``; ``relu6`` and ``hardtanh`` with number bounds
   (``hardtanh(0, 6)`` is ReLU6); ``threshold(0, 0)``; ``clamp``/``clamp_min`` with min 0 and
   max absent or a number. Any other op or bound is not ReLU-family and not mentioned.
2. **A constant upper bound**: ``clamp(min=0, max=<tensor or symbolic size>)`` clips to a
   data-dependent value (an image size): ignored.
3. **Floating values**: a clamp of an integer or bool tensor (indices, sizes) is ignored.
4. **Its input comes from a layer or from the model's input** (``Origin``, traced forward from
   the inputs through every op): a layer op (convolution, linear/matmul, normalisation,
   recurrent, embedding, attention) makes ``layer``; elementwise arithmetic, pooling,
   reshaping, concatenation and the like keep the strongest origin of their inputs
   (layer > indexed > input > constant); picking elements out of the last axis (``select``,
   ``unbind``, a strided ``slice``: box coordinates) or by data-dependent indices (``index``,
   ``gather``, ``index_select``, ``masked_select``, ``nonzero``, ``topk``, ...) makes
   ``indexed``; tensors computed from no input (factories, parameters, constants) are
   ``constant``. A call whose input is ``indexed`` (box arithmetic: the box clipping of
   detection models) or ``constant`` is ignored; ``layer`` and ``input`` (a model that
   rectifies its own input) are sites.

Ignored calls are listed in the report's ``ignored_ops`` with the reason (``scan --verbose``
prints them), never silently dropped. Because box clipping runs once per image, counting it as
a site made the site list depend on the batch size.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

LAYER, INDEXED, INPUT, CONSTANT = "layer", "indexed", "input", "constant"
_ORIGIN_RANK = {CONSTANT: 0, INPUT: 1, INDEXED: 2, LAYER: 3}



@dataclass(frozen=True)
class SiteSpec:
    name: str
    op: str
    module: str  # module path issuing the call ('' for the root module)
    lower: float
    upper: float | None
    unit_axis: int  # non-negative axis of the activation (batch is axis 0)
    inplace: bool
    unit_axis_reason: str = ""  # why that axis: "producer conv", "consumer conv", "--unit-axis", ...


@dataclass(frozen=True)
class Ignored:
    """A ReLU-like call that is not an activation (``decide``), and why."""

    op: str
    reason: str


@dataclass(frozen=True)
class Origin:
    """Where a tensor comes from: ``kind`` (layer | indexed | input | constant) and the op that
    made it so (``via``), for the reason of an ignored call."""

    kind: str
    via: str = ""


CONSTANT_ORIGIN = Origin(CONSTANT)
INPUT_ORIGIN = Origin(INPUT, "the model's input")



def not_an_activation(origin: Origin | None, floating: bool) -> str | None:
    """Why a ReLU-family op (by op and bounds) on an input of this origin and kind of values is
    no activation, or None when it is one (rules 3 and 4; the ONNX side uses it too)."""
    if not floating:
        return "integer tensor (indices or sizes, not activations)"
    if origin is not None and origin.kind == INDEXED:
        return f"its input comes from indexing ({origin.via}), e.g. box coordinates, not from a layer"
    if origin is not None and origin.kind == CONSTANT:
        return "its input does not depend on the model's input (a constant)"
    return None



def unique_names(bases: list[str]) -> list[str]:
    """Suffix '#1', '#2', ... (in execution order) to names that occur more than once."""
    totals = Counter(bases)
    seen: Counter = Counter()
    names = []
    for base in bases:
        seen[base] += 1
        names.append(f"{base}#{seen[base]}" if totals[base] > 1 else base)
    return names


def strongest(origins: list[Origin]) -> Origin:
    """The origin a result of ``origins`` inherits: layer > indexed > input > constant."""
    best = CONSTANT_ORIGIN
    for origin in origins:
        if _ORIGIN_RANK[origin.kind] > _ORIGIN_RANK[best.kind]:
            best = origin
    return best



def default_unit_axis(ndim: int, producer: str | None) -> int:
    """Channel axis 1 for convolutional maps; last axis for sequences [N, T, F]; 1 for [N, F]."""
    return unit_axis_choice(ndim, producer, None, None)[0]


def unit_axis_choice(ndim: int, producer: str | None, consumer: str | None,
                     override: int | None) -> tuple[int, str]:
    """(unit axis, reason) of an activation of rank ``ndim`` (batch included): [N, F] has its
    features on axis 1 and a map [N, C, ...] its channels; for [N, A, B] the kind ("conv" |
    "linear" | None) of the op that produced its input and of the op that consumes its output
    decide: a convolution on either side means channels on axis 1, else a linear layer (or
    nothing known) the last axis of a sequence [N, T, F]. An override (``--unit-axis``) wins;
    it may be negative (from the end)."""
    effective_ndim = max(ndim, 2)  # a [N] activation is observed as [N, 1]
    if override is not None:
        return choose_unit_axis(ndim, producer, override), "--unit-axis"
    if effective_ndim == 2:
        return 1, "features of [N, F]"
    if effective_ndim > 3:
        return 1, "channels of [N, C, ...]"
    if producer == "conv":
        return 1, "producer conv"
    if consumer == "conv":
        return 1, "consumer conv"
    if producer == "linear":
        return 2, "linear on last axis"
    if consumer == "linear":
        return 2, "consumer linear: last axis"
    return 2, "sequence [N, T, F]: last axis"



def choose_unit_axis(ndim: int, producer: str | None, override: int | None) -> int:
    """Resolve the unit axis of a site; an override may be negative (counted from the end)."""
    from reludoctor.errors import UsageError

    effective_ndim = max(ndim, 2)  # a [N] activation is observed as [N, 1]
    if override is None:
        return unit_axis_choice(effective_ndim, producer, None, None)[0]
    axis = override + effective_ndim if override < 0 else override
    if not 1 <= axis < effective_ndim:
        raise UsageError(
            f"--unit-axis {override} does not fit an activation with {effective_ndim} dimensions",
            "axis 0 is the batch; use 1 for channels or -1 for the last axis",
        )
    return axis
