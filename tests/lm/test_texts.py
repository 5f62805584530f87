"""Text calibration data: .jsonl / .txt tokenized with a local tokenizer, padded per batch or
packed, or pre-tokenized in an .npz; per-neuron counts against forward hooks over the same tokens."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reludoctor import scan
from reludoctor.errors import DataError, UsageError
from tests.lm.conftest import TEXTS, build_tokenizer, ffn_oracle, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread_seeded")
OPTIONS = dict(method="dispatch", device="cpu")


@pytest.fixture
def tokenizer_dir(tmp_path: Path) -> Path:
    return build_tokenizer(tmp_path / "tokenizer")


def encode(folder: Path, texts: list[str]) -> list[np.ndarray]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    return [np.asarray(ids, np.int64) for ids in tokenizer(texts)["input_ids"]]


def fc1s(model) -> dict:
    return {f"layer{i}": layer.fc1 for i, layer in enumerate(model.model.decoder.layers)}


def assert_matches_oracle(report, oracle: dict, positions: int) -> None:
    assert len(report.sites) == len(oracle)
    for site, expected in zip(report.sites, oracle.values()):
        assert site.positions == expected["positions"] == positions, site.name
        np.testing.assert_array_equal(site.accumulators.positive_count, expected["positive"].numpy())
        np.testing.assert_allclose(site.max_preactivation, expected["max"].double().numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("suffix", [".jsonl", ".txt"])
def test_documents_match_oracle(tmp_path: Path, tokenizer_dir: Path, suffix: str) -> None:
    path = tmp_path / f"texts{suffix}"
    lines = [json.dumps({"text": t, "source": "x"}) for t in TEXTS] if suffix == ".jsonl" else TEXTS
    path.write_text("\n".join(lines) + "\n\n")  # a blank line is no document
    before = path.read_bytes()
    model = tiny_model("opt")
    report = scan(model, str(path), tokenizer=str(tokenizer_dir), batch_size=2, **OPTIONS)
    tokens = encode(tokenizer_dir, TEXTS)
    oracle = ffn_oracle(model, [(ids[None], np.ones((1, ids.size), np.int64)) for ids in tokens], fc1s(model))
    assert_matches_oracle(report, oracle, sum(ids.size for ids in tokens))
    assert report.calibration.samples == len(TEXTS)
    assert path.read_bytes() == before


def test_pack_and_max_length(tmp_path: Path, tokenizer_dir: Path, texts_jsonl: Path) -> None:
    model = tiny_model("opt")
    tokens = np.concatenate(encode(tokenizer_dir, TEXTS))
    report = scan(model, str(texts_jsonl), tokenizer=str(tokenizer_dir), pack=True, max_length=8,
                  batch_size=3, **OPTIONS)
    rows = [tokens[i:i + 8] for i in range(0, tokens.size, 8)]
    assert report.calibration.samples == len(rows)
    oracle = ffn_oracle(model, [(r[None], np.ones((1, r.size), np.int64)) for r in rows], fc1s(model))
    assert_matches_oracle(report, oracle, tokens.size)
    # without --pack, documents longer than --max-length are cut, and the scan says so
    notes = []
    cut = scan(model, str(texts_jsonl), tokenizer=str(tokenizer_dir), max_length=4, on_warning=notes.append,
               **OPTIONS)
    lengths = [len(ids) for ids in encode(tokenizer_dir, TEXTS)]
    assert cut.sites[0].positions == sum(min(n, 4) for n in lengths)
    assert any("cut" in note for note in notes)


def test_pretokenized_npz(tmp_path: Path, tokenizer_dir: Path) -> None:
    tokens = encode(tokenizer_dir, TEXTS)
    width = max(ids.size for ids in tokens)
    ids = np.ones((len(tokens), width), np.int64)
    mask = np.zeros_like(ids)
    for row, seq in enumerate(tokens):
        ids[row, :seq.size], mask[row, :seq.size] = seq, 1
    path = tmp_path / "tokens.npz"
    np.savez(path, input_ids=ids, attention_mask=mask)
    model = tiny_model("opt")
    report = scan(model, str(path), batch_size=2, **OPTIONS)
    oracle = ffn_oracle(model, [(ids, mask)], fc1s(model))
    assert_matches_oracle(report, oracle, int(mask.sum()))


@pytest.mark.parametrize(("content", "message"), [
    ('{"text": "a cat"}\n{"body": "no text"}\n', ':2: no "text" field'),
    ('{"text": "a cat"}\nnot json\n', ":2: not a JSON object"),
    ('{"text": 3}\n', '"text" is a int'),
    ("\n\n", "no documents"),
])
def test_bad_text_files(tmp_path: Path, tokenizer_dir: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message.replace("(", r"\(")):
        scan(tiny_model("opt"), str(path), tokenizer=str(tokenizer_dir), **OPTIONS)


def test_tokenizer_refusals(tmp_path: Path, texts_jsonl: Path) -> None:
    model = tiny_model("opt")
    with pytest.raises(UsageError, match="needs a tokenizer"):
        scan(model, str(texts_jsonl), **OPTIONS)
    with pytest.raises(DataError, match="no such folder"):
        scan(model, str(texts_jsonl), tokenizer=str(tmp_path / "missing"), **OPTIONS)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="cannot load a tokenizer"):
        scan(model, str(texts_jsonl), tokenizer=str(tmp_path / "empty"), **OPTIONS)
    with pytest.raises(UsageError, match="only for text data"):
        scan(model, np.zeros((2, 3), np.int64), pack=True, **OPTIONS)


def test_no_synthetic_token_ids() -> None:
    with pytest.raises(UsageError, match="token ids"):
        scan(tiny_model("opt"), None, **OPTIONS)
