"""Classical baselines on the same features as the quantum student.

- :func:`logistic_regression`: the linear probe every embedding paper reports, and
  :func:`linear_svm`, the other classical head the PQC-head paper compares with; both are
  :func:`linear_size` numbers.
- :class:`MLP` sized by :func:`matched_mlp` to about the student's parameter count, so a
  comparison is between models of equal size, not between a tiny circuit and a large network.
- :func:`distilled_mlp`: that MLP trained with the student's distillation loss on the same teacher
  logits, the classical counterpart of QD-LLM.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

from qcore.training import ArrayLike, train


def linear_size(features: int, classes: int) -> int:
    """Trainable numbers of :func:`logistic_regression` or :func:`linear_svm`: sklearn fits one
    weight vector and intercept per class, but a single one for two classes."""
    return (features + 1) * (classes if classes > 2 else 1)


def logistic_regression(
    train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, seed: int = 0, c: float = 1.0
) -> torch.Tensor:
    """Fit on ``(train_x, train_y)`` (L2, inverse regularisation ``c``); return
    ``(len(test_x), classes)`` logits for ``test_x``.

    ``softmax`` of the logits is the probe's ``predict_proba``. They come from the decision
    function, not ``predict_log_proba``, which gives ``-inf`` where a confident probe rounds a
    probability to 0 and would make a distillation loss on them NaN.
    """
    probe = LogisticRegression(C=c, max_iter=1000, random_state=seed)
    probe.fit(np.asarray(train_x), np.asarray(train_y))
    scores = probe.decision_function(np.asarray(test_x))
    if scores.ndim == 1:  # binary: one score d = log(p1 / p0), so the logits are (0, d)
        scores = np.stack([np.zeros_like(scores), scores], axis=1)
    return torch.as_tensor(scores, dtype=torch.float32)


def linear_svm(
    train_x: ArrayLike, train_y: ArrayLike, test_x: ArrayLike, seed: int = 0, c: float = 1.0
) -> torch.Tensor:
    """A linear SVM (squared hinge, L2, inverse regularisation ``c``); ``(len(test_x), classes)``
    decision scores as logits (binary: ``(0, score)``, so the argmax is the SVM's prediction)."""
    from sklearn.svm import LinearSVC

    svm = LinearSVC(C=c, random_state=seed).fit(np.asarray(train_x), np.asarray(train_y))
    scores = svm.decision_function(np.asarray(test_x))
    if scores.ndim == 1:
        scores = np.stack([np.zeros_like(scores), scores], axis=1)
    return torch.as_tensor(scores, dtype=torch.float32)


class MLP(nn.Module):
    """``Linear(d → hidden) → ReLU → Linear(hidden → classes)``, initialised from ``seed``."""

    def __init__(self, in_features: int, hidden: int, num_classes: int, seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        # cast: Sequential's indexing is typed as returning any Module; item 0 is the Linear above
        return self.net(features.to(cast(nn.Linear, self.net[0]).weight.dtype))

    def parameter_counts(self) -> dict[str, int]:
        total = sum(p.numel() for p in self.parameters())
        return {"circuit": 0, "classical": total, "total": total}


def matched_mlp(in_features: int, num_classes: int, target_params: int, seed: int = 0) -> MLP:
    """The :class:`MLP` whose parameter count is closest to ``target_params``.

    An MLP of width ``h`` has ``h·(d + 1 + C) + C`` parameters, so ``h`` is that solved for the
    target, rounded, and at least 1. For the 11-qubit student on 384-d features and 2 classes
    (4,403 parameters) this gives ``h = 11``: the student with its circuit replaced by a ReLU.
    """
    hidden = max(1, round((target_params - num_classes) / (in_features + 1 + num_classes)))
    return MLP(in_features, hidden, num_classes, seed=seed)


def distilled_mlp(
    train_x: ArrayLike,
    train_y: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    target_params: int,
    seed: int = 0,
    **train_options: Any,
) -> tuple[MLP, list[dict[str, float]]]:
    """A size-matched MLP trained with the distillation loss; returns it and its history.

    ``train_options`` go to :func:`qcore.training.train` (epochs, batch_size, lr, temperature,
    alpha, val, on_epoch), so the MLP can be trained exactly as the quantum student was.
    """
    in_features, num_classes = np.shape(train_x)[1], np.shape(teacher_logits)[1]
    model = matched_mlp(in_features, num_classes, target_params, seed)
    history = train(model, train_x, train_y, teacher_logits, seed=seed, **train_options)
    return model, history
