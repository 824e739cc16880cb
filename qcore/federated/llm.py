"""Each client's language model: a LoRA fine-tune (peft) of a sequence classifier on the client's
own texts, whose loss is the yardstick the LLM-QFL controller holds the client's VQC to.

The paper fine-tunes GPT-2, Llama-3.2-1B or DeepSeek-7B with LoRA r = 8 on every client and reads
the last logged training loss. By default this fine-tunes the embedded all-MiniLM-L6-v2 with a
fresh classification head: any Hugging Face model folder that ``AutoModelForSequenceClassification``
loads works, with peft's default LoRA targets for its architecture unless ``target_modules`` names
them. Kept cheap on purpose (a few steps, short sequences): the controller needs a loss, not a
state-of-the-art classifier. The reported ``loss`` is measured after training, in eval mode, on up
to ``eval_examples`` of the client's texts, so it does not depend on dropout or the last batches.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from transformers import BatchEncoding


@dataclass(frozen=True)
class LLMSpec:
    """Every setting that changes the fine-tuned model's loss (the cache key uses all of them)."""

    steps: int = 20
    batch_size: int = 16
    max_length: int = 48
    lr: float = 2e-3
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.05
    eval_examples: int = 128
    target_modules: tuple[str, ...] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        small = {
            k: v
            for k, v in (
                ("steps", self.steps),
                ("batch_size", self.batch_size),
                ("rank", self.rank),
                ("eval_examples", self.eval_examples),
            )
            if v < 1
        }
        if small or self.max_length < 2 or not self.lr > 0:
            raise ValueError(
                f"LLM fine-tuning needs steps, batch_size, rank, eval_examples >= 1, "
                f"max_length >= 2 and lr > 0; got {self}"
            )


@dataclass(frozen=True)
class LLMResult:
    loss: float  # cross-entropy (nats) after fine-tuning, eval mode, on the client's texts
    accuracy: float
    train_loss: float  # mean over the last quarter of the training steps
    examples: int  # texts the loss was measured on
    trainable_parameters: int
    seconds: float


def finetune(
    folder: str | os.PathLike[str],
    texts: Sequence[str],
    labels: Sequence[int],
    num_classes: int,
    spec: LLMSpec = LLMSpec(),
) -> LLMResult:
    """LoRA-fine-tune the classifier in ``folder`` on ``(texts, labels)``; return its loss."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if len(texts) != len(labels) or not texts:
        raise ValueError(f"{len(texts)} texts and {len(labels)} labels: need the same positive number")
    start = time.perf_counter()
    folder = Path(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)  # the new head, the LoRA matrices and dropout
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=num_classes, local_files_only=True
        )
        if tokenizer.pad_token is None:  # GPT-style models: pad with end-of-text
            tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
        lora = LoraConfig(
            task_type=TaskType.SEQ_CLS,
            r=spec.rank,
            lora_alpha=spec.alpha,
            lora_dropout=spec.dropout,
            target_modules=list(spec.target_modules) if spec.target_modules else None,
        )
        model = get_peft_model(model, lora)
        encoded = tokenizer(list(texts), truncation=True, max_length=spec.max_length)
        y = torch.as_tensor(np.asarray(labels), dtype=torch.long)

        def batch(idx: Sequence[int]) -> BatchEncoding:  # input_ids, attention_mask as tensors
            rows = {k: [encoded[k][i] for i in idx] for k in ("input_ids", "attention_mask")}
            return tokenizer.pad(rows, return_tensors="pt")

        trainable = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(trainable, lr=spec.lr)
        rng = np.random.default_rng(spec.seed)
        order: list[int] = []
        losses = []
        model.train()
        for _ in range(spec.steps):
            if len(order) < spec.batch_size:  # walk through seeded permutations, epoch after epoch
                order += rng.permutation(len(texts)).tolist()
            idx, order = order[: spec.batch_size], order[spec.batch_size :]
            loss = model(**batch(idx), labels=y[idx]).loss
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())

        model.eval()
        probe = rng.permutation(len(texts))[: spec.eval_examples].tolist()
        total, correct = 0.0, 0
        with torch.no_grad():
            for s in range(0, len(probe), 64):
                idx = probe[s : s + 64]
                out = model(**batch(idx), labels=y[idx])
                total += float(out.loss) * len(idx)
                correct += int((out.logits.argmax(-1) == y[idx]).sum())
    tail = losses[-max(1, len(losses) // 4) :]
    return LLMResult(
        loss=total / len(probe),
        accuracy=correct / len(probe),
        train_loss=float(np.mean(tail)),
        examples=len(probe),
        trainable_parameters=sum(p.numel() for p in trainable),
        seconds=time.perf_counter() - start,
    )
