"""Calibration data -> batches, one array per model input, streamed.

Sources: ``.npy`` (memory-mapped), ``.npz`` (one array per input, matched by name), ``.pt``
(tensor or dict of tensors, loaded with ``weights_only=True``), in-memory arrays and tensors,
iterables of batches, or synthetic standard-normal inputs. Nothing is unpickled.
"""

from __future__ import annotations

import itertools
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from reludoctor.errors import DataError, UsageError
from reludoctor.loaders.model import InputSpec

DEFAULT_SYNTHETIC_SAMPLES = 256

Batch = tuple  # one array or tensor per model input, leading axis = samples


@dataclass
class Calibration:
    source: str
    synthetic: bool
    samples: int | None  # None for an iterable of batches of unknown length
    _arrays: list[Any] | None = None  # per input, leading sample axis (numpy or torch)
    _iterable: Iterable | None = None
    _names: list[str] | None = None
    _dtypes: list[str | None] | None = None
    _limit: int | None = None

    def example(self, rows: int = 2) -> Batch:
        """The first rows of the data (for tracing), without consuming a one-shot iterable."""
        if self._arrays is not None:
            return tuple(_cast(a[:rows], d) for a, d in zip(self._arrays, self._dtypes or []))
        iterator = iter(self._iterable or ())
        try:
            first = next(iterator)
        except StopIteration:
            raise DataError(f"{self.source}: no samples", "the calibration data is empty") from None
        self._iterable = itertools.chain([first], iterator)
        return tuple(_cast(b[:rows], None) for b in _select_inputs(first, self._names or [], self.source))

    def batches(self, batch_size: int) -> Iterator[Batch]:
        if self._arrays is not None:
            total = self.samples or 0
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                batch = tuple(_cast(a[start:stop], d) for a, d in zip(self._arrays, self._dtypes or []))
                _check_batch(batch, self._names or [], start, self.source)
                yield batch
            return
        yield from self._iterate(batch_size)

    def _iterate(self, batch_size: int) -> Iterator[Batch]:
        # An iterable of batches of any size, regrouped to batch_size so padding is rare.
        seen = 0
        names = self._names or []
        for item in self._iterable or ():
            batch = _select_inputs(item, names, self.source)
            if self._limit is not None:
                room = self._limit - seen
                if room <= 0:
                    break
                if _rows(batch[0]) > room:
                    batch = tuple(b[:room] for b in batch)
            for array, name in zip(batch, names):
                _validate(array, None, name, self.source)
            batch = tuple(_cast(b, None) for b in batch)
            _check_batch(batch, names, seen, self.source)
            rows = _rows(batch[0])
            for start in range(0, rows, batch_size):
                yield tuple(b[start:start + batch_size] for b in batch)
            seen += rows
        if seen == 0:
            raise DataError(f"{self.source}: no samples", "the calibration data is empty")
        self.samples = seen


def _rows(array: Any) -> int:
    return int(array.shape[0])


def _cast(array: Any, spec_dtype: str | None) -> Any:
    """Per batch (never the whole memory-mapped file): float64 -> float32, always a private
    copy, so a model that writes into its input never touches the caller's data or file."""
    keep_double = spec_dtype == "float64"
    if isinstance(array, np.ndarray):
        dtype = np.float32 if array.dtype == np.float64 and not keep_double else array.dtype
        return np.array(array, dtype=dtype, order="C", copy=True)
    import torch

    if array.dtype == torch.float64 and not keep_double:
        return array.float()
    return array.clone()


def _is_floating(array: Any) -> bool:
    if isinstance(array, np.ndarray):
        return np.issubdtype(array.dtype, np.floating)
    return bool(getattr(array, "is_floating_point", lambda: False)())


def _check_batch(batch: Batch, names: Sequence[str], start: int, source: str) -> None:
    for array, name in zip(batch, names):
        if not _is_floating(array):
            continue
        if isinstance(array, np.ndarray):
            finite = bool(np.isfinite(array).all())
        elif array.device.type == "cpu":
            import torch

            finite = bool(torch.isfinite(array).all())
        else:  # device tensors: checking would synchronise every batch
            continue
        if not finite:
            raise DataError(
                f"{source}: input '{name}' has NaN or infinite values in samples "
                f"{start}-{start + _rows(array) - 1}",
                "clean or re-export the calibration data",
            )


def _validate(array: Any, spec_dtype: str | None, name: str, source: str) -> None:
    """Refuse non-numeric data, scalars and int/float mix-ups, naming the input."""
    if isinstance(array, np.ndarray):
        if array.dtype == object or array.dtype.kind in "OUSVM":
            raise DataError(f"{source}: input '{name}' holds {array.dtype} values, not numbers",
                            "save a numeric array")
        floating = bool(np.issubdtype(array.dtype, np.floating))
        dtype_name = str(array.dtype)
    else:
        import torch

        if not isinstance(array, torch.Tensor):
            raise DataError(f"{source}: input '{name}' is a {type(array).__name__}, not an array",
                            "pass numpy arrays or torch tensors")
        floating = array.is_floating_point()
        dtype_name = str(array.dtype).replace("torch.", "")
    if array.ndim == 0:
        raise DataError(f"{source}: input '{name}' is a scalar, not a batch of samples",
                        "the first axis must index samples")
    if spec_dtype and spec_dtype.startswith(("float", "bfloat")) and not floating:
        raise DataError(f"{source}: input '{name}' is {dtype_name} but the model expects "
                        f"{spec_dtype}", "convert (and normalise) the data to floats")
    if spec_dtype and spec_dtype.startswith(("int", "uint")) and floating:
        raise DataError(f"{source}: input '{name}' is {dtype_name} but the model expects "
                        f"{spec_dtype}", "pass integer data (e.g. token ids)")


def _select_inputs(item: Any, names: Sequence[str], source: str) -> Batch:
    """One batch from an iterable: an array, a tuple (x, y, ...) or a dict keyed by input."""
    if isinstance(item, dict):
        missing = [n for n in names if n not in item]
        if missing:
            raise DataError(f"{source}: batch has no entry for input(s) {', '.join(missing)}",
                            f"keys found: {', '.join(map(str, item))}")
        return tuple(item[n] for n in names)
    if isinstance(item, (tuple, list)):
        if len(item) < len(names):
            raise DataError(f"{source}: batch has {len(item)} arrays, the model takes {len(names)}")
        return tuple(item[: len(names)])
    return (item,)


def _check_shapes(arrays: list[Any], specs: Sequence[InputSpec], source: str) -> None:
    rows = {_rows(a) for a in arrays}
    if len(rows) > 1:
        raise DataError(f"{source}: inputs have different sample counts {sorted(rows)}",
                        "every input needs one row per sample")
    for array, spec in zip(arrays, specs):
        if spec.shape is None:
            continue
        expected = spec.shape[1:]
        got = tuple(array.shape[1:])
        if len(got) != len(expected) or any(e is not None and e != g for e, g in zip(expected, got)):
            shown = ", ".join("N" if d is None else str(d) for d in spec.shape)
            raise DataError(
                f"{source}: input '{spec.name}' has shape [N, {', '.join(map(str, got))}] but the "
                f"model expects [{shown}]", "pass data of the model's input shape")


def _load_file(path: Path, names: Sequence[str]) -> list[Any]:
    if not path.exists():
        raise DataError(f"{path}: no such file", "check the --data path")
    if path.is_dir():
        raise DataError(f"{path}: is a directory", "pass a .npy, .npz or .pt file")
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from exc
    if head.startswith(b"\x93NUMPY"):
        try:
            return [np.load(path, mmap_mode="r", allow_pickle=False)]
        except ValueError as exc:
            raise DataError(f"{path}: cannot load ({exc})",
                            "save a numeric array; pickled object arrays are refused") from exc
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as archive:
                entries = archive.namelist()
        except zipfile.BadZipFile as exc:
            raise DataError(f"{path}: corrupt archive") from exc
        if entries and all(e.endswith(".npy") for e in entries):
            return _load_npz(path, names)
        return _load_pt(path, names)
    if head[:1] == b"\x80":
        return _load_pt(path, names)
    raise DataError(f"{path}: not a .npy, .npz or .pt file", "save data with np.save or torch.save")


def _load_npz(path: Path, names: Sequence[str]) -> list[Any]:
    try:
        archive = np.load(path, allow_pickle=False)
        keys = list(archive.files)
        if len(names) == 1 and len(keys) == 1:
            return [archive[keys[0]]]
        missing = [n for n in names if n not in keys]
        if missing:
            raise DataError(f"{path}: no array for input(s) {', '.join(missing)}",
                            f"arrays found: {', '.join(keys)}; name each after a model input")
        return [archive[n] for n in names]
    except ValueError as exc:
        raise DataError(f"{path}: cannot load ({exc})",
                        "save numeric arrays; pickled object arrays are refused") from exc


def _load_pt(path: Path, names: Sequence[str]) -> list[Any]:
    import pickle

    import torch

    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: contains pickled Python objects, refused",
                        "save a tensor or a dict of tensors") from exc
    except Exception as exc:
        raise DataError(f"{path}: cannot load ({type(exc).__name__})", "the file may be corrupt") from exc
    if isinstance(obj, torch.Tensor):
        obj = {names[0]: obj} if len(names) == 1 else {"": obj}
    if isinstance(obj, (tuple, list)) and all(isinstance(t, torch.Tensor) for t in obj):
        obj = dict(zip(names, obj))
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}", "save a tensor or a dict of tensors")
    if len(names) == 1 and len(obj) == 1:
        return list(obj.values())
    missing = [n for n in names if n not in obj]
    if missing:
        raise DataError(f"{path}: no tensor for input(s) {', '.join(missing)}",
                        f"keys found: {', '.join(map(str, obj))}")
    return [obj[n] for n in names]


def _synthetic(specs: Sequence[InputSpec], input_shape: tuple[int, ...] | None, samples: int,
               seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for index, spec in enumerate(specs):
        if input_shape is not None and index == 0:
            shape = tuple(input_shape)
        elif spec.shape is not None and all(d is not None for d in spec.shape[1:]):
            shape = tuple(int(d) for d in spec.shape[1:])  # type: ignore[arg-type]
        else:
            raise UsageError(f"cannot tell the shape of input '{spec.name}' for synthetic data",
                             "pass --data, or --input-shape C,H,W (without the batch)")
        if spec.dtype and not spec.dtype.startswith("float"):
            raise UsageError(f"input '{spec.name}' is {spec.dtype}: synthetic data is float only",
                             "pass --data")
        arrays.append(rng.standard_normal((samples, *shape), dtype=np.float32))
    return arrays


def load_calibration(
    data: Any,
    specs: Sequence[InputSpec],
    *,
    limit: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
) -> Calibration:
    """Resolve any supported data source into a Calibration aligned with the model's inputs."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit} must be at least 1")
    specs = list(specs) or [InputSpec("input", None, None)]
    names = [s.name for s in specs]
    synthetic = data is None
    if synthetic:
        arrays = _synthetic(specs, input_shape, limit or DEFAULT_SYNTHETIC_SAMPLES, seed)
        source = "synthetic standard normal"
    elif isinstance(data, (str, Path)):
        arrays = _load_file(Path(data), names)
        source = str(data)
    elif isinstance(data, np.ndarray) or type(data).__name__ == "Tensor":
        arrays, source = [data], f"in-memory {type(data).__name__}"
    elif isinstance(data, dict):
        arrays = list(_select_inputs(data, names, "in-memory dict"))
        source = "in-memory dict"
    elif isinstance(data, Iterable):
        return Calibration(f"in-memory {type(data).__name__}", False, None, _iterable=data,
                           _names=names, _limit=limit)
    else:
        raise UsageError(f"cannot read calibration data of type {type(data).__name__}",
                         "pass a path, an array, a tensor or an iterable of batches")

    if len(arrays) != len(specs):
        raise DataError(f"{source}: {len(arrays)} arrays for a model with {len(specs)} inputs",
                        "an .npz needs one array per input, named after it")
    for array, spec in zip(arrays, specs):
        _validate(array, spec.dtype, spec.name, source)
    _check_shapes(arrays, specs, source)
    samples = _rows(arrays[0])
    if limit is not None:
        samples = min(samples, limit)
    if samples == 0:
        raise DataError(f"{source}: no samples", "the calibration data is empty")
    return Calibration(source, synthetic, samples, _arrays=arrays, _names=names,
                       _dtypes=[s.dtype for s in specs])

