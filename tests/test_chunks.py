"""How a study groups its trainings into tasks: the chunking rule and the cost it reads."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lab.embedded import EmbeddedSplit
from lab.methods import METHODS
from tasks.train import CHUNK_SECONDS, TASKS_PER_WORKER, chunks


def test_short_trainings_share_tasks_of_about_the_chunk_seconds() -> None:
    costs = [0.5] * 100  # 50 s of work: 12 tasks of 6 s would leave 6 per worker
    out = chunks(costs, workers=2)
    assert sorted(i for c in out for i in c) == list(range(100))
    assert all(c == list(range(c[0], c[-1] + 1)) for c in out)  # consecutive: a point's seeds together
    assert {len(c) for c in out[:-1]} == {int(CHUNK_SECONDS / 0.5)} and len(out) == 9


def test_a_small_study_still_gives_each_worker_a_few_tasks() -> None:
    out = chunks([0.5] * 20, workers=2)  # 10 s: 6-s tasks would leave one worker little to balance with
    assert len(out) >= TASKS_PER_WORKER * 2 and {len(c) for c in out} == {2}


def test_long_or_unknown_trainings_keep_a_task_each_and_go_first() -> None:
    out = chunks([0.5, 0.5, 30.0, None, 0.5, 20.0], workers=2)
    assert out[:3] == [[3], [2], [5]]  # unknown (maybe longest), then longest first
    assert sorted(i for c in out[3:] for i in c) == [0, 1, 4]


def test_nothing_known_gives_a_task_per_training() -> None:
    assert chunks([None, None, None], workers=2) == [[0], [1], [2]]


def _split(train: int, test: int) -> EmbeddedSplit:
    x = np.zeros((train + test, 384), "float32")
    y = np.arange(train + test) % 2
    split = EmbeddedSplit(x[:train], y[:train], x[:train, :2], x[train:], y[train:], x[train:, :2], ("a", "b"), "k", {})
    return split.with_validation(0.15, 0)


def _cost(method_id: str, data: EmbeddedSplit, seed: int = 0, **values: object) -> float | None:
    method = METHODS[method_id]
    params = method.params.model_validate({"seeds": list(range(seed + 1)), **values})
    return method.cost(method.jobs(params, data)[seed], data)


@pytest.mark.parametrize("method_id,qubits", [("pqc-head", 4), ("qdllm", [4])])
def test_the_cost_grows_with_the_work(method_id: str, qubits: object) -> None:
    data = _split(128, 500)
    more_qubits = [12] if isinstance(qubits, list) else 12
    small = _cost(method_id, data, qubits=qubits)
    assert small is not None and 0 < small < math.inf
    assert small < (_cost(method_id, data, qubits=more_qubits) or 0)
    assert small < (_cost(method_id, data, qubits=qubits, epochs=40) or 0)
    assert small < (_cost(method_id, _split(1024, 500), qubits=qubits) or 0)
    assert _cost(method_id, data, seed=1, qubits=qubits) == small  # seeds cost alike


def test_a_student_on_aer_has_no_estimate() -> None:
    """Parameter-shift gradients on Aer cost far more than the model says: a task each."""
    assert _cost("qdllm", _split(128, 500), backend="aer", eval_noise=None) is None
