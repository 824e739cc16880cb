"""Sequence classification on a sentence transformer, read the way the encoder was trained.

A sentence transformer (a folder with ``modules.json``, such as the embedded all-MiniLM-L6-v2)
was trained to be read through its pooling module (MiniLM: the mean over the tokens, then unit
length), not through the ``[CLS]`` token. ``AutoModelForSequenceClassification`` puts its head on
``pooler(CLS)``, whose features carry almost nothing the encoder learnt: on frozen MiniLM that
head alone stays at the majority class of SST-2, while logistic regression on the mean-pooled
embeddings of the same frozen model reaches 0.79. So on a sentence transformer the fine-tuning
methods put a linear head on the model's own sentence embedding (:class:`PooledClassifier`);
any other model keeps the Hugging Face classifier.

A merged :class:`PooledClassifier` is saved as a plain Hugging Face folder of the encoder
(``from_pretrained`` loads it with ``AutoModel``) plus ``pooled_classifier.json`` and the head's
``classifier.safetensors``; :func:`load_classifier` loads either kind of folder.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import transformers
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.modeling_outputs import SequenceClassifierOutput

CONFIG_FILE = "pooled_classifier.json"
HEAD_FILE = "classifier.safetensors"
POOLINGS = ("mean", "cls", "max")


def sentence_pooling(folder: Path) -> tuple[str, bool] | None:
    """``(pooling, normalize)`` of a sentence-transformers folder, ``None`` for any other model."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        return None
    modules = json.loads(modules_file.read_text())
    pooling = next((m for m in modules if m["type"].endswith(".Pooling")), None)
    if pooling is None:
        return None
    config = json.loads((folder / pooling["path"] / "config.json").read_text())
    keys = {"mean": "pooling_mode_mean_tokens", "cls": "pooling_mode_cls_token", "max": "pooling_mode_max_tokens"}
    mode = next((p for p in POOLINGS if config.get(keys[p])), None)
    if mode is None:
        raise ValueError(f"{folder}: its pooling {config} is none of {POOLINGS}, the ones this lab reads")
    return mode, any(m["type"].endswith(".Normalize") for m in modules)


def pool(hidden: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """One vector per text from the token states ``(batch, tokens, width)`` (padding excluded)."""
    if mode == "cls":
        return hidden[:, 0]
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    if mode == "max":
        return hidden.masked_fill(weights == 0, torch.finfo(hidden.dtype).min).amax(dim=1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)


class PooledClassifier(nn.Module):
    """A linear head (``classifier``, trained in full as a new head is) on the encoder's pooled,
    optionally normalised sentence embedding; the encoder (``body``) is what an adapter adapts."""

    def __init__(self, body: transformers.PreTrainedModel, num_labels: int, pooling: str, normalize: bool) -> None:
        super().__init__()
        self.body, self.pooling, self.normalize = body, pooling, normalize
        self.config = body.config
        self.classifier = nn.Linear(body.config.hidden_size, num_labels)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs: Any) -> torch.Tensor:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask, **inputs).last_hidden_state
        pooled = pool(hidden, attention_mask, self.pooling)
        return nn.functional.normalize(pooled, dim=-1) if self.normalize else pooled

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        labels: torch.Tensor | None = None,
        **inputs: Any,
    ) -> SequenceClassifierOutput:
        logits = self.classifier(self.embed(input_ids, attention_mask, **inputs))
        loss = None if labels is None else nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def save_pretrained(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.body.save_pretrained(folder)
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in self.classifier.state_dict().items()}, folder / HEAD_FILE
        )
        (folder / CONFIG_FILE).write_text(
            json.dumps(
                {"pooling": self.pooling, "normalize": self.normalize, "num_labels": self.classifier.out_features}
            )
        )


def build_classifier(folder: Path, **options: Any) -> nn.Module:
    """The classifier of the model in ``folder``: a :class:`PooledClassifier` on a sentence
    transformer (its head drawn from the global torch RNG), else Hugging Face's own."""
    if (pooling := sentence_pooling(folder)) is None:
        return transformers.AutoModelForSequenceClassification.from_pretrained(folder, **options)
    body = transformers.AutoModel.from_pretrained(folder)
    body.config.update({k: v for k, v in options.items() if k in ("id2label", "label2id")})
    return PooledClassifier(body, options["num_labels"], *pooling)


def load_classifier(folder: Path) -> nn.Module:
    """A classifier saved by :func:`build_classifier`'s model (after merging), head included."""
    if not (folder / CONFIG_FILE).is_file():
        return transformers.AutoModelForSequenceClassification.from_pretrained(folder)
    saved = json.loads((folder / CONFIG_FILE).read_text())
    body = transformers.AutoModel.from_pretrained(folder)
    model = PooledClassifier(body, saved["num_labels"], saved["pooling"], saved["normalize"])
    model.classifier.load_state_dict(load_file(folder / HEAD_FILE))
    return model
