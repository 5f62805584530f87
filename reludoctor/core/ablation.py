"""Measured ablation: what zeroing a site's dormant and near-dead units costs on the calibration data.

Candidates of a site: its tau-dormant and near-dead units that are not dead (a dead unit's ReLU
output is already 0 at every observed position: zeroing it changes nothing). "Zeroed": the
activation's output for the unit set to 0 at every position. Per batch, the model runs once
unchanged (the baseline) and once per variant; the variants are each site's candidates together
(joint) and, for the top-k candidates by a first-order score, each one alone. Per variant,
with y the baseline outputs and y' the ablated ones (every floating-point output tensor, real
rows only, over all the calibration data):

- output_change = ||y' - y||_2 / ||y||_2 (relative L2; 0 when y' == y, inf when ||y|| = 0 only)
- max_abs_change = max |y' - y|
- argmax_flips = fraction of predictions whose argmax over the first output changes: per sample
  for class scores [N, C>1], per real position for a language model's [N, T, V]; else none
- loss_change = (sum_n L_n(y') - sum_n L_n(y)) / N, L the gradient pass's loss
  (``core.gradients.choose_loss``); cross-entropy targets stay the baseline's argmax.

First-order score of unit u (the Taylor estimate of zeroing it, one autograd pass):
score_u = (1/N) sum_n |sum_p a_{n,p,u} * dL_n/da_{n,p,u}|, a the activation output, p the
positions. Cost per batch: one forward (baseline; with a backward for the scores when k > 0),
one per site (joint), then, when k > 0, one more baseline and min(k, candidates) per site
(singles): 1 + S + [k > 0] (1 + sum_sites min(k, candidates)) forwards for S sites.

How units are zeroed is the backend's (``Backend.ablator``, ``backends.torch.ablation``); here:
the candidates, the passes, the metrics and the report section.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable, Protocol, Sequence

from reludoctor.core.gradients import LOSS_ARGMAX, LOSS_LABELS, _output_tensors, batch_labels, choose_loss, loss_of
from reludoctor.core.observers import resolve_unit_axis
from reludoctor.report.model import AblatedUnit, Ablation, AblationChange, SiteAblation, SiteStats

# The metrics as the report states them (Ablation.metrics).
METRICS = {
    "output_change": "||y' - y||_2 / ||y||_2 over every floating-point output element of the calibration data",
    "max_abs_change": "max |y' - y| over every output element",
    "argmax_flips": "fraction of predictions whose argmax over the first output changes: per sample for "
                    "[N, C>1], per real position for [N, T, V>1] (other outputs: null)",
    "loss_change": "(sum_n L_n(y') - sum_n L_n(y)) / N, cross-entropy targets the baseline's argmax (or --labels)",
    "score": "(1/N) sum_n |sum_positions a * dL_n/da| (first-order estimate of zeroing the unit)",
}


class AblationUnavailable(Exception):
    """Ablation cannot run for this model; the message says why (the report's note)."""


class Ablator(Protocol):
    """A backend's handle on a model whose activation outputs can be zeroed (``Backend.ablator``)."""

    method: str  # export | dispatch | onnx2torch

    def forward(self, *args: Any, **kwargs: Any) -> Any: ...

    def start(self, step: Any) -> None:
        """Before each forward pass of the batch ``step`` (``core.batches.Step``)."""

    def select(self, site: str | None, units: Sequence[int]) -> None:
        """Zero ``units`` of ``site`` in the following forward passes (None: zero nothing)."""

    def record(self, on: bool) -> None:
        """Keep each site's activation output of the following forward passes (``take_outputs``)."""

    def take_outputs(self) -> dict[str, Any]:
        """Site name -> its activation output in the last recorded forward pass; forgotten after."""


def candidates(site: SiteStats) -> tuple[int, ...]:
    """The site's dormant and near-dead units that are not dead, sorted."""
    return tuple(sorted((set(site.dormant_units) | set(site.near_dead_units)) - set(site.dead_units)))


def forwards_per_batch(targets: dict[str, tuple[int, ...]], top: int) -> int:
    """The forward passes per batch (the backward of the scores, when k > 0, not counted); 0 when
    no site has candidates (nothing runs)."""
    if not targets:
        return 0
    singles = sum(min(top, len(units)) for units in targets.values())
    return 1 + len(targets) + (1 + singles if singles else 0)


def _real(tensor: Any, rows: int, padded: int, mask: Any) -> Any:
    """``tensor`` without the padding rows of a fixed-batch model's last batch, and with padded
    text positions zeroed where it has the attention mask's [N, T] leading axes."""
    if tensor.ndim and tensor.shape[0] == padded:
        tensor = tensor[:rows]
    if mask is not None and tensor.ndim >= 2 and tuple(tensor.shape[:2]) == tuple(mask.shape):
        tensor = tensor * mask.reshape(*mask.shape, *(1,) * (tensor.ndim - 2)).to(tensor.dtype)
    return tensor


def outputs_of(output: Any, rows: int, padded: int, mask: Any = None) -> list[Any]:
    """The floating-point tensors of a model output (``core.gradients`` order), real rows and
    positions only (``_real``), detached."""
    return [_real(t, rows, padded, mask).detach() for t in _output_tensors(output) if t.is_floating_point()]


class Change:
    """Streaming sums of one variant against the baseline (float64, on the model's device)."""

    def __init__(self) -> None:
        self.sq_diff: Any = 0.0
        self.sq_base: Any = 0.0
        self.max_abs: Any = 0.0
        self.flips: Any = 0
        self.predictions: Any = 0  # where argmax is compared: samples, or real sequence positions
        self.loss: Any = 0.0
        self.samples = 0
        self.classifier = False

    def add(self, base: list[Any], ablated: list[Any], rows: int, loss: Any, mask: Any = None) -> None:
        """One batch: the baseline's and the variant's outputs (real rows), the variant's summed
        loss; ``mask`` ([rows, T] bool): a text batch's real positions."""
        import torch

        if len(base) != len(ablated):
            raise AblationUnavailable("the ablated model returned other outputs than the original")
        for y, z in zip(base, ablated):
            diff = (z.double() - y.double())
            self.sq_diff = self.sq_diff + diff.pow(2).sum()
            self.sq_base = self.sq_base + y.double().pow(2).sum()
            if diff.numel():
                self.max_abs = torch.maximum(torch.as_tensor(self.max_abs, dtype=torch.float64,
                                                             device=diff.device), diff.abs().max())
        first, other = base[0], ablated[0]
        if first.ndim == 2 and first.shape[1] > 1:  # class scores [N, C]: one prediction per sample
            self.classifier = True
            self.flips = self.flips + (first.argmax(1) != other.argmax(1)).sum()
            self.predictions = self.predictions + first.shape[0]
        elif first.ndim == 3 and first.shape[2] > 1:  # a language model's [N, T, V]: one per real position
            self.classifier = True
            flipped = first.argmax(2) != other.argmax(2)
            if mask is not None and tuple(mask.shape) == tuple(flipped.shape):
                flipped = flipped & mask
                self.predictions = self.predictions + mask.sum()
            else:
                self.predictions = self.predictions + flipped.numel()
            self.flips = self.flips + flipped.sum()
        self.loss = self.loss + loss
        self.samples += rows

    def result(self, baseline_loss: float) -> AblationChange:
        sq_diff, sq_base = float(self.sq_diff), float(self.sq_base)
        relative = 0.0 if sq_diff == 0 else math.sqrt(sq_diff / sq_base) if sq_base > 0 else math.inf
        n = max(self.samples, 1)
        return AblationChange(loss_change=(float(self.loss) - baseline_loss) / n, output_change=relative,
                              max_abs_change=float(self.max_abs),
                              argmax_flips=float(self.flips) / max(float(self.predictions), 1.0)
                              if self.classifier else None)


class _Loss:
    """The per-batch summed loss of ``core.gradients``, its targets fixed by the baseline."""

    def __init__(self, labels: Any) -> None:
        self.labels = labels
        self.kind: str | None = None

    def targets(self, first: Any, start: int, rows: int) -> Any:
        if self.kind is None:
            self.kind = choose_loss(first, self.labels)
        if self.kind == LOSS_LABELS:
            return batch_labels(self.labels, start, rows)
        if self.kind == LOSS_ARGMAX:
            return first.detach().argmax(1)
        return None

    def __call__(self, first: Any, targets: Any) -> Any:
        kind = LOSS_LABELS if targets is not None else self.kind
        return loss_of(kind, first, targets)


def _unit_sums(a: Any, g: Any, axis: int) -> Any:
    """[rows, units]: sum over positions of a * g, per sample and unit."""
    product = (a.double() * g.double())
    if product.ndim == 1:
        return product.unsqueeze(1)
    axis = resolve_unit_axis(product.ndim, axis)
    others = tuple(d for d in range(1, product.ndim) if d != axis)
    summed = product.sum(others) if others else product
    return summed


def compute(make_ablator: Callable[[dict[str, int]], Ablator], calibration: Any, stats: list[SiteStats], *,
            device: Any, batch_size: int, fixed_batch: int | None, labels: Any, top: int,
            patterns: Sequence[str] = (), warn: Callable[[str], None] = lambda _m: None) -> Ablation:
    """The report's ``ablation`` section: per selected site, the joint and top-k single changes."""
    from reludoctor.core.gradients import load_labels

    chosen = [s for s in stats if not patterns or any(fnmatch.fnmatchcase(s.name, p) for p in patterns)]
    targets = {s.name: candidates(s) for s in chosen if candidates(s)}
    section = dict(top_k=top, forwards_per_batch=forwards_per_batch(targets, top))
    try:
        ablator = make_ablator({s.name: s.unit_axis for s in chosen})
    except AblationUnavailable as exc:  # nothing runs
        return Ablation(False, top_k=top, forwards_per_batch=0, note=str(exc))
    if not targets:
        note = "no site has dormant or near-dead units that are alive: nothing to ablate" if chosen else \
            f"--ablate-sites {', '.join(patterns)} matches no site (sites: {', '.join(s.name for s in stats[:6])}" \
            f"{', ...' if len(stats) > 6 else ''})"
        return Ablation(True, method=ablator.method, sites=tuple(SiteAblation(s.name, (), None, ()) for s in chosen),
                        note=note, **section)
    run = _Passes(ablator, calibration, batch_size, fixed_batch, device, _Loss(load_labels(labels)))
    try:
        axes = {s.name: s.unit_axis for s in chosen} if top > 0 else None  # no singles: no scores
        joint, scores, baseline_loss, samples = run.joint(targets, axes, warn)
        ranked = {name: _top(units, scores[name], top) for name, units in targets.items()}
        singles = run.singles(ranked)
    except AblationUnavailable as exc:  # found while running (no floating-point output, ...)
        return Ablation(False, method=ablator.method, note=str(exc), **section)
    sites = []
    for site in chosen:
        if site.name not in targets:
            sites.append(SiteAblation(site.name, (), None, ()))
            continue
        per_unit = []
        for unit in ranked[site.name]:
            measured = singles[(site.name, unit)].result(baseline_loss)
            score = scores[site.name]
            per_unit.append(AblatedUnit(unit, None if score is None else float(score[unit]) / samples,
                                        measured.loss_change, measured.output_change,
                                        measured.max_abs_change, measured.argmax_flips))
        sites.append(SiteAblation(site.name, targets[site.name], joint[site.name].result(baseline_loss),
                                  tuple(per_unit)))
    return Ablation(True, method=ablator.method, loss=run.loss.kind, samples=samples,
                    sites_ablated=len(targets), metrics=dict(METRICS), sites=tuple(sites), **section)


class _Passes:
    """The two passes over the calibration data, on one ablator."""

    def __init__(self, ablator: Ablator, calibration: Any, batch_size: int, fixed_batch: int | None,
                 device: Any, loss: _Loss) -> None:
        self.ablator, self.calibration, self.loss = ablator, calibration, loss
        self.batch_size, self.fixed_batch, self.device = batch_size, fixed_batch, device

    def _steps(self) -> Any:
        from reludoctor.core.batches import BatchLoop, to_torch

        return BatchLoop(self.calibration, self.batch_size, fixed_batch=self.fixed_batch,
                         transfer=to_torch(self.device), prefetch=0)

    def _call(self, step: Any) -> Any:
        self.ablator.start(step)
        with step.guard():
            return step.binding.call(self.ablator.forward, step.inputs, self.device)

    def joint(self, targets: dict[str, tuple[int, ...]], axes: dict[str, int] | None, warn: Callable[[str], None],
              ) -> tuple[dict[str, Change], dict[str, Any], float, int]:
        """Per batch: the baseline, with autograd for the scores (``axes``: the sites' unit axes;
        None: no scores), then each site's candidates zeroed together. Returns (joint changes,
        per-unit score sums, baseline loss, samples)."""
        import torch

        ablator, loss = self.ablator, self.loss
        joint = {name: Change() for name in targets}
        scores: dict[str, Any] = {name: None for name in targets}
        baseline_loss, samples = 0.0, 0
        scoring = axes is not None  # until a backward pass fails: then no unit has a score
        with torch.inference_mode(False), self._steps() as steps:
            for step in steps:
                rows, padded = step.rows, int(step.inputs[0].shape[0])
                # inputs that require grad: the scores reach sites before any parameter too
                if scoring:
                    step.inputs = tuple(t.detach().clone().requires_grad_() if t.is_floating_point() else t
                                        for t in step.inputs)
                ablator.select(None, ())
                ablator.record(scoring)
                with torch.enable_grad() if scoring else torch.inference_mode():
                    output = self._call(step)
                ablator.record(False)
                mask = _mask(step)
                ys = outputs_of(output, rows, padded, mask)
                first = _output_with_grad(output, rows, padded, mask)
                wanted = loss.targets(first, step.start, rows)
                batch_loss = loss(first, wanted)
                if scoring and not _add_scores(scores, ablator.take_outputs(), batch_loss, axes, step.valid,
                                                  padded):
                    scoring = False
                    scores = {name: None for name in targets}
                    warn("--ablate: no first-order scores (the backward pass failed); the top-k are the "
                         "lowest-numbered candidates")
                baseline_loss = baseline_loss + batch_loss.detach().double()  # read back once, at the end
                samples += rows
                del output, first, batch_loss
                with torch.inference_mode():
                    for name, units in targets.items():
                        ablator.select(name, units)
                        ablated = outputs_of(self._call(step), rows, padded, mask)
                        joint[name].add(ys, ablated, rows, loss(ablated[0], wanted).double(), mask)
                    ablator.select(None, ())
        return joint, scores, float(baseline_loss), samples

    def singles(self, ranked: dict[str, tuple[int, ...]]) -> dict[tuple[str, int], Change]:
        """Per batch: the baseline, then each ranked unit zeroed alone."""
        import torch

        ablator, loss = self.ablator, self.loss
        singles = {(name, u): Change() for name, units in ranked.items() for u in units}
        if not singles:
            return singles
        with torch.inference_mode(), self._steps() as steps:
            for step in steps:
                rows, padded = step.rows, int(step.inputs[0].shape[0])
                ablator.select(None, ())
                mask = _mask(step)
                ys = outputs_of(self._call(step), rows, padded, mask)
                wanted = loss.targets(ys[0], step.start, rows)
                for (name, unit), change in singles.items():
                    ablator.select(name, (unit,))
                    ablated = outputs_of(self._call(step), rows, padded, mask)
                    change.add(ys, ablated, rows, loss(ablated[0], wanted).double(), mask)
                ablator.select(None, ())
        return singles


def _output_with_grad(output: Any, rows: int, padded: int, mask: Any) -> Any:
    """The first floating-point output, still attached to the graph (for the scores)."""
    for tensor in _output_tensors(output):
        if tensor.is_floating_point():
            return _real(tensor, rows, padded, mask)
    raise AblationUnavailable("the model has no floating-point output")


def _mask(step: Any) -> Any:
    """The batch's real text positions ([rows, T] bool), or None (no attention mask)."""
    mask = step.mask
    return None if mask is None else mask[:step.rows]


def _add_scores(scores: dict[str, Any], outputs: dict[str, Any], batch_loss: Any, axes: dict[str, int],
                valid: int | None, padded: int) -> bool:
    """Per unit, sum over samples of |sum_positions a * dL/da|, into ``scores`` (None: no
    gradient reached the site). False when the backward pass failed."""
    import torch

    names = [n for n in scores if n in outputs and getattr(outputs[n], "requires_grad", False)]
    if not names or not batch_loss.requires_grad:
        return True
    try:
        grads = torch.autograd.grad(batch_loss, [outputs[n] for n in names], allow_unused=True)
    except RuntimeError:  # an op without a derivative, an output changed in place afterwards
        return False
    for name, grad in zip(names, grads):
        if grad is None:
            continue
        a, g, axis = outputs[name].detach(), grad.detach(), axes[name]
        if a.ndim >= 2 and a.shape[0] != padded and a.shape[0] % padded == 0:
            # a sequence flattened to rows, [N*T, F] (OPT's FFN): back to [N, T, F], units last
            axis = resolve_unit_axis(a.ndim, axis) - a.ndim
            a, g = a.reshape(padded, -1, *a.shape[1:]), g.reshape(padded, -1, *g.shape[1:])
        if valid is not None and a.shape[0] == padded:  # a fixed-batch model's padding rows
            a, g = a[:valid], g[:valid]
        per_unit = _unit_sums(a, g, axis).abs().sum(0)
        scores[name] = per_unit if scores[name] is None else scores[name] + per_unit
    return True


def _top(units: tuple[int, ...], score: Any, k: int) -> tuple[int, ...]:
    """The k candidates with the largest score (ties and no score: the lowest index first)."""
    if score is None:
        return units[:k]
    values = score.cpu().tolist()
    return tuple(sorted(units, key=lambda u: (-values[u], u))[:k])


def measure(original: Callable[..., Any], changed: Callable[..., Any], calibration: Any, *, batch_size: int,
            fixed_batch: int | None, device: Any = None) -> AblationChange:
    """The change from ``original`` to ``changed`` (two callables of the model's inputs) on the
    calibration data, in the metrics ablation reports: what ``fix --max-output-change`` bounds."""
    import torch

    device = device or torch.device("cpu")
    loss, change, baseline_loss = _Loss(None), Change(), 0.0
    passes = _Passes(None, calibration, batch_size, fixed_batch, device, loss)
    with torch.inference_mode(), passes._steps() as steps:
        for step in steps:
            rows, padded = step.rows, int(step.inputs[0].shape[0])
            mask = _mask(step)
            with step.guard():
                ys = outputs_of(step.binding.call(original, step.inputs, device), rows, padded, mask)
                ys2 = outputs_of(step.binding.call(changed, step.inputs, device), rows, padded, mask)
            if not ys:
                raise AblationUnavailable("the model has no floating-point output")
            wanted = loss.targets(ys[0], step.start, rows)
            baseline_loss = baseline_loss + loss(ys[0], wanted).double()  # read back once, at the end
            change.add(ys, ys2, rows, loss(ys2[0], wanted).double(), mask)
    return change.result(float(baseline_loss))
