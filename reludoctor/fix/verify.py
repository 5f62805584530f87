"""Compare a fixed model with the original on the calibration data; count parameters and MACs.

Both models are given as callables ``batch (tuple of numpy arrays) -> list of numpy arrays``
(their outputs, flattened), so the same comparison serves PyTorch and onnxruntime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Callable, Iterable

import numpy as np

from reludoctor.errors import FixVerificationError  # noqa: F401 - re-exported

RELATIVE_TOLERANCE = 1e-5

Runner = Callable[[tuple], list]


@dataclass(frozen=True)
class Verification:
    """How the fixed model's outputs differ from the original's on the calibration data."""

    samples: int
    max_abs_diff: float  # over every output element
    max_rel_diff: float  # max |fixed - original| / max |original|, per output, the worst
    tolerance: float  # relative tolerance for "equal"
    equal: bool  # max_rel_diff <= tolerance (and shapes equal)
    argmax_checked: bool  # the output looks like class scores [N, C>1]
    argmax_mismatches: int  # samples whose argmax changed (0 when not checked)
    lossless_expected: bool  # the strategy promises equal outputs (prune, reinit)
    # --prune-near-dead only (the key is absent otherwise): the written model's change in the
    # ablation metrics (core/ablation.py), and the --max-output-change it had to stay within
    output_change: float | None = None
    max_output_change: float | None = None
    loss_change: float | None = None
    argmax_flips: float | None = None

    def to_dict(self) -> dict:
        data = asdict(self)
        if self.max_output_change is None:
            for key in ("output_change", "max_output_change", "loss_change", "argmax_flips"):
                del data[key]
        return data


def _flat(outputs: Any) -> list[np.ndarray]:
    if isinstance(outputs, (list, tuple)):
        return [a for item in outputs for a in _flat(item)]
    if isinstance(outputs, dict):
        return [a for key in sorted(outputs) for a in _flat(outputs[key])]
    if hasattr(outputs, "detach"):
        return [outputs.detach().to("cpu").numpy()]
    return [np.asarray(outputs)]


def flatten_outputs(outputs: Any) -> list[np.ndarray]:
    return _flat(outputs)


def verified(original: Runner, fixed: Runner, batches: Iterable[tuple], samples: int | None, *,
             lossless_expected: bool) -> Verification:
    """``compare``, counting ``samples`` when the data says how many; raises
    FixVerificationError when a lossless strategy changed the outputs (nothing is written)."""
    verification = compare(original, fixed, batches, lossless_expected=lossless_expected)
    if samples:
        verification = replace(verification, samples=int(samples))
    if lossless_expected and not verification.equal:
        raise FixVerificationError(
            f"the fixed model's outputs differ from the original's on the calibration data "
            f"(max abs {verification.max_abs_diff:.3g}, relative {verification.max_rel_diff:.3g} "
            f"> {verification.tolerance:g}); nothing was written",
            "exclude sites with --sites, and please report the model structure")
    return verification


def within(verification: Verification, change: Any, limit: float) -> Verification:
    """``verification`` with the measured ablation-metric ``change`` of the written model;
    FixVerificationError (nothing is written) when its output change exceeds ``limit`` and the
    outputs are not equal within float rounding (``verification.equal``: pruning dead units alone
    changes the last bits)."""
    if not (change.output_change <= limit or verification.equal):  # NaN fails too
        raise FixVerificationError(
            f"the fixed model's outputs changed by {change.output_change:.3g} (relative L2) on the "
            f"calibration data, more than --max-output-change {limit:g}; nothing was written",
            "raise --max-output-change, or exclude sites with --sites")
    return replace(verification, output_change=change.output_change, max_output_change=limit,
                   loss_change=change.loss_change, argmax_flips=change.argmax_flips)


def compare(original: Runner, fixed: Runner, batches: Iterable[tuple], *,
            lossless_expected: bool, tolerance: float = RELATIVE_TOLERANCE) -> Verification:
    """Run both on every batch; the worst differences over all of them."""
    samples = 0
    worst_abs = 0.0
    max_ref: list[float] = []
    max_diff: list[float] = []
    mismatches = 0
    argmax_checked = False
    shapes_equal = True
    for batch in batches:
        ref = original(batch)
        got = fixed(batch)
        samples += int(np.shape(batch[0])[0])
        if len(ref) != len(got):
            shapes_equal = False
            break
        if not max_ref:
            max_ref = [0.0] * len(ref)
            max_diff = [0.0] * len(ref)
        for index, (a, b) in enumerate(zip(ref, got)):
            if a.shape != b.shape:
                shapes_equal = False
                continue
            a64 = a.astype(np.float64, copy=False)
            b64 = b.astype(np.float64, copy=False)
            diff = float(np.max(np.abs(a64 - b64))) if a.size else 0.0
            if not np.isfinite(diff):
                diff = float("inf")
            worst_abs = max(worst_abs, diff)
            max_diff[index] = max(max_diff[index], diff)
            max_ref[index] = max(max_ref[index], float(np.max(np.abs(a64))) if a.size else 0.0)
        first_ref, first_got = ref[0], got[0]
        if first_ref.ndim == 2 and first_ref.shape[1] > 1 and first_ref.shape == first_got.shape:
            argmax_checked = True
            mismatches += int(np.sum(first_ref.argmax(1) != first_got.argmax(1)))
    rel = 0.0
    for diff, ref_max in zip(max_diff, max_ref):
        if diff == 0.0:
            continue
        rel = max(rel, diff / ref_max if ref_max > 0 else float("inf"))
    equal = shapes_equal and rel <= tolerance
    return Verification(samples, worst_abs, rel, tolerance, equal, argmax_checked, mismatches,
                        lossless_expected)


def torch_runner(module: Any) -> Runner:
    """Call a PyTorch module (or program module) without gradients on CPU numpy batches."""
    import torch

    def run(batch: tuple) -> list:
        with torch.no_grad():
            tensors = tuple(torch.as_tensor(np.ascontiguousarray(b)) if isinstance(b, np.ndarray)
                            else b for b in batch)
            return _flat(module(*tensors))

    return run


def torch_params(module: Any) -> int:
    """Parameters (not buffers), each shared tensor counted once."""
    seen = set()
    total = 0
    for param in module.parameters():
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
    return total


def torch_macs(module: Any, example: tuple) -> int:
    """Multiply-accumulates of the Conv and Linear modules per sample (run on ``example``)."""
    import torch
    import torch.nn as nn

    total = 0

    def hook(layer: Any, _inputs: Any, output: Any) -> None:
        nonlocal total
        per_output = layer.weight[0].numel()  # (C_in / groups) * kernel, or in_features
        total += output.numel() * per_output

    layers = [m for m in module.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))]
    handles = [layer.register_forward_hook(hook) for layer in layers]
    rows = int(np.shape(example[0])[0]) or 1
    try:
        with torch.no_grad():
            module(*(torch.as_tensor(np.ascontiguousarray(t)) if isinstance(t, np.ndarray) else t
                     for t in example))
    finally:
        for handle in handles:
            handle.remove()
    return int(total // rows)
