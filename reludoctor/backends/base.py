"""The backend interface: what every loader returns (LoadedModel, its inputs as data/binding.InputSpec), what a scan run
resolved (ScanRun), what observing produced (Observation), and Backend, the phases a format
implements."""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar

from reludoctor.data.binding import InputSpec


@dataclass
class LoadedModel:
    format: str  # an options.ModelFormat value
    module: Any  # callable: nn.Module, ScriptModule or the exported program's module
    exported: Any = None  # torch.export.ExportedProgram when the model is one
    inputs: list[InputSpec] = field(default_factory=list)
    fixed_batch: int | None = None  # batch size a fixed-shape export was traced with
    path: str | None = None
    sha256: str | None = None
    # Values of inputs the model fixed when it was made (an exported program's int and float
    # arguments): constants unless the user gives others (``reludoctor.data.binding``).
    constants: dict[str, Any] = field(default_factory=dict)
    # Language models: the folder a tokenizer is read from unless --tokenizer names one, and the
    # most positions the model takes (text calibration caps --max-length with it).
    tokenizer: str | None = None
    max_length: int | None = None
    # Temporary folders the loader made for the scan (accelerate's offload folder), removed by
    # ``release`` when the scan ends, also when it fails (a process that ends with os._exit runs
    # no finalizers).
    scratch: list[str] = field(default_factory=list)

    def release(self) -> None:
        import shutil

        while self.scratch:
            shutil.rmtree(self.scratch.pop(), ignore_errors=True)


@dataclass
class ScanRun:
    """What one scan resolved before observing: the options, the device and batch size it runs
    with, the autocast dtype, the per-batch context the observers share, and how it reports."""

    options: Any  # reludoctor.options.ScanOptions (checked)
    device: Any  # torch.device
    batch_size: int
    autocast: Any  # torch dtype or None
    context: Any  # core.observers.BatchContext
    progress: Callable[[int, int | None], None] | None
    warn: Callable[[str], None]


@dataclass
class Observation:
    """What observing the calibration data produced (``Backend.observe``)."""

    method: str  # the report's ``model.method``: export | dispatch | onnxruntime
    sites: list  # [(core.sites.SiteSpec, observer with .observed, .shape and .state())]
    samples: int
    unobserved: list = field(default_factory=list)  # report.model.UnobservedSite
    ignored_ops: list = field(default_factory=list)  # report.model.IgnoredOp
    # Backend-private results the evidence and gradient passes reuse (an exported program and
    # its instrumented graph); the core never looks inside.
    artifacts: dict[str, Any] = field(default_factory=dict)


class Backend(ABC):
    """One model format family, behind the phases a scan runs (load, check, observe, evidence,
    gradient plan, fix). The core calls these and never asks which format it has; a new
    format is a new subclass registered in ``backends.registry`` (docs/architecture.md)."""

    name: ClassVar[str]  # "torch" | "onnx": the catalogue's vocabulary (activations.describe)
    formats: ClassVar[tuple[str, ...]]  # the ModelFormat values its loader returns
    file_kinds: ClassVar[tuple[str, ...]]  # the ``backends.detect`` kinds it loads
    site_order: ClassVar[str] = "execution order"  # how its site list is ordered (terminal title)

    @abstractmethod
    def load_path(self, path: Path, kind: str, options: Any) -> LoadedModel:
        """A model file whose content ``detect`` recognised as ``kind``."""

    @abstractmethod
    def accepts(self, model: Any) -> bool:
        """Whether an in-memory object is this backend's model (without importing it)."""

    @abstractmethod
    def load_object(self, model: Any, options: Any) -> LoadedModel:
        """An in-memory model (``accepts`` said yes)."""

    @abstractmethod
    def check(self, loaded: LoadedModel, options: Any) -> None:
        """Refuse options that do not apply and models with no candidate site, before any data
        is read (UsageError / NoSitesError)."""

    def device(self, loaded: LoadedModel, options: Any) -> Any:
        """The device the scan runs on (``options.device``: auto, cpu, cuda, cuda:N)."""
        from reludoctor.core.batches import resolve_device

        return resolve_device(options.device)

    def session(self, loaded: LoadedModel, device: Any) -> AbstractContextManager:
        """Held around the passes that run the model: eval mode and device, undone after."""
        return contextlib.nullcontext()

    @abstractmethod
    def observe(self, loaded: LoadedModel, calibration: Any, run: ScanRun) -> Observation:
        """Instrument every site, run the calibration data, return the observers."""

    @abstractmethod
    def evidence(self, loaded: LoadedModel, observation: Observation, calibration: Any,
                 run: ScanRun) -> dict:
        """Producer evidence per site name (``core.evidence.ProducerEvidence``); may raise."""

    @abstractmethod
    def gradient_plan(self, loaded: LoadedModel, observation: Observation, sites: list,
                      evidence: dict, run: ScanRun) -> Any:
        """A ``core.gradients.GradientPass`` for the observed ``sites`` (raises
        ``GradientsUnavailable`` with the reason when the model cannot be differentiated)."""

    def certify(self, loaded: LoadedModel, observation: Observation, calibration: Any, box: Any,
                run: ScanRun) -> Any:
        """Bounds of every site's pre-activation over the input box (``data.input_range``):
        ``core.certify.SiteBounds``. Default: a format that cannot be bounded says so."""
        from reludoctor.core.certify import SiteBounds

        return SiteBounds(note=f"certification needs the torch.export graph; not supported for {self.name} models")

    def ablator(self, loaded: LoadedModel, observation: Observation, axes: dict[str, int], run: ScanRun) -> Any:
        """A ``core.ablation.Ablator``: the model with each site's units zeroed on request
        (``axes``: site name -> unit axis). Default: a format that cannot zero units says so."""
        from reludoctor.core.ablation import AblationUnavailable

        raise AblationUnavailable(f"ablation needs a PyTorch model; not supported for {self.name} models")

    def suggestion(self, finding: Any, context: Any) -> Any:
        """A finding's suggestion in this format's vocabulary (default: unchanged)."""
        return finding

    # reludoctor fix
    fix_scan_method: ClassVar[str] = "auto"  # how fix scans (the program it repairs)
    fix_suffixes: ClassVar[str] = ""  # the output suffixes it writes, for a hint

    @abstractmethod
    def fix_output(self, out: Path, kind: str, loaded: LoadedModel) -> None:
        """Refuse an output kind (``fix.output.SUFFIXES``) this model cannot be written as."""

    @abstractmethod
    def fix_prepare(self, loaded: LoadedModel, model: Any, data: Any, limit: int | None,
                    strategy: Any) -> tuple[Any, Any, Any]:
        """(fixer module with ``run``, its work state, what to scan): before the scan, so a
        missing optional dependency fails first."""
