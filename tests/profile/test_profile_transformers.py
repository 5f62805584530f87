"""A random-init Hugging Face OPT: its FFN flattens tokens into the batch axis ([N*T, F])."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from profile_kit import expected_layer, fired_by_hooks

import reludoctor
from reludoctor.report import powerinfer


@pytest.fixture(scope="module")
def opt():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=3, ffn_dim=32,
                                    num_attention_heads=2, max_position_embeddings=32,
                                    word_embed_proj_dim=16)
    model = transformers.OPTForCausalLM(config).eval()
    ids = np.random.default_rng(0).integers(0, 64, size=(5, 9)).astype(np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    return model, feed


def test_opt_ffn_sites_are_profiled_and_exported(opt, tmp_path) -> None:
    model, feed = opt
    fired = fired_by_hooks(model, feed)
    report = reludoctor.scan(model, feed, method="dispatch")
    layers = report.profile.layers
    assert [layer.layer for layer in layers] == [0, 1, 2]
    for layer in layers:
        want = expected_layer(fired[layer.module])
        assert layer.tokens == 5 * 9 and layer.activations == want["activations"]
        assert [h.neurons for h in layer.hot] == want["hot"]
        assert layer.sparsity == pytest.approx(want["sparsity"], rel=1e-12)
    powerinfer.export(report, tmp_path)
    for i, layer in enumerate(layers):
        tensor = torch.load(tmp_path / f"activation_{i}.pt", weights_only=True)
        np.testing.assert_array_equal(tensor.numpy(), expected_layer(fired[layer.module])["counts"])


def test_padding_is_left_out_of_the_profile(opt) -> None:
    """A padded batch (right padding, attention_mask 0): the profile counts real tokens only,
    equal to the hooks' firing matrix with the padded rows removed."""
    model, feed = opt
    mask = np.ones_like(feed["attention_mask"])
    for row, length in enumerate((9, 4, 6, 2, 7)):
        mask[row, length:] = 0
    padded = {"input_ids": feed["input_ids"], "attention_mask": mask}
    real = mask.reshape(-1).astype(bool)  # OPT's FFN rows are [N*T] in row-major order
    fired = {name: matrix[real] for name, matrix in fired_by_hooks(model, padded).items()}
    report = reludoctor.scan(model, padded, method="dispatch")
    assert [layer.layer for layer in report.profile.layers] == [0, 1, 2]
    for layer in report.profile.layers:
        want = expected_layer(fired[layer.module])
        assert layer.tokens == int(mask.sum()) and layer.activations == want["activations"]
        assert [h.neurons for h in layer.hot] == want["hot"]
