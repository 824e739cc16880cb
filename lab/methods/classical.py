"""The classical baselines the feature methods are compared with, on the same embedded split:
linear models and MLPs of about the quantum model's size, each a :class:`TrainingResult`."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from qcore.models.classical import linear_size, linear_svm, logistic_regression, matched_mlp
from qcore.training import classification_metrics, evaluate, train

from ..embedded import EmbeddedSplit
from ..results import TrainingResult
from ..store import model_predictions

Linear = Callable[..., torch.Tensor]
LINEAR: dict[str, tuple[str, Linear]] = {  # baseline id → (row kind, fit-and-predict)
    "logreg": ("logistic regression", logistic_regression),  # QD-LLM's, on the whole training split
    "head-logreg": ("logistic regression", logistic_regression),  # the PQC head's, without its hold-out
    "head-svm": ("linear SVM", linear_svm),
}


# Per-epoch names that would collide with a result's final test metrics: MLflow's latest value
# of a metric is the one at the highest step, so an epoch curve named "accuracy" would stand in
# for the test accuracy of the run.
TRAINING_NAMES = {"loss": "train_loss", "accuracy": "train_accuracy"}


def curves(history: list[dict[str, float]]) -> dict[str, list[float]]:
    """Per-epoch dicts as one list per metric, the training loss and accuracy named as such."""
    return {TRAINING_NAMES.get(k, k): [h[k] for h in history] for k in history[0]}


def linear_baseline(method: str, data: EmbeddedSplit, seed: int, *, teacher: bool, c: float = 1.0) -> TrainingResult:
    """A linear model on the features (inverse regularisation ``c``); ``teacher``: also its
    agreement with the teacher."""
    kind, fit = LINEAR[method]
    t0 = time.perf_counter()
    logits = fit(data.train_x, data.train_y, data.test_x, seed=seed, c=c)
    metrics = classification_metrics(logits.argmax(-1).numpy(), data.test_y, data.test_teacher if teacher else None)
    size = linear_size(data.in_features, data.num_classes)
    return TrainingResult(
        method,
        f"{kind} s{seed}",
        kind,
        seed,
        {**metrics, "train_seconds": time.perf_counter() - t0},
        {"circuit": 0, "classical": size, "total": size},
        job={"c": c, "seed": seed},  # its settings, as MLflow's params of its run
        test_predictions=logits.argmax(-1).tolist(),
    )


def mlp_baseline(
    method: str,
    kind: str,
    data: EmbeddedSplit,
    seed: int,
    *,
    target_params: int,
    alpha: float,
    teacher: bool,
    **fit: Any,
) -> TrainingResult:
    """An MLP of about ``target_params`` trainable numbers, trained like the quantum model it is
    matched to: on the labels (``alpha`` 0) or distilled from the teacher with the same loss,
    with early stopping when the split has a validation hold-out."""
    t0 = time.perf_counter()
    mlp = matched_mlp(data.in_features, data.num_classes, target_params, seed=seed)
    history = train(
        mlp,
        data.train_x,
        data.train_y,
        data.train_teacher if alpha else None,
        seed=seed,
        alpha=alpha,
        val=data.validation,
        **fit,
    )
    metrics = evaluate(mlp, data.test_x, data.test_y, data.test_teacher if teacher else None)
    return TrainingResult(
        method,
        f"{kind} s{seed}",
        kind,
        seed,
        {**metrics, "train_seconds": time.perf_counter() - t0},
        mlp.parameter_counts(),
        curves(history),
        {"target_params": target_params, "alpha": alpha, **fit, "seed": seed},
        test_predictions=model_predictions(mlp, data.test_x),
    )
