"""What the in-depth diagnosis costs: a whole scan with each option against plain inference.

    python benchmarks/bench_diagnosis.py                       # resnet18, mobilenet_v3_small
    python benchmarks/bench_diagnosis.py --models resnet18 --samples 128 --repeats 5 --out d.json

Per model (torchvision, random init, seed 0; random 3x112x112 inputs, batch 32, CPU), in one
process, the variants alternating repeat by repeat on the same data:

  plain          the eager nn.Module over every batch under inference_mode
  scan           reludoctor.scan of the model's ExportedProgram (exported once, before timing)
  --dead-points  the per-sample pass
  --slices       10 slices (sample index mod 10): the per-sample pass and the per-slice sums
  --input-range  imagenet: interval bounds through the graph (docs/diagnosis.md)
  --ablate-top 0 every site's candidates zeroed together: 1 + S forwards per batch
  --ablate       and the top 2 per site one at a time (a backward pass for the scores)

Each variant's time is the whole call (instrumenting, the passes, the report); the ratio to
plain is taken within each repeat, the median over --repeats is printed with its range. The
ablation's forwards per batch come from the report. Prints a table and writes JSON (--out).
Always exits 0: it reports, it gates nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS: dict[str, dict[str, Any]] = {
    "scan": {},
    "--dead-points": {"dead_points": True},
    "--slices": {"slices": None},  # filled with the ids per run
    "--input-range": {"input_range": "imagenet"},
    "--ablate-top 0": {"ablate": True, "ablate_top": 0},
    "--ablate": {"ablate": True, "ablate_top": 2},
}


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="resnet18,mobilenet_v3_small")
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", default=None)
    return parser.parse_args(argv)


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = call()
    return time.perf_counter() - start, result


def _case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch
    import torchvision

    import reludoctor

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)().eval()
    x = torch.randn(args.samples, 3, 112, 112)
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("batch")},))
    data = x.numpy()
    slices = np.arange(args.samples) % 10

    def plain() -> None:
        with torch.inference_mode():
            for start in range(0, args.samples, 32):
                model(x[start:start + 32])

    def scan(options: dict[str, Any]) -> Any:
        settings = {**options, **({"slices": slices} if "slices" in options else {})}
        return reludoctor.scan(program, data, device="cpu", batch_size=32, on_warning=lambda m: None, **settings)

    plain()  # warm-up: every variant once (first-call costs: graph copies, autograd)
    for options in VARIANTS.values():
        scan(options)
    ratios: dict[str, list[float]] = {variant: [] for variant in VARIANTS}
    seconds: dict[str, list[float]] = {variant: [] for variant in ["plain", *VARIANTS]}
    forwards: dict[str, int] = {}
    for _ in range(args.repeats):
        base, _ = _timed(plain)
        seconds["plain"].append(base)
        for variant, options in VARIANTS.items():
            took, report = _timed(lambda options=options: scan(options))
            seconds[variant].append(took)
            ratios[variant].append(took / base)
            if report.ablation is not None:
                forwards[variant] = report.ablation.forwards_per_batch
    return {"model": name, "samples": args.samples, "threads": args.threads,
            "seconds": {k: statistics.median(v) for k, v in seconds.items()},
            "ratio": {k: {"median": statistics.median(v), "min": min(v), "max": max(v)} for k, v in ratios.items()},
            "ablation_forwards_per_batch": forwards}


def main(argv: list[str] | None = None) -> int:
    import torch

    args = _parse(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore")
    results = [_case(name, args) for name in args.models.split(",")]
    header = f"{'model':<20}{'plain s':>9}" + "".join(f"{v:>21}" for v in VARIANTS)
    print(f"whole scan / plain inference, {args.samples} samples, batch 32, {args.threads} threads, "
          f"median of {args.repeats} (range)")
    print(header)
    for result in results:
        cells = "".join(f"{r['median']:.2f}x ({r['min']:.2f}-{r['max']:.2f})".rjust(21)
                        for r in (result["ratio"][v] for v in VARIANTS))
        print(f"{result['model']:<20}{result['seconds']['plain']:>9.2f}{cells}")
        print(f"{'':<29}seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in result["seconds"].items()))
        print(f"{'':<29}ablation forwards per batch: {result['ablation_forwards_per_batch']}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
