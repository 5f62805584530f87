"""Gradient flow per site: a second pass over the calibration data, with autograd.

Per site, over every element of the activation (samples x positions x units):

- RMS of dL/d(output) and of dL/d(pre-activation), where L is the loss of the sample the
  element belongs to (the sum over samples is differentiated, so the numbers do not depend on
  the batch size or the number of samples);
- the fraction of elements where dL/d(pre-activation) is exactly 0, split into the part the
  activation's own mask explains (pre-activation <= lower bound, or >= upper bound for bounded
  activations) and the part that was already 0 downstream (the mask passes, but dL/d(output)
  was 0: MaxPool's backward zeroes most of a stem ReLU's gradient, which is not death);
- the fraction of elements where the mask passes gradient (pass-through), and where
  dL/d(output) is 0;
- the norm of the gradient of the mean loss with respect to the weight of the Conv/Linear that
  feeds the site (found through BatchNorm, see ``reludoctor.evidence``), and that weight's norm.

The loss: cross-entropy against labels when given; else cross-entropy against the model's own
argmax for classifier-shaped outputs ([N, C], C > 1); else 0.5 * ||output||^2.

How: tensor hooks (``register_hook``) on each activation's input and output, never module
backward hooks (those raise with inplace ReLU). A hook registered on a tensor before an inplace
op receives the gradient with respect to its value before that op, so an inplace ``relu_``'s
pre-activation gradient is exact. Sites are found as the dead-unit pass finds them, so names and
order match: probes inserted before and after each activation node of a fresh copy of the
exported graph (``ExportedProgram.module()``), or, for models observed with TorchDispatchMode
(TorchScript, data-dependent control flow), the activation's autograd node, found from the
tensor the mode saw. ONNX models go through onnx2torch when it is installed.

The model is never changed: eval mode (as in the dead-unit pass), no optimizer, and
``torch.autograd.grad`` computes the gradients without writing any parameter's ``.grad``
(each one is checked, and restored, afterwards anyway).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from reludoctor.errors import DataError, ReludoctorError, UsageError
from reludoctor.instrument.sites import unique_names
from reludoctor.instrument.torch_export import activation_nodes
from reludoctor.report import GradientInfo, SiteGradient, SiteStats

LOSS_LABELS = "cross-entropy-labels"
LOSS_ARGMAX = "cross-entropy-argmax"
LOSS_HALF_SQUARED = "half-squared-norm"
LOSSES = (LOSS_LABELS, LOSS_ARGMAX, LOSS_HALF_SQUARED)
# Autograd nodes of ReLU-family ops (dispatch path): the node's hook sees both gradients.
ACTIVATION_BACKWARD = ("ReluBackward", "HardtanhBackward", "ThresholdBackward", "ClampMinBackward",
                       "ClampBackward", "LeakyReluBackward", "PreluKernelBackward")
MASKLESS_OPS = ("leaky_relu", "prelu")  # their gradient never is 0 by the mask


class GradientsUnavailable(Exception):
    """Gradient statistics cannot be computed for this model; the message says why."""


@dataclass
class _Context:
    valid: int | None = None  # rows of the current batch that are real (fixed-batch padding)


class SiteAccumulator:
    """Streaming gradient statistics of one site; device tensors, read back once."""

    def __init__(self, name: str, op: str, lower: float, upper: float | None, context: _Context):
        self.name = name
        self.op = op
        self.lower = lower
        self.upper = upper
        self.masks = op not in MASKLESS_OPS
        self.context = context
        self.blocked: Any = None  # this batch's mask (True: the activation blocks gradient)
        self.executed = False
        self.hooked = False  # a gradient hook was placed (the activation's input requires grad)
        self.failure: str | None = None
        self._state: dict[str, Any] | None = None

    def _rows(self, tensor: Any) -> Any:
        valid = self.context.valid
        return tensor if valid is None or tensor.ndim == 0 else tensor[:valid]

    def _init(self, device: Any) -> dict[str, Any]:
        import torch

        if self._state is None:
            self._state = {key: torch.zeros((), dtype=torch.float64, device=device)
                           for key in ("sq_out", "sq_pre")}
            self._state.update({key: torch.zeros((), dtype=torch.int64, device=device)
                                for key in ("elements", "blocked", "nz_pre_blocked", "nz_pre_open",
                                            "nz_out")})
        return self._state

    def forward(self, pre: Any) -> None:
        """The pre-activation, before the op runs: its mask is kept for the backward hooks."""
        import torch

        x = self._rows(pre.detach())
        state = self._init(x.device)
        self.executed = True
        if self.masks and x.is_floating_point():
            blocked = x <= self.lower
            if self.upper is not None:
                blocked = blocked | (x >= self.upper)
        else:
            blocked = torch.zeros(x.shape, dtype=torch.bool, device=x.device)
        self.blocked = blocked
        state["elements"] += x.numel()
        state["blocked"] += blocked.sum()

    def backward_pre(self, grad: Any) -> None:
        if grad is None or self._state is None or self.blocked is None:
            return
        g = self._rows(grad.detach())
        if g.shape != self.blocked.shape:
            self.failure = f"gradient shape {tuple(g.shape)} differs from the activation's"
            return
        state = self._state
        nonzero = g != 0
        state["sq_pre"] += g.double().pow(2).sum()
        state["nz_pre_blocked"] += (nonzero & self.blocked).sum()
        state["nz_pre_open"] += (nonzero & ~self.blocked).sum()

    def backward_out(self, grad: Any) -> None:
        if grad is None or self._state is None:
            return
        g = self._rows(grad.detach())
        state = self._state
        state["sq_out"] += g.double().pow(2).sum()
        state["nz_out"] += (g != 0).sum()

    def end_batch(self) -> None:
        self.blocked = None

    def result(self) -> SiteGradient | None:
        if not self.executed or not self.hooked or self._state is None:
            return None
        s = {key: value.item() for key, value in self._state.items()}
        n = s["elements"]
        if n == 0:
            return None
        blocked, opened = s["blocked"], n - s["blocked"]
        zero_mask = (blocked - s["nz_pre_blocked"]) / n
        zero_down = (opened - s["nz_pre_open"]) / n
        return SiteGradient(
            pass_through=opened / n,
            rms_output=math.sqrt(s["sq_out"] / n),
            rms_preactivation=math.sqrt(s["sq_pre"] / n),
            zero_fraction=(n - s["nz_pre_blocked"] - s["nz_pre_open"]) / n,
            zero_by_mask=zero_mask,
            zero_downstream=zero_down,
            output_zero_fraction=1.0 - s["nz_out"] / n,
        )


# ----------------------------------------------------------------------------- labels and loss


def load_labels(labels: Any) -> Any:
    """Labels as a tensor: a path (.npy, read without pickle), an array or a tensor; integer
    class indices [N] (or [N, ...] for dense outputs), or float class probabilities [N, C]."""
    import torch

    if labels is None:
        return None
    source = str(labels) if isinstance(labels, (str, Path)) else f"in-memory {type(labels).__name__}"
    if isinstance(labels, (str, Path)):
        from reludoctor.data import read_labels

        labels = read_labels(labels)  # untrusted like --data: regular file, checked, noted
    if isinstance(labels, torch.Tensor):
        tensor = labels.detach().cpu()
    else:
        array = np.asarray(labels)
        if array.dtype == object or array.dtype.kind not in "iufb":
            raise DataError(f"{source}: labels hold {array.dtype} values, not numbers",
                            "pass integer class indices")
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim == 0:
        raise DataError(f"{source}: labels are a scalar", "pass one label per sample")
    if tensor.is_floating_point():
        if tensor.ndim == 1:
            if not bool(torch.all(tensor == tensor.round())):
                raise DataError(f"{source}: labels are fractional", "pass integer class indices")
            tensor = tensor.long()
        else:
            tensor = tensor.float()
    else:
        tensor = tensor.long()
    return tensor


def choose_loss(output: Any, labels: Any) -> str:
    if labels is not None:
        return LOSS_LABELS
    if output.is_floating_point() and output.ndim == 2 and output.shape[1] > 1:
        return LOSS_ARGMAX
    return LOSS_HALF_SQUARED


def loss_of(kind: str, output: Any, labels: Any) -> Any:
    """The summed (not averaged) loss of a batch: each sample's gradient is its own."""
    import torch.nn.functional as F

    out = output.float()
    if kind == LOSS_LABELS:
        return F.cross_entropy(out, labels.to(out.device), reduction="sum")
    if kind == LOSS_ARGMAX:
        return F.cross_entropy(out, out.detach().argmax(1), reduction="sum")
    return 0.5 * out.pow(2).sum()


def _output_tensors(output: Any, depth: int = 0) -> Iterator[Any]:
    """The tensors in a model's output, in order: a tensor; a dict, a Hugging Face
    ``ModelOutput`` or a dataclass (its ``logits`` first); a tuple or list; nested up to 8 deep."""
    import dataclasses

    import torch

    if isinstance(output, torch.Tensor):
        yield output
        return
    if depth > 8 or output is None or isinstance(output, (str, bytes, int, float, bool)):
        return
    if isinstance(output, dict) or hasattr(output, "keys") and hasattr(output, "__getitem__"):
        try:
            items = [(key, output[key]) for key in output.keys()]
        except Exception:  # noqa: BLE001 - an object that only looks like a mapping
            items = []
    elif dataclasses.is_dataclass(output) and not isinstance(output, type):
        items = [(f.name, getattr(output, f.name, None)) for f in dataclasses.fields(output)]
    elif isinstance(output, (tuple, list)):
        items = list(enumerate(output))
    else:
        return
    items.sort(key=lambda item: item[0] != "logits")  # stable: logits first, the rest in order
    for _, value in items:
        yield from _output_tensors(value, depth + 1)


def _first_tensor(output: Any) -> Any:
    """The output the gradient loss is taken on: the first floating-point tensor of the output
    (``logits`` first in a dict, ``ModelOutput`` or dataclass)."""
    for leaf in _output_tensors(output):
        if leaf.is_floating_point():
            return leaf
    raise GradientsUnavailable("the model has no floating-point output to differentiate")


# ----------------------------------------------------------------------------- the pass


@contextlib.contextmanager
def _grads_restored(params: list[Any]) -> Iterator[None]:
    """Whatever happens, every parameter's .grad is exactly what it was (None stays None)."""
    saved = [(p, p.grad) for p in params]
    try:
        yield
    finally:
        for param, grad in saved:
            if param.grad is not grad:
                param.grad = grad


def _unique_params(params: Any) -> list[Any]:
    seen, out = set(), []
    for param in params:
        if id(param) not in seen:
            seen.add(id(param))
            out.append(param)
    return out


@dataclass
class _Pass:
    forward: Callable[..., Any]
    accumulators: list[SiteAccumulator]
    params: list[Any]  # every parameter of the forward's module (for .grad restoring)
    producers: dict[str, Any] = field(default_factory=dict)  # site name -> producer weight param
    before_forward: Callable[[], None] | None = None
    after_forward: Callable[[], None] | None = None
    context: _Context = field(default_factory=_Context)


def _run(plan: _Pass, calibration: Any, *, device: Any, batch_size: int, fixed_batch: int | None,
         labels: Any, limit: int | None) -> tuple[str, int, dict[str, float]]:
    """Forward + backward over every calibration batch. Returns (loss, samples, producer
    gradient norms of the mean loss)."""
    import torch

    from reludoctor.runner import _pad, _to_tensor

    if fixed_batch is not None:
        batch_size = fixed_batch
    trainable = [p for p in plan.params if p.requires_grad]
    weights = {name: p for name, p in plan.producers.items() if p is not None and p.requires_grad}
    weight_index = {id(p): i for i, p in enumerate(trainable)}
    sums: dict[int, Any] = {}
    loss_kind: str | None = None
    seen = 0
    context = plan.context
    binding = calibration.binding  # how a batch is passed: by position or name, constants, axes
    # Gradients even when the caller runs scan() under no_grad or inference_mode.
    with _grads_restored(plan.params), torch.inference_mode(False), torch.enable_grad():
        try:
            batches = calibration.batches(batch_size)
            for arrays in batches:
                tensors = tuple(_to_tensor(a, device) for a in arrays)
                rows = int(tensors[0].shape[0])
                if fixed_batch is not None and rows < fixed_batch:
                    from reludoctor.data import check_padding

                    check_padding(tensors, fixed_batch, calibration.source)
                    tensors = _pad(tensors, fixed_batch)
                    context.valid = rows
                else:
                    context.valid = None
                leaves = [t.detach().clone().requires_grad_() if t.is_floating_point() else t
                          for t in tensors]
                inputs = [leaf.clone() if leaf.requires_grad else leaf for leaf in leaves]
                batch_labels = None
                if labels is not None:
                    if labels.shape[0] < seen + rows:
                        raise DataError(f"labels: {labels.shape[0]} labels for at least {seen + rows} "
                                        "samples", "pass one label per calibration sample, in order")
                    batch_labels = labels[seen:seen + rows]
                if plan.before_forward is not None:
                    plan.before_forward()
                try:
                    output = _first_tensor(binding.call(plan.forward, inputs, device))
                except (GradientsUnavailable, ReludoctorError):
                    raise
                except Exception as exc:
                    raise GradientsUnavailable(f"the model failed with autograd enabled: "
                                               f"{type(exc).__name__}: {_first_line(exc)}") from exc
                if plan.after_forward is not None:
                    plan.after_forward()
                if output.ndim > 0 and output.shape[0] == tensors[0].shape[0]:
                    output = output[:rows]  # the padded rows of a fixed-batch model's last batch
                elif context.valid is not None:
                    raise GradientsUnavailable("the output has no batch axis to drop the padding from")
                if loss_kind is None:
                    loss_kind = choose_loss(output, batch_labels)
                try:
                    loss = loss_of(loss_kind, output, batch_labels)
                except (IndexError, RuntimeError, ValueError) as exc:
                    if loss_kind == LOSS_LABELS:
                        raise DataError(f"labels do not fit the model's output {tuple(output.shape)}: "
                                        f"{_first_line(exc)}",
                                        "pass class indices in [0, classes), one per sample") from exc
                    raise
                sources = [leaf for leaf in leaves if leaf.requires_grad] + trainable
                if not loss.requires_grad or not sources:
                    raise GradientsUnavailable("the output does not depend on any input or parameter "
                                               "that requires grad")
                try:
                    grads = torch.autograd.grad(loss, sources, allow_unused=True)
                except RuntimeError as exc:  # an op without a derivative, a custom autograd.Function
                    raise GradientsUnavailable(f"the backward pass failed: {_first_line(exc)}") from exc
                offset = len(sources) - len(trainable)
                for param in weights.values():
                    if id(param) not in weight_index:
                        continue
                    grad = grads[offset + weight_index[id(param)]]
                    if grad is not None:
                        key = id(param)
                        sums[key] = grad.detach().double() if key not in sums else sums[key] + grad.detach()
                for accumulator in plan.accumulators:
                    accumulator.end_batch()
                seen += rows
        finally:
            context.valid = None
            for accumulator in plan.accumulators:
                accumulator.end_batch()
    if seen == 0:
        raise GradientsUnavailable("the calibration data yielded no samples on a second pass "
                                   "(a one-shot iterator?)")
    if labels is not None and labels.shape[0] != seen and limit is None:
        raise DataError(f"labels: {labels.shape[0]} labels for {seen} calibration samples",
                        "pass one label per calibration sample, in order")
    norms = {}
    for name, param in weights.items():
        total = sums.get(id(param))
        norms[name] = 0.0 if total is None else float(total.norm().item()) / seen
    return loss_kind or LOSS_HALF_SQUARED, seen, norms


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


# ----------------------------------------------------------------------------- exported graphs


def _insert_probes(graph: Any, node: Any, accumulator: SiteAccumulator, index: int) -> None:
    """Probe calls around an activation node: before it, on its input (the forward statistics
    and a tensor hook for dL/d(pre-activation)); after it, a tensor hook on its output."""

    def before(x: Any, _acc: SiteAccumulator = accumulator) -> None:
        _acc.forward(x)
        if getattr(x, "requires_grad", False):
            x.register_hook(_acc.backward_pre)
            _acc.hooked = True

    def after(y: Any, _acc: SiteAccumulator = accumulator) -> None:
        if getattr(y, "requires_grad", False):
            y.register_hook(_acc.backward_out)

    before.__name__ = f"reludoctor_grad_in_{index}"
    after.__name__ = f"reludoctor_grad_out_{index}"
    with graph.inserting_before(node):
        graph.call_function(before, (node.args[0],))
    with graph.inserting_after(node):
        graph.call_function(after, (node,))


def graph_plan(graph_module: Any, evidence: dict[str, Any]) -> _Pass:
    """Probes before and after every activation node, named as instrument_graph_module does."""
    context = _Context()
    graph = graph_module.graph
    accumulators = []
    for index, (node, activation, _, name) in enumerate(activation_nodes(graph_module)):
        accumulator = SiteAccumulator(name, activation.op, activation.lower, activation.upper, context)
        _insert_probes(graph, node, accumulator, index)
        accumulators.append(accumulator)
    graph_module.recompile()
    params = dict(graph_module.named_parameters())
    producers = {name: params.get(ev.weight) for name, ev in evidence.items()}
    return _Pass(graph_module, accumulators, _unique_params(graph_module.parameters()), producers,
                 context=context)


# ----------------------------------------------------------------------------- TorchDispatchMode


def dispatch_plan(module: Any, unit_axis: int | None, static: Any, evidence: dict[str, Any]) -> _Pass:
    """Sites named by the dispatch instrumenter's own logic; per call, the mask is taken from the
    pre-activation the mode sees, and the gradients from the activation's autograd node."""
    from reludoctor.instrument.torch_dispatch import DispatchInstrument
    from reludoctor.observers import BatchContext

    context = _Context()

    class _Probe(DispatchInstrument):
        def __init__(self) -> None:
            super().__init__(module, BatchContext(), unit_axis)
            self.calls: list[tuple[SiteAccumulator, Any]] = []

        def observe(self, func: Any, args: tuple, kwargs: dict, producers: Any) -> Any:
            call = self.site_call(func, args, kwargs)
            if call is None:
                return None
            key, activation, path = call
            accumulator = self._observers.get(key)
            if accumulator is None:
                accumulator = SiteAccumulator(key[0], activation.op, activation.lower, activation.upper,
                                              context)
                self._observers[key] = accumulator
                self._specs[key] = (activation, path, 0)
                self._keys.append(key)
            accumulator.forward(args[0])
            return accumulator

        def after_call(self, func: Any, args: tuple, kwargs: dict, out: Any, observed: Any,
                       producers: Any) -> None:
            if observed is not None:
                self.calls.append((observed, out))

        def start(self) -> None:
            self.calls.clear()
            self.start_forward()

        def hook_nodes(self) -> None:
            for accumulator, out in self.calls:
                node = getattr(out, "grad_fn", None)
                if node is None:
                    continue
                if not type(node).__name__.startswith(ACTIVATION_BACKWARD):
                    accumulator.failure = (f"its output was changed in place afterwards "
                                           f"({type(node).__name__})")
                    continue

                def hook(grad_inputs: Any, grad_outputs: Any, _acc: SiteAccumulator = accumulator) -> None:
                    _acc.backward_out(grad_outputs[0])
                    _acc.backward_pre(grad_inputs[0] if grad_inputs else None)

                node.register_hook(hook)
                accumulator.hooked = True
            self.calls.clear()

    probe = _Probe()

    def forward(*args: Any) -> Any:
        import torch

        # TorchScript's profiling executor would fuse ops (and their autograd nodes) after a
        # few runs: run them one by one.
        with torch.jit.optimized_execution(False), probe.active():
            return probe.forward(*args)

    plan = _Pass(forward, [], _unique_params(getattr(module, "parameters", lambda: [])()),
                 before_forward=probe.start, after_forward=probe.hook_nodes, context=context)
    params = dict(getattr(module, "named_parameters", lambda: [])())
    plan.producers = {name: params.get(ev.weight) for name, ev in evidence.items()}
    plan.probe = probe  # type: ignore[attr-defined]
    plan.static = static  # type: ignore[attr-defined]
    return plan


def _finish_dispatch(plan: _Pass) -> None:
    """Names of the dispatch sites (the same as the dead-unit pass), onto the accumulators."""
    probe = plan.probe  # type: ignore[attr-defined]
    ordered = []
    for spec, accumulator in probe.sites(plan.static):  # type: ignore[attr-defined]
        accumulator.name = spec.name
        ordered.append(accumulator)
    plan.accumulators = ordered


# ----------------------------------------------------------------------------- ONNX via onnx2torch


def onnx_plan(model: Any, sites: list[SiteStats]) -> _Pass:
    """Convert with onnx2torch; probes around the converted module of each ONNX site."""
    try:
        from onnx2torch import convert
    except ImportError as exc:
        raise GradientsUnavailable(
            "onnx2torch is not installed (pip install 'reludoctor[gradients-onnx]')") from exc
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        graph_module = convert(copy)
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises many kinds
        raise GradientsUnavailable(f"onnx2torch cannot convert this model: {type(exc).__name__}: "
                                   f"{_first_line(exc)}") from exc
    nodes = list(model.graph.node)
    modules = [n for n in graph_module.graph.nodes if n.op == "call_module"]
    if len(modules) != len(nodes):
        raise GradientsUnavailable("onnx2torch's module does not map one to one onto the ONNX nodes")
    bases, picked = [], []
    for onnx_node, fx_node in zip(nodes, modules):
        if onnx_node.op_type in ("Relu", "Clip", "Max", "LeakyRelu", "PRelu") and onnx_node.input:
            bases.append(onnx_node.name or onnx_node.output[0])
            picked.append((onnx_node, fx_node))
    site_names = [site.name for site in sites]
    stats = {site.name: site for site in sites}
    onnx_names = {fx: onnx_node.name or onnx_node.output[0] for onnx_node, fx in zip(nodes, modules)}
    wanted = set(site_names)
    context = _Context()
    accumulators = []
    graph = graph_module.graph
    by_name = {}
    for (onnx_node, fx_node), name in zip(picked, unique_names(bases)):
        if name not in wanted or not fx_node.args or not hasattr(fx_node.args[0], "op"):
            continue
        by_name[name] = (onnx_node, fx_node)
    for index, name in enumerate(n for n in site_names if n in by_name):
        onnx_node, fx_node = by_name[name]
        op = {"Relu": "relu", "Clip": "clip", "Max": "relu", "LeakyRelu": "leaky_relu",
              "PRelu": "prelu"}[onnx_node.op_type]
        accumulator = SiteAccumulator(name, op, stats[name].lower_bound, stats[name].upper_bound,
                                      context)
        _insert_probes(graph, fx_node, accumulator, index)
        accumulators.append(accumulator)
    graph_module.recompile()
    graph_module.eval()
    producers = {}
    for accumulator in accumulators:
        producers[accumulator.name] = _onnx_producer(graph_module, by_name[accumulator.name][1],
                                                     onnx_names)
    plan = _Pass(graph_module, accumulators, _unique_params(graph_module.parameters()),
                 {k: v[1] for k, v in producers.items() if v is not None}, context=context)
    plan.producer_names = {k: v[0] for k, v in producers.items() if v is not None}  # type: ignore[attr-defined]
    return plan


def _onnx_producer(graph_module: Any, fx_node: Any, onnx_names: dict) -> tuple[str, Any] | None:
    import torch

    node = fx_node.args[0]
    for _ in range(4):
        if getattr(node, "op", None) != "call_module":
            return None
        sub = graph_module.get_submodule(node.target)
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and node.args:
            node = node.args[0]
            continue
        if isinstance(sub, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            return onnx_names.get(node, str(node.target)), sub.weight
        return None
    return None


# ----------------------------------------------------------------------------- entry points


def pass_through_estimate(site: SiteStats) -> float:
    """Where no gradient could be computed: the fraction of elements whose pre-activation is
    above the lower bound (the activation rate), with always-saturated units counted as 0.
    Exact for ReLU; an upper bound for bounded activations."""
    if site.op in MASKLESS_OPS:
        return 1.0
    rates = list(site.activation_rate)
    for unit in site.saturated_units or ():
        rates[unit] = 0.0
    return float(np.mean(rates)) if rates else 0.0


def unavailable(sites: list[SiteStats], reason: str) -> tuple[GradientInfo, dict[str, SiteGradient]]:
    return (GradientInfo(False, reason=reason),
            {s.name: SiteGradient(pass_through=pass_through_estimate(s)) for s in sites})


def with_attenuation(grads: dict[str, SiteGradient], order: list[str]) -> dict[str, SiteGradient]:
    """attenuation of a site: its RMS dL/d(pre-activation) over that of the next site in
    execution order (the gradient arrives from there); None for the last site or a zero RMS."""
    out = dict(grads)
    present = [name for name in order if name in grads and grads[name].rms_preactivation is not None]
    for here, after in zip(present, present[1:]):
        mine, theirs = grads[here].rms_preactivation, grads[after].rms_preactivation
        ratio = mine / theirs if theirs else None
        out[here] = replace(grads[here], attenuation=ratio if ratio is None or math.isfinite(ratio) else None)
    return out


def compute(loaded: Any, calibration: Any, sites: list[SiteStats], *, method: str, program: Any,
            device: Any, batch_size: int, unit_axis: int | None, labels: Any, limit: int | None,
            evidence: dict[str, Any], warn: Callable[[str], None],
            ) -> tuple[GradientInfo, dict[str, SiteGradient]]:
    """Gradient statistics for the observed ``sites``; unavailable (with the reason, and the
    pass-through estimate) where this model cannot be differentiated."""
    label_tensor = load_labels(labels)
    try:
        if loaded.format == "onnx":
            plan = onnx_plan(loaded.module, sites)
            plan.forward.to(device)
            via = "onnx2torch"
        elif method == "export":
            if program is None:
                raise GradientsUnavailable("no exported program to differentiate")
            graph_module = program.module()
            graph_module.to(device)
            plan = graph_plan(graph_module, evidence)
            via = "export"
        else:
            static = None
            if loaded.format == "torchscript":
                from reludoctor.instrument.torchscript_names import static_call_sites

                static = static_call_sites(loaded.module)
            plan = dispatch_plan(loaded.module, unit_axis, static, evidence)
            via = "dispatch"
        loss, samples, norms = _run(plan, calibration, device=device, batch_size=batch_size,
                                    fixed_batch=loaded.fixed_batch, labels=label_tensor, limit=limit)
        if via == "dispatch":
            _finish_dispatch(plan)
    except GradientsUnavailable as exc:
        warn(f"gradient statistics are unavailable for this model: {exc}")
        return unavailable(sites, str(exc))
    except UsageError:
        raise
    by_name = {a.name: a for a in plan.accumulators}
    observed = [s.name for s in sites]
    missing = [name for name in observed if name not in by_name]
    if missing and len(missing) == len(observed):
        reason = "the gradient pass found none of the scan's sites"
        warn(f"gradient statistics are unavailable for this model: {reason}")
        return unavailable(sites, reason)
    producer_names = getattr(plan, "producer_names", {})
    grads: dict[str, SiteGradient] = {}
    for site in sites:
        accumulator = by_name.get(site.name)
        result = accumulator.result() if accumulator is not None and accumulator.failure is None else None
        if result is None:
            if accumulator is not None and accumulator.failure:
                warn(f"no gradient statistics at {site.name}: {accumulator.failure}")
            elif accumulator is not None and accumulator.executed and not accumulator.hooked:
                warn(f"no gradient statistics at {site.name}: nothing before it requires grad")
            grads[site.name] = SiteGradient(pass_through=pass_through_estimate(site))
            continue
        weight = plan.producers.get(site.name)
        if weight is not None:
            layer = evidence[site.name].layer if site.name in evidence else producer_names.get(site.name)
            result = replace(result, producer=layer,
                             weight_grad_norm=norms.get(site.name) if weight.requires_grad else None,
                             weight_norm=float(weight.detach().double().norm().item()))
        elif site.name in evidence:
            result = replace(result, producer=evidence[site.name].layer)
        grads[site.name] = result
    grads = with_attenuation(grads, observed)
    return GradientInfo(True, loss=loss, method=via, samples=samples), grads
