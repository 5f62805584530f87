"""SIGTERM and SIGINT (issue 10): the process removes its temporary files and exits 143 / 130 with
one line on stderr, at every point: during the scan, in the middle of writing a report, right before
the rename, while a ``fix`` output sits unverified beside its destination, and when the writer's own
cleanup is itself interrupted. Fuzzing saw SIGTERM end without a message and leave a partial
``.tmp`` beside the report or an unverified ``.tmp.pt2`` beside a fix output.

Real processes: a small driver script (written here, test-only) runs ``reludoctor.cli.main`` with one
function patched to hold the process at a chosen point and say so through a marker file; the test
then sends the signal. Nothing in reludoctor itself knows about these hooks.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

from tests.security.kit import CALIB, CALIB_FLAT, CNN_ONNX, MLP_PT2, ROOT, TERMINAL_ENV

DRIVER = r'''
import os
import sys
import time
from pathlib import Path

mark = Path(os.environ["RELUDOCTOR_TEST_MARK"])
hold = os.environ["RELUDOCTOR_TEST_HOLD"]


def wait_here(what):
    mark.write_text(what)
    while True:
        time.sleep(0.05)


if hold == "scan":  # the scan is running
    import reludoctor.engine as engine

    def scan(*args, **kwargs):
        wait_here("scan")

    engine.scan = scan
elif hold == "mid-write":  # half of the report is in the temporary file
    real_fdopen = os.fdopen

    class Half:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.handle.close()

        def __getattr__(self, name):
            return getattr(self.handle, name)

        def write(self, text):
            self.handle.write(text[: len(text) // 2])
            self.handle.flush()
            wait_here("mid-write")

    def fdopen(fd, mode="r", *args, **kwargs):
        handle = real_fdopen(fd, mode, *args, **kwargs)
        return Half(handle) if mode == "w" else handle

    os.fdopen = fdopen
elif hold == "rename":  # the temporary file is complete, the rename not done
    real_replace = os.replace

    def replace(src, dst, *args, **kwargs):
        if ".tmp" in os.path.basename(str(src)):
            wait_here("rename")
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace
elif hold == "unverified":  # fix: the model is written to .tmp.pt2, not yet verified
    import torch

    real_save = torch.export.save

    def save(*args, **kwargs):
        real_save(*args, **kwargs)
        wait_here("unverified")

    torch.export.save = save

if os.environ.get("RELUDOCTOR_TEST_BREAK_CLEANUP"):  # a second interruption inside the cleanup
    from reludoctor import safeio

    real_remove = safeio.remove_temp
    calls = []

    def remove_temp(name):
        calls.append(name)
        if len(calls) == 1:
            raise KeyboardInterrupt
        real_remove(name)

    safeio.remove_temp = remove_temp

sys.argv = ["reludoctor", *sys.argv[1:]]
from reludoctor.cli import main

main()
'''


def start(tmp_path: Path, hold: str, args: list[object], **extra_env: str) -> tuple[subprocess.Popen, Path]:
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    mark = tmp_path / "held.mark"
    env = {k: v for k, v in os.environ.items() if k not in TERMINAL_ENV}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
               RELUDOCTOR_TEST_MARK=str(mark), RELUDOCTOR_TEST_HOLD=hold, COLUMNS="120", **extra_env)
    process = subprocess.Popen([sys.executable, str(driver), *map(str, args)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return process, mark


def wait_for(process: subprocess.Popen, mark: Path, limit: float = 300) -> None:
    """Until the driver says it holds (a generous bound only against a hang, not a timing check)."""
    deadline = time.monotonic() + limit
    while not mark.exists():
        if process.poll() is not None:
            out, err = process.communicate()
            pytest.fail(f"the command ended (exit {process.returncode}) before the hold point:\n{err}")
        if time.monotonic() > deadline:
            process.kill()
            pytest.fail("the command never reached the hold point")
        time.sleep(0.05)


def interrupt(process: subprocess.Popen, signum: int) -> tuple[int, str, str]:
    process.send_signal(signum)
    try:
        out, err = process.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        process.kill()
        process.communicate()
        pytest.fail("the process did not exit after the signal")
    return process.returncode, out, err


def temp_files(folder: Path) -> list[str]:
    return sorted(name for name in os.listdir(folder) if ".tmp" in name)


def check_interrupted(code: int, err: str, signum: int) -> None:
    name = signal.Signals(signum).name
    assert code == 128 + signum, (code, err)  # never -15 (killed by the signal)
    lines = err.strip().splitlines()
    assert lines == [f"reludoctor: interrupted ({name})"], err
    assert "Traceback" not in err


@pytest.mark.parametrize("hold", ["scan", "mid-write", "rename"])
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_scan_interrupted_leaves_no_temp_file(tmp_path, hold, signum):
    out = tmp_path / "report.json"
    out.write_text("the previous report\n")
    process, mark = start(tmp_path, hold, ["scan", CNN_ONNX, "--data", CALIB, "-q", "--json", out])
    wait_for(process, mark)
    if hold != "scan":
        assert temp_files(tmp_path), "the write should be under way"
    code, _, err = interrupt(process, signum)
    check_interrupted(code, err, signum)
    assert temp_files(tmp_path) == []
    assert out.read_text() == "the previous report\n"  # untouched: the rename never happened


def test_sigterm_during_the_writers_cleanup_still_removes_the_temp_file(tmp_path):
    """The writer's own ``except`` cleanup is interrupted too: the CLI removes what is left."""
    out = tmp_path / "report.json"
    process, mark = start(tmp_path, "rename", ["scan", CNN_ONNX, "--data", CALIB, "-q", "--json", out],
                          RELUDOCTOR_TEST_BREAK_CLEANUP="1")
    wait_for(process, mark)
    assert temp_files(tmp_path)
    code, _, err = interrupt(process, signal.SIGTERM)
    check_interrupted(code, err, signal.SIGTERM)
    assert temp_files(tmp_path) == [] and not out.exists()


@pytest.mark.parametrize("hold", ["unverified", "rename"])
def test_fix_interrupted_leaves_no_unverified_model(tmp_path, hold):
    out = tmp_path / "fixed.pt2"
    process, mark = start(tmp_path, hold, ["fix", MLP_PT2, "--data", CALIB_FLAT, "--prune-dead", "-o", out])
    wait_for(process, mark)
    assert any(name.endswith(".tmp.pt2") for name in temp_files(tmp_path))
    code, _, err = interrupt(process, signal.SIGTERM)
    check_interrupted(code, err, signal.SIGTERM)
    assert temp_files(tmp_path) == [] and not out.exists()


def test_report_command_interrupted_mid_write(tmp_path):
    """A command without a model (report) behaves the same."""
    saved = tmp_path / "saved.json"
    done = subprocess.run([sys.executable, "-m", "reludoctor", "scan", str(CNN_ONNX), "--data", str(CALIB),
                           "-q", "--json", str(saved), "--format", "json"], capture_output=True, text=True,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=300)
    assert done.returncode == 0, done.stderr
    process, mark = start(tmp_path, "mid-write", ["report", saved, "--markdown", tmp_path / "out.md"])
    wait_for(process, mark)
    code, _, err = interrupt(process, signal.SIGTERM)
    check_interrupted(code, err, signal.SIGTERM)
    assert temp_files(tmp_path) == [] and not (tmp_path / "out.md").exists()


def test_an_uninterrupted_run_is_unaffected(tmp_path):
    """The handlers change nothing when no signal comes: exit 0, the report written, no temp."""
    out = tmp_path / "report.json"
    process, _ = start(tmp_path, "none", ["scan", CNN_ONNX, "--data", CALIB, "-q", "--json", out])
    code, _, err = process.wait(timeout=300), None, process.stderr.read()
    process.stdout.close()
    process.stderr.close()
    assert code == 0, err
    assert out.stat().st_size > 0 and temp_files(tmp_path) == []
