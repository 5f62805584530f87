"""The neuron activation profile against per-token firings counted by hand (forward hooks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from profile_kit import TokenModel, expected_layer, fired_by_hooks, token_ids

import reludoctor
from reludoctor.core.profile import block_index, hot_set_size
from reludoctor.report.model import Report
from reludoctor.report.schema import validate


@pytest.fixture(scope="module")
def scanned():
    torch.set_num_threads(1)
    model = TokenModel(blocks=3)
    feed = {"input_ids": token_ids(12)}
    report = reludoctor.scan(model, feed, batch_size=5)  # batches of unequal size
    return report, fired_by_hooks(model, feed)


def _check(layer, fired: np.ndarray) -> None:
    want = expected_layer(fired)
    for key in ("neurons", "tokens", "activations", "dead_neurons"):
        assert getattr(layer, key) == want[key], key
    for key in ("sparsity", "mean_active_neurons", "mean_active_fraction"):
        assert getattr(layer, key) == pytest.approx(want[key], rel=1e-12), key
    assert [h.neurons for h in layer.hot] == want["hot"]
    assert [h.coverage for h in layer.hot] == [0.8, 0.9, 0.99]


def test_every_token_site_matches_the_oracle(scanned) -> None:
    report, fired = scanned
    profile = report.profile
    assert [layer.site for layer in profile.layers] == [
        "layers.0.act", "layers.1.act", "layers.2.act", "head_act"]
    assert [layer.layer for layer in profile.layers] == [0, 1, 2, None]
    for layer in profile.layers:
        _check(layer, fired[layer.module])
        # the per-neuron frequency is the site's activation_rate
        np.testing.assert_allclose(report.site(layer.site).activation_rate,
                                   expected_layer(fired[layer.module])["frequency"], rtol=1e-12)
    assert profile.layers[1].dead_neurons >= 1 and profile.layers[2].dead_neurons >= 2  # planted
    pairs = sum(f.size for f in fired.values())
    assert profile.sparsity == pytest.approx(1 - sum(f.sum() for f in fired.values()) / pairs)


def test_the_profile_is_in_the_json_and_reads_back(scanned) -> None:
    report, _ = scanned
    data = report.to_dict()
    validate(data)
    assert set(data["profile"]["layers"][0]) >= {"site", "layer", "sparsity", "hot", "dead_neurons"}
    assert Report.from_dict(data) == report


def test_a_cnn_or_mlp_report_has_no_profile_key() -> None:
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    cnn = torch.nn.Sequential(torch.nn.Conv2d(1, 3, 3), torch.nn.ReLU())
    for model, x in ((mlp, np.ones((6, 4), np.float32)), (cnn, np.ones((2, 1, 5, 5), np.float32))):
        report = reludoctor.scan(model, x)
        assert report.profile is None and "profile" not in report.to_dict()


def test_merged_reports_profile_the_whole_data(scanned) -> None:
    from dataclasses import replace

    from reludoctor.report.merge import merge_reports

    model = TokenModel(blocks=3)
    ids = token_ids(12)
    parts = [reludoctor.scan(model, {"input_ids": part}) for part in (ids[:5], ids[5:])]
    parts = [replace(p, model=replace(p.model, sha256="0" * 64)) for p in parts]  # as from one file
    assert merge_reports(parts).profile == scanned[0].profile


@pytest.mark.parametrize(("counts", "sizes"), [
    ([0, 0, 0], [0, 0, 0]),  # nothing fired: the empty set covers it
    ([5, 0, 0], [1, 1, 1]),
    ([1, 1, 1, 1, 1], [4, 5, 5]),  # ties: 4 of 5 cover exactly 80%
    ([8, 1, 1], [1, 2, 3]),  # 8/10 covers exactly 80%; 9/10 exactly 90%
    ([98, 1, 1], [1, 1, 2]),
])
def test_hot_set_size_exact_at_the_boundary(counts, sizes) -> None:
    array = np.asarray(counts, np.int64)
    assert [hot_set_size(array, p) for p in (80, 90, 99)] == sizes


@pytest.mark.parametrize(("module", "index"), [
    ("model.decoder.layers.3.activation_fn", 3), ("transformer.h.11.mlp.act", 11),
    ("encoder.layer.0.intermediate.intermediate_act_fn", 0), ("head_act", None), ("", None),
    ("blocks.2.experts.5.act", 2)])
def test_block_index_is_the_first_numeric_component(module, index) -> None:
    assert block_index(module) == index
