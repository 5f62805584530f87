"""Helpers for the ONNX tests: graphs built with onnx.helper, and independent expectations.

The oracle side never uses reludoctor: pre-activations come from a numpy forward or from
onnxruntime with the tensor exposed as a graph output (optimisations off), and are reduced per
unit with numpy following DESIGN.md's definitions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnx
import onnxruntime
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def value(name: str, shape: Sequence[int | str | None] | None, elem: int = FLOAT) -> Any:
    return helper.make_tensor_value_info(name, elem, shape)


def const(name: str, array: Any) -> Any:
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes: list, inputs: list, outputs: list, initializers: Sequence = (), opset: int = 17,
          ir_version: int | None = None, value_info: Sequence = ()) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers),
                              value_info=list(value_info))
    made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    made.ir_version = ir_version or min(onnx.IR_VERSION, 10)
    return made


def save(proto: onnx.ModelProto, path: Path) -> Path:
    onnx.save_model(proto, str(path))
    return path


def intermediate(proto: onnx.ModelProto, feeds: dict[str, np.ndarray], names: list[str]) -> list[np.ndarray]:
    """Run ``proto`` with onnxruntime (optimisations off) exposing ``names`` as outputs."""
    exposed = onnx.ModelProto()
    exposed.CopyFrom(proto)
    known = {o.name for o in exposed.graph.output}
    for name in names:
        if name not in known:
            exposed.graph.output.append(onnx.ValueInfoProto(name=name))
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = onnxruntime.InferenceSession(exposed.SerializeToString(), options,
                                           providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


class Expected:
    """Per-unit numpy reduction of one site's pre-activations (float64)."""

    def __init__(self, axis: int, lower: float = 0.0, upper: float | None = None,
                 negative_slope: Any = None):
        self.axis = axis
        self.lower = lower
        self.upper = upper
        self.negative_slope = negative_slope  # leaky_relu alpha / prelu slope (broadcastable)
        self.samples = 0
        self.positions = 0
        self.positive = None
        self.max = None
        self.min = None
        self.abs_out = None
        self.shape = None

    def add(self, pre: np.ndarray) -> Expected:
        pre = np.asarray(pre, np.float64)
        if pre.ndim == 1:
            pre = pre[:, None]
        moved = np.moveaxis(pre, self.axis, -1).reshape(-1, pre.shape[self.axis])
        if self.negative_slope is None:
            out = np.clip(pre, self.lower, self.upper)
        else:
            out = np.where(pre > 0, pre, pre * np.asarray(self.negative_slope, np.float64))
        out = np.abs(np.moveaxis(out, self.axis, -1).reshape(moved.shape))
        if self.positive is None:
            self.shape = pre.shape[1:]
            self.positive = np.zeros(moved.shape[1], np.int64)
            self.max = np.full(moved.shape[1], -np.inf)
            self.min = np.full(moved.shape[1], np.inf)
            self.abs_out = np.zeros(moved.shape[1])
        self.positive += (moved > self.lower).sum(0)
        self.max = np.maximum(self.max, moved.max(0))
        self.min = np.minimum(self.min, moved.min(0))
        self.abs_out += out.sum(0)
        self.samples += pre.shape[0]
        self.positions += moved.shape[0]
        return self

    @property
    def dead(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.positive == 0)]


def assert_site(site: Any, expected: Expected, *, rtol: float = 1e-5, atol: float = 1e-5) -> None:
    """A report site (``SiteStats``) against the numpy reduction, exactly where it is exact."""
    units = expected.positive.shape[0]
    assert site.units == units
    assert site.unit_axis == expected.axis
    assert site.samples == expected.samples
    assert site.positions == expected.positions
    assert tuple(site.shape) == tuple(expected.shape)
    assert list(site.dead_units) == expected.dead
    counts = np.rint(np.asarray(site.activation_rate) * site.positions).astype(np.int64)
    np.testing.assert_array_equal(counts, expected.positive)
    np.testing.assert_allclose(site.max_preactivation, expected.max, rtol=rtol, atol=atol)
    if expected.upper is not None:
        np.testing.assert_allclose(site.min_preactivation, expected.min, rtol=rtol, atol=atol)
        saturated = [int(i) for i in np.flatnonzero(expected.min >= expected.upper)]
        assert list(site.saturated_units) == saturated
    else:
        assert site.saturated_units is None
    mean_abs = expected.abs_out / expected.positions
    layer = mean_abs.mean()
    if layer > 0:
        np.testing.assert_allclose(site.dormant_score, mean_abs / layer, rtol=max(rtol, 1e-4), atol=1e-6)
    assert sum(site.histogram.counts) > 0


def validated(report: Any) -> Any:
    """Validate the report against the shipped JSON schema (when the package has one)."""
    try:
        from reludoctor.report.schema import validate
    except ImportError:  # pragma: no cover - the schema helper ships with reludoctor
        return report
    data = report.to_dict()
    validate(data)
    validate(json.loads(report.to_json()))
    return report


def scan(target: Any, data: Any = None, **kwargs: Any) -> Any:
    import reludoctor

    notes: list[str] = []
    kwargs.setdefault("device", "cpu")
    report = reludoctor.scan(target, data, on_warning=notes.append, **kwargs)
    assert list(report.warnings) == notes
    return validated(report)
