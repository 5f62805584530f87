"""The three strategies on PyTorch models, on an editable copy of the model's exported graph.

Every PyTorch input (torch.export program, state_dict with --arch, in-memory module) becomes an
``ExportedProgram`` (exported here like the scan's export path, so site names agree), then a
lifted GraphModule (``torch_graph.lift``) that the strategies edit in place:

- prune: torch-pruning's DependencyGraph finds, per site, the group of layers that must change
  together when the producer's dead output channels go; groups that couple other producers
  (residual additions) or pass the units through a normalisation other than the site's own
  BatchNorm are skipped with the reason.
- leaky: activation nodes replaced by ``aten.leaky_relu``.
- reinit: the same dependency groups name the consumers whose input columns are zeroed.

The result is exported again (dynamic batch unless the input had a fixed one).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable

from reludoctor.backends.torch.fix_graph import ActivationNode, activation_nodes, export_program, get_path, lift
from reludoctor.core.batches import padded_arrays
from reludoctor.errors import MissingDependencyError, ReludoctorError, UsageError, first_line  # noqa: F401 - re-exported
from reludoctor.fix.plan import SiteFix, Strategy


def torch_pruning() -> Any:
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise MissingDependencyError(
            "this strategy needs torch-pruning (its dependency graph finds the layers to change)",
            "pip install reludoctor[fix]") from exc
    return tp


@dataclass
class TorchWork:
    program: Any  # the original ExportedProgram (never modified)
    lifted: Any  # editable GraphModule
    example: tuple  # torch tensors for tracing (2 rows, or the fixed batch)
    dynamic_batch: bool
    evidence: dict  # site -> ProducerEvidence
    nodes: dict[str, ActivationNode]
    source_module: Any = None  # the nn.Module a state_dict was loaded into (--arch), else None
    notes: list[str] = field(default_factory=list)


def prepare(loaded: Any, example_arrays: tuple) -> TorchWork:
    """Export (when needed) and lift the model; producer evidence per site."""
    import numpy as np
    import torch

    from reludoctor.backends.torch import evidence as producer_evidence

    if loaded.format == "torchscript":
        raise UsageError(f"{loaded.path or 'the model'}: TorchScript archives cannot be rewritten",
                         "fix the torch.export program (.pt2) or the state_dict with --arch instead")
    example = tuple(torch.as_tensor(np.ascontiguousarray(a)) for a in example_arrays)
    dynamic = loaded.fixed_batch is None
    source_module = None
    if loaded.exported is not None:
        program = loaded.exported
    else:
        module = loaded.module
        source_module = module if loaded.format == "state-dict" else None
        work_copy = copy.deepcopy(module).eval()  # the caller's module keeps its mode
        try:
            program = export_program(work_copy, example, dynamic)
        except Exception as exc:  # noqa: BLE001 - export fails in many ways
            first = first_line(exc)
            raise UsageError(f"torch.export could not capture the model ({type(exc).__name__}: "
                             f"{first[:200]})", "reludoctor fix needs a model torch.export can "
                             "capture (no data-dependent control flow)") from exc
    graph_module = program.module()
    evidence = producer_evidence.from_graph(graph_module)
    lifted = lift(graph_module)
    nodes = {entry.name: entry for entry in activation_nodes(lifted)}
    return TorchWork(program, lifted, example, dynamic, evidence, nodes, source_module)


# ----------------------------------------------------------------------------- dependency groups


def _layer_types() -> tuple:
    import torch.nn as nn

    return (nn.Conv1d, nn.Conv2d, nn.Conv3d), nn.Linear, nn.modules.batchnorm._BatchNorm


def _dependency_graph(work: TorchWork) -> Any:
    tp = torch_pruning()
    try:
        return tp.DependencyGraph().build_dependency(work.lifted, example_inputs=list(work.example),
                                                     verbose=False)
    except Exception as exc:  # noqa: BLE001 - tracing user graphs can fail in many ways
        raise UsageError(f"torch-pruning could not trace the model's dependencies "
                         f"({type(exc).__name__}: {first_line(exc)})",
                         "use --leaky, or report the model's structure") from exc


def _index(value: Any) -> int:
    return int(getattr(value, "idx", value))


@dataclass
class _Target:
    entry: SiteFix
    layer: Any
    norm: Any
    handler: Callable


def _site_target(work: TorchWork, entry: SiteFix) -> _Target | SiteFix:
    """The producer (and BatchNorm) of a site's units, or the entry skipped with a reason."""
    tp = torch_pruning()
    convs, linear, batch_norm = _layer_types()
    found = work.evidence.get(entry.site)
    if found is None:
        return entry.skipped("no simple Conv/Linear(+BatchNorm) producer feeds this site (a "
                             "residual sum, concatenation or another op lies in between)")
    layer = get_path(work.lifted, found.layer)
    if isinstance(layer, convs):
        if layer.groups != 1:
            return entry.skipped(f"producer {found.layer} is a grouped convolution")
        handler = tp.prune_conv_out_channels
        units = layer.out_channels
    elif isinstance(layer, linear):
        handler = tp.prune_linear_out_channels
        units = layer.out_features
    else:
        return entry.skipped(f"producer {found.layer} is not an editable Conv/Linear layer")
    if units != entry.units:
        return entry.skipped(f"producer {found.layer} has {units} outputs, the site {entry.units} "
                             "units (the unit axis is not its output channels)")
    norm = None
    if found.norm_layer is not None:
        norm = get_path(work.lifted, found.norm_layer)
        if not isinstance(norm, batch_norm):
            return entry.skipped(f"BatchNorm {found.norm_layer} could not be made editable")
    return _Target(replace(entry, layer=found.layer), layer, norm, handler)


def _check_group(group: Any, target: _Target, names: dict) -> tuple[list[tuple[Any, list[int]]], str | None]:
    """The consumers (module, input indices) of a group, or a reason the group is unsafe."""
    tp = torch_pruning()
    convs, linear, batch_norm = _layer_types()
    consumers: list[tuple[Any, list[int]]] = []
    coupled: list[str] = []
    norms: list[str] = []  # other BatchNorms: a coupled layer's own, or one after the activation
    other: list[str] = []
    kinds = tp.ops.OPTYPE
    harmless = {kinds.ELEMENTWISE, kinds.CONCAT, kinds.SPLIT, kinds.RESHAPE, kinds.UNBIND,
                kinds.SLICE, kinds.EXPAND}
    for dep, idxs in group:
        module = dep.target.module
        kind = dep.target.type
        handler = getattr(dep.handler, "__name__", str(dep.handler))
        name = names.get(id(module), type(module).__name__)
        if module is target.layer or (module is target.norm and "out" in handler):
            continue
        if kind in harmless:
            continue
        if isinstance(module, convs + (linear,)) and kind in (kinds.CONV, kinds.LINEAR):
            if "in_channels" in handler:
                consumers.append((module, [_index(i) for i in idxs]))
            else:
                coupled.append(name)
            continue
        if isinstance(module, batch_norm) and kind == kinds.BN:
            norms.append(f"{name} ({type(module).__name__})")
            continue
        other.append(f"{name} ({type(module).__name__})")
    if other or (norms and not coupled):
        return consumers, (f"the units flow into {', '.join(sorted(set(other + norms)))}, which is "
                           "not linear at zero")
    if coupled:  # its BatchNorms are then checked with it, by the outputs
        return consumers, COUPLED + f" {', '.join(sorted(set(coupled)))} (a residual addition or shared tensor)"
    return consumers, None


COUPLED = "units coupled with"


def _names(module: Any) -> dict[int, str]:
    return {id(m): name for name, m in module.named_modules()}


# ----------------------------------------------------------------------------- strategies


def _prune_groups(work: TorchWork, entries: list[SiteFix], together: bool = False) -> list[SiteFix]:
    """Prune each entry's group; ``together``: also groups coupled with other layers."""
    graph = _dependency_graph(work)
    names = _names(work.lifted)
    out: list[SiteFix] = []
    done_layers: set[int] = set()
    for entry in entries:
        if entry.action not in PRUNE_ACTIONS:
            out.append(entry)
            continue
        target = _site_target(work, entry)
        if isinstance(target, SiteFix):
            out.append(target)
            continue
        if id(target.layer) in done_layers:
            out.append(target.entry.skipped(f"producer {target.entry.layer} feeds another site "
                                            "already pruned"))
            continue
        group = graph.get_pruning_group(target.layer, target.handler, idxs=list(entry.targets))
        _, reason = _check_group(group, target, names)
        coupled = reason is not None and reason.startswith(COUPLED)
        if reason is not None and not (together and coupled):
            out.append(target.entry.skipped(reason + (": removing them alone would change "
                                                      "outputs" if coupled else "")))
            continue
        group.prune()
        done_layers.add(id(target.layer))
        out.append(replace(target.entry, action="pruned", units_after=entry.units - len(entry.targets),
                           reason=reason.replace(COUPLED, "pruned together with the units of the "
                                                 "layers") + ", verified" if coupled else entry.reason))
    return out


PRUNE_ACTIONS = (Strategy.PRUNE_DEAD.value, Strategy.PRUNE_NEAR_DEAD.value)
MAX_COUPLED_TRIALS = 8


def prune(work: TorchWork, entries: list[SiteFix], probe: Callable[[Any], bool] | None = None,
          full_check: Callable[[Any], bool] | None = None) -> list[SiteFix]:
    """Remove each site's dead units with its dependency group; skip unsafe groups.

    ``probe(module) -> bool`` checks a candidate against the original on a calibration batch.
    When everything pruned at once fails it (the units pass through an op that does not map 0
    to 0, e.g. ``relu(x) + 1``), the sites are redone one at a time and those that break it are
    skipped with that reason. Then, with ``full_check`` (the same on all the calibration data),
    units coupled with other layers through residual additions are tried together with them,
    one site at a time, and kept where the outputs stay equal.
    """
    out = _prune_separately(work, entries, probe)
    if full_check is None:
        return out
    trials = 0
    final = []
    for entry, result in zip(entries, out):
        if result.action != "skipped" or not (result.reason or "").startswith(COUPLED):
            final.append(result)
            continue
        if trials >= MAX_COUPLED_TRIALS:
            final.append(result)
            continue
        trials += 1
        kept = work.lifted
        work.lifted = copy.deepcopy(kept)
        together = _prune_groups(work, [entry], together=True)[0]
        if together.action == "pruned" and full_check(work.lifted):
            final.append(together)
            continue
        work.lifted = kept
        final.append(replace(result, reason=result.reason.replace(
            "removing them alone would change outputs",
            "pruning them together with those layers changes outputs (the coupled units are not "
            "all dead)")))
    return final


def _prune_separately(work: TorchWork, entries: list[SiteFix],
                      probe: Callable[[Any], bool] | None) -> list[SiteFix]:
    pristine = copy.deepcopy(work.lifted) if probe is not None else None
    out = _prune_groups(work, entries)
    if probe is None or probe(work.lifted):
        return out
    work.lifted = pristine
    redone: list[SiteFix] = []
    for entry in entries:
        if entry.action != Strategy.PRUNE_DEAD.value:
            redone.append(entry)
            continue
        kept = work.lifted
        work.lifted = copy.deepcopy(kept)
        result = _prune_groups(work, [entry])[0]
        if result.action == "pruned" and not probe(work.lifted):
            result = replace(result, action="prune-dead").skipped(
                "removing these units changed the outputs on the calibration data (they pass "
                "through an op that does not map 0 to 0)")
        if result.action != "pruned":
            work.lifted = kept
        redone.append(result)
    return redone


def _measure(work: TorchWork, module: Any, calibration: Any, request: Any, fixed: int | None) -> Any:
    """The output change from the original program to ``module`` (``core.ablation.measure``)."""
    from reludoctor.core.ablation import measure

    return measure(work.program.module(), module, calibration, batch_size=request.batch_size, fixed_batch=fixed)


def prune_within(work: TorchWork, entries: list[SiteFix], calibration: Any, request: Any,
                 fixed: int | None) -> list[SiteFix]:
    """--prune-near-dead: prune every site's planned units, then measure the pruned model; while
    its output change exceeds --max-output-change, the site whose near-dead units cost the most
    alone (the scan's joint ablation) falls back to its dead units, and the pruning is redone
    (dead units alone change the outputs by float rounding only: ``verify.within`` allows that)."""
    pristine = copy.deepcopy(work.lifted)
    entries = list(entries)
    limit = request.max_output_change
    while True:
        work.lifted = copy.deepcopy(pristine)
        out = _prune_groups(work, entries)
        change = _measure(work, work.lifted, calibration, request, fixed)
        widened = [i for i, (entry, result) in enumerate(zip(entries, out))
                   if result.action == "pruned" and set(entry.targets) - request.dead.get(entry.site, set())]
        if change.output_change <= limit or not widened:
            return out
        worst = max(widened, key=lambda i: request.measured.get(entries[i].site, 0.0))
        entry = entries[worst]
        dead = tuple(u for u in entry.targets if u in request.dead.get(entry.site, set()))
        reason = (f"near-dead units kept: with the other sites pruned the outputs changed by "
                  f"{change.output_change:.3g} > {limit:g}")
        entries[worst] = replace(entry, targets=dead, reason=reason) if dead else \
            replace(entry, action="unchanged", targets=(), reason=reason, units_after=entry.units)


def reinit(work: TorchWork, entries: list[SiteFix], seed: int) -> list[SiteFix]:
    """ReDo: Kaiming-normal incoming weights (bias 0, BatchNorm reset), outgoing weights 0."""
    import torch

    graph = _dependency_graph(work)
    names = _names(work.lifted)
    generator = torch.Generator().manual_seed(seed)
    out: list[SiteFix] = []
    for entry in entries:
        if entry.action != Strategy.REINIT.value:
            out.append(entry)
            continue
        target = _site_target(work, entry)
        if isinstance(target, SiteFix):
            out.append(target)
            continue
        group = graph.get_pruning_group(target.layer, target.handler, idxs=list(entry.targets))
        consumers, reason = _check_group(group, target, names)
        if reason is None and not consumers:
            reason = "no Conv/Linear consumes the units (they reach the output directly)"
        elif reason is not None and reason.startswith(COUPLED):
            reason += ": their outputs cannot be silenced by zeroing outgoing weights"
        if reason is not None:
            out.append(target.entry.skipped(reason))
            continue
        with torch.no_grad():
            units = list(entry.targets)
            weight = target.layer.weight
            fan_in = weight[0].numel()
            std = math.sqrt(2.0) / math.sqrt(fan_in)  # He/Kaiming normal, fan_in, ReLU gain
            fresh = torch.randn((len(units), *weight.shape[1:]), generator=generator) * std
            weight[units] = fresh.to(weight.dtype)
            if target.layer.bias is not None:
                target.layer.bias[units] = 0.0
            if target.norm is not None:  # a fresh BatchNorm unit
                if target.norm.weight is not None:
                    target.norm.weight[units] = 1.0
                    target.norm.bias[units] = 0.0
                target.norm.running_mean[units] = 0.0
                target.norm.running_var[units] = 1.0
            for consumer, columns in consumers:
                consumer.weight[:, columns] = 0.0
        out.append(replace(target.entry, action="reinit", units_after=entry.units))
    return out


def leaky(work: TorchWork, entries: list[SiteFix], alpha: float) -> list[SiteFix]:
    """Replace each selected activation node with leaky_relu(alpha) (inplace stays inplace)."""
    import torch

    graph = work.lifted.graph
    out: list[SiteFix] = []
    for entry in entries:
        if entry.action != Strategy.LEAKY.value:
            out.append(entry)
            continue
        found = work.nodes.get(entry.site)
        if found is None:
            out.append(entry.skipped("the site is not a node of the exported graph"))
            continue
        node = found.node
        op = torch.ops.aten.leaky_relu_.default if found.activation.inplace \
            else torch.ops.aten.leaky_relu.default
        with graph.inserting_after(node):
            new = graph.call_function(op, (node.args[0], float(alpha)))
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        out.append(replace(entry, action="leaky", units_after=entry.units))
    graph.lint()
    work.lifted.recompile()
    return out


# ----------------------------------------------------------------------------- output


def export_fixed(work: TorchWork) -> Any:
    """The edited graph as a new ExportedProgram."""
    try:
        return export_program(work.lifted, work.example, work.dynamic_batch)
    except Exception as exc:  # noqa: BLE001
        first = first_line(exc)
        raise ReludoctorError(f"the fixed model could not be exported ({type(exc).__name__}: "
                              f"{first[:200]})", "nothing was written; please report the model "
                              "structure") from exc


def fixed_state_dict(work: TorchWork) -> dict:
    """The --arch module's state_dict keys with the edited tensors (shapes must be unchanged)."""
    state = work.lifted.state_dict()
    out = {}
    for key, original in work.source_module.state_dict().items():
        if key not in state or tuple(state[key].shape) != tuple(original.shape):
            raise UsageError(f"the fixed model no longer fits --arch (parameter {key})",
                             "write a .pt2 file instead")
        out[key] = state[key].detach().clone()
    return out


def load_state_dict_copy(work: TorchWork, state: dict) -> Any:
    module = copy.deepcopy(work.source_module).eval()
    module.load_state_dict(state, strict=True)
    return module


# ----------------------------------------------------------------------------- the whole run


def example_rows(calibration: Any, rows: int) -> tuple:
    import numpy as np

    example = calibration.example(rows)
    if np.shape(example[0])[0] < rows:  # a fixed-batch model with fewer samples: repeat the last
        example = tuple(np.concatenate([a, np.repeat(a[-1:], rows - len(a), axis=0)]) for a in example)
    return example


def _probe(work: TorchWork, calibration: Any, batch_size: int, fixed: int | None) -> Callable[[Any], bool]:
    """A check of a candidate module against the original program on the first batch."""
    from reludoctor.fix.verify import compare, torch_runner

    first = next(iter(padded_arrays(calibration, batch_size, fixed)))
    reference = torch_runner(work.program.module())(first)

    def check(module: Any) -> bool:
        try:
            return compare(lambda _b: reference, torch_runner(module), [first],
                           lossless_expected=True).equal
        except Exception:  # noqa: BLE001 - a candidate that cannot even run is not equal
            return False

    return check


def _full_check(work: TorchWork, calibration: Any, batch_size: int,
                fixed: int | None) -> Callable[[Any], bool]:
    """A check of a candidate module against the original program on all the calibration data
    (the original's outputs computed on first use, then kept)."""
    from reludoctor.fix.verify import compare, torch_runner

    cache: list[tuple[tuple, list]] = []

    def check(module: Any) -> bool:
        if not cache:
            original = torch_runner(work.program.module())
            cache.extend((batch, original(batch)) for batch in padded_arrays(calibration, batch_size, fixed))
        reference = {id(batch): outputs for batch, outputs in cache}
        try:
            return compare(lambda b: reference[id(b)], torch_runner(module),
                           [batch for batch, _ in cache], lossless_expected=True).equal
        except Exception:  # noqa: BLE001
            return False

    return check


def run(loaded: Any, work: TorchWork, entries: list[SiteFix], request: Any) -> Any:
    """Prepare, apply the strategy, write to a temporary file, reload and verify it, rename."""
    import torch

    from reludoctor.backends.torch.loader import _quiet_torch, sha256_of
    from reludoctor.data.calibration import load_calibration
    from reludoctor.fix.output import TORCH_STATE_DICT, atomic_path
    from reludoctor.fix.result import Applied, lossless_expected
    from reludoctor.fix.verify import torch_macs, torch_params, torch_runner, verified, within

    calibration = load_calibration(request.data, loaded.inputs, limit=request.limit)
    params_before = torch_params(work.lifted)
    macs_before = torch_macs(work.lifted, work.example)
    strategy = request.strategy
    if strategy is Strategy.PRUNE_DEAD:
        sites = prune(work, entries, _probe(work, calibration, request.batch_size, loaded.fixed_batch),
                      _full_check(work, calibration, request.batch_size, loaded.fixed_batch)) \
            if any(e.action == strategy.value for e in entries) else entries
    elif strategy is Strategy.PRUNE_NEAR_DEAD:
        sites = prune_within(work, entries, calibration, request, loaded.fixed_batch) \
            if any(e.action == strategy.value for e in entries) else entries
    elif strategy is Strategy.REINIT:
        sites = reinit(work, entries, request.seed) if any(e.action == strategy.value for e in entries) \
            else entries
    else:
        sites = leaky(work, entries, request.alpha)
    params_after = torch_params(work.lifted)
    macs_after = torch_macs(work.lifted, work.example)
    applied = Applied(list(sites), params_before, params_after, macs_before, macs_after)
    if request.dry_run:
        return applied
    lossless = lossless_expected(strategy, applied.sites, request.dead)
    original = work.program.module()
    with atomic_path(request.out) as temp:
        if request.out_format == TORCH_STATE_DICT:
            torch.save(fixed_state_dict(work), temp)
            with _quiet_torch():
                state = torch.load(temp, map_location="cpu", weights_only=True)
            reloaded = load_state_dict_copy(work, state)
            fixed_object, fixed_fn = reloaded, reloaded
        else:
            program = export_fixed(work)
            torch.export.save(program, temp)
            with _quiet_torch():
                reloaded_program = torch.export.load(str(temp))
            fixed_object, fixed_fn = reloaded_program, reloaded_program.module()
        verification = verified(torch_runner(original), torch_runner(fixed_fn),
                                padded_arrays(calibration, request.batch_size, loaded.fixed_batch),
                                calibration.samples, lossless_expected=lossless)
        if strategy is Strategy.PRUNE_NEAR_DEAD:  # the written model itself, in the ablation metric
            verification = within(verification, _measure(work, fixed_fn, calibration, request, loaded.fixed_batch),
                                  request.max_output_change)
        applied.out_sha256 = sha256_of(temp)
    applied.verification = verification
    applied.fixed_object = fixed_object
    return applied
