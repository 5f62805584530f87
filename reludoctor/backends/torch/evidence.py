"""Producer evidence from a PyTorch model: the exported graph's producer nodes, or the tensors a dispatch pass tracks back to their weights."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from torch.utils.weak import WeakIdKeyDictionary

from reludoctor.backends.torch.dispatch import DispatchHook, DispatchInstrument
from reludoctor.backends.torch.export import activation_nodes
from reludoctor.backends.torch.sites import op_base_name
from reludoctor.core.evidence import ProducerEvidence, build

IDENTITY_OPS = {"clone", "contiguous", "alias", "dropout", "detach", "_to_copy", "to",
                "lift_fresh_copy", "native_dropout", "feature_dropout"}


BN_OPS = {"batch_norm", "_native_batch_norm_legit_no_training", "native_batch_norm",
          "cudnn_batch_norm", "_native_batch_norm_legit", "miopen_batch_norm"}


CONV_ATEN = {"conv1d", "conv2d", "conv3d", "convolution", "_convolution"}


LINEAR_ATEN = {"linear"}


def _arg(args: tuple, kwargs: dict, index: int, name: str, default: Any = None) -> Any:
    if len(args) > index:
        return args[index]
    return kwargs.get(name, default)


def _groups(name: str, args: tuple, kwargs: dict) -> Any:
    if name in ("convolution", "_convolution"):
        return _arg(args, kwargs, 8, "groups", 1)
    return _arg(args, kwargs, 6, "groups", 1)  # conv1d/2d/3d(input, weight, bias, stride, padding, dilation, groups)


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
            return build(site, _layer_of(weight[0], node), kind, weight[0], weight[1],
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
    return build(site, layer, track.kind, weight_name, weight, track.bias, norm)


class _EvidenceHook(DispatchHook):
    """Per site, the producer track of its pre-activation at its first call."""

    def __init__(self) -> None:
        self.tracker = ProducerTracker()

    def on_site(self, name: str, activation: Any, pre: Any) -> _Track | None:
        return self.tracker.lookup(pre)

    def on_result(self, func: Any, args: tuple, kwargs: dict, out: Any, site: Any) -> None:
        self.tracker.track(func, args, kwargs, out)


def from_dispatch(module: Any, example: tuple, unit_axis: int | None = None,
                  static: Any = None, binding: Any = None) -> dict[str, ProducerEvidence]:
    """Evidence for the sites of one forward pass of ``module`` on ``example`` (no gradient),
    named exactly as the TorchDispatchMode instrumenter names them. ``binding``: how the
    example's tensors are passed (``reludoctor.data.binding``; default: positionally)."""
    names = _param_names(module)
    probe = DispatchInstrument(module, unit_axis=unit_axis, hook=_EvidenceHook())
    with torch.no_grad(), _optimised_off(), probe.active():
        probe.start_forward()
        if binding is not None:
            binding.call(probe.forward, example)
        else:
            probe.forward(*example)
    out = {}
    for spec, track in probe.sites(static):
        try:
            evidence = evidence_from_track(spec.name, track, names)
        except Exception:  # noqa: BLE001 - best effort
            evidence = None
        if evidence is not None:
            out[spec.name] = evidence
    return out


@contextlib.contextmanager
def _optimised_off() -> Iterator[None]:
    """TorchScript's profiling executor fuses ops after a few runs; run them one by one."""
    with torch.jit.optimized_execution(False):
        yield
