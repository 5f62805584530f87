"""What counts as a ReLU-family call site, how it is named, and which axis holds its units.

Shared by the torch.export and TorchDispatchMode instrumenters so both report the same sites.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

# Module classes whose own call is the activation: the site is named by the module path alone.
ACTIVATION_MODULES = ("ReLU", "ReLU6", "Hardtanh", "Threshold")
# Ops through which a producer's unit layout survives (normalisation, residual adds, dropout).
PASS_THROUGH_OPS = {
    "batch_norm", "_native_batch_norm_legit_no_training", "_native_batch_norm_legit",
    "native_batch_norm", "cudnn_batch_norm", "add", "add_", "sub", "mul", "div", "dropout",
    "clone", "contiguous", "_to_copy", "to", "alias", "group_norm", "instance_norm",
}
CONV_OPS = {"convolution", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
            "conv_transpose3d", "cudnn_convolution", "_convolution", "mkldnn_convolution"}
LINEAR_OPS = {"linear", "addmm", "mm", "matmul", "bmm", "baddbmm", "einsum"}


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
    """Return the activation an ATen call performs, or None when it is not ReLU-family."""
    kwargs = kwargs or {}
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
            if raw_upper is not None and upper is None:
                return None  # tensor-valued bound: not a ReLU
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


def default_unit_axis(ndim: int, producer: str | None) -> int:
    """Channel axis 1 for convolutional maps; last axis for sequences [N, T, F]; 1 for [N, F]."""
    if ndim <= 2:
        return 1
    if ndim == 3:
        return 1 if producer == "conv" else 2
    return 1


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
        return default_unit_axis(effective_ndim, producer)
    axis = override + effective_ndim if override < 0 else override
    if not 1 <= axis < effective_ndim:
        raise UsageError(
            f"--unit-axis {override} does not fit an activation with {effective_ndim} dimensions",
            "axis 0 is the batch; use 1 for channels or -1 for the last axis",
        )
    return axis
