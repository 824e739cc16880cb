"""Models: the QD-LLM quantum student, the PQC classification head and the classical baselines
they are compared with. :func:`load_model` rebuilds any saved quantum model from its folder."""

from qcore.models.base import QuantumModel, load_model
from qcore.models.classical import MLP, distilled_mlp, linear_size, linear_svm, logistic_regression, matched_mlp
from qcore.models.pqc_head import PQCHead, PQCHeadConfig
from qcore.models.qdllm import QDLLMConfig, QDLLMStudent

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
