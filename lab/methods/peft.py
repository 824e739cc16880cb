"""Prefect task: fine-tune one Hugging Face model with one adapter method (LoRA, QPA or QTHA).

Every method of a flow run gets the same job but for the method and its own settings: the same
model, data, batches (drawn from the same seed), steps, optimiser and learning rate (unless the
flow gives the adapter its own). After training the task merges the adapter into the base
weights, saves the result as a plain Hugging Face folder, loads it back with ``from_pretrained``
and checks that it gives the adapted model's outputs.

A finished job is stored under ``<artifact root>/peft/<key>/`` (``adapter/``, ``merged/``, then
``result.json`` last), ``key`` hashing the job, the data and the model's files, so a re-run
after a crash redoes only the methods that had not finished.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch
import transformers
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from qcore.adapters import adapt, adapter_config
from qcore.adapters.base import seeded
from qcore.adapters.training import Batch, accuracy, perplexity, train_steps

from .artifacts import atomic_write_bytes, hash_json, join_url, read_bytes, upload_folder
from .corpus import Corpus
from .data import Dataset
from .teacher import model_fingerprint
from .train import progress_artifact

AUTO_CLASSES = {"classify": "AutoModelForSequenceClassification", "lm": "AutoModelForCausalLM"}
# Merged vs adapted outputs, relative to the outputs' scale (at least 1). float32 rounding alone
# reaches 1.7e-5 on MiniLM logits near 0 when the update is as large as the weights (QPA as
# published); a broken merge is off by the update itself, orders of magnitude more.
MERGE_TOLERANCE = 1e-4


@dataclass(frozen=True)
class FinetuneJob:
    """One method's fine-tuning; the flow makes one per method, equal but for the method's settings.

    ``max_length`` is the token limit of a text (``classify``) or the block length (``lm``);
    ``eval_batch_size`` the texts per evaluation batch (``classify``; ``lm`` evaluates
    ``batch_size`` blocks at a time), ``eval_blocks`` the validation blocks of the perplexity.
    """

    method: str
    task: str
    model: str  # a local folder
    adapter: dict[str, Any] = field(hash=False)  # the method's config fields
    steps: int
    batch_size: int
    lr: float
    seed: int
    max_length: int
    adapter_lr: float | None = None  # the adapter's own learning rate (None: lr); a new head keeps lr
    eval_batch_size: int = 64
    eval_blocks: int = 32


@task(name="fine-tune", retries=1, retry_delay_seconds=2, cache_policy=NO_CACHE,
      task_run_name="{job.method}")
def fine_tune(job: FinetuneJob, data: Dataset | Corpus, root: str) -> dict[str, Any]:
    """Train, evaluate, merge and check one method; the result row of the comparison."""
    log = get_run_logger()
    key = hash_json({"job": {**asdict(job), "model": model_fingerprint(Path(job.model))},
                     "data": data.content_hash, "v": 1})
    url = join_url(root, "peft", key)
    if (raw := read_bytes(join_url(url, "result.json"))) is not None:
        log.info("%s: finished before, reusing %s", job.method, key[:12])
        return {**json.loads(raw), "cached": True}
    torch.set_num_threads(1)  # one thread per task: the Dask workers share the cores between them
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    tokenizer, model = load_model(job, data)
    heads = head_names(model)
    head = sum(p.numel() for name in heads for p in getattr(model, name).parameters())
    adapted = adapt(model, adapter_config(job.method, **job.adapter))
    trainable = sum(p.numel() for p in adapted.trainable_parameters().values())
    lr_of = {} if job.adapter_lr is None else {
        n: job.adapter_lr for n, p in adapted.named_parameters()
        if p.requires_grad and not any(f".{h}." in f".{n}" for h in heads)}

    report = progress_artifact(f"{job.method}-s{job.seed}", job.steps)

    def progress(step: int, loss: float) -> None:
        if (step + 1) % max(1, job.steps // 10) == 0 or step + 1 == job.steps:
            log.info("%s step %d/%d: loss %.4f", job.method, step + 1, job.steps, loss)
            report(step + 1, f"step {step + 1}/{job.steps}: loss {loss:.4f}")

    t0 = time.perf_counter()
    trained = train_steps(adapted, train_batches(job, tokenizer, data), steps=job.steps, lr=job.lr,
                          seed=job.seed, lr_of=lr_of, on_step=progress)
    train_seconds = time.perf_counter() - t0
    evaluation = eval_batches(job, tokenizer, data)
    metric = {"accuracy": accuracy(adapted, evaluation)} if job.task == "classify" else \
        {"perplexity": perplexity(adapted, evaluation)}
    with tempfile.TemporaryDirectory() as tmp:
        adapted.save_pretrained(Path(tmp) / "adapter")
        difference = check_merged(adapted, tokenizer, evaluation[0], job, Path(tmp) / "merged")
        tail = trained.losses[-max(1, job.steps // 10):]
        result = {
            "name": job.method, "method": job.method, "job": asdict(job),
            "history": {"train_loss": trained.losses},
            "metrics": {**metric, "final_train_loss": sum(tail) / len(tail), "trainable_params": trainable,
                        "adapter_params": trainable - head, "seconds_per_step": trained.seconds_per_step,
                        "train_seconds": train_seconds, "peak_memory_mib": trained.peak_memory_bytes / 2**20,
                        "merged_max_abs_diff": difference},
            "adapter_url": upload_folder(Path(tmp) / "adapter", join_url(url, "adapter")),
            "merged_url": upload_folder(Path(tmp) / "merged", join_url(url, "merged")),
        }
    atomic_write_bytes(join_url(url, "result.json"), json.dumps(result).encode())
    log.info("%s: %s, merged model checked (max |Δ| %.2e)", job.method,
             ", ".join(f"{k} {v:.4f}" for k, v in metric.items()), difference)
    return {**result, "cached": False}


def load_model(job: FinetuneJob, data: Dataset | Corpus) -> tuple[Any, torch.nn.Module]:
    """Tokenizer and model of ``job.model`` for its task (a new classification head is drawn
    from ``job.seed``); GPT-2-style tokenizers without a padding token pad with end-of-text."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(job.model)
    auto = getattr(transformers, AUTO_CLASSES[job.task])
    options: dict[str, Any] = {}
    if isinstance(data, Dataset):
        options = {"num_labels": data.num_classes, "id2label": dict(enumerate(data.label_names)),
                   "label2id": {n: i for i, n in enumerate(data.label_names)}}
    with seeded(job.seed):
        model = auto.from_pretrained(job.model, **options)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
        model.config.pad_token_id = tokenizer.pad_token_id
    return tokenizer, model.to(device())


def head_names(model: torch.nn.Module) -> list[str]:
    """The new classification head a classifier trains in full (peft's rule: ``classifier`` or ``score``)."""
    return [name for name in ("classifier", "score") if isinstance(getattr(model, name, None), torch.nn.Module)]


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


# --- batches: the same for every method (same data, same seed) ---------------------------------

def train_batches(job: FinetuneJob, tokenizer: Any, data: Dataset | Corpus) -> Iterator[Batch]:
    """Endless seeded batches: each epoch a new permutation of the examples (texts or blocks)."""
    if isinstance(data, Dataset):
        examples = list(zip(data.train_texts, data.train_labels.tolist()))

        def make(idx: torch.Tensor) -> Batch:
            return _classify_batch(tokenizer, [examples[i] for i in idx], job.max_length)
    else:
        examples = blocks = lm_blocks(tokenizer, data.train_text, job.max_length)

        def make(idx: torch.Tensor) -> Batch:
            return {"input_ids": blocks[idx], "labels": blocks[idx]}
    if len(examples) < job.batch_size:
        raise ValueError(f"batch_size={job.batch_size} exceeds the {len(examples)} training examples")
    gen = torch.Generator().manual_seed(job.seed)
    while True:
        order = torch.randperm(len(examples), generator=gen)
        for start in range(0, len(order) - job.batch_size + 1, job.batch_size):
            yield _to_device(make(order[start:start + job.batch_size]))


def eval_batches(job: FinetuneJob, tokenizer: Any, data: Dataset | Corpus) -> list[Batch]:
    if isinstance(data, Dataset):
        examples = list(zip(data.test_texts, data.test_labels.tolist()))
        return [_to_device(_classify_batch(tokenizer, examples[i:i + job.eval_batch_size], job.max_length))
                for i in range(0, len(examples), job.eval_batch_size)]
    blocks = lm_blocks(tokenizer, data.val_text, job.max_length)[: job.eval_blocks]
    return [_to_device({"input_ids": b, "labels": b}) for b in blocks.split(job.batch_size)]


def _classify_batch(tokenizer: Any, examples: list[tuple[str, int]], max_length: int) -> Batch:
    enc = tokenizer([t for t, _ in examples], padding=True, truncation=True, max_length=max_length,
                    return_tensors="pt")
    return {**enc, "labels": torch.tensor([y for _, y in examples])}


def lm_blocks(tokenizer: Any, text: str, block: int) -> torch.Tensor:
    """``(n, block)`` consecutive token blocks of ``text`` (the remainder dropped)."""
    ids = torch.tensor(tokenizer(text)["input_ids"])
    n = len(ids) // block
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens: fewer than one block of {block}")
    return ids[: n * block].view(n, block)


def _to_device(batch: Batch) -> Batch:
    return {k: v.to(device()) for k, v in batch.items()}


# --- quantum-free inference: the merged model, checked ----------------------------------------

def check_merged(adapted: Any, tokenizer: Any, probe: Batch, job: FinetuneJob, folder: Path) -> float:
    """Merge the adapter, save a plain Hugging Face folder, load it with ``from_pretrained`` and
    return the largest output difference to the adapted model on ``probe``; refuse a difference
    above :data:`MERGE_TOLERANCE` times the outputs' scale."""
    inputs = {k: v for k, v in probe.items() if k != "labels"}
    adapted.eval()
    with torch.no_grad():
        expected = adapted(**inputs).logits
        adapted.merge_and_unload().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        reloaded = getattr(transformers, AUTO_CLASSES[job.task]).from_pretrained(folder).to(device()).eval()
        difference = (reloaded(**inputs).logits - expected).abs().max().item()
    bound = MERGE_TOLERANCE * max(1.0, expected.abs().max().item())
    if difference > bound:
        raise RuntimeError(f"{job.method}: the merged model's outputs differ from the adapted model's by "
                           f"{difference:.3g} (> {bound:.3g}): merging is broken for this model")
    return difference
