"""The models a federated client can hold, built by name from a small picklable spec.

Clients are stateless between rounds (as in Flower's simulation): every round a worker rebuilds
the model from its :class:`ModelSpec` and loads the global weights, so a spec, not a module,
travels to the workers. Kinds:

- ``vqc``: the LLM-QFL classifier (:mod:`qcore.federated.vqc`), one feature per qubit;
- ``qdllm``: the QD-LLM quantum student (:mod:`qcore.models.qdllm`) on the same features;
- ``logreg`` and ``mlp``: the classical federated baselines.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from qcore.federated.strategy import Weights
from qcore.federated.vqc import VQCClassifier, VQCConfig

MODEL_KINDS = ("vqc", "qdllm", "logreg", "mlp")
QUANTUM_KINDS = ("vqc", "qdllm")


@dataclass(frozen=True)
class ModelSpec:
    """``options`` go to the model's config (e.g. ``readout`` for ``vqc``, ``hidden`` for ``mlp``);
    ``backend_options`` to the quantum layer (``shots``, ``simulator_seed`` on ``aer``)."""

    kind: str
    in_features: int
    num_classes: int
    backend: str = "exact"
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    backend_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind {self.kind!r} is unknown; choose one of {list(MODEL_KINDS)}")

    @property
    def quantum(self) -> bool:
        return self.kind in QUANTUM_KINDS


def build_model(spec: ModelSpec) -> nn.Module:
    """A fresh model; its forward maps ``(batch, in_features)`` to ``(batch, classes)`` logits."""
    if spec.kind == "vqc":
        config = VQCConfig(
            num_classes=spec.num_classes, qubits=spec.in_features, backend=spec.backend, seed=spec.seed, **spec.options
        )
        return VQCClassifier(config, **spec.backend_options)
    if spec.kind == "qdllm":
        from qcore.models.qdllm import QDLLMConfig, QDLLMStudent

        options = {"qubits": spec.in_features, **spec.options}
        qdllm_config = QDLLMConfig(
            in_features=spec.in_features, num_classes=spec.num_classes, backend=spec.backend, seed=spec.seed, **options
        )
        return QDLLMStudent(qdllm_config, **spec.backend_options)
    if spec.kind == "mlp":
        from qcore.models.classical import MLP

        return MLP(spec.in_features, spec.options.get("hidden", 16), spec.num_classes, seed=spec.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        return nn.Linear(spec.in_features, spec.num_classes)


def get_weights(model: nn.Module) -> Weights:
    """The trainable parameters by name, as numpy copies (what a client sends)."""
    return {name: p.detach().cpu().numpy().copy() for name, p in model.named_parameters() if p.requires_grad}


def set_weights(model: nn.Module, weights: Weights) -> None:
    """Load ``weights`` into the model; refuse missing, extra or misshapen entries."""
    own = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if set(own) != set(weights):
        raise ValueError(
            f"weights do not fit the model: missing {sorted(set(own) - set(weights))}, "
            f"unexpected {sorted(set(weights) - set(own))}"
        )
    with torch.no_grad():
        for name, p in own.items():
            if tuple(weights[name].shape) != tuple(p.shape):
                raise ValueError(f"{name}: shape {tuple(weights[name].shape)}, model has {tuple(p.shape)}")
            p.copy_(torch.as_tensor(np.asarray(weights[name]), dtype=p.dtype))
