"""ReLU-family call sites in a PyTorch model: which ATen calls are activations (op and bounds,
kinds from ``reludoctor.activations``), how a call is named, and how the origin of its input is
traced through ATen ops. The rule itself (origins, the unit axis) is format-neutral: ``core.sites``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reludoctor import activations
from reludoctor.core.sites import CONSTANT, INDEXED, LAYER, Ignored, Origin, not_an_activation, strongest

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


# The ops that are a site whatever their arguments, with their catalogue entry; the others
# (hardtanh, clamp, threshold) are sites only with the bounds ``_classify`` checks.
BOUNDS_CHECKED = ("hardtanh", "clamp", "clamp_min", "threshold")
PLAIN_OPS = {name.rstrip("_"): a for a in activations.CATALOGUE for name in a.torch_ops
             if name.rstrip("_") not in BOUNDS_CHECKED}


@dataclass(frozen=True)
class ActivationOp:
    op: str  # relu | relu6 | hardtanh | clamp | threshold
    lower: float  # a unit "fires" where its pre-activation > lower
    upper: float | None  # saturation bound of bounded activations
    inplace: bool


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


def _classify(target: Any, args: tuple, kwargs: dict) -> ActivationOp | Ignored | None:
    if getattr(target, "namespace", None) != "aten":
        return None
    name = op_base_name(target)
    inplace = name.endswith("_")
    base = name.rstrip("_")
    plain = PLAIN_OPS.get(base)
    if plain is not None:
        return ActivationOp(plain.op, plain.lower, plain.upper, inplace)
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


def producer_kind(op_name: str) -> str | None:
    base = op_name.rstrip("_")
    if base in CONV_OPS:
        return "conv"
    if base in LINEAR_OPS:
        return "linear"
    return None
