"""A small pretrained causal LM, made here: the base that QPA, QTHA and LoRA fine-tune for ``lm``.

No GPT-2 weights can be fetched on an offline machine, and adapting a randomly initialised
model measures nothing a paper claims. So the lab pretrains its own base: a GPT-2-architecture
model of a few million parameters, with a byte-level BPE tokenizer trained on the same text,
on the first part of the corpus (:func:`corpus_parts`); the adapters are then fine-tuned on the
part after it, which the base never saw, and validated on the corpus's last 10 %. The result is
a plain Hugging Face model folder, cached under the artifact root by the content of the text
and the recipe (:class:`BaseRecipe`), so every later run reuses it; ``--model`` replaces it with
any local or hub folder.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import transformers
from tokenizers import ByteLevelBPETokenizer

from lab.artifacts import (
    atomic_write_bytes,
    download_folder,
    hash_json,
    join_url,
    read_bytes,
    sha256_bytes,
    upload_folder,
)
from lab.corpus import Corpus
from lab.params.peft import BaseRecipe
from qcore.adapters.training import lm_blocks, perplexity

END_OF_TEXT = "<|endoftext|>"  # GPT-2's one special token: padding and end of text


@dataclass(frozen=True)
class CorpusParts:
    """The corpus cut three ways: the base's text, the fine-tuning text it never saw, validation."""

    pretrain: str
    finetune: Corpus


def corpus_parts(corpus: Corpus, fraction: float) -> CorpusParts:
    """The first ``fraction`` of the training text pretrains; the rest fine-tunes."""
    cut = int(len(corpus.train_text) * fraction)
    finetune = Corpus(f"{corpus.name}[{fraction:g}:]", corpus.source, corpus.train_text[cut:], corpus.val_text)
    return CorpusParts(corpus.train_text[:cut], finetune)


def pretrained_base(
    corpus: Corpus, root: str, recipe: BaseRecipe = BaseRecipe(), log: Callable[[str], None] = print
) -> tuple[Path, dict[str, Any]]:
    """The base's local folder and its record (recipe, sizes, perplexities, seconds): from the
    cache under ``root`` when this text and recipe were pretrained before, else made now."""
    text = corpus_parts(corpus, recipe.fraction).pretrain
    key = hash_json({"recipe": asdict(recipe), "text": sha256_bytes(text.encode()), "v": 1})
    url = join_url(root, "pretrained", key)
    local = Path(tempfile.gettempdir()) / "qllm-bases" / key
    if (raw := read_bytes(join_url(url, "base.json"))) is not None:
        log(f"pretrained base {key[:12]} found, reusing it")
        if not (local / "base.json").is_file():
            download_folder(url, local)
        return local, json.loads(raw)
    shutil.rmtree(local, ignore_errors=True)  # what an interrupted run left here
    record = pretrain(recipe, text, corpus.val_text, local, log)
    record["key"] = key
    upload_folder(local, url)
    raw = json.dumps(record, indent=2).encode()
    atomic_write_bytes(join_url(url, "base.json"), raw)  # last: a half-uploaded base is never found as done
    (local / "base.json").write_bytes(raw)
    return local, record


def pretrain(recipe: BaseRecipe, text: str, val_text: str, out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """Train the tokenizer and the model on ``text`` into ``out``; the record of what it did."""
    t0 = time.perf_counter()
    tokenizer = train_tokenizer(text, recipe.vocab)
    torch.manual_seed(recipe.seed)
    config = recipe.model_config(len(tokenizer), tokenizer.eos_token_id)
    model = transformers.GPT2LMHeadModel(config)
    blocks = lm_blocks(tokenizer, text, recipe.context)
    val = lm_blocks(tokenizer, val_text, recipe.context)[:64]
    untrained = perplexity(model, [{"input_ids": b, "labels": b} for b in val.split(recipe.batch_size)])
    optimiser = torch.optim.AdamW(model.parameters(), lr=recipe.lr, weight_decay=0.1)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, lambda s: warmup_cosine(s, recipe.steps))
    generator = torch.Generator().manual_seed(recipe.seed)
    model.train()
    loss = torch.tensor(math.nan)
    for step in range(recipe.steps):
        batch = blocks[torch.randint(len(blocks), (recipe.batch_size,), generator=generator)]
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimiser.step()
        schedule.step()
        optimiser.zero_grad(set_to_none=True)
        if (step + 1) % max(1, recipe.steps // 10) == 0:
            log(f"pretraining step {step + 1}/{recipe.steps}: loss {loss.item():.3f}")
    trained = perplexity(model, [{"input_ids": b, "labels": b} for b in val.split(recipe.batch_size)])
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {
        "recipe": asdict(recipe),
        "parameters": sum(p.numel() for p in model.parameters()),
        "pretrain_tokens": blocks.numel(),
        "final_train_loss": float(loss.item()),
        "val_perplexity_untrained": untrained,
        "val_perplexity": trained,
        "seconds": time.perf_counter() - t0,
    }


def train_tokenizer(text: str, vocab: int) -> transformers.PreTrainedTokenizerFast:
    """A byte-level BPE of ``vocab`` tokens learnt on ``text`` (GPT-2's scheme), as a
    Hugging Face tokenizer whose one special token, end of text, also pads."""
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator([text], vocab_size=vocab, min_frequency=2, special_tokens=[END_OF_TEXT])
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=bpe._tokenizer,
        bos_token=END_OF_TEXT,
        eos_token=END_OF_TEXT,
        unk_token=END_OF_TEXT,
        pad_token=END_OF_TEXT,
        model_max_length=10**9,  # the model's context limits a block, not the tokenizer
    )


def warmup_cosine(step: int, steps: int, warmup: float = 0.05) -> float:
    """The learning-rate factor: linear warm-up over the first 5 % of steps, then cosine to 10 %."""
    first = max(1, int(steps * warmup))
    if step < first:
        return (step + 1) / first
    progress = (step - first) / max(1, steps - first)
    return 0.1 + 0.45 * (1 + math.cos(math.pi * progress))


def generated_samples(folder: Path, prompts: list[str], tokens: int = 48, seed: int = 0) -> str:
    """What the causal LM in ``folder`` writes after each prompt (top-40 sampling, seeded, so
    the same model writes the same text): a reader's check that a perplexity means something."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
    out = []
    for prompt in prompts:
        torch.manual_seed(seed)
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            more = model.generate(
                ids,
                max_new_tokens=tokens,
                do_sample=True,
                top_k=40,
                pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id,
            )
        out.append(str(tokenizer.decode(more[0], skip_special_tokens=True)))
    return "\n\n---\n\n".join(out)


def speech_prompts(text: str, count: int = 3) -> list[str]:
    """The speaker lines (``NAME:``) of the first ``count`` speeches of ``text``."""
    speeches = [s.strip() for s in text.split("\n\n") if s.strip()]
    return [s.splitlines()[0] + "\n" for s in speeches[:count]]
