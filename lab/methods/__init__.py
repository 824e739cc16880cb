"""The lab's methods, one module each behind the interface of :mod:`lab.methods.base`, and the
registry that the compare and study flows look them up in by id.

The registry imports a method's module when one of its methods is first asked for: a flow, a Dask
worker or a Prefect hook process that runs QD-LLM does not load what the fine-tuning methods need
(peft and transformers, 2-3 s of every such process's start here).

Adding a method: write its module (parameters, job, training, baselines, ``for_budget``) and add
its id and class to :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator, Mapping
from functools import cache
from typing import Any

from .base import Budget, FeatureMethod, Hooks, Method

# id → (module of lab.methods, class): the methods under study and their classical comparisons,
# in the order a listing shows them.
REGISTRY: dict[str, tuple[str, str]] = {
    "qdllm": ("qdllm", "QDLLM"),
    "qdllm-classical": ("qdllm", "QDLLMClassical"),
    "logreg": ("qdllm", "LogisticRegression"),
    "mlp": ("qdllm", "SizeMatchedMLP"),
    "mlp-distilled": ("qdllm", "DistilledMLP"),
    "pqc-head": ("pqc_head", "PQCHeadMethod"),
    "pqc-head-classical": ("pqc_head", "PQCHeadClassical"),
    "lora": ("peft", "LoRA"),
    "qpa": ("peft", "QPA"),
    "qpa-published": ("peft", "QPAPublished"),
    "qtha": ("peft", "QTHA"),
    "qpa-classical": ("peft", "QPAClassical"),
    "qtha-classical": ("peft", "QTHAClassical"),
    "llm-qfl": ("federated", "LLMQFL"),
    "llm-qfl-classical": ("federated", "LLMQFLClassical"),
    "fed-logreg": ("federated", "FedLogreg"),
}


@cache
def _method(method_id: str) -> Method[Any, Any, Any]:
    module, name = REGISTRY[method_id]
    method: Method[Any, Any, Any] = getattr(importlib.import_module(f"{__name__}.{module}"), name)()
    if method.id != method_id:
        raise AssertionError(f"REGISTRY names {name} {method_id!r}, but its id is {method.id!r}")
    return method


class Methods(Mapping[str, "Method[Any, Any, Any]"]):
    """id → method; a method's module is imported when the method is first looked up."""

    def __getitem__(self, method_id: str) -> Method[Any, Any, Any]:
        if method_id not in REGISTRY:
            raise KeyError(method_id)
        return _method(method_id)

    def __iter__(self) -> Iterator[str]:
        return iter(REGISTRY)

    def __len__(self) -> int:
        return len(REGISTRY)


METHODS = Methods()


def __getattr__(name: str) -> Any:
    """``LEADERBOARD``: every row a leaderboard can show, id → label, the methods under study
    first, then the classical ones. Built on first use: it needs every method's module."""
    if name == "LEADERBOARD":
        methods = list(METHODS.values())
        return {m.id: m.label for m in sorted(methods, key=lambda m: m.is_baseline)}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["LEADERBOARD", "METHODS", "REGISTRY", "Budget", "FeatureMethod", "Hooks", "Method"]
