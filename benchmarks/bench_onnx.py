"""Cost of reludoctor's ONNX observation against plain onnxruntime, side by side.

torchvision resnet18 (random init) exported to ONNX (``dynamo=False``, dynamic batch) at
3x112x112, batch 32, CPU execution provider, every graph optimisation on in both sessions.
One process, interleaved repetitions: for k = 1..K batches, time (a) the plain session
running k batches and (b) reludoctor's instrumented session running k batches *including*
folding its per-unit outputs into the statistics. The marginal time per sample is the slope
over k of the best time of the repetitions (so session creation and other fixed costs drop
out, and so do most disturbances from other processes), divided by the batch size. Prints
both, their ratio (also from the medians, and per-run paired ratios), and the end-to-end
``reludoctor.scan`` time for scale.

    python benchmarks/bench_onnx.py [--reps 9] [--batches 4] [--threads 1]

Target (issue 6): ratio <= 1.15. Informational, not a gate: timings on a
shared machine are noisy, so the script also prints the spread over repetitions.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _export(folder: str) -> str:
    import torch
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    path = os.path.join(folder, "resnet18.onnx")
    example = torch.randn(2, 3, 112, 112)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), path, dynamo=False, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def _slope(ks: list[int], seconds: list[float]) -> float:
    k = np.asarray(ks, np.float64)
    t = np.asarray(seconds, np.float64)
    return float(np.polyfit(k, t, 1)[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=9, help="interleaved repetitions")
    parser.add_argument("--batches", type=int, default=4, help="largest number of batches K")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1,
                        help="onnxruntime intra-op threads for both sessions (0: its default, one per "
                             "core). With 1 (the default) onnxruntime runs in the calling thread and the "
                             "script times CPU time (time.thread_time), which other processes on a busy "
                             "machine barely disturb; wall-clock ratios with several threads on a shared "
                             "machine swing widely")
    args = parser.parse_args()

    import onnxruntime

    import reludoctor
    from reludoctor.backends.onnx.loader import load_path
    from reludoctor.backends.onnx.observer import OnnxInstrument
    from reludoctor.data.calibration import load_calibration

    batch = args.batch_size
    ks = list(range(1, args.batches + 1))
    rng = np.random.default_rng(0)
    data = rng.standard_normal((batch * args.batches, 3, 112, 112), dtype=np.float32)

    with tempfile.TemporaryDirectory() as folder:
        path = _export(folder)
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        if args.threads:
            options.intra_op_num_threads = args.threads
        plain = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        loaded = load_path(Path(path))
        calibrations = {k: load_calibration(data[: k * batch], loaded.inputs) for k in ks}
        import torch

        instrument = OnnxInstrument(loaded, calibrations[1], device=torch.device("cpu"),
                                    batch_size=batch, unit_axis=None, warn=lambda message: None,
                                    threads=args.threads or None)
        clock = time.thread_time if args.threads == 1 else time.perf_counter

        def run_plain(k: int) -> None:
            for start in range(0, k * batch, batch):
                plain.run(None, {"input": data[start:start + batch]})

        def run_reludoctor(k: int) -> None:
            instrument.run(calibrations[k])

        run_plain(1)  # warm up both (first runs allocate)
        run_reludoctor(1)
        times: dict[str, dict[int, list[float]]] = {"plain": {k: [] for k in ks},
                                                    "reludoctor": {k: [] for k in ks}}
        for rep in range(args.reps):
            for k in (ks if rep % 2 == 0 else ks[::-1]):
                order = [("plain", run_plain), ("reludoctor", run_reludoctor)]
                if (rep + k) % 2:
                    order.reverse()
                for name, action in order:
                    start = clock()
                    action(k)
                    times[name][k].append(clock() - start)

        medians = {name: [statistics.median(times[name][k]) for k in ks] for name in times}
        minima = {name: [min(times[name][k]) for k in ks] for name in times}
        per_sample = {name: _slope(ks, minima[name]) / batch for name in times}
        per_sample_median = {name: _slope(ks, medians[name]) / batch for name in times}
        ratio = per_sample["reludoctor"] / per_sample["plain"]
        ratio_median = per_sample_median["reludoctor"] / per_sample_median["plain"]
        paired = [r / p for k in ks for r, p in zip(times["reludoctor"][k], times["plain"][k])]

        _print(args, batch, ks, minima, per_sample, ratio, ratio_median, paired)
        start = time.perf_counter()
        report = reludoctor.scan(path, data, batch_size=batch, device="cpu", on_warning=lambda m: None)
        print(f"  end-to-end reludoctor.scan of {len(data)} samples: {time.perf_counter() - start:.2f} s "
              f"({report.summary.sites} sites, {report.summary.dead_units} dead units)")


def _print(args: argparse.Namespace, batch: int, ks: list[int], minima: dict, per_sample: dict,
           ratio: float, ratio_median: float, paired: list[float]) -> None:
    import onnxruntime

    print(f"onnxruntime {onnxruntime.__version__}, CPU execution provider, "
          f"threads: {args.threads or 'default'} ({os.cpu_count()} CPUs), "
          f"{'CPU time' if args.threads == 1 else 'wall time'}, resnet18 3x112x112, batch {batch}, "
          f"k = 1..{args.batches} batches, {args.reps} interleaved repetitions")
    print("  best of the repetitions for each k (the least disturbed by other processes):")
    for name in ("plain", "reludoctor"):
        cells = "  ".join(f"k={k}: {m * 1000:7.1f} ms" for k, m in zip(ks, minima[name]))
        print(f"  {name:11s} {cells}   marginal {per_sample[name] * 1000:.3f} ms/sample")
    print(f"  ratio (marginal, slope over k): {ratio:.3f}   target <= 1.15")
    print(f"  the same from the median of the repetitions: {ratio_median:.3f}; paired per-run "
          f"ratios: median {statistics.median(paired):.3f}, min {min(paired):.3f}, max {max(paired):.3f}",
          flush=True)


if __name__ == "__main__":
    main()
