"""What counts as a ReLU-family call site, how it is named, and which axis holds its units.

Shared by the torch.export and TorchDispatchMode instrumenters so both report the same sites;
the ONNX site discovery (``backends.onnx.discover``) applies the same rules to ONNX op types.

What is an activation (``decide``, the one place it is decided). A call is a site when:

1. **Op and bounds** (``classify``): ``relu``; ``relu6`` and ``hardtanh`` with number bounds
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
from reludoctor import activations

from collections import Counter
from dataclasses import dataclass
from typing import Any

# Module classes whose own call is the activation: the site is named by the module path alone.
ACTIVATION_MODULES = activations.torch_modules()
# Ops through which a producer's unit layout survives (normalisation, residual adds, dropout).
PASS_THROUGH_OPS = {
    "batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
    "native_batch_norm", "cudnn_batch_norm", "add", "add_", "sub", "mul", "div", "dropout",
    "clone", "contiguous", "_to_copy", "to", "alias", "group_norm", "instance_norm",
}
CONV_OPS = {"convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
            "conv_transpose3d", "cudnn_convolution", "_convolution", "mkldnn_convolution"}
LINEAR_OPS = {"linear", "addmm", "mm", "matmul", "bmm", "baddbmm", "einsum"}
# Ops whose output is a layer's (an activation's input should come from one of these).
LAYER_OPS = CONV_OPS | LINEAR_OPS | {
    "_addmm_activation", "addmv", "mv", "addbmm", "tensordot", "conv_tbc",
    "batch_norm", "native_batch_norm", "_native_batch_norm_legit",
    "_native_batch_norm_legit_no_training", "_native_batch_norm_legit_functional",
    "cudnn_batch_norm", "miopen_batch_norm", "layer_norm", "native_layer_norm", "group_norm",
    "native_group_norm", "instance_norm", "rms_norm", "_fused_rms_norm",
    "lstm", "gru", "rnn_tanh", "rnn_relu", "lstm_cell", "gru_cell", "rnn_tanh_cell",
    "rnn_relu_cell", "_thnn_fused_lstm_cell", "_thnn_fused_gru_cell", "mkldnn_rnn_layer",
    "mkldnn_rnn", "_cudnn_rnn", "miopen_rnn", "quantized_lstm_cell", "quantized_gru_cell",
    "embedding", "embedding_bag", "_embedding_bag", "_embedding_bag_forward_only",
    "scaled_dot_product_attention", "_scaled_dot_product_attention_math",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_flash_attention_for_cpu",
    "_scaled_dot_product_efficient_attention", "_scaled_dot_product_cudnn_attention",
    "_native_multi_head_attention",
}
# Ops that pick elements by data-dependent indices (always "indexed").
INDEXING_OPS = {
    "index", "_unsafe_index", "index_select", "gather", "take", "take_along_dim",
    "masked_select", "nonzero", "nonzero_static", "argwhere", "topk", "sort", "argsort",
    "msort", "kthvalue",
}
# Ops that are "indexed" when they pick out of the last axis (box coordinates): select,
# unbind, and slice with a step other than 1.
LAST_AXIS_INDEXING_OPS = {"select", "unbind", "slice"}
# Ops through which an activation's output reaches its consumer unchanged (unit-axis choice).
FORWARD_OPS = {"clone", "contiguous", "dropout", "native_dropout", "alias", "_to_copy", "to",
               "detach", "feature_dropout", "alpha_dropout", "lift_fresh"}

LAYER, INDEXED, INPUT, CONSTANT = "layer", "indexed", "input", "constant"
_ORIGIN_RANK = {CONSTANT: 0, INPUT: 1, INDEXED: 2, LAYER: 3}


@dataclass(frozen=True)
class ActivationOp:
    op: str  # relu | relu6 | hardtanh | clamp | threshold
    lower: float  # a unit "fires" where its pre-activation > lower
    upper: float | None  # saturation bound of bounded activations
    inplace: bool


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


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def op_base_name(target: Any) -> str:
    """'aten.relu_.default' -> 'relu_' for an OpOverload; str() fallback for others."""
    packet = getattr(target, "_overloadpacket", None)
    name = getattr(packet, "__name__", None) or getattr(target, "__name__", None) or str(target)
    return name.split(".")[-1]


def classify(target: Any, args: tuple, kwargs: dict | None = None) -> ActivationOp | None:
    """Return the activation an ATen call performs, or None when it is not ReLU-family (by op
    and bounds alone: ``decide`` also looks at the input)."""
    found = _classify(target, args, kwargs or {})
    return found if isinstance(found, ActivationOp) else None


def decide(target: Any, args: tuple, kwargs: dict | None, origin: Origin | None,
           floating: bool = True) -> ActivationOp | Ignored | None:
    """The one decision of what is an activation (see the module docstring): the activation
    for a site, ``Ignored`` (op, reason) for a ReLU-like call that is not one, None otherwise.
    ``origin``: where the call's input comes from (None: unknown, taken as a site's);
    ``floating``: whether that input holds floating-point values."""
    found = _classify(target, args, kwargs or {})
    if not isinstance(found, ActivationOp):
        return found
    reason = not_an_activation(origin, floating)
    return found if reason is None else Ignored(found.op, reason)


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


def _classify(target: Any, args: tuple, kwargs: dict) -> ActivationOp | Ignored | None:
    if getattr(target, "namespace", None) != "aten":
        return None
    name = op_base_name(target)
    inplace = name.endswith("_")
    base = name.rstrip("_")
    if base == "relu":
        return ActivationOp("relu", 0.0, None, inplace)
    if base == "relu6":
        return ActivationOp("relu6", 0.0, 6.0, inplace)
    if base == "hardtanh":
        lower = _number(_arg(args, kwargs, 1, "min_val", -1.0))
        upper = _number(_arg(args, kwargs, 2, "max_val", 1.0))
        if lower is None or upper is None:
            return None
        op = "relu6" if (lower, upper) == (0.0, 6.0) else "hardtanh"  # nn.ReLU6 lowers to this
        return ActivationOp(op, lower, upper, inplace)
    if base in ("clamp", "clamp_min"):
        if base == "clamp_min":
            lower, upper = _number(_arg(args, kwargs, 1, "min")), None
        else:
            lower = _number(_arg(args, kwargs, 1, "min"))
            raw_upper = _arg(args, kwargs, 2, "max")
            upper = _number(raw_upper)
            if raw_upper is not None and upper is None and lower == 0.0:
                return Ignored(base, "its upper bound is not a constant (a tensor or a symbolic "
                                     "size, e.g. an image size)")
        if lower != 0.0:
            return None  # only clamp(min=0) is a ReLU
        return ActivationOp("clamp", 0.0, upper, inplace)
    if base == "threshold":
        threshold = _number(_arg(args, kwargs, 1, "threshold"))
        value = _number(_arg(args, kwargs, 2, "value"))
        if threshold == 0.0 and value == 0.0:
            return ActivationOp("threshold", 0.0, None, inplace)
    return None


def base_name(module_path: str, module_type: str, op: str) -> str:
    """The module path for an activation module's own call; 'path.op()' for a functional call
    (so F.relu in a module never shares a name with a child module called relu)."""
    if module_type.rsplit(".", 1)[-1] in ACTIVATION_MODULES and module_path:
        return module_path
    return f"{module_path}.{op}()" if module_path else f"{op}()"


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


def derive(op: str, args: tuple, kwargs: dict | None, inputs: list[Origin],
           ndim: int | None) -> Origin:
    """The origin of an ATen call's outputs, from its op and its tensor inputs' origins
    (``inputs``, any order; ``ndim``: rank of its first tensor argument)."""
    top = strongest(inputs)
    if top.kind == CONSTANT:
        return top
    base = op.rstrip("_")  # inplace variants: add_ -> add
    if base in LAYER_OPS:
        return Origin(LAYER, base)
    if base in INDEXING_OPS:
        return Origin(INDEXED, base)
    if base in LAST_AXIS_INDEXING_OPS and ndim:
        dim = _arg(args, kwargs or {}, 1, "dim", 0)
        if isinstance(dim, int) and not isinstance(dim, bool) and dim % ndim == ndim - 1:
            if base != "slice":
                return Origin(INDEXED, f"{base} on the last axis")
            step = _arg(args, kwargs or {}, 4, "step", 1)
            if isinstance(step, int) and step != 1:
                return Origin(INDEXED, f"slice with step {step} on the last axis")
    return top


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


def producer_kind(op_name: str) -> str | None:
    base = op_name.rstrip("_")
    if base in CONV_OPS:
        return "conv"
    if base in LINEAR_OPS:
        return "linear"
    return None


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
