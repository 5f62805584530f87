"""What a backend's fixer (``backends.torch.fix``, ``backends.onnx.fix``) hands back to ``fix()``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from reludoctor.fix.plan import SiteFix
from reludoctor.fix.verify import Verification


@dataclass
class Applied:
    sites: list[SiteFix]
    params_before: int
    params_after: int
    macs_before: int
    macs_after: int
    verification: Verification | None = None  # None for a dry run
    fixed_object: Any = None  # the written model, reloaded (for the rescan); None for a dry run
    out_sha256: str | None = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Request:
    """Everything a backend needs besides the loaded model and the plan."""

    strategy: Any  # Strategy
    alpha: float | None
    seed: int
    data: Any
    limit: int | None
    batch_size: int
    out: Any  # Path | None
    out_format: str | None
    dry_run: bool
    dead: dict  # site -> set of dead unit indices (from the scan)
    warn: Callable[[str], None]
    # --prune-near-dead: the limit, and per site the scan's measured joint output change
    max_output_change: float | None = None
    measured: dict = field(default_factory=dict)


def lossless_expected(strategy: Any, sites: list[SiteFix], dead: dict) -> bool:
    """prune-dead: always; reinit, prune-near-dead: when every unit changed was dead; leaky: never."""
    value = getattr(strategy, "value", strategy)
    if value == "prune-dead":
        return True
    if value in ("reinit", "prune-near-dead"):  # equal outputs only when every unit changed was dead
        done = "reinit" if value == "reinit" else "pruned"
        return all(set(s.targets) <= dead.get(s.site, set()) for s in sites if s.action == done)
    return False
