"""Calibration data -> batches, one array per model input, streamed.

Sources: ``.npy``, ``.npz`` and ``.pt`` files (read by ``reludoctor.data.arrays``: memory-mapped
where possible, nothing unpickled), folders of PNG/JPEG images (decoded batch by batch,
``reludoctor.data.images``), in-memory arrays and tensors, iterables of batches, or synthetic
standard-normal inputs. Here: the ``Calibration`` (batches, validated and cast), the checks of
the input shapes a model file declares, and ``load_calibration``, which picks the source.

Which samples are read (the first ``limit``, or a seeded ``sample``) is decided once by
``reludoctor.data.sampling`` for every source of known length; the samples are then read in
ascending index order, one batch at a time.
"""

from __future__ import annotations

import itertools
import math
import mmap
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from reludoctor.data.arrays import load_file, native_dtype
from reludoctor.data.binding import Binding, InputSpec, bind
from reludoctor.data.sampling import check_options as check_selection
from reludoctor.data.sampling import select
from reludoctor.errors import DataError, UsageError

DEFAULT_SYNTHETIC_SAMPLES = 256
# Synthetic inputs are generated whole (samples x the model's declared input shape); a model file
# declaring a huge input (a dimension of 2**62) must be refused, not allocated (docs/security.md).
MAX_SYNTHETIC_BYTES = 4 << 30
# A model exported with a fixed batch is fed batches of exactly that many rows, the last one
# padded by repeating a sample, whatever --batch-size says. The fixed batch and the input shapes
# come from the (untrusted) model file, so they are bounded before anything is allocated
# (docs/security.md): a fixed batch above MAX_FIXED_BATCH rows, or whose padded batch of inputs
# would exceed MAX_PADDED_BATCH_BYTES, is refused with a hint to re-export with a dynamic batch;
# an input declaring more than MAX_SAMPLE_BYTES per sample is refused as it can never be fed.
MAX_FIXED_BATCH = 65_536  # rows
MAX_PADDED_BATCH_BYTES = 1 << 30  # 1 GiB: one padded batch, all inputs together
MAX_SAMPLE_BYTES = 1 << 31  # 2 GiB: one sample of one input, as the model declares it

Batch = tuple  # one array or tensor per fed model input (``Calibration.binding``), leading axis = samples


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
    _indices: Any = None  # sorted sample indices to read (a --sample subset); None: the first `samples`
    _images: Any = None  # a reludoctor.data.images.ImageFolder (the model's one input), instead of _arrays
    _texts: Any = None  # a reludoctor.data.texts.TextCorpus (input_ids, attention_mask), instead of _arrays
    notes: list[str] = field(default_factory=list)  # for the user (warnings), e.g. a sample too large
    # Which array feeds which input, the constants, the batch axes (reludoctor.data.binding); for an
    # iterable of batches, decided on its first item (from _specs, _constants, _batch_axes).
    _binding: Binding | None = None
    _specs: list[InputSpec] | None = None
    _constants: dict[str, Any] | None = None
    _batch_axes: dict[str, int] | None = None

    @property
    def binding(self) -> Binding:
        """How a batch is passed to the model (known once the first batch of an iterable is read)."""
        if self._binding is None:
            self.example(1)
        assert self._binding is not None
        return self._binding

    def _bind_item(self, item: Any) -> Batch:
        """The fed arrays of one item of an iterable, binding the inputs on the first item."""
        if self._binding is None:
            data = item if isinstance(item, dict) else (
                list(item) if isinstance(item, (tuple, list)) else [item])
            binding, arrays, notes = bind(self._specs or [InputSpec("input", None, None)], data,
                                          source=self.source, constants=self._constants,
                                          batch_axes=self._batch_axes)
            self._binding = binding
            self._names = binding.names
            self._dtypes = [spec.dtype for spec in binding.fed]
            self.notes.extend(notes)
            return tuple(arrays)
        return self._binding.take(item, self.source)

    @property
    def indexable(self) -> bool:
        """Samples can be read by position (arrays, memory-mapped files, image folders)."""
        return self._arrays is not None or self._images is not None or self._texts is not None

    @property
    def sample_indices(self) -> Any:
        """The data's sample indices a --sample subset reads (sorted), or None: the first ones."""
        return self._indices

    def at_positions(self, positions: Any) -> Calibration:
        """The same data restricted to these positions (sorted) of its scan order."""
        indices = np.asarray(positions, np.int64)
        if self._indices is not None:
            indices = np.asarray(self._indices, np.int64)[indices]
        return replace(self, samples=int(indices.size), _indices=indices)

    def example(self, rows: int = 2) -> Batch:
        """The first rows of the data (for tracing), without consuming a one-shot iterable."""
        if self.indexable:
            return self._read(self._rows_at(0, min(rows, self.samples or 0)))
        iterator = iter(self._iterable or ())
        try:
            first = next(iterator)
        except StopIteration:
            raise DataError(f"{self.source}: no samples", "the calibration data is empty") from None
        self._iterable = itertools.chain([first], iterator)
        return tuple(_cast(b[:rows], None) for b in self._bind_item(first))

    def batches(self, batch_size: int) -> Iterator[Batch]:
        if self.indexable:
            total = self.samples or 0
            for start in range(0, total, batch_size):
                stop = min(start + batch_size, total)
                rows = self._rows_at(start, stop)
                batch = self._read(rows)
                _check_batch(batch, self._names or [], start, self.source,
                             None if isinstance(rows, slice) else rows)
                yield batch
            return
        yield from self._iterate(batch_size)

    def _rows_at(self, start: int, stop: int) -> Any:
        """Which samples positions start..stop of the scan are: a slice, or sorted indices."""
        if self._indices is None:
            return slice(start, stop)
        return self._indices[start:stop]

    def _read(self, rows: Any) -> Batch:
        """One batch, read now (a private copy; images decoded now)."""
        if self._images is not None:
            return (self._images.read(rows),)
        if self._texts is not None:  # padded to the longest of these rows
            values = self._texts.read(rows)
            return tuple(values[name] for name in self._names or [])
        batch = tuple(_cast(_take(a, rows), d) for a, d in zip(self._arrays or [], self._dtypes or []))
        for array in self._arrays or []:
            _release(array, rows)
        return batch

    def _iterate(self, batch_size: int) -> Iterator[Batch]:
        # An iterable of batches of any size, regrouped to batch_size so padding is rare.
        seen = 0
        names = self._names or []
        for item in self._iterable or ():
            batch = self._bind_item(item)
            names = self._names or []
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


def _itemsize(dtype: str | None) -> int:
    try:
        return int(np.dtype(dtype).itemsize) if dtype else 1
    except TypeError:  # bfloat16, float8, string: 2 bytes or fewer, or unknown
        return 2 if dtype == "bfloat16" else 1


def check_model_inputs(specs: Sequence[InputSpec], fixed_batch: int | None, where: str) -> None:
    """Refuse input shapes a model file declares that no scan could allocate: a sample over
    MAX_SAMPLE_BYTES, a fixed batch below 1 or over MAX_FIXED_BATCH rows, or whose padded batch
    would exceed MAX_PADDED_BATCH_BYTES (unknown dimensions count as 1). ModelLoadError, exit 2."""
    from reludoctor.errors import ModelLoadError

    total = 0
    for spec in specs:
        if spec.shape is None or not spec.shape:
            continue
        batch_axis = spec.batch_axis if spec.batch_axis is not None else -1
        sample = math.prod(d for i, d in enumerate(spec.shape) if d is not None and i != batch_axis) \
            * _itemsize(spec.dtype)
        if sample > MAX_SAMPLE_BYTES:
            shown = ", ".join("N" if d is None else str(d) for d in spec.shape)
            raise ModelLoadError(
                f"{where}: input '{spec.name}' is declared [{shown}]: one sample would take "
                f"{sample:,} bytes, more than the limit of {MAX_SAMPLE_BYTES:,}",
                "the model file is corrupt, or its input shape is wrong")
        total += sample
    if fixed_batch is None:
        return
    if fixed_batch < 1:
        raise ModelLoadError(f"{where}: the model declares a batch of {fixed_batch}: no sample can "
                             "be fed", "re-export the model with a dynamic batch axis")
    padded = fixed_batch * total
    if fixed_batch > MAX_FIXED_BATCH or padded > MAX_PADDED_BATCH_BYTES:
        raise ModelLoadError(
            f"{where}: the model was exported with a fixed batch of {fixed_batch:,} rows "
            f"({padded:,} bytes of inputs per batch); every batch is padded to it, and the limits "
            f"are {MAX_FIXED_BATCH:,} rows and {MAX_PADDED_BATCH_BYTES:,} bytes",
            "re-export the model with a dynamic batch axis (dynamic_axes / dynamic_shapes)")


def check_padding(batch: Sequence[Any], fixed_batch: int, source: str) -> None:
    """Before a batch is padded to a model's fixed batch: refuse a padded batch of inputs over
    MAX_PADDED_BATCH_BYTES (the real sizes; ``check_model_inputs`` saw only declared ones)."""
    if fixed_batch > MAX_FIXED_BATCH:  # loaders refuse it already; a caller's model may not
        raise DataError(f"{source}: the model's fixed batch of {fixed_batch:,} rows is more than "
                        f"the limit of {MAX_FIXED_BATCH:,}: every batch would be padded to it",
                        "re-export the model with a dynamic batch axis (dynamic_axes / dynamic_shapes)")
    total = 0
    for array in batch:
        rows = max(_rows(array), 1) if getattr(array, "ndim", 0) else 1
        if isinstance(array, np.ndarray):
            size = int(array.nbytes)
        else:
            size = int(array.numel()) * int(array.element_size())
        total += fixed_batch * (size // rows)
    if total > MAX_PADDED_BATCH_BYTES:
        raise DataError(
            f"{source}: padding a batch to the model's fixed batch of {fixed_batch:,} rows would "
            f"take {total:,} bytes, more than the limit of {MAX_PADDED_BATCH_BYTES:,}",
            "re-export the model with a dynamic batch axis (dynamic_axes / dynamic_shapes)")


def _take(array: Any, rows: Any) -> Any:
    """Rows of an array or tensor: a slice, or sorted indices (a memmap reads only those)."""
    if isinstance(rows, slice) or isinstance(array, np.ndarray):
        return array[rows]
    import torch

    return array[torch.from_numpy(np.asarray(rows, dtype=np.int64))]


def _release(array: Any, rows: Any) -> None:
    """After a batch is copied out of a memory-mapped ``.npy``: drop the pages just read from
    this process's resident set (they stay in the OS page cache). Without it a scan's peak RSS
    grows to the size of the file, as every page it touched stays mapped."""
    mapped = getattr(array, "_mmap", None)  # numpy.memmap's mmap.mmap (np.load(mmap_mode="r"))
    if mapped is None or not hasattr(mapped, "madvise") or not hasattr(mmap, "MADV_DONTNEED"):
        return
    if array.flags.writeable or not array.flags.c_contiguous or _rows(array) == 0:
        return  # writable maps (a caller's mode "r+"/"c" memmap) may hold changes: left alone
    if isinstance(rows, slice):
        first, stop = rows.start or 0, rows.stop
    else:
        if len(rows) == 0:
            return
        first, stop = int(rows[0]), int(rows[-1]) + 1
    try:
        base = np.frombuffer(mapped, dtype=np.uint8).__array_interface__["data"][0]
        offset = array.__array_interface__["data"][0] - base
        row_bytes = array.strides[0]
        start = (offset + first * row_bytes) // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(offset + stop * row_bytes, len(mapped))
        if end > start:
            mapped.madvise(mmap.MADV_DONTNEED, start, end - start)
    except (ValueError, OSError, BufferError, TypeError):  # best effort: only memory is at stake
        return


def _cast(array: Any, spec_dtype: str | None) -> Any:
    """Per batch (never the whole memory-mapped file): float64 -> float32, always a private
    copy, so a model that writes into its input never touches the caller's data or file.
    Non-native byte order (a big-endian ``>f4`` file on a little-endian machine) becomes native
    here, for every source: onnxruntime would misread it and torch refuses it."""
    keep_double = spec_dtype == "float64"
    if isinstance(array, np.ndarray):
        dtype = native_dtype(array.dtype)  # ('>f8' != float64: native first, then narrowed)
        dtype = np.float32 if dtype == np.float64 and not keep_double else dtype
        return np.array(array, dtype=dtype, order="C", copy=True)
    import torch

    if array.dtype == torch.float64 and not keep_double:
        return array.float()
    return array.clone()


def _is_floating(array: Any) -> bool:
    if isinstance(array, np.ndarray):
        return np.issubdtype(array.dtype, np.floating)
    return bool(getattr(array, "is_floating_point", lambda: False)())


def _check_batch(batch: Batch, names: Sequence[str], start: int, source: str,
                 indices: Any = None) -> None:
    """Refuse NaN/inf, naming the samples: rows start.., or (a --sample) their indices in the data."""
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
            where = f"samples {start}-{start + _rows(array) - 1}"
            if indices is not None:
                values = array if isinstance(array, np.ndarray) else array.float().numpy()
                bad = ~np.isfinite(values.reshape(_rows(array), -1)).all(axis=1)
                where = f"sample {int(indices[int(np.argmax(bad))])}"
            raise DataError(
                f"{source}: input '{name}' has NaN or infinite values in {where}",
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
        if array.layout != torch.strided:
            layout = str(array.layout).replace("torch.", "")
            raise DataError(f"{source}: input '{name}' is a sparse tensor ({layout}), refused",
                            "save a dense tensor (tensor.to_dense())")
        if array.is_quantized or array.is_complex() or array.device.type == "meta":
            what = "a meta tensor (no data)" if array.device.type == "meta" \
                else f"{str(array.dtype).replace('torch.', '')} values"
            raise DataError(f"{source}: input '{name}' holds {what}, not plain numbers",
                            "save a dense float or integer tensor")
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


def _widen_bfloat16(array: Any, spec: InputSpec) -> Any:
    """bfloat16 tensors become float32 (exact: every bfloat16 value is a float32), unless the
    model's input is declared bfloat16: numpy and onnxruntime have no bfloat16, and a float32
    model refuses it. Sparse, quantized and complex tensors are refused by ``_validate``."""
    if type(array).__name__ != "Tensor" or spec.dtype == "bfloat16":
        return array
    import torch

    if array.dtype == torch.bfloat16 and array.layout == torch.strided and array.device.type != "meta":
        return array.float()
    return array


def _synthetic(specs: Sequence[InputSpec], input_shape: tuple[int, ...] | None, samples: int,
               seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = []
    for index, spec in enumerate(specs):
        if spec.name == "input_ids":  # token ids: random floats would not be tokens
            raise UsageError("input 'input_ids' takes token ids: synthetic data is float only",
                             "pass --data texts.jsonl (see docs/language-models.md) or an .npz of input_ids")
        axis = spec.batch_axis
        rest = None if spec.shape is None or axis is None else \
            [d for i, d in enumerate(spec.shape) if i != axis]
        if input_shape is not None and index == 0:
            shape = tuple(input_shape)
            axis = 0
        elif rest is not None and all(d is not None for d in rest):
            shape = tuple(int(d) for d in rest)  # type: ignore[arg-type]
        else:
            raise UsageError(f"cannot tell the shape of input '{spec.name}' for synthetic data",
                             "pass --data, or --input-shape C,H,W (without the batch)")
        if spec.dtype and not spec.dtype.startswith("float"):
            raise UsageError(f"input '{spec.name}' is {spec.dtype}: synthetic data is float only",
                             "pass --data")
        needed = samples * math.prod(shape) * 4
        if needed > MAX_SYNTHETIC_BYTES:
            raise UsageError(f"synthetic data for input '{spec.name}' of shape "
                             f"[{samples}, {', '.join(map(str, shape))}] would take {needed:,} "
                             f"bytes, more than the limit of {MAX_SYNTHETIC_BYTES:,}",
                             "pass --data, or fewer samples with --limit")
        array = rng.standard_normal((samples, *shape), dtype=np.float32)
        arrays.append(np.moveaxis(array, 0, axis or 0))  # in the model's layout
    return arrays


def load_calibration(
    data: Any,
    specs: Sequence[InputSpec],
    *,
    limit: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    seed: int = 0,
    sample: int | None = None,
    resize: int | None = None,
    center_crop: int | None = None,
    normalize: str | None = None,
    image_workers: int | None = None,
    constants: Any = None,
    batch_axes: Any = None,
    tokenizer: Any = None,
    max_length: int | None = None,
    pack: bool = False,
) -> Calibration:
    """Resolve any supported data source into a Calibration aligned with the model's inputs.

    ``limit``: the first N samples. ``sample``: N of them drawn at random (seeded by ``seed``,
    which also seeds synthetic data), read in index order; with ``limit``, drawn from the first
    ``limit``. ``resize``, ``center_crop``, ``normalize``: for a folder of images (see
    ``reludoctor.data.images``), refused for other sources.

    Inputs are bound by name (``.npz`` keys, dict keys) or, for unnamed arrays, to the required
    inputs in order; optional inputs nobody gives stay at their defaults (``reludoctor.data.binding``).
    ``constants``: name -> value (``--const``), the same for every batch. ``batch_axes``: name ->
    the axis of that input's samples (default: 0, or where an ONNX input declares its batch).
    
    ``tokenizer``, ``max_length``, ``pack``: for a ``.jsonl`` / ``.txt`` file of texts
    (``reludoctor.data.texts``), refused for other sources.
    """
    from reludoctor.data.binding import check_names, parse_batch_axes, parse_constants

    check_selection(limit=limit, sample=sample, seed=seed)
    specs = list(specs) or [InputSpec("input", None, None)]
    constants = parse_constants(constants)
    batch_axes = parse_batch_axes(batch_axes)
    check_names(specs, constants, batch_axes)
    bound = {"constants": constants, "batch_axes": batch_axes}
    synthetic = data is None
    is_folder = isinstance(data, (str, Path)) and Path(data).is_dir()
    image_options = [name for name, value in (("--resize", resize), ("--center-crop", center_crop),
                                              ("--normalize", normalize)) if value is not None]
    if image_options and not is_folder:
        raise UsageError(f"{', '.join(image_options)}: only for a folder of images (--data DIR)",
                         "drop the option, or pass a folder of PNG/JPEG files")
    from reludoctor.data import texts

    if texts.is_text_file(data):
        return _load_texts(Path(data), specs, tokenizer=tokenizer, max_length=max_length, pack=pack,
                           limit=limit, sample=sample, seed=seed, **bound)
    if is_folder:
        return _load_images(Path(data), specs, limit=limit, sample=sample, seed=seed, resize=resize,
                            center_crop=center_crop, normalize=normalize, workers=image_workers,
                            **bound)
    given: Any
    if synthetic:
        if sample is not None:
            raise UsageError("--sample picks from calibration data, and there is none",
                             "pass --data; for synthetic inputs set their count with --limit")
        wanted = [s for s in specs if s.name not in constants]
        wanted = [s for s in wanted if not s.optional] or wanted[:1]
        arrays = _synthetic(wanted, input_shape, limit or DEFAULT_SYNTHETIC_SAMPLES, seed)
        given = {s.name: a for s, a in zip(wanted, arrays)}
        source = "synthetic standard normal"
    elif isinstance(data, (str, Path)):
        given = load_file(Path(data), specs)
        source = str(data)
    elif isinstance(data, np.ndarray) or type(data).__name__ == "Tensor":
        given, source = [data], f"in-memory {type(data).__name__}"
    elif isinstance(data, dict):
        given, source = data, "in-memory dict"
    elif isinstance(data, Iterable):
        if sample is not None:
            raise UsageError("--sample needs data of known length (a file, an array or a tensor), "
                             "not an iterable of batches", "sample the batches yourself, or use limit")
        return Calibration(f"in-memory {type(data).__name__}", False, None, _iterable=data,
                           _limit=limit, _specs=specs, _constants=constants, _batch_axes=batch_axes)
    else:
        raise UsageError(f"cannot read calibration data of type {type(data).__name__}",
                         "pass a path, an array, a tensor or an iterable of batches")

    binding, arrays, notes = bind(specs, given, source=source, **bound)
    fed = list(binding.fed)
    for array, spec in zip(arrays, fed):
        _validate(array, spec.dtype, spec.name, source)
    arrays = [_widen_bfloat16(array, spec) for array, spec in zip(arrays, fed)]
    if _rows(arrays[0]) == 0:
        raise DataError(f"{source}: no samples", "the calibration data is empty")
    chosen = select(_rows(arrays[0]), limit=None if synthetic else limit, sample=sample, seed=seed)
    described = chosen.describe(seed)
    return Calibration(f"{source} ({described})" if described else source, synthetic, chosen.count,
                       _arrays=arrays, _names=binding.names, _dtypes=[s.dtype for s in fed],
                       _indices=chosen.indices, notes=notes + ([chosen.note] if chosen.note else []),
                       _binding=binding, _specs=specs)


def _load_images(root: Path, specs: Sequence[InputSpec], *, limit: int | None, sample: int | None,
                 seed: int, resize: int | None, center_crop: int | None, normalize: str | None,
                 workers: int | None, constants: dict[str, Any], batch_axes: dict[str, int],
                 ) -> Calibration:
    """A folder of PNG/JPEG images for the model's one required input (the others optional or
    constants), decoded batch by batch; a list input (detection models) gets one tensor per image."""
    from reludoctor.data import images
    from reludoctor.data.binding import Binding, _inputs_text

    candidates = [s for s in specs if s.name not in constants]
    required = [s for s in candidates if not s.optional]
    if len(required) > 1 or not candidates:
        raise DataError(f"{root}: a folder of images feeds one input, the model takes "
                        f"{len(required)} ({_inputs_text(specs, constants)})",
                        "pass an .npz with one array per input, or the others with --const")
    spec = (required or [s for s in candidates if s.kind != "value"] or candidates)[:1][0]
    axis = batch_axes.get(spec.name, 0)
    if axis != 0 and spec.kind == "tensor":
        raise UsageError(f"--batch-axis {spec.name}={axis}: images are fed [N, C, H, W] (batch on axis 0)")
    folder = images.open_folder(root, spec, resize=resize, center_crop=center_crop,
                                normalize=normalize, workers=workers)
    chosen = select(len(folder), limit=limit, sample=sample, seed=seed)
    details = "; ".join(filter(None, [folder.transform.describe(), chosen.describe(seed)]))
    source = f"{root} ({details})"
    origins = {spec.name: f"images in {root}" + (", one tensor per image" if spec.kind == "tensors" else "")}
    binding = Binding(tuple(specs), (spec,), (0,), (0,), dict(constants), {}, origins)
    return Calibration(source, False, chosen.count, _names=[spec.name],
                       _dtypes=[spec.dtype], _indices=chosen.indices, _images=folder,
                       notes=[chosen.note] if chosen.note else [], _binding=binding, _specs=list(specs))



def _load_texts(path: Path, specs: Sequence[InputSpec], *, tokenizer: Any, max_length: int | None,
                pack: bool, limit: int | None, sample: int | None, seed: int,
                constants: dict[str, Any], batch_axes: dict[str, int]) -> Calibration:
    """A ``.jsonl`` / ``.txt`` file of texts, tokenized now; batches padded as they are read."""
    from reludoctor.data import texts
    from reludoctor.options import DEFAULT_MAX_LENGTH

    loaded = texts.load_tokenizer(tokenizer)
    length = max_length or DEFAULT_MAX_LENGTH
    corpus = texts.tokenize(path, loaded, length, pack)
    source = str(path)
    binding, _, notes = bind(specs, corpus.read(slice(0, 1)), source=source, constants=constants,
                             batch_axes=batch_axes)
    texts.check_inputs(binding.names, corpus, source)
    if corpus.truncated:
        notes.append(f"{source}: {corpus.truncated} document(s) longer than {length} tokens were cut "
                     "to their first tokens (--max-length, or --pack to keep every token)")
    chosen = select(len(corpus), limit=limit, sample=sample, seed=seed)
    details = "; ".join(filter(None, [corpus.describe, chosen.describe(seed)]))
    return Calibration(f"{source} ({details})", False, chosen.count, _names=binding.names,
                       _dtypes=[s.dtype for s in binding.fed], _indices=chosen.indices, _texts=corpus,
                       notes=notes + ([chosen.note] if chosen.note else []), _binding=binding,
                       _specs=list(specs))
