"""What the security tests share: the fixture paths, the CLI in-process and as a real process,
the one-line exit-2 check, and a guard for calls that must not block (FIFOs)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "fixtures" / "models"
CNN_ONNX = MODELS / "digits_cnn.onnx"
MLP_ONNX = MODELS / "digits_mlp_dead.onnx"
MLP_PT2 = MODELS / "digits_mlp_dead.pt2"
CNN_TS = MODELS / "digits_cnn.ts"
CALIB = ROOT / "fixtures" / "data" / "digits_calib.npy"
CALIB_FLAT = ROOT / "fixtures" / "data" / "digits_calib_flat.npy"
TERMINAL_ENV = ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR")
HANG_GUARD_S = 120  # generous: a FIFO that blocks never returns at all; this only ends the test


def cli(*args: object):  # noqa: ANN201 - typer's Result
    """The CLI in this process, 120 columns, no colour."""
    from typer.testing import CliRunner

    from reludoctor.cli import app

    env = {name: None for name in TERMINAL_ENV}
    env["COLUMNS"] = "120"
    return CliRunner().invoke(app, [str(a) for a in args], env=env)


def run_cli(*args: object) -> subprocess.CompletedProcess:
    """A real process (a FIFO that blocks would block the test process itself in-process)."""
    env = {k: v for k, v in os.environ.items() if k not in TERMINAL_ENV}
    env["COLUMNS"] = "120"
    return subprocess.run([sys.executable, "-m", "reludoctor", *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=HANG_GUARD_S, cwd=ROOT)


def one_line_error(code: int, stderr: str, *mentions: str) -> str:
    """Exit 2 with exactly one 'reludoctor: error:' line naming every one of ``mentions``."""
    assert code == 2, (code, stderr)
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reludoctor: error:"), stderr
    assert "Traceback" not in stderr
    for text in mentions:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def refused(result: Any, *mentions: str) -> str:
    """``one_line_error`` of a CliRunner result or a CompletedProcess."""
    code = getattr(result, "exit_code", None)
    code = result.returncode if code is None else code
    return one_line_error(code, result.stderr, *mentions)


def returns(call: Callable[[], Any]) -> Any:
    """``call()`` in a daemon thread: its result or exception, failing the test if it blocks."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), "the call blocked"
    if "error" in box:
        raise box["error"]
    return box["value"]
