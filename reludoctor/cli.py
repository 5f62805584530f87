"""The command line: parse options -> scan() -> reporters -> exit code. typer only.

Exit codes: 0 ok, 1 a gate failed, 2 bad input or usage, 3 internal error.
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path
from typing import Optional

import typer

from reludoctor import __version__

EXIT_OK, EXIT_GATE, EXIT_INPUT, EXIT_INTERNAL = 0, 1, 2, 3

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Find dead ReLU units in trained PyTorch models.",
)


def _stderr():  # noqa: ANN202 - rich is imported lazily to keep --help fast
    from rich.console import Console

    return Console(stderr=True)


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


def _check_outputs(json_out: Optional[str], inputs: list[Optional[str]]) -> None:
    from reludoctor.errors import UsageError

    if json_out in (None, "-"):
        return
    target = Path(json_out).resolve()
    if target.is_dir():
        raise UsageError(f"--json {json_out} is a directory", "give a file path")
    for given in inputs:
        if given and Path(given).resolve() == target:
            raise UsageError(f"--json {json_out} would overwrite an input file", "choose another path")
    if not target.parent.is_dir():
        raise UsageError(f"--json {json_out}: folder {target.parent} does not exist")


@app.command()
def scan(
    model: str = typer.Argument(..., help="Model file: .pt2 (torch.export), TorchScript, or a state_dict with --arch."),
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Calibration data: .npy, .npz (one array per input) or .pt. Without it: synthetic inputs."),
    json_out: Optional[str] = typer.Option(None, "--json", help="Write the JSON report to PATH ('-' for stdout)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Samples per forward pass (default 32; a fixed-batch model's own size)."),
    limit: Optional[int] = typer.Option(None, "--limit", "-n", help="Use at most N samples (synthetic: generate N, default 256)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu, cuda or cuda:N (auto: CUDA when available)."),
    input_shape: Optional[str] = typer.Option(None, "--input-shape", help="Sample shape without batch for synthetic data, e.g. 3,224,224."),
    unit_axis: Optional[int] = typer.Option(None, "--unit-axis", help="Axis of the activation that holds units (default: 1 for [N,C,...] and [N,F], last for [N,T,F])."),
    near_dead: float = typer.Option(1e-3, "--near-dead", help="Alive units firing on fewer than this fraction of positions are near-dead."),
    dormant_tau: float = typer.Option(0.025, "--dormant-tau", help="tau of tau-dormant units (Sokar et al. 2023)."),
    fail_over: Optional[float] = typer.Option(None, "--fail-over", help="Exit 1 when any site's dead ratio exceeds RATIO (0-1)."),
    arch: Optional[str] = typer.Option(None, "--arch", help="Architecture for a state_dict: package.module:factory."),
    arch_kwargs: Optional[str] = typer.Option(None, "--arch-kwargs", help="JSON keyword arguments for the --arch factory."),
    method: str = typer.Option("auto", "--method", help="How call sites are observed: auto, export (torch.export) or dispatch (TorchDispatchMode)."),
    unsafe_pickle: bool = typer.Option(False, "--unsafe-pickle", help="Allow loading a fully pickled nn.Module. This EXECUTES CODE from the file: only for files you trust."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar."),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks of internal errors."),
) -> None:
    """Scan MODEL for dead ReLU units over calibration data."""
    options = dict(locals())
    code = _guarded(debug, lambda: _scan(**options))
    raise typer.Exit(code)


def _scan(model, data, json_out, batch_size, limit, device, input_shape, unit_axis, near_dead,  # noqa: ANN001
          dormant_tau, fail_over, arch, arch_kwargs, method, unsafe_pickle, quiet, debug) -> int:
    from rich.console import Console

    from reludoctor.engine import scan as run_scan
    from reludoctor.errors import UsageError
    from reludoctor.reporters import emit
    from reludoctor.reporters import json as json_format
    from reludoctor.reporters import terminal

    if fail_over is not None and not 0 <= fail_over <= 1:  # also refuses NaN
        raise UsageError(f"--fail-over {fail_over} must be a ratio between 0 and 1")
    _check_outputs(json_out, [model, data])
    err = _stderr()
    progress_bar = None
    if not quiet and err.is_terminal:
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

    def warn(message: str) -> None:
        err.print(f"[bold yellow]warning:[/] {message}", highlight=False)

    try:
        if progress_bar is not None:
            progress_bar.start()
        report = run_scan(
            model, data, batch_size=batch_size, device=device, limit=limit,
            input_shape=_parse_shape(input_shape), unit_axis=unit_axis, near_dead=near_dead,
            dormant_tau=dormant_tau, method=method, arch=arch, arch_kwargs=arch_kwargs,
            unsafe_pickle=unsafe_pickle, progress=progress, on_warning=warn,
        )
    finally:
        if progress_bar is not None:
            progress_bar.stop()

    if json_out is not None:
        emit(json_format.render(report), json_out)
    if json_out != "-":
        terminal.render(report, Console())
    if fail_over is not None:
        failing = [s for s in report.sites if s.dead_ratio > fail_over]
        if failing:
            worst = max(failing, key=lambda s: s.dead_ratio)
            err.print(f"[bold red]gate failed:[/] {len(failing)} site(s) over --fail-over {fail_over:g}; "
                      f"worst {worst.name} at {worst.dead_ratio:.1%} dead", highlight=False)
            return EXIT_GATE
    return EXIT_OK


def _guarded(debug: bool, action) -> int:  # noqa: ANN001
    """Run a command: our errors -> one line and exit 2; anything else -> exit 3."""
    from reludoctor.errors import ReludoctorError

    try:
        return action()
    except ReludoctorError as exc:
        if debug:
            traceback.print_exc()
        print(f"reludoctor: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("reludoctor: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - the last line of defence
        if debug:
            traceback.print_exc()
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        print(f"reludoctor: internal error: {type(exc).__name__}: {detail} "
              "(re-run with --debug for the traceback, and please report it)", file=sys.stderr)
        return EXIT_INTERNAL


def main() -> None:
    app()
