"""Tokens per second of a reludoctor scan against plain forward passes of a language model.

    python benchmarks/bench_lm.py                               # opt-125m shape, fp32 and bf16
    python benchmarks/bench_lm.py --config opt-1.3b --dtype bf16 --batches 3
    python benchmarks/bench_lm.py --offload 200MiB               # accelerate disk offload run

Random-init OPT models (Hugging Face ``transformers``, nothing downloaded) with the shapes of
the released checkpoints (``--config``), random token ids, batch x sequence tokens per batch.

Steady state, as ``bench_zoo.py`` measures it: one warm-up batch of each variant, then runs of
``--batches`` batches alternating plain / scan, the median single batch of each run (the first
left out), ``--repeats`` repeats, median ratio and range. Plain: ``model(input_ids,
attention_mask)`` under inference_mode. Scan: reludoctor's instrumented model driven by
``reludoctor.core.batches.run``: the torch.export program (``--method export``) and the
TorchDispatchMode route a checkpoint folder's scan takes (``dispatch``).

``--offload MAXMEM``: the model saved with ``save_pretrained`` and loaded back with
``device_map="auto"``, ``max_memory={"cpu": MAXMEM}`` and an offload folder (the layers that do
not fit are read from disk for each forward, by accelerate's hooks); plain forwards vs
``reludoctor.scan`` (dispatch: the model stays where accelerate placed it), each in its own
child process so that its peak RSS (``os.wait4``) is its own. Prints a table; --out writes
JSON. Gates nothing. Target (issue 15): scan <= 1.15x plain.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench_zoo import _alternate, _summarise  # noqa: E402 - the same steady-state method

CONFIGS = {  # the released OPT checkpoints' shapes (facebook/opt-*/config.json)
    "opt-tiny": dict(hidden_size=64, ffn_dim=256, num_hidden_layers=2, num_attention_heads=4,
                     word_embed_proj_dim=64, vocab_size=1000),
    "opt-125m": dict(hidden_size=768, ffn_dim=3072, num_hidden_layers=12, num_attention_heads=12,
                     word_embed_proj_dim=768, vocab_size=50272),
    "opt-350m": dict(hidden_size=1024, ffn_dim=4096, num_hidden_layers=24, num_attention_heads=16,
                     word_embed_proj_dim=512, vocab_size=50272, do_layer_norm_before=False),
    "opt-1.3b": dict(hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32,
                     word_embed_proj_dim=2048, vocab_size=50272),
    "opt-2.7b": dict(hidden_size=2560, ffn_dim=10240, num_hidden_layers=32, num_attention_heads=32,
                     word_embed_proj_dim=2560, vocab_size=50272),
    "opt-6.7b": dict(hidden_size=4096, ffn_dim=16384, num_hidden_layers=32, num_attention_heads=32,
                     word_embed_proj_dim=4096, vocab_size=50272),
}
TARGET = 1.15


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="opt-125m", choices=sorted(CONFIGS))
    parser.add_argument("--dtype", default="fp32,bf16", help="comma-separated: fp32, bf16")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq", type=int, default=128, help="tokens per sequence (default 128)")
    parser.add_argument("--batches", type=int, default=4, help="batches per timed run (default 4)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--method", default="export,dispatch",
                        help="comma-separated: export, dispatch (checkpoint folders scan with dispatch)")
    parser.add_argument("--offload", default=None, metavar="MAXMEM",
                        help="also run with accelerate offload under max_memory={'cpu': MAXMEM}")
    parser.add_argument("--no-steady", action="store_true", help="only the --offload run")
    parser.add_argument("--out", default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)  # one offload variant
    return parser.parse_args(argv)


def _model(name: str, dtype: str) -> Any:
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(max_position_embeddings=2048, use_cache=False, **CONFIGS[name])
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16 if dtype == "bf16" else torch.float32)  # built in place:
    try:  # a bf16 model never exists in float32 (opt-6.7b: 13 GiB, not 27)
        return OPTForCausalLM(config).eval()
    finally:
        torch.set_default_dtype(default)


def _tokens(args: argparse.Namespace, vocab: int) -> dict:
    import numpy as np

    ids = np.random.default_rng(0).integers(2, vocab, (args.batch_size * args.batches, args.seq))
    return {"input_ids": ids.astype(np.int64), "attention_mask": np.ones_like(ids, dtype=np.int64)}


def _steady(model: Any, data: dict, args: argparse.Namespace, method: str) -> dict[str, Any]:
    """plain vs scan per batch, in one process on the same batches; ``method``: export (the
    program torch.export captures) or dispatch (what a checkpoint folder's scan uses)."""
    import torch

    from reludoctor.backends.torch.loader import from_object
    from reludoctor.backends.torch.scan import export_for_scan
    from reludoctor.core.batches import run
    from reludoctor.core.observers import BatchContext
    from reludoctor.data.calibration import load_calibration

    bs, n, device = args.batch_size, args.batches, torch.device("cpu")
    calibration = load_calibration(data, from_object(model).inputs)
    context = BatchContext()
    start = time.perf_counter()
    if method == "export":
        from reludoctor.backends.torch.export import instrument_graph_module

        target = export_for_scan(model, calibration, device).module()
        sites = instrument_graph_module(target, context)
        enter, before = None, None
    else:
        from reludoctor.backends.torch.dispatch import DispatchInstrument

        instrument = DispatchInstrument(model, context)
        target, enter, before = instrument.forward, instrument.active, instrument.start_forward
        sites = None
    fixed = time.perf_counter() - start
    batches = [{key: torch.from_numpy(value[i * bs:(i + 1) * bs]) for key, value in data.items()}
               for i in range(n)]

    def plain(tick: Callable[[], None]) -> None:
        with torch.inference_mode():
            for batch in batches:
                model(**batch)
                tick()

    def scan(tick: Callable[[], None]) -> None:
        with torch.inference_mode(), (enter() if enter else contextlib.nullcontext()):
            run(target, calibration, batch_size=bs, device=device, batch=context,
                before_forward=before, progress=lambda done, total: tick())

    variants = {"plain": plain, "scan": scan}
    for variant in variants.values():
        variant(lambda: None)
    result = _summarise(_alternate(variants, args.repeats, time.perf_counter), "plain")
    tokens = bs * args.seq
    for name in variants:
        result[name]["tokens_per_s"] = tokens / (result[name]["batch_ms"] / 1e3)
    result["method"], result["fixed_s"] = method, fixed
    result["sites"] = len(sites) if sites is not None else len(instrument.sites())
    return result


def _offload_child(args: argparse.Namespace) -> None:
    """One offload variant (plain | scan) in this process; prints one JSON line."""
    import torch
    from transformers import OPTForCausalLM

    variant, folder = args.child.split(":", 1)
    model = OPTForCausalLM.from_pretrained(folder, device_map="auto", max_memory={"cpu": args.offload},
                                           offload_folder=os.path.join(folder, "offload"))
    devices = sorted(set(map(str, model.hf_device_map.values())))
    data = _tokens(args, model.config.vocab_size)
    start = time.perf_counter()
    if variant == "plain":
        with torch.inference_mode():
            for i in range(args.batches):
                model(**{k: torch.from_numpy(v[i * args.batch_size:(i + 1) * args.batch_size])
                         for k, v in data.items()})
    else:
        import reludoctor

        report = reludoctor.scan(model, data, batch_size=args.batch_size)
        assert report.model.method == "dispatch"
    seconds = time.perf_counter() - start
    print(json.dumps({"variant": variant, "seconds": seconds, "devices": devices,
                      "tokens_per_s": args.batches * args.batch_size * args.seq / seconds}))


def _offload(args: argparse.Namespace) -> dict[str, Any]:
    import subprocess

    with tempfile.TemporaryDirectory(prefix="reludoctor-lm-") as folder:
        model = _model(args.config, "fp32")
        size = sum(p.numel() * p.element_size() for p in model.parameters()) / 2 ** 20
        model.save_pretrained(folder)
        del model
        out: dict[str, Any] = {"model_mib": size, "max_memory": args.offload}
        for variant in ("plain", "scan"):
            command = [sys.executable, __file__, "--config", args.config, "--batch-size", str(args.batch_size),
                       "--seq", str(args.seq), "--batches", str(args.batches), "--offload", args.offload,
                       "--child", f"{variant}:{folder}"]
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            stdout = process.stdout.read()
            _, status, usage = os.wait4(process.pid, 0)
            line = json.loads(stdout.strip().splitlines()[-1])
            line["peak_rss_mib"] = usage.ru_maxrss / 1024
            out[variant] = line
        out["ratio"] = out["scan"]["seconds"] / out["plain"]["seconds"]
        return out


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if args.child:
        _offload_child(args)
        return 0
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{args.config}, batch {args.batch_size} x {args.seq} tokens, runs of {args.batches} batches, "
          f"{args.repeats} repeats, torch {torch.__version__}, {torch.get_num_threads()} threads, CPU", flush=True)
    rows = []
    for dtype in [] if args.no_steady else args.dtype.split(","):
        model = _model(args.config, dtype)
        data = _tokens(args, model.config.vocab_size)
        for method in args.method.split(","):
            result = _steady(model, data, args, method)
            rows.append({"dtype": dtype, **result})
            verdict = "met" if result["scan"]["ratio"] <= TARGET else "not met"
            print(f"  {dtype} {method}: plain {result['plain']['tokens_per_s']:.0f} tok/s, scan "
                  f"{result['scan']['tokens_per_s']:.0f} tok/s ({result['sites']} sites): "
                  f"scan/plain {result['scan']['ratio']:.3f}x ({result['scan']['ratio_min']:.3f}-"
                  f"{result['scan']['ratio_max']:.3f}); target <= {TARGET}x {verdict}", flush=True)
        del model
    offload = _offload(args) if args.offload else None
    if offload:
        print(f"  offload: model {offload['model_mib']:.0f} MiB, max_memory cpu {offload['max_memory']}, "
              f"placed on {', '.join(offload['plain']['devices'])}: plain {offload['plain']['tokens_per_s']:.0f} "
              f"tok/s (peak RSS {offload['plain']['peak_rss_mib']:.0f} MiB), scan "
              f"{offload['scan']['tokens_per_s']:.0f} tok/s (peak RSS {offload['scan']['peak_rss_mib']:.0f} MiB, "
              f"whole scan incl. fixed costs): {offload['ratio']:.2f}x")
    if args.out:
        Path(args.out).write_text(json.dumps({"config": args.config, "rows": rows, "offload": offload}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
