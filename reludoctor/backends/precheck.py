"""Before the calibration pass: does a known graph hold any ReLU-family op at all?

When the graph is known before any data runs (an ONNX model, a torch.export program), a model
without a single ReLU-family op (SiLU or GELU everywhere) is told so at once, not after a pass
over the calibration data. The check is deliberately loose: any op that *could* be a site
(``clamp`` with any bounds, ONNX ``Clip``/``Max`` with any inputs, fused activations, ops of an
unknown library) lets the scan go on, and the site discovery decides exactly (``sites``,
``onnx_graph``). Only a graph in which no such op appears is refused here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from reludoctor import activations
from reludoctor.errors import NoSitesError

# ONNX op types that might be a site (``onnx_graph.RELU_FAMILY`` and the fused forms).
ONNX_CANDIDATES = activations.onnx_ops() | {"FusedConv", "FusedGemm", "NhwcFusedConv", "FusedMatMul",
                                            "ThresholdedRelu"}
ONNX_DEFAULT_DOMAINS = {"", "ai.onnx", "com.microsoft", "ai.onnx.ml"}
# Activations named in the message, so the user sees what the model uses instead.
ONNX_SMOOTH = {"Sigmoid", "Tanh", "Gelu", "FastGelu", "BiasGelu", "QuickGelu", "HardSwish",
               "HardSigmoid", "Mish", "Elu", "Selu", "Celu", "Softplus", "Softsign"}

ONNX_HINT = (activations.describe("onnx") + "; a model "
             "with smooth activations (SiLU, GELU) has no dead ReLU units to find")


def _uses(found: Counter) -> str:
    if not found:
        return "it has no activation op"
    listed = ", ".join(f"{name} x{count}" if count > 1 else name for name, count in found.most_common(4))
    return f"its activations: {listed}"


def _onnx_ops(model: Any) -> tuple[Counter, bool]:
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
    """Raise NoSitesError, before any batch runs, when ``loaded``'s graph is known and holds
    no op that could be a ReLU-family site. Models whose graph is not known yet (an nn.Module,
    TorchScript) pass; so does any graph with a candidate (the site discovery decides)."""
    where = loaded.path or "model"
    if loaded.format == "onnx":
        smooth, candidate = _onnx_ops(loaded.module)
        if not candidate:
            raise NoSitesError(f"{where}: no ReLU-family node in the ONNX graph ({_uses(smooth)})",
                               ONNX_HINT)
    else:
        from reludoctor.backends.torch.precheck import refuse_without_candidates as torch_refuse

        torch_refuse(loaded)


def check_program(program: Any, where: str) -> None:
    """``reludoctor.backends.torch.precheck.check_program``, under its old address (the engine's)."""
    from reludoctor.backends.torch import precheck

    precheck.check_program(program, where)
