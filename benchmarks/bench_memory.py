"""Peak memory of a scan does not grow with the number of calibration samples.

    python benchmarks/bench_memory.py                  # N = 1000 and 4N, 3x64x64 samples
    python benchmarks/bench_memory.py --n 2000 --image-size 96
    python benchmarks/bench_memory.py --zoo resnet18,mobilenet_v3_small   # scan vs plain per model

Writes, into a temporary folder, a ``.npy`` of N and one of 4N float32 samples, and a folder of
N and one of 4N PNG images (the 4N folder holds the N images plus 3N more, in class
subfolders). Each scan runs in its own child process (``python bench_memory.py --child ...``):
``reludoctor.scan`` of a small CNN (random init, seeded) over the data, on CPU, batch 32. The
child's peak resident set size is read by the parent with ``os.wait4`` (``ru_maxrss`` of that
child, nothing else). Rows:

  baseline          the child imports torch, builds the model and scans 32 samples (fixed cost)
  npy (memmap)      --data file.npy: memory-mapped, one batch copied at a time
  images (PNG)      --data folder: decoded one batch at a time
  control           the same .npy read fully into memory first (np.load without mmap): its
                    peak grows with N, which shows the measurement can see data growth

``--zoo MODELS`` (torchvision names, random init) measures instead, per model and in child
processes of their own, the peak RSS of plain eager inference over N samples and of
``reludoctor.scan`` over the same N samples: the scan's extra memory, next to the number of units
it observes (its state is O(units)) and the size of the largest activation of one batch (what
O(activations) would cost).

The verdict compares, per streamed source, peak(4N) - peak(N) with the 3N samples' size. It
always exits 0: it reports, it gates nothing (the test suite makes no memory assertions).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
BATCH = 32


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Peak RSS of reludoctor scans over N and 4N samples.")
    parser.add_argument("--n", type=int, default=1000, help="N (default 1000); 4N is scanned too")
    parser.add_argument("--image-size", type=int, default=64, help="samples are 3 x S x S (default 64)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads in each child (default 2)")
    parser.add_argument("--keep", metavar="DIR", help="write the data into DIR and keep it")
    parser.add_argument("--zoo", metavar="MODELS", help="comma-separated torchvision models: scan vs plain")
    parser.add_argument("--child", nargs=3, metavar=("KIND", "DATA", "SIZE"), help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def build_model(size: int):  # noqa: ANN201
    import torch
    from torch import nn

    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


def child(kind: str, data: str, size: int, threads: int) -> None:
    """One scan in this process; prints a JSON line (the parent measures the memory)."""
    import numpy as np
    import torch

    import reludoctor

    torch.set_num_threads(threads)
    if kind.startswith("zoo-"):
        _zoo_child(kind, data, threads)
        return
    model = build_model(size)
    started = time.perf_counter()
    if kind == "baseline":
        source = np.zeros((BATCH, 3, size, size), dtype=np.float32)
    elif kind == "control":
        source = np.load(data)  # the whole file in memory, on purpose
    else:
        source = data
    report = reludoctor.scan(model, source, device="cpu", batch_size=BATCH)
    print(json.dumps({"samples": report.calibration.samples, "seconds": time.perf_counter() - started,
                      "dead": report.summary.dead_units}))


def _zoo_child(kind: str, data: str, threads: int) -> None:
    """``zoo-plain:MODEL`` (eager inference over the .npy, batch by batch) or ``zoo-scan:MODEL``."""
    import numpy as np
    import torch
    import torchvision

    import reludoctor

    torch.manual_seed(0)
    name = kind.split(":", 1)[1]
    model = torchvision.models.get_model(name, weights=None).eval()
    samples = np.load(data, mmap_mode="r")
    started = time.perf_counter()
    if kind.startswith("zoo-plain"):
        sizes = [0]  # bytes of the largest ReLU output seen

        def measure(_module: Any, _inputs: Any, out: Any) -> None:
            sizes[0] = max(sizes[0], out.numel() * out.element_size())

        hooks = [m.register_forward_hook(measure) for m in model.modules() if isinstance(m, torch.nn.ReLU)]
        with torch.inference_mode():
            for start in range(0, len(samples), BATCH):
                model(torch.from_numpy(np.array(samples[start:start + BATCH])))
        for hook in hooks:
            hook.remove()
        largest = sizes[0]
        print(json.dumps({"samples": len(samples), "seconds": time.perf_counter() - started,
                          "largest_activation": largest}))
        return
    report = reludoctor.scan(model, data, device="cpu", batch_size=BATCH)
    print(json.dumps({"samples": report.calibration.samples, "seconds": time.perf_counter() - started,
                      "units": report.summary.units, "sites": len(report.sites)}))


def _zoo(args: argparse.Namespace) -> int:
    """Peak RSS of plain inference and of a scan, per model, over the same N samples."""
    n, size = args.n, args.image_size
    with tempfile.TemporaryDirectory(prefix="reludoctor-mem-") as tmp:
        data = Path(tmp) / "n.npy"
        _write_npy(data, n, size, seed=1)
        print("reludoctor memory benchmark, zoo: peak RSS (os.wait4 ru_maxrss) of plain eager "
              "inference and of a scan, each in its own child process")
        print(f"machine: {platform.platform()}, python {platform.python_version()}, {os.cpu_count()} "
              f"CPUs; torch threads per child: {args.threads}; N = {n} samples 3x{size}x{size}, "
              f"batch {BATCH}, CPU, random init")
        print()
        print("| model | sites | units | plain MiB | scan MiB | scan - plain MiB | largest ReLU output of a batch MiB |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in [m for m in args.zoo.split(",") if m]:
            plain, plain_info = _run_child(f"zoo-plain:{name}", data, size, args.threads)
            scan, scan_info = _run_child(f"zoo-scan:{name}", data, size, args.threads)
            assert plain_info["samples"] == scan_info["samples"] == n
            print(f"| {name} | {scan_info['sites']} | {scan_info['units']} | {plain:.0f} | {scan:.0f} | "
                  f"{scan - plain:+.0f} | {plain_info['largest_activation'] / MiB:.1f} |", flush=True)
    return 0


def _write_npy(path: Path, count: int, size: int, seed: int) -> None:
    import numpy as np

    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(count, 3, size, size))
    for start in range(0, count, 256):
        stop = min(start + 256, count)
        out[start:stop] = rng.standard_normal((stop - start, 3, size, size), dtype=np.float32)
    out.flush()
    del out


def _write_images(small: Path, large: Path, count: int, size: int, seed: int) -> None:
    """4 x count PNGs under ``large`` (10 class folders); ``small`` links to the first count."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = []
    for index in range(4 * count):
        folder = large / f"class{index * 10 // (4 * count)}"
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{index:06d}.png"
        pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(path, compress_level=1)
        files.append(path)
    for path in files[:count]:
        target = small / path.relative_to(large)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, target)
        except OSError:
            target.write_bytes(path.read_bytes())


def _run_child(kind: str, data: Path | str, size: int, threads: int) -> tuple[float, dict]:
    """(peak RSS in MiB, the child's JSON), read with os.wait4 on exactly that child."""
    command = [sys.executable, os.path.abspath(__file__), "--threads", str(threads),
               "--child", kind, str(data), str(size)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [str(Path(__file__).resolve().parents[1]), os.environ.get("PYTHONPATH")])))
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, env=env)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode(), err.read().decode()
    if process.returncode != 0:
        tail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        raise SystemExit(f"child {kind} {data} failed (exit {process.returncode}): {tail}")
    # ru_maxrss: KiB on Linux, bytes on macOS.
    peak = usage.ru_maxrss / MiB if sys.platform == "darwin" else usage.ru_maxrss / 1024
    return peak, json.loads(stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        kind, data, size = args.child
        child(kind, data, int(size), args.threads)
        return 0
    if not hasattr(os, "wait4"):
        print("this benchmark needs os.wait4 (Linux, macOS)")
        return 0
    if args.zoo:
        return _zoo(args)
    n, size = args.n, args.image_size
    sample_bytes = 3 * size * size * 4
    with tempfile.TemporaryDirectory(prefix="reludoctor-mem-") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        _write_npy(root / "n.npy", n, size, seed=1)
        _write_npy(root / "4n.npy", 4 * n, size, seed=2)
        _write_images(root / "images_n", root / "images_4n", n, size, seed=3)
        png_bytes = sum(p.stat().st_size for p in (root / "images_4n").rglob("*.png"))
        print("reludoctor memory benchmark: peak RSS of one scan per child process "
              "(os.wait4 ru_maxrss)")
        print(f"machine: {platform.platform()}, python {platform.python_version()}, "
              f"{os.cpu_count()} CPUs; torch threads per child: {args.threads}")
        print(f"model: small CNN (2 conv + ReLU, random init), CPU, batch {BATCH}; samples float32 "
              f"3x{size}x{size} ({sample_bytes / 1024:.0f} KiB each); N = {n}")
        print(f"data written in {time.perf_counter() - started:.1f} s: .npy {n * sample_bytes / MiB:.0f} "
              f"and {4 * n * sample_bytes / MiB:.0f} MiB, PNG folder of 4N {png_bytes / MiB:.0f} MiB")
        print()
        rows = []
        baseline, _ = _run_child("baseline", "-", size, args.threads)
        print(f"{'source':<22}{'samples':>9}{'data MiB':>10}{'peak RSS MiB':>14}{'scan s':>8}")
        print(f"{'baseline (32 samples)':<22}{BATCH:>9}{'':>10}{baseline:>14.1f}{'':>8}")
        for label, kind, small, large in (
                ("npy (memmap)", "stream", root / "n.npy", root / "4n.npy"),
                ("images (PNG)", "stream", root / "images_n", root / "images_4n"),
                ("control: npy in RAM", "control", root / "n.npy", root / "4n.npy")):
            peaks = []
            for count, data in ((n, small), (4 * n, large)):
                peak, info = _run_child(kind, data, size, args.threads)
                assert info["samples"] == count, (info, count)
                peaks.append(peak)
                print(f"{label:<22}{count:>9}{count * sample_bytes / MiB:>10.0f}{peak:>14.1f}"
                      f"{info['seconds']:>8.1f}")
            rows.append((label, peaks))
        print()
        grown = 3 * n * sample_bytes / MiB
        for label, (small_peak, large_peak) in rows:
            print(f"{label:<22} peak 4N / N = {large_peak / small_peak:.2f}, "
                  f"4N - N = {large_peak - small_peak:+.1f} MiB (the 3N extra samples are {grown:.0f} MiB)")
        streamed = [r for r in rows if not r[0].startswith("control")]
        worst = max(large - small for _, (small, large) in streamed)
        met = worst < 0.1 * grown
        print(f"verdict: streamed sources' peak RSS grows by at most {max(worst, 0.0):.1f} MiB from N to 4N "
              f"(target: under 10% of the {grown:.0f} MiB of extra data): {'met' if met else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
