"""Observe ReLU-family ATen calls of any PyTorch callable with a TorchDispatchMode.

For models that torch.export cannot capture (data-dependent control flow) and for TorchScript.
The mode sees every ATen call, also inside TorchScript; module forward hooks give the module
path of each call (TorchScript submodules run without Python hooks: their paths come from
``torchscript_names``). Inside ``__torch_dispatch__`` the mode is not active, so the
observer's own ops are not seen again.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

from reludoctor.instrument.sites import (
    PASS_THROUGH_OPS,
    SiteSpec,
    base_name,
    choose_unit_axis,
    classify,
    op_base_name,
    producer_kind,
    unique_names,
)
from reludoctor.observers import BatchContext, TorchUnitObserver


class _ModuleStack:
    """Module paths currently executing, via global forward (pre-)hooks, always removed.

    A path is the parent's path plus the attribute name under which the parent holds the
    module, so an instance shared by two parents gets the name of the parent that called it.
    """

    def __init__(self, model: Any):
        self._names = {id(m): name for name, m in getattr(model, "named_modules", lambda: [])()}
        self.stack: list[tuple[Any, str, str]] = []  # (module, path, type)

    def _path(self, module: Any) -> str:
        if self.stack:
            parent, parent_path, _ = self.stack[-1]
            for name, child in getattr(parent, "_modules", {}).items():
                if child is module:
                    return f"{parent_path}.{name}" if parent_path else name
        return self._names[id(module)]

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        from torch.nn.modules.module import (
            register_module_forward_hook,
            register_module_forward_pre_hook,
        )

        def push(module: Any, _args: Any) -> None:
            if id(module) in self._names:
                cls = type(module)
                self.stack.append((module, self._path(module), f"{cls.__module__}.{cls.__qualname__}"))

        def pop(module: Any, _args: Any, _out: Any) -> None:
            if self.stack and self.stack[-1][0] is module:
                self.stack.pop()

        handles = [register_module_forward_pre_hook(push), register_module_forward_hook(pop)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            self.stack.clear()

    def current(self) -> tuple[str, str]:
        return self.stack[-1][1:] if self.stack else ("", "")


class _GraphNodes:
    """For an exported program's flat graph module: runs it node by node (torch.fx.Interpreter)
    so each call's module path comes from the node's recorded ``nn_module_stack``."""

    def __init__(self, graph_module: Any):
        import torch.fx

        locator = self
        self.node: Any = None

        class _Interpreter(torch.fx.Interpreter):
            def run_node(self, node: Any) -> Any:
                locator.node = node
                return super().run_node(node)

        self._interpreter = _Interpreter(graph_module)

    def run(self, *args: Any) -> Any:
        return self._interpreter.run(*args)

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        try:
            yield
        finally:
            self.node = None

    def current(self) -> tuple[str, str]:
        stack = (self.node.meta.get("nn_module_stack") or {}) if self.node is not None else {}
        if not stack:
            return "", ""
        path, module_type = list(stack.values())[-1]
        return str(path), str(module_type)


def _has_module_stacks(model: Any) -> bool:
    import torch.fx

    return isinstance(model, torch.fx.GraphModule) and any(
        node.meta.get("nn_module_stack") for node in model.graph.nodes)


class DispatchInstrument:
    """Creates an observer for each call site the first time it executes.

    A site is keyed by its base name, the pre-activation's shape and its occurrence in the
    forward pass, so calls from two branches of one module stay two sites.
    """

    def __init__(self, model: Any, batch: BatchContext, unit_axis: int | None = None):
        self.batch = batch
        self.unit_axis = unit_axis
        self.modules: _ModuleStack | _GraphNodes
        if _has_module_stacks(model):
            self.modules = _GraphNodes(model)
            self.forward = self.modules.run
        else:
            self.modules = _ModuleStack(model)
            self.forward = model
        self._keys: list[tuple] = []  # (base name, shape, occurrence) in first-execution order
        self._specs: dict[tuple, tuple[Any, str, int]] = {}
        self._observers: dict[tuple, TorchUnitObserver] = {}
        self._occurrences: dict[tuple, int] = {}

    def site_call(self, func: Any, args: tuple, kwargs: dict) -> tuple[tuple, Any, str] | None:
        """(site key, activation, module path) when this ATen call is a ReLU-family site, else
        None; counts the call's occurrence in the current forward pass. Subclasses (the
        evidence and gradient probes) key their sites the same way, so names agree."""
        activation = classify(func, args, kwargs)
        if activation is None or not args or not hasattr(args[0], "ndim"):
            return None
        path, module_type = self.modules.current()
        shaped = (base_name(path, module_type, activation.op), tuple(args[0].shape[1:]))
        occurrence = self._occurrences.get(shaped, 0)
        self._occurrences[shaped] = occurrence + 1
        return (*shaped, occurrence), activation, path

    def observe(self, func: Any, args: tuple, kwargs: dict, producers: Any) -> None:
        call = self.site_call(func, args, kwargs)
        if call is None:
            return
        key, activation, path = call
        observer = self._observers.get(key)
        if observer is None:
            pre = args[0]
            axis = choose_unit_axis(pre.ndim, producers.get(pre), self.unit_axis)
            observer = TorchUnitObserver(axis, activation.lower, activation.upper, self.batch)
            self._observers[key] = observer
            self._specs[key] = (activation, path, axis)
            self._keys.append(key)
        observer(args[0])

    def start_forward(self) -> None:
        self._occurrences.clear()

    def sites(self, static: list[tuple[str, str, str]] | None = None,
              ) -> list[tuple[SiteSpec, TorchUnitObserver]]:
        """Sites in first-execution order. ``static`` (module path, module type, op) per call,
        from a TorchScript archive's graphs, names them when it lists the same ops."""
        from reludoctor.instrument.torchscript_names import matches

        bases = [key[0] for key in self._keys]
        paths = [self._specs[key][1] for key in self._keys]
        if matches(static, [self._specs[key][0].op for key in self._keys]):
            bases = [base_name(path, kind, op) for path, kind, op in static]
            paths = [path for path, _, _ in static]
        names = unique_names(bases)
        out = []
        for key, name, path in zip(self._keys, names, paths):
            activation, _, axis = self._specs[key]
            spec = SiteSpec(name, activation.op, path, activation.lower, activation.upper, axis,
                            activation.inplace)
            out.append((spec, self._observers[key]))
        return out

    def after_call(self, func: Any, args: tuple, kwargs: dict, out: Any, observed: Any,
                   producers: Any) -> None:
        """After each ATen call (``observed``: what ``observe`` returned for it): remember which
        3-D tensors a convolution or linear layer laid out, for the unit-axis choice."""
        if getattr(out, "ndim", None) == 3:
            name = op_base_name(func)
            kind = producer_kind(name)
            if kind is None and name.rstrip("_") in PASS_THROUGH_OPS:
                kind = next((producers[a] for a in args if hasattr(a, "ndim") and a in producers), None)
            if kind is not None:
                producers[out] = kind

    @contextlib.contextmanager
    def active(self) -> Iterator[None]:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils.weak import WeakIdKeyDictionary

        instrument = self
        producers = WeakIdKeyDictionary()  # 3-D tensors -> "conv" | "linear" (unit axis choice)

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                kwargs = kwargs or {}
                observed = instrument.observe(func, args, kwargs, producers)
                out = func(*args, **kwargs)
                instrument.after_call(func, args, kwargs, out, observed, producers)
                return out

        with self.modules.active(), _Mode():
            yield
