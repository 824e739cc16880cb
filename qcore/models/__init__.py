"""Models: the QD-LLM quantum student and the classical baselines it is compared with."""

from qcore.models.classical import MLP, distilled_mlp, logistic_regression, matched_mlp
from qcore.models.qdllm import QDLLMConfig, QDLLMStudent

__all__ = [
    "MLP",
    "QDLLMConfig",
    "QDLLMStudent",
    "distilled_mlp",
    "logistic_regression",
    "matched_mlp",
]
