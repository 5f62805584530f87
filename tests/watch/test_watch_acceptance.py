"""The acceptance test of reludoctor.watch: a digits MLP trained with plain SGD at a learning
rate that kills units. Each unit's step of death must equal the oracle's (hand-computed maxima,
window definition applied by brute force), and after ``window`` steps at lr 0 that cover the
whole dataset, the watcher's dead set must equal ``reludoctor.scan``'s."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("sklearn")

import reludoctor  # noqa: E402
from tests.watch import oracle  # noqa: E402

WINDOW = 20
EPOCHS = 3
LR = 1.0  # plain SGD at 1.0 kills about a third of the first layer's units on digits


def _train(model, x, y, watcher=None):
    """Returns (steps, per-layer maxima per step): EPOCHS shuffled epochs at LR, then one pass in
    order at lr 0, each of WINDOW batches."""
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=0.0, weight_decay=0.0)
    if watcher is not None:
        watcher.optimizer = opt
    hidden = [model[0], model[2]]
    generator = torch.Generator().manual_seed(0)
    size = -(-len(x) // WINDOW)
    maxima = []
    for epoch in range(EPOCHS + 1):
        final = epoch == EPOCHS
        if final:
            for group in opt.param_groups:
                group["lr"] = 0.0
        order = torch.arange(len(x)) if final else torch.randperm(len(x), generator=generator)
        for b in range(WINDOW):
            idx = order[b * size:(b + 1) * size]
            loss = torch.nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            maxima.append(oracle.hidden_maxima(hidden, x[idx]))  # weights as the forward saw them
            opt.step()
    return maxima


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::reludoctor.errors.ReludoctorWarning")  # the alert: tested apart
def test_step_of_death_matches_oracle_and_final_dead_set_matches_scan(tmp_path, one_thread_seeded):
    x, y = oracle.digits()
    model = oracle.mlp()
    log = tmp_path / "watch.jsonl"
    with reludoctor.watch(model, every=1, window=WINDOW, log=log) as w:
        maxima = _train(model, x, y, w)
    steps = list(range(len(maxima)))
    assert w.observed_steps == steps
    names = list(w.summary())
    assert names == ["1", "3"]  # the module paths of the two nn.ReLU, as scan names them

    records = [json.loads(line) for line in log.read_text().splitlines()]
    step_records = [r for r in records if r["type"] == "step"]
    assert [r["step"] for r in step_records] == steps
    dead_total = 0
    for layer, name in enumerate(names):
        expected = oracle.events([m[layer] for m in maxima], steps, WINDOW)
        for record, truth in zip(step_records, expected):
            died = {unit: since for unit, since in record["died"].get(name, [])}
            assert died == truth["died"], (name, record["step"])
            assert record["revived"].get(name, []) == truth["revived"], (name, record["step"])
            assert record["sites"][name]["dead"] == len(truth["dead"])
        assert w.dead_units()[name] == expected[-1]["dead"]
        dead_total += len(expected[-1]["dead"])
    assert dead_total > 0, "the learning rate no longer kills units: the test proves nothing"
    assert any(r["died"] for r in step_records)

    report = reludoctor.scan(model, x.numpy(), method="dispatch")
    assert [s.name for s in report.sites] == names
    for site in report.sites:
        assert sorted(w.dead_units()[site.name]) == list(site.dead_units)
