"""onnxruntime sessions (providers, models past protobuf's limit), its errors on one line, and
the feeds of a batch."""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from typing import Any, Iterable

import numpy as np

from reludoctor.backends.base import LoadedModel
from reludoctor.errors import DataError, ModelLoadError, UsageError

# Past this serialized size a model cannot go through protobuf in one piece: the session is
# created from a temporary folder with external data instead.
MAX_PROTO_BYTES = 1_900_000_000


def _copy(model: Any) -> Any:
    import onnx

    target = onnx.ModelProto()
    target.CopyFrom(model)
    return target


def _with_extra(model: Any, extra: Any) -> Any:
    """``model`` with ``extra``'s nodes and outputs appended, never modifying ``model``.

    Protobuf merges concatenated messages (repeated fields append), so the original bytes plus
    the small ``extra`` message is the augmented model, without copying the weights in Python.
    Past protobuf's 2 GiB limit: a merged ModelProto copy instead (saved with external data).
    """
    if model.ByteSize() + extra.ByteSize() > MAX_PROTO_BYTES:
        target = _copy(model)
        target.MergeFrom(extra)
        return target
    return model.SerializeToString() + extra.SerializeToString()


def cuda_provider_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _providers(device: Any) -> list[Any]:
    kind = getattr(device, "type", str(device))
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        if not cuda_provider_available():
            raise UsageError("--device cuda: the installed onnxruntime has no CUDA execution provider",
                             "install onnxruntime-gpu, or use --device cpu")
        index = getattr(device, "index", None) or 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise UsageError(f"--device {device} is not supported for ONNX models", "use cpu or cuda")


def _session(model: Any, providers: list[Any], threads: int | None = None) -> Any:
    """An onnxruntime session with every graph optimisation on, from bytes or a ModelProto.

    A ModelProto over protobuf's limit is written to a temporary folder with external data
    (which converts its tensors: pass a copy).
    """
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if isinstance(model, bytes):
        return onnxruntime.InferenceSession(model, options, providers=providers)
    if model.ByteSize() <= MAX_PROTO_BYTES:
        return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=providers)
    folder = tempfile.mkdtemp(prefix="reludoctor-onnx-")
    try:
        path = os.path.join(folder, "model.onnx")
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
        return onnxruntime.InferenceSession(path, options, providers=providers)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")
_ORT_SOURCE = re.compile(r"\S*\.(?:h|hpp|cc|cpp|cu):\d+\s+")
_ORT_NOISE = ("please fix either the inputs/outputs or the model",)
MAX_ORT_MESSAGE = 600


def _skip_signature(text: str) -> str:
    """Drop a C++ function signature (``ns::f(args) const``) that onnxruntime puts before a check."""
    match = re.match(r"[\w:~<>,*& ]*::[\w~<>]+\(", text)
    if not match:
        return text
    depth, index = 0, match.end() - 1
    while index < len(text):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        index += 1
        if depth == 0:
            break
    rest = text[index:].lstrip()
    return rest[len("const"):].lstrip() if rest.startswith("const ") else rest


def _ort_message(exc: BaseException) -> str:
    """An onnxruntime error on one line, keeping its decisive part.

    onnxruntime puts the error class on the first line and the detail that tells the user what
    to change (``index: 0 Got: 32 Expected: 2``, the node and its status message) on the next
    lines, behind C++ source locations; keep the detail, drop the prefix and the locations.
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    parts = []
    for line in text.splitlines():
        line = _ORT_PREFIX.sub("", line.strip())
        while (found := _ORT_SOURCE.search(line)) is not None:
            line = line[:found.start()] + _skip_signature(line[found.end():])
        line = " ".join(line.split())
        if line and not any(noise in line.lower() for noise in _ORT_NOISE):
            parts.append(line.rstrip(";"))
    message = "; ".join(parts) or type(exc).__name__
    if len(message) > MAX_ORT_MESSAGE:  # keep both ends: the node names the place, the end the cause
        head = MAX_ORT_MESSAGE // 3
        message = message[:head].rstrip() + " … " + message[-(MAX_ORT_MESSAGE - head - 3):].lstrip()
    return message


def _quiet_run_options() -> Any:
    """RunOptions that keep onnxruntime from logging a failed run to stderr: the error is raised
    to the caller, which reports it in one line."""
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.log_severity_level = 4  # fatal only
    return options


def _open_session(model: Any, original: Any, providers: list[Any], where: str,
                  threads: int | None = None) -> Any:
    """Create the instrumented session; tell a model onnxruntime rejects from our own failure."""
    try:
        return _session(model, providers, threads)
    except Exception as exc:
        plain = original
        if not isinstance(original, bytes) and original.ByteSize() > MAX_PROTO_BYTES:
            plain = _copy(original)  # _session converts a large proto's tensors
        try:
            _session(plain, providers)
        except Exception as plain_exc:
            raise ModelLoadError(f"{where}: onnxruntime cannot load the model: {_ort_message(plain_exc)}",
                                 "the file may be corrupt or use operators onnxruntime lacks") from plain_exc
        raise RuntimeError(f"the instrumented ONNX graph was rejected by onnxruntime: "
                           f"{_ort_message(exc)}") from exc


def _to_numpy(array: Any) -> np.ndarray:
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _feed(loaded: LoadedModel, arrays: Iterable[Any], source: str, start: int,
          pad_to: int | None, binding: Any = None) -> tuple[dict[str, np.ndarray], int]:
    """Model inputs for one batch: numpy, the model's dtypes, shapes checked, padded if fixed.

    ``arrays``: the fed inputs of ``binding`` (samples on axis 0), each moved back to its batch
    axis here; the binding's constants are added (``reludoctor.data.binding``). Without a binding,
    every input of the model in order, samples on axis 0."""
    from reludoctor.data.binding import check_array

    feed: dict[str, np.ndarray] = {}
    rows = None
    arrays = list(arrays)
    specs = list(binding.fed) if binding is not None else list(loaded.inputs)
    axes = list(binding.axes) if binding is not None else [0] * len(specs)
    if pad_to is not None:  # the fixed batch comes from the file: bounded before padding
        from reludoctor.data.calibration import check_padding

        check_padding(arrays, pad_to, source)
    for spec, axis, raw in zip(specs, axes, arrays):
        array = _to_numpy(raw)
        if array.ndim == 0:
            raise DataError(f"{source}: input '{spec.name}' is a scalar, not a batch of samples",
                            "the first axis must index samples")
        rows = array.shape[0] if rows is None else rows
        check_array(spec, axis, np.moveaxis(array, 0, axis), source)
        if spec.dtype is not None and array.dtype.name != spec.dtype:
            try:
                want: np.dtype | None = np.dtype(spec.dtype)
            except TypeError:  # bfloat16, float8, ...: fed as given
                want = None
            have_float = array.dtype.kind == "f"
            if want is not None and want.kind == "f" and not have_float:
                raise DataError(f"{source}: input '{spec.name}' is {array.dtype.name} but the model "
                                f"expects {spec.dtype}", "convert (and normalise) the data to floats")
            if want is not None and want.kind in "iu" and have_float:
                raise DataError(f"{source}: input '{spec.name}' is {array.dtype.name} but the model "
                                f"expects {spec.dtype}", "pass integer data (e.g. token ids)")
            if want is not None:
                array = array.astype(want)
        if pad_to is not None and array.shape[0] < pad_to:
            filler = np.repeat(array[-1:], pad_to - array.shape[0], axis=0)
            array = np.concatenate([array, filler])
        feed[spec.name] = np.ascontiguousarray(np.moveaxis(array, 0, axis))
    if binding is not None:
        feed.update(binding.onnx_constants())
    return feed, int(rows or 0)
