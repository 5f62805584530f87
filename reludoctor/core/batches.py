"""The batch loop: data -> device -> model, with padding for fixed-batch models and progress.

``BatchLoop`` is the one loop over calibration batches (the scan's ``run``, the gradient pass,
the fix's verification batches): batch sizing, prefetching, padding, counting, progress and the
error for a batch the model rejects. It imports no torch itself: a ``Transfer`` (``to_torch``)
turns the arrays into tensors, so numpy-only backends can use it as it is.

Batches are prepared one or two ahead in a background thread (``Prefetcher``): the data
source's own work (reading, casting, checking), the conversion to tensors and, for a CUDA
target, the copy into pinned host memory overlap the forward pass; the main thread then
issues an asynchronous (``non_blocking``) copy to the device. Nothing in the loop reads a
device value back, so a CUDA scan never waits for the GPU between batches.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, NamedTuple

from reludoctor.core.observers import BatchContext
from reludoctor.data.calibration import Calibration, check_padding
from reludoctor.errors import DataError, ObserverFailure, ReludoctorError, UsageError, first_line
from reludoctor.options import DType, choice

Progress = Callable[[int, "int | None"], None]

PREFETCH = 2  # batches prepared ahead of the one running (0: prepare in the loop itself)


@dataclass(frozen=True)
class HostDevice:
    """A device named without importing torch, for backends that run without it (ONNX on the
    CPU): ``type`` and ``index`` as ``torch.device`` has them, and the same ``str()``."""

    type: str = "cpu"
    index: int | None = None

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"


CPU = HostDevice()


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


def resolve_dtype(dtype: str | None) -> Any:
    """--dtype -> the autocast dtype (None: full precision, no autocast)."""
    chosen = choice(DType, dtype, "--dtype")
    if chosen is None or chosen is DType.FP32:
        return None
    import torch

    return {DType.BF16: torch.bfloat16, DType.FP16: torch.float16}[chosen]


def dtype_name(dtype: Any) -> str:
    """The report's name for an autocast dtype (None: float32)."""
    return "float32" if dtype is None else str(dtype).replace("torch.", "")


def host_tensor(array: Any, device: Any) -> Any:
    """A batch array as a tensor ready to go to ``device``: for a CUDA target, in pinned host
    memory, so that the copy to the device can be asynchronous. Runs in the prefetch thread."""
    import numpy as np
    import torch

    tensor = torch.from_numpy(array) if isinstance(array, np.ndarray) else array
    if device.type == "cuda" and tensor.device.type == "cpu" and not tensor.is_pinned():
        tensor = tensor.pin_memory()
    return tensor


def to_device(tensor: Any, device: Any) -> Any:
    """To ``device`` without waiting: from pinned memory the copy is queued on the stream."""
    if tensor.device == device:
        return tensor
    return tensor.to(device, non_blocking=tensor.device.type == "cpu" and tensor.is_pinned())


_DONE = object()


class Prefetcher:
    """Iterates ``source`` in a background thread, ``depth`` items ahead, each passed through
    ``prepare`` there; the consumer gets them in order.

    An exception raised by the source or by ``prepare`` is re-raised in the consumer at the
    position where it occurred (the items before it are delivered first). ``close()`` (also on
    leaving the ``with`` block, e.g. when the consumer fails) stops the thread and closes the
    source; the thread never outlives the loop. ``depth`` 0 prepares inline, without a thread.
    """

    def __init__(self, source: Iterable[Any], prepare: Callable[[Any], Any] = lambda item: item,
                 depth: int = PREFETCH):
        self._source = source
        self._prepare = prepare
        self._depth = depth
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finished = False

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def __iter__(self) -> Iterator[Any]:
        if self._depth <= 0:
            for item in self._source:
                yield self._prepare(item)
            return
        if self._thread is None:
            self._thread = threading.Thread(target=self._produce, name="reludoctor-prefetch",
                                            daemon=True)
            self._thread.start()
        while not self._finished:
            kind, value = self._queue.get()
            if kind is _DONE:
                self._finished = True
                return
            if kind is BaseException:
                self._finished = True
                raise value
            yield value

    def _put(self, kind: Any, value: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put((kind, value), timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def _produce(self) -> None:
        iterator = None
        try:
            iterator = iter(self._source)
            for item in iterator:
                if self._stop.is_set() or not self._put(None, self._prepare(item)):
                    return
            self._put(_DONE, None)
        except BaseException as exc:  # delivered to the consumer, raised there
            self._put(BaseException, exc)
        finally:
            close = getattr(iterator, "close", None)
            if close is not None and self._stop.is_set():
                with contextlib.suppress(Exception):
                    close()

    def close(self) -> None:
        """Stop the producer (it may be blocked on a full queue) and wait for it."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is None:
            return
        while thread.is_alive():
            with contextlib.suppress(queue.Empty):
                while True:
                    self._queue.get_nowait()
            thread.join(timeout=0.05)


class Transfer(NamedTuple):
    """How a batch's arrays become model inputs: ``prepare`` runs in the prefetch thread (the
    host-side work), ``place`` in the loop's own thread (e.g. the asynchronous device copy)."""

    prepare: Callable[[tuple], Any] = tuple
    place: Callable[[Any], tuple] = tuple


def to_torch(device: Any) -> Transfer:
    """Arrays -> tensors on ``device``: pinned host memory in the thread, then a queued copy."""
    return Transfer(lambda arrays: tuple(host_tensor(a, device) for a in arrays),
                    lambda host: tuple(to_device(t, device) for t in host))


def _as_numpy(arrays: tuple) -> tuple:
    import numpy as np

    return tuple(np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a) for a in arrays)


NUMPY = Transfer(_as_numpy)


def pad_rows(batch: tuple, size: int) -> tuple:
    """Repeat the last sample to fill a fixed-size batch (numpy arrays or tensors); observers
    see only the real rows."""
    import numpy as np

    padded = []
    for array in batch:
        missing = size - array.shape[0]
        if isinstance(array, np.ndarray):
            padded.append(np.concatenate([array, np.repeat(array[-1:], missing, axis=0)]))
        else:
            import torch

            padded.append(torch.cat([array, array[-1:].expand(missing, *array.shape[1:])]))
    return tuple(padded)


@dataclass
class Step:
    """One batch of a ``BatchLoop``: ``inputs`` padded to the model's fixed batch when it has
    one; ``rows`` real samples from sample ``start`` on; ``valid`` the real rows of a padded
    batch (None: all of them)."""

    inputs: tuple
    start: int
    rows: int
    valid: int | None
    calibration: Calibration
    mask_positions: int = 0  # real positions of the attention mask (``Binding.mask_index``)

    @property
    def mask(self) -> Any:
        """The real positions ([rows, T] bool on the inputs' device), or None: no mask input."""
        index = self.binding.mask_index
        return None if index is None else self.inputs[index] != 0

    @property
    def binding(self) -> Any:
        """How the inputs are passed to the model (``Calibration.binding``)."""
        return self.calibration.binding

    @contextlib.contextmanager
    def guard(self, describe: Callable[[BaseException], str] | None = None) -> Iterator[None]:
        """Around the model call: an exception of the model (not reludoctor's own) becomes the
        one DataError naming the samples it failed on and how the data was bound. ``describe``:
        the runtime's own wording of its error (default: its type and first line)."""
        try:
            yield
        except (ObserverFailure, ReludoctorError):  # ours, not the model's
            raise
        except Exception as exc:  # the model rejected the data: shape, dtype, guards
            binding = self.binding
            hint = "check that the data matches the model's inputs (shape, dtype, count)"
            if not binding.plain or len(binding.fed) > 1:
                hint += f"; {binding.describe()}"
            raise DataError(
                f"{self.calibration.source}: the model failed on samples {self.start}-"
                f"{self.start + self.rows - 1}: {(describe or _type_and_line)(exc)}", hint) from exc


def _type_and_line(exc: BaseException) -> str:
    detail = first_line(exc)
    return f"{type(exc).__name__}: {detail}"


class BatchLoop:
    """Every calibration batch as a ``Step``, in order; ``seen`` counts the samples so far.

    ``fixed_batch`` (a model that takes only that many rows) overrides ``batch_size``, and the
    last batch is padded to it (``check_padding`` first: its size comes from the file).
    ``transfer`` converts the arrays (default: as the source gives them); ``prefetch`` batches
    are prepared ahead in a background thread (0: none). ``progress(seen, samples)`` is called
    after each step's body. Use it in a ``with`` block, so that the thread stops when the body
    fails.
    """

    def __init__(self, calibration: Calibration, batch_size: int, *, fixed_batch: int | None = None,
                 transfer: Transfer = Transfer(), progress: Progress | None = None,
                 prefetch: int = PREFETCH):
        self.calibration = calibration
        self.fixed_batch = fixed_batch
        self.seen = 0
        self._place = transfer.place
        self._progress = progress
        size = fixed_batch if fixed_batch is not None else batch_size
        self._prefetcher = Prefetcher(calibration.batches(size), transfer.prepare, prefetch)

    def __enter__(self) -> BatchLoop:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()

    def close(self) -> None:
        self._prefetcher.close()

    def __iter__(self) -> Iterator[Step]:
        fixed = self.fixed_batch
        with self._prefetcher as prepared:
            for host in prepared:
                mask = self.calibration.binding.mask_index
                # counted on the host copy: reading it from the device would wait for the GPU
                positions = 0 if mask is None else int((host[mask] != 0).sum())
                inputs = self._place(host)
                del host
                rows = int(inputs[0].shape[0])
                valid = None
                if fixed is not None and rows < fixed:
                    check_padding(inputs, fixed, self.calibration.source)
                    inputs = pad_rows(inputs, fixed)
                    valid = rows
                yield Step(inputs, self.seen, rows, valid, self.calibration, positions)
                self.seen += rows
                if self._progress is not None:
                    self._progress(self.seen, self.calibration.samples)


def padded_arrays(calibration: Calibration, batch_size: int, fixed_batch: int | None) -> Iterator[tuple]:
    """Calibration batches as numpy arrays, padded to a fixed batch when the model has one."""
    for step in BatchLoop(calibration, batch_size, fixed_batch=fixed_batch, transfer=NUMPY, prefetch=0):
        yield step.inputs


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
    dtype: Any = None,
    prefetch: int = PREFETCH,
) -> int:
    """Run every calibration batch through ``forward``; returns the number of samples seen.

    Each batch is passed as ``calibration.binding`` says: by position or by name, constants
    added, each input in the model's layout (its batch axis), optional inputs left at their
    defaults.

    ``dtype`` (torch.bfloat16 / torch.float16, or None) runs ``forward`` under
    ``torch.autocast``; the observers still accumulate in float32/float64. ``prefetch``
    batches are prepared ahead in a background thread (0: none).
    """
    import torch

    precision = (torch.autocast(device.type, dtype=dtype) if dtype is not None
                 else contextlib.nullcontext())
    steps = BatchLoop(calibration, batch_size, fixed_batch=fixed_batch, transfer=to_torch(device),
                      progress=progress, prefetch=prefetch)
    with torch.inference_mode(), steps:
        for step in steps:
            batch.begin(step, device)
            if before_forward is not None:
                before_forward()
            with step.guard(), precision:
                step.binding.call(forward, step.inputs, device)
    batch.valid, batch.mask = None, None
    return steps.seen
