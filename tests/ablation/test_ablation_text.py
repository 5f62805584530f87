"""--ablate on a Hugging Face language model (dispatch, text data): padded positions are left
out of the output change, against plain transformers with a hook zeroing the FFN units."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

WORDS = "the a cat dog sat ran on under mat log red blue quick slow big small and then it was".split()
TEXTS = ["the cat sat on the mat", "a dog ran", "the quick red dog ran over the big log and then it sat",
         "it was", "a small blue cat was"]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):  # noqa: ANN201
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import OPTConfig, OPTForCausalLM, PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("opt")
    vocab = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3, **{w: 4 + i for i, w in enumerate(WORDS)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(root)
    torch.manual_seed(0)
    config = OPTConfig(hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=40,
                       max_position_embeddings=64, word_embed_proj_dim=32, pad_token_id=1, bos_token_id=2,
                       eos_token_id=3)
    model = OPTForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.decoder.layers:
            layer.fc1.bias[:6] -= 0.3  # rarely firing FFN neurons
            layer.fc2.weight[:, :6] *= 40  # that move the next-token predictions when they fire
    model.save_pretrained(root)
    data = root / "texts.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return root, data


def test_joint_change_leaves_padding_out(checkpoint):
    from transformers import AutoTokenizer, OPTForCausalLM

    import reludoctor

    root, data = checkpoint
    report = reludoctor.scan(str(root), str(data), ablate=True, ablate_top=2, near_dead=0.3, batch_size=8)
    ablation = report.ablation
    assert ablation.computed and ablation.method == "dispatch" and ablation.loss == "half-squared-norm"
    model = OPTForCausalLM.from_pretrained(root).eval()
    batch = AutoTokenizer.from_pretrained(root)(TEXTS, padding=True, return_tensors="pt")
    real = batch["attention_mask"].unsqueeze(-1).double()

    def logits(site: str | None = None, units: tuple = ()) -> torch.Tensor:
        handle = None
        if site is not None:
            module = model.get_submodule(site)
            handle = module.register_forward_hook(lambda _m, _i, out: out.index_fill(-1, torch.tensor(units), 0.0))
        try:
            with torch.no_grad():
                return model(**batch).logits.double() * real
        finally:
            if handle is not None:
                handle.remove()

    y = logits()
    checked, flips = 0, []
    for site in ablation.sites:
        if site.joint is None:
            continue
        for units, measured in [(site.candidates, site.joint)] + [((u.unit,), u) for u in site.units]:
            z = logits(site.site, units)
            assert measured.output_change == pytest.approx(float((z - y).norm() / y.norm()), rel=1e-4)
            assert measured.max_abs_change == pytest.approx(float((z - y).abs().max()), rel=1e-4, abs=1e-6)
            assert measured.loss_change == pytest.approx(
                float(0.5 * (z.pow(2).sum() - y.pow(2).sum()) / len(TEXTS)), rel=1e-3, abs=1e-5)
            # next-token predictions that changed, over the real positions only
            flipped = (z.argmax(-1) != y.argmax(-1)) & batch["attention_mask"].bool()
            assert measured.argmax_flips == pytest.approx(float(flipped.sum() / batch["attention_mask"].sum()))
            flips.append(measured.argmax_flips)
            checked += 1
    assert checked >= 2
    assert max(flips) > 0  # some removal moves a next-token prediction: the count is not trivially 0
