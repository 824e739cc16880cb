"""Models: the QD-LLM quantum student, the PQC classification head and the classical baselines
they are compared with. :func:`load_model` rebuilds any saved quantum model from its folder."""

from __future__ import annotations

from typing import TYPE_CHECKING

from qcore._lazy import lazy_names

if TYPE_CHECKING:
    from qcore.models.base import QuantumModel, load_model
    from qcore.models.classical import MLP, distilled_mlp, linear_size, linear_svm, logistic_regression, matched_mlp
    from qcore.models.pqc_head import PQCHead
    from qcore.models.pqc_head_config import PQCHeadConfig
    from qcore.models.qdllm import QDLLMConfig, QDLLMStudent

__getattr__ = lazy_names(
    __name__,
    {
        "QuantumModel": "qcore.models.base",
        "load_model": "qcore.models.base",
        "MLP": "qcore.models.classical",
        "distilled_mlp": "qcore.models.classical",
        "linear_size": "qcore.models.classical",
        "linear_svm": "qcore.models.classical",
        "logistic_regression": "qcore.models.classical",
        "matched_mlp": "qcore.models.classical",
        "PQCHead": "qcore.models.pqc_head",
        "PQCHeadConfig": "qcore.models.pqc_head_config",
        "QDLLMConfig": "qcore.models.qdllm",
        "QDLLMStudent": "qcore.models.qdllm",
    },
)
__all__ = [
    "MLP",
    "PQCHead",
    "PQCHeadConfig",
    "QDLLMConfig",
    "QDLLMStudent",
    "QuantumModel",
    "distilled_mlp",
    "linear_size",
    "linear_svm",
    "load_model",
    "logistic_regression",
    "matched_mlp",
]
