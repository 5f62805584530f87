"""Fixtures for the CLI tests: tiny model and data files built once per session, a CliRunner
wrapper with a pinned terminal width, a real-subprocess runner, and error-output checks."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # reludoctor_cli_zoo importable in-process (torch.load, --arch)
    sys.path.insert(0, str(HERE))

import reludoctor_cli_zoo as zoo  # noqa: E402

WIDTH = "200"  # wide enough that no site name or column is ever wrapped or elided
# Variables that could make rich think it writes to a terminal: unset unless a test sets them.
TERMINAL_ENV = ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR")


@dataclass(frozen=True)
class Artifacts:
    root: Path
    x: np.ndarray  # the calibration data (64 x 8, float32)
    npy: Path
    pt2: Path  # torch.export.save of the planted model (dynamic batch)
    torchscript: Path  # torch.jit.trace of the planted model
    state_dict: Path  # torch.save(planted.state_dict())
    pickled_module: Path  # torch.save(planted) - a whole pickled nn.Module
    clean_pt2: Path  # one site, no dead units on the data
    expected: dict  # site name -> dead units, computed independently of reludoctor


@pytest.fixture(scope="session")
def art(tmp_path_factory: pytest.TempPathFactory) -> Artifacts:
    import torch

    root = tmp_path_factory.mktemp("cli-artifacts")
    x = np.random.default_rng(0).standard_normal((64, zoo.IN_FEATURES)).astype(np.float32)
    np.save(root / "x.npy", x)
    model = zoo.planted()
    example = (torch.randn(2, zoo.IN_FEATURES),)
    dynamic = ({0: torch.export.Dim("batch")},)
    torch.export.save(torch.export.export(model, example, dynamic_shapes=dynamic), root / "planted.pt2")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated, still supported
        torch.jit.save(torch.jit.trace(model, example), root / "planted.ts")
    torch.save(model.state_dict(), root / "planted_state.pt")
    torch.save(model, root / "planted_module.pt")
    clean = zoo.clean()
    torch.export.save(torch.export.export(clean, example, dynamic_shapes=dynamic), root / "clean.pt2")
    return Artifacts(root, x, root / "x.npy", root / "planted.pt2", root / "planted.ts",
                     root / "planted_state.pt", root / "planted_module.pt", root / "clean.pt2",
                     zoo.expected_dead(model, x))


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable:
    """Invoke ``reludoctor scan ARGS`` in-process (typer's CliRunner, stdout and stderr apart)."""
    from typer.testing import CliRunner

    from reludoctor.cli import app

    monkeypatch.syspath_prepend(str(HERE))

    def invoke(*args: object, env: dict | None = None, command: str | None = "scan"):
        full_env = {name: None for name in TERMINAL_ENV}
        full_env["COLUMNS"] = WIDTH
        full_env.update(env or {})
        argv = ([command] if command else []) + [str(a) for a in args]
        return CliRunner().invoke(app, argv, env=full_env)

    return invoke


@pytest.fixture
def run_cli() -> Callable:
    """Run ``python -m reludoctor ARGS`` in a real subprocess."""

    def run(*args: object, cwd: Path | None = None, env: dict | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess:
        full_env = {k: v for k, v in os.environ.items() if k not in TERMINAL_ENV}
        full_env["COLUMNS"] = WIDTH
        full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")]))
        full_env.update(env or {})
        return subprocess.run([sys.executable, "-m", "reludoctor", *map(str, args)],
                              capture_output=True, text=True, cwd=cwd, env=full_env, timeout=timeout)

    return run
