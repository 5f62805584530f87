"""The PyTorch backend: .pt2 programs, TorchScript, state_dicts and in-memory modules.

Importing this package does not import torch; every phase imports what it needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reludoctor.backends import detect
from reludoctor.backends.base import Backend, LoadedModel, Observation, ScanRun
from reludoctor.errors import UsageError
from reludoctor.options import Method, ModelFormat


class TorchBackend(Backend):
    name = "torch"
    formats = (ModelFormat.TORCH_EXPORT, ModelFormat.TORCHSCRIPT, ModelFormat.STATE_DICT,
               ModelFormat.MODULE, ModelFormat.PICKLED_MODULE, ModelFormat.HUGGINGFACE)
    file_kinds = (detect.TORCH_EXPORT, detect.TORCHSCRIPT, detect.TORCH_SAVE, detect.SAFETENSORS,
                  detect.HUGGINGFACE)

    def load_path(self, path: Path, kind: str, options: Any) -> LoadedModel:
        from reludoctor.backends.torch import loader

        if kind == detect.HUGGINGFACE:
            from reludoctor.backends.torch import huggingface

            if options.arch:
                raise UsageError("--arch is only for state_dict files, not Hugging Face checkpoints")
            return huggingface.load(path, options.trust_model, options.max_memory)

        return loader.load_path(path, arch=options.arch, arch_kwargs=options.arch_kwargs,
                                trust_model=options.trust_model, kind=kind, imports=options.imports)

    def accepts(self, model: Any) -> bool:
        return True  # the fallback: nn.Module, ExportedProgram, ScriptModule, or a clear error

    def load_object(self, model: Any, options: Any) -> LoadedModel:
        from reludoctor.backends.torch import loader

        if options.arch:
            raise UsageError("arch is only for state_dict files, not in-memory models")
        return loader.from_object(model)

    def check(self, loaded: LoadedModel, options: Any) -> None:
        if options.max_memory and loaded.format != ModelFormat.HUGGINGFACE:
            raise UsageError("--max-memory is for Hugging Face checkpoints (loaded with device_map)",
                             "an in-memory model: load it with device_map yourself and pass it to scan()")
        if options.method == Method.EXPORT and loaded.format == ModelFormat.TORCHSCRIPT:
            raise UsageError("--method export cannot trace a TorchScript archive",
                             "use --method dispatch (the default for TorchScript)")
        if options.method == Method.EXPORT and loaded.format == ModelFormat.HUGGINGFACE:
            raise UsageError("--method export: a scan exports with a dynamic batch only, and text "
                             "batches vary in length too", "use --method dispatch (the default for "
                             "Hugging Face checkpoints)")
        from reludoctor.backends.torch.precheck import refuse_without_candidates

        refuse_without_candidates(loaded)

    def session(self, loaded: LoadedModel, device: Any) -> Any:
        from reludoctor.backends.torch.scan import preserved

        return preserved(loaded.module, device, set_mode=loaded.exported is None)

    def observe(self, loaded: LoadedModel, calibration: Any, run: ScanRun) -> Observation:
        from reludoctor.backends.torch import scan

        return scan.observe(loaded, calibration, run)

    def evidence(self, loaded: LoadedModel, observation: Observation, calibration: Any,
                 run: ScanRun) -> dict:
        from reludoctor.backends.torch import scan

        return scan.evidence(loaded, observation, calibration, run)

    def gradient_plan(self, loaded: LoadedModel, observation: Observation, sites: list,
                      evidence: dict, run: ScanRun) -> Any:
        from reludoctor.backends.torch import scan

        return scan.gradient_plan(loaded, observation, evidence, run)

    def certify(self, loaded: LoadedModel, observation: Observation, calibration: Any, box: Any,
                run: ScanRun) -> Any:
        from reludoctor.backends.torch import certify

        return certify.site_bounds(observation, calibration, box, run, loaded.fixed_batch)

    def ablator(self, loaded: LoadedModel, observation: Observation, axes: dict[str, int], run: ScanRun) -> Any:
        from reludoctor.backends.torch import scan

        return scan.ablator(loaded, observation, axes, run)

    fix_scan_method = "export"  # the scan observes the very program the fix edits
    fix_suffixes = ".pt2 (or .pt for a state_dict with --arch)"

    def fix_output(self, out: Path, kind: str, loaded: LoadedModel) -> None:
        from reludoctor.fix import output

        if kind == output.ONNX:
            raise UsageError(f"-o {out}: a PyTorch model is written as .pt2 (torch.export) or .pt "
                             "(state_dict), not ONNX", "export to ONNX afterwards with torch.onnx.export")
        if kind == output.TORCH_STATE_DICT and loaded.format != ModelFormat.STATE_DICT:
            raise UsageError(f"-o {out}: a state_dict output is only for state_dict inputs (--arch)",
                             "write a .pt2 file")

    def fix_prepare(self, loaded: LoadedModel, model: Any, data: Any, limit: int | None,
                    strategy: Any) -> tuple[Any, Any, Any]:
        from reludoctor.backends.torch import fix
        from reludoctor.data.calibration import load_calibration
        from reludoctor.fix.plan import Strategy

        if loaded.format == ModelFormat.HUGGINGFACE:  # fix exports; text batches vary in length
            raise UsageError(f"{loaded.path}: reludoctor fix does not edit Hugging Face checkpoints yet",
                             "scan it with reludoctor scan; prune with a tool that writes save_pretrained folders")
        if strategy is not Strategy.LEAKY:
            fix.torch_pruning()  # fail before the scan when the optional dependency is missing
        calibration = load_calibration(data, loaded.inputs, limit=limit)
        work = fix.prepare(loaded, fix.example_rows(calibration, loaded.fixed_batch or 2))
        return fix, work, work.program  # exported once: the scan observes the same program


__all__ = ["TorchBackend"]
