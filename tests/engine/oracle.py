"""Independent oracles for the scan engine: numpy forwards, module-hook capture, numpy reductions.

Nothing here imports reludoctor. Pre-activations are obtained either by a hand-written numpy
forward (float64) from the model's weights, or by forward pre-hooks on the activation modules
of a deep copy of the model (a different mechanism from both of reludoctor's instruments);
they are then reduced per unit with numpy, following the definitions in DESIGN.md:

- dead: the pre-activation is never > lower at any position;
- activation_rate: positions where pre-activation > lower / positions;
- near-dead: alive and rate < threshold;
- dormant (Sokar et al. 2023): mean |output| over positions / mean of that over the site's
  units <= tau, output = clamp(pre, lower, upper);
- saturated (bounded activations): min pre-activation >= upper.

Comparisons tolerate float summation order only: a unit whose oracle value lies within a
tolerance (``eps`` absolute, or ``rel`` times the batch's largest magnitude) of a decision
threshold, without being equal to it, is "ambiguous" (float32 vs float64 may put it on
either side); callers assert how many ambiguous units they accept (zero for designed models).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn as nn


# ---------------------------------------------------------------------------------------------
# Per-unit reduction
# ---------------------------------------------------------------------------------------------
@dataclass
class OracleSite:
    """Per-unit reduction of one site's pre-activations (float64 numpy)."""

    name: str | None
    op: str | None
    axis: int
    lower: float
    upper: float | None
    eps: float
    rel: float | None = None  # if set, the tolerance is rel x the batch's max |value|
    tol: float = 0.0  # the largest tolerance used (absolute)
    shape: tuple[int, ...] | None = None
    samples: int = 0
    positions: int = 0
    positive: np.ndarray | None = None  # int64
    max: np.ndarray | None = None
    min: np.ndarray | None = None
    abs_out: np.ndarray | None = None  # sum of |clamp(pre, lower, upper)|
    near_lower: np.ndarray | None = None  # values within tol of lower, not equal (sign ambiguous)
    near_upper: np.ndarray | None = None

    def add(self, pre: Any) -> None:
        """Fold a batch of pre-activations [N, ...] (array or tensor) into the reduction."""
        if isinstance(pre, torch.Tensor):
            pre = pre.detach().cpu().double().numpy()
        pre = np.asarray(pre, dtype=np.float64)
        if pre.ndim == 1:
            pre = pre[:, None]
        axis = self.axis + pre.ndim if self.axis < 0 else self.axis
        if self.shape is None:
            self.shape = tuple(pre.shape[1:])
        assert tuple(pre.shape[1:]) == self.shape, (pre.shape, self.shape)
        units = pre.shape[axis]
        flat = np.moveaxis(pre, axis, -1).reshape(-1, units)  # [positions, units]
        out = np.clip(flat, self.lower, np.inf if self.upper is None else self.upper)
        tol = self.eps if self.rel is None else self.rel * float(np.abs(flat).max(initial=0.0))
        self.tol = max(self.tol, tol)
        stats = {
            "positive": (flat > self.lower).sum(0).astype(np.int64),
            "max": flat.max(0),
            "min": flat.min(0),
            "abs_out": np.abs(out).sum(0),
            "near_lower": _close(flat, self.lower, tol).sum(0),
            "near_upper": _close(flat, self.upper, tol).sum(0)
            if self.upper is not None else np.zeros(units, np.int64),
        }
        if self.positive is None:
            for key, value in stats.items():
                setattr(self, key, value)
        else:
            self.positive = self.positive + stats["positive"]
            self.max = np.maximum(self.max, stats["max"])
            self.min = np.minimum(self.min, stats["min"])
            self.abs_out = self.abs_out + stats["abs_out"]
            self.near_lower = self.near_lower + stats["near_lower"]
            self.near_upper = self.near_upper + stats["near_upper"]
        self.samples += pre.shape[0]
        self.positions += flat.shape[0]

    # derived ------------------------------------------------------------------------------
    @property
    def units(self) -> int:
        return int(self.positive.shape[0])

    @property
    def rate(self) -> np.ndarray:
        return self.positive / self.positions

    @property
    def dead(self) -> np.ndarray:
        return self.max <= self.lower

    def near_dead(self, threshold: float) -> np.ndarray:
        return ~self.dead & (self.rate < threshold)

    @property
    def score(self) -> np.ndarray:
        mean_abs = self.abs_out / self.positions
        layer = mean_abs.mean()
        return mean_abs / layer if layer > 0 else np.zeros_like(mean_abs)

    def dormant(self, tau: float) -> np.ndarray:
        return self.score <= tau

    @property
    def saturated(self) -> np.ndarray:
        assert self.upper is not None
        return self.min >= self.upper


def reduce_site(pre: Any, *, axis: int = 1, lower: float = 0.0, upper: float | None = None,
                name: str | None = None, op: str | None = None, eps: float = 1e-4,
                rel: float | None = None, batches: int | None = None) -> OracleSite:
    """Reduce a whole [N, ...] pre-activation array (optionally fed in chunks of ``batches``)."""
    site = OracleSite(name, op, axis, lower, upper, eps, rel)
    array = pre.detach().cpu().double().numpy() if isinstance(pre, torch.Tensor) else np.asarray(pre)
    step = batches or max(len(array), 1)
    for start in range(0, len(array), step):
        site.add(array[start:start + step])
    return site


# ---------------------------------------------------------------------------------------------
# Comparison of a reported site with the oracle
# ---------------------------------------------------------------------------------------------
def _close(values: np.ndarray, threshold: float, tol: float) -> np.ndarray:
    """Values too close to a threshold to decide a side. An exact tie is not ambiguous: it
    comes from exact arithmetic (all-zero inputs, zero weights), exact in any precision."""
    distance = np.abs(values - threshold)
    return (distance > 0) & (distance <= tol)


def _indices(mask: np.ndarray) -> set[int]:
    return {int(i) for i in np.flatnonzero(mask)}


def assert_site_matches(site: Any, oracle: OracleSite, *, near_dead: float = 1e-3,
                        dormant_tau: float = 0.025, max_ambiguous: int | None = 0,
                        check_name: bool = True, rtol: float = 1e-5, atol: float = 1e-4) -> int:
    """Compare a reludoctor ``SiteStats`` with the oracle field by field.

    Positive counts are compared exactly, except that a count may differ by at most the
    number of the unit's values within the oracle's tolerance of the lower bound. Decisions
    (dead, near-dead, dormant, saturated) are compared exactly on units whose oracle value is
    not within that tolerance of the decision threshold; floats (max, min, dormant score) with tolerances. Returns the
    number of units with a decision too close to call and asserts it is at most
    ``max_ambiguous`` (None: any number).
    """
    label = f"site {site.name!r}"
    if check_name and oracle.name is not None:
        assert site.name == oracle.name, f"{label}: expected name {oracle.name!r}"
    if oracle.op is not None:
        assert site.op == oracle.op, f"{label}: op {site.op!r} != {oracle.op!r}"
    assert site.unit_axis == (oracle.axis if oracle.axis >= 0 else oracle.axis + len(oracle.shape) + 1), \
        f"{label}: unit_axis {site.unit_axis} != {oracle.axis}"
    assert site.units == oracle.units, f"{label}: units {site.units} != {oracle.units}"
    assert tuple(site.shape) == tuple(oracle.shape), f"{label}: shape {site.shape} != {oracle.shape}"
    assert site.samples == oracle.samples, f"{label}: samples {site.samples} != {oracle.samples}"
    assert site.positions == oracle.positions, f"{label}: positions {site.positions} != {oracle.positions}"
    assert site.lower_bound == oracle.lower, f"{label}: lower {site.lower_bound} != {oracle.lower}"
    assert site.upper_bound == oracle.upper, f"{label}: upper {site.upper_bound} != {oracle.upper}"
    units = oracle.units
    for key in ("activation_rate", "max_preactivation", "dormant_score"):
        assert len(getattr(site, key)) == units, f"{label}: {key} has the wrong length"

    ambiguous: set[int] = set()

    # positive counts and activation rate
    rate = np.asarray(site.activation_rate, dtype=np.float64)
    counts = np.rint(rate * oracle.positions).astype(np.int64)
    np.testing.assert_array_equal(rate, counts / oracle.positions,
                                  err_msg=f"{label}: activation_rate is not a count / positions")
    diff = np.abs(counts - oracle.positive)
    bad = diff > oracle.near_lower
    assert not bad.any(), (f"{label}: positive counts differ at units {np.flatnonzero(bad).tolist()}: "
                           f"got {counts[bad].tolist()}, oracle {oracle.positive[bad].tolist()} "
                           f"(of {oracle.positions} positions)")
    # (a count may move by the values near the threshold; the unit is still compared)

    # max pre-activation and dead units
    np.testing.assert_allclose(site.max_preactivation, oracle.max, rtol=rtol, atol=atol,
                               err_msg=f"{label}: max_preactivation")
    dead_ambiguous = _close(oracle.max, oracle.lower, oracle.tol)
    ambiguous |= _indices(dead_ambiguous)
    got_dead = set(site.dead_units)
    assert list(site.dead_units) == sorted(got_dead), f"{label}: dead_units not sorted/unique"
    want_dead = _indices(oracle.dead & ~dead_ambiguous)
    sure_alive = _indices(~oracle.dead & ~dead_ambiguous)
    assert want_dead <= got_dead and not (got_dead & sure_alive), \
        f"{label}: dead_units {sorted(got_dead)} != oracle {sorted(_indices(oracle.dead))}"
    assert site.dead_ratio == len(got_dead) / units, f"{label}: dead_ratio"

    # near-dead (alive and rate below the threshold)
    near_ambiguous = np.abs(oracle.rate - near_dead) * oracle.positions <= oracle.near_lower
    near_ambiguous |= dead_ambiguous
    got_near = set(site.near_dead_units)
    want = _indices(oracle.near_dead(near_dead) & ~near_ambiguous)
    not_want = _indices(~oracle.near_dead(near_dead) & ~near_ambiguous)
    assert want <= got_near and not (got_near & not_want), \
        f"{label}: near_dead_units {sorted(got_near)} != oracle {sorted(_indices(oracle.near_dead(near_dead)))}"
    assert not (got_near & got_dead), f"{label}: a unit is both dead and near-dead"

    # dormant score and tau-dormant units
    score = oracle.score
    np.testing.assert_allclose(site.dormant_score, score, rtol=1e-4, atol=1e-6,
                               err_msg=f"{label}: dormant_score")
    # an all-zero output (score exactly 0) is exact in any precision: never ambiguous
    dormant_ambiguous = (np.abs(score - dormant_tau) <= 1e-4 * max(1.0, dormant_tau)) \
        & (oracle.abs_out > 0)
    ambiguous |= _indices(dormant_ambiguous)
    got_dormant = set(site.dormant_units)
    want = _indices(oracle.dormant(dormant_tau) & ~dormant_ambiguous)
    not_want = _indices(~oracle.dormant(dormant_tau) & ~dormant_ambiguous)
    assert want <= got_dormant and not (got_dormant & not_want), \
        f"{label}: dormant_units {sorted(got_dormant)} != oracle {sorted(_indices(oracle.dormant(dormant_tau)))}"

    # saturation (bounded activations only)
    if oracle.upper is None:
        assert site.saturated_units is None, f"{label}: unbounded site reports saturated_units"
        assert site.min_preactivation is None, f"{label}: unbounded site reports min_preactivation"
    else:
        assert site.saturated_units is not None and site.min_preactivation is not None, \
            f"{label}: bounded site lacks saturated_units/min_preactivation"
        np.testing.assert_allclose(site.min_preactivation, oracle.min, rtol=rtol, atol=atol,
                                   err_msg=f"{label}: min_preactivation")
        sat_ambiguous = _close(oracle.min, oracle.upper, oracle.tol)
        ambiguous |= _indices(sat_ambiguous)
        got_sat = set(site.saturated_units)
        want = _indices(oracle.saturated & ~sat_ambiguous)
        not_want = _indices(~oracle.saturated & ~sat_ambiguous)
        assert want <= got_sat and not (got_sat & not_want), \
            f"{label}: saturated_units {sorted(got_sat)} != oracle {sorted(_indices(oracle.saturated))}"

    # the histogram holds a subsample of the pre-activations: only its shape is checked
    assert len(site.histogram.counts) == len(site.histogram.edges) + 1
    assert sum(site.histogram.counts) > 0

    if max_ambiguous is not None:
        assert len(ambiguous) <= max_ambiguous, \
            f"{label}: {len(ambiguous)} units too close to a threshold to compare: {sorted(ambiguous)}"
    return len(ambiguous)


def assert_report_matches(report: Any, oracles: Sequence[OracleSite], **kwargs: Any) -> None:
    """Every site, in order, matches its oracle; the summary adds up."""
    names = [s.name for s in report.sites]
    assert len(report.sites) == len(oracles), \
        f"{len(report.sites)} sites {names} != {len(oracles)} oracle sites {[o.name for o in oracles]}"
    for site, oracle in zip(report.sites, oracles):
        assert_site_matches(site, oracle, **kwargs)
    summary = report.summary
    assert summary.sites == len(oracles)
    assert summary.units == sum(o.units for o in oracles)
    assert summary.dead_units == sum(len(s.dead_units) for s in report.sites)
    assert summary.near_dead_units == sum(len(s.near_dead_units) for s in report.sites)
    assert summary.dormant_units == sum(len(s.dormant_units) for s in report.sites)
    assert summary.saturated_units == sum(len(s.saturated_units or ()) for s in report.sites)
    assert summary.dead_ratio == summary.dead_units / summary.units
    assert report.unobserved_sites == ()


SITE_FIELDS = ("name", "op", "module", "unit_axis", "units", "shape", "lower_bound", "upper_bound",
               "samples", "positions", "dead_units", "dead_ratio", "activation_rate",
               "max_preactivation", "near_dead_units", "dormant_units", "dormant_score",
               "saturated_units", "min_preactivation", "histogram")


def assert_reports_agree(a: Any, b: Any, *, names: bool = True, exact: bool = True) -> None:
    """Two scans of the same model and data report the same sites, field by field.

    ``exact``: bit-identical (same kernels, same batches); otherwise floats within 1e-5
    relative and decisions equal.
    """
    assert len(a.sites) == len(b.sites), ([s.name for s in a.sites], [s.name for s in b.sites])
    for x, y in zip(a.sites, b.sites):
        for key in SITE_FIELDS:
            if key == "name" and not names:
                continue
            if key == "module" and not names:
                continue
            vx, vy = getattr(x, key), getattr(y, key)
            if exact or key not in ("max_preactivation", "min_preactivation", "dormant_score",
                                    "histogram"):
                assert vx == vy, f"site {x.name!r} / {y.name!r}: {key} differs: {vx} != {vy}"
            elif key == "histogram":
                continue
            elif vx is None or vy is None:
                assert vx is vy, key
            else:
                np.testing.assert_allclose(vx, vy, rtol=1e-5, atol=1e-6, err_msg=key)
    sa, sb = a.summary, b.summary
    for key in ("sites", "units", "dead_units", "near_dead_units", "dormant_units",
                "saturated_units", "dead_ratio", "firing_rate_bound_95"):
        assert getattr(sa, key) == getattr(sb, key), key
    assert a.calibration.samples == b.calibration.samples


# ---------------------------------------------------------------------------------------------
# numpy forwards (float64) for the models of tests/models.py
# ---------------------------------------------------------------------------------------------
def weights(module: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().cpu().double().numpy() for k, v in module.state_dict().items()
            if v.is_floating_point()}


def np_linear(x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> np.ndarray:
    y = x @ w.T
    return y + b if b is not None else y


def np_conv2d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, padding: int = 0) -> np.ndarray:
    """Cross-correlation, stride 1: x [N, C, H, W], w [O, C, kh, kw]."""
    kh, kw = w.shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, (kh, kw), axis=(2, 3))  # N,C,H,W,kh,kw
    y = np.einsum("nchwij,ocij->nohw", windows, w)
    return y + b[None, :, None, None] if b is not None else y


def np_conv1d(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, padding: int = 0) -> np.ndarray:
    """x [N, C, L], w [O, C, k]."""
    k = w.shape[2]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    windows = np.lib.stride_tricks.sliding_window_view(xp, k, axis=2)  # N, C, L, k
    y = np.einsum("nclk,ock->nol", windows, w)
    return y + b[None, :, None] if b is not None else y


def np_batch_norm(x: np.ndarray, p: dict[str, np.ndarray], prefix: str, eps: float = 1e-5) -> np.ndarray:
    """Eval-mode BatchNorm over axis 1."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    mean = p[f"{prefix}.running_mean"].reshape(shape)
    var = p[f"{prefix}.running_var"].reshape(shape)
    return (x - mean) / np.sqrt(var + eps) * p[f"{prefix}.weight"].reshape(shape) \
        + p[f"{prefix}.bias"].reshape(shape)


def to_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def oracle_small_convnet(model: nn.Module, x: Any, *, eps: float = 1e-4) -> list[OracleSite]:
    """Sites act1, act2, relu() of tests.models.SmallConvNet (eval mode), by hand."""
    p = weights(model)
    x = to_numpy(x)
    pre1 = np_batch_norm(np_conv2d(x, p["conv1.weight"], p["conv1.bias"], 1), p, "bn1")
    h = np.maximum(pre1, 0.0)
    pre2 = np_conv2d(h, p["conv2.weight"], p["conv2.bias"], 1) * 4.0
    h = np.clip(pre2, 0.0, 6.0).mean((2, 3))
    pre3 = np_linear(h, p["fc1.weight"], p["fc1.bias"])
    return [
        reduce_site(pre1, name="act1", op="relu", eps=eps),
        reduce_site(pre2, name="act2", op="relu6", upper=6.0, eps=eps),
        reduce_site(pre3, name="relu()", op="relu", eps=eps),
    ]


# ---------------------------------------------------------------------------------------------
# Hook capture (for models too big to write by hand, e.g. torchvision's)
# ---------------------------------------------------------------------------------------------
ACTIVATION_MODULE_TYPES = (nn.ReLU, nn.ReLU6, nn.Hardtanh)


def _bounds(module: nn.Module) -> tuple[str, float, float | None]:
    if isinstance(module, nn.ReLU):
        return "relu", 0.0, None
    if isinstance(module, nn.ReLU6):
        return "relu6", 0.0, 6.0
    lower, upper = float(module.min_val), float(module.max_val)
    return ("relu6" if (lower, upper) == (0.0, 6.0) else "hardtanh"), lower, upper


class HookOracle:
    """Capture the input of every activation-module call of a deep copy of ``model`` with
    forward pre-hooks (copied before an inplace op overwrites it), plus ``extra`` capture
    points for functional calls: {site name: (module path, op, lower, upper)} whose *output*
    is the pre-activation of a functional ReLU. Sites are keyed by call order within one
    forward; a module called k > 1 times per forward yields names ``path#1`` ... ``path#k``.
    """

    def __init__(self, model: nn.Module, *, axis: int | Callable[[int], int] = 1, rel: float = 1e-5,
                 extra: dict[str, tuple[str, str, float, float | None]] | None = None):
        self.model = copy.deepcopy(model).eval()
        self.axis = axis
        self.rel = rel
        self.calls: list[tuple[str, str, float, float | None, np.ndarray]] = []
        self.sites: list[OracleSite] | None = None
        self._names: list[str] | None = None
        modules = dict(self.model.named_modules())
        for name, module in modules.items():
            if isinstance(module, ACTIVATION_MODULE_TYPES):
                op, lower, upper = _bounds(module)
                module.register_forward_pre_hook(self._pre_hook(name, op, lower, upper))
        for site, (path, op, lower, upper) in (extra or {}).items():
            modules[path].register_forward_hook(self._post_hook(site, op, lower, upper))

    def _pre_hook(self, name: str, op: str, lower: float, upper: float | None) -> Callable:
        def hook(_module: nn.Module, args: tuple) -> None:
            self.calls.append((name, op, lower, upper, args[0].detach().double().numpy().copy()))
        return hook

    def _post_hook(self, name: str, op: str, lower: float, upper: float | None) -> Callable:
        def hook(_module: nn.Module, _args: tuple, out: torch.Tensor) -> None:
            self.calls.append((name, op, lower, upper, out.detach().double().numpy().copy()))
        return hook

    def run(self, x: torch.Tensor, batch_size: int) -> list[OracleSite]:
        with torch.no_grad():
            for start in range(0, len(x), batch_size):
                self.calls.clear()
                self.model(x[start:start + batch_size])
                self._fold()
        assert self.sites is not None
        return self.sites

    def _fold(self) -> None:
        bases = [call[0] for call in self.calls]
        if self.sites is None:
            totals: dict[str, int] = {}
            for base in bases:
                totals[base] = totals.get(base, 0) + 1
            seen: dict[str, int] = {}
            names = []
            for base in bases:
                seen[base] = seen.get(base, 0) + 1
                names.append(f"{base}#{seen[base]}" if totals[base] > 1 else base)
            self.sites = []
            for (base, op, lower, upper, pre), name in zip(self.calls, names):
                axis = self.axis(pre.ndim) if callable(self.axis) else self.axis
                self.sites.append(OracleSite(name, op, axis, lower, upper, 0.0, self.rel))
            self._names = bases
        assert bases == self._names, "the call sequence changed between batches"
        for site, call in zip(self.sites, self.calls):
            site.add(call[4])


def count_activation_calls(model: nn.Module, x: torch.Tensor) -> int:
    """Count ReLU-family ATen calls in one eager forward with a TorchDispatchMode of our own."""
    from torch.utils._python_dispatch import TorchDispatchMode

    names = {"relu", "relu_", "relu6", "relu6_", "hardtanh", "hardtanh_"}
    count = 0

    class Counter(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001
            nonlocal count
            if func.namespace == "aten" and func._overloadpacket.__name__ in names:
                count += 1
            return func(*args, **(kwargs or {}))

    with torch.no_grad(), Counter():
        model(x)
    return count


def iter_batches(x: Any, batch_size: int) -> Iterable[Any]:
    for start in range(0, len(x), batch_size):
        yield x[start:start + batch_size]


def snapshot(model: nn.Module) -> dict[str, Any]:
    """Everything a scan must leave untouched: tensors (bitwise), flags, hooks."""
    state = {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}
    return {
        "state": state,
        "requires_grad": {k: p.requires_grad for k, p in model.named_parameters()},
        "training": {k: m.training for k, m in model.named_modules()},
        "hooks": {k: (len(m._forward_hooks), len(m._forward_pre_hooks), len(m._backward_hooks))
                  for k, m in model.named_modules()},
        "modules": [k for k, _ in model.named_modules()],
        "ids": {k: id(v) for k, v in model.state_dict(keep_vars=True).items()},
    }


def assert_same_snapshot(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["modules"] == after["modules"], "submodules were added or removed"
    assert before["training"] == after["training"], "training flags were not restored"
    assert before["requires_grad"] == after["requires_grad"], "requires_grad changed"
    assert before["hooks"] == after["hooks"], "hooks were left on the model"
    assert before["state"].keys() == after["state"].keys(), "parameters/buffers added or removed"
    assert before["ids"] == after["ids"], "parameters/buffers were replaced"
    for key, value in before["state"].items():
        other = after["state"][key]
        assert value.dtype == other.dtype and value.device == other.device, key
        assert torch.equal(value, other), f"{key} changed"


@dataclass
class Captured:
    """Warnings captured from a scan through on_warning."""

    messages: list[str] = field(default_factory=list)

    def __call__(self, message: str) -> None:
        self.messages.append(message)
