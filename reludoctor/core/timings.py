"""Where a scan's time goes (``scan --verbose``): named phases, nested, timed with a monotonic
clock. Any module marks a phase with ``phase("export")``; it is recorded only while a
``Timings`` is active (the CLI's), so library calls pay nothing."""

from __future__ import annotations

import contextlib
import time
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterator

_ACTIVE: ContextVar[Timings | None] = ContextVar("reludoctor_timings", default=None)


@dataclass
class Timings:
    """Phases in the order they started: (name, depth, seconds)."""

    phases: list[list] = field(default_factory=list)
    _depth: int = 0

    @contextlib.contextmanager
    def active(self) -> Iterator[Timings]:
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def lines(self) -> list[str]:
        """One line per phase, indented by nesting: 'load  1.23 s'."""
        width = max((2 * depth + len(name) for name, depth, _ in self.phases), default=0)
        return [f"{'  ' * depth}{name:<{width - 2 * depth}}  {seconds:7.3f} s"
                for name, depth, seconds in self.phases]


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """Time the block as ``name`` in the active Timings (none: does nothing)."""
    timings = _ACTIVE.get()
    if timings is None:
        yield
        return
    entry = [name, timings._depth, 0.0]
    timings.phases.append(entry)
    timings._depth += 1
    start = time.perf_counter()
    try:
        yield
    finally:
        entry[2] = time.perf_counter() - start
        timings._depth -= 1
