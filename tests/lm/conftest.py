"""Tiny language models and a tokenizer, built in code (nothing is downloaded), and the
independent oracle: plain forward hooks counting each FFN neuron over the real tokens only."""

from __future__ import annotations

from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = ("the a cat dog sat ran on under mat log red blue quick slow big small and then it was "
         "very not here there over near far up down in out").split()
TEXTS = [
    "the cat sat on the mat",
    "a dog ran",
    "the quick red dog ran over the big log and then it sat down",
    "it was here",
    "a small blue cat was not there",
]


def build_tokenizer(folder: Path) -> Path:
    """A WordLevel tokenizer saved as tokenizer.json (data, no code), with pad/bos/eos/unk."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3}
    vocab.update({word: 4 + index for index, word in enumerate(WORDS)})
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>",
                                        bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    return folder


def opt_config(**overrides):
    from transformers import OPTConfig

    settings = dict(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2,
                    vocab_size=100, max_position_embeddings=128, word_embed_proj_dim=32,
                    pad_token_id=1, bos_token_id=2, eos_token_id=3)
    settings.update(overrides)
    return OPTConfig(**settings)


def llama_config(**overrides):
    from transformers import LlamaConfig

    settings = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=2, vocab_size=100, hidden_act="relu",
                    max_position_embeddings=128, pad_token_id=1, bos_token_id=2, eos_token_id=3)
    settings.update(overrides)
    return LlamaConfig(**settings)


def tiny_model(kind: str, seed: int = 0, **overrides):
    from transformers import LlamaForCausalLM, OPTForCausalLM

    torch.manual_seed(seed)
    if kind == "opt":
        model = OPTForCausalLM(opt_config(**overrides))
    else:
        model = LlamaForCausalLM(llama_config(**overrides))
    # Random init puts about half the neurons at each sign: shift some biases/weights so that
    # a few neurons are dead and the counts are not all alike.
    return model.eval()


def save_model(model, folder: Path, tokenizer: bool = True) -> Path:
    model.save_pretrained(folder, safe_serialization=True)
    if tokenizer:
        build_tokenizer(folder)
    return folder


@pytest.fixture
def opt_dir(tmp_path: Path) -> Path:
    return save_model(tiny_model("opt"), tmp_path / "opt")


@pytest.fixture
def llama_dir(tmp_path: Path) -> Path:
    return save_model(tiny_model("llama"), tmp_path / "llama")


@pytest.fixture
def texts_jsonl(tmp_path: Path) -> Path:
    import json

    path = tmp_path / "texts.jsonl"
    path.write_text("".join(json.dumps({"text": text, "id": i}) + "\n" for i, text in enumerate(TEXTS)))
    return path


def ffn_oracle(model, batches, modules: dict[str, object]) -> dict[str, dict]:
    """Per neuron over the real tokens only: positive count, max pre-activation, positions.

    ``modules``: name -> the module whose *output* is the ReLU's input (a Linear), hooked
    with plain forward hooks; ``batches``: (input_ids, attention_mask) pairs."""
    found: dict[str, dict] = {}
    current = {}

    def hook(name):
        def record(_module, _inputs, output):
            mask = current["mask"].bool()
            values = output.detach().float()
            values = values.reshape(-1, values.shape[-1])[mask.reshape(-1)] if values.ndim == 2 \
                else values[mask]
            entry = found.setdefault(name, {"positive": 0, "max": None, "positions": 0})
            entry["positive"] = entry["positive"] + (values > 0).sum(0)
            top = values.amax(0)
            entry["max"] = top if entry["max"] is None else torch.maximum(entry["max"], top)
            entry["positions"] += values.shape[0]
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in modules.items()]
    try:
        with torch.no_grad():
            for ids, mask in batches:
                current["mask"] = torch.as_tensor(mask)
                model(input_ids=torch.as_tensor(ids), attention_mask=torch.as_tensor(mask))
    finally:
        for handle in handles:
            handle.remove()
    return found


@pytest.fixture
def cli():
    """``reludoctor ARGS`` in-process, stdout and stderr apart, a wide terminal."""
    from typer.testing import CliRunner

    from reludoctor.cli import app

    def invoke(*args: object):
        env = {"COLUMNS": "200", "TTY_COMPATIBLE": None, "FORCE_COLOR": None, "NO_COLOR": None}
        return CliRunner().invoke(app, [str(a) for a in args], env=env)

    return invoke


@pytest.fixture
def hf_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty local Hugging Face cache (the hub's layout), used instead of the user's."""
    from huggingface_hub import constants

    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    return cache


def cache_model(cache: Path, model_id: str, source: Path) -> None:
    """Place a checkpoint folder in the cache as the hub would (refs/main -> snapshots/<commit>)."""
    import shutil

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / ("models--" + model_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(source, repo / "snapshots" / commit)
