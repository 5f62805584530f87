"""Padding positions are never observed: the same tokens batched with or without padding
(right or left, to different lengths) give the same per-neuron statistics, equal to an
oracle over the real tokens only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reludoctor import scan
from reludoctor.core.observers import BatchContext, TorchUnitObserver
from tests.lm.conftest import ffn_oracle, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread_seeded")

LENGTHS = (6, 3, 11, 1, 8)


def sequences(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(4, 100, size=n).astype(np.int64) for n in LENGTHS]


def padded(seqs: list[np.ndarray], width: int, left: bool = False) -> dict[str, np.ndarray]:
    ids = np.ones((len(seqs), width), np.int64)  # 1: the pad token
    mask = np.zeros((len(seqs), width), np.int64)
    for row, seq in enumerate(seqs):
        where = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, where], mask[row, where] = seq, 1
    return {"input_ids": ids, "attention_mask": mask}


def one_by_one(seqs: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
    return [{"input_ids": s[None], "attention_mask": np.ones((1, len(s)), np.int64)} for s in seqs]


def counts(report) -> dict[str, tuple]:
    return {site.name: (site.positions, np.array(site.accumulators.positive_count),
                        np.array(site.max_preactivation), np.array(site.accumulators.abs_output_sum))
            for site in report.sites}


def check_same(got: dict, expected: dict, exact_max: bool = True) -> None:
    assert got.keys() == expected.keys()
    for name, (positions, positive, top, total) in got.items():
        want = expected[name]
        assert positions == want[0], name
        np.testing.assert_array_equal(positive, want[1], err_msg=name)
        if exact_max:
            np.testing.assert_array_equal(top, want[2], err_msg=name)
        else:  # the same tokens in batches of other shapes: matmuls may round differently
            np.testing.assert_allclose(top, want[2], rtol=1e-5, atol=1e-6, err_msg=name)
        np.testing.assert_allclose(total, want[3], rtol=1e-5, err_msg=name)


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_padding_never_observed(kind: str) -> None:
    model = tiny_model(kind)
    seqs = sequences()
    options = dict(method="dispatch", device="cpu")
    alone = counts(scan(model, one_by_one(seqs), batch_size=1, **options))
    layouts = [padded(seqs, 11), padded(seqs, 20)]
    if kind == "opt":  # OPT's positions follow the mask; Llama's do not, so left padding moves them
        layouts.append(padded(seqs, 15, left=True))
    for data in layouts:
        for batch_size in (2, 5):
            check_same(counts(scan(model, data, batch_size=batch_size, **options)), alone, exact_max=False)
    total = sum(LENGTHS)
    assert all(positions == total for positions, *_ in alone.values())

    # the oracle: forward hooks on the Linear feeding each ReLU, real tokens only
    layers = model.model.decoder.layers if kind == "opt" else model.model.layers
    feeds = {f"layer{i}": (layer.fc1 if kind == "opt" else layer.mlp.gate_proj) for i, layer in enumerate(layers)}
    data = padded(seqs, 13)
    oracle = ffn_oracle(model, [(data["input_ids"], data["attention_mask"])], feeds)
    got = counts(scan(model, data, batch_size=5, **options))
    assert len(got) == len(feeds)
    for (name, (positions, positive, top, _)), expected in zip(got.items(), oracle.values()):
        assert positions == expected["positions"] == total, name
        np.testing.assert_array_equal(positive, expected["positive"].numpy(), err_msg=name)
        np.testing.assert_array_equal(top, expected["max"].double().numpy(), err_msg=name)


@pytest.mark.parametrize("shape", [(4, 7, 5), (4, 7, 3, 5), (28, 5)])
@pytest.mark.parametrize("lower_upper", [(0.0, None), (-1.0, 1.0), (0.0, 6.0)])
def test_device_route_equals_cut_route(shape: tuple, lower_upper: tuple) -> None:
    """The GPU route (where, counts from the host) gives what the CPU route (x[mask]) gives,
    and both equal numpy over the real positions; the histogram counts real positions only."""
    rng = np.random.default_rng(3)
    mask = np.zeros((4, 7), bool)
    for row, n in enumerate((7, 2, 5, 0)):
        mask[row, :n] = True
    lower, upper = lower_upper
    batches = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    states = []
    for where in (False, True):
        context = BatchContext(mask=torch.from_numpy(mask), mask_positions=int(mask.sum()), where_masks=where)
        observer = TorchUnitObserver(-1, lower, upper, context)
        for batch in batches:
            observer(torch.from_numpy(batch))
        states.append(observer.state())
    cut, kept = states
    flat_mask = mask if len(shape) > 2 else mask.reshape(-1)
    real = np.concatenate([b[flat_mask].reshape(-1, shape[-1]) for b in batches]).astype(np.float64)
    for state in (cut, kept):
        assert state.positions == real.shape[0]
        np.testing.assert_array_equal(state.positive, (real > lower).sum(0))
        np.testing.assert_array_equal(state.max, real.max(0))
        if upper is not None:
            np.testing.assert_array_equal(state.min, real.min(0))
        out = np.abs(np.clip(real, lower, upper if upper is not None else np.inf))
        np.testing.assert_allclose(state.abs_output_sum, out.sum(0), rtol=1e-5)
        assert int(state.hist.sum()) == real.size  # every value sampled here: fewer than 4096
    np.testing.assert_array_equal(cut.hist, kept.hist)
