"""The cost of a reludoctor scan over plain inference on a zoo of models, PyTorch and ONNX.

    python benchmarks/bench_zoo.py                             # whole zoo, 1 and 2 threads
    python benchmarks/bench_zoo.py --threads 2 --batches 3 --out zoo.json
    python benchmarks/bench_zoo.py --quick                     # smoke run: 2 models, few batches
    python benchmarks/bench_zoo.py --models resnet18,vit_relu --peers

Zoo (random init, seed 0, input 3x112x112, batch 32, CPU): torchvision resnet18,
squeezenet1_1, mobilenet_v3_small, shufflenet_v2_x1_0, regnet_x_400mf, resnet50, and
``vit_relu``, a ViT-style model built here (16x16 patches, 4 pre-norm encoder layers of dim 192,
hand-written attention, MLPs with nn.ReLU).

Per model and thread count, in one process, on the same batches:

  PyTorch  plain eager (nn.Module under inference_mode) vs the reludoctor scan (the
           torch.export graph with reludoctor's observers, driven by reludoctor.core.batches.run
           from a numpy array, as bench_scan.py / bench_peers.py do)
  ONNX     plain onnxruntime InferenceSession (every optimisation on) vs the reludoctor ONNX
           scan (OnnxInstrument.run), the model exported once with torch.onnx.export
           (dynamo=False, dynamic batch) to a temporary folder
  peers    (--peers) hooks on every ReLU module + .cpu().numpy() + numpy max/count/sum

Steady state: one warm-up batch of each variant, then runs of N batches (--batches), the
variants alternating run by run; a variant's time per batch is the median single batch of a
run with the first batch left out (it pays for the run's start). The scan/plain ratio is taken
within each repeat; --repeats (default 3) repeats give the median ratio and its range.

End to end (--no-e2e skips it): wall time of whole commands in fresh subprocesses, medians of
--repeats: ``python -c "import torch"``, ``reludoctor scan mlp.pt2 --data x.npy`` and
``reludoctor scan mlp.onnx --data x.npy`` for a tiny MLP and 20 samples.

Prints a table and writes JSON (--out). Always exits 0: it reports, it gates nothing.
Targets (issue 13): PyTorch scan <= 1.15x plain eager, ONNX scan <= 1.25x plain onnxruntime,
resnet18 <= 1.10x; end to end .pt2 <= 1.5x and .onnx <= 0.8x ``import torch``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_peers import _cpu_model  # noqa: E402 - the same machine description

ZOO = ("resnet18", "squeezenet1_1", "mobilenet_v3_small", "shufflenet_v2_x1_0",
       "regnet_x_400mf", "resnet50", "vit_relu")
QUICK = ("resnet18", "mobilenet_v3_small")
TARGET_TORCH, TARGET_ONNX, TARGET_RESNET18 = 1.15, 1.25, 1.10
TARGET_E2E_PT2, TARGET_E2E_ONNX = 1.5, 0.8


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(ZOO),
                        help=f"comma-separated (default: {','.join(ZOO)})")
    parser.add_argument("--threads", default="1,2", help="comma-separated thread counts (default 1,2)")
    parser.add_argument("--batches", type=int, default=4, help="batches per timed run (default 4)")
    parser.add_argument("--repeats", type=int, default=3, help="repeats; median and range (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=112)
    parser.add_argument("--only", default="all", choices=("all", "torch", "onnx"))
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"),
                        help="cuda: the zoo on the GPU (gpu_check.sh); ONNX through its CUDA provider")
    parser.add_argument("--peers", action="store_true", help="also time hooks + numpy (PyTorch)")
    parser.add_argument("--no-e2e", action="store_true", help="skip the end-to-end commands")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke run: {','.join(QUICK)}, 3 batches, 2 repeats, 2 threads")
    parser.add_argument("--out", default=None, help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    if args.quick:
        args.models, args.batches, args.repeats = ",".join(QUICK), 3, 2
        if args.threads == "1,2":
            args.threads = "2"
    args.models = [m for m in args.models.split(",") if m]
    args.threads = [int(t) for t in str(args.threads).split(",") if t]
    if args.batches < 2 or args.repeats < 1 or not args.threads or min(args.threads) < 1:
        parser.error("--batches >= 2, --repeats >= 1, --threads >= 1")
    return args


def _load() -> float | None:
    with contextlib.suppress(OSError, AttributeError):
        return os.getloadavg()[0]
    return None


def _vit_relu(image: int = 112, num_classes: int = 1000) -> Any:
    """A small ViT: 16x16 patches, 4 pre-norm encoder layers, ReLU MLPs, plain-op attention."""
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, dim: int, heads: int, hidden: int):
            super().__init__()
            self.heads = heads
            self.norm1 = nn.LayerNorm(dim)
            self.qkv = nn.Linear(dim, 3 * dim)
            self.proj = nn.Linear(dim, dim)
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Linear(hidden, dim))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, n, d = x.shape
            q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads) \
                .permute(2, 0, 3, 1, 4)
            attn = torch.softmax(q @ k.transpose(-2, -1) * (d // self.heads) ** -0.5, dim=-1)
            x = x + self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))
            return x + self.mlp(self.norm2(x))

    class ViT(nn.Module):
        def __init__(self, image: int = 112, patch: int = 16, dim: int = 192, depth: int = 4,
                     heads: int = 3, hidden: int = 768):
            super().__init__()
            self.embed = nn.Conv2d(3, dim, patch, patch)
            self.pos = nn.Parameter(torch.randn(1, (image // patch) ** 2, dim) * 0.02)
            self.blocks = nn.Sequential(*[Block(dim, heads, hidden) for _ in range(depth)])
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, num_classes)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
            return self.head(self.norm(self.blocks(x)).mean(dim=1))

    return ViT(image)


def _build(name: str, image: int = 112) -> Any:
    import torch
    import torchvision

    torch.manual_seed(0)
    if name == "vit_relu":
        return _vit_relu(image).eval()
    return torchvision.models.get_model(name, weights=None).eval()


def _clock(device: str) -> Callable[[], float]:
    """perf_counter, after the GPU has finished what was queued (a CUDA batch is asynchronous)."""
    if device != "cuda":
        return time.perf_counter
    import torch

    def synced() -> float:
        torch.cuda.synchronize()
        return time.perf_counter()

    return synced


def _alternate(variants: dict[str, Callable[[Callable[[], None]], None]], repeats: int,
               clock: Callable[[], float]) -> list[dict[str, float]]:
    """Per repeat, each variant's median single batch (first of the run left out)."""
    out = []
    names = list(variants)
    for repeat in range(repeats):
        shift = repeat % len(names)
        medians = {}
        for name in names[shift:] + names[:shift]:
            marks = [clock()]
            variants[name](lambda marks=marks: marks.append(clock()))
            singles = [b - a for a, b in zip(marks[1:-1], marks[2:])]
            medians[name] = statistics.median(singles)
        out.append(medians)
    return out


def _summarise(per_repeat: list[dict[str, float]], base: str) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for name in per_repeat[0]:
        ratios = [r[name] / r[base] for r in per_repeat]
        result[name] = {"batch_ms": statistics.median(r[name] for r in per_repeat) * 1e3,
                        "ratio": statistics.median(ratios), "ratio_min": min(ratios),
                        "ratio_max": max(ratios)}
    return result


def _torch_case(model: Any, data: Any, args: argparse.Namespace) -> dict[str, Any]:
    import numpy as np
    import torch

    from reludoctor.backends.torch.export import instrument_graph_module
    from reludoctor.backends.torch.loader import from_object
    from reludoctor.backends.torch.scan import export_for_scan as _export
    from reludoctor.core.batches import run
    from reludoctor.core.observers import BatchContext
    from reludoctor.data.calibration import load_calibration

    bs, n = args.batch_size, args.batches
    device = torch.device(args.device)
    model = model.to(device)
    inputs = from_object(model).inputs
    calibration = load_calibration(data[: n * bs], inputs)
    start = time.perf_counter()
    graph_module = _export(model, calibration, device).module()
    context = BatchContext()
    sites = instrument_graph_module(graph_module, context)
    fixed = time.perf_counter() - start
    host = [torch.from_numpy(data[i * bs:(i + 1) * bs]) for i in range(n)]

    def plain(tick: Callable[[], None]) -> None:
        with torch.inference_mode():
            for batch in host:
                model(batch.to(device))  # from host memory, as the scan's batches come
                tick()

    def scan(tick: Callable[[], None]) -> None:
        with torch.inference_mode():
            seen = run(graph_module, calibration, batch_size=bs, device=device, batch=context,
                       progress=lambda done, total: tick())
        assert seen == n * bs

    variants = {"plain": plain, "scan": scan}
    if args.peers:
        stats: dict[tuple[int, int], list[Any]] = {}
        calls = [0]  # a ReLU module may run several times per forward (resnet's Bottleneck)

        def hook(module: Any, _: Any, output: Any) -> None:
            a = output.detach().cpu().numpy()
            axes = tuple(d for d in range(a.ndim) if d != (1 if a.ndim == 4 else a.ndim - 1))
            new = [a.max(axis=axes), (a > 0).sum(axis=axes), a.sum(axis=axes)]
            key = (id(module), calls[0])
            calls[0] += 1
            old = stats.get(key)
            stats[key] = new if old is None else [
                np.maximum(old[0], new[0]), old[1] + new[1], old[2] + new[2]]

        hooked = copy.deepcopy(model)  # hooks on a copy: plain stays plain
        handles = [m.register_forward_hook(hook) for m in hooked.modules()
                   if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6, torch.nn.Hardtanh))]

        def hooks(tick: Callable[[], None]) -> None:
            with torch.inference_mode():
                for batch in host:
                    calls[0] = 0
                    hooked(batch.to(device))
                    tick()

        variants = {"plain": plain, "scan": scan, "hooks+numpy": hooks}
    for variant in variants.values():  # warm-up
        variant(lambda: None)
    before = sum(o.state().samples for _, o in sites if o.observed)
    per_repeat = _alternate(variants, args.repeats, _clock(args.device))
    observed = sum(o.state().samples for _, o in sites if o.observed) - before
    if args.peers:
        for h in handles:
            h.remove()
    result = _summarise(per_repeat, "plain")
    result["sites"] = len(sites)
    result["fixed_s"] = fixed
    result["observers_ok"] = observed == len(sites) * n * bs * args.repeats
    return result


def _onnx_case(path: str, data: Any, threads: int, args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime
    import torch

    from reludoctor.backends.onnx.loader import load_path
    from reludoctor.backends.onnx.observer import OnnxInstrument
    from reludoctor.data.calibration import load_calibration

    bs, n = args.batch_size, args.batches
    opts = onnxruntime.SessionOptions()
    opts.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.log_severity_level = 3
    providers = ["CPUExecutionProvider"]
    if args.device == "cuda":
        if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
            raise RuntimeError("onnxruntime has no CUDA execution provider (install onnxruntime-gpu)")
        providers.insert(0, "CUDAExecutionProvider")
    session = onnxruntime.InferenceSession(path, opts, providers=providers)
    start = time.perf_counter()
    loaded = load_path(Path(path))
    calibration = load_calibration(data[: n * bs], loaded.inputs)
    instrument = OnnxInstrument(loaded, calibration, device=torch.device(args.device), batch_size=bs,
                                unit_axis=None, warn=lambda message: None, threads=threads)
    fixed = time.perf_counter() - start
    batches = [data[i * bs:(i + 1) * bs] for i in range(n)]

    def plain(tick: Callable[[], None]) -> None:
        for batch in batches:
            session.run(None, {"input": batch})
            tick()

    def scan(tick: Callable[[], None]) -> None:
        assert instrument.run(calibration, lambda done, total: tick()) == n * bs

    variants = {"plain": plain, "scan": scan}
    for variant in variants.values():
        variant(lambda: None)
    result = _summarise(_alternate(variants, args.repeats, _clock(args.device)), "plain")
    result["sites"] = len(instrument.observers)
    result["fixed_s"] = fixed
    return result


def _export_onnx(model: Any, data: Any, folder: str, name: str) -> str:
    import torch

    path = os.path.join(folder, f"{name}.onnx")
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.from_numpy(data[:2]),), path, dynamo=False,
                          input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}})
    return path


def _end_to_end(folder: str, repeats: int) -> dict[str, Any]:
    """Whole commands in fresh subprocesses: a tiny MLP, 20 samples."""
    import numpy as np
    import torch
    from torch import nn

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                        nn.Linear(32, 4)).eval()
    x = torch.randn(20, 16)
    pt2, onnx_path, npy = (os.path.join(folder, f) for f in ("mlp.pt2", "mlp.onnx", "x.npy"))
    np.save(npy, x.numpy())
    batch = torch.export.Dim("batch", min=1)
    torch.export.save(torch.export.export(mlp, (x,), dynamic_shapes=({0: batch},)), pt2)
    with warnings.catch_warnings(), contextlib.redirect_stdout(sys.stderr):
        warnings.simplefilter("ignore")
        torch.onnx.export(mlp, (x,), onnx_path, dynamo=False, input_names=["input"],
                          output_names=["out"], dynamic_axes={"input": {0: "N"}, "out": {0: "N"}})
    script = Path(sys.executable).parent / "reludoctor"
    cli = [str(script)] if script.exists() else [sys.executable, "-m", "reludoctor"]
    commands = {"python -c 'import torch'": [sys.executable, "-c", "import torch"],
                "reludoctor scan mlp.pt2 (20 samples)": [*cli, "scan", pt2, "--data", npy],
                "reludoctor scan mlp.onnx (20 samples)": [*cli, "scan", onnx_path, "--data", npy]}
    times: dict[str, list[float]] = {name: [] for name in commands}
    codes: dict[str, int] = {}
    for command in commands.values():  # warm the file cache
        subprocess.run(command, capture_output=True, check=False)
    for _ in range(repeats):
        for name, command in commands.items():
            start = time.perf_counter()
            done = subprocess.run(command, capture_output=True, check=False)
            times[name].append(time.perf_counter() - start)
            codes[name] = done.returncode
    base = statistics.median(times["python -c 'import torch'"])
    return {name: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v),
                   "vs_import_torch": statistics.median(v) / base, "exit_code": codes[name]}
            for name, v in times.items()}


def _fmt(cell: dict[str, Any] | None) -> str:
    if not cell:
        return "-"
    return f"{cell['ratio']:.2f}x ({cell['ratio_min']:.2f}-{cell['ratio_max']:.2f})"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    import numpy as np
    import onnxruntime
    import torch
    import torchvision

    import reludoctor

    bs, n = args.batch_size, args.batches
    data = np.random.default_rng(0).standard_normal(
        (n * bs, 3, args.image_size, args.image_size), dtype=np.float32)
    machine = {"cpu": _cpu_model(), "nproc": os.cpu_count(), "python": platform.python_version(),
               "torch": torch.__version__, "torchvision": torchvision.__version__,
               "onnxruntime": onnxruntime.__version__, "reludoctor": reludoctor.__version__,
               "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
               "load_average_start": _load()}
    print(f"machine: {machine['cpu']}, {machine['nproc']} CPUs, load {machine['load_average_start']}; "
          f"torch {torch.__version__}, torchvision {torchvision.__version__}, onnxruntime "
          f"{onnxruntime.__version__}, reludoctor {reludoctor.__version__}")
    print(f"workload: batch {bs}x3x{args.image_size}x{args.image_size}, {args.device.upper()}, runs of "
          f"{n} batches (first left out), {args.repeats} repeats, threads {args.threads}", flush=True)
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="reludoctor-zoo-") as folder:
        for name in args.models:
            model = _build(name, args.image_size)
            path = None
            export_error = None
            if args.only in ("all", "onnx"):
                try:
                    path = _export_onnx(model, data, folder, name)
                except Exception as exc:  # noqa: BLE001 - the PyTorch half still runs
                    export_error = f"torch.onnx.export: {type(exc).__name__}: {exc}"[:200]
            for threads in args.threads:
                torch.set_num_threads(threads)
                row: dict[str, Any] = {"model": name, "threads": threads}
                start = time.perf_counter()
                try:
                    if args.only in ("all", "torch"):
                        row["torch"] = _torch_case(model, data, args)
                    if path:
                        row["onnx"] = _onnx_case(path, data, threads, args)
                except Exception as exc:  # noqa: BLE001 - report and go on with the zoo
                    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                if export_error:
                    row["error"] = export_error
                row["seconds"] = time.perf_counter() - start
                row["load_average"] = _load()
                rows.append(row)
                t, o = row.get("torch"), row.get("onnx")
                print(f"  {name:<20} {threads}t  pytorch scan/plain {_fmt(t and t['scan'])}  "
                      f"onnx scan/plain {_fmt(o and o['scan'])}"
                      + (f"  hooks+numpy {_fmt(t['hooks+numpy'])}" if t and 'hooks+numpy' in t else "")
                      + (f"  ERROR {row['error']}" if 'error' in row else "")
                      + f"  [{row['seconds']:.0f} s, load {row['load_average']}]", flush=True)
        e2e = None if args.no_e2e else _end_to_end(folder, max(args.repeats, 3))

    print()
    print("steady state, scan time per batch / plain time per batch: median of the repeats (range)")
    head = "| model | threads | PyTorch scan/plain | ONNX scan/plain | plain eager ms/batch | plain ORT ms/batch |"
    if args.peers:
        head += " hooks+numpy/plain |"
    print(head)
    print("|" + "---|" * (head.count("|") - 1))
    verdicts = []
    for row in rows:
        t, o = row.get("torch"), row.get("onnx")
        line = (f"| {row['model']} | {row['threads']} | {_fmt(t and t['scan'])} | "
                f"{_fmt(o and o['scan'])} | {t['plain']['batch_ms']:.0f} | " if t else
                f"| {row['model']} | {row['threads']} | - | {_fmt(o and o['scan'])} | - | ")
        line += f"{o['plain']['batch_ms']:.0f} |" if o else "- |"
        if args.peers:
            line += f" {_fmt(t.get('hooks+numpy')) if t else '-'} |"
        print(line)
        target_t = TARGET_RESNET18 if row["model"] == "resnet18" else TARGET_TORCH
        if t:
            verdicts.append(t["scan"]["ratio"] <= target_t)
        if o:
            verdicts.append(o["scan"]["ratio"] <= TARGET_ONNX)
        if "error" in row:
            print(f"  {row['model']}: {row['error']}")
        if t and not t["observers_ok"]:
            print(f"  {row['model']}: WARNING the observers did not see every timed sample")
    print(f"targets (PyTorch <= {TARGET_TORCH}x, resnet18 <= {TARGET_RESNET18}x, ONNX <= "
          f"{TARGET_ONNX}x): {sum(verdicts)} of {len(verdicts)} cells met")
    wide = [r["model"] for r in rows for k in ("torch", "onnx") if r.get(k)
            and r[k]["scan"]["ratio_max"] - r[k]["scan"]["ratio_min"] > 0.10]
    if wide:
        print(f"noisy (range of the repeats > 0.10): {', '.join(sorted(set(wide)))}")
    if e2e:
        print()
        print("end to end (fresh subprocesses, median of the repeats):")
        for name, cell in e2e.items():
            print(f"  {name:<40} {cell['median_s']:6.2f} s ({cell['min_s']:.2f}-{cell['max_s']:.2f})"
                  f"  {cell['vs_import_torch']:.2f}x import torch  exit {cell['exit_code']}")
    machine["load_average_end"] = _load()
    if args.out:
        with open(args.out, "w", encoding="utf-8") as handle:
            json.dump({"machine": machine, "args": {k: v for k, v in vars(args).items()},
                       "rows": rows, "end_to_end": e2e,
                       "targets": {"torch": TARGET_TORCH, "onnx": TARGET_ONNX,
                                   "resnet18_torch": TARGET_RESNET18,
                                   "e2e_pt2_vs_import_torch": TARGET_E2E_PT2,
                                   "e2e_onnx_vs_import_torch": TARGET_E2E_ONNX}},
                      handle, indent=2)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
