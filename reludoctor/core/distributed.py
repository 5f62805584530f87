"""Scans over several processes and machines (``torchrun``, ``torch.distributed``).

Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment), or inside a default process group
the caller initialised, ``scan()`` runs on every rank:

1. ``join()`` initialises the process group when the caller has not (gloo for CPU scans, NCCL
   for CUDA scans; each rank then uses the GPU of its ``LOCAL_RANK``), once per process;
2. ``World.shard()``: each rank scans its share of the calibration data, by batch: batch ``k``
   of the single-process scan (same batch size) goes to rank ``k mod WORLD_SIZE``. The shards
   are disjoint, cover the data, depend only on the rank and every rank's batches are exactly
   batches of the single-process scan, so every statistic, the subsampled histograms included,
   equals the single-process one (float sums up to their summation order);
3. ``World.observe()`` runs the observation, then combines the per-site ``UnitCounts`` of every
   rank with three all-reduces over flat buffers (integer sums; float sums; maxima, the minima
   negated), not one collective per site. Every rank ends with the merged statistics (and the
   same report); the CLI lets rank 0 alone write it. A rank that failed makes every rank fail.

Nothing here runs in a single process: ``join()`` returns None and ``scan()`` is unchanged.
Every rank must call ``scan()`` (with the same model, data and options): a script that scans
on one rank only sets ``RELUDOCTOR_DISTRIBUTED=0``, or the others never join and it waits.
"""

from __future__ import annotations

import atexit
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from reludoctor.core.counts import CHANNELS, Layout, SiteObserver, UnitCounts, pack, unpack
from reludoctor.data.shard import shard
from reludoctor.errors import DistributedError, ReludoctorError, UsageError, first_line  # noqa: F401 - re-exported

OPT_OUT = "RELUDOCTOR_DISTRIBUTED"  # =0: scan alone, even under torchrun or in a process group


def env_world_size() -> int:
    """WORLD_SIZE from the environment (torchrun sets it); 1 when absent or unreadable."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        return 1


def rank() -> int:
    """This process's rank: the process group's when one is initialised, else ``RANK`` (0)."""
    import sys

    dist = sys.modules.get("torch.distributed")  # never import torch just to ask
    if dist is not None and dist.is_available() and dist.is_initialized():
        return int(dist.get_rank())
    try:
        return int(os.environ.get("RANK", "0")) if env_world_size() > 1 else 0
    except ValueError:
        return 0


def is_writer() -> bool:
    """Whether this process writes reports and prints (rank 0, or a single process)."""
    return rank() == 0


@dataclass
class World:
    rank: int
    size: int
    device: Any  # this rank's compute device (a CUDA scan: its LOCAL_RANK's GPU)
    collective_device: Any  # where the all-reduce buffers live (CUDA for NCCL)

    def shard(self, calibration: Any, batch_size: int) -> Any:
        """This rank's batches of ``calibration``: batch k goes to rank k mod size."""
        return shard(calibration, batch_size, self.rank, self.size)

    def observe(self, run: Callable[[], tuple]) -> tuple:
        """``run()`` (engine._observe on this rank's shard), then the statistics of all ranks
        combined: (method, [(SiteSpec, observer)], samples, unobserved) as in one process."""
        try:
            method, sites, samples, unobserved = run()
            error = None
        except Exception as exc:  # noqa: BLE001 - told to the other ranks, then re-raised
            error = exc
        merged = self._combine(None if error is not None else (sites, samples), error)
        if error is not None:
            raise error
        sites, samples = merged
        return method, sites, samples, unobserved

    def _combine(self, local: tuple | None, error: Exception | None) -> tuple | None:
        import torch.distributed as dist

        if local is not None:
            sites, samples = local
            counts = [observer.state() if observer.observed else None for _, observer in sites]
            entries = [(spec, state is not None, None if state is None else state.layout, observer.shape)
                       for (spec, observer), state in zip(sites, counts)]
            status: tuple = ("ok", entries, samples)
        else:
            code = getattr(error, "exit_code", 3)
            text = error.one_line() if isinstance(error, ReludoctorError) else \
                f"{type(error).__name__}: {first_line(error)}"
            status = ("failed", code, text)
        gathered: list = [None] * self.size
        dist.all_gather_object(gathered, status)
        if error is not None:
            return None
        for other, report in enumerate(gathered):
            if report[0] == "failed":
                _, code, text = report
                failure = DistributedError(f"rank {other} of {self.size} failed"
                                           f"{' with an internal error' if code == 3 else ''}: {text}")
                failure.exit_code = code
                raise failure
        plan = _plan([report[1] for report in gathered])
        mine = {spec.name: state for (spec, _), state in zip(sites, counts)}
        total, states = reduce_counts(plan, mine, samples, self._all_reduce)
        merged: list[tuple[Any, SiteObserver]] = [(entry.spec, Combined(entry.shape, state))
                                                  for entry, state in zip(plan, states)]
        return merged, total

    def _all_reduce(self, buffer: np.ndarray, op: str) -> np.ndarray:
        import torch
        import torch.distributed as dist

        tensor = torch.from_numpy(np.ascontiguousarray(buffer)).to(self.collective_device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return tensor.cpu().numpy()


@dataclass
class PlannedSite:
    spec: Any  # SiteSpec
    layout: Layout | None  # the state's units and tracked fields; None: no rank executed the site
    shape: tuple[int, ...] | None  # from the first rank that executed it

    @property
    def units(self) -> int | None:
        return None if self.layout is None else self.layout.units


@dataclass
class Combined:
    """The merged statistics of one site, a ``SiteObserver`` for ``engine.scan``."""

    shape: tuple[int, ...] | None
    counts: UnitCounts | None

    @property
    def observed(self) -> bool:
        return self.counts is not None

    def state(self) -> UnitCounts:
        if self.counts is None:
            raise RuntimeError("site was never executed")
        return self.counts


def _plan(per_rank: list[list[tuple]]) -> list[PlannedSite]:
    """Every rank's sites as one list: rank 0's order, and a site only later ranks executed
    (data-dependent control flow) right after the site that precedes it there. Refuses a site
    whose unit count differs between ranks."""
    order: list[str] = []
    found: dict[str, PlannedSite] = {}
    for entries in per_rank:
        previous = None
        for spec, observed, layout, shape in entries:
            site = found.get(spec.name)
            if site is None:
                site = found[spec.name] = PlannedSite(spec, None, None)
                order.insert(order.index(previous) + 1 if previous is not None else 0, spec.name)
            if observed:
                if site.layout is None:
                    site.layout, site.shape = layout, shape
                elif site.layout != layout:
                    raise UsageError(f"site {spec.name} has {site.layout.units} units on one rank and "
                                     f"{layout.units} on another (or other options)",
                                     "give every rank the same model and options")
            previous = spec.name
    return [found[name] for name in order]


def reduce_counts(plan: list[PlannedSite], mine: dict[str, UnitCounts | None], samples: int,
                  all_reduce: Callable[[np.ndarray, str], np.ndarray],
                  ) -> tuple[int, list[UnitCounts | None]]:
    """Combine this rank's ``UnitCounts`` with every other rank's, one collective per channel
    of ``counts.pack`` (int64 sums, with the sample count first; float64 sums; float64 maxima,
    the minima negated), whatever the sites. ``all_reduce(buffer, "sum" | "max")`` returns the
    reduced buffer. Returns (samples of all ranks, merged counts per planned site)."""
    observed = [site for site in plan if site.layout is not None]
    buffers = pack([mine.get(site.spec.name) or UnitCounts.empty(*site.layout) for site in observed])
    first = CHANNELS[0]  # int64 sums: always reduced, it carries the sample count
    buffers[first] = np.concatenate([np.array([samples], np.int64), buffers[first]])
    reduced = {channel: all_reduce(buffer, channel[0]) for channel, buffer in buffers.items()
               if channel == first or buffer.size}
    total = int(reduced[first][0])
    reduced[first] = reduced[first][1:]
    states = iter(unpack(reduced, [site.layout for site in observed]))
    return total, [None if site.layout is None else next(states) for site in plan]


# ----------------------------------------------------------------------------- joining


def join(device: Any) -> World | None:
    """The process group of a multi-process scan, or None in a single process.

    Uses an initialised default group (world size > 1) as it is; otherwise, when torchrun's
    environment says ``WORLD_SIZE`` > 1, initialises one (``env://``): gloo for a CPU scan,
    NCCL for a CUDA scan, where a device without an index becomes ``cuda:LOCAL_RANK``. That
    group stays for the later scans of the process (destroying and re-creating one on the same
    store can hang) and is destroyed at exit.
    """
    if os.environ.get(OPT_OUT, "").strip().lower() in ("0", "false", "no", "off"):
        return None
    if "torch" not in sys.modules and env_world_size() <= 1:
        return None  # no process group can exist: a scan that need not import torch stays so
    import torch

    device = torch.device(str(device))  # a backend's torch-free HostDevice too
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        size = dist.get_world_size()
        if size <= 1:
            return None
        backend = str(dist.get_backend()).lower()
        target = _local_device(device)
        on_gpu = "nccl" in backend and "gloo" not in backend
        collective = target if on_gpu and target.type == "cuda" else \
            (torch.device("cuda", torch.cuda.current_device()) if on_gpu else torch.device("cpu"))
        return World(dist.get_rank(), size, target, collective)
    size = env_world_size()
    if size <= 1:
        return None
    if not dist.is_available():
        raise UsageError(f"WORLD_SIZE={size} asks for a multi-process scan, but this PyTorch build "
                         "has no torch.distributed", "run a single process (unset WORLD_SIZE)")
    missing = [name for name in ("RANK", "MASTER_ADDR", "MASTER_PORT") if not os.environ.get(name)]
    if missing:
        raise UsageError(f"WORLD_SIZE={size} but {', '.join(missing)} not set",
                         "launch with torchrun, or unset WORLD_SIZE")
    target = _local_device(device)
    backend = "nccl" if target.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(target)
    try:
        dist.init_process_group(backend)
    except Exception as exc:  # noqa: BLE001 - bad address, port taken, peers missing
        detail = first_line(exc, type(exc).__name__)
        raise UsageError(f"cannot join the {backend} process group of {size} processes: {detail}",
                         "launch with torchrun (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)") from exc
    atexit.register(_leave)  # kept for later scans of this process: re-initialising is unsafe
    return World(dist.get_rank(), dist.get_world_size(), target, target)


def _leave() -> None:
    """Destroy the process group join() created, at exit (NCCL warns when it is not)."""
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def _local_device(device: Any) -> Any:
    """A CUDA device without an index becomes this rank's GPU (LOCAL_RANK), others stay."""
    import torch

    if device.type != "cuda" or device.index is not None:
        return device
    try:
        local = int(os.environ.get("LOCAL_RANK", "0"))
    except ValueError:
        local = 0
    return torch.device("cuda", local % max(1, torch.cuda.device_count()))
