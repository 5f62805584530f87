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

import torch.fx
from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils.weak import WeakIdKeyDictionary

from reludoctor.backends.torch.sites import (
    FORWARD_OPS,
    PASS_THROUGH_OPS,
    base_name,
    decide,
    derive,
    op_base_name,
    producer_kind,
)
from reludoctor.backends.torch.torchscript_names import matches
from reludoctor.core.observers import BatchContext, TorchUnitObserver
from reludoctor.core.sites import CONSTANT_ORIGIN, INPUT_ORIGIN, Ignored, SiteSpec, unique_names, unit_axis_choice


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
    def active(self, entered: Any = None) -> Iterator[None]:
        def push(module: Any, _args: Any) -> None:
            if id(module) in self._names:
                cls = type(module)
                self.stack.append((module, self._path(module), f"{cls.__module__}.{cls.__qualname__}"))

        if entered is not None:  # its forward began before these hooks existed
            push(entered, ())

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
    def active(self, entered: Any = None) -> Iterator[None]:
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
    return isinstance(model, torch.fx.GraphModule) and any(
        node.meta.get("nn_module_stack") for node in model.graph.nodes)


def _tensors(value: Any, out: list) -> list:
    """The tensors in an ATen call's arguments or outputs (nested lists and tuples)."""
    if hasattr(value, "ndim") and hasattr(value, "dtype"):
        out.append(value)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _tensors(item, out)
    return out


class DispatchHook:
    """What a ``DispatchInstrument`` does at its sites instead of observing units: the producer
    evidence and the gradient pass find sites exactly as the scan does (so names agree) but
    keep their own per-site object. The defaults do nothing."""

    def on_site(self, name: str, activation: Any, pre: Any) -> Any:
        """A site's first call (``name``: its base name, before de-duplication): the object
        ``sites()`` pairs with its spec, and passes to ``on_call`` and ``on_result``."""
        return None

    def on_call(self, site: Any, pre: Any) -> None:
        """Every call of a site, before the op runs (an inplace op has not changed ``pre`` yet)."""

    def on_result(self, func: Any, args: tuple, kwargs: dict, out: Any, site: Any) -> None:
        """After every ATen call; ``site``: the site's object when the call is a site, else None."""


class DispatchInstrument:
    """Creates an observer for each call site the first time it executes.

    A site is keyed by its base name, the pre-activation's shape and its occurrence in the
    forward pass, so calls from two branches of one module stay two sites. Every tensor's
    origin (``sites.derive``) is followed from the forward's inputs, so that ``sites.decide``
    passes over ReLU-like calls that are no activations (box clipping); those are listed by
    ``ignored_ops``. The unit axis of a [N, A, B] site that no convolution produced waits for
    the op that consumes the activation in the first forward pass (a convolution: channels on
    axis 1), its first pre-activation kept until then.

    With a ``hook`` (``DispatchHook``), the hook's per-site objects replace the unit observers
    (unit axis 0, never waiting for a consumer); ``batch`` is then unused. ``observer_factory``
    makes each site's unit observer, called as ``TorchUnitObserver`` is (``reludoctor.watching``
    passes one that keeps per-step statistics).
    """

    def __init__(self, model: Any, batch: BatchContext | None = None, unit_axis: int | None = None,
                 hook: DispatchHook | None = None, observer_factory: Any = TorchUnitObserver):
        self.batch = batch
        self.unit_axis = unit_axis
        self.hook = hook
        self.observer_factory = observer_factory
        self.modules: _ModuleStack | _GraphNodes
        if _has_module_stacks(model):
            self.modules = _GraphNodes(model)
            target = self.modules.run
        else:
            self.modules = _ModuleStack(model)
            target = model

        def forward(*args: Any, **kwargs: Any) -> Any:
            self.enter_forward(args, kwargs)
            try:
                return target(*args, **kwargs)
            finally:
                self.exit_forward()

        self.forward = forward
        self._keys: list[tuple] = []  # (base name, shape, occurrence) in first-execution order
        self._specs: dict[tuple, tuple[Any, str, int]] = {}
        self._observers: dict[tuple, TorchUnitObserver] = {}
        self._occurrences: dict[tuple, int] = {}
        self._reasons: dict[tuple, str] = {}  # site key -> why its unit axis
        self._origins = WeakIdKeyDictionary()  # tensor -> sites.Origin (untracked: constant)
        self._ignored: dict[tuple, None] = {}  # (name, op, module, reason), in first-call order
        # Sites whose unit axis waits for their consumer: key -> (first pre-activation, producer)
        self._pending: dict[tuple, tuple[Any, str | None]] = {}
        self._pending_out = WeakIdKeyDictionary()  # activation output (or a copy) -> site key

    def enter_forward(self, args: tuple, kwargs: dict) -> None:
        """A forward pass begins: its arguments are the model's inputs (``sites.derive``)."""
        for tensor in _tensors(list(args) + list(kwargs.values()), []):
            self._origins[tensor] = INPUT_ORIGIN

    def exit_forward(self) -> None:
        """A forward pass ended: observe the sites still waiting for a consumer."""
        if self._pending:
            self._flush()

    def site_call(self, func: Any, args: tuple, kwargs: dict) -> tuple[tuple, Any, str] | None:
        """(site key, activation, module path) when this ATen call is a ReLU-family site, else
        None; counts the call's occurrence in the current forward pass."""
        if not args or not hasattr(args[0], "ndim"):
            return None
        pre = args[0]
        activation = decide(func, args, kwargs, self._origins.get(pre, CONSTANT_ORIGIN),
                            pre.dtype.is_floating_point)
        if activation is None:
            return None
        path, module_type = self.modules.current()
        if isinstance(activation, Ignored):
            name = base_name(path, module_type, activation.op)
            self._ignored.setdefault((name, activation.op, path, activation.reason), None)
            return None
        shape = tuple(args[0].shape[1:])
        if self.batch is not None:  # text batches vary in length: one site for every length
            shape = self.batch.site_shape(shape)
        shaped = (base_name(path, module_type, activation.op), shape)
        occurrence = self._occurrences.get(shaped, 0)
        self._occurrences[shaped] = occurrence + 1
        return (*shaped, occurrence), activation, path

    def observe(self, func: Any, args: tuple, kwargs: dict, producers: Any) -> Any:
        """Before an ATen call: observe it when it is a site. Returns what ``after_call`` gets:
        the hook's site object, or the key of a site waiting for its consumer."""
        call = self.site_call(func, args, kwargs)
        if call is None:
            return None
        key, activation, path = call
        if self.hook is not None:
            return self._hooked(key, activation, path, args[0])
        if key in self._pending:
            return key
        observer = self._observers.get(key)
        if observer is None:
            pre = args[0]
            producer = producers.get(pre)
            self._keys.append(key)
            self._specs[key] = (activation, path, 0)
            if self.unit_axis is None and max(pre.ndim, 2) == 3 and producer != "conv":
                self._pending[key] = (pre.detach().clone(), producer)  # before a relu_ runs
                return key
            observer = self._resolve(key, producer, None, pre.ndim)
        observer(args[0])
        return None

    def _hooked(self, key: tuple, activation: Any, path: str, pre: Any) -> Any:
        if key not in self._specs:
            self._keys.append(key)
            self._specs[key] = (activation, path, 0)
            self._observers[key] = self.hook.on_site(key[0], activation, pre)
        site = self._observers[key]
        self.hook.on_call(site, pre)
        return site

    def _resolve(self, key: tuple, producer: str | None, consumer: str | None,
                 ndim: int) -> TorchUnitObserver:
        activation, path, _ = self._specs[key]
        axis, reason = unit_axis_choice(ndim, producer, consumer, self.unit_axis)
        observer = self.observer_factory(axis, activation.lower, activation.upper, self.batch)
        self._observers[key] = observer
        self._specs[key] = (activation, path, axis)
        self._reasons[key] = reason
        return observer

    def _settle(self, key: tuple, consumer: str | None) -> None:
        """Decide a waiting site's unit axis (its consumer known) and observe its first call."""
        pre, producer = self._pending.pop(key)
        self._resolve(key, producer, consumer, pre.ndim)(pre)
        for tensor in [t for t, k in self._pending_out.items() if k == key]:
            del self._pending_out[tensor]

    def _consume(self, func: Any, args: tuple, out: Any) -> None:
        """A waiting site's activation reaches an op: a convolution or linear layer decides its
        unit axis; copies (clone, dropout, ...) carry the wait on; any other op ends it."""
        name = op_base_name(func)
        for tensor in _tensors(args, []):
            key = self._pending_out.get(tensor)
            if key is None or key not in self._pending:
                continue
            if name.rstrip("_") in FORWARD_OPS:
                for result in _tensors(out, []):
                    self._pending_out[result] = key
            else:
                self._settle(key, producer_kind(name))

    def _flush(self) -> None:
        """End of a forward pass: sites still waiting had no convolution or linear consumer."""
        with _disable_current_modes():  # the observers' own ops are not the model's
            for key in list(self._pending):
                self._settle(key, None)

    def _track(self, func: Any, args: tuple, kwargs: dict, out: Any) -> None:
        """Record the origin of each output of an ATen call (``sites.derive``)."""
        results = _tensors(out, [])
        if not results:
            return
        inputs = _tensors(args, [])
        if kwargs:
            inputs = _tensors(list(kwargs.values()), inputs)
        origin = derive(op_base_name(func), args, kwargs,
                        [self._origins.get(t, CONSTANT_ORIGIN) for t in inputs],
                        getattr(args[0], "ndim", None) if args else None)
        for result in results:
            self._origins[result] = origin

    def ignored_ops(self) -> list:
        """The ReLU-like calls passed over (``report.IgnoredOp``), one per name, op and reason."""
        from reludoctor.report.model import IgnoredOp

        return [IgnoredOp(op, name, module, reason) for name, op, module, reason in self._ignored]

    def start_forward(self) -> None:
        self._occurrences.clear()

    def sites(self, static: list[tuple[str, str, str]] | None = None,
              ) -> list[tuple[SiteSpec, TorchUnitObserver]]:
        """Sites in first-execution order. ``static`` (module path, module type, op) per call,
        from a TorchScript archive's graphs, names them when it lists the same ops."""
        bases = [key[0] for key in self._keys]
        paths = [self._specs[key][1] for key in self._keys]
        if matches(static, [self._specs[key][0].op for key in self._keys]):
            bases = [base_name(path, kind, op) for path, kind, op in static]
            paths = [path for path, _, _ in static]
        if self._pending:
            self._flush()
        names = unique_names(bases)
        out = []
        for key, name, path in zip(self._keys, names, paths):
            activation, _, axis = self._specs[key]
            spec = SiteSpec(name, activation.op, path, activation.lower, activation.upper, axis,
                            activation.inplace, self._reasons.get(key, ""))
            out.append((spec, self._observers[key]))
        return out

    def after_call(self, func: Any, args: tuple, kwargs: dict, out: Any, observed: Any,
                   producers: Any) -> None:
        """After each ATen call (``observed``: what ``observe`` returned for it): remember which
        3-D tensors a convolution or linear layer laid out, for the unit-axis choice; which
        activation outputs wait for their consumer. With a hook: the hook's ``on_result``."""
        if self.hook is not None:
            self.hook.on_result(func, args, kwargs, out, observed)
            return
        if observed is not None and observed in self._pending:
            for result in _tensors(out, []):
                self._pending_out[result] = observed
        if getattr(out, "ndim", None) == 3:
            name = op_base_name(func)
            kind = producer_kind(name)
            if kind is None and name.rstrip("_") in PASS_THROUGH_OPS:
                kind = next((producers[a] for a in args if hasattr(a, "ndim") and a in producers), None)
            if kind is not None:
                producers[out] = kind

    @contextlib.contextmanager
    def active(self, entered: Any = None) -> Iterator[None]:
        """The dispatch mode and the module stack. ``entered``: a module whose forward already
        began (a forward pre-hook enters the mode), named as if its own hook had run."""
        instrument = self
        producers = WeakIdKeyDictionary()  # 3-D tensors -> "conv" | "linear" (unit axis choice)

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
                kwargs = kwargs or {}
                observed = instrument.observe(func, args, kwargs, producers)
                out = func(*args, **kwargs)
                instrument._track(func, args, kwargs, out)
                if instrument._pending:
                    instrument._consume(func, args, out)
                instrument.after_call(func, args, kwargs, out, observed, producers)
                return out

        try:
            with self.modules.active(entered), _Mode():
                yield
        finally:
            self._pending_out.clear()
