"""reludoctor.watch in a plain training loop: which forwards are observed, sites, outputs and
gradients untouched, records, sinks, alerts, clean-up. Expected values come from oracles
(the scan, hand-computed maxima, the watcher's own JSONL replayed), never hard-coded numbers."""

from __future__ import annotations

import json
import warnings

import pytest

torch = pytest.importorskip("torch")

import torch.nn.functional as F  # noqa: E402

import reludoctor  # noqa: E402
from reludoctor.errors import ReludoctorWarning  # noqa: E402
from tests.watch import oracle  # noqa: E402

# Random models draw alerts; the tests that check alerts record warnings themselves.
pytestmark = pytest.mark.filterwarnings("ignore::reludoctor.errors.ReludoctorWarning")


class AllForms(torch.nn.Module):
    """Every way a ReLU is called: module (inplace), F.relu, torch.relu_, Tensor.relu."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.a, self.b, self.c, self.d = (torch.nn.Linear(8, 8) for _ in range(4))
        self.act = torch.nn.ReLU(inplace=True)
        self.out = torch.nn.Linear(8, 2)

    def forward(self, x):
        x = self.act(self.a(x))
        x = F.relu(self.b(x))
        x = torch.relu_(self.c(x))
        return self.out(self.d(x).relu())


def _batches(n, size=16, features=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(size, features, generator=generator), torch.randint(0, 2, (size,), generator=generator))
            for _ in range(n)]


def _train(model, batches, lr=0.05, between=None):
    """Plain SGD; returns each step's loss and gradients. ``between(step)`` runs before a step."""
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    trace = []
    for step, (x, y) in enumerate(batches):
        if between is not None:
            between(step, model, opt)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        trace.append((loss.detach().clone(), [p.grad.clone() for p in model.parameters()]))
        opt.step()
    return trace


def test_outputs_and_gradients_unchanged(one_thread_seeded):
    batches = _batches(6)
    plain = _train(AllForms(), batches)
    model = AllForms()
    with reludoctor.watch(model, every=1, window=2):
        watched = _train(model, batches)
    for (loss, grads), (loss_w, grads_w) in zip(plain, watched):
        assert torch.equal(loss, loss_w)
        assert all(torch.equal(g, g_w) for g, g_w in zip(grads, grads_w))


def test_every_k_observes_exactly_every_kth_training_step_and_not_eval(one_thread_seeded):
    model = AllForms()
    x, _ = _batches(1)[0]
    with reludoctor.watch(model, every=3, window=2) as w:
        for _ in range(10):
            model.train()
            model(x)
            model.eval()  # validation forwards: no step, not observed
            model(x)
            model(x)
    assert w.step == 10
    assert w.observed_steps == [0, 3, 6, 9]


def test_explicit_steps_observed_once_each(one_thread_seeded):
    model = AllForms()
    x, _ = _batches(1)[0]
    with reludoctor.watch(model, every=50, window=2) as w:
        for step in (0, 0, 10, 50, 50, 99, 100):  # a repeated step: gradient accumulation
            w.step = step
            model(x)
    assert w.observed_steps == [0, 50, 100]


def test_inplace_and_functional_sites_named_as_scan_dispatch(one_thread_seeded):
    model = AllForms()
    batches = _batches(4)
    with reludoctor.watch(model, every=1, window=2) as w:
        _train(model, batches, lr=0.0)
    report = reludoctor.scan(model, torch.cat([x for x, _ in batches]).numpy(), method="dispatch")
    assert list(w.summary()) == [s.name for s in report.sites]
    assert len(w.summary()) == 4
    assert [s["units"] for s in w.summary().values()] == [s.units for s in report.sites]


def test_dead_units_against_oracle_with_every_and_window(one_thread_seeded):
    """every=2: the window counts observed steps; the oracle sees the observed steps only."""
    x, y = oracle.digits()
    x, y = x[:600], y[:600]
    model = oracle.mlp(seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    maxima, window = [], 4
    with reludoctor.watch(model, every=2, window=window, flush_every=3) as w:
        for step in range(40):
            idx = torch.arange(step * 15, step * 15 + 15) % len(x)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            if step % 2 == 0:
                maxima.append(oracle.hidden_maxima([model[0], model[2]], x[idx]))
            opt.step()
    steps = list(range(0, 40, 2))
    for layer, name in enumerate(["1", "3"]):
        truth = oracle.events([m[layer] for m in maxima], steps, window)[-1]["dead"]
        assert w.dead_units()[name] == truth


def _killing_run(tmp_path, **options):
    """Two sites; at step 6 every bias is pushed far below zero: every unit dies at once.
    Returns the watcher and the ReludoctorWarnings it raised."""
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.ReLU(),
                                torch.nn.Linear(8, 2))
    w = reludoctor.watch(model, every=1, window=3, log=tmp_path / "w.jsonl", **options)

    def between(step, model, opt):
        w.optimizer = opt
        if step == 6:
            with torch.no_grad():
                model[0].bias.fill_(-1e3)
                model[2].bias.fill_(-1e3)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            _train(model, _batches(16), lr=0.05, between=between)
        finally:
            w.close()
    return w, [c for c in caught if issubclass(c.category, ReludoctorWarning)]


def test_alert_once_per_site_with_learning_rate(tmp_path, one_thread_seeded):
    seen = []
    w, caught = _killing_run(tmp_path, on_alert=seen.append)
    assert len(caught) == 2 == len(seen) == len(w.alerts)  # one per site, not one per flush
    assert sorted(a.site for a in seen) == ["1", "3"]
    death = 6 + 3 - 1  # dead from the window's last step
    for alert, warning in zip(seen, caught):
        assert alert.step == death and alert.rule == "dead-units"
        text = str(warning.message)
        assert f"step {death}" in text and "learning rate 0.05" in text and "dead-units" in text
        assert "LeakyReLU" in text and "kaiming_normal_" in text
    records = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    assert [r["site"] for r in records if r["type"] == "alert"] == [a.site for a in seen]
    assert w.dead_units() == {"1": dict.fromkeys(range(8), 6), "3": dict.fromkeys(range(8), 6)}


def test_jsonl_records_match_summary(tmp_path, one_thread_seeded):
    w, _ = _killing_run(tmp_path, flush_every=4)
    records = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in steps] == w.observed_steps
    replayed: dict = {name: {} for name in w.summary()}
    for record in steps:
        for name, died in record["died"].items():
            replayed[name].update({unit: since for unit, since in died})
        for name, revived in record["revived"].items():
            for unit in revived:
                replayed[name].pop(unit)
    assert replayed == w.dead_units()
    for name, site in w.summary().items():
        last = steps[-1]["sites"][name]
        assert last["dead"] == len(site["dead"]) and last["units"] == site["units"]
        assert last["ratios"]["dead"] == len(site["dead"]) / site["units"]
    assert json.loads(json.dumps(w.report()))["sites"][0]["dead_units"] == sorted(w.summary()["1"]["dead"])


def test_flush_every_batches_the_read_back(tmp_path, one_thread_seeded):
    model = AllForms()
    log = tmp_path / "w.jsonl"
    x, _ = _batches(1)[0]

    def steps_written():
        return log.read_text().count('"type": "step"') if log.exists() else 0

    with reludoctor.watch(model, every=1, window=2, flush_every=3, log=log):
        for step in range(5):
            model(x)
            assert steps_written() == 3 * ((step + 1) // 3)
    assert steps_written() == 5


class FakeWriter:
    def __init__(self):
        self.scalars = []

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))


def test_tensorboard_fake_writer_gets_the_jsonl_ratios(tmp_path, one_thread_seeded):
    writer = FakeWriter()
    w, _ = _killing_run(tmp_path, tensorboard=writer)
    records = [json.loads(line) for line in (tmp_path / "w.jsonl").read_text().splitlines()]
    expected = [(f"reludoctor/{ratio}_ratio/{site}", values["ratios"][ratio], r["step"])
                for r in records if r["type"] == "step" for site, values in r["sites"].items()
                for ratio in ("dead", "near_dead", "dormant")]
    assert writer.scalars == expected


def test_tensorboard_real_summary_writer(tmp_path, one_thread_seeded):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tmp_path / "tb")
    try:
        w, _ = _killing_run(tmp_path, tensorboard=writer)
    finally:
        writer.close()
    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    dead = [(e.step, e.value) for e in events.Scalars("reludoctor/dead_ratio/1")]
    assert [step for step, _ in dead] == w.observed_steps
    assert dead[-1][1] == pytest.approx(len(w.dead_units()["1"]) / 8)


def test_clean_up_on_close_twice_and_on_a_failing_forward(one_thread_seeded):
    from torch.nn.modules import module as nn_module
    from torch.utils._python_dispatch import _get_current_dispatch_mode

    class Failing(AllForms):
        def forward(self, x):
            x = self.act(self.a(x))
            raise RuntimeError("boom")

    model = Failing()
    x, _ = _batches(1)[0]
    w = reludoctor.watch(model, every=1, window=2)
    with pytest.raises(RuntimeError, match="boom"):
        model(x)
    assert _get_current_dispatch_mode() is None and not nn_module._global_forward_hooks
    assert w.observed_steps == []  # a forward that raised is not a step's evidence
    w.close()
    w.close()
    assert not model._forward_hooks and not model._forward_pre_hooks


def test_package_exports_the_function():
    import reludoctor.watching.state  # noqa: F401  (the subpackage must not shadow the function)

    assert callable(reludoctor.watch) and reludoctor.watch.__module__ == "reludoctor.watching"


def test_observed_steps_read_nothing_back_until_a_flush(monkeypatch):
    """No per-step host sync: observed training steps (the observer's device route, as a CUDA
    activation takes it, and the streak and window updates) run with every host read-back of
    a tensor made to raise; the one read-back is the flush, after the block."""
    from tests.perf_paths.test_sync_free import no_read_back

    model = AllForms()
    batches = _batches(6)
    watcher = reludoctor.watch(model, every=1, window=2, flush_every=100)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    try:
        with no_read_back(monkeypatch) as calls:
            for x, y in batches:
                loss = F.cross_entropy(model(x), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
        assert calls == []
        assert watcher.observed_steps == list(range(6))
        records = watcher.flush()
    finally:
        watcher.close()
    assert [r["step"] for r in records if r["type"] == "step"] == list(range(6))
