"""Hugging Face checkpoints as they are: a save_pretrained folder (safetensors) or a cached
model id, scanned from the command line with text data; the refusals exit 2 with one line."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from tests.cli.reludoctor_cli_checks import assert_input_error
from tests.lm.conftest import build_tokenizer, cache_model, ffn_oracle, save_model, tiny_model

pytestmark = pytest.mark.usefixtures("one_thread_seeded")


def digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def scan_json(cli, *args) -> dict:
    result = cli("scan", *args, "--device", "cpu", "--json", "-", "-q")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("kind", ["opt", "llama"])
def test_folder_and_texts_end_to_end(cli, tmp_path: Path, texts_jsonl: Path, kind: str) -> None:
    from transformers import AutoTokenizer

    folder = save_model(tiny_model(kind), tmp_path / kind)
    before = digests(folder), texts_jsonl.read_bytes()
    report = scan_json(cli, folder, "--data", texts_jsonl, "--batch-size", "2")
    assert report["model"]["format"] == "huggingface"
    assert report["model"]["method"] == "dispatch"
    assert report["calibration"]["samples"] == 5
    # the oracle: the same checkpoint loaded by transformers, one document at a time
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    layers = model.model.decoder.layers if kind == "opt" else model.model.layers
    feeds = {str(i): (layer.fc1 if kind == "opt" else layer.mlp.gate_proj) for i, layer in enumerate(layers)}
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    texts = [json.loads(line)["text"] for line in texts_jsonl.read_text().splitlines()]
    tokens = [np.asarray(ids)[None] for ids in tokenizer(texts)["input_ids"]]
    oracle = ffn_oracle(model, [(ids, np.ones_like(ids)) for ids in tokens], feeds)
    assert len(report["sites"]) == len(oracle)
    for site, expected in zip(report["sites"], oracle.values()):
        assert site["positions"] == expected["positions"] == sum(ids.size for ids in tokens)
        np.testing.assert_array_equal(site["accumulators"]["positive_count"], expected["positive"].numpy())
    assert (digests(folder), texts_jsonl.read_bytes()) == before


def test_bf16_weights_and_dtype(cli, tmp_path: Path, texts_jsonl: Path) -> None:
    import torch

    folder = save_model(tiny_model("llama").to(torch.bfloat16), tmp_path / "bf16")
    report = scan_json(cli, folder, "--data", texts_jsonl, "--dtype", "bf16")
    assert report["dtype"] == "bfloat16"
    assert len(report["sites"]) == 2 and report["sites"][0]["units"] == 64
    report = scan_json(cli, folder, "--data", texts_jsonl, "--pack", "--max-length", "8")
    assert report["calibration"]["samples"] == 5  # 33 tokens in rows of 8
    assert [site["positions"] for site in report["sites"]] == [33, 33]


def test_cached_model_id(cli, tmp_path: Path, hf_cache: Path, texts_jsonl: Path) -> None:
    cache_model(hf_cache, "tiny-org/tiny-opt", save_model(tiny_model("opt"), tmp_path / "src"))
    report = scan_json(cli, "tiny-org/tiny-opt", "--data", texts_jsonl)
    assert report["model"]["path"] == "tiny-org/tiny-opt"
    assert report["model"]["format"] == "huggingface"


def _pickle_only(folder: Path) -> list[str]:
    model = tiny_model("opt")
    model.config.save_pretrained(folder)
    import torch

    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    return ["pytorch_model.bin", "--trust-model"]


def _remote_code(folder: Path) -> list[str]:
    save_model(tiny_model("opt"), folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "modeling_evil.py").write_text("raise SystemExit('executed')\n")
    return ["auto_map"]


def _no_weights(folder: Path) -> list[str]:
    tiny_model("opt").config.save_pretrained(folder)
    return ["no weights"]


def _bad_config(folder: Path) -> list[str]:
    folder.mkdir()
    (folder / "config.json").write_text("{not json")
    return ["config.json", "not valid JSON"]


@pytest.mark.parametrize("build", [_pickle_only, _remote_code, _no_weights, _bad_config])
def test_folder_refusals(cli, tmp_path: Path, texts_jsonl: Path, build) -> None:  # noqa: ANN001
    folder = tmp_path / "model"
    mentions = build(folder)
    before = digests(folder)
    result = cli("scan", folder, "--data", texts_jsonl, "--device", "cpu")
    assert_input_error(result.exit_code, result.stdout, result.stderr, *mentions)
    assert digests(folder) == before


def test_uncached_id_and_cli_refusals(cli, tmp_path: Path, hf_cache: Path, texts_jsonl: Path) -> None:
    result = cli("scan", "nobody/nothing", "--data", texts_jsonl)
    assert_input_error(result.exit_code, result.stdout, result.stderr, "nobody/nothing", "Hugging Face cache")
    folder = save_model(tiny_model("opt"), tmp_path / "opt")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": "no text field"}\n')
    result = cli("scan", folder, "--data", bad)
    assert_input_error(result.exit_code, result.stdout, result.stderr, "bad.jsonl:1", '"text"')
    result = cli("scan", folder, "--data", texts_jsonl, "--method", "export")
    assert_input_error(result.exit_code, result.stdout, result.stderr, "--method export")
    result = cli("scan", folder, "--data", texts_jsonl, "--tokenizer", tmp_path / "none")
    assert_input_error(result.exit_code, result.stdout, result.stderr, "--tokenizer")


def test_pickled_weights_with_trust(cli, tmp_path: Path, texts_jsonl: Path) -> None:
    folder = tmp_path / "model"
    _pickle_only(folder)
    report = scan_json(cli, folder, "--data", texts_jsonl, "--trust-model",
                       "--tokenizer", build_tokenizer(tmp_path / "tokenizer"))
    assert report["model"]["format"] == "huggingface" and len(report["sites"]) == 2


def test_fix_refuses_checkpoints(cli, tmp_path: Path, texts_jsonl: Path) -> None:
    folder = save_model(tiny_model("opt"), tmp_path / "opt")
    result = cli("fix", folder, "--data", texts_jsonl, "--prune-dead", "-o", tmp_path / "out.pt2")
    assert_input_error(result.exit_code, result.stdout, result.stderr, "does not edit Hugging Face")
    assert not (tmp_path / "out.pt2").exists()


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_weights_match_hooks_on_the_same_weights(cli, tmp_path: Path, texts_jsonl: Path,
                                                                  dtype: str) -> None:
    """fp16 and bf16 checkpoints scan in their own precision: per-neuron counts and maxima equal
    forward hooks on the same half-precision model, over the same real tokens (one document
    per forward, so no padding)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = save_model(tiny_model("opt").to(getattr(torch, dtype)), tmp_path / dtype)
    report = scan_json(cli, folder, "--data", texts_jsonl, "--batch-size", "2")
    model = AutoModelForCausalLM.from_pretrained(str(folder), local_files_only=True).eval()
    assert next(model.parameters()).dtype == getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    texts = [json.loads(line)["text"] for line in texts_jsonl.read_text().splitlines()]
    tokens = [np.asarray(ids)[None] for ids in tokenizer(texts)["input_ids"]]
    feeds = {str(i): layer.fc1 for i, layer in enumerate(model.model.decoder.layers)}
    oracle = ffn_oracle(model, [(ids, np.ones_like(ids)) for ids in tokens], feeds)
    for site, expected in zip(report["sites"], oracle.values()):
        assert site["positions"] == expected["positions"]
        np.testing.assert_array_equal(site["accumulators"]["positive_count"], expected["positive"].numpy())
        np.testing.assert_array_equal(np.asarray(site["max_preactivation"], np.float32), expected["max"].numpy())


def test_a_config_bigger_than_its_weights_is_refused_before_anything_is_allocated(cli, tmp_path: Path,
                                                                                    texts_jsonl: Path) -> None:
    """Untrusted folder: a small checkpoint whose config.json describes a much larger model
    (transformers would create the missing weights: 22 GB from a 340 KB folder before this
    check) is refused with one line; so are safetensors headers that lie about their size."""
    folder = save_model(tiny_model("opt"), tmp_path / "crafted")
    config = json.loads((folder / "config.json").read_text())
    config.update(hidden_size=2048, ffn_dim=8192, num_hidden_layers=24, num_attention_heads=32,
                  word_embed_proj_dim=2048)
    (folder / "config.json").write_text(json.dumps(config))
    before = digests(folder)
    result = cli("scan", folder, "--data", texts_jsonl)
    line = assert_input_error(result.exit_code, result.stdout, result.stderr, "parameters", "weights hold")
    assert "config.json" in line and digests(folder) == before

    weights = next((tmp_path / "crafted").glob("*.safetensors"))
    data = weights.read_bytes()
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + length])
    name = next(key for key in header if key != "__metadata__")
    header[name]["shape"] = [1 << 20, 1 << 20]  # 2**40 elements declared in a small file
    text = json.dumps(header).encode()
    weights.write_bytes(len(text).to_bytes(8, "little") + text + data[8 + length:])
    result = cli("scan", folder, "--data", texts_jsonl)
    assert_input_error(result.exit_code, result.stdout, result.stderr, "declares")
    weights.write_bytes((1 << 62).to_bytes(8, "little") + data[8:])  # header length past the end
    result = cli("scan", folder, "--data", texts_jsonl)
    assert_input_error(result.exit_code, result.stdout, result.stderr, "not a safetensors file")
