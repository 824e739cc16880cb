"""Typed results: what a training returns, whichever method trained, and how it is stored.

Every method's training ends in one :class:`TrainingResult`; the flows' tables, the compare
leaderboard, the study points and the MLflow children are all built from these, routed by the
method id (never by a display string). A training that used up its retries is a
:class:`FailedTraining`, so one failed point does not take a sweep down with it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any


@dataclass(frozen=True)
class TrainingResult:
    """One finished training of one method and seed.

    ``params`` counts trainable numbers (``circuit``, ``classical``, ``total``);
    ``ablated_predictions`` are the test predictions with every circuit's output replaced by its
    mean over the training inputs (:mod:`qcore.ablation`; ``None`` without a circuit); ``model_url``
    is the saved quantum model (QD-LLM student, PQC head); ``files`` other stored folders by
    name (a fine-tune's ``adapter`` and ``merged`` model); ``cached`` says it was read back
    from an earlier run instead of trained.
    """

    method: str
    name: str
    kind: str
    seed: int
    metrics: dict[str, float]
    params: dict[str, int]
    history: dict[str, list[float]] = field(default_factory=dict)
    job: dict[str, Any] = field(default_factory=dict)
    test_predictions: list[int] | None = None
    ablated_predictions: list[int] | None = None
    model_url: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    cached: bool = False

    status = "ok"

    @property
    def accuracy(self) -> float:
        return float(self.metrics["accuracy"])

    @property
    def trainable_params(self) -> int:
        return int(self.params["total"])

    @property
    def train_seconds(self) -> float:
        return float(self.metrics["train_seconds"])

    def to_json(self) -> dict[str, Any]:
        """The stored form (``result.json``), without ``cached``: that is said when it is read."""
        out = asdict(self)
        del out["cached"]
        return out

    @classmethod
    def from_json(cls, raw: dict[str, Any], *, cached: bool) -> TrainingResult:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in names and k != "cached"}, cached=cached)


@dataclass(frozen=True)
class FailedTraining:
    """A training whose task failed after its retries: its name, job and the error's text."""

    method: str
    name: str
    seed: int
    job: dict[str, Any]
    error: str
    kind: str = "failed"

    status = "failed"
    cached = False


Outcome = TrainingResult | FailedTraining


@dataclass(frozen=True)
class Trained:
    """One training of a chunk of them (``tasks.train.train_chunk``): its outcome, and for a
    trained model the PNG files of its MLflow run, drawn on the worker rather than in the flow."""

    outcome: Outcome
    figures: dict[str, bytes] = field(default_factory=dict)


def job_record(job: Any) -> dict[str, Any]:
    """A job's settings as MLflow shows them: its fields, a nested model config's fields at the
    top level (``qubits``, ``seed``, ``backend`` …)."""
    out: dict[str, Any] = {}
    for name, value in asdict(job).items():
        if is_dataclass(getattr(job, name)):
            out.update(value)
        else:
            out[name] = value
    return out
