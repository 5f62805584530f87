"""The command line: parse options -> scan() -> reporters -> exit code. typer only.

Commands: ``scan`` (a model), ``report`` (render a saved JSON report), ``diff`` (two reports),
``merge`` (reports of scans over disjoint data -> one report), ``trajectory`` (checkpoints of one
model over training), ``fix`` (write a repaired model).
Exit codes: 0 ok, 1 a gate failed (or ``diff`` found something worse), 2 bad input or usage,
3 internal error.
"""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

import typer

from reludoctor import __version__
from reludoctor.options import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, FixOptions, ScanOptions

DEFAULTS = ScanOptions()  # typer shows and uses these: every default is written once, in options.py

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find dead ReLU units in trained PyTorch and ONNX models.",
)


def _stderr():  # noqa: ANN202 - rich is imported lazily to keep --help fast
    from rich.console import Console

    return Console(stderr=True)


def _warner(err, enabled: bool = True):  # noqa: ANN001, ANN202
    """A warn(message) callback printing 'warning: ...' on the stderr console (or nothing)."""
    from rich.markup import escape

    from reludoctor.errors import printable

    def warn(message: str) -> None:
        if enabled:
            err.print(f"[bold yellow]warning:[/] {escape(printable(message))}", highlight=False)

    return warn


def _print_ignored(err, ignored) -> None:  # noqa: ANN001 - scan --verbose
    """One stderr line per ReLU-like op the scan passed over (report.ignored_ops)."""
    from rich.markup import escape

    from reludoctor.errors import printable

    for op in ignored:
        err.print(f"[dim]not a site:[/] {escape(printable(f'{op.name} ({op.op}): {op.reason}'))}",
                  highlight=False)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"reludoctor {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """reludoctor: are my ReLUs dead?"""


def _parse_shape(text: Optional[str]) -> Optional[tuple[int, ...]]:
    from reludoctor.errors import UsageError

    if text is None:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        shape = ()
    if not shape or any(d < 1 for d in shape):
        raise UsageError(f"--input-shape {text!r} is not a shape", "e.g. --input-shape 3,224,224")
    return shape


OUTPUT_OPTIONS = {"json": "--json", "markdown": "--markdown", "junit": "--junit", "sarif": "--sarif",
                  "html": "--html"}


def _plan_outputs(outputs: dict[str, Optional[str]], stdout_format: Optional[str],
                  inputs: list[Optional[str]]) -> tuple[list[tuple[str, str]], Optional[str]]:
    """Check the outputs: ([(format, destination)], the format for stdout or None).

    At most one output may be '-' (stdout), and then --format may not ask for another; no two
    outputs may be the same file; none may overwrite an input; folders must exist.
    """
    from reludoctor import safeio
    from reludoctor.data import images
    from reludoctor.errors import UsageError
    from reludoctor.reporters import STDOUT_FORMATS

    allowed = [f.value for f in STDOUT_FORMATS]
    if stdout_format is not None and stdout_format not in allowed:
        raise UsageError(f"--format {stdout_format!r} is not one of {', '.join(allowed)}",
                         "write the other formats with --junit, --sarif or --html PATH (or -)")
    planned = [(fmt, dest) for fmt, dest in outputs.items() if dest is not None]
    to_stdout = [fmt for fmt, dest in planned if dest == "-"]
    if len(to_stdout) > 1:
        raise UsageError(f"{' and '.join(OUTPUT_OPTIONS[f] + ' -' for f in to_stdout)}: only one output "
                         "can go to stdout", "give the others a file path")
    if to_stdout and stdout_format is not None:
        raise UsageError(f"{OUTPUT_OPTIONS[to_stdout[0]]} - and --format {stdout_format} both want stdout",
                         "drop --format, or write the other to a file")
    seen: dict[Path, str] = {}
    for fmt, dest in planned:
        if dest == "-":
            continue
        option = OUTPUT_OPTIONS[fmt]
        target = safeio.resolve_path(dest, option, UsageError)
        if target.is_dir():
            raise UsageError(f"{option} {dest} is a directory", "give a file path")
        hit = safeio.would_overwrite(dest, inputs, images.SUFFIXES)
        if hit is not None:
            raise UsageError(f"{option} {dest} would overwrite an input file ({hit})", "choose another path")
        if target in seen:
            raise UsageError(f"{seen[target]} and {option} both write {dest}", "give each output its own file")
        if not target.parent.is_dir():
            raise UsageError(f"{option} {dest}: folder {target.parent} does not exist")
        seen[target] = option
    if to_stdout:
        return planned, None
    return planned, stdout_format or "table"


def _settings(config: Optional[str], fail_over: Optional[float], fail_on: Optional[list[str]],
              fail_over_site: Optional[list[str]], baseline: Optional[str], top: Optional[int],
              tolerance: Optional[float] = None):  # noqa: ANN202
    """The settings file (found upwards from here, or --config) with the command line on top."""
    from reludoctor.errors import UsageError
    from reludoctor.report.config import Overrides, fail_on_value, ratio, resolve, site_limit

    if fail_over is not None:
        ratio(fail_over, "--fail-over")
    if top is not None and top < 1:
        raise UsageError(f"--top {top} must be at least 1")
    if tolerance is not None:
        ratio(tolerance, "--tolerance")
    tokens = [t for value in (fail_on or []) for t in value.split(",") if t.strip()]
    return resolve(config, Overrides(
        fail_over=fail_over,
        fail_on=tuple(fail_on_value(t, "--fail-on") for t in tokens),
        site_limits=tuple(site_limit(text) for text in (fail_over_site or [])),
        baseline=baseline, top=top, tolerance=tolerance))


@dataclass(frozen=True)
class ReportArgs:
    """The options scan and report share: where the report goes, and what gates it."""

    json_out: Optional[str] = None
    markdown_out: Optional[str] = None
    junit_out: Optional[str] = None
    sarif_out: Optional[str] = None
    html_out: Optional[str] = None
    stdout_format: Optional[str] = None
    top: Optional[int] = None
    fail_over: Optional[float] = None
    fail_on: Optional[list[str]] = None
    fail_over_site: Optional[list[str]] = None
    baseline: Optional[str] = None
    config: Optional[str] = None

    @classmethod
    def pick(cls, params: dict) -> ReportArgs:
        return cls(**{f.name: params[f.name] for f in fields(cls)})


def _prepare(args: ReportArgs, inputs: list, writes: bool = True):  # noqa: ANN202
    """What scan and report share before they run: the settings (file + command line) and the
    planned outputs (none when this process writes nothing)."""
    settings = _settings(args.config, args.fail_over, args.fail_on, args.fail_over_site,
                         args.baseline, args.top)
    destinations = [args.json_out, args.markdown_out, args.junit_out, args.sarif_out, args.html_out]
    outputs = dict(zip(OUTPUT_OPTIONS, destinations))
    planned, to_stdout = ([], None)
    if writes:
        planned, to_stdout = _plan_outputs(outputs, args.stdout_format,
                                           [*inputs, settings.baseline, settings.source])
    return settings, planned, to_stdout


def _judge(report, settings, baseline_report, warn):  # noqa: ANN001, ANN202
    """Attach the baseline comparison and the gates' outcome to the report."""
    from dataclasses import replace

    from reludoctor.report import gates
    from reludoctor.report.baseline import compare

    if baseline_report is not None:
        report = replace(report, baseline=compare(baseline_report, report, settings.baseline))
    if settings.has_gates or report.baseline is not None:
        for token in gates.unknown_fail_on(settings, report):
            warn(f"--fail-on {token}: no finding has this rule id (known: "
                 f"{', '.join(gates.KNOWN_RULES)}); it cannot fail")
        report = replace(report, gates=gates.evaluate(report, settings))
    return report


def _write_outputs(report, planned: list[tuple[str, str]], stdout_format: Optional[str],  # noqa: ANN001
                   top: Optional[int]) -> None:
    """Every requested output (machine formats too when the report is clean), then stdout."""
    from rich.console import Console

    from reludoctor.errors import ReludoctorError, UsageError
    from reludoctor.reporters import RenderOptions, emit, render, terminal

    options = RenderOptions(top=top)
    rendered = []
    for fmt, dest in planned:
        try:
            rendered.append((fmt, dest, render(fmt, report, options)))
        except ImportError as exc:
            if "matplotlib" in str(exc):
                raise UsageError("the HTML report needs matplotlib", "pip install matplotlib") from exc
            raise
    for fmt, dest, text in rendered:
        try:
            emit(text, dest, OUTPUT_OPTIONS[fmt])  # refuses an input the run read (the ledger)
        except OSError as exc:
            raise ReludoctorError(f"cannot write {OUTPUT_OPTIONS[fmt]} {dest}: {exc.strerror or exc}") from exc
    if stdout_format == "table":
        terminal.print_report(report, Console(), options)
    elif stdout_format is not None:
        emit(render(stdout_format, report, options), "-")


def _trust(trust_model: bool, unsafe_pickle: bool, warn) -> bool:  # noqa: ANN001
    if unsafe_pickle:
        warn("--unsafe-pickle is deprecated and will be removed: use --trust-model")
    return trust_model or unsafe_pickle


def _gate_exit(report, err) -> int:  # noqa: ANN001
    from rich.markup import escape

    from reludoctor.errors import printable
    from reludoctor.report import gates

    if report.gates is None or report.gates.passed:
        return EXIT_OK
    for line in gates.summary_lines(report.gates):
        head, _, rest = printable(line).partition(": ")
        err.print(f"[bold red]{escape(head)}:[/] {escape(rest)}", highlight=False)
    return EXIT_GATE


# Options shared by scan and report (typer reads these defaults; they are never mutated).
JSON_OPTION = typer.Option(None, "--json", metavar="PATH", help="Write the JSON report to PATH ('-': stdout).")
MARKDOWN_OPTION = typer.Option(None, "--markdown", metavar="PATH", help="Write a Markdown summary (CI job summary, PR comment) to PATH or -.")
JUNIT_OPTION = typer.Option(None, "--junit", metavar="PATH", help="Write JUnit XML (one testcase per site, failing where a gate fails) to PATH or -.")
SARIF_OPTION = typer.Option(None, "--sarif", metavar="PATH", help="Write SARIF 2.1.0 (findings for code scanning) to PATH or -.")
HTML_OPTION = typer.Option(None, "--html", metavar="PATH", help="Write a self-contained HTML report with plots to PATH or -.")
FORMAT_OPTION = typer.Option(None, "--format", metavar="table|json|markdown", help="What goes to stdout: table (default), json or markdown.")
TOP_OPTION = typer.Option(None, "--top", metavar="N", help="Show only the N worst sites in the table (terminal, Markdown).")
FAIL_OVER_OPTION = typer.Option(None, "--fail-over", metavar="RATIO", help="Exit 1 when any site's dead ratio exceeds RATIO (0-1).")
FAIL_ON_OPTION = typer.Option(None, "--fail-on", metavar="SEVERITY|RULE", help="Exit 1 on a finding of this severity or worse (info, warning, error) or with this rule id (e.g. dead-site). Repeatable.")
FAIL_OVER_SITE_OPTION = typer.Option(None, "--fail-over-site", metavar="PATTERN=RATIO", help="Per-site limit PATTERN=RATIO, a glob on site names (e.g. 'layer4.*=0.2'); overrides --fail-over for those sites. Repeatable.")
BASELINE_OPTION = typer.Option(None, "--baseline", metavar="OLD.json", help="An older JSON report: fail only on what got worse (units newly dead); list still-dead, newly dead and revived units.")
CONFIG_OPTION = typer.Option(None, "--config", metavar="FILE", help="Settings file (default: reludoctor.toml, or pyproject.toml with a tool.reludoctor table, searched upwards from here).")
DEBUG_OPTION = typer.Option(False, "--debug", help="Show tracebacks of internal errors.")
TRUST_MODEL_OPTION = typer.Option(False, "--trust-model", help="Allow code from the model file: TorchScript archives, pickled nn.Modules, .pt2 archives that fail verification. This EXECUTES CODE from the file: only for files from a source you trust.")
UNSAFE_PICKLE_OPTION = typer.Option(False, "--unsafe-pickle", hidden=True, help="Deprecated: use --trust-model.")
IMPORT_OPTION = typer.Option(None, "--import", metavar="MODULE", help="Import MODULE before loading the model, e.g. an op library such as torchvision whose operators (torchvision::nms) the model calls (torchvision is imported by itself when a TorchScript archive calls its ops). Trusted code. Repeatable.")
# Scan settings that trajectory shares with scan.
DATA_OPTION = typer.Option(None, "--data", "-d", help="Calibration data: .npy, .npz (one array per input), .pt, or a folder of PNG/JPEG images (searched recursively). Without it: synthetic inputs.")
BATCH_SIZE_OPTION = typer.Option(None, "--batch-size", "-b", help=f"Samples per forward pass (default {DEFAULT_BATCH_SIZE}; a fixed-batch model's own size).")
LIMIT_OPTION = typer.Option(None, "--limit", "-n", help="Use at most N samples (synthetic: generate N, default 256).")
SAMPLE_OPTION = typer.Option(None, "--sample", metavar="N", help="Scan N samples drawn at random without replacement (read in file order); with --limit, drawn from the first --limit samples.")
SEED_OPTION = typer.Option(DEFAULTS.seed, "--seed", metavar="S", help="Seed of --sample and of synthetic inputs.")
RESIZE_OPTION = typer.Option(None, "--resize", metavar="N", help="Image folders: resize the shorter side to N (bilinear, like torchvision Resize(N)).")
CENTER_CROP_OPTION = typer.Option(None, "--center-crop", metavar="N", help="Image folders: crop the central NxN (like torchvision CenterCrop(N)).")
NORMALIZE_OPTION = typer.Option(None, "--normalize", metavar="imagenet|none", help="Image folders: pixels in [0, 1], then ImageNet mean/std or none (default: imagenet for RGB models, none for 1-channel).")
DEVICE_OPTION = typer.Option(DEFAULTS.device, "--device", help="auto, cpu, cuda or cuda:N (auto: CUDA when available).")
DTYPE_OPTION = typer.Option(None, "--dtype", metavar="fp32|bf16|fp16", help="PyTorch models: run the forward pass under autocast in bf16 or fp16 (statistics still accumulate in float32/64; dead-unit decisions may differ from fp32 at the margin).")
INPUT_SHAPE_OPTION = typer.Option(None, "--input-shape", help="Sample shape without batch for synthetic data, e.g. 3,224,224.")
CONST_OPTION = typer.Option(None, "--const", metavar="NAME=VALUE", help="A model input that is not per-sample, the same for every batch: VALUE is JSON (16000, 0.5, true, \"text\", [1, 2]), e.g. --const sr=16000. Repeatable.")
BATCH_AXIS_OPTION = typer.Option(None, "--batch-axis", metavar="NAME=AXIS", help="The axis of input NAME that indexes samples, when it is not 0 (a recurrent state [2, N, 128]: --batch-axis state=1; ONNX inputs default to their dynamic dimension). Repeatable.")
UNIT_AXIS_OPTION = typer.Option(None, "--unit-axis", help="Axis of the activation that holds units (default: 1 for [N,C,...] and [N,F], last for [N,T,F]).")
ARCH_OPTION = typer.Option(None, "--arch", help="Architecture for a state_dict: package.module:factory.")
ARCH_KWARGS_OPTION = typer.Option(None, "--arch-kwargs", help="JSON keyword arguments for the --arch factory.")
MAX_MEMORY_OPTION = typer.Option(None, "--max-memory", metavar="SIZE", help="Hugging Face checkpoints larger than memory: load with accelerate's device_map='auto' under SIZE per device (e.g. 2GiB), the rest offloaded to disk for the scan.")
TOKENIZER_OPTION = typer.Option(None, "--tokenizer", metavar="FOLDER", help="Text data: a Hugging Face tokenizer folder (tokenizer.json; loaded offline, never remote code). Default: the model's folder when it holds one.")
MAX_LENGTH_OPTION = typer.Option(None, "--max-length", metavar="N", help=f"Text data: tokens per document, longer ones cut (default {DEFAULT_MAX_LENGTH}, at most the model's max_position_embeddings); with --pack, tokens per row.")
PACK_OPTION = typer.Option(False, "--pack", help="Text data: concatenate the documents' tokens into rows of --max-length tokens (nothing cut, no padding) instead of one padded document per sample.")
INPUT_RANGE_OPTION = typer.Option(None, "--input-range", metavar="LOW,HIGH|imagenet", help="The domain of the model's input, in the units it sees (after normalisation): certify which dead units cannot fire for any input in it (interval bound propagation over the torch.export graph). imagenet: pixels in [0, 1] through ImageNet mean/std, per channel.")
METHOD_OPTION = typer.Option(DEFAULTS.method.value, "--method", help="How call sites are observed: auto, export (torch.export) or dispatch (TorchDispatchMode).")


@app.command()
def scan(
    model: str = typer.Argument(..., help="Model file: .pt2 (torch.export), TorchScript, .onnx, a state_dict with --arch, or a Hugging Face checkpoint (a folder with config.json and *.safetensors, or a cached model id org/name)."),
    data: Optional[str] = DATA_OPTION,
    json_out: Optional[str] = JSON_OPTION,
    markdown_out: Optional[str] = MARKDOWN_OPTION,
    junit_out: Optional[str] = JUNIT_OPTION,
    sarif_out: Optional[str] = SARIF_OPTION,
    html_out: Optional[str] = HTML_OPTION,
    stdout_format: Optional[str] = FORMAT_OPTION,
    top: Optional[int] = TOP_OPTION,
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    limit: Optional[int] = LIMIT_OPTION,
    sample: Optional[int] = SAMPLE_OPTION,
    seed: int = SEED_OPTION,
    resize: Optional[int] = RESIZE_OPTION,
    center_crop: Optional[int] = CENTER_CROP_OPTION,
    normalize: Optional[str] = NORMALIZE_OPTION,
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    input_shape: Optional[str] = INPUT_SHAPE_OPTION,
    constants: Optional[list[str]] = CONST_OPTION,
    batch_axes: Optional[list[str]] = BATCH_AXIS_OPTION,
    max_memory: Optional[str] = MAX_MEMORY_OPTION,
    tokenizer: Optional[str] = TOKENIZER_OPTION,
    max_length: Optional[int] = MAX_LENGTH_OPTION,
    pack: bool = PACK_OPTION,
    unit_axis: Optional[int] = UNIT_AXIS_OPTION,
    input_range: Optional[str] = INPUT_RANGE_OPTION,
    near_dead: float = typer.Option(DEFAULTS.near_dead, "--near-dead", help="Alive units firing on fewer than this fraction of positions are near-dead."),
    dormant_tau: float = typer.Option(DEFAULTS.dormant_tau, "--dormant-tau", help="tau of tau-dormant units (Sokar et al. 2023)."),
    fail_over: Optional[float] = FAIL_OVER_OPTION,
    fail_on: Optional[list[str]] = FAIL_ON_OPTION,
    fail_over_site: Optional[list[str]] = FAIL_OVER_SITE_OPTION,
    baseline: Optional[str] = BASELINE_OPTION,
    config: Optional[str] = CONFIG_OPTION,
    arch: Optional[str] = ARCH_OPTION,
    arch_kwargs: Optional[str] = ARCH_KWARGS_OPTION,
    method: str = METHOD_OPTION,
    trust_model: bool = TRUST_MODEL_OPTION,
    unsafe_pickle: bool = UNSAFE_PICKLE_OPTION,
    imports: Optional[list[str]] = IMPORT_OPTION,
    gradients: bool = typer.Option(False, "--gradients/--no-gradients", help="Also measure gradient flow per site (a backward pass over the calibration data; ONNX models through onnx2torch)."),
    labels: Optional[str] = typer.Option(None, "--labels", metavar="FILE", help="Class labels (.npy of ints, one per sample) for the cross-entropy of the gradient pass and --ablate; default: the model's own argmax."),
    definitions: bool = typer.Option(False, "--definitions", help="Also report, per site, the units each definition from the literature flags, side by side: ReDo tau-dormant, Dohare et al. (active on < 1% of positions), APoZ, and with --gradients GraMa (docs/diagnosis.md)."),
    apoz_threshold: float = typer.Option(DEFAULTS.apoz_threshold, "--apoz-threshold", help="--definitions: units whose average percentage of zeros (APoZ) is above this, in [0, 1), are flagged."),
    grama_tau: float = typer.Option(DEFAULTS.grama_tau, "--grama-tau", help="--definitions --gradients: units whose GraMa score (mean |gradient| over the layer's mean) is <= this are flagged."),
    ablate: bool = typer.Option(False, "--ablate", help="Measure, on the calibration data, what zeroing each site's dormant and near-dead units changes (loss, outputs, argmax), together and, for the top candidates by a first-order score, one at a time: about 2 + sites x (1 + k) forward passes per batch (docs/diagnosis.md)."),
    ablate_top: int = typer.Option(DEFAULTS.ablate_top, "--ablate-top", metavar="K", help="--ablate: candidates per site also zeroed one at a time (the top K by |activation x gradient|); 0: only together."),
    ablate_sites: Optional[list[str]] = typer.Option(None, "--ablate-sites", metavar="GLOB", help="--ablate: only sites whose name matches GLOB. Repeatable. Default: all."),
    slices: Optional[str] = typer.Option(None, "--slices", metavar="FILE", help="Slice ids (.npy, .npz or .pt of integers, one per calibration sample in data order: class, task, domain): per site, units dead on every slice, units alive on some slices only (specialised: keep them), the dead ratio per slice; implies --dead-points."),
    dead_points: bool = typer.Option(False, "--dead-points", help="Per site, the fraction of samples whose whole activation is zero (no unit fires at any position)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also print, on stderr, the ReLU-like ops that are not activations (box clipping, clamps of integers) and why, and where the time went (loading, export, instrumentation, session build, the data pass)."),
    export_activations: Optional[str] = typer.Option(None, "--export-activations", metavar="DIR", help="Language models: write each transformer block's FFN activation counts to DIR in PowerInfer's layout (activation_{i}.pt, int64 [neurons]) with an index reludoctor-activations.json. DIR is created."),
    export_naming: str = typer.Option("index", "--export-naming", metavar="index|padded", help="File names of --export-activations: index (activation_3.pt, what PowerInfer's solver opens) or padded (activation_03.pt: sorts right as strings too)."),
    debug: bool = DEBUG_OPTION,
) -> None:
    """Scan MODEL for dead ReLU units over calibration data."""
    params = dict(locals())
    code = _guarded(debug, lambda: _scan(model, data, params, ReportArgs.pick(params), quiet, verbose))
    raise typer.Exit(code)


def _options(cls, params: dict, warn, **parsed):  # noqa: ANN001, ANN202
    """The command line's values as ``cls`` (ScanOptions or FixOptions): the fields it has, the
    options both commands parse (--trust-model, --unsafe-pickle, --import), then ``parsed``."""
    values = {name: params[name] for name in cls.names() if name in params}
    values.update(trust_model=_trust(params["trust_model"], params["unsafe_pickle"], warn),
                  imports=tuple(params["imports"] or ()), **parsed)
    return cls(**values)


def _scan_options(params: dict, warn) -> ScanOptions:  # noqa: ANN001 - scan and trajectory
    return _options(ScanOptions, params, warn, input_shape=_parse_shape(params["input_shape"]),
                    constants=list(params["constants"] or ()), batch_axes=list(params["batch_axes"] or ()))


def _scan(model: str, data: Optional[str], params: dict, outputs: ReportArgs, quiet: bool,
          verbose: bool) -> int:
    from reludoctor.core.distributed import is_writer
    from reludoctor.core.timings import Timings, phase
    from reludoctor.engine import scan as run_scan
    from reludoctor.report import powerinfer
    from reludoctor.report.baseline import load_report

    writer = is_writer()  # under torchrun only rank 0 prints and writes (other ranks: errors only)
    settings, planned, to_stdout = _prepare(outputs, [model, data, params["labels"], params["slices"]],
                                            writes=writer)
    export_dir = params["export_activations"]
    if export_dir is not None and writer:  # refused before the scan, not after it
        powerinfer.check_folder(export_dir, params["export_naming"], [model, data, params["labels"]])
    baseline_report = load_report(settings.baseline, "baseline") if settings.baseline else None
    err = _stderr()
    progress_bar = None
    if not quiet and writer and err.is_terminal:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        progress_bar = Progress("scanning", BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                                console=err, transient=True)
    task = None

    def progress(done: int, total: Optional[int]) -> None:
        nonlocal task
        if progress_bar is None:
            return
        if task is None:
            task = progress_bar.add_task("scan", total=total)
        progress_bar.update(task, completed=done, total=total)

    warn = _warner(err, enabled=writer)
    timings = Timings()

    try:
        if progress_bar is not None:
            progress_bar.start()
        options = _scan_options(params, warn)
        with timings.active(), phase("scan"):
            report = run_scan(model, data, options, progress=progress, on_warning=warn)
    finally:
        if progress_bar is not None:
            progress_bar.stop()

    if verbose and writer:
        _print_ignored(err, report.ignored_ops)
    report = _judge(report, settings, baseline_report, warn)
    if not writer:  # rank 0 writes, and alone carries a failed gate's exit code: torchrun stops
        return EXIT_OK  # the other ranks when one fails, and must not stop rank 0 mid-write
    with timings.active(), phase("write the report"):
        if export_dir is not None:
            powerinfer.export(report, export_dir, params["export_naming"], warn)
        _write_outputs(report, planned, to_stdout, settings.top)
    if verbose:
        for line in timings.lines():
            err.print(f"[dim]time:[/] {line}", highlight=False)
    return _gate_exit(report, err)


@app.command("report")
def report_command(
    saved: str = typer.Argument(..., help="A JSON report written by reludoctor scan --json."),
    json_out: Optional[str] = JSON_OPTION,
    markdown_out: Optional[str] = MARKDOWN_OPTION,
    junit_out: Optional[str] = JUNIT_OPTION,
    sarif_out: Optional[str] = SARIF_OPTION,
    html_out: Optional[str] = HTML_OPTION,
    stdout_format: Optional[str] = FORMAT_OPTION,
    top: Optional[int] = TOP_OPTION,
    fail_over: Optional[float] = FAIL_OVER_OPTION,
    fail_on: Optional[list[str]] = FAIL_ON_OPTION,
    fail_over_site: Optional[list[str]] = FAIL_OVER_SITE_OPTION,
    baseline: Optional[str] = BASELINE_OPTION,
    config: Optional[str] = CONFIG_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    """Render a saved JSON report in any format without rescanning (gates re-evaluated when set)."""
    outputs = ReportArgs.pick(dict(locals()))
    code = _guarded(debug, lambda: _report(saved, outputs))
    raise typer.Exit(code)


def _report(saved: str, outputs: ReportArgs) -> int:
    from dataclasses import replace

    from reludoctor.report.baseline import load_report

    settings, planned, to_stdout = _prepare(outputs, [saved])
    report = load_report(saved)
    baseline_report = load_report(settings.baseline, "baseline") if settings.baseline else None
    err = _stderr()
    warn = _warner(err)

    if settings.has_gates:  # gates configured now replace the saved outcome
        report = _judge(replace(report, gates=None), settings, baseline_report, warn)
    _write_outputs(report, planned, to_stdout, settings.top)
    return _gate_exit(report, err)


@app.command("diff")
def diff_command(
    a: str = typer.Argument(..., help="The older JSON report."),
    b: str = typer.Argument(..., help="The newer JSON report."),
    tolerance: Optional[float] = typer.Option(None, "--tolerance", metavar="RATIO", help="Allowed absolute increase of a site's dead ratio (0-1, default 0)."),
    json_out: Optional[str] = typer.Option(None, "--json", metavar="PATH", help="Write the comparison as JSON to PATH ('-': stdout, and no table)."),
    config: Optional[str] = CONFIG_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    """Compare two JSON reports site by site; exit 1 when a dead ratio rose beyond --tolerance."""
    options = dict(locals())
    code = _guarded(debug, lambda: _diff(**options))
    raise typer.Exit(code)


def _diff(a, b, tolerance, json_out, config, debug) -> int:  # noqa: ANN001
    import json

    from rich.console import Console

    from reludoctor.report.baseline import compare, diff_rows, diff_to_dict, load_report
    from reludoctor.reporters import emit, terminal

    settings = _settings(config, None, None, None, None, None, tolerance)
    limit = settings.tolerance if settings.tolerance is not None else 0.0
    _plan_outputs({"json": json_out}, None, [a, b, settings.source])  # the checks scan's outputs get
    before = load_report(a, "report A")
    after = load_report(b, "report B")
    comparison = compare(before, after, a)
    rows = diff_rows(comparison, limit)
    if json_out is not None:
        emit(json.dumps(diff_to_dict(a, b, comparison, limit), indent=2, allow_nan=False) + "\n", json_out,
             "--json")
    if json_out != "-":
        terminal.print_diff(rows, comparison, Console(), a, b, limit)
    return EXIT_GATE if any(row.worse for row in rows) else EXIT_OK


@app.command("merge")
def merge_command(
    parts: list[str] = typer.Argument(..., metavar="PART.json", help="JSON reports (scan --json) of the same model over disjoint calibration data."),
    json_out: Optional[str] = JSON_OPTION,
    stdout_format: Optional[str] = FORMAT_OPTION,
    top: Optional[int] = TOP_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    """Merge reports of separate scans over disjoint data into the report of one scan over their union."""
    options = dict(locals())
    code = _guarded(debug, lambda: _merge(**options))
    raise typer.Exit(code)


def _merge(parts, json_out, stdout_format, top, debug) -> int:  # noqa: ANN001
    from reludoctor.report.merge import merge_files

    if top is not None and top < 1:
        from reludoctor.errors import UsageError

        raise UsageError(f"--top {top} must be at least 1")
    planned, to_stdout = _plan_outputs({"json": json_out}, stdout_format, list(parts))
    err = _stderr()
    warn = _warner(err)

    report = merge_files(parts, warn)
    _write_outputs(report, planned, to_stdout, top)
    return EXIT_OK


@app.command("trajectory")
def trajectory_command(
    checkpoints: list[str] = typer.Argument(..., metavar="CKPT...", help="Checkpoints of one model in step order: model files as scan loads them, or one folder of them (sorted naturally: step_2 before step_10)."),
    data: Optional[str] = DATA_OPTION,
    json_out: Optional[str] = typer.Option(None, "--json", metavar="PATH", help="Write the trajectory as JSON to PATH ('-': stdout, and no table)."),
    html_out: Optional[str] = typer.Option(None, "--html", metavar="PATH", help="Write a self-contained HTML page with dead ratio over checkpoints and unit maps to PATH or -."),
    batch_size: Optional[int] = BATCH_SIZE_OPTION,
    limit: Optional[int] = LIMIT_OPTION,
    sample: Optional[int] = SAMPLE_OPTION,
    seed: int = SEED_OPTION,
    resize: Optional[int] = RESIZE_OPTION,
    center_crop: Optional[int] = CENTER_CROP_OPTION,
    normalize: Optional[str] = NORMALIZE_OPTION,
    device: str = DEVICE_OPTION,
    dtype: Optional[str] = DTYPE_OPTION,
    input_shape: Optional[str] = INPUT_SHAPE_OPTION,
    constants: Optional[list[str]] = CONST_OPTION,
    batch_axes: Optional[list[str]] = BATCH_AXIS_OPTION,
    unit_axis: Optional[int] = UNIT_AXIS_OPTION,
    arch: Optional[str] = ARCH_OPTION,
    arch_kwargs: Optional[str] = ARCH_KWARGS_OPTION,
    method: str = METHOD_OPTION,
    trust_model: bool = TRUST_MODEL_OPTION,
    unsafe_pickle: bool = UNSAFE_PICKLE_OPTION,
    imports: Optional[list[str]] = IMPORT_OPTION,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress line per checkpoint."),
    debug: bool = DEBUG_OPTION,
) -> None:
    """Scan checkpoints of one model over the same data: dead ratios over training, when each unit died."""
    params = dict(locals())
    code = _guarded(debug, lambda: _trajectory(params))
    raise typer.Exit(code)


def _trajectory(params: dict) -> int:
    from rich.console import Console
    from rich.markup import escape

    from reludoctor.errors import printable
    from reludoctor.reporters import emit
    from reludoctor.reporters import trajectory as outputs
    from reludoctor.trajectory import checkpoint_files, trajectory

    files = checkpoint_files(params["checkpoints"])  # before any scan: refusals come at once
    planned, to_stdout = _plan_outputs({"json": params["json_out"], "html": params["html_out"]}, None,
                                       [*files, params["data"]])
    err = _stderr()
    warn = _warner(err)

    def progress(done: int, total: int, label: str, report) -> None:  # noqa: ANN001
        if not params["quiet"]:
            s = report.summary
            err.print(f"[dim]scanned {done}/{total}[/] {escape(printable(label))}: {s.dead_units} of "
                      f"{s.units} units dead ({s.dead_ratio:.1%})", highlight=False)

    result = trajectory(files, params["data"], _scan_options(params, warn), progress=progress, on_warning=warn)
    try:
        texts = [(fmt, dest, result.to_json() if fmt == "json" else outputs.render_html(result))
                 for fmt, dest in planned]
    except ImportError as exc:
        if "matplotlib" in str(exc):
            from reludoctor.errors import UsageError

            raise UsageError("the HTML page needs matplotlib", "pip install matplotlib") from exc
        raise
    for fmt, dest, text in texts:
        emit(text, dest, OUTPUT_OPTIONS[fmt])
    if to_stdout == "table":
        outputs.print_table(result, Console())
    return EXIT_OK


@app.command("fix")
def fix_command(
    model: str = typer.Argument(..., help="Model file: .pt2 (torch.export), a state_dict with --arch, or .onnx."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Calibration data (required): the scan runs on it and the fixed model is verified on it."),
    out: Optional[str] = typer.Option(None, "--output", "-o", metavar="OUT", help="The fixed model: .pt2 (torch.export), .pt (state_dict, --reinit of an --arch model) or .onnx."),
    prune_dead: bool = typer.Option(False, "--prune-dead", help="Remove dead units from their Conv/Linear (+BatchNorm) and the consumers' inputs (lossless on the data, verified)."),
    prune_near_dead: bool = typer.Option(False, "--prune-near-dead", help="Also remove the near-dead and tau-dormant units of each site whose measured removal (scan --ablate) keeps the output change within --max-output-change; the written model's change is measured again (docs/fix.md)."),
    max_output_change: Optional[float] = typer.Option(None, "--max-output-change", metavar="EPS", help="--prune-near-dead: the largest relative L2 change of the outputs on the calibration data, ||y' - y|| / ||y||, allowed (> 0)."),
    leaky: Optional[float] = typer.Option(None, "--leaky", metavar="ALPHA", help="Replace ReLU sites with LeakyReLU(ALPHA), 0 < ALPHA < 1 (not lossless: the change is measured)."),
    reinit: bool = typer.Option(False, "--reinit", help="ReDo: dead and tau-dormant units get Kaiming-normal incoming and zero outgoing weights."),
    sites: Optional[list[str]] = typer.Option(None, "--sites", metavar="GLOB", help="Only sites whose name matches GLOB (e.g. 'layer4.*'). Repeatable. Default: all."),
    input_range: Optional[str] = INPUT_RANGE_OPTION,
    certified_only: bool = typer.Option(False, "--certified-only", help="With --prune-dead and --input-range: prune only the dead units that cannot fire for any input in the range (certified), not those that merely did not fire on the data."),
    summary: Optional[str] = typer.Option(None, "--summary", metavar="FILE", help="Write the JSON summary to FILE ('-': stdout instead of the table)."),
    force: bool = typer.Option(False, "--force", help="Replace OUT if it exists."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Scan and show what would change; write nothing."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help=f"Samples per forward pass (default {DEFAULT_BATCH_SIZE})."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Use at most N calibration samples."),
    device: str = typer.Option(DEFAULTS.device, "--device", help="Device of the scan: auto, cpu, cuda or cuda:N (the fix itself runs on the CPU)."),
    dormant_tau: float = typer.Option(DEFAULTS.dormant_tau, "--dormant-tau", help="tau of tau-dormant units (--reinit re-initialises dead and dormant units)."),
    seed: int = typer.Option(DEFAULTS.seed, "--seed", help="Seed of --reinit's Kaiming initialisation."),
    arch: Optional[str] = ARCH_OPTION,
    arch_kwargs: Optional[str] = ARCH_KWARGS_OPTION,
    trust_model: bool = TRUST_MODEL_OPTION,
    unsafe_pickle: bool = UNSAFE_PICKLE_OPTION,
    imports: Optional[list[str]] = IMPORT_OPTION,
    debug: bool = DEBUG_OPTION,
) -> None:
    """Write a repaired model: prune dead units, switch to LeakyReLU, or re-initialise (ReDo)."""
    params = dict(locals())
    code = _guarded(debug, lambda: _fix(model, data, out, summary, params))
    raise typer.Exit(code)


def _fix(model: str, data: Optional[str], out: Optional[str], summary: Optional[str], params: dict) -> int:
    from rich.console import Console

    from reludoctor.errors import UsageError
    from reludoctor.fix import fix
    from reludoctor.fix.output import check_destination, same_file
    from reludoctor.reporters import emit

    leaky, dry_run = params["leaky"], params["dry_run"]
    chosen = [name for name, on in (("--prune-dead", params["prune_dead"]), ("--leaky", leaky is not None),
                                    ("--reinit", params["reinit"]),
                                    ("--prune-near-dead", params["prune_near_dead"])) if on]
    if len(chosen) != 1:
        raise UsageError("choose exactly one strategy" + (f", not {' and '.join(chosen)}" if chosen else ""),
                         "--prune-dead, --prune-near-dead, --leaky ALPHA or --reinit")
    if not data:
        raise UsageError("--data is required", "the fix is planned and verified on calibration data")
    if out is None and not dry_run:
        raise UsageError("-o OUT is required", "or --dry-run to only see the plan")
    if summary not in (None, "-"):
        if dry_run:
            raise UsageError("--dry-run writes nothing", "use --summary - to print the plan as JSON")
        target = Path(summary)
        if out and same_file(target, Path(out)):
            raise UsageError(f"--summary {summary} would overwrite {out}", "choose another path")
        from reludoctor import safeio
        from reludoctor.data import images

        hit = safeio.would_overwrite(summary, [model, data], images.SUFFIXES)  # images in --data too
        if hit is not None:
            raise UsageError(f"--summary {summary} would overwrite an input file ({hit})", "choose another path")
        check_destination(target, [], force=True, option="--summary")
    strategy = chosen[0].lstrip("-")  # the flag is the strategy's name
    err = _stderr()
    warn = _warner(err)

    options = _options(FixOptions, params, warn, strategy=strategy, alpha=leaky, sites=tuple(params["sites"] or ()))
    result = fix(model, data, out, options, on_warning=warn)
    if summary is not None:
        emit(result.to_json(), summary, "--summary")  # the ledger: external data, images too
    if summary != "-":
        from reludoctor.reporters.fix_summary import print_summary

        print_summary(result, Console())
    return EXIT_OK


def _guarded(debug: bool, action) -> int:  # noqa: ANN001
    """Run a command: our errors -> one line and exit 2; anything else -> exit 3; SIGINT and
    SIGTERM -> temporary files removed, one line, exit 130 / 143. The command runs inside an
    input ledger (``safeio.ledger``): every file it reads is protected from its outputs."""
    from reludoctor import safeio
    from reludoctor.errors import ReludoctorError, printable

    try:
        with safeio.ledger():
            code = action()
        if _SIGNALLED:  # a signal whose exception something swallowed: still an interruption
            raise KeyboardInterrupt
        return code
    except ReludoctorError as exc:
        if debug:
            traceback.print_exc()
        print(f"reludoctor: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        return _interrupted(getattr(exc, "signum", None))
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if debug:
            traceback.print_exc()
        from reludoctor.errors import first_line

        detail = first_line(exc)
        print(f"reludoctor: internal error: {type(exc).__name__}: {printable(detail)} "
              "(re-run with --debug for the traceback, and please report it)", file=sys.stderr)
        return EXIT_INTERNAL
    finally:
        safeio.remove_temps()


# Signals received (the first one raises Interrupted; later ones are only recorded, so that
# nothing interrupts the cleanup on the way out), and whether the one line was printed.
_SIGNALLED: list[int] = []
_REPORTED: list[int] = []


def _interrupted(signum: Optional[int]) -> int:
    """Remove temporary files, print one line once, return 128 + the signal number."""
    import signal

    from reludoctor import safeio

    safeio.remove_temps()
    if signum is None:
        signum = _SIGNALLED[0] if _SIGNALLED else int(signal.SIGINT)
    if not _REPORTED:
        _REPORTED.append(signum)
        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        print(f"reludoctor: interrupted ({name})", file=sys.stderr)
    return 128 + signum


def _on_signal(signum: int, frame) -> None:  # noqa: ANN001
    from reludoctor.errors import Interrupted

    first = not _SIGNALLED
    _SIGNALLED.append(signum)
    if first:
        raise Interrupted(signum)


def main() -> None:
    import signal

    from reludoctor import safeio

    for name in ("SIGTERM", "SIGINT"):
        number = getattr(signal, name, None)
        if number is not None:
            try:
                signal.signal(number, _on_signal)
            except ValueError:  # not the main thread (an embedding): leave the defaults
                pass
    try:
        app()
    except KeyboardInterrupt as exc:  # outside a command (click's parsing): still one line
        sys.exit(_interrupted(getattr(exc, "signum", None)))
    except SystemExit:
        if _SIGNALLED:  # click turned it into "Aborted!" and exit 1
            sys.exit(_interrupted(_SIGNALLED[0]))
        raise
    finally:
        safeio.remove_temps()


def entry() -> None:
    """The ``reludoctor`` command (and ``python -m reludoctor``): ``main()``, then an exit that
    skips the interpreter's teardown once torch is loaded (about 0.9 s here, most of a small
    scan's cost after torch's own import). Everything the run writes is flushed and closed by
    then; a process group (torchrun) still leaves through the normal exit and its atexit hook."""
    try:
        main()
        code: object = 0
    except SystemExit as exc:
        code = exc.code
    if not isinstance(code, int):
        if code is not None:
            print(code, file=sys.stderr)
        code = 0 if code is None else 1
    if "torch" not in sys.modules or _in_process_group():
        sys.exit(code)
    import logging
    import os

    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe: nothing left to flush
            pass
    os._exit(code)


def _in_process_group() -> bool:
    distributed = sys.modules.get("torch.distributed")
    return bool(distributed is not None and distributed.is_available() and distributed.is_initialized())
