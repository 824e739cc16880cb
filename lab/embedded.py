"""One embedded split: what every feature-based method learns from.

The teacher (or sentence encoder) turns a data set's split into features and soft labels once
(cached by content, :mod:`lab.teacher`); QD-LLM students, PQC heads, the classical baselines
and the compare flow's federated clients all read the same :class:`EmbeddedSplit`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np

from .artifacts import hash_json
from .data import Dataset, stratified_indices
from .teacher import TeacherOutputs, TeacherSpec


@dataclass(frozen=True)
class EmbeddedSplit:
    """Features (``*_x``), labels (``*_y``) and teacher logits (``*_teacher``) of a split.

    ``key`` identifies the content (the teacher cache key, plus the validation hold-out when
    there is one); ``teacher`` holds the :class:`~lab.teacher.TeacherSpec` fields, which is how
    ``qllm predict`` turns new text into the same features. ``val_x``/``val_y`` are set by
    :meth:`with_validation` for methods that stop early.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    train_teacher: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    test_teacher: np.ndarray
    label_names: tuple[str, ...]
    key: str
    teacher: dict[str, Any]
    val_x: np.ndarray | None = None
    val_y: np.ndarray | None = None

    @classmethod
    def of(cls, data: Dataset, outputs: TeacherOutputs, spec: TeacherSpec) -> EmbeddedSplit:
        return cls(
            outputs.train.features,
            np.asarray(data.train_labels),
            outputs.train.logits,
            outputs.test.features,
            np.asarray(data.test_labels),
            outputs.test.logits,
            tuple(data.label_names),
            outputs.key,
            dataclasses.asdict(spec),
        )

    @property
    def in_features(self) -> int:
        return int(self.train_x.shape[1])

    @property
    def num_classes(self) -> int:
        return len(self.label_names)

    @property
    def validation(self) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self.val_x is None or self.val_y is None else (self.val_x, self.val_y)

    def with_validation(self, fraction: float, seed: int) -> EmbeddedSplit:
        """Hold out a stratified, seeded ``fraction`` of the training examples for early stopping
        (the examples :func:`validation_mask` marks)."""
        is_val = validation_mask(self.train_y, fraction, seed, self.num_classes)
        return dataclasses.replace(
            self,
            train_x=self.train_x[~is_val],
            train_y=self.train_y[~is_val],
            train_teacher=self.train_teacher[~is_val],
            val_x=self.train_x[is_val],
            val_y=self.train_y[is_val],
            key=hash_json({"embeddings": self.key, "val_fraction": fraction, "seed": seed}),
        )


def validation_mask(labels: np.ndarray, fraction: float, seed: int, num_classes: int) -> np.ndarray:
    """Which training examples :meth:`EmbeddedSplit.with_validation` holds out: a stratified,
    seeded ``fraction`` (at least one per class), chosen from the labels alone, so it is known
    before any text is embedded (a SetFit body trains on the rest, :mod:`lab.setfit_body`)."""
    labels = np.asarray(labels)
    n_val = max(num_classes, round(len(labels) * fraction))
    is_val = np.zeros(len(labels), dtype=bool)
    is_val[stratified_indices(labels, n_val, np.random.default_rng([seed, 5]))] = True
    return is_val
