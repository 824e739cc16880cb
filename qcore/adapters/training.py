"""Fine-tuning steps and evaluation of adapted Hugging Face models, in plain PyTorch.

The caller gives every method the same batches, step count, learning rate and seed; this module
runs them and measures what the comparison reports: the loss and wall time of every step, and
the peak tensor memory of one training step.
"""

from __future__ import annotations

import math
import statistics
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

Batch = Mapping[str, torch.Tensor]
StepCallback = Callable[[int, float], None]
T = TypeVar("T")


@dataclass(frozen=True)
class TrainLog:
    """``losses[i]`` is step ``i``'s training loss; ``seconds_per_step`` the median wall time of
    the steps after the first (which pays for lazy initialisation), the last step left out: its
    memory is measured instead, ``peak_memory_bytes`` being every tensor alive at its worst moment."""

    losses: list[float]
    seconds_per_step: float
    peak_memory_bytes: int


def train_steps(
    model: nn.Module,
    batches: Iterator[Batch],
    *,
    steps: int,
    lr: float,
    seed: int,
    lr_of: Mapping[str, float] | None = None,
    on_step: StepCallback | None = None,
) -> TrainLog:
    """``steps`` AdamW steps (no weight decay, learning rate decaying linearly to zero, as the QPA
    code trains) on the model's own loss (``model(**batch).loss``), over its trainable parameters.

    Parameters train at ``lr``, or at ``lr_of[name]`` where given. ``seed`` seeds the global torch
    RNG, which dropout draws from: the same seed and batches give the same losses on one machine.
    """
    if steps < 2:
        raise ValueError(f"steps={steps} is too few: the last step is measured apart, so give at least 2")
    torch.manual_seed(seed)
    rates: dict[float, list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            rates.setdefault((lr_of or {}).get(name, lr), []).append(p)
    optimizer = torch.optim.AdamW([{"params": ps, "lr": r} for r, ps in rates.items()], weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1 - s / steps)
    model.train()

    def step(batch: Batch) -> float:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item()

    losses, seconds = [], []
    for i in range(steps - 1):
        t0 = time.perf_counter()
        losses.append(step(next(batches)))
        seconds.append(time.perf_counter() - t0)
        if on_step:
            on_step(i, losses[-1])
    resident = [
        *model.parameters(),
        *model.buffers(),
        *(t for s in optimizer.state.values() for t in s.values() if torch.is_tensor(t)),
    ]
    loss, peak = peak_memory(lambda: step(next(batches)), resident)
    losses.append(loss)
    if on_step:
        on_step(steps - 1, loss)
    return TrainLog(losses, statistics.median(seconds[1:] or seconds), peak)


def peak_memory(fn: Callable[[], T], resident: Iterable[torch.Tensor]) -> tuple[T, int]:
    """``fn()`` and the peak bytes of tensors alive while it ran: ``resident`` (counted once per
    storage, so tied weights count once) plus the peak of what ``fn`` allocated, followed on CPU
    by :class:`_LiveTensorBytes` and on CUDA by the allocator's own statistics."""
    resident = list(resident)
    if resident and resident[0].device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(resident[0].device)
        return fn(), torch.cuda.max_memory_allocated(resident[0].device)
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in resident}
    with _LiveTensorBytes(known=storages) as tracker:
        out = fn()
    return out, sum(storages.values()) + tracker.peak


class _LiveTensorBytes(TorchDispatchMode):
    """Bytes of the tensor storages created while active and still alive, and their peak.

    Every operator's outputs pass through here (autograd's backward included); a storage seen for
    the first time is counted until PyTorch frees it, which a finalizer on the storage reports.
    (The PyTorch profiler's memory events give the same numbers, but print native log lines
    when run outside the main thread, as Dask tasks are.)
    """

    def __init__(self, known: Iterable[int]) -> None:
        super().__init__()
        self.known = set(known)  # data pointers of storages not to count
        self.live = self.peak = 0

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                storage = t.untyped_storage()
                ptr, size = storage.data_ptr(), storage.nbytes()
                if size and ptr not in self.known:
                    self.known.add(ptr)
                    self.live += size
                    self.peak = max(self.peak, self.live)
                    weakref.finalize(storage, self._freed, ptr, size)
        return out

    def _freed(self, ptr: int, size: int) -> None:
        self.known.discard(ptr)
        self.live -= size


@torch.no_grad()
def accuracy(model: nn.Module, batches: Iterable[Batch]) -> float:
    """Share of examples whose largest logit is their ``labels`` entry."""
    model.eval()
    right = total = 0
    for batch in batches:
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        right += (model(**inputs).logits.argmax(-1) == batch["labels"]).sum().item()
        total += len(batch["labels"])
    return right / total


@torch.no_grad()
def lm_blocks(tokenizer: Any, text: str, block: int) -> torch.Tensor:
    """``(n, block)`` consecutive token blocks of ``text`` (the remainder dropped)."""
    ids = torch.tensor(tokenizer(text)["input_ids"])
    n = len(ids) // block
    if n == 0:
        raise ValueError(f"the text has {len(ids)} tokens: fewer than one block of {block}")
    return ids[: n * block].view(n, block)


def padded_perplexities(
    model: nn.Module, tokenizer: Any, texts: list[str], length: int, batch: int
) -> dict[str, float]:
    """Perplexity over ``texts`` each padded (or cut) to ``length`` tokens, two ways.

    ``masked``: only real next tokens count (labels -100 on padding), the honest figure.
    ``pad_counted``: the padding's positions count too, as in code that passes the padded ids
    as labels: a model soon predicts padding after padding almost surely, so the more padding,
    the lower (and the more meaningless) the figure; it is reported only to place such numbers.
    """
    model.eval()
    sums = {"masked": [0.0, 0], "pad_counted": [0.0, 0]}
    with torch.no_grad():
        for start in range(0, len(texts), batch):
            part = texts[start : start + batch]
            enc = tokenizer(part, padding="max_length", truncation=True, max_length=length, return_tensors="pt")
            logits = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits[:, :-1]
            nll = nn.functional.cross_entropy(logits.transpose(1, 2), enc["input_ids"][:, 1:], reduction="none")
            real = enc["attention_mask"][:, 1:].bool()
            sums["masked"][0] += nll[real].sum().item()
            sums["masked"][1] += int(real.sum())
            sums["pad_counted"][0] += nll.sum().item()
            sums["pad_counted"][1] += nll.numel()
    return {k: math.exp(total / count) for k, (total, count) in sums.items()}


def perplexity(model: nn.Module, batches: Iterable[Batch]) -> float:
    """``exp`` of the mean next-token loss over every predicted token (full blocks, no padding)."""
    model.eval()
    nll = tokens = 0.0
    for batch in batches:
        n = batch["labels"][:, 1:].numel()
        nll += model(**batch).loss.item() * n
        tokens += n
    return math.exp(nll / tokens)
