"""Module paths for the ReLU-family calls of a TorchScript archive, read from its graphs.

TorchScript runs submodules without Python hooks, so the dispatch mode cannot tell which module
made a call. The scripted graphs still say it: walking ``prim::CallMethod`` into submodules,
in order, lists each activation call with its module path. The scan uses these names only when
the calls it saw at run time are the same ops in the same order (no data-dependent branches).
"""

from __future__ import annotations

from typing import Any

import torch

# Functional calls compiled as prim::CallFunction, by the function's name.
_FUNCTIONAL_OPS = {"relu": "relu", "relu6": "relu6", "hardtanh": "hardtanh", "threshold": "threshold"}
_ATEN_OPS = {"relu": "relu", "relu6": "relu6", "hardtanh": "hardtanh", "threshold": "threshold",
             "clamp": "clamp", "clamp_min": "clamp"}


def _same_family(op: str) -> str:
    return "bounded" if op in ("relu6", "hardtanh") else op  # F.hardtanh(x, 0, 6) runs as relu6


def static_call_sites(module: Any) -> list[tuple[str, str, str]] | None:
    """[(module path, module type, op)] in graph order, or None where activation calls sit in
    branches or loops (then the static order may not be the executed one)."""
    class _Branching(Exception):
        pass

    def walk(owner: Any, path: str, nodes: Any, modules: dict, out: list) -> None:
        for node in nodes:
            kind = node.kind()
            if kind == "prim::GetAttr":
                source = modules.get(node.inputsAt(0).unique())
                child = getattr(source[0], node.s("name"), None) if source else None
                if isinstance(child, torch.jit.ScriptModule):
                    child_path = f"{source[1]}.{node.s('name')}" if source[1] else node.s("name")
                    modules[node.output().unique()] = (child, child_path)
            elif kind == "prim::CallMethod":
                source = modules.get(node.inputsAt(0).unique())
                if source is not None:
                    graph = getattr(source[0], node.s("name")).graph
                    walk(source[0], source[1], graph.nodes(),
                         {next(iter(graph.inputs())).unique(): source}, out)
            elif kind == "prim::CallFunction":
                qualified = str(node.inputsAt(0).type())
                op = _FUNCTIONAL_OPS.get(qualified.rsplit(".", 1)[-1].rstrip("_"))
                if op and ".functional." in qualified:
                    out.append((path, getattr(owner, "original_name", ""), op))
            elif kind.startswith("aten::"):
                op = _ATEN_OPS.get(kind[len("aten::"):].rstrip("_"))
                if op:
                    out.append((path, getattr(owner, "original_name", ""), op))
            for block in node.blocks():  # BatchNorm's training check etc. are harmless
                inner: list = []
                walk(owner, path, block.nodes(), modules, inner)
                if inner:
                    raise _Branching

    sites: list[tuple[str, str, str]] = []
    try:
        walk(module, "", module.graph.nodes(), {next(iter(module.graph.inputs())).unique(): (module, "")},
             sites)
    except (_Branching, AttributeError, RuntimeError, StopIteration):
        return None
    return sites


def matches(static: list[tuple[str, str, str]] | None, runtime_ops: list[str]) -> bool:
    return static is not None and [_same_family(op) for _, _, op in static] == [
        _same_family(op) for op in runtime_ops]
