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
from .data import Dataset, hold_out, tuning_mask
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
        (chosen from the labels alone, :func:`lab.data.hold_out`: known before any text is embedded,
        so a SetFit body can train on the rest)."""
        is_val = hold_out(self.train_y, fraction, seed)
        return dataclasses.replace(
            self,
            train_x=self.train_x[~is_val],
            train_y=self.train_y[~is_val],
            train_teacher=self.train_teacher[~is_val],
            val_x=self.train_x[is_val],
            val_y=self.train_y[is_val],
            key=hash_json({"embeddings": self.key, "val_fraction": fraction, "seed": seed}),
        )

    def tuning_view(self, fraction: float, seed: int) -> EmbeddedSplit:
        """What hyper-parameter tuning reads: a stratified hold-out of the training examples in
        the place of the test split, which tuning never sees (a method's own early-stopping
        hold-out is then carved from the rest)."""
        is_val = tuning_mask(self.train_y, fraction, seed)
        return dataclasses.replace(
            self,
            train_x=self.train_x[~is_val],
            train_y=self.train_y[~is_val],
            train_teacher=self.train_teacher[~is_val],
            test_x=self.train_x[is_val],
            test_y=self.train_y[is_val],
            test_teacher=self.train_teacher[is_val],
            val_x=None,
            val_y=None,
            key=hash_json({"embeddings": self.key, "tuning_fraction": fraction, "seed": seed}),
        )
