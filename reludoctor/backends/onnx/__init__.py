"""The ONNX backend: graphs augmented with statistic outputs and run with onnxruntime.

Importing this package does not import onnx or onnxruntime; every phase imports what it needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reludoctor.backends import detect
from reludoctor.backends.base import Backend, LoadedModel, Observation, ScanRun
from reludoctor.core.timings import phase
from reludoctor.errors import UsageError
from reludoctor.options import ModelFormat


class OnnxBackend(Backend):
    name = "onnx"
    formats = (ModelFormat.ONNX,)
    file_kinds = (detect.ONNX,)
    site_order = "graph order"

    def load_path(self, path: Path, kind: str, options: Any) -> LoadedModel:
        if options.arch:
            raise UsageError("--arch is only for state_dict files, not ONNX models")
        from reludoctor.backends.onnx import loader

        return loader.load_path(path)

    def accepts(self, model: Any) -> bool:
        return type(model).__name__ == "ModelProto"  # onnx.ModelProto, without importing onnx

    def load_object(self, model: Any, options: Any) -> LoadedModel:
        if options.arch:
            raise UsageError("arch is only for state_dict files, not in-memory models")
        from reludoctor.backends.onnx import loader

        return loader.from_object(model)

    def check(self, loaded: LoadedModel, options: Any) -> None:
        if options.dtype is not None and options.dtype != "fp32":
            raise UsageError(f"--dtype {options.dtype} applies to PyTorch models only: an ONNX model "
                             "runs in the precision it was exported in",
                             "drop --dtype (or convert the ONNX model to float16 yourself)")
        if options.max_memory:
            raise UsageError("--max-memory is for Hugging Face checkpoints, not ONNX models")
        from reludoctor.backends.onnx.precheck import refuse_without_candidates

        refuse_without_candidates(loaded)

    def device(self, loaded: LoadedModel, options: Any) -> Any:
        """CPU without importing torch (about 1.3 s) when nothing needs it: a CPU-only
        onnxruntime, or --device cpu, without the gradient pass or the ablation (onnx2torch runs
        on torch)."""
        from reludoctor.backends.onnx.session import cuda_provider_available
        from reludoctor.core.batches import CPU, resolve_device

        with phase("import onnxruntime"):
            cuda_runtime = cuda_provider_available()
        torch_passes = options.gradients or options.ablate
        if not torch_passes and (options.device == "cpu" or (options.device == "auto" and not cuda_runtime)):
            return CPU
        target = resolve_device(options.device)
        if options.device == "auto" and target.type == "cuda" and not cuda_runtime:
            return resolve_device("cpu")  # a CPU-only onnxruntime on a GPU machine
        return target

    def observe(self, loaded: LoadedModel, calibration: Any, run: ScanRun) -> Observation:
        from reludoctor.backends.onnx.observer import observe_onnx

        ignored: list = []
        sites, samples, unobserved, scanned = observe_onnx(
            loaded, calibration, device=run.device, batch_size=run.batch_size,
            unit_axis=run.options.unit_axis, progress=run.progress, warn=run.warn, ignored=ignored,
            context=run.context)
        return Observation("onnxruntime", sites, samples, unobserved, ignored, {"scanned": scanned})

    def evidence(self, loaded: LoadedModel, observation: Observation, calibration: Any,
                 run: ScanRun) -> dict:
        from reludoctor.backends.onnx.evidence import from_onnx

        return from_onnx(loaded.module, [spec.name for spec, observer in observation.sites if observer.observed],
                         observation.artifacts.get("scanned"))

    def gradient_plan(self, loaded: LoadedModel, observation: Observation, sites: list,
                      evidence: dict, run: ScanRun) -> Any:
        from reludoctor.backends.onnx.gradients import onnx_plan

        plan = onnx_plan(loaded.module, sites, observation.artifacts.get("scanned"))
        plan.forward.to(run.device)
        plan.method = "onnx2torch"
        return plan

    def ablator(self, loaded: LoadedModel, observation: Observation, axes: dict[str, int], run: ScanRun) -> Any:
        """The model converted with onnx2torch (as the gradient pass converts it), a zeroing call
        after each site's activation; outputs compared within the converted model."""
        from reludoctor.backends.onnx.gradients import converted
        from reludoctor.backends.torch.ablation import GraphAblator
        from reludoctor.core.ablation import AblationUnavailable

        graph_module, by_name, _ = converted(loaded.module, axes, observation.artifacts.get("scanned"),
                                             AblationUnavailable)
        graph_module.to(run.device)
        graph_module.eval()
        return GraphAblator(graph_module, axes, [(fx_node, name) for name, (_, fx_node) in by_name.items()],
                            method="onnx2torch")

    def suggestion(self, finding: Any, context: Any) -> Any:
        from reludoctor.backends.onnx.suggestions import onnx_suggestion

        return onnx_suggestion(finding, context)

    fix_suffixes = ".onnx"

    def fix_output(self, out: Path, kind: str, loaded: LoadedModel) -> None:
        from reludoctor.fix import output

        if kind != output.ONNX:
            raise UsageError(f"-o {out}: an ONNX model is written as .onnx")

    def fix_prepare(self, loaded: LoadedModel, model: Any, data: Any, limit: int | None,
                    strategy: Any) -> tuple[Any, Any, Any]:
        from reludoctor.backends.onnx import fix
        from reludoctor.fix.plan import Strategy

        if strategy is Strategy.PRUNE_NEAR_DEAD:  # before the scan: its ablation would run for nothing
            raise UsageError("--prune-near-dead is not supported for onnx models: the ONNX fixer prunes dead "
                             "units only", "use --prune-dead, or fix the PyTorch model and export it again")
        return fix, fix.prepare(loaded), model
