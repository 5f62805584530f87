"""Start-up time of the command line: `reludoctor --help` must answer in under 0.5 s.

    python benchmarks/bench_startup.py [--runs 9]

Each command runs in a fresh subprocess, the variants interleaved (A, B, C, A, B, C, ...);
medians are printed with the spread. The console script is the one installed beside this
Python (`<prefix>/bin/reludoctor`); a launcher found first on PATH (a pyenv shim, say) is
timed too when it differs, since its own overhead is not reludoctor's. Also checks, in a
subprocess, that `--help` imported neither torch, numpy nor onnx. Always exits 0.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET = 0.5
HEAVY = ("torch", "numpy", "onnx", "onnxruntime", "torchvision", "matplotlib")


def _script() -> str | None:
    folder = Path(sys.executable).parent
    for name in ("reludoctor", "reludoctor.exe"):
        if (folder / name).exists():
            return str(folder / name)
    return None


def _heavy_imports_of_help() -> list[str]:
    code = ("import sys\n"
            "sys.argv = ['reludoctor', '--help']\n"
            "from reludoctor.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            f"print('MODULES:' + ','.join(m for m in {HEAVY!r} if m in sys.modules), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    marked = [line for line in result.stderr.splitlines() if line.startswith("MODULES:")]
    if not marked:
        return ["(probe failed)"]
    return [m for m in marked[0][len("MODULES:"):].split(",") if m]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=9)
    args = parser.parse_args()
    env = dict(os.environ, COLUMNS="100")
    commands: dict[str, list[str]] = {"python -c pass (interpreter alone)": [sys.executable, "-c", "pass"],
                                      "python -c 'import reludoctor.cli'":
                                          [sys.executable, "-c", "import reludoctor.cli"],
                                      "python -m reludoctor --help": [sys.executable, "-m", "reludoctor", "--help"]}
    script = _script()
    if script:
        commands["reludoctor --help (console script)"] = [script, "--help"]
    on_path = shutil.which("reludoctor")
    if on_path and script and Path(on_path).resolve() != Path(script).resolve():
        commands[f"reludoctor --help via PATH ({on_path})"] = [on_path, "--help"]
    times: dict[str, list[float]] = {name: [] for name in commands}
    for name, command in commands.items():  # warm the file cache
        subprocess.run(command, capture_output=True, env=env, check=False)
    for _ in range(args.runs):
        for name, command in commands.items():
            start = time.perf_counter()
            result = subprocess.run(command, capture_output=True, env=env, check=False)
            times[name].append(time.perf_counter() - start)
            if result.returncode != 0:
                print(f"error: {' '.join(command)} exited {result.returncode}: "
                      f"{result.stderr.decode(errors='replace').strip()[:200]}")
                return 0
    load = "%.2f" % os.getloadavg()[0] if hasattr(os, "getloadavg") else "unknown"
    print(f"python {sys.version.split()[0]} ({sys.executable}), {os.cpu_count()} CPUs, load {load}; "
          f"median of {args.runs} runs each, interleaved")
    for name, values in times.items():
        print(f"  {name:<60} {statistics.median(values):6.3f} s  "
              f"(min {min(values):.3f}, max {max(values):.3f})")
    heavy = _heavy_imports_of_help()
    print(f"  modules imported by --help among {', '.join(HEAVY)}: {', '.join(heavy) or 'none'}")
    key = "reludoctor --help (console script)" if script else "python -m reludoctor --help"
    median = statistics.median(times[key])
    print(f"{key}: {median:.3f} s (target < {TARGET} s): {'met' if median < TARGET else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
