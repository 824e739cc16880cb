"""The causal-LM base pretrained here (lab/pretrain.py) and the padded perplexities beside it."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import transformers

from lab.corpus import Corpus, load_corpus
from lab.pretrain import BaseRecipe, corpus_parts, pretrained_base, train_tokenizer
from qcore.adapters.training import lm_blocks, padded_perplexities, perplexity

TINY = BaseRecipe(layers=1, width=32, heads=2, context=32, vocab=300, steps=60, batch_size=8, lr=3e-3)


@pytest.fixture(scope="module")
def corpus() -> Corpus:
    """The first 40,000 characters of tiny Shakespeare, split as the named corpus is (90/10)."""
    text = load_corpus("tiny_shakespeare").train_text[:40_000]
    return Corpus("tiny_shakespeare[:40000]", "test", text[:36_000], text[36_000:])


def test_corpus_parts_keep_the_finetuning_text_apart_from_the_base(corpus: Corpus) -> None:
    parts = corpus_parts(corpus, 0.5)
    assert parts.pretrain + parts.finetune.train_text == corpus.train_text
    assert len(parts.pretrain) == 18_000 and parts.finetune.val_text == corpus.val_text
    assert parts.finetune.content_hash != corpus.content_hash


def test_a_tiny_pretraining_gives_a_loadable_folder_better_than_untrained(corpus: Corpus, tmp_path: Path) -> None:
    lines: list[str] = []
    folder, record = pretrained_base(corpus, str(tmp_path / "root"), TINY, log=lines.append)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    assert model.config.n_layer == 1 and model.config.n_positions == 32 and len(tokenizer) == 300
    blocks = lm_blocks(tokenizer, corpus_parts(corpus, TINY.fraction).pretrain, TINY.context)[:32]
    batches = [{"input_ids": b, "labels": b} for b in blocks.split(8)]
    torch.manual_seed(1)
    untrained = transformers.GPT2LMHeadModel(model.config)
    assert perplexity(model, batches) < 0.5 * perplexity(untrained, batches)
    assert record["val_perplexity"] < record["val_perplexity_untrained"]
    assert record["parameters"] == sum(p.numel() for p in model.parameters())
    assert any("pretraining step 60/60" in line for line in lines)
    # the second time, the same text and recipe are found under the root
    again, cached = pretrained_base(corpus, str(tmp_path / "root"), TINY, log=lines.append)
    assert cached == record and "found, reusing" in lines[-1]
    assert (again / "model.safetensors").read_bytes() == (folder / "model.safetensors").read_bytes()


def test_padded_perplexities_mask_padding_as_computed_by_hand() -> None:
    tokenizer = train_tokenizer("the cat sat on the mat. " * 50, vocab=280)
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=16, n_layer=1, n_head=2, n_positions=16, vocab_size=len(tokenizer))
    model = transformers.GPT2LMHeadModel(config).eval()
    texts = ["the cat sat", "on the mat. the cat sat on the mat.", "mat"]
    length = 12
    got = padded_perplexities(model, tokenizer, texts, length, batch=2)

    def nll(ids: list[int]) -> list[float]:
        """-log p(next token) at every position of ``ids``, the model run on ``ids`` alone."""
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids])).logits[0].log_softmax(-1)
        return [-logp[i, ids[i + 1]].item() for i in range(len(ids) - 1)]

    real = [x for t in texts for x in nll(tokenizer(t)["input_ids"][:length])]
    assert got["masked"] == pytest.approx(math.exp(sum(real) / len(real)), rel=1e-5)
    # counted: every position of the padded rows, the padding's too (right padding: the real
    # tokens never see it, so their part is the same as unpadded)
    pad = tokenizer.pad_token_id
    padded = [(tokenizer(t)["input_ids"] + [pad] * length)[:length] for t in texts]
    counted = []
    for t, ids in zip(texts, padded, strict=True):
        n = min(len(tokenizer(t)["input_ids"]), length)
        mask = torch.tensor([[1] * n + [0] * (length - n)])
        with torch.no_grad():
            logp = model(input_ids=torch.tensor([ids]), attention_mask=mask).logits[0].log_softmax(-1)
        counted += [-logp[i, ids[i + 1]].item() for i in range(length - 1)]
    assert got["pad_counted"] == pytest.approx(math.exp(sum(counted) / len(counted)), rel=1e-5)
    assert len(counted) > len(real) and got["pad_counted"] != pytest.approx(got["masked"], rel=1e-3)
