"""PyTorch models: torch.export programs, TorchScript, state_dicts with --arch, in-memory modules.

Untrusted content never executes by default (docs/security.md): a ``.pt2`` archive is verified
before torch reads it (``pt2_verify``); ``torch.load`` runs with ``weights_only=True``; TorchScript
archives (code) and whole pickled modules load only with ``trust_model=True`` (``--trust-model``).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import json
import logging
import pickle
import re
import sys
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterator

from reludoctor import safeio
from reludoctor.backends import detect
from reludoctor.backends.base import LoadedModel
from reludoctor.core.timings import phase
from reludoctor.data.binding import InputSpec
from reludoctor.errors import ModelLoadError, UnsafeModelError, UsageError, first_line
from reludoctor.options import ModelFormat


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """Loading corrupt or old files makes torch warn and log tracebacks; our error says it all."""
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with safeio.open_regular(path, "model", ModelLoadError) as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


TRUST_HINT = "re-run with --trust-model only if you trust its source"


def _dtype_name(dtype: Any) -> str:
    return str(dtype).replace("torch.", "")


def _exported_inputs(program: Any) -> tuple[list[InputSpec], int | None]:
    user_inputs = set(program.graph_signature.user_inputs)
    specs = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or node.name not in user_inputs:
            continue
        value = node.meta.get("val")
        shape = None
        dtype = None
        if value is not None and hasattr(value, "shape"):
            shape = tuple(d if isinstance(d, int) else None for d in value.shape)
            dtype = _dtype_name(value.dtype)
        specs.append(InputSpec(node.name, shape, dtype))
    fixed = None
    if specs and specs[0].shape and specs[0].shape[0] is not None:
        fixed = specs[0].shape[0]
    # Each input's batch axis: its dynamic dimension (a state exported as [2, batch, 128]: 1).
    return [replace(spec, batch_axis=spec.shape.index(None))
            if spec.shape is not None and None in spec.shape else spec for spec in specs], fixed


def _with_specialised(program: Any, module: Any, specs: list[InputSpec],
                      ) -> tuple[list[InputSpec], dict[str, Any]]:
    """An exported program's non-tensor arguments (``sr=16000``, ``scale=2.0``): export fixed
    their values, yet its module still takes them. Added as inputs (kind "value") between the
    tensor ones, in the forward's order, with the exported values as default constants. Programs
    whose arguments are nested structures keep their flat tensor inputs."""
    try:
        names = list(inspect.signature(module.forward).parameters)
        flat = list(program.graph_signature.user_inputs)
        spec = program.call_spec.in_spec
        def children(tree: Any) -> list[Any]:
            return list(tree.children()) if callable(getattr(tree, "children", None)) \
                else list(tree.children_specs)

        leaves = [child for part in children(spec) for child in children(part)]
    except Exception:  # noqa: BLE001 - older torch: no names, positional tensors as before
        return specs, {}
    if len(names) != len(flat) or len(leaves) != len(flat) or any(not c.is_leaf() for c in leaves):
        return specs, {}
    if all(isinstance(entry, str) for entry in flat):
        return specs, {}
    by_name = {s.name: s for s in specs}
    out: list[InputSpec] = []
    constants: dict[str, Any] = {}
    for name, entry in zip(names, flat):
        if isinstance(entry, str):
            if entry not in by_name:
                return specs, {}
            out.append(by_name[entry])
        else:
            out.append(InputSpec(name, None, None, kind="value"))
            constants[name] = entry
    return out, constants


def _input_kind(annotation: Any) -> str:
    """tensor, tensors (a list of tensors, one per sample: detection models' ``images``) or
    value (an int, float, bool or str argument: a constant), from a type annotation."""
    if annotation is inspect.Parameter.empty or annotation is None:
        return "tensor"
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None) \
        if isinstance(annotation, type) else str(annotation)
    text = str(text).replace("typing.", "").replace("torch.", "").strip()
    if "Tensor" in text:
        head = text.split("[", 1)[0].split("|")[0].strip()
        if head.startswith("Optional") and "[" in text:
            head = text.split("[", 2)[1].split("|")[0].strip()
        return "tensors" if head in ("list", "List", "Sequence", "tuple", "Tuple") else "tensor"
    first = text.split("|")[0].split("[")[0].strip()
    if first in ("int", "float", "bool", "str", "Optional", "Union", "Literal", "list", "List",
                 "tuple", "Tuple", "dict", "Dict"):
        return "value"
    return "tensor"


def _signature_inputs(forward: Any) -> list[InputSpec]:
    """A forward's parameters as inputs: those with a default are optional (bound only when the
    data or a constant gives them), keyword-only ones are passed by name, ``*args``/``**kwargs``
    are not inputs (a forward taking only ``*args`` has one input, "input")."""
    try:
        params = list(inspect.signature(forward).parameters.values())
    except (TypeError, ValueError):
        return [InputSpec("input", None, None)]
    specs = []
    for param in params:
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            continue
        specs.append(InputSpec(param.name, None, None,
                               optional=param.default is not inspect.Parameter.empty,
                               kind=_input_kind(param.annotation),
                               keyword=param.kind == param.KEYWORD_ONLY))
    if not any(not s.keyword for s in specs) and any(p.kind == p.VAR_POSITIONAL for p in params):
        specs.insert(0, InputSpec("input", None, None))
    return specs or [InputSpec("input", None, None)]


def _script_inputs(model: Any) -> list[InputSpec]:
    """A ScriptModule's forward arguments, typed by its schema."""
    specs = []
    for argument in model.forward.schema.arguments[1:]:
        text = str(argument.type)
        kind = "tensors" if text in ("List[Tensor]", "Tensor[]") else \
            "tensor" if "Tensor" in text else "value"
        has_default = argument.has_default_value() if hasattr(argument, "has_default_value") \
            else argument.default_value is not None
        specs.append(InputSpec(argument.name, None, None, optional=bool(has_default), kind=kind,
                               keyword=bool(getattr(argument, "kwarg_only", False))))
    return specs


def from_object(model: Any) -> LoadedModel:
    """Wrap an in-memory ExportedProgram, ScriptModule or nn.Module."""
    import torch

    if isinstance(model, torch.export.ExportedProgram):
        from reludoctor.data.calibration import check_model_inputs

        inputs, fixed = _exported_inputs(model)
        check_model_inputs(inputs, fixed, "the exported program")
        module = model.module()
        inputs, constants = _with_specialised(model, module, inputs)
        return LoadedModel(ModelFormat.TORCH_EXPORT, module, exported=model, inputs=inputs,
                           fixed_batch=fixed, constants=constants)
    if isinstance(model, torch.jit.ScriptModule):
        return LoadedModel(ModelFormat.TORCHSCRIPT, model, inputs=_script_inputs(model))
    if isinstance(model, torch.nn.Module):
        return LoadedModel(ModelFormat.MODULE, model, inputs=_signature_inputs(model.forward))
    raise UsageError(
        f"cannot scan an object of type {type(model).__name__}",
        "pass a path, an nn.Module, an ExportedProgram or a ScriptModule",
    )


@contextlib.contextmanager
def _cwd_importable() -> Iterator[None]:
    """Modules in the current directory importable (--arch, --import), after the installed
    packages: a torchvision/ folder here never shadows the real torchvision."""
    added = "" not in sys.path and str(Path.cwd()) not in sys.path
    if added:
        sys.path.append(str(Path.cwd()))
    try:
        yield
    finally:
        if added:
            sys.path.remove(str(Path.cwd()))


def _build_arch(arch: str, arch_kwargs: str | dict | None) -> Any:
    import torch

    if ":" not in arch:
        raise UsageError(f"--arch {arch!r} is not of the form package.module:factory",
                         "e.g. --arch torchvision.models:resnet18")
    module_name, _, attribute = arch.partition(":")
    if isinstance(arch_kwargs, str):
        try:
            kwargs = json.loads(arch_kwargs)
        except json.JSONDecodeError as exc:
            raise UsageError(f"--arch-kwargs is not valid JSON: {exc.msg}",
                             'e.g. --arch-kwargs \'{"num_classes": 10}\'') from exc
    else:
        kwargs = arch_kwargs or {}
    if not isinstance(kwargs, dict):
        raise UsageError("--arch-kwargs must be a JSON object", 'e.g. {"num_classes": 10}')
    try:
        with _cwd_importable():
            factory: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            factory = getattr(factory, part)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"--arch {arch}: cannot import ({exc})",
                             "check the module path and that the package is installed") from exc
    if not callable(factory):
        raise UsageError(f"--arch {arch} is a {type(factory).__name__}, not a callable factory")
    try:
        model = factory(**kwargs)
    except TypeError as exc:
        raise UsageError(f"--arch {arch}: factory rejected --arch-kwargs ({exc})") from exc
    except Exception as exc:  # the user's own code failed: bad input, not our crash
        raise ModelLoadError(f"--arch {arch}: the factory raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(model, torch.nn.Module):
        raise ModelLoadError(f"--arch {arch} returned {type(model).__name__}, not an nn.Module")
    return model


def import_modules(names: Any) -> list[str]:
    """Import the op libraries the user names (``--import torchvision``): trusted code, imported
    before the model loads so that the operators it registers (``torchvision::nms``) exist.
    Returns the names imported, in order, without repeats."""
    done: list[str] = []
    for name in names or ():
        name = str(name).strip()
        if not name or name in done:
            continue
        if not all(part.isidentifier() for part in name.split(".")):
            raise UsageError(f"--import {name!r} is not a module name", "e.g. --import torchvision")
        try:
            with _cwd_importable():
                importlib.import_module(name)
        except ImportError as exc:
            raise UsageError(f"--import {name}: cannot import ({exc})",
                             "check the module name and that its package is installed") from exc
        except Exception as exc:  # the user's module failed while importing: bad input, not our crash
            raise ModelLoadError(f"--import {name}: importing it raised {type(exc).__name__}: "
                                 f"{first_line(exc)[:200]}") from exc
        done.append(name)
    return done


def _unwrap_state_dict(obj: Any) -> dict | None:
    import torch

    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "module"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                return inner
    return None


def _load_state_dict_into(model: Any, state: dict, path: Path, arch: str) -> None:
    result = None
    try:
        result = model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[1:3]) or first[0]
        raise ModelLoadError(f"{path}: state_dict does not fit --arch {arch}: {detail}",
                             "check --arch and --arch-kwargs") from exc
    del result


def load_path(
    path: Path,
    *,
    arch: str | None = None,
    arch_kwargs: str | dict | None = None,
    trust_model: bool = False,
    kind: str | None = None,
    imports: Any = (),
) -> LoadedModel:
    kind = kind or detect.detect_format(path)
    safeio.note_read(path)
    imports = import_modules(imports)  # op libraries first: the model may call their operators

    if kind == detect.TORCH_EXPORT:
        loaded, digest = _load_program(path, trust_model)
    elif kind == detect.TORCHSCRIPT:
        loaded = _load_torchscript(path, trust_model, imports)
        digest = sha256_of(path)
    elif kind in (detect.TORCH_SAVE, detect.SAFETENSORS):
        digest = sha256_of(path)
        loaded = _load_weights_file(path, kind, arch, arch_kwargs, trust_model)
    else:  # pragma: no cover - detect_format only returns the kinds above
        raise ModelLoadError(f"{path}: unsupported model format {kind}")
    if kind != detect.TORCH_SAVE and kind != detect.SAFETENSORS and arch:
        raise UsageError(f"--arch is only for state_dict files; {path} is a {loaded.format} model")
    loaded.path = str(path)
    loaded.sha256 = digest
    return loaded


def _load_program(path: Path, trust_model: bool) -> tuple[LoadedModel, str]:
    """A torch.export archive: read once, verified (unless trusted), loaded from those bytes."""
    import io

    with phase("import torch"):
        import torch

    from reludoctor.backends.torch import pt2_verify

    with safeio.open_regular(path, "model", ModelLoadError) as handle:
        data = handle.read()
    if not trust_model:
        with phase("verify the .pt2 (imports torch.export)"):
            pt2_verify.verify(data, str(path))
    try:
        with _quiet_torch(), phase("torch.export.load"):
            program = torch.export.load(io.BytesIO(data))
    except Exception as exc:  # corrupt archives fail in many ways inside torch
        raise ModelLoadError(f"{path}: cannot load torch.export program ({type(exc).__name__}: "
                             f"{first_line(exc)[:200]})", "re-export with torch.export.save") from exc
    return from_object(program), hashlib.sha256(data).hexdigest()


def _load_torchscript(path: Path, trust_model: bool, imports: list[str] | None = None) -> LoadedModel:
    """TorchScript is code: refused unless trusted; then checked and probed in a child process.

    Operators of other libraries (``ops.torchvision.nms``) exist only once their library is
    imported: ``imports`` (``--import``) are, in the probe too, and torchvision is imported by
    itself when the archive calls its operators and it is installed."""
    import torch

    from reludoctor.backends.torch import torchscript_check

    if not trust_model:
        raise UnsafeModelError(
            f"{path}: a TorchScript archive is code that runs when it is loaded and scanned",
            f"{TRUST_HINT}, or export the model with torch.export (.pt2) or to ONNX")
    torchscript_check.check_storages(path)
    imports = list(imports or [])
    namespaces = torchscript_check.op_namespaces(path)
    for namespace in sorted(namespaces & set(AUTO_IMPORTS)):
        module_name = AUTO_IMPORTS[namespace]
        if module_name not in imports and importlib.util.find_spec(module_name) is not None:
            imports += import_modules([module_name])
    torchscript_check.probe_load(path, imports)
    try:
        with _quiet_torch():  # torch 2.9+ deprecates TorchScript loudly
            module = torch.jit.load(str(path), map_location="cpu")
    except Exception as exc:
        unknown = _UNKNOWN_OP.search(str(exc))
        if unknown is not None:
            raise ModelLoadError(f"{path}: the TorchScript archive calls operator {unknown.group(1)}, "
                                 "which no loaded library registers",
                                 _op_library_hint(unknown.group(1), imports)) from exc
        raise ModelLoadError(f"{path}: cannot load TorchScript archive ({type(exc).__name__})",
                             "re-save with torch.jit.save") from exc
    return from_object(module)


# Operator namespaces whose library is imported by itself when installed (it is a dependency of
# many shipped models and imports nothing but torch).
AUTO_IMPORTS = {"torchvision": "torchvision"}
_UNKNOWN_OP = re.compile(r"Unknown builtin op: ([A-Za-z_][\w.]*::[A-Za-z_]\w*)")


def _op_library_hint(op: str, imports: list[str]) -> str:
    namespace = op.split("::", 1)[0]
    module_name = AUTO_IMPORTS.get(namespace, namespace)
    if namespace in AUTO_IMPORTS and importlib.util.find_spec(module_name) is None:
        return f"install the library that defines it (pip install {module_name}), then re-run"
    if module_name in imports:
        return (f"{module_name} is imported but does not register {op}: check that its version "
                "matches the one the model was saved with, or --import the module that defines it")
    return (f"pass --import MODULE naming the library that defines it, e.g. --import {module_name}; "
            f"in Python, imports=[\"{module_name}\"]")


def _load_weights_file(path: Path, kind: str, arch: str | None, arch_kwargs: Any,
                       trust_model: bool) -> LoadedModel:
    import torch

    if kind == detect.SAFETENSORS:
        try:
            from safetensors.torch import load_file
        except ImportError as exc:
            raise ModelLoadError(f"{path}: reading .safetensors needs the safetensors package",
                                 "pip install safetensors") from exc
        try:
            obj: Any = load_file(str(path), device="cpu")
        except Exception as exc:
            raise ModelLoadError(f"{path}: corrupt safetensors file ({exc})") from exc
    else:
        try:
            with _quiet_torch():
                obj = torch.load(str(path), map_location="cpu", weights_only=not trust_model)
        except pickle.UnpicklingError as exc:
            if trust_model:
                raise ModelLoadError(f"{path}: cannot unpickle ({exc})") from exc
            raise UnsafeModelError(
                f"{path}: contains pickled Python objects (a whole nn.Module?) and loading it "
                "would execute code from the file",
                f"{TRUST_HINT}, or save a state_dict or a torch.export program instead",
            ) from exc
        except Exception as exc:
            raise ModelLoadError(f"{path}: cannot read torch.save file ({type(exc).__name__})",
                                 "the file may be truncated or corrupt") from exc

    if isinstance(obj, torch.nn.Module):  # only reachable with trust_model
        loaded = from_object(obj)
        loaded.format = ModelFormat.PICKLED_MODULE
        return loaded
    state = _unwrap_state_dict(obj)
    if state is None:
        raise ModelLoadError(f"{path}: holds a {type(obj).__name__}, not a state_dict of tensors",
                             "save model.state_dict() or a torch.export program")
    if not arch:
        raise UsageError(f"{path}: a state_dict holds weights only",
                         "name the architecture with --arch package.module:factory")
    model = _build_arch(arch, arch_kwargs)
    _load_state_dict_into(model, state, path, arch)
    loaded = from_object(model)
    loaded.format = ModelFormat.STATE_DICT
    return loaded
