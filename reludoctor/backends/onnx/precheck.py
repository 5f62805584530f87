"""An ONNX graph without any op that could be a ReLU-family site is refused before the data pass
(SiLU or GELU everywhere is told at once, not after a pass over the calibration data).

Deliberately loose: ``Clip``/``Max`` with any inputs, fused activations and ops of an unknown
domain let the scan go on, and ``discover`` decides exactly; only a graph in which no such op
appears is refused here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from reludoctor import activations
from reludoctor.backends.onnx.discover import FUSED_ACTIVATION_OPS, RELU_FAMILY
from reludoctor.errors import NoSitesError

# ONNX op types that might be a site (``discover.RELU_FAMILY`` and the fused forms).
ONNX_CANDIDATES = RELU_FAMILY | FUSED_ACTIVATION_OPS | {"ThresholdedRelu"}
ONNX_DEFAULT_DOMAINS = {"", "ai.onnx", "com.microsoft", "ai.onnx.ml"}
# Activations named in the message, so the user sees what the model uses instead.
ONNX_SMOOTH = {"Sigmoid", "Tanh", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "HardSwish",
               "HardSigmoid", "Mish", "Elu", "Selu", "Celu", "Softplus", "Softsign"}
ONNX_HINT = (activations.describe("onnx") + "; a model "
             "with smooth activations (SiLU, GELU) has no dead ReLU units to find")


def _onnx_ops(model: Any) -> tuple[Counter, bool]:
    """(smooth activations by name, whether any node might be a site)."""
    from reludoctor.backends.onnx.loader import bodies

    local_functions = {(f.domain, f.name) for f in model.functions}
    smooth: Counter = Counter()
    for graph in bodies(model):
        products = {frozenset(node.input) for node in graph.node if node.op_type == "Mul"}
        for node in graph.node:
            if node.op_type in ONNX_CANDIDATES:
                return smooth, True
            if node.domain not in ONNX_DEFAULT_DOMAINS and (node.domain, node.op_type) not in local_functions:
                return smooth, True  # a custom operator: it may compute a ReLU
            if node.op_type == "Sigmoid" and node.input and node.output \
                    and frozenset((node.input[0], node.output[0])) in products:
                smooth["SiLU"] += 1  # x * Sigmoid(x), as exporters write SiLU
            elif node.op_type in ONNX_SMOOTH:
                smooth[node.op_type] += 1
    return smooth, False


def refuse_without_candidates(loaded: Any) -> None:
    """Raise NoSitesError, before any batch runs, when the ONNX graph of ``loaded`` holds no op
    that could be a ReLU-family site."""
    smooth, candidate = _onnx_ops(loaded.module)
    if not candidate:
        raise NoSitesError(f"{loaded.path or 'model'}: no ReLU-family node in the ONNX graph "
                           f"({activations.listed_uses(smooth)})", ONNX_HINT)
