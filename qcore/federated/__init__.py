"""Federated learning of quantum classifiers, with the LLM-QFL controller.

LLM-QFL: LLM-guided quantum federated learning, https://arxiv.org/abs/2505.18656

Plain Python (torch, qiskit, scipy; transformers and peft only for :mod:`qcore.federated.llm`)::

    from qcore.federated import (Client, FederatedRun, ModelSpec, RuleController, LocalTraining,
                                 make_strategy, PartitionSpec)

    parts = PartitionSpec.parse("dirichlet:0.5").split(y_train, clients=5, seed=0)
    spec = ModelSpec("vqc", in_features=4, num_classes=2)
    clients = [Client(i, x_train[p], y_train[p], spec) for i, p in enumerate(parts)]
    run = FederatedRun(clients, spec, make_strategy("fedavg"), RuleController("adaptive"),
                       server_data, test_data, LocalTraining(), llm_losses=..., server_llm_loss=...)
    result = run.run(rounds=10)

Modules: ``partition`` (IID, Dirichlet), ``strategy`` (FedAvg, FedProx, FedAdam), ``vqc`` (the
paper's classifier), ``models`` (what a client can hold), ``client`` (local training),
``controller`` (the five rules, selection, early stop, a generative-LLM controller), ``server``
(the round loop), ``features`` (PCA + scaling fitted on server data), ``llm`` (per-client LoRA).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from qcore._lazy import lazy_names

if TYPE_CHECKING:
    from qcore.federated.client import Client, ClientTimeout, ClientUpdate, LocalTraining
    from qcore.federated.client_models import ModelSpec, build_model
    from qcore.federated.controller import (
        RULES,
        Controller,
        Decision,
        GenerativeController,
        NoController,
        RoundSummary,
        RuleController,
        make_controller,
    )
    from qcore.federated.partition import PartitionError, PartitionSpec, dirichlet, iid
    from qcore.federated.server import ClientFailure, ClientJob, FederatedRun, RoundRecord, RunResult
    from qcore.federated.strategy import STRATEGIES, FedAdam, FedAvg, FedProx, Strategy, make_strategy
    from qcore.federated.vqc import VQCClassifier, VQCConfig

__getattr__ = lazy_names(
    __name__,
    {
        "Client": "qcore.federated.client",
        "ClientTimeout": "qcore.federated.client",
        "ClientUpdate": "qcore.federated.client",
        "LocalTraining": "qcore.federated.client",
        "ModelSpec": "qcore.federated.client_models",
        "build_model": "qcore.federated.client_models",
        "RULES": "qcore.federated.controller",
        "Controller": "qcore.federated.controller",
        "Decision": "qcore.federated.controller",
        "GenerativeController": "qcore.federated.controller",
        "NoController": "qcore.federated.controller",
        "RoundSummary": "qcore.federated.controller",
        "RuleController": "qcore.federated.controller",
        "make_controller": "qcore.federated.controller",
        "PartitionError": "qcore.federated.partition",
        "PartitionSpec": "qcore.federated.partition",
        "dirichlet": "qcore.federated.partition",
        "iid": "qcore.federated.partition",
        "ClientFailure": "qcore.federated.server",
        "ClientJob": "qcore.federated.server",
        "FederatedRun": "qcore.federated.server",
        "RoundRecord": "qcore.federated.server",
        "RunResult": "qcore.federated.server",
        "STRATEGIES": "qcore.federated.strategy",
        "FedAdam": "qcore.federated.strategy",
        "FedAvg": "qcore.federated.strategy",
        "FedProx": "qcore.federated.strategy",
        "Strategy": "qcore.federated.strategy",
        "make_strategy": "qcore.federated.strategy",
        "VQCClassifier": "qcore.federated.vqc",
        "VQCConfig": "qcore.federated.vqc",
    },
)
__all__ = [
    "RULES",
    "STRATEGIES",
    "Client",
    "ClientFailure",
    "ClientJob",
    "ClientTimeout",
    "ClientUpdate",
    "Controller",
    "Decision",
    "FedAdam",
    "FedAvg",
    "FedProx",
    "FederatedRun",
    "GenerativeController",
    "LocalTraining",
    "ModelSpec",
    "NoController",
    "PartitionError",
    "PartitionSpec",
    "RoundRecord",
    "RoundSummary",
    "RuleController",
    "RunResult",
    "Strategy",
    "VQCClassifier",
    "VQCConfig",
    "build_model",
    "dirichlet",
    "iid",
    "make_controller",
    "make_strategy",
]
