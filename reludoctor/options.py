"""What a scan is asked to do: the enums user strings become at the boundary, and ScanOptions,
where every default is written once (the CLI's, the Python API's and the docs' defaults)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields, replace
from enum import Enum
from typing import Any

from reludoctor.errors import UsageError


class _Choice(str, Enum):
    """A str Enum (Python 3.10 has no StrEnum): compares and serialises as its value."""

    def __str__(self) -> str:
        return self.value


class ModelFormat(_Choice):
    """How a model was stored (the report's ``model.format``); each belongs to one backend."""

    TORCH_EXPORT = "torch-export"
    TORCHSCRIPT = "torchscript"
    STATE_DICT = "state-dict"
    MODULE = "module"
    PICKLED_MODULE = "pickled-module"
    ONNX = "onnx"
    HUGGINGFACE = "huggingface"  # a save_pretrained folder or a cached model id (PyTorch backend)


class Method(_Choice):
    """How PyTorch call sites are observed (``--method``)."""

    AUTO = "auto"
    EXPORT = "export"
    DISPATCH = "dispatch"


class DType(_Choice):
    """The forward pass's precision (``--dtype``); FP32 runs without autocast."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"


ALIASES = {"float32": DType.FP32, "bfloat16": DType.BF16, "float16": DType.FP16}
DEFAULT_BATCH_SIZE = 32
# --max-memory: a size as accelerate reads it (bytes, or a number with a unit)
MEMORY_SIZE = re.compile(r"\d+|\d+(\.\d+)?\s*[KMGT]i?B", re.IGNORECASE)

# Text calibration (--data texts.jsonl): tokens per document (longer ones are cut) or per packed
# row. 512 covers most calibration paragraphs and keeps a padded batch of 32 small; a model
# declaring fewer positions (max_position_embeddings) caps it.
DEFAULT_MAX_LENGTH = 512


def choice(enum: type[_Choice], value: Any, option: str) -> Any:
    """A user string -> the enum member, or a one-line UsageError listing the choices."""
    if value is None or isinstance(value, enum):
        return value
    try:
        return enum(value)
    except ValueError:
        alias = ALIASES.get(value) if enum is DType else None
        if alias is not None:
            return alias
        raise UsageError(f"{option} {value!r} is not one of {', '.join(m.value for m in enum)}") from None


class _Settings:
    """What ScanOptions and FixOptions share: their field names, and keywords merged in."""

    @classmethod
    def names(cls) -> frozenset[str]:
        return frozenset(f.name for f in fields(cls))

    @classmethod
    def merged(cls, options: Any, settings: dict[str, Any], caller: str) -> Any:
        """``options`` (or the defaults) with keyword ``settings`` on top, as a copy: the
        caller's object is not changed. An unknown keyword is a TypeError, as Python says it."""
        unknown = sorted(set(settings) - cls.names())
        if unknown:
            raise TypeError(f"{caller}() got unexpected keyword argument(s): {', '.join(unknown)}")
        return replace(options, **settings) if options is not None else cls(**settings)


@dataclass
class ScanOptions(_Settings):
    """Every setting of ``reludoctor.scan`` (documented there and in docs/cli.md), defaults once.

    ``check()`` validates and normalises (strings to enums); the engine reads nothing else."""

    batch_size: int | None = None  # None: DEFAULT_BATCH_SIZE, or the model's fixed batch
    device: str = "auto"
    dtype: DType | None = None
    limit: int | None = None
    input_shape: tuple[int, ...] | None = None
    unit_axis: int | None = None
    near_dead: float = 1e-3
    dormant_tau: float = 0.025
    method: Method = Method.AUTO
    # loading
    arch: str | None = None
    arch_kwargs: str | dict | None = None
    trust_model: bool = False
    imports: Any = ()
    # gradient pass
    gradients: bool = False
    labels: Any = None
    # definitions from the literature side by side (core/definitions.py)
    definitions: bool = False
    apoz_threshold: float = 0.9  # APoZ above this flags a unit (NNI prunes the highest APoZ first)
    grama_tau: float = 0.025  # GraMa score <= tau flags a unit; the same default as --dormant-tau
    # measured ablation (core/ablation.py): zero each site's dormant and near-dead units
    ablate: bool = False
    ablate_top: int = 5  # k: candidates per site also zeroed one at a time, the top by first-order score
    ablate_sites: Any = ()  # glob patterns on site names; empty: every site
    # data
    sample: int | None = None
    seed: int = 0
    resize: int | None = None
    center_crop: int | None = None
    normalize: str | None = None
    constants: Any = None
    batch_axes: Any = None
    # per-sample observation (core/slices.py): slice ids, one integer per sample (a path, array
    # or tensor); dead points (samples a site does not see at all; --slices computes them too)
    slices: Any = None
    dead_points: bool = False
    # certification: the model's input domain, "LOW,HIGH", "imagenet" or (low, high) (data.input_range)
    input_range: Any = None
    # text data (--data texts.jsonl / .txt)
    # Hugging Face checkpoints: accelerate's device_map="auto" under this limit per device
    # (e.g. "2GiB"), the layers that do not fit offloaded to disk for the scan
    max_memory: str | None = None
    tokenizer: str | None = None  # None: the model's own folder, when it has a tokenizer
    max_length: int | None = None  # None: DEFAULT_MAX_LENGTH, capped by the model's positions
    pack: bool = False

    def check(self) -> ScanOptions:
        """Refuse impossible values with the option's name; strings become enums."""
        if self.batch_size is not None and self.batch_size < 1:
            raise UsageError(f"--batch-size {self.batch_size} must be at least 1")
        if not 0 < self.near_dead <= 1:  # also refuses NaN
            raise UsageError(f"--near-dead {self.near_dead} must be in (0, 1]")
        if not (math.isfinite(self.dormant_tau) and self.dormant_tau >= 0):
            raise UsageError(f"--dormant-tau {self.dormant_tau} must be a finite number >= 0")
        if not 0 <= self.apoz_threshold < 1:  # also refuses NaN; 1 would flag nothing, ever
            raise UsageError(f"--apoz-threshold {self.apoz_threshold} must be in [0, 1)")
        if not (math.isfinite(self.grama_tau) and self.grama_tau >= 0):
            raise UsageError(f"--grama-tau {self.grama_tau} must be a finite number >= 0")
        if self.max_length is not None and self.max_length < 1:
            raise UsageError(f"--max-length {self.max_length} must be at least 1")
        if self.max_memory is not None and not MEMORY_SIZE.fullmatch(str(self.max_memory).strip()):
            raise UsageError(f"--max-memory {self.max_memory!r} is not a size",
                             "write it like 2GiB, 500MB or 800000000 (bytes)")
        self.method = choice(Method, self.method, "--method")
        self.dtype = choice(DType, self.dtype, "--dtype")
        if self.labels is not None and not (self.gradients or self.ablate):
            raise UsageError("--labels is only used by the gradient pass (--gradients) and --ablate",
                             "add --gradients")
        if self.ablate_top < 0:
            raise UsageError(f"--ablate-top {self.ablate_top} must be at least 0")
        if self.ablate_sites and not self.ablate:
            raise UsageError("--ablate-sites is for --ablate", "add --ablate")
        if self.slices is not None and self.pack:
            raise UsageError("--slices with --pack: a packed row mixes documents of different slices",
                             "drop --pack (slices are per document)")
        return self


@dataclass
class FixOptions(_Settings):
    """Every setting of ``reludoctor.fix`` (``reludoctor fix``), defaults once; ``strategy`` is
    required (``prune-dead``, ``leaky`` with ``alpha``, or ``reinit``)."""

    strategy: Any = None
    alpha: float | None = None
    sites: Any = ()  # glob patterns on site names; empty: every site
    force: bool = False
    dry_run: bool = False
    batch_size: int | None = None
    limit: int | None = None
    device: str = ScanOptions.device
    dormant_tau: float = ScanOptions.dormant_tau
    arch: str | None = None
    arch_kwargs: str | dict | None = None
    trust_model: bool = False
    seed: int = 0  # --reinit's Kaiming initialisation
    rescan: bool = True
    imports: Any = ()
    # --prune-dead --certified-only: prune only units proven dead on input_range (ScanOptions.input_range)
    input_range: Any = None
    certified_only: bool = False
    # --prune-near-dead: the largest measured output change (core/ablation.py, relative L2) allowed
    max_output_change: float | None = None

