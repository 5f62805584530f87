"""The batch loop: data -> device -> model, with padding for fixed-batch models and progress."""

from __future__ import annotations

from typing import Any, Callable

from reludoctor.data import Calibration
from reludoctor.errors import DataError, ObserverFailure, ReludoctorError, UsageError
from reludoctor.observers import BatchContext

Progress = Callable[[int, "int | None"], None]


def resolve_device(device: str) -> Any:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as exc:
        raise UsageError(f"--device {device!r} is not a device", "use auto, cpu, cuda or cuda:N") from exc
    if resolved.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {device}: CUDA is not available here",
                             "use --device cpu (or auto)")
        if resolved.index is not None and resolved.index >= torch.cuda.device_count():
            raise UsageError(f"--device {device}: only {torch.cuda.device_count()} CUDA device(s)")
    elif resolved.type != "cpu":
        raise UsageError(f"--device {device} is not supported", "use auto, cpu, cuda or cuda:N")
    return resolved


def _to_tensor(array: Any, device: Any) -> Any:
    import numpy as np
    import torch

    tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
    if tensor.device == device:
        return tensor
    if device.type == "cuda" and tensor.device.type == "cpu":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _pad(batch: tuple, size: int) -> tuple:
    """Repeat the last sample to fill a fixed-size batch; observers see only the real rows."""
    import torch

    padded = []
    for tensor in batch:
        missing = size - tensor.shape[0]
        filler = tensor[-1:].expand(missing, *tensor.shape[1:])
        padded.append(torch.cat([tensor, filler]))
    return tuple(padded)


def run(
    forward: Callable[..., Any],
    calibration: Calibration,
    *,
    batch_size: int,
    device: Any,
    batch: BatchContext,
    fixed_batch: int | None = None,
    before_forward: Callable[[], None] | None = None,
    progress: Progress | None = None,
) -> int:
    """Run every calibration batch through ``forward``; returns the number of samples seen."""
    import torch

    if fixed_batch is not None:
        batch_size = fixed_batch
    seen = 0
    with torch.inference_mode():
        for arrays in calibration.batches(batch_size):
            tensors = tuple(_to_tensor(a, device) for a in arrays)
            rows = int(tensors[0].shape[0])
            if fixed_batch is not None and rows < fixed_batch:
                tensors = _pad(tensors, fixed_batch)
                batch.valid = rows
            else:
                batch.valid = None
            if before_forward is not None:
                before_forward()
            try:
                forward(*tensors)
            except (ObserverFailure, ReludoctorError):  # ours, not the model's
                raise
            except Exception as exc:  # the model rejected the data: shape, dtype, guards
                detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
                raise DataError(
                    f"{calibration.source}: the model failed on samples {seen}-{seen + rows - 1}: "
                    f"{type(exc).__name__}: {detail}",
                    "check that the data matches the model's inputs (shape, dtype, count)",
                ) from exc
            seen += rows
            if progress is not None:
                progress(seen, calibration.samples)
    batch.valid = None
    return seen
