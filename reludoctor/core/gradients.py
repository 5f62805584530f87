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
  feeds the site (found through BatchNorm, see ``reludoctor.core.evidence``), and that weight's norm.

The loss: cross-entropy against labels when given; else cross-entropy against the model's own
argmax for classifier-shaped outputs ([N, C], C > 1); else 0.5 * ||output||^2.

How the sites are hooked is the backend's (``reludoctor.backends.torch.gradients``); here: the
statistics, the loss and the pass over the batches, the same for every plan.

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

from reludoctor import activations
from reludoctor.core.observers import BatchContext, resolve_unit_axis
from reludoctor.errors import DataError, ReludoctorError, UsageError, first_line
from reludoctor.report.model import GradientInfo, SiteGradient, SiteStats

LOSS_LABELS = "cross-entropy-labels"
LOSS_ARGMAX = "cross-entropy-argmax"
LOSS_HALF_SQUARED = "half-squared-norm"
LOSSES = (LOSS_LABELS, LOSS_ARGMAX, LOSS_HALF_SQUARED)


class GradientsUnavailable(Exception):
    """Gradient statistics cannot be computed for this model; the message says why."""


class SiteAccumulator:
    """Streaming gradient statistics of one site; device tensors, read back once."""

    def __init__(self, name: str, op: str, lower: float, upper: float | None, context: BatchContext):
        self.name = name
        self.op = op
        self.lower = lower
        self.upper = upper
        self.masks = activations.grad_masked(op)
        self.context = context
        self.blocked: Any = None  # this batch's mask (True: the activation blocks gradient)
        self.executed = False
        self.hooked = False  # a gradient hook was placed (the activation's input requires grad)
        self.failure: str | None = None
        self._state: dict[str, Any] | None = None
        # The site's unit axis (batch axis included), set by ``compute`` from the scan's sites:
        # per-unit sums of |dL/d(output)| for GraMa (core/definitions.py). None: not kept.
        self.unit_axis: int | None = None
        self._unit_abs_out: Any = None

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
        if self.unit_axis is not None:
            self._add_unit_abs(g)

    def _add_unit_abs(self, g: Any) -> None:
        if g.ndim == 1:  # [N]: one unit, as the dead-unit observer sees it
            g = g.unsqueeze(1)
        try:
            axis = resolve_unit_axis(g.ndim, self.unit_axis)
        except ValueError:
            self._stop_unit_abs()
            return
        per_unit = g.double().abs().sum(tuple(d for d in range(g.ndim) if d != axis))
        if self._unit_abs_out is None:
            self._unit_abs_out = per_unit
        elif self._unit_abs_out.shape == per_unit.shape:
            self._unit_abs_out += per_unit
        else:
            self._stop_unit_abs()

    def _stop_unit_abs(self) -> None:
        # Units that do not line up with the scan's: no per-unit values (GraMa null at this site);
        # the site's other gradient statistics stand.
        self.unit_axis = None
        self._unit_abs_out = None

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
        unit_abs = None
        if self._unit_abs_out is not None and self._unit_abs_out.numel():
            sums = self._unit_abs_out.cpu().numpy()
            unit_abs = tuple(float(v) for v in sums / (n / sums.shape[0]))  # each unit's share of elements
        return SiteGradient(
            pass_through=opened / n,
            rms_output=math.sqrt(s["sq_out"] / n),
            rms_preactivation=math.sqrt(s["sq_pre"] / n),
            zero_fraction=(n - s["nz_pre_blocked"] - s["nz_pre_open"]) / n,
            zero_by_mask=zero_mask,
            zero_downstream=zero_down,
            output_zero_fraction=1.0 - s["nz_out"] / n,
            unit_abs_output=unit_abs,
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
        from reludoctor.data.arrays import read_labels

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


def batch_labels(labels: Any, start: int, rows: int) -> Any:
    """The labels of samples ``start .. start + rows - 1``; DataError when there are too few."""
    if labels.shape[0] < start + rows:
        raise DataError(f"labels: {labels.shape[0]} labels for at least {start + rows} samples",
                        "pass one label per calibration sample, in order")
    return labels[start:start + rows]


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


def unique_params(params: Any) -> list[Any]:
    seen, out = set(), []
    for param in params:
        if id(param) not in seen:
            seen.add(id(param))
            out.append(param)
    return out


@dataclass
class GradientPass:
    forward: Callable[..., Any]
    accumulators: list[SiteAccumulator]
    params: list[Any]  # every parameter of the forward's module (for .grad restoring)
    producers: dict[str, Any] = field(default_factory=dict)  # site name -> producer weight param
    before_forward: Callable[[], None] | None = None
    after_forward: Callable[[], None] | None = None
    context: BatchContext = field(default_factory=BatchContext)
    method: str = ""  # the report's gradients.method: export | dispatch | onnx2torch
    finish: Callable[[GradientPass], None] | None = None  # after the last batch (names sites)


def _run(plan: GradientPass, calibration: Any, *, device: Any, batch_size: int, fixed_batch: int | None,
         labels: Any, limit: int | None) -> tuple[str, int, dict[str, float]]:
    """Forward + backward over every calibration batch. Returns (loss, samples, producer
    gradient norms of the mean loss)."""
    import torch

    from reludoctor.core.batches import BatchLoop, to_torch

    trainable = [p for p in plan.params if p.requires_grad]
    weights = {name: p for name, p in plan.producers.items() if p is not None and p.requires_grad}
    weight_index = {id(p): i for i, p in enumerate(trainable)}
    sums: dict[int, Any] = {}
    loss_kind: str | None = None
    context = plan.context
    # Gradients even when the caller runs scan() under no_grad or inference_mode.
    with _grads_restored(plan.params), torch.inference_mode(False), torch.enable_grad():
        steps = BatchLoop(calibration, batch_size, fixed_batch=fixed_batch, transfer=to_torch(device),
                          prefetch=0)
        try:
            for step in steps:
                tensors, rows, seen = step.inputs, step.rows, step.start
                context.valid = step.valid
                leaves = [t.detach().clone().requires_grad_() if t.is_floating_point() else t
                          for t in tensors]
                inputs = [leaf.clone() if leaf.requires_grad else leaf for leaf in leaves]
                wanted = None if labels is None else batch_labels(labels, seen, rows)
                if plan.before_forward is not None:
                    plan.before_forward()
                try:
                    output = _first_tensor(step.binding.call(plan.forward, inputs, device))
                except (GradientsUnavailable, ReludoctorError):
                    raise
                except Exception as exc:
                    raise GradientsUnavailable(f"the model failed with autograd enabled: "
                                               f"{type(exc).__name__}: {first_line(exc)}") from exc
                if plan.after_forward is not None:
                    plan.after_forward()
                if output.ndim > 0 and output.shape[0] == tensors[0].shape[0]:
                    output = output[:rows]  # the padded rows of a fixed-batch model's last batch
                elif context.valid is not None:
                    raise GradientsUnavailable("the output has no batch axis to drop the padding from")
                if loss_kind is None:
                    loss_kind = choose_loss(output, wanted)
                try:
                    loss = loss_of(loss_kind, output, wanted)
                except (IndexError, RuntimeError, ValueError) as exc:
                    if loss_kind == LOSS_LABELS:
                        raise DataError(f"labels do not fit the model's output {tuple(output.shape)}: "
                                        f"{first_line(exc)}",
                                        "pass class indices in [0, classes), one per sample") from exc
                    raise
                sources = [leaf for leaf in leaves if leaf.requires_grad] + trainable
                if not loss.requires_grad or not sources:
                    raise GradientsUnavailable("the output does not depend on any input or parameter "
                                               "that requires grad")
                try:
                    grads = torch.autograd.grad(loss, sources, allow_unused=True)
                except RuntimeError as exc:  # an op without a derivative, a custom autograd.Function
                    raise GradientsUnavailable(f"the backward pass failed: {first_line(exc)}") from exc
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
        finally:
            context.valid = None
            for accumulator in plan.accumulators:
                accumulator.end_batch()
    seen = steps.seen
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


# ----------------------------------------------------------------------------- entry points


def pass_through_estimate(site: SiteStats) -> float:
    """Where no gradient could be computed: the fraction of elements whose pre-activation is
    above the lower bound (the activation rate), with always-saturated units counted as 0.
    Exact for ReLU; an upper bound for bounded activations."""
    if not activations.grad_masked(site.op):
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


def compute(make_plan: Callable[[], GradientPass], calibration: Any, sites: list[SiteStats], *,
            device: Any, batch_size: int, fixed_batch: int | None, labels: Any, limit: int | None,
            evidence: dict[str, Any], warn: Callable[[str], None], unit_gradients: bool = False,
            ) -> tuple[GradientInfo, dict[str, SiteGradient]]:
    """Gradient statistics for the observed ``sites`` through the backend's plan
    (``Backend.gradient_plan``); unavailable (with the reason, and the pass-through estimate)
    where this model cannot be differentiated. ``unit_gradients``: also keep each unit's mean
    |dL/d(output)| (``SiteGradient.unit_abs_output``, for GraMa), one more reduction per backward."""
    label_tensor = load_labels(labels)
    axes = {site.name: site.unit_axis for site in sites} if unit_gradients else {}
    try:
        plan = make_plan()
        for accumulator in plan.accumulators:
            accumulator.unit_axis = axes.get(accumulator.name)
        loss, samples, norms = _run(plan, calibration, device=device, batch_size=batch_size,
                                    fixed_batch=fixed_batch, labels=label_tensor, limit=limit)
        if plan.finish is not None:
            plan.finish(plan)
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
    return GradientInfo(True, loss=loss, method=plan.method, samples=samples), grads
