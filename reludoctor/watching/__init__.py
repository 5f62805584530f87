"""Watch a training run: which ReLU units die, and when (``reludoctor.watch``).

(The package is ``watching``: a subpackage ``reludoctor.watch`` would replace the lazily
exported function on the ``reludoctor`` module once imported.)

The scan's dispatch instrumentation (``backends.torch.dispatch.DispatchInstrument``: every
call site, inplace and functional, named as ``scan --method dispatch`` names them) observes the
forward passes the training already runs, one in ``every`` steps: a forward pre-hook on the
model enters the dispatch mode and a forward hook leaves it. Per-unit state stays on the
device (``state.SiteState``) and is read back once per ``flush_every`` observed steps, when the
records go to the sinks (``sinks``) and alerts are checked (``alerts``).
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, Callable

import numpy as np
import torch

from reludoctor.backends.torch.dispatch import DispatchInstrument
from reludoctor.core.observers import BatchContext
from reludoctor.options import ScanOptions
from reludoctor.watching import alerts
from reludoctor.watching.sinks import RATIOS, JsonlSink, Sink, TensorBoardSink
from reludoctor.watching.state import NOT_RUN, REVIVED, SiteState, StepObserver

__all__ = ["watch", "Watcher"]


class Watcher:
    """Observes every ``every``-th training step of ``model`` (see ``watch``).

    ``step`` counts training-mode forward passes from 0 unless set (a callback sets the global
    step); a step is observed when ``step % every == 0``, once (gradient accumulation calls the
    forward several times at one global step: the first call is observed).
    """

    def __init__(self, model: Any, every: int = 50, window: int = 20, *, flush_every: int | None = None,
                 log: Any = None, tensorboard: Any = None, optimizer: Any = None, alert_jump: float = 0.1,
                 on_alert: Callable[[alerts.Alert], Any] | None = None, near_dead: float = ScanOptions.near_dead,
                 dormant_tau: float = ScanOptions.dormant_tau, unit_axis: int | None = None, hooks: bool = True):
        for label, value in (("every", every), ("window", window), ("flush_every", flush_every or window)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{label} must be a positive integer, not {value!r}")
        self.model = model
        self.every, self.window = every, window
        self.flush_every = flush_every or window
        self.optimizer = optimizer
        self.on_alert = on_alert
        self.near_dead, self.dormant_tau = near_dead, dormant_tau
        self.instrument = DispatchInstrument(model, BatchContext(), unit_axis, observer_factory=StepObserver)
        self.sinks: list[Sink] = []
        if log is not None:
            self.sinks.append(JsonlSink(log))
        if tensorboard is not None:
            self.sinks.append(TensorBoardSink(tensorboard))
        self.alerts: list[alerts.Alert] = []
        self._policy = alerts.AlertPolicy(alert_jump)
        self._sites: dict[str, SiteState] = {}  # in first-execution order
        self._rows: list[tuple[int, Any]] = []  # (step, learning rate) of each unflushed observed step
        self._step = 0
        self._last_observed: int | None = None
        self._observing: contextlib.ExitStack | None = None
        self.observed_steps: list[int] = []
        self.last_record: dict | None = None
        self._closed = False
        self._in_training_forward = False
        self._handles = []
        if hooks:
            self._handles = [model.register_forward_pre_hook(self._pre_hook, with_kwargs=True),
                             model.register_forward_hook(self._hook, always_call=True)]

    # ------------------------------------------------------------------ steps

    @property
    def step(self) -> int:
        return self._step

    @step.setter
    def step(self, value: int) -> None:
        if int(value) < 0:
            raise ValueError(f"step must be >= 0, not {value}")
        self._step = int(value)

    @property
    def observing(self) -> bool:
        """Whether the dispatch mode is entered (between ``begin_step`` and ``end_step``)."""
        return self._observing is not None

    def begin_step(self, args: tuple = (), kwargs: dict | None = None) -> bool:
        """A training step's forward begins (``args``/``kwargs``: the model's inputs). Enters
        the dispatch mode when the step is observed; returns whether it is."""
        if self._closed or self._observing is not None:
            return False
        if self._step % self.every or self._step == self._last_observed:
            return False
        stack = contextlib.ExitStack()
        stack.enter_context(self.instrument.active(entered=self.model))
        self._observing = stack
        self.instrument.start_forward()
        self.instrument.enter_forward(args, kwargs or {})
        return True

    def end_step(self, failed: bool = False) -> None:
        """The step's forward ended: leave the dispatch mode and fold its statistics into the
        state (unless ``failed``: a forward that raised observed part of the model only)."""
        stack, self._observing = self._observing, None
        if stack is not None:
            try:
                self.instrument.exit_forward()
            finally:
                stack.close()
            sites = self.instrument.sites()  # after exit_forward: waiting sites are named too
            if failed:
                for _, observer in sites:
                    observer.take()  # discarded: not the next step's
            else:
                self._commit(sites)
        self._step += 1

    def _pre_hook(self, module: Any, args: tuple, kwargs: dict) -> None:
        if module.training:  # eval forwards (validation) are no training steps
            self._in_training_forward = True
            self.begin_step(args, kwargs)

    def _hook(self, module: Any, args: tuple, output: Any) -> None:
        if self._in_training_forward:
            self._in_training_forward = False
            self.end_step(failed=sys.exc_info()[0] is not None)  # always_call: also when forward raised

    def _commit(self, sites: list) -> None:
        step, row = self._step, len(self._rows)
        for spec, observer in sites:
            stats = observer.take()
            if stats is None:  # not run at this step (a branch not taken)
                continue
            state = self._sites.get(spec.name)
            if state is None:
                state = SiteState(spec.name, spec.op, observer.units, spec.lower, self.window, self.flush_every,
                                  stats[0].device, self.near_dead, self.dormant_tau)
                self._sites[spec.name] = state
            state.update(step, row, *stats)
        lr = self.optimizer.param_groups[0]["lr"] if self.optimizer is not None else None
        self._rows.append((step, lr))
        self._last_observed = step
        self.observed_steps.append(step)
        if len(self._rows) == self.flush_every:
            self.flush()

    # ------------------------------------------------------------------ read-back

    def flush(self) -> list[dict]:
        """Read the unflushed steps back (one transfer for all sites), write their records
        and raise their alerts. Returns the records written."""
        rows = len(self._rows)
        if not rows:
            return []
        sites = list(self._sites.values())
        flat = torch.cat([buffer for site in sites for buffer in site.buffers(rows)]).cpu().numpy()
        records: list[dict] = []
        offset = 0
        tables = []
        for site in sites:
            summary = flat[offset:offset + 3 * rows].reshape(rows, 3).tolist()
            offset += 3 * rows
            events = flat[offset:offset + site.units * rows].reshape(rows, site.units)
            offset += site.units * rows
            tables.append((site, summary, events))
            site.reset_buffers()
        for r, (step, lr) in enumerate(self._rows):
            lr = None if lr is None else float(lr)
            record: dict = {"type": "step", "step": step, "sites": {}, "died": {}, "revived": {}}
            if lr is not None:
                record["lr"] = lr
            raised = []
            for site, summary, events in tables:
                if summary[r][0] == NOT_RUN:
                    continue
                counts = dict(zip(RATIOS, summary[r]))
                ratios = {key: value / site.units for key, value in counts.items()}
                record["sites"][site.name] = {**counts, "units": site.units, "ratios": ratios}
                died = [[int(unit), int(events[r, unit])] for unit in np.flatnonzero(events[r] >= 0)]
                revived = np.flatnonzero(events[r] == REVIVED).tolist()
                if died:
                    record["died"][site.name] = died
                if revived:
                    record["revived"][site.name] = revived
                alert = self._policy.check(step, site.name, ratios["dead"], lr)
                if alert is not None:
                    raised.append(alert)
            records.append(record)
            records.extend(alert.record() for alert in raised)
            self.alerts.extend(raised)
            for alert in raised:
                alerts.warn(alert)
                if self.on_alert is not None:
                    self.on_alert(alert)
        self._rows.clear()
        self.last_record = next(r for r in reversed(records) if r["type"] == "step")
        for sink in self.sinks:
            sink.write(records)
        return records

    def summary(self) -> dict[str, dict]:
        """Per site (first-execution order): units, the dead units now with their step of death,
        the revived units (dead once, alive now), the units ever dead."""
        out = {}
        for name, site in self._sites.items():
            dead = site.dead_now()
            since, dead, ever = (t.cpu().tolist() for t in (site.streak_start, dead, site.ever_dead))
            out[name] = {
                "op": site.op,
                "units": site.units,
                "dead": {unit: since[unit] for unit in range(site.units) if dead[unit]},
                "revived": [unit for unit in range(site.units) if ever[unit] and not dead[unit]],
                "ever_dead": [unit for unit in range(site.units) if ever[unit]],
            }
        return out

    def dead_units(self) -> dict[str, dict[int, int]]:
        """Per site: {unit: step of death} of the units dead now."""
        return {name: site["dead"] for name, site in self.summary().items()}

    def report(self) -> dict:
        """A plain (JSON-ready) dict: settings, observed steps, per-site state, alerts."""
        sites = []
        for name, site in self.summary().items():
            dead = sorted(site["dead"])
            sites.append({"name": name, "op": site["op"], "units": site["units"], "dead_units": dead,
                          "death_steps": [site["dead"][unit] for unit in dead],
                          "dead_ratio": len(dead) / site["units"] if site["units"] else 0.0,
                          "revived_units": site["revived"], "ever_dead_units": site["ever_dead"]})
        return {"every": self.every, "window": self.window, "observed_steps": len(self.observed_steps),
                "last_step": self.observed_steps[-1] if self.observed_steps else None,
                "sites": sites, "alerts": [alert.record() for alert in self.alerts]}

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        """Remove the hooks, leave the dispatch mode if a forward was cut short, flush and
        close the sinks. A second call does nothing."""
        if self._closed:
            return
        self._closed = True
        try:
            for handle in self._handles:
                handle.remove()
            if self._observing is not None:
                self._observing.close()
                self._observing = None
            self.flush()
        finally:
            for sink in self.sinks:
                sink.close()

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def watch(model: Any, every: int = 50, window: int = 20, **options: Any) -> Watcher:
    """Watch ``model``'s training for dying ReLU units, in any training loop::

        with reludoctor.watching(model, every=50, window=20, log="watch.jsonl") as w:
            for x, y in loader:
                loss = loss_fn(model(x), y); loss.backward(); opt.step(); opt.zero_grad()
        w.dead_units()   # {site: {unit: step of death}}

    ``every``: observe one training step in ``every``; ``window``: a unit is dead when it has
    not fired on each of the last ``window`` observed steps. Options: ``flush_every`` (observed
    steps between read-backs, default ``window``), ``log`` (a JSON-lines file, appended),
    ``tensorboard`` (a ``SummaryWriter``), ``optimizer`` (its learning rate goes into records
    and alerts), ``alert_jump`` (0.1: a site's dead ratio rising by 10 points between observed
    steps warns once), ``on_alert``, ``near_dead`` and ``dormant_tau`` (as ``scan``),
    ``unit_axis``. See docs/training.md.
    """
    return Watcher(model, every, window, **options)
