"""Producer evidence from an ONNX graph: the Conv/Gemm/MatMul (and BatchNormalization) that feeds each site."""

from __future__ import annotations

from typing import Any

import numpy as np

from reludoctor.backends.onnx.discover import Scanned, site_nodes
from reludoctor.backends.onnx.scope import _attribute, _Scope
from reludoctor.core.evidence import ProducerEvidence, build


def from_onnx(model: Any, site_names: list[str], scanned: Scanned | None = None) -> dict[str, ProducerEvidence]:
    """Evidence from an ONNX graph's initializers: Relu/Clip fed by Conv or Gemm/MatMul(+Add),
    optionally through BatchNormalization. Main graph only; sites as ``discover`` names them."""
    graph = model.graph
    scope = _Scope(graph, None)
    producers = scope.producers
    wanted = set(site_names)

    def value(name: str) -> np.ndarray | None:
        found = scope.values(name)
        return None if found is None else found.astype(np.float64)

    out = {}
    for name, (site, _) in site_nodes(model, scanned).items():
        if name not in wanted:
            continue
        try:
            current = producers.get(site.x)
            norm = None
            bias_extra = None
            if current is not None and current.op_type == "BatchNormalization":
                g, b, m, v = (value(n) for n in current.input[1:5])
                if any(x is None for x in (g, b, m, v)):
                    continue
                norm = (current.name or current.output[0], g, b, m, v, float(_attribute(current, "epsilon", 1e-5)))
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
            if current.op_type == "Conv" and int(_attribute(current, "group", 1)) == 1:
                w = value(current.input[1])
                b = value(current.input[2]) if len(current.input) > 2 and current.input[2] else None
                kind = "conv"
            elif current.op_type == "Gemm":
                w = value(current.input[1])
                if w is None:
                    continue
                w = w * float(_attribute(current, "alpha", 1.0))
                if not int(_attribute(current, "transB", 0)):
                    w = w.T
                b = value(current.input[2]) if len(current.input) > 2 and current.input[2] else None
                if b is not None:
                    b = np.broadcast_to(b * float(_attribute(current, "beta", 1.0)), (w.shape[0],)).copy()
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
            evidence = build(name, current.name or current.output[0], kind, current.input[1],
                              np.ascontiguousarray(w),
                              None if b is None else np.asarray(b, dtype=np.float64),
                              norm)
        except Exception:  # noqa: BLE001 - best effort
            evidence = None
        if evidence is not None:
            out[name] = evidence
    return out
