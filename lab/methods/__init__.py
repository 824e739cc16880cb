"""The lab's methods, one module each behind the interface of :mod:`lab.methods.base`, and the
registry that the compare and study flows look them up in by id.

Adding a method: write its module (parameters, job, training, baselines, ``for_budget``) and add
one entry to :data:`METHODS`.
"""

from __future__ import annotations

from typing import Any

from .base import Budget, FeatureMethod, Hooks, Method
from .federated import LLMQFL, FedLogreg
from .peft import QPA, QTHA, LoRA, QPAClassical, QPAPublished, QTHAClassical
from .pqc_head import PQCHeadClassical, PQCHeadMethod
from .qdllm import QDLLM, QDLLMClassical

METHODS: dict[str, Method[Any, Any, Any]] = {
    m.id: m
    for m in (
        QDLLM(),
        QDLLMClassical(),
        PQCHeadMethod(),
        PQCHeadClassical(),
        LoRA(),
        QPA(),
        QPAPublished(),
        QPAClassical(),
        QTHA(),
        QTHAClassical(),
        LLMQFL(),
        FedLogreg(),
    )
}
# Every row a leaderboard can show, id → label: the methods under study, then the baselines
# they train, then the baselines that are methods of their own.
LEADERBOARD: dict[str, str] = {
    **{m.id: m.label for m in METHODS.values() if not m.is_baseline},
    **{k: v for m in METHODS.values() for k, v in m.baseline_labels.items()},
    **{m.id: m.label for m in METHODS.values() if m.is_baseline},
}
# Which method trains a baseline row (the QD-LLM student's size-matched MLPs, say).
BASELINE_OF: dict[str, str] = {b: m.id for m in METHODS.values() for b in m.baseline_labels}

__all__ = ["BASELINE_OF", "LEADERBOARD", "METHODS", "Budget", "FeatureMethod", "Hooks", "Method"]
