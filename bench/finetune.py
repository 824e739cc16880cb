#!/usr/bin/env python
"""Where a fine-tuning trial's time goes: QPA's update generation (each layer's circuit on its
own against one batched simulation per shape group), whole training steps (training batches in
random order against grouped by length), a step taken apart, the evaluation of the held-out
split (its texts batched in split order against by length), what a trial does once before
training, and (``--trials``) whole trials with training batches in random order or by length.

The setting is a tuned ``qllm run compare`` trial: all-MiniLM-L6-v2, SST-2, 2,000 training
texts of which the tuning view holds 20 % out (400 texts, scored at four reports, the last one's
predictions being the trial's), batches of 16 texts of at most 64 tokens, the default targets
(query and value of the six layers: twelve 6-qubit circuits). Alternatives are measured interleaved, round by round,
in this one process, so a loaded machine slows both alike; medians are printed.

    python bench/finetune.py [--threads 1] [--rounds 5] [--reps 5] [--trials 0]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any
from unittest import mock

import torch
import transformers

from lab.data import DataRequest, Dataset
from lab.methods import peft
from lab.methods.base import Hooks
from lab.methods.peft import (
    Evaluation,
    FinetuneJob,
    PeftParams,
    eval_batches,
    fine_tune,
    load_pretrained,
    preflight,
    test_logits,
    train_batches,
)
from lab.results import TrainingResult
from qcore.adapters import adapt, adapter_config
from qcore.adapters.base import AdapterLayer
from qcore.adapters.qpa import QPAModel

# A compare trial: 100 steps, a report every 25 (the last one's predictions are the result's).
STEPS, TUNE_FRACTION, REPORTS = 100, 0.2, 4


def params(method: str, grouped: bool = True) -> PeftParams:
    """A compare trial's parameters of ``method`` (``grouped``: training batches by length)."""
    return PeftParams(
        methods=[method], train_size=2000, steps=STEPS, batch_size=16, max_length=64, group_by_length=grouped
    )


def in_split_order(job: FinetuneJob, tokenizer: Any, data: Dataset, limit: int | None = None) -> Evaluation:
    """The held-out batches as they were before batching by length: consecutive texts of the split."""
    examples = list(zip(data.test_texts, data.test_labels.tolist(), strict=True))[:limit]
    size = job.eval_batch_size
    batches = [
        peft._to_device(peft._classify_batch(tokenizer, examples[i : i + size], job.max_length))
        for i in range(0, len(examples), size)
    ]
    return Evaluation(batches, torch.arange(len(examples)))


def timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


class Trial:
    """One method's fine-tune as a tuning trial sets it up, with its optimiser and batches."""

    def __init__(self, method: str, data: Any) -> None:
        self.setup: dict[str, float] = {}
        with self.clock("preflight (jobs)"):
            self.job = preflight(params(method), data).jobs[0]
        with self.clock("load tokenizer and model"):
            self.tokenizer, model = load_pretrained(self.job, data)
        with self.clock("adapt"):
            self.model = adapt(model, adapter_config(self.job.adapter_method, **self.job.adapter))
        with self.clock("tokenise the held-out texts"):
            self.evaluation = eval_batches(self.job, self.tokenizer, data)
        self.in_split_order = in_split_order(self.job, self.tokenizer, data)
        self.batches = train_batches(self.job, self.tokenizer, data)
        self.random_batches = train_batches(dataclasses.replace(self.job, group_by_length=False), self.tokenizer, data)
        self.layers = [m for m in self.model.modules() if isinstance(m, AdapterLayer)]
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(trainable, lr=self.job.adapter_lr, weight_decay=0.0)
        self.model.train()

    @contextlib.contextmanager
    def clock(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.setup[name] = time.perf_counter() - t0

    def step(self, batched: bool = True, grouped: bool = True) -> None:
        """A training step as :func:`~qcore.adapters.training.train_steps` takes it; QPA with
        ``batched=False`` runs every layer's circuit on its own (the code before batching);
        ``grouped=False`` takes the next batch in random order rather than by length."""
        run = self.model if batched else self.model.model
        run(**next(self.batches if grouped else self.random_batches)).loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def parts(self, batched: bool = True) -> dict[str, float]:
        """One step taken apart: QPA's factors generated, the model run on them as fixed
        tensors, backward to them, from them back to the generators, the optimiser."""
        t: dict[str, float] = {}
        batch = next(self.batches)
        t0 = time.perf_counter()
        if self.layers:
            with self.batching(batched):
                made = [layer.factors() for layer in self.layers]
            leaves = [(a.detach().requires_grad_(), b.detach().requires_grad_()) for a, b in made]
            for layer, pair in zip(self.layers, leaves, strict=True):
                layer.fixed = pair
        t["generation forward"] = (t1 := time.perf_counter()) - t0
        loss = self.model.model(**batch).loss if self.layers else self.model(**batch).loss
        t["model forward"] = (t2 := time.perf_counter()) - t1
        loss.backward()
        t["model backward"] = (t3 := time.perf_counter()) - t2
        if self.layers:
            torch.autograd.backward([f for p in made for f in p], [f.grad for p in leaves for f in p])
            for layer in self.layers:
                layer.fixed = None
        t["generation backward"] = (t4 := time.perf_counter()) - t3
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        t["optimizer"] = time.perf_counter() - t4
        return t

    def generation(self, batched: bool) -> None:
        """QPA's factors of every layer, forward and backward (a unit gradient on each)."""
        with self.batching(batched):
            made = [f for layer in self.layers for f in layer.factors()]
        torch.autograd.backward(made, [torch.ones_like(f) for f in made])
        self.optimizer.zero_grad(set_to_none=True)

    def batching(self, batched: bool) -> contextlib.AbstractContextManager[None]:
        if batched and isinstance(self.model, QPAModel):
            return self.model.circuits_batched()
        return contextlib.nullcontext()

    def evaluate(self, by_length: bool = True) -> torch.Tensor:
        """A pass over the held-out texts as a report scores them: the logits, in split order."""
        logits = test_logits(self.model, self.evaluation if by_length else self.in_split_order)
        self.model.train()
        return logits


def whole_trial(method: str, data: Dataset, grouped: bool) -> tuple[float, float, TrainingResult]:
    """A tuning trial as the compare flow runs one (its jobs, then the fine-tune reporting four
    times, no model saved), training on batches by length (``grouped``) or in random order: its
    seconds, the seconds of its passes over the held-out texts, its result."""
    passes: list[float] = []
    predict = peft.test_predictions

    def timed_predictions(model: torch.nn.Module, evaluation: Evaluation) -> list[int]:
        t0 = time.perf_counter()
        out = predict(model, evaluation)
        passes.append(time.perf_counter() - t0)
        return out

    with (
        tempfile.TemporaryDirectory() as root,
        mock.patch.object(peft, "test_predictions", timed_predictions),
    ):
        t0 = time.perf_counter()
        job = preflight(params(method, grouped), data).jobs[0]
        result = fine_tune(job, data, root, Hooks(report=lambda step, value: None, save_models=False))
        seconds = time.perf_counter() - t0
    return seconds, sum(passes), result


def interleaved(rounds: int, reps: int, cases: dict[str, Callable[[], Any]]) -> dict[str, float]:
    """Median seconds per call of each case (after one warm-up call), the cases taking turns
    ``reps`` calls at a time, ``rounds`` times."""
    for fn in cases.values():
        fn()
    seconds: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            t0 = time.perf_counter()
            for _ in range(reps):
                fn()
            seconds[name].append((time.perf_counter() - t0) / reps)
    return {name: statistics.median(s) for name, s in seconds.items()}


def interleaved_parts(n: int, cases: dict[str, Callable[[], dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Median seconds of each part of a step, per case (after one warm-up step), the cases taking turns."""
    for fn in cases.values():
        fn()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
    for _ in range(n):
        for name, fn in cases.items():
            runs[name].append(fn())
    return {name: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for name, rs in runs.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1, as a Dask worker)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per comparison")
    parser.add_argument("--reps", type=int, default=5, help="calls per case and round")
    parser.add_argument(
        "--trials", type=int, default=0, help="rounds of whole trials (QPA and LoRA, each evaluation; default none)"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    data = DataRequest("sst2", 2000).load().tuning_view(TUNE_FRACTION, 0)
    qpa, lora = Trial("qpa", data), Trial("lora", data)
    print(
        f"torch threads {torch.get_num_threads()}; "
        f"{len(data.train_texts)} training, {len(data.test_texts)} held-out texts"
    )
    groups = list(qpa.model.circuit_groups) if isinstance(qpa.model, QPAModel) else []
    print(f"QPA: {len(qpa.layers)} adapted layers, {len(groups)} shape group(s)\n")

    ms = interleaved(
        args.rounds, args.reps, {"per layer": lambda: qpa.generation(False), "batched": lambda: qpa.generation(True)}
    )
    print(
        f"QPA update generation, forward + backward: per layer {ms['per layer'] * 1e3:.1f} ms, "
        f"batched {ms['batched'] * 1e3:.1f} ms, ratio {ms['per layer'] / ms['batched']:.2f}"
    )
    n = args.rounds * args.reps
    ms = interleaved(n, 1, {"per layer": lambda: qpa.step(False), "batched": lambda: qpa.step(True)})
    print(
        f"QPA training step: per layer {ms['per layer'] * 1e3:.0f} ms, batched {ms['batched'] * 1e3:.0f} ms, "
        f"ratio {ms['per layer'] / ms['batched']:.2f}"
    )
    for name, trial in (("QPA", qpa), ("LoRA", lora)):
        ms = interleaved(n, 1, {"random": functools.partial(trial.step, grouped=False), "by length": trial.step})
        print(
            f"{name} training step, batches in random order {ms['random'] * 1e3:.0f} ms, by length "
            f"{ms['by length'] * 1e3:.0f} ms, ratio {ms['random'] / ms['by length']:.2f}"
        )
    print()

    rows = interleaved_parts(
        n, {"QPA, per layer": lambda: qpa.parts(False), "QPA, batched": qpa.parts, "LoRA": lora.parts}
    )
    names = list(next(iter(rows.values())))
    print(f"| step part (ms, median of {n}) | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for k in [*names, "sum"]:
        print(
            f"| {k} | "
            + " | ".join(f"{(sum(r.values()) if k == 'sum' else r[k]) * 1e3:.0f}" for r in rows.values())
            + " |"
        )

    trials = {"QPA": qpa, "LoRA": lora}
    cases: dict[str, Callable[[], Any]] = {
        f"{name}, {how}": functools.partial(trial.evaluate, by_length)
        for name, trial in trials.items()
        for how, by_length in (("split order", False), ("by length", True))
    }
    ev = interleaved(args.rounds, 1, cases)
    print(
        f"\none pass over the {len(data.test_texts)} held-out texts (eval_batch_size {qpa.job.eval_batch_size}, "
        f"median of {args.rounds}):"
    )
    for name, trial in trials.items():
        before, after = ev[f"{name}, split order"], ev[f"{name}, by length"]
        old, new = trial.evaluate(False), trial.evaluate(True)
        same = bool((old.argmax(-1) == new.argmax(-1)).all())
        print(
            f"  {name}: split order {before:.2f} s, by length {after:.2f} s, ratio {before / after:.2f}; "
            f"logits max |Δ| {(old - new).abs().max().item():.1e}, predictions equal: {same}"
        )
    for name, batches in (
        ("held-out, split order", qpa.in_split_order.batches),
        ("held-out, by length", qpa.evaluation.batches),
        ("training, random order", [next(qpa.random_batches) for _ in range(STEPS)]),
        ("training, by length", [next(qpa.batches) for _ in range(STEPS)]),
    ):
        real = sum(int(b["attention_mask"].sum()) for b in batches)
        padded = sum(b["input_ids"].numel() for b in batches)
        print(f"{name} batches: {padded:,} tokens run, {real:,} of them text ({real / padded:.0%})")
    batch_ms = (
        statistics.median(timed(lambda: next(train_batches(qpa.job, qpa.tokenizer, data))) for _ in range(20)) * 1e3
    )
    print(f"one training batch tokenised: {batch_ms:.1f} ms")
    for name, trial in (("QPA", qpa), ("LoRA", lora)):
        print(f"{name} trial setup: " + ", ".join(f"{k} {v:.2f} s" for k, v in trial.setup.items()))

    print(f"\na trial, estimated ({STEPS} steps, {REPORTS} passes over the held-out texts):")
    for name, trial, key in (("QPA", qpa, "QPA, batched"), ("LoRA", lora, "LoRA")):
        step, setup = sum(rows[key].values()), sum(trial.setup.values())
        for how in ("split order", "by length"):
            passes = REPORTS * ev[f"{name}, {how}"]
            total = setup + STEPS * step + passes
            print(
                f"  {name}, {how}: setup {setup:.1f} s + steps {STEPS * step:.1f} s + evaluation {passes:.1f} s "
                f"= {total:.1f} s"
            )
    if args.trials:
        whole_trials(args.trials, data)


def whole_trials(rounds: int, data: Dataset) -> None:
    """Whole trials of QPA and LoRA (held-out texts by length), training on batches in random
    order and by length, taking turns; the held-out accuracy of each (one seed: noise ± 0.02)."""
    runs: dict[tuple[str, bool], list[tuple[float, float, TrainingResult]]] = {}
    for _ in range(rounds):
        for method in ("qpa", "lora"):
            for grouped in (False, True):
                runs.setdefault((method, grouped), []).append(whole_trial(method, data, grouped))
    print(f"\nwhole trials (median of {rounds}; seconds: trial, of which its passes over the held-out texts):")
    for method in ("qpa", "lora"):
        (before, eval_before), (after, eval_after) = (
            (statistics.median(r[0] for r in runs[method, g]), statistics.median(r[1] for r in runs[method, g]))
            for g in (False, True)
        )
        old, new = runs[method, False][0][2], runs[method, True][0][2]
        print(
            f"  {method}: training batches in random order {before:.1f} s ({eval_before:.1f} s), by length "
            f"{after:.1f} s ({eval_after:.1f} s); trial ratio {before / after:.2f}; held-out accuracy "
            f"{old.metrics['accuracy']:.4f} random, {new.metrics['accuracy']:.4f} by length"
        )


if __name__ == "__main__":
    main()
