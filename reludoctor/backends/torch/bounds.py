"""Interval bound propagation (IBP) over an exported ATen graph.

Every node gets a value: a constant (parameters, buffers, shapes, anything computed from them
alone), an ``Interval`` [lo, hi] of float64 tensors that contains every value the node takes for
inputs in the given box, or ``Unsupported`` naming the first op without an interval rule (then
everything downstream is unsupported too: no guessing). The rules are exact interval arithmetic
(docs/diagnosis.md#certified-dead-units), computed in float64 and widened after every arithmetic
op by ``REL * magnitude + ABS`` so that the float32 rounding of the model's own forward stays
inside the bounds.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Callable

from reludoctor.backends.torch.sites import op_base_name

REL = 1e-5  # relative widening: float32 rounding of the model's sums, with room to spare
ABS = 1e-6  # absolute widening: results near 0


@dataclass
class Interval:
    lo: Any  # float64 tensor
    hi: Any  # float64 tensor, same shape, lo <= hi


@dataclass(frozen=True)
class Unsupported:
    reason: str


class _NoRule(Exception):
    """An op with a rule, called with arguments the rule does not cover."""


def propagate(graph_module: Any, inputs: dict[str, Any]) -> dict[Any, Any]:
    """Every node's value, given each placeholder's (by node name): an Interval or a constant."""
    from torch.fx.node import map_arg

    env: dict[Any, Any] = {}
    stale = stale_reads(graph_module.graph)
    for node in graph_module.graph.nodes:
        if node in stale:
            env[node] = Unsupported(stale[node])
        elif node.op == "placeholder":
            env[node] = inputs.get(node.name, Unsupported(f"input {node.name} has no value"))
        elif node.op == "get_attr":
            env[node] = _attribute(graph_module, node.target)
        elif node.op == "call_function":
            args = map_arg(node.args, env.__getitem__)
            kwargs = map_arg(node.kwargs, env.__getitem__)
            env[node] = _call(node, args, kwargs)
        elif node.op != "output":
            env[node] = Unsupported(f"{node.op} {node.target} (node {node.name})")
    return env


def stale_reads(graph: Any) -> dict[Any, str]:
    """Nodes that read a tensor after an in-place op changed it under another name (the node
    used again, or a view of it): the graph shows the old value, the model computes the new one,
    so these get no bound."""
    order = {node: i for i, node in enumerate(graph.nodes)}
    stale: dict[Any, str] = {}
    for node in graph.nodes:
        if node.op != "call_function" or not _mutates_first(node.target) or not hasattr(node.args[0], "users"):
            continue
        for alias in _aliases(node.args[0]):
            for user in alias.users:
                if user is not node and order[user] > order[node]:
                    stale[user] = f"reads {alias.name} after the in-place {node.target} (node {node.name}) changed it"
    return stale


VIEW_OPS = {"view", "_unsafe_view", "reshape", "flatten", "permute", "transpose", "t", "unsqueeze",
            "squeeze", "expand", "slice", "select", "narrow", "alias", "detach", "as_strided",
            "split", "split_with_sizes", "chunk", "unbind", "getitem", "view_as", "expand_as", "movedim"}


def _mutates_first(target: Any) -> bool:
    schema = getattr(target, "_schema", None)
    if schema is None or not schema.arguments:
        return False
    info = schema.arguments[0].alias_info
    return bool(info is not None and info.is_write)


def _is_view(node: Any) -> bool:
    return node.op == "call_function" and op_base_name(node.target) in VIEW_OPS


def _aliases(node: Any) -> list:
    """``node``, the tensor it is a view of, and every view of those (transitively)."""
    base = node
    while _is_view(base) and base.args and hasattr(base.args[0], "users"):
        base = base.args[0]
    found, frontier = [base], [base]
    while frontier:
        views = [user for current in frontier for user in current.users if _is_view(user) and user not in found]
        found.extend(views)
        frontier = views
    return found


def as_interval(value: Any) -> Interval | Unsupported:
    """A node's value as an Interval (a constant tensor is a point interval)."""
    import torch

    if isinstance(value, (Interval, Unsupported)):
        return value
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        point = value.detach().double()
        return Interval(point, point)
    return Unsupported(f"a value of type {type(value).__name__}")


def _attribute(graph_module: Any, target: str) -> Any:
    value = graph_module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def _leaves(value: Any) -> list:
    if isinstance(value, (list, tuple)):
        return [leaf for item in value for leaf in _leaves(item)]
    if isinstance(value, dict):
        return [leaf for item in value.values() for leaf in _leaves(item)]
    return [value]


def _call(node: Any, args: tuple, kwargs: dict) -> Any:
    if node.target is operator.getitem and isinstance(args[0], (list, tuple)):
        return args[0][args[1]]  # an element of a tuple result (its other elements may be unsupported)
    leaves = _leaves(args) + _leaves(kwargs)
    failed = next((leaf for leaf in leaves if isinstance(leaf, Unsupported)), None)
    if failed is not None:
        return failed
    name = op_base_name(node.target)
    try:
        if not any(isinstance(leaf, Interval) for leaf in leaves):
            return _functional(node.target)(*args, **kwargs)  # constants: computed exactly
        if name.startswith("_assert") or name in ("sym_size", "size", "sym_numel", "dim", "sym_stride"):
            return node.target(*_side(args, "lo"), **_side(kwargs, "lo"))  # shape queries
        rule = RULES.get(name.rstrip("_"))
        if rule is None:
            return Unsupported(f"{node.target} (node {node.name}) has no interval rule")
        return rule(node.target, args, kwargs)
    except _NoRule as exc:
        return Unsupported(f"{node.target} (node {node.name}): {exc}")
    except Exception as exc:  # noqa: BLE001 - an argument form a rule did not expect: no bound, no guess
        return Unsupported(f"{node.target} (node {node.name}) failed: {type(exc).__name__}")


def _functional(target: Any) -> Any:
    """The out-of-place overload of an inplace ATen op (``add_.Tensor`` -> ``add.Tensor``), so
    that computing on constants never writes into the model's parameters."""
    import torch

    name = op_base_name(target)
    if not (name.endswith("_") and hasattr(target, "_overloadname")):
        return target
    packet = getattr(torch.ops.aten, name[:-1], None)
    return getattr(packet, target._overloadname, target) if packet is not None else target


def _side(value: Any, which: str) -> Any:
    """``value`` with every Interval replaced by its ``lo`` or ``hi`` tensor."""
    if isinstance(value, Interval):
        return getattr(value, which)
    if isinstance(value, (list, tuple)):
        return type(value)(_side(v, which) for v in value)
    if isinstance(value, dict):
        return {k: _side(v, which) for k, v in value.items()}
    return value


def _pair(lo: Any, hi: Any) -> Any:
    """Results of the same op on the lower and upper sides, zipped into Intervals."""
    if isinstance(lo, (list, tuple)):
        return type(lo)(_pair(a, b) for a, b in zip(lo, hi))
    return Interval(lo, hi)


def _f64(value: Any) -> Any:
    import torch

    return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value


def _widened(lo: Any, hi: Any, magnitude: Any) -> Interval:
    slack = REL * magnitude + ABS
    return Interval(lo - slack, hi + slack)


# --- rules: (target, args, kwargs) -> value ----------------------------------------------


def _same_op_both_sides(target: Any, args: tuple, kwargs: dict) -> Any:
    """Ops that move or copy values without changing them (views, cat, slices, padding with a
    constant) and monotone non-decreasing elementwise ops (relu, clamp, sigmoid, max pooling):
    the op applied to lo and to hi bounds the result exactly."""
    fn = _functional(target)
    return _pair(fn(*_side(args, "lo"), **_side(kwargs, "lo")), fn(*_side(args, "hi"), **_side(kwargs, "hi")))


def _monotone_rounded(target: Any, args: tuple, kwargs: dict) -> Interval:
    """Monotone ops that round (sums and averages with non-negative weights, sigmoid, tanh):
    exact on lo and hi, then widened for the rounding of the model's float32 result, scaled by
    the op applied to max(|lo|, |hi|) (the sum of the terms' sizes, not the possibly cancelling
    sum; for sigmoid and tanh, at least the output's size)."""
    result = _same_op_both_sides(target, args, kwargs)
    sizes = _same_op_both_sides(target, _side_magnitude(args), kwargs).hi
    return _widened(result.lo, result.hi, sizes.abs())


def _side_magnitude(value: Any) -> Any:
    """``value`` with every Interval [l, u] replaced by [0, max(|l|, |u|)]."""
    import torch

    if isinstance(value, Interval):
        size = _magnitude(value)
        return Interval(torch.zeros_like(size), size)
    if isinstance(value, (list, tuple)):
        return type(value)(_side_magnitude(v) for v in value)
    return value


def _identity(target: Any, args: tuple, kwargs: dict) -> Any:
    """dtype/device copies and eval-mode dropout: the value is unchanged (kept in float64), but a
    cast to a coarser float rounds it: widened by that format's epsilon."""
    import torch

    x = args[0]
    name = op_base_name(target)
    if "dropout" in name:
        if (len(args) > 2 and args[2]) or kwargs.get("train"):
            raise _NoRule("dropout in training mode")
        return x
    dtypes = [v for v in (*args[1:], *kwargs.values()) if isinstance(v, torch.dtype)]
    if any(not d.is_floating_point for d in dtypes):
        raise _NoRule(f"conversion to {dtypes[0]}")
    eps = max((torch.finfo(d).eps for d in dtypes), default=0.0)
    return _widened(x.lo, x.hi, _magnitude(x) * (eps / REL)) if eps > torch.finfo(torch.float32).eps else x


def _leaky(target: Any, args: tuple, kwargs: dict) -> Interval:
    slope = args[1] if len(args) > 1 else kwargs.get("negative_slope", 0.01)
    if slope < 0:
        raise _NoRule("a negative slope is not monotone")
    return _same_op_both_sides(target, args, kwargs)


def _hardswish(target: Any, args: tuple, kwargs: dict) -> Interval:
    """x * relu6(x + 3) / 6 falls on (-inf, -1.5] to its minimum -0.375, then rises."""
    import torch

    x = args[0]
    f_lo, f_hi = _functional(target)(x.lo), _functional(target)(x.hi)
    lo = torch.where(x.hi <= -1.5, f_hi, torch.where(x.lo >= -1.5, f_lo, torch.full_like(f_lo, -0.375)))
    hi = torch.maximum(f_lo, f_hi)
    return _widened(lo, hi, _magnitude(Interval(lo, hi)))


def _weighted(target: Any, args: tuple, kwargs: dict) -> Interval:
    """linear / convolution(x, W, b, ...) with constant W and b, in center-radius form:
    W @ c + b +- |W| @ r, widened by REL * (|W| @ (|c| + r) + |b|)."""
    x, weight, bias = args[0], args[1], args[2] if len(args) > 2 else kwargs.get("bias")
    if not isinstance(x, Interval) or isinstance(weight, Interval) or isinstance(bias, Interval):
        raise _NoRule("only the input may vary (weights and bias must be constants)")
    rest, weight, bias = args[3:], _f64(weight), _f64(bias)
    center, radius = (x.lo + x.hi) / 2, (x.hi - x.lo) / 2
    mid = target(center, weight, bias, *rest)
    spread = target(radius, weight.abs(), None, *rest)
    magnitude = target(center.abs() + radius, weight.abs(), None if bias is None else bias.abs(), *rest)
    return _widened(mid - spread, mid + spread, magnitude)


def _matmul(target: Any, args: tuple, kwargs: dict) -> Interval:
    """mm / matmul / bmm / addmm with one constant operand, center-radius as in ``_weighted``."""
    import torch

    bias = None
    if op_base_name(target) == "addmm":
        if kwargs.get("beta", 1) != 1 or kwargs.get("alpha", 1) != 1:
            raise _NoRule("alpha or beta other than 1")
        bias, args = args[0], args[1:]
        if isinstance(bias, Interval):
            raise _NoRule("a varying bias")
    a, b = args[0], args[1]
    if isinstance(a, Interval) == isinstance(b, Interval):
        raise _NoRule("a product of two varying operands")
    fn = torch.matmul
    varying, constant = (a, _f64(b)) if isinstance(a, Interval) else (b, _f64(a))
    center, radius = (varying.lo + varying.hi) / 2, (varying.hi - varying.lo) / 2

    def apply(x: Any, w: Any) -> Any:
        return fn(x, w) if isinstance(a, Interval) else fn(w, x)

    mid, spread = apply(center, constant), apply(radius, constant.abs())
    magnitude = apply(center.abs() + radius, constant.abs())
    if bias is not None:
        mid, magnitude = mid + _f64(bias), magnitude + _f64(bias).abs()
    return _widened(mid - spread, mid + spread, magnitude)


def _batch_norm(target: Any, args: tuple, kwargs: dict) -> Any:
    """Eval-mode batch norm: per channel x * s + t with s = w / sqrt(var + eps), t = b - mean * s
    (sign-aware in center-radius form: c * s + t +- r * |s|)."""
    import torch

    name = op_base_name(target)
    x, weight, bias, mean, var = args[:5]
    if name == "batch_norm":
        training, eps = args[5], args[7]
    elif name == "_native_batch_norm_legit_no_training":
        training, eps = False, args[6]
    else:
        raise _NoRule("batch statistics (training mode)")
    if training:
        raise _NoRule("training mode (batch statistics)")
    if any(isinstance(v, Interval) for v in (weight, bias, mean, var)):
        raise _NoRule("varying parameters")
    shape = [1, -1] + [1] * (x.lo.dim() - 2)
    scale = torch.rsqrt(_f64(var) + eps)
    if weight is not None:
        scale = scale * _f64(weight)
    shift = -_f64(mean) * scale + (_f64(bias) if bias is not None else 0.0)
    scale, shift = scale.reshape(shape), shift.reshape(shape)
    center, radius = (x.lo + x.hi) / 2, (x.hi - x.lo) / 2
    mid, spread = center * scale + shift, radius * scale.abs()
    result = _widened(mid - spread, mid + spread, (center.abs() + radius) * scale.abs() + shift.abs())
    if name == "batch_norm":
        return result
    return (result, Unsupported("batch norm statistics"), Unsupported("batch norm statistics"))


def _max_pool_with_indices(target: Any, args: tuple, kwargs: dict) -> tuple:
    """Core ATen's max pooling: the values as ``max_pool`` (monotone), the indices unknown."""
    values = _same_op_both_sides(target, args, kwargs)[0]
    return (values, Unsupported("max pooling indices"))


def _magnitude(x: Interval) -> Any:
    """max(|lo|, |hi|): the size of every value in the interval."""
    import torch

    return torch.maximum(x.lo.abs(), x.hi.abs())


def _scaled(x: Any, factor: Any) -> Any:
    """An Interval or a constant times a constant factor (sign-aware)."""
    import torch

    if not isinstance(x, Interval):
        return _f64(x) * factor if isinstance(x, torch.Tensor) else x * factor
    factor = _f64(factor)
    a, b = x.lo * factor, x.hi * factor
    return Interval(torch.minimum(a, b), torch.maximum(a, b))


def _add(target: Any, args: tuple, kwargs: dict) -> Interval:
    """a + alpha * b and a - alpha * b: lower ends add, upper ends add; either side may vary."""
    a, b = args[0], args[1]
    alpha = kwargs.get("alpha", 1)
    if op_base_name(target).rstrip("_") == "sub":
        alpha = -alpha
    if alpha != 1:
        b = _scaled(b, alpha)
    lo = _end(a, "lo") + _end(b, "lo")
    hi = _end(a, "hi") + _end(b, "hi")
    return _widened(lo, hi, _magnitude(Interval(lo, hi)))


def _end(value: Any, which: str) -> Any:
    return getattr(value, which) if isinstance(value, Interval) else _f64(value)


def _mul(target: Any, args: tuple, kwargs: dict) -> Interval:
    """Times a constant: sign-aware scaling; two varying factors: the min and max of the four
    corner products."""
    import torch

    a, b = args[0], args[1]
    if isinstance(a, Interval) and isinstance(b, Interval):
        corners = torch.stack(torch.broadcast_tensors(a.lo * b.lo, a.lo * b.hi, a.hi * b.lo, a.hi * b.hi))
        lo, hi = corners.amin(0), corners.amax(0)
    else:
        varying, factor = (a, b) if isinstance(a, Interval) else (b, a)
        scaled = _scaled(varying, factor)
        lo, hi = scaled.lo, scaled.hi
    return _widened(lo, hi, _magnitude(Interval(lo, hi)))


def _div(target: Any, args: tuple, kwargs: dict) -> Interval:
    """a / b as a * (1 / b); a varying divisor must exclude 0 (1 / [l, h] = [1 / h, 1 / l])."""
    import torch

    if kwargs.get("rounding_mode") is not None:
        raise _NoRule("rounded division")
    a, b = args[0], args[1]
    if isinstance(b, Interval):
        if not bool(((b.lo > 0) | (b.hi < 0)).all()):
            raise _NoRule("the divisor's interval contains 0")
        inverse = Interval(1.0 / b.hi, 1.0 / b.lo)
    else:
        inverse = 1.0 / _f64(b) if isinstance(b, torch.Tensor) else 1.0 / b
    return _mul(target, (a, inverse), {})


def _neg(target: Any, args: tuple, kwargs: dict) -> Interval:
    return Interval(-args[0].hi, -args[0].lo)


SHAPE_OPS = (
    "view", "reshape", "_unsafe_view", "flatten", "unflatten", "permute", "transpose", "t",
    "unsqueeze", "squeeze", "expand", "contiguous", "clone", "alias", "detach", "slice", "select",
    "narrow", "split", "split_with_sizes", "chunk", "unbind", "cat", "concat", "stack", "flip",
    "roll", "repeat", "constant_pad_nd", "pad", "movedim", "lift_fresh_copy", "view_as", "reshape_as",
    "expand_as", "index_select", "as_strided",
)
# monotone non-decreasing ops that select or clip values without rounding them
MONOTONE_OPS = ("relu", "relu6", "hardtanh", "clamp", "clamp_min", "clamp_max", "max_pool1d",
                "max_pool2d", "max_pool3d", "amax", "amin")
ROUNDED_MONOTONE_OPS = ("avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
                        "adaptive_avg_pool2d", "adaptive_avg_pool3d", "mean", "sum", "sigmoid",
                        "tanh", "hardsigmoid")

RULES: dict[str, Callable[[Any, tuple, dict], Any]] = {
    **dict.fromkeys(SHAPE_OPS, _same_op_both_sides),
    **dict.fromkeys(MONOTONE_OPS, _same_op_both_sides),
    **dict.fromkeys(ROUNDED_MONOTONE_OPS, _monotone_rounded),
    **dict.fromkeys(("dropout", "feature_dropout", "_to_copy", "to", "type_as"), _identity),
    **dict.fromkeys(("linear", "conv1d", "conv2d", "conv3d", "convolution", "conv_transpose1d",
                     "conv_transpose2d", "conv_transpose3d"), _weighted),
    **dict.fromkeys(("mm", "matmul", "bmm", "addmm"), _matmul),
    **dict.fromkeys(("batch_norm", "_native_batch_norm_legit_no_training",
                     "_native_batch_norm_legit"), _batch_norm),
    **dict.fromkeys(("add", "sub"), _add),
    **dict.fromkeys(("max_pool2d_with_indices", "max_pool3d_with_indices"), _max_pool_with_indices),
    "mul": _mul, "div": _div, "neg": _neg, "leaky_relu": _leaky, "hardswish": _hardswish,
    "getitem": _same_op_both_sides,  # indexing a tensor (a tuple's element is taken before the rules)
}
