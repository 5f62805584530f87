"""Hugging Face checkpoints as they are: a folder with ``config.json`` and ``*.safetensors``
(``save_pretrained``), or a model id (``org/name``) already in the local Hugging Face cache.

Loaded through ``transformers`` (``AutoModelForCausalLM``, else ``AutoModel``), offline
(``local_files_only=True``) and never with remote code: a config whose ``auto_map`` names its
own modelling code is refused, and so are pickled weights (``pytorch_model.bin``) unless
``--trust-model``. The folder is untrusted data: ``config.json`` is read within a size limit
and checked before transformers sees it; safetensors hold tensors only.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from pathlib import Path
from typing import Iterator

from reludoctor import safeio
from reludoctor.backends.base import LoadedModel
from reludoctor.errors import ModelLoadError, UnsafeModelError, first_line
from reludoctor.options import ModelFormat

CONFIG = "config.json"
MAX_CONFIG_BYTES = 4 << 20
PICKLED = ("pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
TRUST_HINT = "re-run with --trust-model only if you trust its source, or re-save it with safetensors"


def resolve_id(model_id: str) -> Path:
    """The cached snapshot folder of a model id, offline (as with HF_HUB_OFFLINE=1)."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as exc:
        raise ModelLoadError(f"{model_id}: a model id needs huggingface_hub", "pip install transformers") from exc
    try:
        folder = snapshot_download(model_id, local_files_only=True)
    except Exception as exc:  # not cached (LocalEntryNotFoundError), or a malformed id
        raise ModelLoadError(f"{model_id}: no such file, and not a model in the local Hugging Face cache "
                             f"({type(exc).__name__})",
                             "download it first (huggingface-cli download ORG/NAME), or pass its folder") from None
    return Path(folder)


def read_config(folder: Path) -> dict:
    """config.json, refused when it asks for remote code (``auto_map``)."""
    path = folder / CONFIG
    data = safeio.read_limited(path, MAX_CONFIG_BYTES, "model config", ModelLoadError)
    safeio.note_read(path)
    try:
        config = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise ModelLoadError(f"{path}: not valid JSON ({first_line(exc)})", "re-save with save_pretrained") from None
    if not isinstance(config, dict):
        raise ModelLoadError(f"{path}: not a JSON object", "re-save with save_pretrained")
    if "auto_map" in config:
        raise UnsafeModelError(f"{path}: the model asks for its own Python code (auto_map), which "
                               "reludoctor never runs", "scan a model that transformers implements, or "
                               "export it to .pt2 or ONNX yourself")
    return config


def weight_files(folder: Path, trust_model: bool) -> tuple[list[Path], bool]:
    """(the weight files, whether they are safetensors). Pickled weights only with trust."""
    safetensors = sorted(folder.glob("*.safetensors"))
    if safetensors:
        return safetensors, True
    pickled = [folder / name for name in PICKLED if (folder / name).is_file()] + \
        sorted(folder.glob("pytorch_model-*.bin"))
    if not pickled:
        raise ModelLoadError(f"{folder}: no weights (*.safetensors) next to config.json",
                             "save the model with save_pretrained(safe_serialization=True)")
    if not trust_model:
        raise UnsafeModelError(f"{folder}: the weights are pickled ({pickled[0].name}) and loading "
                               "them could execute code from the file", TRUST_HINT)
    return pickled, False


MAX_HEADER_BYTES = 100 << 20  # a safetensors header (JSON: names, dtypes, shapes, offsets)


def stored_elements(files: list[Path]) -> int:
    """Tensor elements the safetensors files hold, from their headers alone (8-byte length,
    then JSON), each declared shape checked against the bytes the file has."""
    import math
    import os

    total = 0
    for path in files:
        with safeio.open_regular(path, "weights", ModelLoadError) as handle:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(8)
            length = int.from_bytes(head, "little") if len(head) == 8 else -1
            if not 0 < length <= min(MAX_HEADER_BYTES, size - 8):
                raise ModelLoadError(f"{path}: not a safetensors file (header length {length})",
                                     "re-save the model with save_pretrained")
            try:
                header = json.loads(handle.read(length))
                shapes = [entry["shape"] for name, entry in header.items() if name != "__metadata__"]
                elements = sum(math.prod(int(d) for d in shape) for shape in shapes)
            except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
                raise ModelLoadError(f"{path}: a malformed safetensors header ({type(exc).__name__})",
                                     "re-save the model with save_pretrained") from None
        if elements > size:  # every element takes at least one byte
            raise ModelLoadError(f"{path}: its header declares {elements:,} elements in {size:,} bytes",
                                 "the file is truncated or crafted")
        total += elements
    return total


def refuse_oversized(auto: object, folder: Path, stored: int) -> None:
    """The model config.json describes, counted on the meta device (nothing allocated), may not
    be much bigger than the weights the folder holds: transformers would create the rest, so a
    small checkpoint with a crafted config could make the scan allocate without bound (a 340 KB
    OPT folder with an opt-6.7b config took 22 GB). Tied parameters count once.
    Raises ValueError (from ``from_config``) when ``auto`` has no class for the config."""
    import torch
    import transformers

    config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True, trust_remote_code=False)
    with torch.device("meta"):
        skeleton = auto.from_config(config, trust_remote_code=False)
    needed = sum(p.numel() for p in skeleton.parameters())
    if needed > 2 * stored + (1 << 24):
        raise ModelLoadError(f"{folder}: config.json describes a model of {needed:,} parameters, but the "
                             f"weights hold {stored:,}: reludoctor does not create weights a checkpoint "
                             "does not hold", "check config.json against the weight files")


def _digest(files: list[Path]) -> str:
    """One sha256 over the config and the weight files, in name order."""
    digest = hashlib.sha256()
    for path in files:
        safeio.note_read(path)
        digest.update(path.name.encode() + b"\0")
        with safeio.open_regular(path, "model", ModelLoadError) as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """No progress bars or load reports on stderr: the scan's own messages say what matters."""
    from transformers.utils import logging

    verbosity = logging.get_verbosity()
    bars = logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


def _placement(max_memory: str) -> dict:
    """from_pretrained settings for accelerate's big-model inference: every device (the CPU
    and each visible GPU) limited to ``max_memory``, the rest offloaded to a temporary folder
    (the LoadedModel's scratch, removed when the scan ends)."""
    import tempfile

    import torch

    devices: list = ["cpu", *range(torch.cuda.device_count())]
    size: int | str = int(max_memory) if max_memory.strip().isdigit() else max_memory.strip()  # bytes
    return dict(device_map="auto", max_memory=dict.fromkeys(devices, size),
                offload_folder=tempfile.mkdtemp(prefix="reludoctor-offload-"))


def load(path: Path, trust_model: bool, max_memory: str | None = None) -> LoadedModel:
    """A checkpoint folder, or a model id (``detect.is_model_id``) resolved to its cached
    snapshot -> LoadedModel (format huggingface); with ``max_memory``, placed by accelerate
    (``device_map="auto"``), which the scan then leaves where it is."""
    from reludoctor.backends import detect
    from reludoctor.backends.torch.loader import from_object

    model_id = None
    if detect.is_model_id(path):
        model_id, path = str(path), resolve_id(str(path))
    config = read_config(path)
    weights, safe = weight_files(path, trust_model)
    try:
        import transformers
    except ImportError as exc:
        raise ModelLoadError(f"{path}: a Hugging Face checkpoint needs transformers",
                             "pip install transformers") from exc
    stored = stored_elements(weights) if safe else None  # pickled weights: trusted (--trust-model)
    settings = dict(local_files_only=True, trust_remote_code=False, use_safetensors=safe)
    if max_memory:
        settings.update(_placement(max_memory))
    model = None
    with _quiet_transformers():
        for auto in (transformers.AutoModelForCausalLM, transformers.AutoModel):
            try:
                if stored is not None:
                    refuse_oversized(auto, path, stored)
                model = auto.from_pretrained(str(path), **settings)
                break
            except ModelLoadError:
                raise
            except ValueError as exc:  # this auto class has no mapping for the config
                failure: Exception = exc
            except Exception as exc:  # corrupt weights, shapes that do not fit the config
                failure = exc
                break
    if model is None:
        if "offload_folder" in settings:
            import shutil

            shutil.rmtree(settings["offload_folder"], ignore_errors=True)
        raise ModelLoadError(f"{model_id or path}: transformers cannot load the checkpoint "
                             f"({type(failure).__name__}: {first_line(failure)[:200]})",
                             "check config.json (model_type) and the weight files") from None
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False  # no key/value cache: a scan runs each batch once
    tokenizer = str(path) if any((path / name).is_file() for name in TOKENIZER_FILES) else None
    positions = config.get("max_position_embeddings")
    loaded = from_object(model)  # an nn.Module: its inputs from forward's signature
    loaded.format = ModelFormat.HUGGINGFACE
    loaded.path = model_id or str(path)
    loaded.sha256 = _digest([path / CONFIG, *weights])
    loaded.tokenizer = tokenizer
    loaded.max_length = positions if isinstance(positions, int) and positions > 0 else None
    if "offload_folder" in settings:
        loaded.scratch.append(settings["offload_folder"])
    return loaded
