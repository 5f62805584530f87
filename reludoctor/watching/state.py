"""Per-site state of a watched training run, kept on the model's device.

``StepObserver`` reduces a site's activation with the scan's own per-unit reductions
(``TorchUnitObserver.reduce_batch``) but keeps one observed step's statistics instead of
accumulating the whole run. ``SiteState`` turns those into silent streaks (dead, step of
death, revived) and the window's near-dead and dormant counts with element-wise ops only
(``torch.where``), so an observed step never waits for the device; what a flush reads back
sits in two buffers per site.
"""

from __future__ import annotations

from typing import Any

import torch

from reludoctor.core.observers import TorchUnitObserver
from reludoctor.core.stats import unit_masks

NO_EVENT = -1  # events buffer: nothing happened to the unit at that step
REVIVED = -2  # ... it fired again after being dead; a value >= 0: it died, this is its step of death
NOT_RUN = -1  # summary buffer: the site did not run at that step


class StepObserver(TorchUnitObserver):
    """A site's per-unit statistics of the current observed step: (max pre-activation,
    positive count, |output| sum, positions), taken and cleared by ``take``."""

    def __init__(self, unit_axis: int, lower: float, upper: float | None, batch: Any):
        super().__init__(unit_axis, lower, upper, batch)
        self._step: list | None = None

    def _update(self, x: torch.Tensor) -> None:
        batch = self.reduce_batch(x)
        if batch is None:
            return
        unit_max, _, positive, out_sum = batch.stats
        positions = batch.positions
        if self._step is None:
            self._step = [unit_max.to(torch.float64), positive, out_sum.to(torch.float64), positions]
        else:  # a second call in one step (a site reached twice): its batch joins the step's
            torch.maximum(self._step[0], unit_max, out=self._step[0])
            self._step[1] += positive
            self._step[2] += out_sum
            self._step[3] += positions

    @property
    def observed(self) -> bool:
        return self.shape is not None

    def take(self) -> list | None:
        step, self._step = self._step, None
        return step


class SiteState:
    """One site's streaks, window and flush buffers (all on ``device``).

    A unit is silent at a step when its max pre-activation is <= ``lower``; dead now when
    silent on each of the last ``window`` steps at which the site ran; its step of death is the
    first step of that silent streak. Near-dead and dormant are the scan's definitions
    (``core.stats.unit_masks``) over the window's counts.
    """

    def __init__(self, name: str, op: str, units: int, lower: float, window: int, rows: int,
                 device: Any, near_dead: float, dormant_tau: float):
        self.name, self.op, self.units, self.lower = name, op, units, lower
        self.window, self.near_dead, self.dormant_tau = window, near_dead, dormant_tau
        long = {"dtype": torch.int64, "device": device}
        self.streak_start = torch.zeros(units, **long)  # meaningful where streak_len > 0
        self.streak_len = torch.zeros(units, **long)
        self.ever_dead = torch.zeros(units, dtype=torch.bool, device=device)
        self._positive = torch.zeros((window, units), **long)  # ring of the window's steps
        self._abs_sum = torch.zeros((window, units), dtype=torch.float64, device=device)
        self._positions = [0] * window  # host ints: known from shapes, no read-back needed
        self._seen = 0  # steps at which the site ran
        # Flush buffers, one row per observed step of the watcher: (dead, near-dead, dormant)
        # counts, and per unit NO_EVENT, REVIVED or its step of death.
        self.summary = torch.full((rows, 3), NOT_RUN, **long)
        self.events = torch.full((rows, units), NO_EVENT, **long)

    def update(self, step: int, row: int, unit_max: torch.Tensor, positive: torch.Tensor,
               abs_sum: torch.Tensor, positions: int) -> None:
        silent = unit_max <= self.lower
        was_dead = self.streak_len >= self.window
        self.streak_start = torch.where(silent & (self.streak_len == 0), step, self.streak_start)
        self.streak_len = torch.where(silent, self.streak_len + 1, 0)
        dead = self.streak_len >= self.window
        self.ever_dead |= dead
        died = self.streak_len == self.window  # dead from this step on
        self.events[row] = torch.where(died, self.streak_start,
                                       torch.where(was_dead & ~silent, REVIVED, NO_EVENT))
        slot = self._seen % self.window
        self._positive[slot] = positive
        self._abs_sum[slot] = abs_sum
        self._positions[slot] = positions
        self._seen += 1
        _, near, dormant, _, _ = unit_masks(self._positive.sum(0), max(sum(self._positions), 1),
                                            self._abs_sum.sum(0), self.near_dead, self.dormant_tau)
        self.summary[row] = torch.stack([dead.sum(), near.sum(), dormant.sum()])

    def buffers(self, rows: int) -> list[torch.Tensor]:
        """The first ``rows`` rows of the flush buffers, flat (the watcher reads all sites' at once)."""
        return [self.summary[:rows].reshape(-1), self.events[:rows].reshape(-1)]

    def reset_buffers(self) -> None:
        self.summary.fill_(NOT_RUN)
        self.events.fill_(NO_EVENT)

    def dead_now(self) -> torch.Tensor:
        return self.streak_len >= self.window
