"""Start-up stays light: the command line imports no heavy library until a command needs one.
(No timing here: bench_startup.py measures `reludoctor --help`.)"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "onnx", "onnxruntime", "torchvision", "matplotlib")


def _imported(code: str) -> list[str]:
    probe = code + (f"\nimport sys\nprint('MODULES:' + ','.join(m for m in {HEAVY!r} "
                    "if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            timeout=120, check=True)
    marked = [line for line in result.stderr.splitlines() if line.startswith("MODULES:")]
    assert len(marked) == 1, result.stderr
    return [name for name in marked[0][len("MODULES:"):].split(",") if name]


@pytest.mark.parametrize("code", ["import reludoctor", "import reludoctor.cli",
                                  "import reludoctor; reludoctor.__version__",
                                  "import reludoctor.report.schema; reludoctor.report.schema.load_schema()"])
def test_import_pulls_in_no_heavy_library(code: str) -> None:
    assert _imported(code) == []


@pytest.mark.parametrize("argv", [["--help"], ["--version"], *([command, "--help"] for command in
                                  ("scan", "report", "diff", "merge", "fix"))])
def test_help_pulls_in_no_heavy_library(argv: list[str]) -> None:
    code = (f"import sys\nsys.argv = ['reludoctor', *{argv!r}]\nfrom reludoctor.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code")
    assert _imported(code) == []


@pytest.mark.parametrize("extra", [[], ["--device", "cpu"], ["--html", "-"]])
def test_an_onnx_scan_never_imports_torch(extra: list[str], tmp_path) -> None:
    """An ONNX model on the CPU runs on numpy and onnxruntime alone: importing torch would cost
    more than the whole rest of a small scan. (The gradient pass, onnx2torch, does need it.)"""
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    argv = ["reludoctor", "scan", str(root / "fixtures/models/digits_mlp_dead.onnx"), "--data",
            str(root / "fixtures/data/digits_calib_flat.npy"), "--limit", "40", "-q", "--json",
            str(tmp_path / "r.json"), *extra]
    if "--html" in extra:
        argv[-1] = str(tmp_path / "r.html")
    code = (f"import sys\nsys.argv = {argv!r}\nfrom reludoctor.cli import main\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, 1), exc.code")
    imported = _imported(code)
    assert "onnxruntime" in imported and "torch" not in imported, imported
    assert (tmp_path / "r.json").stat().st_size > 0
