"""The three strategies on ONNX models: node replacement and initializer surgery with ``onnx``.

A site is editable when its structure is a simple chain (main graph only)::

    producer: Conv (group 1) | Gemm | MatMul [+ Add bias]  (weights in initializers)
        [-> BatchNormalization]  -> Relu  -> pass-through ops*  -> consumers
    pass-through: MaxPool, AveragePool, GlobalAveragePool, GlobalMaxPool, Dropout, Identity,
                  Flatten (after which unit u owns a block of features)
    consumers:    Conv (group 1), Gemm, MatMul with an initializer weight

every intermediate tensor used only along the chain, and every weight used by one node only.
Anything else (residual Add, Concat, Reshape, the units reaching a graph output) is skipped with
the reason. ``--leaky`` replaces Relu (and Max(x, 0)) nodes with LeakyRelu.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from reludoctor import activations
from reludoctor.backends.onnx.discover import site_nodes
from reludoctor.backends.onnx.scope import _attribute
from reludoctor.errors import UsageError, first_line
from reludoctor.fix.plan import SiteFix, Strategy

LEAKY_FORM = activations.ops_where("leaky_form")  # the site ops --leaky replaces (Relu, Max(x, 0))
PASS_THROUGH = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Dropout", "Identity"}


class Skip(Exception):
    """A site whose structure this backend does not edit; the message is the reason."""


@dataclass
class OnnxWork:
    model: Any  # a copy of the input ModelProto, edited in place
    shapes: dict  # tensor name -> dims (None where unknown), from shape inference of the input


def _shapes(model: Any) -> dict:
    import onnx

    try:
        inferred = onnx.shape_inference.infer_shapes(model)
    except Exception:  # noqa: BLE001 - best effort
        inferred = model
    out = {}
    graph = inferred.graph
    for value in list(graph.value_info) + list(graph.input) + list(graph.output):
        if value.type.HasField("tensor_type") and value.type.tensor_type.HasField("shape"):
            out[value.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None
                                    for d in value.type.tensor_type.shape.dim)
    return out


def prepare(loaded: Any) -> OnnxWork:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(loaded.module)
    return OnnxWork(copy, _shapes(copy))


# ----------------------------------------------------------------------------- the graph


class _Graph:
    def __init__(self, model: Any):
        graph = model.graph
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)
        self.outputs = {o.name for o in graph.output}
        self.uses = {name: len(nodes) for name, nodes in self.consumers.items()}

    def array(self, name: str) -> np.ndarray:
        from onnx import numpy_helper

        if name not in self.inits:
            raise Skip(f"tensor {name!r} is not an initializer")
        return numpy_helper.to_array(self.inits[name])

    def set_array(self, name: str, value: np.ndarray) -> None:
        from onnx import numpy_helper

        tensor = numpy_helper.from_array(np.ascontiguousarray(value), name)
        self.inits[name].CopyFrom(tensor)
        for inp in self.graph.input:  # IR < 4: initializers may also be listed as inputs
            if inp.name == name and inp.type.HasField("tensor_type"):
                dims = inp.type.tensor_type.shape.dim
                del dims[:]
                for size in value.shape:
                    dims.add().dim_value = int(size)

    def only_use(self, tensor: str, by: Any) -> None:
        users = self.consumers.get(tensor, [])
        if tensor in self.outputs or len(users) != 1 or users[0] is not by:
            raise Skip(f"tensor {tensor!r} is also used outside the chain")

    def own_weight(self, name: str) -> None:
        if self.uses.get(name, 0) != 1:
            raise Skip(f"weight {name!r} is shared by several nodes")
        self.array(name)


@dataclass
class _Layer:
    """Where a unit's incoming weights live."""

    node: Any
    kind: str  # conv | gemm | matmul
    weight: str
    axis: int  # the weight axis indexing output units
    bias: str | None
    bias_axis: int | None  # None: no bias, or a scalar bias (nothing to slice)
    norm: Any = None  # BatchNormalization node
    fan_in: int = 0


@dataclass
class _Consumer:
    node: Any
    weight: str
    axis: int  # the weight axis indexing input features
    block: int  # features per unit (Flatten after a spatial map), else 1


def _producer(site_node: Any, tensor: str, graph: _Graph) -> _Layer:
    """The layer whose weights make the units of ``tensor``, the pre-activation of ``site_node``."""
    graph.only_use(tensor, site_node)
    node = graph.producer.get(tensor)
    norm = None
    if node is not None and node.op_type == "BatchNormalization":
        if len(node.output) > 1 and any(node.output[1:]):
            raise Skip("BatchNormalization in training mode")
        for name in node.input[1:5]:
            graph.own_weight(name)
        norm = node
        graph.only_use(node.input[0], node)
        node = graph.producer.get(node.input[0])
    bias, bias_axis = None, None
    if node is not None and node.op_type == "Add" and norm is None:
        left, right = node.input[:2]
        bias_name = right if right in graph.inits else left if left in graph.inits else None
        if bias_name is None:
            raise Skip("an Add of two computed tensors (a residual sum) feeds the site")
        data = left if bias_name == right else right
        graph.own_weight(bias_name)
        bias, bias_axis = bias_name, graph.array(bias_name).ndim - 1
        graph.only_use(data, node)
        node = graph.producer.get(data)
        if node is None or node.op_type != "MatMul":
            raise Skip("an Add that is not a MatMul's bias feeds the site")
    if node is None:
        raise Skip("the site's input is a graph input")
    if node.op_type == "Conv":
        if int(_attribute(node, "group", 1)) != 1:
            raise Skip("the producer is a grouped convolution")
        graph.own_weight(node.input[1])
        w = graph.array(node.input[1])
        b = node.input[2] if len(node.input) > 2 and node.input[2] else None
        if b:
            graph.own_weight(b)
        return _Layer(node, "conv", node.input[1], 0, b, 0 if b else None, norm,
                      int(np.prod(w.shape[1:])))
    if node.op_type == "Gemm":
        graph.own_weight(node.input[1])
        w = graph.array(node.input[1])
        trans_b = int(_attribute(node, "transB", 0))
        c = node.input[2] if len(node.input) > 2 and node.input[2] else None
        c_axis = None
        if c:
            graph.own_weight(c)
            c_axis = graph.array(c).ndim - 1 if graph.array(c).size > 1 else None
        return _Layer(node, "gemm", node.input[1], 0 if trans_b else 1, c, c_axis, norm,
                      int(w.shape[1] if trans_b else w.shape[0]))
    if node.op_type == "MatMul":
        graph.own_weight(node.input[1])
        w = graph.array(node.input[1])
        if w.ndim != 2:
            raise Skip("a batched MatMul weight")
        return _Layer(node, "matmul", node.input[1], 1, bias, bias_axis, norm, int(w.shape[0]))
    raise Skip(f"the site is fed by {node.op_type}, not Conv/Gemm/MatMul(+BatchNormalization)")


def _consumers(tensor: str, graph: _Graph, shapes: dict, block: int = 1, depth: int = 0) -> list[_Consumer]:
    if tensor in graph.outputs:
        raise Skip("the units reach a graph output")
    found: list[_Consumer] = []
    users = graph.consumers.get(tensor, [])
    if not users:
        raise Skip("the units are not used")
    for node in users:
        op = node.op_type
        if depth > 16:
            raise Skip("the chain to the consumers is too long")
        if op in PASS_THROUGH:
            if node.input[0] != tensor:
                raise Skip(f"the units feed {op} as a parameter")
            found += _consumers(node.output[0], graph, shapes, block, depth + 1)
        elif op == "Flatten":
            if int(_attribute(node, "axis", 1)) != 1:
                raise Skip("Flatten with axis != 1")
            dims = shapes.get(tensor)
            if dims is None or any(d is None for d in dims[1:]):
                raise Skip("Flatten of a tensor of unknown shape")
            spatial = int(np.prod(dims[2:])) if len(dims) > 2 else 1
            found += _consumers(node.output[0], graph, shapes, block * spatial, depth + 1)
        elif op == "Conv":
            if node.input[0] != tensor or int(_attribute(node, "group", 1)) != 1 or block != 1:
                raise Skip("the units feed a grouped or unusual Conv")
            graph.own_weight(node.input[1])
            found.append(_Consumer(node, node.input[1], 1, 1))
        elif op == "Gemm":
            if node.input[0] != tensor or int(_attribute(node, "transA", 0)):
                raise Skip("the units feed a Gemm as its weight or transposed")
            graph.own_weight(node.input[1])
            found.append(_Consumer(node, node.input[1], 1 if int(_attribute(node, "transB", 0)) else 0, block))
        elif op == "MatMul":
            if node.input[0] != tensor:
                raise Skip("the units feed a MatMul as its right operand")
            graph.own_weight(node.input[1])
            if graph.array(node.input[1]).ndim != 2:
                raise Skip("a batched MatMul weight")
            found.append(_Consumer(node, node.input[1], 0, block))
        else:
            raise Skip(f"the units flow into {op} ({node.name or node.output[0]}), not a "
                       "Conv/Gemm/MatMul through pooling or Flatten")
    return found


def _columns(units: list[int], block: int) -> list[int]:
    return [u * block + i for u in units for i in range(block)]


def _structure(entry: SiteFix, site_node: Any, pre: str, graph: _Graph,
               shapes: dict) -> tuple[_Layer, list[_Consumer]]:
    layer = _producer(site_node, pre, graph)
    units = graph.array(layer.weight).shape[layer.axis]
    if units != entry.units:
        raise Skip(f"the producer has {units} outputs, the site {entry.units} units")
    consumers = _consumers(site_node.output[0], graph, shapes)
    for consumer in consumers:
        size = graph.array(consumer.weight).shape[consumer.axis]
        if size != units * consumer.block:
            raise Skip(f"{consumer.node.op_type} {consumer.node.name!r} does not take the units "
                       "as its input features")
    return layer, consumers


# ----------------------------------------------------------------------------- strategies


def _slice_layer(layer: _Layer, graph: _Graph, keep: list[int]) -> None:
    graph.set_array(layer.weight, np.take(graph.array(layer.weight), keep, axis=layer.axis))
    if layer.bias is not None and layer.bias_axis is not None:
        graph.set_array(layer.bias, np.take(graph.array(layer.bias), keep, axis=layer.bias_axis))
    if layer.norm is not None:
        for name in layer.norm.input[1:5]:
            graph.set_array(name, np.take(graph.array(name), keep, axis=0))


def _apply(work: OnnxWork, entries: list[SiteFix], strategy: Strategy, alpha: float | None,
           seed: int) -> list[SiteFix]:
    from onnx import helper

    graph = _Graph(work.model)
    sites = site_nodes(work.model)
    rng = np.random.default_rng(seed)
    out = []
    for entry in entries:
        if entry.action != strategy.value:
            out.append(entry)
            continue
        site, site_node = sites.get(entry.site, (None, None))
        if site_node is None:
            out.append(entry.skipped("not a node of the main graph (inside a subgraph)"))
            continue
        if strategy is Strategy.LEAKY:
            if site.op not in LEAKY_FORM:
                out.append(entry.skipped(f"{site_node.op_type} is not a plain Relu"))
                continue
            new = helper.make_node("LeakyRelu", [site.x], list(site_node.output),
                                   name=site_node.name, alpha=float(alpha))
            site_node.CopyFrom(new)
            out.append(replace(entry, action="leaky", units_after=entry.units))
            continue
        try:
            layer, consumers = _structure(entry, site_node, site.x, graph, work.shapes)
        except Skip as reason:
            out.append(entry.skipped(str(reason)))
            continue
        entry = replace(entry, layer=layer.node.name or layer.node.output[0])
        units = list(entry.targets)
        if strategy is Strategy.PRUNE_DEAD:
            keep = [u for u in range(entry.units) if u not in set(units)]
            _slice_layer(layer, graph, keep)
            for consumer in consumers:
                columns = _columns(keep, consumer.block)
                graph.set_array(consumer.weight, np.take(graph.array(consumer.weight), columns,
                                                         axis=consumer.axis))
            out.append(replace(entry, action="pruned", units_after=len(keep)))
        else:  # reinit
            if not consumers:
                out.append(entry.skipped("no Conv/Gemm/MatMul consumes the units"))
                continue
            weight = graph.array(layer.weight).copy()
            std = math.sqrt(2.0) / math.sqrt(layer.fan_in)
            moved = np.moveaxis(weight, layer.axis, 0)
            moved[units] = rng.standard_normal((len(units), *moved.shape[1:])) * std
            graph.set_array(layer.weight, weight)
            if layer.bias is not None and layer.bias_axis is not None:
                bias = graph.array(layer.bias).copy()
                np.moveaxis(bias, layer.bias_axis, 0)[units] = 0.0
                graph.set_array(layer.bias, bias)
            if layer.norm is not None:
                for name, value in zip(layer.norm.input[1:5], (1.0, 0.0, 0.0, 1.0)):
                    array = graph.array(name).copy()
                    array[units] = value
                    graph.set_array(name, array)
            for consumer in consumers:
                array = graph.array(consumer.weight).copy()
                np.moveaxis(array, consumer.axis, 0)[_columns(units, consumer.block)] = 0.0
                graph.set_array(consumer.weight, array)
            out.append(replace(entry, action="reinit", units_after=entry.units))
    if strategy is Strategy.PRUNE_DEAD:  # intermediate shapes changed: let them be inferred again
        del work.model.graph.value_info[:]
    return out


# ----------------------------------------------------------------------------- sizes


def params(model: Any) -> int:
    return int(sum(int(np.prod(t.dims)) if len(t.dims) else 1 for t in model.graph.initializer))


MAC_OPS = ("Conv", "Gemm", "MatMul")


def _run_shapes(model: Any, names: list[str], example: tuple | None, inputs: list[str]) -> dict:
    """The shapes of ``names`` on one calibration batch (onnxruntime): for outputs whose
    non-batch dimensions are symbolic (a sequence length), which static inference leaves open."""
    if not names or example is None:
        return {}
    import onnx
    import onnxruntime as ort

    try:
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        known = {o.name for o in probe.graph.output}
        for name in names:
            if name not in known:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
        options = ort.SessionOptions()
        options.log_severity_level = 4
        session = ort.InferenceSession(probe.SerializeToString(), options,
                                       providers=["CPUExecutionProvider"])
        values = session.run(names, dict(zip(inputs, example)))
    except Exception:  # noqa: BLE001 - best effort: those layers stay uncounted, as before
        return {}
    return {name: (None, *np.shape(value)[1:]) for name, value in zip(names, values)}


def macs(model: Any, example: tuple | None = None, inputs: list[str] | None = None) -> int:
    """Multiply-accumulates per sample of the Conv, Gemm and MatMul nodes with a weight
    (an initializer) operand (batch axis 0), as ``torch_macs`` counts Conv and Linear modules.
    Output shapes come from shape inference; those it leaves symbolic beyond the batch (the
    sequence length of a MatMul on [N, T, F]) from running ``example`` (one calibration batch
    for the model's ``inputs``)."""
    shapes = _shapes(model)
    graph = _Graph(model)
    counted = [node for node in model.graph.node if node.op_type in MAC_OPS and node.output]
    open_shapes = [node.output[0] for node in counted
                   if shapes.get(node.output[0]) is None or None in shapes[node.output[0]][1:]]
    shapes.update(_run_shapes(model, open_shapes, example, list(inputs or [])))
    total = 0
    for node in counted:
        out = shapes.get(node.output[0])
        if out is None or any(d is None for d in out[1:]):
            continue
        per_sample = int(np.prod(out[1:])) if len(out) > 1 else 1
        try:
            w = graph.array(node.input[1])
        except Skip:
            if node.op_type != "MatMul" or not node.input[0] or node.input[0] not in graph.inits:
                continue
            w = graph.array(node.input[0])  # W @ x: each output sums over W's last axis
            total += per_sample * int(w.shape[-1])
            continue
        if node.op_type == "Conv":
            total += per_sample * int(np.prod(w.shape[1:]))
        elif node.op_type == "Gemm":
            total += per_sample * int(w.shape[1] if int(_attribute(node, "transB", 0)) else w.shape[0])
        else:
            total += per_sample * int(w.shape[-2] if w.ndim >= 2 else 1)
    return int(total)


# ----------------------------------------------------------------------------- the whole run


def ort_runner(source: Any, names: list[str], fixed: int | None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])

    def run(batch: tuple) -> list:
        return list(session.run(None, dict(zip(names, batch))))

    return run


def run(loaded: Any, work: OnnxWork, entries: list[SiteFix], request: Any) -> Any:
    import onnx

    from reludoctor.backends.onnx.loader import sha256_of
    from reludoctor.core.batches import padded_arrays
    from reludoctor.data.calibration import load_calibration
    from reludoctor.fix.output import atomic_path
    from reludoctor.fix.result import Applied, lossless_expected
    from reludoctor.fix.verify import verified

    original_bytes = loaded.module.SerializeToString()
    calibration = load_calibration(request.data, loaded.inputs, limit=request.limit)
    names = [spec.name for spec in loaded.inputs]
    example = next(iter(padded_arrays(calibration, 1, loaded.fixed_batch)), None)  # symbolic shapes
    params_before, macs_before = params(work.model), macs(work.model, example, names)
    sites = _apply(work, entries, request.strategy, request.alpha, request.seed)
    try:
        onnx.checker.check_model(work.model, full_check=True)
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"the fixed ONNX model fails onnx.checker ({first_line(exc)[:200]})",
                         "nothing was written; please report the model structure") from exc
    applied = Applied(sites, params_before, params(work.model), macs_before,
                      macs(work.model, example, names))
    if request.dry_run:
        return applied
    lossless = lossless_expected(request.strategy, sites, request.dead)
    with atomic_path(request.out) as temp:
        onnx.save_model(work.model, str(temp))
        reloaded = onnx.load_model(str(temp))
        onnx.checker.check_model(str(temp), full_check=True)
        verification = verified(ort_runner(original_bytes, names, loaded.fixed_batch),
                                ort_runner(str(temp), names, loaded.fixed_batch),
                                padded_arrays(calibration, request.batch_size, loaded.fixed_batch),
                                calibration.samples, lossless_expected=lossless)
        applied.out_sha256 = sha256_of(temp)
    applied.verification = verification
    applied.fixed_object = reloaded
    return applied
