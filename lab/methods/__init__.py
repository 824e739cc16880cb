"""The lab's methods, one module each behind the interface of :mod:`lab.methods.base`, and the
registry that the compare and study flows look them up in by id.

Adding a method: write its module (parameters, job, training, baselines, ``for_budget``) and add
one entry to :data:`METHODS`.
"""

from __future__ import annotations

from typing import Any

from .base import Budget, FeatureMethod, Hooks, Method
from .federated import LLMQFL, FedLogreg, LLMQFLClassical
from .peft import QPA, QTHA, LoRA, QPAClassical, QPAPublished, QTHAClassical
from .pqc_head import PQCHeadClassical, PQCHeadMethod
from .qdllm import BASELINES as QDLLM_BASELINES
from .qdllm import QDLLM, QDLLMClassical

ALL: tuple[Method[Any, Any, Any], ...] = (
    QDLLM(),
    QDLLMClassical(),
    *QDLLM_BASELINES,
    PQCHeadMethod(),
    PQCHeadClassical(),
    LoRA(),
    QPA(),
    QPAPublished(),
    QTHA(),
    QPAClassical(),
    QTHAClassical(),
    LLMQFL(),
    LLMQFLClassical(),
    FedLogreg(),
)
METHODS: dict[str, Method[Any, Any, Any]] = {m.id: m for m in ALL}
# Every row a leaderboard can show, id → label: the methods under study, then the classical ones.
LEADERBOARD: dict[str, str] = {
    **{m.id: m.label for m in METHODS.values() if not m.is_baseline},
    **{m.id: m.label for m in METHODS.values() if m.is_baseline},
}

__all__ = ["LEADERBOARD", "METHODS", "Budget", "FeatureMethod", "Hooks", "Method"]
