"""Calibration data -> a model's inputs: which array feeds which input, which inputs are
constants, where each input's samples lie, and how one batch becomes a call or a feed.

A model's inputs (``InputSpec``) come from its signature (PyTorch) or its graph (ONNX). Some are
optional (a parameter with a default: left at its default unless the data or a constant gives
it), some are not per-sample (``sr=16000``: a constant, ``--const``), some hold their samples on
another axis than 0 (a recurrent state ``[2, N, 128]``: ``--batch-axis state=1``), some take a
list with one tensor per sample (detection models' ``images``).

Inside reludoctor a batch is a tuple of arrays, one per *fed* input, samples on axis 0; the
``Binding`` moves each back to the model's layout, splits list inputs into one tensor per
sample, adds the constants and passes everything by position or by name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from reludoctor.errors import DataError, UsageError

# The input whose zeros mark padding positions (Hugging Face's name, 1 = a real token).
MASK_INPUT = "attention_mask"


@dataclass(frozen=True)
class InputSpec:
    """One input of a model as its backend's loader declares it, and how data binds to it."""

    name: str
    shape: tuple[int | None, ...] | None  # None entries are dynamic (the batch, usually)
    dtype: str | None  # numpy dtype name, e.g. "float32", "int64"
    # How calibration data binds to it:
    optional: bool = False  # has a default: bound only when the data or a constant gives it
    batch_axis: int | None = 0  # where its samples lie; None: not per-sample (fed whole, a constant)
    kind: str = "tensor"  # tensor | tensors (a list, one tensor per sample) | value (int, str, ...)
    keyword: bool = False  # passed by name only (a keyword-only parameter)


def parse_constants(items: Sequence[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``--const NAME=VALUE`` items (VALUE is JSON: 16000, 0.5, true, "text", [1, 2]; a bare word
    is a string), or a dict already (the Python API's ``constants``)."""
    if not items:
        return {}
    if isinstance(items, Mapping):
        return {str(k): v for k, v in items.items()}
    out: dict[str, Any] = {}
    for item in items:
        name, sep, text = str(item).partition("=")
        name = name.strip()
        if not sep or not name:
            raise UsageError(f"--const {item!r} is not NAME=VALUE", "e.g. --const sr=16000")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word: a string
        if name in out:
            raise UsageError(f"--const {name} is given twice")
        out[name] = value
    return out


def parse_batch_axes(items: Sequence[str] | Mapping[str, int] | None) -> dict[str, int]:
    """``--batch-axis NAME=AXIS`` items, or a dict already."""
    if not items:
        return {}
    pairs = items.items() if isinstance(items, Mapping) else \
        [str(item).partition("=")[::2] if "=" in str(item) else (str(item), None) for item in items]
    out: dict[str, int] = {}
    for name, axis in pairs:
        name = str(name).strip()
        try:
            value = int(axis)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UsageError(f"--batch-axis {name}={axis}: AXIS must be an integer",
                             "e.g. --batch-axis state=1") from None
        if not name:
            raise UsageError("--batch-axis needs NAME=AXIS", "e.g. --batch-axis state=1")
        out[name] = value
    return out


def shape_text(shape: Sequence[Any] | None, axis: int | None = 0) -> str:
    """``[2, N, 128]``: N at the batch axis, ? for another dynamic size."""
    if shape is None:
        return "[any shape]"
    dims = ["N" if i == axis else ("?" if d is None else str(d)) for i, d in enumerate(shape)]
    return f"[{', '.join(dims)}]"


def _dims(array: Any) -> str:
    return f"[{', '.join(str(int(d)) for d in array.shape)}]"


def _is_tensor(value: Any) -> bool:
    return type(value).__name__ in ("Tensor", "Parameter") or hasattr(value, "__array__") and \
        hasattr(value, "shape") and hasattr(value, "dtype")


def _moveaxis(array: Any, source: int, target: int) -> Any:
    if source == target:
        return array
    if hasattr(array, "movedim"):
        return array.movedim(source, target)
    import numpy as np

    return np.moveaxis(array, source, target)


@dataclass
class Binding:
    """How one model's inputs are filled. ``fed``: inputs bound to data arrays, in the order a
    batch holds them (samples on axis 0 there; ``axes``: their batch axis in the model's layout).
    ``constants``: name -> value (``--const``, or a data array fed whole to every batch)."""

    inputs: tuple[InputSpec, ...]
    fed: tuple[InputSpec, ...]
    axes: tuple[int, ...]
    keys: tuple[Any, ...]  # per fed input: its key in the data (name) or position
    constants: dict[str, Any] = field(default_factory=dict)
    constant_keys: dict[str, Any] = field(default_factory=dict)  # from the data, fed whole
    origins: dict[str, str] = field(default_factory=dict)
    _converted: dict[Any, dict[str, Any]] = field(default_factory=dict, repr=False)

    @property
    def names(self) -> list[str]:
        return [spec.name for spec in self.fed]

    @property
    def mask_index(self) -> int | None:
        """Which fed array is the per-position mask of a padded text batch (the input named
        ``attention_mask``, 1 = a real token), or None: its zeros are never observed."""
        return self.names.index(MASK_INPUT) if MASK_INPUT in self.names else None

    @property
    def plain(self) -> bool:
        """Every input fed from data, positionally, samples on axis 0: ``forward(*batch)``."""
        return (len(self.fed) == len(self.inputs) and not self.constants
                and all(a == 0 for a in self.axes) and all(s.kind == "tensor" and not s.keyword
                                                           for s in self.fed))

    # ---------------------------------------------------------------- messages

    def describe(self) -> str:
        """``bound: input <- 'input' [N, 512], sr <- --const 16000; left at their defaults: ...``"""
        bound = [f"{spec.name} <- {self.origins.get(spec.name, 'data')}" for spec in self.fed]
        bound += [f"{name} <- {self.origins.get(name, 'constant')}" for name in self.constants]
        left = [spec.name for spec in self.inputs
                if spec.name not in self.constants and spec.name not in self.names]
        text = "inputs bound: " + (", ".join(bound) or "none")
        if left:
            text += f"; left at their defaults: {', '.join(left)}"
        return text

    # ---------------------------------------------------------------- batches

    def take(self, item: Any, source: str) -> tuple:
        """The fed arrays of one item of an iterable of batches (the same keys as the first),
        in reludoctor's layout (samples on axis 0)."""
        out = []
        for spec, axis, key in zip(self.fed, self.axes, self.keys):
            array = _item_value(item, key, spec, source)
            check_array(spec, axis, array, source)
            out.append(_moveaxis(array, axis, 0))
        return tuple(out)

    # ---------------------------------------------------------------- PyTorch

    def model_layout(self, tensors: Sequence[Any]) -> dict[str, Any]:
        """name -> value for the fed inputs, in the model's layout."""
        values: dict[str, Any] = {}
        for spec, axis, tensor in zip(self.fed, self.axes, tensors):
            if spec.kind == "tensors":
                values[spec.name] = list(tensor.unbind(0)) if hasattr(tensor, "unbind") \
                    else [row for row in tensor]
            else:
                values[spec.name] = _moveaxis(tensor, 0, axis)
        return values

    def torch_constants(self, device: Any) -> dict[str, Any]:
        """The constants as the model takes them, converted once per device."""
        key = str(device)
        if key not in self._converted:
            specs = {spec.name: spec for spec in self.inputs}
            self._converted[key] = {name: _torch_value(specs[name], value, device)
                                    for name, value in self.constants.items()}
        return self._converted[key]

    def arguments(self, tensors: Sequence[Any], device: Any = None) -> tuple[list[Any], dict[str, Any]]:
        """(args, kwargs) for the model: positional while every input so far is bound, then by
        name; inputs nobody bound are left out (at their defaults)."""
        if self.plain:
            return list(tensors), {}
        if device is None:
            device = next((t.device for t in tensors if hasattr(t, "device")), "cpu")
        values = self.model_layout(tensors)
        values.update(self.torch_constants(device))
        args: list[Any] = []
        kwargs: dict[str, Any] = {}
        gap = False
        for spec in self.inputs:
            if spec.name not in values:
                gap = True
                continue
            if gap or spec.keyword:
                kwargs[spec.name] = values[spec.name]
            else:
                args.append(values[spec.name])
        return args, kwargs

    def call(self, forward: Any, tensors: Sequence[Any], device: Any = None) -> Any:
        args, kwargs = self.arguments(tensors, device)
        return forward(*args, **kwargs)

    def wrap(self, forward: Any, device: Any = None) -> Any:
        """``forward`` taking one batch's fed tensors positionally (``forward(*batch)``)."""
        if self.plain:
            return forward

        def bound(*tensors: Any) -> Any:
            return self.call(forward, tensors, device)

        return bound

    def dynamic_shapes(self, args: Sequence[Any], kwargs: Mapping[str, Any], dim: Any) -> Any:
        """torch.export's dynamic_shapes for ``arguments()``: the batch axis of each fed tensor."""
        axes = {spec.name: axis for spec, axis in zip(self.fed, self.axes)}
        kinds = {spec.name: spec.kind for spec in self.fed}

        def spec_of(name: str) -> Any:
            if name not in axes:
                return None
            if kinds[name] == "tensors":
                raise ValueError("a list input has one tensor per sample: its length is the batch")
            return {axes[name]: dim}

        if self.plain:
            return tuple({0: dim} for _ in args)
        names = [spec.name for spec in self.inputs if spec.name in axes or spec.name in self.constants]
        positional = [name for name in names if name not in kwargs][:len(args)]
        out = {name: spec_of(name) for name in positional}
        out.update({name: spec_of(name) for name in kwargs})
        return out

    # ---------------------------------------------------------------- ONNX

    def onnx_constants(self) -> dict[str, Any]:
        """The constants as numpy arrays of each input's declared type (and shape when the input
        declares a fixed one and the value is a scalar)."""
        if "onnx" not in self._converted:
            specs = {spec.name: spec for spec in self.inputs}
            self._converted["onnx"] = {name: _onnx_value(specs[name], value)
                                       for name, value in self.constants.items()}
        return self._converted["onnx"]


def _item_value(item: Any, key: Any, spec: InputSpec, source: str) -> Any:
    if isinstance(key, str):
        if not isinstance(item, Mapping) or key not in item:
            found = ", ".join(map(str, item)) if isinstance(item, Mapping) else type(item).__name__
            raise DataError(f"{source}: batch has no entry for input '{spec.name}' (key {key!r})",
                            f"keys found: {found}")
        return item[key]
    if isinstance(item, (tuple, list)):
        if len(item) <= key:
            raise DataError(f"{source}: batch has {len(item)} arrays, input '{spec.name}' is "
                            f"bound to position {key}")
        return item[key]
    if key == 0 and not isinstance(item, Mapping):
        return item
    raise DataError(f"{source}: a batch of type {type(item).__name__} has no array for input "
                    f"'{spec.name}'", "yield arrays, tuples or dicts keyed by input name")


def _torch_value(spec: InputSpec, value: Any, device: Any) -> Any:
    import numpy as np
    import torch

    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, np.ndarray):
        tensor = torch.from_numpy(np.array(value, copy=True))
        if tensor.dtype == torch.float64:
            tensor = tensor.float()
        return tensor.to(device)
    if spec.kind == "tensor" and isinstance(value, (list, int, float, bool)) \
            and not isinstance(value, str) and (isinstance(value, list) or spec.shape is not None):
        tensor = torch.as_tensor(value)
        if tensor.dtype == torch.float64:
            tensor = tensor.float()
        return tensor.to(device)
    return value  # an int, a float, a string, a list of ints: as the user wrote it


def _onnx_value(spec: InputSpec, value: Any) -> Any:
    import numpy as np

    try:
        dtype = np.dtype(spec.dtype) if spec.dtype else None
    except TypeError:
        dtype = None
    try:
        array = np.array(value.detach().cpu().numpy() if hasattr(value, "detach") else value,
                         dtype=dtype, copy=True)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"--const {spec.name}: {value!r} is not a {spec.dtype or 'numeric'} value "
                         f"({exc})") from exc
    shape = spec.shape
    if shape is not None and array.ndim == 0 and len(shape) > 0 \
            and all(d is not None for d in shape):
        array = np.full(tuple(int(d) for d in shape), array, dtype=array.dtype)
    elif shape is not None and array.ndim != len(shape):
        raise UsageError(f"--const {spec.name}: a value of shape {list(array.shape)} for an input "
                         f"declared {shape_text(shape, None)}",
                         "give a scalar, or a nested list of the declared shape")
    return array


def check_array(spec: InputSpec, axis: int, array: Any, source: str) -> None:
    """The array's shape against the declared one (the batch axis free)."""
    if spec.shape is None or spec.kind != "tensor":
        return
    got = tuple(int(d) for d in array.shape)
    expected = tuple(spec.shape)
    if len(got) == len(expected) and all(e is None or e == g or i == axis
                                         for i, (e, g) in enumerate(zip(expected, got))):
        return
    if axis == 0 and len(got) >= 1:  # the long-standing wording for the usual layout
        shown = ", ".join("N" if d is None or i == 0 else str(d) for i, d in enumerate(expected))
        raise DataError(f"{source}: input '{spec.name}' has shape [N, {', '.join(map(str, got[1:]))}] "
                        f"but the model expects [{shown}]", "pass data of the model's input shape")
    raise DataError(f"{source}: input '{spec.name}': expected {shape_text(expected, axis)} "
                    f"(batch on axis {axis}), got {_dims(array)}",
                    f"pass data in the model's layout, or name the batch axis with "
                    f"--batch-axis {spec.name}=AXIS")


def _inputs_text(specs: Sequence[InputSpec], constants: Mapping[str, Any]) -> str:
    required = [s.name for s in specs if not s.optional]
    optional = [s.name for s in specs if s.optional]
    text = f"required: {', '.join(required) or 'none'}"
    if optional:
        text += f"; optional: {', '.join(optional)}"
    return text


def check_names(specs: Sequence[InputSpec], constants: Mapping[str, Any],
                batch_axes: Mapping[str, int]) -> None:
    names = {spec.name for spec in specs}
    for option, given in (("--const", constants), ("--batch-axis", batch_axes)):
        unknown = [name for name in given if name not in names]
        if unknown:
            raise UsageError(f"{option} {unknown[0]}: the model has no input of that name "
                             f"(its inputs: {_inputs_text(specs, constants)})")


def _primary(candidates: Sequence[InputSpec]) -> list[InputSpec]:
    """Inputs an unnamed array (or tuple of arrays) feeds, in order: the required ones, else
    the first that can take an array."""
    required = [s for s in candidates if not s.optional]
    if required:
        return required
    tensors = [s for s in candidates if s.kind != "value" and not s.keyword]
    return tensors[:1] or list(candidates[:1])


def bind(specs: Sequence[InputSpec], data: Mapping[str, Any] | Sequence[Any], *, source: str,
         constants: Mapping[str, Any] | None = None, batch_axes: Mapping[str, int] | None = None,
         ) -> tuple[Binding, list[Any], list[str]]:
    """Bind ``data`` (named arrays, or arrays in order) to the model's inputs.

    Returns the Binding, the fed arrays in reludoctor's layout (samples on axis 0), and notes
    for the user (arrays that feed no input)."""
    constants = dict(constants or {})
    batch_axes = dict(batch_axes or {})
    check_names(specs, constants, batch_axes)
    candidates = [s for s in specs if s.name not in constants]
    origins = {name: f"--const {json.dumps(value) if _jsonable(value) else type(value).__name__}"
               for name, value in constants.items()}
    notes: list[str] = []
    pairs: list[tuple[InputSpec, Any]] = []
    if isinstance(data, Mapping):
        keys = list(data)
        by_name = {s.name: s for s in candidates}
        matched = [k for k in keys if k in by_name]
        both = [k for k in keys if k in constants]
        if both:
            raise UsageError(f"input '{both[0]}' is given twice: by the data and by --const",
                             "drop one of them")
        if matched:
            pairs = [(by_name[k], k) for k in keys if k in by_name]
            pairs.sort(key=lambda pair: [s.name for s in specs].index(pair[0].name))
        elif len(keys) == 1 and _primary(candidates):
            pairs = [(_primary(candidates)[0], keys[0])]
        unused = [k for k in keys if k not in {key for _, key in pairs}]
        if unused:
            notes.append(f"{source}: array(s) {', '.join(repr(k) for k in unused)} feed no input of "
                         f"the model and are ignored (its inputs: {_inputs_text(specs, constants)})")
        where = {k: f"{source}[{k!r}]" for k in keys}
    else:
        arrays = list(data)
        targets = _primary(candidates)
        if len(arrays) < len(targets):
            raise DataError(f"{source}: {len(arrays)} array(s) for a model whose required inputs "
                            f"are {', '.join(s.name for s in targets)}",
                            "pass an .npz (or a dict) with one array per input, named after it")
        pairs = [(spec, index) for index, spec in enumerate(targets)]
        where = {index: source if len(arrays) == 1 else f"{source}[{index}]" for index in range(len(arrays))}
    bound = {spec.name for spec, _ in pairs}
    missing = [s for s in candidates if not s.optional and s.name not in bound]
    if missing:
        spec = missing[0]
        how = (f"pass --const {spec.name}=VALUE" if spec.kind == "value" or spec.batch_axis is None
               else f"name an array '{spec.name}' in an .npz (or a dict), or pass --const "
                    f"{spec.name}=VALUE")
        if isinstance(data, Mapping):
            how = f"arrays found: {', '.join(map(str, data))}; {how}"
        names = ", ".join(s.name for s in missing)
        raise DataError(f"{source}: no array for input(s) {names}, required by the model "
                        f"({_inputs_text(specs, constants)}; "
                        f"bound: {', '.join(sorted(bound | set(constants))) or 'none'})", how)
    fed: list[InputSpec] = []
    axes: list[int] = []
    keys_out: list[Any] = []
    arrays_out: list[Any] = []
    constant_keys: dict[str, Any] = {}
    for spec, key in pairs:
        array = data[key]  # type: ignore[index]
        if spec.kind == "value":
            raise DataError(f"{source}: input '{spec.name}' takes a single value, not an array of "
                            "samples", f"pass --const {spec.name}=VALUE")
        if not _is_tensor(array):
            raise DataError(f"{source}: input '{spec.name}' is a {type(array).__name__}, not an "
                            "array", "pass numpy arrays or torch tensors")
        axis = batch_axes.get(spec.name, spec.batch_axis)
        ndim = len(array.shape)
        if axis is None:  # not per-sample: fed whole, when it has the declared shape
            if spec.shape is not None and tuple(array.shape) != tuple(spec.shape):
                raise DataError(f"{source}: input '{spec.name}' is declared {shape_text(spec.shape, None)} "
                                f"with no batch axis, got {_dims(array)}",
                                f"pass it whole, or name its batch axis with --batch-axis {spec.name}=AXIS")
            constants[spec.name] = array
            constant_keys[spec.name] = key
            origins[spec.name] = f"{where.get(key, source)} {_dims(array)}, whole"
            continue
        if ndim == 0:
            raise DataError(f"{source}: input '{spec.name}' is a scalar, not a batch of samples",
                            f"the first axis must index samples (or pass --const {spec.name}=VALUE)")
        if axis < 0:
            axis += ndim
        if not 0 <= axis < ndim:
            raise DataError(f"{source}: input '{spec.name}' has {ndim} dimension(s): no batch axis "
                            f"{batch_axes.get(spec.name, spec.batch_axis)}",
                            "the batch axis must be one of the array's axes")
        if spec.kind == "tensors" and axis != 0:
            raise UsageError(f"--batch-axis {spec.name}: a list input takes one tensor per sample "
                             "(batch on axis 0)")
        check_array(spec, axis, array, source)
        fed.append(spec)
        axes.append(axis)
        keys_out.append(key)
        arrays_out.append(_moveaxis(array, axis, 0))
        origins[spec.name] = f"{where.get(key, source)} {shape_text(array.shape, axis)}" \
            if axis else where.get(key, source)
    if not fed:
        found = f"; arrays found: {', '.join(map(str, data))}" if isinstance(data, Mapping) else ""
        raise DataError(f"{source}: no array feeds a per-sample input of the model "
                        f"({_inputs_text(specs, constants)}{found})",
                        "name each array after the model input it feeds")
    rows = {int(a.shape[0]) for a in arrays_out}
    if len(rows) > 1:
        counts = ", ".join(f"'{s.name}' {int(a.shape[0])} (axis {x})"
                           for s, a, x in zip(fed, arrays_out, axes))
        raise DataError(f"{source}: inputs have different sample counts: {counts}",
                        "every input needs one sample per row of its batch axis (--batch-axis NAME=AXIS)")
    binding = Binding(tuple(specs), tuple(fed), tuple(axes), tuple(keys_out), constants,
                      constant_keys, origins)
    return binding, arrays_out, notes


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False
