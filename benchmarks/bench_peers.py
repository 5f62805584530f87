"""reludoctor against its peers, side by side in one run: what a scan costs over plain inference,
and over what a user would write instead.

    python benchmarks/bench_peers.py                       # resnet18, batch 32x3x112x112, CPU
    python benchmarks/bench_peers.py --threads 1 --clock cpu   # steadier on a busy machine
    python benchmarks/bench_peers.py --device cuda --model resnet50 --batch-size 256 --image-size 224
    python benchmarks/bench_peers.py --dtype bf16 --only torch

PyTorch (torchvision model, random init, eval mode):

  plain eager        the nn.Module under torch.inference_mode (and autocast with --dtype)
  reludoctor scan    the torch.export graph with reludoctor's observers, driven by
                     reludoctor.core.batches.run from a numpy array (its per-batch copy, finiteness
                     check, prefetch thread and device copy included)
  hooks + numpy      forward hooks on every ReLU module copying the output to the host
                     (.detach().cpu().numpy()) and reducing per unit with numpy (max, positive
                     count, sum): what one writes by hand

ONNX (the same model through torch.onnx.export, dynamo=False, dynamic batch):

  plain onnxruntime  an InferenceSession, every graph optimisation on
  reludoctor scan    reludoctor's instrumented session (per-unit reductions in the graph) and
                     the host-side accumulation of their outputs
  ORT calibrator     onnxruntime.quantization.calibrate.create_calibrator(..., ["Relu"],
                     CalibrationMethod.MinMax, per_channel) collecting the Relu inputs and
                     outputs (its session keeps the optimisations off, as create_calibrator
                     sets them; only its thread count is set like the others')

Method: every variant runs the same batches in runs of N and 2N batches; the runs alternate
between variants (order rotated every repeat), so a busy machine disturbs all of them alike.
The marginal time per sample is the median single batch (the first of each run left out: it
pays for the run's start) divided by the batch size; the slope between the N and 2N runs, paired
within each repeat, is printed beside it as a cross-check. Fixed costs (model build, export,
instrumentation, session creation, read-back) are timed apart. Always exits 0: it reports
whether the targets were met, it gates nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TARGET_TORCH = 1.10
TARGET_ONNX = 1.15


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="resnet18", help="a torchvision.models name (random init)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batches", type=int, default=3, help="N: runs of N and 2N batches (default 3)")
    parser.add_argument("--repeats", type=int, default=4, help="repeats of every run (default 4)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                        help="PyTorch variants: autocast dtype (ONNX runs as exported)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch and onnxruntime intra-op threads (default: the usable CPUs)")
    parser.add_argument("--clock", default="wall", choices=("wall", "cpu"),
                        help="wall: perf_counter (CUDA synchronised); cpu: process CPU time, "
                             "steadier on a busy machine with --threads 1 (CPU device only)")
    parser.add_argument("--only", default="all", choices=("all", "torch", "onnx"))
    parser.add_argument("--no-peers", action="store_true",
                        help="only plain inference and reludoctor (e.g. a quick GPU check)")
    parser.add_argument("--sync-check", action="store_true",
                        help="CUDA: run one extra scan with torch.cuda.set_sync_debug_mode('error') "
                             "to prove the scan's batch loop never waits for the GPU")
    parser.add_argument("--target-torch", type=float, default=TARGET_TORCH)
    parser.add_argument("--target-onnx", type=float, default=TARGET_ONNX)
    args = parser.parse_args(argv)
    for name in ("batch_size", "image_size", "batches", "repeats"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.clock == "cpu" and args.device == "cuda":
        parser.error("--clock cpu measures host CPU time: use --clock wall with --device cuda")
    return args


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def _load_average() -> str:
    with contextlib.suppress(OSError, AttributeError):
        return "%.2f %.2f %.2f" % os.getloadavg()
    return "unknown"


class Clock:
    def __init__(self, kind: str, device: Any):
        import torch

        self.kind = kind
        self.sync: Callable[[], None] = (torch.cuda.synchronize if device.type == "cuda"
                                         else (lambda: None))

    def __call__(self) -> float:
        self.sync()
        return time.process_time() if self.kind == "cpu" else time.perf_counter()


class Variant:
    """One way of running k batches; ``run(k, tick)`` calls ``tick()`` after every batch."""

    def __init__(self, name: str, run: Callable[[int, Callable[[], None]], None],
                 check: Callable[[], str | None] = lambda: None):
        self.name = name
        self.run = run
        self.check = check
        self.batches: list[float] = []  # single batches, the first of each run left out
        self.runs: dict[int, list[float]] = {}


def _measure(variants: list[Variant], n: int, repeats: int, clock: Clock) -> None:
    for repeat in range(repeats):
        counts = (n, 2 * n) if repeat % 2 == 0 else (2 * n, n)
        shift = repeat % len(variants)
        for count in counts:
            for variant in variants[shift:] + variants[:shift]:
                marks = [clock()]
                variant.run(count, lambda marks=marks: marks.append(clock()))
                end = clock()
                if len(marks) != count + 1:
                    raise RuntimeError(f"{variant.name}: {len(marks) - 1} batch ticks, {count} expected")
                variant.runs.setdefault(count, []).append(end - marks[0])
                variant.batches.extend(b - a for a, b in zip(marks[1:-1], marks[2:]))


def _table(title: str, variants: list[Variant], n: int, bs: int, target: float) -> float:
    base = variants[0]
    plain_batch = statistics.median(base.batches)
    slopes = {v.name: [(long - short) / (n * bs) for short, long in zip(v.runs[n], v.runs[2 * n])]
              for v in variants}
    print()
    print(f"{title}: marginal time per sample (median single batch / batch size; slope of runs of "
          f"{n} vs {2 * n} batches as a cross-check)")
    print(f"  {'variant':<20} {'ms/sample':>10} {'samples/s':>10} {'ratio':>7}   "
          f"{'slope ms/sample':>15} {'ratio':>7}")
    ratios = {}
    for v in variants:
        per = statistics.median(v.batches)
        ratio = per / plain_batch
        paired = [s / p for s, p in zip(slopes[v.name], slopes[base.name]) if p > 0]
        slope_ratio = statistics.median(paired) if paired else float("nan")
        ratios[v.name] = ratio
        print(f"  {v.name:<20} {per / bs * 1e3:10.3f} {bs / per:10.1f} {ratio:7.3f}   "
              f"{statistics.median(slopes[v.name]) * 1e3:15.3f} {slope_ratio:7.3f}")
    scan = ratios["reludoctor scan"]
    peers = [v.name for v in variants[2:]]
    faster = all(ratios[p] > scan for p in peers)
    verdict = f"reludoctor scan / {base.name}: {scan:.3f} (target <= {target:.2f}): " \
              f"{'met' if scan <= target else 'NOT met'}"
    if peers:
        verdict += f"; faster than {' and '.join(peers)}: {'yes' if faster else 'NO'}"
    print(f"  {verdict}")
    return scan


def _torch_section(args: argparse.Namespace, clock: Clock, data: Any) -> list[tuple[str, float]]:
    import numpy as np
    import torch
    import torchvision

    from reludoctor.backends.torch.export import instrument_graph_module
    from reludoctor.backends.torch.loader import from_object
    from reludoctor.backends.torch.scan import export_for_scan as _export
    from reludoctor.core.batches import resolve_dtype, run
    from reludoctor.core.observers import BatchContext
    from reludoctor.data.calibration import load_calibration

    device = torch.device(args.device)
    bs, n = args.batch_size, args.batches
    autocast = resolve_dtype(args.dtype)
    precision = (lambda: torch.autocast(device.type, dtype=autocast)) if autocast is not None \
        else contextlib.nullcontext
    fixed: list[tuple[str, float]] = []

    start = time.perf_counter()
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval().to(device)
    fixed.append(("build model", time.perf_counter() - start))
    inputs = from_object(model).inputs
    calibrations = {k: load_calibration(data[: k * bs], inputs) for k in {1, n, 2 * n}}
    start = time.perf_counter()
    program = _export(model, calibrations[n], device)
    graph_module = program.module().to(device)
    fixed.append(("torch.export + .module()", time.perf_counter() - start))
    context = BatchContext()
    start = time.perf_counter()
    sites = instrument_graph_module(graph_module, context)
    fixed.append((f"instrument ({len(sites)} sites)", time.perf_counter() - start))

    host = [torch.from_numpy(data[i * bs:(i + 1) * bs]) for i in range(2 * n)]
    if device.type == "cuda":  # what a plain loop is given: host batches
        host = [t.pin_memory() for t in host]

    def plain(k: int, tick: Callable[[], None]) -> None:
        with torch.inference_mode(), precision():
            for batch in host[:k]:
                model(batch.to(device, non_blocking=True))
                tick()

    def scan(k: int, tick: Callable[[], None]) -> None:
        seen = run(graph_module, calibrations[k], batch_size=bs, device=device, batch=context,
                   progress=lambda done, total: tick(), dtype=autocast)
        assert seen == k * bs

    stats: dict[tuple[int, int], list[Any]] = {}
    calls = [0]

    def hook(module: Any, args_: Any, output: Any) -> None:
        a = output.detach().float().cpu().numpy()
        axes = tuple(d for d in range(a.ndim) if d != 1)
        key = (id(module), calls[0])
        calls[0] += 1
        unit_max, positive, total = a.max(axis=axes), (a > 0).sum(axis=axes), a.sum(axis=axes)
        if key in stats:
            old = stats[key]
            stats[key] = [np.maximum(old[0], unit_max), old[1] + positive, old[2] + total]
        else:
            stats[key] = [unit_max, positive, total]

    hooked = torchvision.models.get_model(args.model, weights=None).eval().to(device)
    hooked.load_state_dict(model.state_dict())
    start = time.perf_counter()
    handles = [m.register_forward_hook(hook) for m in hooked.modules()
               if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Hardtanh))]
    fixed.append((f"hooks + numpy: register ({len(handles)} modules)", time.perf_counter() - start))

    def hooks(k: int, tick: Callable[[], None]) -> None:
        with torch.inference_mode(), precision():
            for batch in host[:k]:
                calls[0] = 0
                hooked(batch.to(device, non_blocking=True))
                tick()

    variants = [Variant("plain eager", plain), Variant("reludoctor scan", scan)]
    if not args.no_peers:
        variants.append(Variant("hooks + numpy", hooks))
    start = clock()
    for variant in variants:  # warm-up: first runs allocate and pick kernels
        variant.run(1, lambda: None)
    fixed.append(("warm-up, one batch of each variant", clock() - start))
    before = sum(o.state().samples for _, o in sites if o.observed)
    _measure(variants, n, args.repeats, clock)
    observed = sum(o.state().samples for _, o in sites if o.observed) - before
    expected = len(sites) * 3 * n * bs * args.repeats
    if observed != expected:
        print(f"error: the observers saw {observed} samples, {expected} expected")
    start = time.perf_counter()
    for _, observer in sites:
        observer.state()
    fixed.append(("reludoctor: read statistics back (once per scan)", time.perf_counter() - start))
    for handle in handles:
        handle.remove()
    scan_ratio = _table(f"PyTorch {args.model}, {args.dtype}, {device}", variants, n, bs,
                        args.target_torch)

    if args.sync_check and device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            scan(n, lambda: None)
            print("  sync check: a scan ran with torch.cuda.set_sync_debug_mode('error'): "
                  "no host synchronisation in the batch loop")
        except RuntimeError as exc:
            print(f"  sync check FAILED: {str(exc).splitlines()[0]}")
        finally:
            torch.cuda.set_sync_debug_mode("default")
    _print_fixed("PyTorch fixed costs", fixed)
    return [("pytorch", scan_ratio)]


def _onnx_section(args: argparse.Namespace, clock: Clock, data: Any) -> list[tuple[str, float]]:
    import onnxruntime
    import torch
    import torchvision

    from reludoctor.backends.onnx.loader import load_path
    from reludoctor.backends.onnx.observer import OnnxInstrument
    from reludoctor.backends.onnx.session import cuda_provider_available
    from reludoctor.data.calibration import load_calibration

    device = torch.device(args.device)
    if device.type == "cuda" and not cuda_provider_available():
        print("\nONNX: this onnxruntime has no CUDA execution provider (install onnxruntime-gpu): "
              "skipped")
        return []
    providers = (["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda"
                 else ["CPUExecutionProvider"])
    bs, n = args.batch_size, args.batches
    threads = args.threads or _cpus()
    fixed: list[tuple[str, float]] = []
    folder = tempfile.mkdtemp(prefix="reludoctor-bench-")
    path = os.path.join(folder, "model.onnx")
    start = time.perf_counter()
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    example = torch.from_numpy(data[:2])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), path, dynamo=False, input_names=["input"],
                          output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    fixed.append(("torch.onnx.export", time.perf_counter() - start))

    def options(level: Any) -> Any:
        opts = onnxruntime.SessionOptions()
        opts.graph_optimization_level = level
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        return opts

    start = time.perf_counter()
    session = onnxruntime.InferenceSession(
        path, options(onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL), providers=providers)
    fixed.append(("plain: InferenceSession", time.perf_counter() - start))
    start = time.perf_counter()
    loaded = load_path(Path(path))
    calibrations = {k: load_calibration(data[: k * bs], loaded.inputs) for k in {1, n, 2 * n}}
    instrument = OnnxInstrument(loaded, calibrations[n], device=device, batch_size=bs,
                                unit_axis=None, warn=lambda message: None, threads=threads)
    fixed.append((f"reludoctor: load, augment, session ({len(instrument.observers)} sites)",
                  time.perf_counter() - start))
    batches = [data[i * bs:(i + 1) * bs] for i in range(2 * n)]

    def plain(k: int, tick: Callable[[], None]) -> None:
        for batch in batches[:k]:
            session.run(None, {"input": batch})
            tick()

    def scan(k: int, tick: Callable[[], None]) -> None:
        assert instrument.run(calibrations[k], lambda done, total: tick()) == k * bs

    variants = [Variant("plain onnxruntime", plain), Variant("reludoctor scan", scan)]
    if not args.no_peers:
        from onnxruntime.quantization.calibrate import CalibrationDataReader, CalibrationMethod, create_calibrator

        start = time.perf_counter()
        calibrator = create_calibrator(path, ["Relu"],
                                       augmented_model_path=os.path.join(folder, "augmented.onnx"),
                                       calibrate_method=CalibrationMethod.MinMax,
                                       providers=providers, extra_options={"per_channel": True})
        # as create_inference_session makes it (optimisations off), with the threads set
        calibrator.infer_session = onnxruntime.InferenceSession(
            calibrator.augmented_model_path,
            options(onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL), providers=providers)
        tensors = len(calibrator.select_tensors_to_calibrate(calibrator.model)[0])
        fixed.append((f"ORT calibrator: create_calibrator ({tensors} tensors)",
                      time.perf_counter() - start))

        class Reader(CalibrationDataReader):
            def __init__(self, k: int, tick: Callable[[], None]):
                self.items = iter(batches[:k])
                self.tick = tick
                self.started = False

            def get_next(self) -> dict | None:
                if self.started:
                    self.tick()  # the previous batch is done
                self.started = True
                batch = next(self.items, None)
                return None if batch is None else {"input": batch}

        def calibrate(k: int, tick: Callable[[], None]) -> None:
            # each run calibrates afresh: its per-channel ranges do not merge across
            # collect_data calls (merge_range compares arrays with min())
            calibrator.calibrate_tensors_range = None
            calibrator.collect_data(Reader(k, tick))
            assert calibrator.calibrate_tensors_range

        variants.append(Variant("ORT calibrator", calibrate))
    start = clock()
    for variant in variants:
        variant.run(1, lambda: None)
    fixed.append(("warm-up, one batch of each variant", clock() - start))
    _measure(variants, n, args.repeats, clock)
    start = time.perf_counter()
    for observer in instrument.observers:
        observer.state()
    fixed.append(("reludoctor: statistics to UnitCounts (once per scan)", time.perf_counter() - start))
    scan_ratio = _table(f"ONNX {args.model}, onnxruntime {onnxruntime.__version__} "
                        f"{providers[0]}, {threads} threads", variants, n, bs, args.target_onnx)
    _print_fixed("ONNX fixed costs", fixed)
    return [("onnx", scan_ratio)]


def _print_fixed(title: str, fixed: list[tuple[str, float]]) -> None:
    print(f"  {title} (apart from the marginal cost):")
    for label, seconds in fixed:
        print(f"    {label:<52} {seconds:8.3f} s")


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import numpy as np
    import torch
    import torchvision

    import reludoctor

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here; nothing timed")
        return 0
    torch.set_num_threads(args.threads or _cpus())
    device = torch.device(args.device)
    clock = Clock(args.clock, device)
    shape = (3, args.image_size, args.image_size)
    data = np.random.default_rng(0).standard_normal(
        (2 * args.batches * args.batch_size, *shape), dtype=np.float32)
    print(f"machine: {_cpu_model()}, {os.cpu_count()} logical CPUs ({_cpus()} usable), load "
          f"average {_load_average()}; torch {torch.__version__} ({torch.get_num_threads()} "
          f"threads), torchvision {torchvision.__version__}, python {platform.python_version()}, "
          f"reludoctor {reludoctor.__version__}")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    print(f"workload: {args.model} (random init), batch {args.batch_size}x{'x'.join(map(str, shape))}, "
          f"{device}; runs of {args.batches} and {2 * args.batches} batches x {args.repeats} "
          f"repeats, variants alternating run by run; clock: "
          f"{'process CPU time' if args.clock == 'cpu' else 'wall'}")
    verdicts = []
    if args.only in ("all", "torch"):
        verdicts += _torch_section(args, clock, data)
    if args.only in ("all", "onnx"):
        verdicts += _onnx_section(args, clock, data)
    print()
    targets = {"pytorch": args.target_torch, "onnx": args.target_onnx}
    print("summary: " + "; ".join(
        f"{name} scan/plain {ratio:.3f} (target <= {targets[name]:.2f}: "
        f"{'met' if ratio <= targets[name] else 'NOT met'})" for name, ratio in verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
