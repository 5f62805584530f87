"""Marginal cost of a reludoctor scan against plain inference, side by side in one process.

    python benchmarks/bench_scan.py                    # resnet18, batch 32x3x112x112, CPU
    python benchmarks/bench_scan.py --model mobilenet_v2 --threads 1

Three variants run the same batches:

  plain eager      the nn.Module under torch.inference_mode
  plain exported   torch.export(...).module() without observers (the graph a scan runs)
  scan             that graph with reludoctor's observers inserted (instrument_graph_module),
                   driven by reludoctor.core.batches.run over an in-memory Calibration: the scan's
                   own batch loop, per-batch copy and finiteness check included

They alternate batch by batch (the runner's progress callback runs the two plain models on
the batch the scan just saw), so all three share whatever else the machine is doing. Runs of
N and 2N batches repeat, their order alternating. Within a repeat, the slope (time of the 2N
run - time of the N run) / (N x batch) is a variant's marginal time per sample, free of
per-run costs; the scan/plain ratio of slopes is taken within each repeat (so the machine's
drift cancels) and the median over repeats is the verdict. The same ratio per single batch
(the first of each run left out), median over batches, is a cross-check. Fixed costs (model build,
torch.export, .module(), instrumentation, warm-up) are timed apart, and reludoctor.scan() is
timed end to end once. The benchmark always exits 0: it says whether the target was met, it
gates nothing.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable

TARGET = 1.10


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Time a reludoctor scan against plain inference (marginal cost per sample).")
    parser.add_argument("--model", default="resnet18",
                        help="a torchvision.models name, random init (default resnet18)")
    parser.add_argument("--num-classes", type=int, default=1000)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--batches", type=int, default=4,
                        help="N: runs of N and 2N batches are timed (default 4)")
    parser.add_argument("--repeats", type=int, default=8,
                        help="repetitions of the N and 2N runs; medians are taken (default 8)")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up batches per variant")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads (default: the CPUs this process may use)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--target", type=float, default=TARGET,
                        help=f"marginal ratio scan/plain to meet (default {TARGET})")
    parser.add_argument("--no-end-to-end", action="store_true",
                        help="skip timing reludoctor.scan() end to end")
    parser.add_argument("--no-sites", action="store_true",
                        help="skip the per-site observer cost breakdown")
    args = parser.parse_args(argv)
    for name in ("batch_size", "image_size", "batches", "repeats", "num_classes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.warmup < 0 or (args.threads is not None and args.threads < 1):
        parser.error("--warmup must be >= 0 and --threads >= 1")
    return args


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _cpus() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


class OtherLoad:
    """CPU time used by other processes over an interval, from /proc/stat (Linux only)."""

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="ascii") as handle:
                fields = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        busy = sum(fields[:8]) - fields[3] - fields[4]  # all but idle and iowait
        own = os.times()
        return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.perf_counter()

    def cpus(self) -> float | None:
        """Average number of CPUs kept busy by others since construction."""
        end = self._sample()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        others = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, others / (end[2] - self.start[2]))


class Clock:
    """perf_counter, synchronising the device first so queued GPU work is counted."""

    def __init__(self, device: Any):
        import torch

        self.sync: Callable[[], None] = (
            torch.cuda.synchronize if device.type == "cuda" else (lambda: None))

    def __call__(self) -> float:
        self.sync()
        return time.perf_counter()


def _median_ratio(values: list[float], bases: list[float]) -> float:
    ratios = [value / base for value, base in zip(values, bases) if base > 0]
    return statistics.median(ratios) if ratios else float("nan")


def _observed_samples(sites: list) -> int:
    return sum(observer.state().samples for _, observer in sites if observer.observed)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import torch
    import torchvision

    import reludoctor
    from reludoctor.backends.torch.export import instrument_graph_module
    from reludoctor.backends.torch.loader import from_object
    from reludoctor.backends.torch.scan import export_for_scan as _export
    from reludoctor.core.batches import run
    from reludoctor.core.observers import BatchContext, TorchUnitObserver
    from reludoctor.data.calibration import load_calibration

    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: CUDA is not available here; nothing timed")
        return 0
    torch.set_num_threads(args.threads or _cpus())
    device = torch.device(args.device)
    clock = Clock(device)
    bs, n = args.batch_size, args.batches
    shape = (3, args.image_size, args.image_size)

    print(f"machine: {_cpu_model()}, {os.cpu_count()} logical CPUs ({_cpus()} usable), "
          f"torch threads {torch.get_num_threads()}, torch {torch.__version__}, torchvision "
          f"{torchvision.__version__}, python {platform.python_version()}, reludoctor "
          f"{reludoctor.__version__}")
    if device.type == "cuda":
        print(f"device: {torch.cuda.get_device_name(device)}")
    print(f"workload: {args.model} (random init, {args.num_classes} classes), batch "
          f"{bs}x{'x'.join(map(str, shape))}, {device}; runs of {n} and {2 * n} batches, "
          f"{args.repeats} repeats, variants alternating batch by batch")

    # -- fixed costs -----------------------------------------------------------------------
    fixed: list[tuple[str, float]] = []
    torch.manual_seed(args.seed)
    start = time.perf_counter()
    model = torchvision.models.get_model(args.model, weights=None, num_classes=args.num_classes)
    model = model.eval().to(device)
    fixed.append(("build model", time.perf_counter() - start))

    data = torch.randn((2 * n * bs, *shape), generator=torch.Generator().manual_seed(args.seed))
    inputs = from_object(model).inputs
    runs = {count: load_calibration(data[: count * bs], inputs) for count in (n, 2 * n)}

    start = time.perf_counter()
    program = _export(model, runs[n], device)  # as reludoctor.scan exports an nn.Module
    fixed.append(("torch.export", time.perf_counter() - start))
    start = time.perf_counter()
    exported = program.module().to(device)
    instrumented = program.module().to(device)
    fixed.append(("ExportedProgram.module(), twice", time.perf_counter() - start))
    context = BatchContext()
    start = time.perf_counter()
    sites = instrument_graph_module(instrumented, context)
    fixed.append((f"instrument_graph_module ({len(sites)} sites)", time.perf_counter() - start))
    inserted = sum(isinstance(node.target, TorchUnitObserver) for node in instrumented.graph.nodes)
    if not sites or inserted != len(sites):
        print(f"error: {inserted} observer nodes in the graph for {len(sites)} sites: "
              "nothing to time")
        return 0

    # -- timed runs -------------------------------------------------------------------------
    # runner.run calls progress after every scan batch: there the two plain models run the
    # same batch, in alternating order, so the variants interleave batch by batch.
    batches = [data[i * bs:(i + 1) * bs] for i in range(2 * n)]
    plain = {"plain eager": model, "plain exported": exported}
    names = [*plain, "scan"]

    def timed_run(count: int) -> dict[str, list[float]]:
        times: dict[str, list[float]] = {name: [] for name in names}
        mark = [clock()]

        def after_scan_batch(done: int, total: Any) -> None:
            times["scan"].append(clock() - mark[0])
            index = done // bs - 1
            for name in (list(plain) if index % 2 == 0 else list(plain)[::-1]):
                begin = clock()
                plain[name](batches[index].to(device, non_blocking=True))
                times[name].append(clock() - begin)
            mark[0] = clock()

        seen = run(instrumented, runs[count], batch_size=bs, device=device, batch=context,
                   progress=after_scan_batch)
        assert seen == count * bs, (seen, count * bs)
        return times

    if args.warmup:
        start = clock()
        run(instrumented, load_calibration(data[: args.warmup * bs], inputs), batch_size=bs,
            device=device, batch=context)
        fixed.append((f"scan warm-up ({args.warmup} batches)", clock() - start))
        with torch.inference_mode():
            for forward in plain.values():
                for batch in batches[: args.warmup]:
                    forward(batch.to(device))

    observed_before = _observed_samples(sites)
    load = OtherLoad()
    totals: dict[str, dict[int, list[float]]] = {name: {n: [], 2 * n: []} for name in names}
    per_batch: dict[str, list[float]] = {name: [] for name in names}
    timed_start = time.perf_counter()
    with torch.inference_mode():
        for repeat in range(args.repeats):
            for count in ((n, 2 * n) if repeat % 2 == 0 else (2 * n, n)):
                times = timed_run(count)
                for name in names:
                    totals[name][count].append(sum(times[name]))
                    per_batch[name].extend(times[name][1:])  # the first pays for the run's start
    timed_seconds = time.perf_counter() - timed_start
    others = load.cpus()
    observed = _observed_samples(sites) - observed_before
    expected = len(sites) * 3 * n * bs * args.repeats
    if observed != expected:  # the observers must really have run on every timed batch
        print(f"error: the observers saw {observed} samples, {expected} expected: "
              "the scan timings are not of reludoctor's observers")
        return 0

    end_to_end = None
    if not args.no_end_to_end:
        start = time.perf_counter()
        report = reludoctor.scan(model, data[: n * bs], batch_size=bs, device=args.device,
                                 on_warning=lambda message: None)
        end_to_end = time.perf_counter() - start
        assert report.calibration.samples == n * bs

    # -- results ----------------------------------------------------------------------------
    # All variants ran interleaved, so each ratio is taken within one repeat (slopes) or one
    # batch (single batches), then the median over repeats / batches: the machine's drift
    # over minutes scales both sides of a ratio alike and cancels.
    slopes = {name: [(long - short) / (n * bs)
                     for short, long in zip(totals[name][n], totals[name][2 * n])]
              for name in names}
    marginal = {name: statistics.median(values) for name, values in slopes.items()}
    slope_ratio = {name: _median_ratio(slopes[name], slopes["plain eager"]) for name in names}
    single = {name: statistics.median(values) / bs for name, values in per_batch.items()}
    single_ratio = {name: _median_ratio(per_batch[name], per_batch["plain eager"])
                    for name in names}

    print()
    print("fixed costs")
    for label, seconds in fixed:
        print(f"  {label:<40} {seconds:7.3f} s")
    print()
    print(f"marginal time per sample: slope between runs of {n} and {2 * n} batches, and single "
          f"batches (first of each run left out); medians, ratios paired within a repeat / batch")
    print(f"  {'variant':<16} {'slope ms/sample':>16} {'ratio':>7} "
          f"{'batch ms/sample':>16} {'ratio':>7}")
    for name in names:
        print(f"  {name:<16} {marginal[name] * 1e3:16.3f} {slope_ratio[name]:7.3f} "
              f"{single[name] * 1e3:16.3f} {single_ratio[name]:7.3f}")
    print(f"  observers verified: {len(sites)} sites each saw all {3 * n * bs * args.repeats} "
          f"timed samples; timed section {timed_seconds:.1f} s")
    if others is None:
        print("  load from other processes: unknown (no /proc/stat)")
    elif others > 0.1:
        print(f"  WARNING: other processes kept {others:.2f} CPUs busy during the timed section: "
              "the figures are noisy, rerun on a quiet machine")
    else:
        print(f"  load from other processes during the timed section: {others:.2f} CPUs")
    if not abs(slope_ratio["scan"] - single_ratio["scan"]) <= 0.05:
        print("  WARNING: the slope and single-batch ratios disagree by more than 0.05: noisy; "
              "raise --repeats or --batches")
    base = marginal["plain eager"]

    if end_to_end is not None:
        print()
        print(f"end to end: reludoctor.scan(model, {n * bs} samples, batch_size={bs}, "
              f"device={args.device!r}) {end_to_end:.2f} s, of which "
              f"{marginal['scan'] * n * bs:.2f} s marginal and "
              f"{end_to_end - marginal['scan'] * n * bs:.2f} s fixed (export, instrument, report); "
              f"plain eager {base * n * bs:.2f} s")

    if not args.no_sites:
        _site_breakdown(sites, instrumented, batches[0].to(device), clock,
                        single["plain eager"] * bs)

    ratio = slope_ratio["scan"]
    met = ratio <= args.target
    print()
    print(f"marginal ratio scan/plain: {ratio:.2f} (target <= {args.target:.2f}): "
          f"{'met' if met else 'NOT met'}")
    return 0


def _site_breakdown(sites: list, graph_module: Any, batch: Any, clock: Clock,
                    plain_batch_seconds: float, repeats: int = 7, top: int = 5) -> None:
    """Observer cost per site, each observer replayed on a copy of the activation it saw.

    The best of a few replays: the cost of the observer's own work, less the machine's noise.
    """
    import torch

    from reludoctor.core.observers import BatchContext, TorchUnitObserver

    captured: list[tuple[Any, Any]] = []
    for spec, observer in sites:
        observer._update = lambda x, spec=spec: captured.append((spec, x.clone()))
    try:
        with torch.inference_mode():
            graph_module(batch)
    finally:
        for _, observer in sites:
            del observer._update  # back to the class's method
    costs = []
    with torch.inference_mode():
        for spec, activation in captured:
            fresh = TorchUnitObserver(spec.unit_axis, spec.lower, spec.upper, BatchContext())
            fresh(activation)
            times = []
            for _ in range(repeats):
                start = clock()
                fresh(activation)
                times.append(clock() - start)
            costs.append((min(times), spec, tuple(activation.shape)))
    total = sum(cost for cost, _, _ in costs)
    print()
    print(f"observers replayed site by site (best of {repeats}): {total * 1e3:.1f} ms per batch, "
          f"{total / plain_batch_seconds:.1%} of a median plain eager batch; the {top} dearest:")
    for cost, spec, shape in sorted(costs, key=lambda item: -item[0])[:top]:
        size = "x".join(map(str, shape))
        print(f"  {spec.name:<32} {spec.op:<9} {size:<18} {cost * 1e3:7.2f} ms")


if __name__ == "__main__":
    sys.exit(main())
