"""How the lab sets the fine-tuning methods up, checked on the embedded MiniLM without a flow:
the classifier reads the sentence transformer's own pooling, QPA starts from a zero update (its
published start kept as a labelled variant), every parameter group has its own learning rate,
the classical stand-ins are their quantum method with the circuit replaced, a tuning trial
scores its held-out texts once per report, and they run in batches of similar length."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers

from flows.compare import CompareParams
from lab.data import Dataset
from lab.methods import LEADERBOARD, METHODS, peft
from lab.methods.base import Hooks
from lab.methods.peft import FinetuneJob, fine_tune, head_names, load_pretrained, preflight
from lab.params.peft import ADAPTER_LRS, PeftParams
from lab.sentence_classifier import PooledClassifier, sentence_pooling
from lab.teacher import resolve_model
from qcore.ablation import ClassicalStandin
from qcore.adapters import adapt, adapter_config
from qcore.layer import QuantumLayer


def tiny_data() -> Dataset:
    texts = ["a gorgeous film", "a dull mess", "witty and warm", "tedious and long"] * 4
    labels = np.array([1, 0, 1, 0] * 4)
    return Dataset("tiny", "test", ("negative", "positive"), texts, labels, texts[:4], labels[:4], {})


@pytest.fixture(scope="module")
def plan() -> list[FinetuneJob]:
    params = PeftParams(methods=["lora", "qpa", "qpa-published", "qtha"], steps=2, batch_size=4)
    return preflight(params, tiny_data()).jobs


def test_minilm_is_read_through_its_own_mean_pooling() -> None:
    assert sentence_pooling(resolve_model(None)) == ("mean", True)
    assert sentence_pooling(Path("/nonexistent")) is None  # any other model keeps Hugging Face's head


def test_the_classifier_gives_the_sentence_transformers_embedding(plan: list[FinetuneJob]) -> None:
    from sentence_transformers import SentenceTransformer

    _, model = load_pretrained(plan[0], tiny_data())
    assert isinstance(model, PooledClassifier)
    texts = ["a gorgeous, witty film", "tedious"]
    tokenizer = transformers.AutoTokenizer.from_pretrained(resolve_model(None))
    with torch.no_grad():
        ours = model.eval().embed(**tokenizer(texts, padding=True, return_tensors="pt"))
    theirs = SentenceTransformer(str(resolve_model(None)), device="cpu").encode(texts, convert_to_tensor=True)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)


def test_qpa_starts_at_the_base_model_and_the_published_variant_does_not(plan: list[FinetuneJob]) -> None:
    jobs = {j.method: j for j in plan}
    assert jobs["qpa"].adapter["zero_start"] and not jobs["qpa-published"].adapter["zero_start"]
    assert jobs["qpa-published"].adapter_method == "qpa" and "qpa-published" in LEADERBOARD
    shifts = {}
    for method in ("qpa", "qpa-published"):
        _, model = load_pretrained(jobs[method], tiny_data())
        base = model.body.encoder.layer[0].attention.self.query.weight.detach().clone()
        adapted = adapt(model, adapter_config("qpa", **jobs[method].adapter))
        merged = adapted.merge_and_unload().body.encoder.layer[0].attention.self.query.weight
        shifts[method] = ((merged - base).norm() / base.norm()).item()
    assert shifts["qpa"] < 1e-6 < 0.1 < shifts["qpa-published"]  # the paper's start rewrites the weights


def test_every_parameter_group_trains_at_its_own_rate() -> None:
    params = PeftParams(
        methods=["qtha", "lora"], head_lr=0.05, adapter_lr="qtha=0.002", circuit_lr={"qtha": 0.03}, steps=2
    )
    jobs = {j.method: j for j in preflight(params, tiny_data()).jobs}
    assert (jobs["lora"].adapter_lr, jobs["lora"].circuit_lr) == (3e-3, 3e-3)  # LoRA's own default
    _, model = load_pretrained(jobs["qtha"], tiny_data())
    adapted = adapt(model, adapter_config("qtha", **jobs["qtha"].adapter))
    rates = jobs["qtha"].learning_rates(adapted, head_names(model))
    groups = {rate: sorted({n.split(".")[-2] for n in rates if rates[n] == rate}) for rate in set(rates.values())}
    assert {n.removeprefix("model.") for n in rates} == set(adapted.trainable_parameters())
    assert groups[0.05] == ["classifier"]
    assert all(".circuit." in n for n in rates if rates[n] == 0.03) and groups[0.03]
    assert {"down", "up"} & {n.split(".")[-3] for n in rates if rates[n] == 0.002}


@pytest.mark.parametrize("quantum", ["qpa", "qtha"])
def test_a_standin_is_its_quantum_method_with_a_classical_module_in_the_circuits_place(quantum: str) -> None:
    standin = f"{quantum}-classical"
    method = METHODS[standin]
    assert method.is_baseline and method.search_space == METHODS[quantum].search_space
    assert ADAPTER_LRS[standin] == ADAPTER_LRS[quantum]  # trained at its quantum method's rates
    params = PeftParams(methods=[quantum, standin], circuit_lr={standin: 0.021}, steps=2, batch_size=4)
    plan = preflight(params, tiny_data())
    jobs = {j.method: j for j in plan.jobs}
    assert jobs[standin].adapter == {**jobs[quantum].adapter, "circuit": "classical"}
    assert "circuit" not in jobs[quantum].adapter  # the quantum jobs (and their cached results) are as they were
    assert jobs[standin].adapter_method == quantum and plan.counts[standin].circuit == 0 < plan.counts[quantum].circuit
    _, model = load_pretrained(jobs[standin], tiny_data())
    adapted = adapt(model, adapter_config(quantum, **jobs[standin].adapter))
    assert not any(isinstance(m, QuantumLayer) for m in adapted.modules())
    standins = {id(p) for m in adapted.modules() if isinstance(m, ClassicalStandin) for p in m.parameters()}
    rates = jobs[standin].learning_rates(adapted, head_names(model))
    params_by_name = dict(adapted.named_parameters())
    at_circuit_rate = {id(params_by_name[n]) for n, r in rates.items() if r == 0.021}
    assert standins
    assert at_circuit_rate == standins  # the stand-in trains at the circuit's rate, nothing else does
    (budgeted,) = method.for_budget(CompareParams(), [0])  # the compare flow's row trains the stand-in
    assert budgeted.methods == [standin]


@pytest.mark.parametrize("steps,reports", [(4, [1, 2, 3, 4]), (9, [2, 4, 6, 8])])
def test_a_trial_scores_the_trained_model_once(
    steps: int, reports: list[int], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A report at the last step has scored the trained model: its predictions are the result's,
    not those of another pass over the held-out texts (a fifth of a compare trial's evaluation)."""
    passes: list[tuple[torch.nn.Module, list]] = []
    predict = peft.test_predictions
    monkeypatch.setattr(
        peft, "test_predictions", lambda model, batches: passes.append((model, batches)) or predict(model, batches)
    )
    (job,) = preflight(PeftParams(methods=["lora"], steps=steps, batch_size=4), tiny_data()).jobs
    seen: list[tuple[int, float]] = []
    hooks = Hooks(report=lambda step, value: seen.append((step, value)), save_models=False)
    result = fine_tune(job, tiny_data(), str(tmp_path), hooks)
    assert [step for step, _ in seen] == reports
    assert len(passes) == len(reports) + (steps not in reports)
    assert result.test_predictions == predict(*passes[-1])  # the trained model's, scored again here
    if steps in reports:
        assert result.metrics["accuracy"] == seen[-1][1]


def test_evaluation_runs_texts_by_length_and_scores_them_in_split_order() -> None:
    """Held-out texts run in batches of similar length (fewer padded tokens than batches in split
    order) and their logits come back in split order, equal to the split-order batches' up to
    float rounding; a shuffled split gets its scores shuffled alike."""
    sentence = "a gorgeous witty and warm film that is never tedious nor long at all"
    texts = [" ".join(sentence.split()[:n]) for n in (7, 1, 13, 3, 9, 2, 11, 5, 4, 10, 6, 8, 1, 12)]
    labels = np.arange(len(texts)) % 2
    data = Dataset("varied", "test", ("negative", "positive"), texts, labels, texts, labels, {})
    (job,) = preflight(PeftParams(methods=["lora"], steps=2, batch_size=4), data).jobs
    job = dataclasses.replace(job, eval_batch_size=4)
    tokenizer, model = load_pretrained(job, data)
    adapted = adapt(model, adapter_config("lora", **job.adapter))
    evaluation = peft.eval_batches(job, tokenizer, data)
    examples = list(zip(texts, labels.tolist(), strict=True))
    in_order = [peft._classify_batch(tokenizer, examples[i : i + 4], job.max_length) for i in range(0, len(texts), 4)]
    assert [len(b["labels"]) for b in evaluation.batches] == [4, 4, 4, 2]
    assert sum(b["input_ids"].numel() for b in evaluation.batches) < sum(b["input_ids"].numel() for b in in_order)
    ran_labels = torch.cat([b["labels"] for b in evaluation.batches])
    assert ran_labels[evaluation.positions.argsort()].tolist() == labels.tolist()  # each text keeps its label
    with torch.no_grad():
        expected = torch.cat([adapted.eval()(**{k: v for k, v in b.items() if k != "labels"}).logits for b in in_order])
    logits = peft.test_logits(adapted, evaluation)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    assert peft.test_predictions(adapted, evaluation) == expected.argmax(-1).tolist()
    first = peft.test_logits(adapted, peft.eval_batches(job, tokenizer, data, limit=5))  # the noise ablation's
    torch.testing.assert_close(first, expected[:5], atol=1e-5, rtol=1e-5)
    shuffle = np.random.default_rng(0).permutation(len(texts))
    shuffled_texts = [texts[i] for i in shuffle]
    shuffled = Dataset("shuffled", "test", data.label_names, texts, labels, shuffled_texts, labels[shuffle], {})
    torch.testing.assert_close(
        peft.test_logits(adapted, peft.eval_batches(job, tokenizer, shuffled)), logits[shuffle], atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("grouped", [True, False])
def test_training_batches_group_texts_by_length_and_keep_each_epochs_examples(grouped: bool) -> None:
    """Each epoch trains every example once (a last partial batch dropped) whether or not its
    batches are grouped by length; grouped, they carry fewer padded tokens than the same
    permutation cut in order, which is what ``group_by_length=False`` yields."""
    sentence = "a gorgeous witty and warm film that is never tedious nor long at all"
    words = sentence.split()
    texts = [f"{i} {' '.join(words[: (7 * i) % len(words)])}".strip() for i in range(40)]  # all distinct
    labels = np.arange(len(texts)) % 2
    data = Dataset("varied", "test", ("negative", "positive"), texts, labels, texts, labels, {})
    params = PeftParams(methods=["lora"], steps=2, batch_size=4, group_by_length=grouped)
    (job,) = preflight(params, data).jobs
    assert job.group_by_length is grouped
    tokenizer = transformers.AutoTokenizer.from_pretrained(job.model)
    batches = peft.train_batches(job, tokenizer, data)
    epoch = [next(batches) for _ in range(len(texts) // 4)]
    position = {t: i for i, t in enumerate(texts)}
    seen = [position[t] for b in epoch for t in tokenizer.batch_decode(b["input_ids"], skip_special_tokens=True)]
    assert sorted(seen) == list(range(len(texts)))  # every example once
    examples = list(zip(texts, labels.tolist(), strict=True))
    order = torch.randperm(len(texts), generator=torch.Generator().manual_seed(job.seed))
    in_order = [peft._classify_batch(tokenizer, [examples[i] for i in b], job.max_length) for b in order.split(4)]
    padded = sum(b["input_ids"].numel() for b in epoch)
    if grouped:
        assert padded < 0.8 * sum(b["input_ids"].numel() for b in in_order)
    else:
        assert seen == order.tolist()
