"""Producer evidence: per site, the Conv/Linear layer feeding it (through BatchNorm), per unit.

Rules compare dead and alive units on it: incoming weight norms, biases, BatchNorm gamma/beta,
fan-in. The pre-activation of unit u is then exactly ``scale[u] * (w_u . x) + shift[u]``:

- no normalisation: ``scale = 1``, ``shift = bias`` (0 without a bias);
- an eval-mode BatchNorm after the layer: ``scale = gamma / sqrt(var + eps)``,
  ``shift = beta + scale * (bias - running_mean)``.

Only chains where this holds are used: the producer, optionally one BatchNorm, and value-preserving
ops (clone, dropout in eval, dtype copies). A residual sum, a scaling or a training-mode
BatchNorm in between gives no evidence for that site (rules then fall back to the statistics).

Found from the exported graph's producer nodes (``from_graph``), from the ATen calls of one
forward pass under a TorchDispatchMode (``from_dispatch``: models torch.export cannot capture,
TorchScript), or from an ONNX graph's initializers (``from_onnx``). Never raises for a model
it does not understand: such sites just have no evidence.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from reludoctor.instrument.sites import op_base_name, unique_names
from reludoctor.instrument.torch_export import activation_nodes

IDENTITY_OPS = {"clone", "contiguous", "alias", "dropout", "detach", "_to_copy", "to",
                "lift_fresh_copy", "native_dropout", "feature_dropout"}
BN_OPS = {"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm",
          "cudnn_batch_norm", "_native_batch_norm_legit", "miopen_batch_norm"}
CONV_ATEN = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution"}
LINEAR_ATEN = {"linear"}


@dataclass(frozen=True)
class ProducerEvidence:
    """The layer feeding one site, per unit (arrays of length ``units``)."""

    site: str
    layer: str  # module path of the Conv/Linear, e.g. "layer3.1.conv1" (ONNX: the node name)
    kind: str  # conv | linear
    weight: str  # the weight's parameter name, e.g. "layer3.1.conv1.weight"
    fan_in: int
    weight_norm: np.ndarray  # L2 norm of each unit's incoming weights
    bias: np.ndarray | None  # the layer's own bias
    norm_layer: str | None  # the BatchNorm between producer and activation, if any
    gamma: np.ndarray | None
    beta: np.ndarray | None
    running_mean: np.ndarray | None
    running_var: np.ndarray | None
    scale: np.ndarray  # multiplies w_u . x
    shift: np.ndarray  # added: the effective bias of each unit

    @property
    def units(self) -> int:
        return int(self.weight_norm.shape[0])

    @property
    def signal_scale(self) -> np.ndarray:
        """How large each unit's weighted input ``scale * (w . x)`` is, up to the layer's input
        scale (shared by all its units, so only ratios between units mean anything):

        - after a BatchNorm: ``|scale| * sqrt(running_var)``, its running variance being that of
          ``w . x + bias`` (``|gamma|`` when the statistics are current). Not ``|scale| * |w|``:
          BatchNorm makes the weight norm arbitrary, and ``|w| / sqrt(running_var)`` depends on
          how the rows align with the input's covariance;
        - otherwise: ``|scale| * |w|`` (the incoming weight norm).

        A unit whose signal scale is a small fraction of its alive neighbours' has a weak input.
        """
        if self.running_var is not None:
            return np.abs(self.scale) * np.sqrt(np.maximum(self.running_var, 0.0))
        return np.abs(self.scale) * self.weight_norm


def _np(tensor: Any) -> np.ndarray | None:
    if tensor is None:
        return None
    return tensor.detach().to("cpu").double().numpy().reshape(-1).copy()


def _build(site: str, layer: str, kind: str, weight_name: str, weight: Any, bias: Any,
           norm: tuple | None) -> ProducerEvidence | None:
    """norm: (module path, gamma, beta, mean, var, eps) tensors/values or None."""
    w = weight.detach().to("cpu").double()
    if w.ndim < 2:
        return None
    rows = w.reshape(w.shape[0], -1)
    weight_norm = rows.norm(dim=1).numpy()
    units = rows.shape[0]
    b = _np(bias)
    if b is not None and b.shape[0] != units:
        return None
    scale = np.ones(units)
    shift = b.copy() if b is not None else np.zeros(units)
    gamma = beta = mean = var = None
    norm_layer = None
    if norm is not None:
        norm_layer, g, be, mu, v, eps = norm
        mean, var = _np(mu), _np(v)
        if mean is None or var is None or mean.shape[0] != units:
            return None
        gamma = _np(g) if g is not None else np.ones(units)
        beta = _np(be) if be is not None else np.zeros(units)
        scale = gamma / np.sqrt(var + float(eps))
        shift = beta + scale * ((b if b is not None else 0.0) - mean)
    return ProducerEvidence(site, layer, kind, weight_name, int(rows.shape[1]), weight_norm, b,
                            norm_layer, gamma, beta, mean, var, scale, shift)


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _groups(name: str, args: tuple, kwargs: dict) -> Any:
    if name in ("convolution", "_convolution"):
        return _arg(args, kwargs, 8, "groups", 1)
    return _arg(args, kwargs, 6, "groups", 1)  # conv1d/2d/3d(input, weight, bias, stride, padding, dilation, groups)


# ----------------------------------------------------------------------------- exported graphs


def _attr(graph_module: Any, node: Any) -> tuple[str, Any] | None:
    """(target, tensor) of a get_attr node; None for anything else (None args included)."""
    if getattr(node, "op", None) != "get_attr":
        return None
    value: Any = graph_module
    for part in str(node.target).split("."):
        value = getattr(value, part, None)
        if value is None:
            return None
    return str(node.target), value


def _layer_of(weight_target: str, node: Any) -> str:
    if weight_target.endswith(".weight"):
        return weight_target[: -len(".weight")]
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else weight_target


def _graph_producer(graph_module: Any, site: str, pre: Any) -> ProducerEvidence | None:
    node = pre
    norm = None
    for _ in range(16):
        if getattr(node, "op", None) != "call_function":
            return None
        name = op_base_name(node.target)
        args, kwargs = node.args, node.kwargs
        if name == "getitem":
            if len(args) < 2 or args[1] != 0:
                return None
            node = args[0]
            continue
        base = name.rstrip("_") if name not in BN_OPS else name
        if base in IDENTITY_OPS:
            node = args[0]
            continue
        if name in BN_OPS:
            if norm is not None:
                return None
            if name in ("_native_batch_norm_legit_no_training",):
                eps = _arg(args, kwargs, 6, "eps", 1e-5)
            elif name == "batch_norm":
                if _arg(args, kwargs, 5, "training", False):
                    return None
                eps = _arg(args, kwargs, 7, "eps", 1e-5)
            elif name in ("native_batch_norm", "cudnn_batch_norm", "miopen_batch_norm"):
                if _arg(args, kwargs, 5, "training", False):
                    return None
                eps = _arg(args, kwargs, 7, "eps", 1e-5)
            else:  # _native_batch_norm_legit: training statistics
                return None
            tensors = []
            for index, key in ((1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")):
                ref = _arg(args, kwargs, index, key)
                got = _attr(graph_module, ref) if ref is not None else None
                if ref is not None and got is None:
                    return None
                tensors.append(got)
            if tensors[2] is None or tensors[3] is None:
                return None
            stem = (tensors[2][0].rsplit(".", 1)[0] if "." in tensors[2][0] else tensors[2][0])
            norm = (stem, *(t[1] if t is not None else None for t in tensors), eps)
            node = args[0]
            continue
        if name in CONV_ATEN or name in LINEAR_ATEN:
            if name in ("convolution", "_convolution") and _arg(args, kwargs, 6, "transposed", False):
                return None
            if name in CONV_ATEN and int(_groups(name, args, kwargs) or 1) != 1:
                return None  # grouped / depthwise convolutions: no per-unit comparison
            weight = _attr(graph_module, _arg(args, kwargs, 1, "weight"))
            if weight is None:
                return None
            bias_ref = _arg(args, kwargs, 2, "bias")
            bias = _attr(graph_module, bias_ref) if bias_ref is not None else None
            if bias_ref is not None and bias is None:
                return None
            kind = "conv" if name in CONV_ATEN else "linear"
            return _build(site, _layer_of(weight[0], node), kind, weight[0], weight[1],
                          bias[1] if bias else None, norm)
        return None
    return None


def from_graph(graph_module: Any) -> dict[str, ProducerEvidence]:
    """Evidence for every activation node of an exported graph module, named as
    ``instrument_graph_module`` names its sites (observer nodes in the graph are ignored)."""
    out = {}
    for node, _, _, name in activation_nodes(graph_module):
        try:
            evidence = _graph_producer(graph_module, name, node.args[0])
        except Exception:  # noqa: BLE001 - evidence is best effort, never fails a scan
            evidence = None
        if evidence is not None:
            out[name] = evidence
    return out


# ----------------------------------------------------------------------------- eager / TorchScript


@dataclass
class _Track:
    kind: str  # conv | linear | bn
    weight: Any = None
    bias: Any = None
    norm: tuple | None = None  # for bn: (gamma, beta, mean, var, eps)
    upstream: _Track | None = None


class ProducerTracker:
    """Follows, in a TorchDispatchMode, which Conv/Linear (through BatchNorm) produced each
    tensor. ``track(func, args, kwargs, out)`` after every call; ``lookup(tensor)``."""

    def __init__(self) -> None:
        from torch.utils.weak import WeakIdKeyDictionary

        self.producers: Any = WeakIdKeyDictionary()

    def lookup(self, tensor: Any) -> _Track | None:
        try:
            return self.producers.get(tensor)
        except TypeError:
            return None

    def track(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        name = op_base_name(func)
        base = name.rstrip("_")
        record: _Track | None = None
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if not hasattr(first, "ndim"):
            return
        if base in ("convolution", "_convolution", "conv1d", "conv2d", "conv3d"):
            transposed = base in ("convolution", "_convolution") and _arg(args, kwargs, 6, "transposed", False)
            if not transposed and int(_groups(base, args, kwargs) or 1) == 1:
                record = _Track("conv", _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias"))
        elif base == "addmm" and len(args) >= 3 and getattr(args[2], "ndim", 0) == 2:
            record = _Track("linear", args[2].t(), args[0] if getattr(args[0], "ndim", 0) == 1 else None)
        elif base == "mm" and len(args) >= 2 and getattr(args[1], "ndim", 0) == 2:
            record = _Track("linear", args[1].t(), None)
        elif base == "linear":
            record = _Track("linear", _arg(args, kwargs, 1, "weight"), _arg(args, kwargs, 2, "bias"))
        elif name in BN_OPS and name != "_native_batch_norm_legit":
            training = False
            if name == "_native_batch_norm_legit_no_training":
                eps = _arg(args, kwargs, 6, "eps", 1e-5)
            else:
                training = bool(_arg(args, kwargs, 5, "training", False))
                eps = _arg(args, kwargs, 7, "eps", 1e-5)
            upstream = self.lookup(args[0]) if args else None
            if not training and upstream is not None and upstream.kind != "bn":
                record = _Track("bn", norm=tuple(_arg(args, kwargs, i, k) for i, k in (
                    (1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var"))) + (eps,),
                    upstream=upstream)
        elif base in IDENTITY_OPS or base in ("view", "_unsafe_view", "reshape"):
            source = self.lookup(args[0]) if args and hasattr(args[0], "ndim") else None
            if source is not None and base in ("view", "_unsafe_view", "reshape"):
                keeps_units = (source.kind == "linear" or (source.kind == "bn" and source.upstream
                               and source.upstream.kind == "linear")) and \
                    first.shape[-1:] == args[0].shape[-1:]
                source = source if keeps_units else None
            record = source
        try:
            if record is not None:
                self.producers[first] = record
            elif first in self.producers:  # changed in place (``out += identity``): no longer
                del self.producers[first]  # the producer's output
        except TypeError:
            pass


def _param_names(module: Any) -> dict[tuple[int, int], str]:
    names = {}
    for getter in ("named_parameters", "named_buffers"):
        for name, tensor in getattr(module, getter, lambda: [])():
            try:
                names[(tensor.data_ptr(), tensor.numel())] = name
            except RuntimeError:
                continue
    return names


def evidence_from_track(site: str, track: _Track | None, names: dict) -> ProducerEvidence | None:
    if track is None:
        return None
    norm = None
    if track.kind == "bn":
        gamma, beta, mean, var, eps = track.norm or (None,) * 5
        if track.upstream is None:
            return None
        stem = names.get((mean.data_ptr(), mean.numel()), "") if mean is not None else ""
        norm = (stem.rsplit(".", 1)[0] if stem else "batch_norm", gamma, beta, mean, var, eps)
        track = track.upstream
    weight = track.weight
    if weight is None:
        return None
    weight_name = names.get((weight.data_ptr(), weight.numel()), f"{site} producer weight")
    layer = weight_name[: -len(".weight")] if weight_name.endswith(".weight") else weight_name
    return _build(site, layer, track.kind, weight_name, weight, track.bias, norm)


def from_dispatch(module: Any, example: tuple, unit_axis: int | None = None,
                  static: Any = None, binding: Any = None) -> dict[str, ProducerEvidence]:
    """Evidence for the sites of one forward pass of ``module`` on ``example`` (no gradient),
    named exactly as the TorchDispatchMode instrumenter names them. ``binding``: how the
    example's tensors are passed (``reludoctor.binding``; default: positionally)."""
    import torch

    from reludoctor.instrument.torch_dispatch import DispatchInstrument
    from reludoctor.observers import BatchContext

    names = _param_names(module)
    tracker = ProducerTracker()

    class _Probe(DispatchInstrument):
        def __init__(self) -> None:
            super().__init__(module, BatchContext(), unit_axis)
            self.tracks: dict[tuple, Any] = {}

        def observe(self, func: Any, args: tuple, kwargs: dict, producers: Any) -> None:
            call = self.site_call(func, args, kwargs)
            if call is None:
                return
            key, activation, path = call
            if key not in self._specs:
                self._specs[key] = (activation, path, 0)
                self._observers[key] = None
                self._keys.append(key)
                self.tracks[key] = tracker.lookup(args[0])

        def after_call(self, func: Any, args: tuple, kwargs: dict, out: Any, observed: Any,
                       producers: Any) -> None:
            tracker.track(func, args, kwargs, out)

    probe = _Probe()
    with torch.no_grad(), _optimised_off(), probe.active():
        probe.start_forward()
        if binding is not None:
            binding.call(probe.forward, example)
        else:
            probe.forward(*example)
    out = {}
    for key, (spec, _) in zip(probe._keys, probe.sites(static)):
        try:
            evidence = evidence_from_track(spec.name, probe.tracks.get(key), names)
        except Exception:  # noqa: BLE001 - best effort
            evidence = None
        if evidence is not None:
            out[spec.name] = evidence
    return out


@contextlib.contextmanager
def _optimised_off() -> Iterator[None]:
    """TorchScript's profiling executor fuses ops after a few runs; run them one by one."""
    import torch

    with torch.jit.optimized_execution(False):
        yield


# ----------------------------------------------------------------------------- ONNX


def from_onnx(model: Any, site_names: list[str]) -> dict[str, ProducerEvidence]:
    """Evidence from an ONNX graph's initializers: Relu/Clip fed by Conv or Gemm/MatMul(+Add),
    optionally through BatchNormalization. Main graph only; site names as the ONNX backend gives
    them (node name, else first output name, '#k' where repeated)."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output if out}
    wanted = set(site_names)

    def value(name: str) -> np.ndarray | None:
        if name in inits:
            return numpy_helper.to_array(inits[name]).astype(np.float64)
        node = producers.get(name)
        if node is not None and node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value":
                    return numpy_helper.to_array(attribute.t).astype(np.float64)
        return None

    def attribute(node: Any, key: str, default: Any) -> Any:
        from onnx import helper

        for a in node.attribute:
            if a.name == key:
                return helper.get_attribute_value(a)
        return default

    import torch

    bases = []
    nodes = []
    for node in graph.node:
        if node.op_type in ("Relu", "Clip", "Max", "LeakyRelu", "PRelu") and node.input:
            bases.append(node.name or node.output[0])
            nodes.append(node)
    out = {}
    for node, name in zip(nodes, unique_names(bases)):
        if name not in wanted:
            continue
        try:
            current = producers.get(node.input[0])
            norm = None
            bias_extra = None
            if current is not None and current.op_type == "BatchNormalization":
                g, b, m, v = (value(n) for n in current.input[1:5])
                if any(x is None for x in (g, b, m, v)):
                    continue
                norm = (current.name or current.output[0], torch.from_numpy(g), torch.from_numpy(b),
                        torch.from_numpy(m), torch.from_numpy(v), float(attribute(current, "epsilon", 1e-5)))
                current = producers.get(current.input[0])
            if current is not None and current.op_type == "Add":  # MatMul + bias
                left, right = (value(n) for n in current.input[:2])
                matmul_input = current.input[0] if right is not None else current.input[1]
                bias_extra = right if right is not None else left
                current = producers.get(matmul_input)
                if current is None or current.op_type != "MatMul":
                    continue
            if current is None:
                continue
            if current.op_type == "Conv" and int(attribute(current, "group", 1)) == 1:
                w = value(current.input[1])
                b = value(current.input[2]) if len(current.input) > 2 and current.input[2] else None
                kind = "conv"
            elif current.op_type == "Gemm":
                w = value(current.input[1])
                if w is None:
                    continue
                w = w * float(attribute(current, "alpha", 1.0))
                if not int(attribute(current, "transB", 0)):
                    w = w.T
                b = value(current.input[2]) if len(current.input) > 2 and current.input[2] else None
                if b is not None:
                    b = np.broadcast_to(b * float(attribute(current, "beta", 1.0)), (w.shape[0],)).copy()
                kind = "linear"
            elif current.op_type == "MatMul":
                w = value(current.input[1])
                w = w.T if w is not None and w.ndim == 2 else None
                b = bias_extra
                kind = "linear"
            else:
                continue
            if w is None:
                continue
            evidence = _build(name, current.name or current.output[0], kind, current.input[1],
                              torch.from_numpy(np.ascontiguousarray(w)),
                              None if b is None else torch.from_numpy(np.asarray(b, dtype=np.float64)),
                              norm)
        except Exception:  # noqa: BLE001 - best effort
            evidence = None
        if evidence is not None:
            out[name] = evidence
    return out


def finite(value: float) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def collect(loaded: Any, method: str, graph_module: Any, calibration: Any, device: Any,
            unit_axis: int | None, site_names: list[str]) -> dict[str, ProducerEvidence]:
    """Producer evidence for the scan's sites while the model is loaded (``engine.scan``).

    ``graph_module``: the instrumented graph of the export path (its activation nodes are
    still there), or None. Best effort: an empty dict where nothing can be found.
    """
    try:
        if loaded.format == "onnx":
            found = from_onnx(loaded.module, site_names)
        elif method == "export" and graph_module is not None:
            found = from_graph(graph_module)
        else:
            import torch

            static = None
            if loaded.format == "torchscript":
                from reludoctor.instrument.torchscript_names import static_call_sites

                static = static_call_sites(loaded.module)
            example = tuple(torch.as_tensor(a).to(device) for a in calibration.example(2))
            found = from_dispatch(loaded.module, example, unit_axis, static, calibration.binding)
    except Exception:  # noqa: BLE001 - evidence never fails a scan
        return {}
    return {name: found[name] for name in site_names if name in found}
