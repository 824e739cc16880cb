"""QD-LLM: a teacher LLM distilled into quantum students (arXiv 2505.13205).

The student (:class:`qcore.models.qdllm.QDLLMStudent`) reads the teacher's sentence features and
learns from its soft labels with the distillation loss; it is compared with logistic regression
and MLPs of about its size on the same features, one trained on the labels, one distilled the
same way.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import time
from abc import abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from qiskit import QuantumCircuit

from qcore.models.qdllm import QDLLMConfig, QDLLMStudent
from qcore.training import classification_metrics, evaluate, train

from ..artifacts import hash_json
from ..data import DataRequest
from ..embedded import EmbeddedSplit
from ..params.distill import DistillParams
from ..results import TrainingResult, job_record
from ..search_space import Dimension, Float, Int
from ..store import cached_result, feature_ablation, model_predictions, store_result
from ..teacher import TeacherSpec
from .base import Budget, ClassicalStandin, FeatureMethod, Hooks, ModelJob, exact_training_seconds
from .classical import curves, linear_baseline, mlp_baseline


@dataclass(frozen=True)
class StudentJob(ModelJob):
    """One student: its full model config (which holds its seed and simulator), the training
    settings, and the simulator's options."""

    model: QDLLMConfig
    alpha: float
    temperature: float
    epochs: int
    batch_size: int
    lr: float
    circuit_lr: float | None = None
    backend_options: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"student-q{self.model.qubits}-b{self.model.blocks}-a{self.alpha:g}-s{self.seed}"


class QDLLM(FeatureMethod[DistillParams, StudentJob]):
    id = "qdllm"
    label = "QD-LLM student"
    params = DistillParams
    model_tag = "qdllm"
    data_fields = (
        "dataset",
        "text_column",
        "label_column",
        "train_size",
        "test_size",
        "split_seed",
        "teacher",
        "teacher_model",
    )

    search_space: ClassVar[dict[str, Dimension]] = {
        "lr": Float(1e-3, 0.1, log=True),
        "circuit_lr": Float(1e-3, 0.3, log=True),
        "alpha": Float(0.0, 1.0),
        "temperature": Float(1.0, 8.0),
        "blocks": Int(1, 4),
    }

    def data_request(self, params: DistillParams) -> DataRequest:
        return params.data_request()

    def teacher(self, params: DistillParams) -> TeacherSpec:
        return TeacherSpec(kind=params.teacher, model=params.teacher_model, batch_size=params.teacher_batch_size)

    def for_budget(self, budget: Budget, seeds: list[int]) -> list[DistillParams]:
        return [
            DistillParams(
                dataset=budget.dataset,
                text_column=budget.text_column,
                label_column=budget.label_column,
                train_size=budget.train_size,
                test_size=budget.test_size,
                split_seed=budget.split_seed,
                seeds=seeds,
                qubits=[budget.qubits],
                blocks=[budget.blocks],
                epochs=budget.epochs,
                batch_size=budget.batch_size,
                eval_shots=None,
                eval_noise=None,
            )
        ]

    def jobs(self, params: DistillParams, data: EmbeddedSplit) -> list[StudentJob]:
        options: dict[str, Any] = {}
        if params.backend == "aer":
            options = {k: v for k, v in (("shots", params.shots), ("noise", params.noise)) if v is not None}
        return [
            StudentJob(
                QDLLMConfig(
                    in_features=data.in_features,
                    num_classes=data.num_classes,
                    qubits=q,
                    blocks=b,
                    backend=params.backend,
                    circuit=params.circuit,
                    seed=s,
                ),
                alpha=a,
                temperature=params.temperature,
                epochs=params.epochs,
                batch_size=params.batch_size,
                lr=params.lr,
                circuit_lr=params.circuit_lr,
                backend_options={**options, "simulator_seed": s} if options else options,
            )
            for q, b, a, s in itertools.product(params.qubits, params.blocks, params.alpha, params.seeds)
        ]

    def train(self, job: StudentJob, data: EmbeddedSplit, root: str, hooks: Hooks) -> TrainingResult:
        """Train one student with the distillation loss and evaluate it on the test split."""
        key = hash_json({"data": data.key, "job": asdict(job), "v": 2})
        if (cached := cached_result(root, key)) is not None:
            hooks.log(f"{job.name}: finished before, reusing {key[:12]}")
            return cached
        hooks.progress(0, "started")

        def progress(epoch: int, m: dict[str, float]) -> None:
            note = f"epoch {epoch}/{job.epochs}: loss {m['loss']:.4f}, train acc {m['accuracy']:.3f}"
            hooks.log(f"{job.name} {note}")
            hooks.progress(epoch, note)

        def report(epoch: int, m: dict[str, float]) -> None:
            progress(epoch, m)
            if hooks.report is not None:
                hooks.report(epoch, m["val_accuracy"])

        t0 = time.perf_counter()
        spread = {} if hooks.dask_client is None else {"client": hooks.dask_client}
        model = QDLLMStudent(job.model, **job.backend_options, **spread)
        history = train(
            model,
            data.train_x,
            data.train_y,
            data.train_teacher,
            epochs=job.epochs,
            batch_size=job.batch_size,
            lr=job.lr,
            circuit_lr=job.circuit_lr,
            seed=job.seed,
            temperature=job.temperature,
            alpha=job.alpha,
            on_epoch=report,
            # a tuning trial's test split is its held-out view: it reports each epoch's accuracy
            val=None if hooks.report is None else (data.test_x, data.test_y),
        )
        seconds = time.perf_counter() - t0
        model = model.with_backend("exact") if job.model.backend != "exact" else model
        metrics = evaluate(model, data.test_x, data.test_y, data.test_teacher)
        result = TrainingResult(
            self.id,
            job.name,
            "quantum student",
            job.seed,
            {**metrics, "train_seconds": seconds},
            model.parameter_counts(),
            curves(history),
            job_record(job),
            model_predictions(model, data.test_x),
            ablated_predictions=feature_ablation(model, data.train_x, data.test_x) if hooks.save_models else None,
        )
        stored = store_result(root, key, model, result, data)
        hooks.log(f"{job.name}: test accuracy {metrics['accuracy']:.4f}")
        return stored

    def cost(self, job: StudentJob, data: EmbeddedSplit) -> float | None:
        """The exact simulator's cost of the student's circuit (unknown on ``aer``, whose
        parameter-shift gradients cost far more)."""
        if job.model.backend != "exact":
            return None
        circuits = () if job.model.circuit == "classical" else (_circuit(dataclasses.replace(job.model, seed=0)),)
        return exact_training_seconds(
            circuits,
            epochs=job.epochs,
            batch_size=job.batch_size,
            train=len(data.train_y),
            val=0,
            test=len(data.test_y),
        )

    def teacher_row(self, data: EmbeddedSplit) -> TrainingResult:
        """The teacher's own test scores: the first row of the distill table."""
        metrics = classification_metrics(data.test_teacher.argmax(-1), data.test_y, data.test_teacher)
        return TrainingResult("teacher", "teacher", "teacher", 0, metrics, {})

    def size(self, data: EmbeddedSplit, qubits: int, blocks: int) -> int:
        """Trainable parameters of a student: the size its MLP competitors are matched to."""
        config = QDLLMConfig(in_features=data.in_features, num_classes=data.num_classes, qubits=qubits, blocks=blocks)
        return QDLLMStudent(config).parameter_counts()["total"]

    def baselines(self, params: DistillParams, data: EmbeddedSplit, seed: int) -> list[TrainingResult]:
        """Logistic regression, and MLPs matched to the first student configuration: one trained
        on the labels only, one distilled with the student's loss (the rows of :data:`BASELINES`,
        here with the student's own settings)."""
        return [b.fit(params, data, seed) for b in BASELINES]


@functools.lru_cache(maxsize=256)
def _circuit(config: QDLLMConfig) -> QuantumCircuit:
    """The student's circuit (a study's seeds share it, hence the cache)."""
    return config.model_circuit().circuit


@dataclass(frozen=True)
class BaselineJob:
    """One seed of a QD-LLM baseline: its parameters (those of the student it is matched to)."""

    method: str
    params: DistillParams

    @property
    def name(self) -> str:
        return f"{self.method}-s{self.seed}"

    @property
    def seed(self) -> int:
        return self.params.seeds[0]


class QDLLMBaseline(QDLLM):
    """A classical row of the QD-LLM comparison, on the student's features and split: a method of
    its own, so a tuned compare tunes it under the same budget as the student (its own learning
    rate, distillation weight or regularisation), not with the student's values."""

    is_baseline = True

    def jobs(self, params: DistillParams, data: EmbeddedSplit) -> list[BaselineJob]:  # type: ignore[override]
        return [BaselineJob(self.id, self.seeded(params, s)) for s in params.seeds]

    def train(self, job: BaselineJob, data: EmbeddedSplit, root: str, hooks: Hooks) -> TrainingResult:  # type: ignore[override]
        """Fit and score one seed (in seconds: nothing is stored)."""
        result = self.fit(job.params, data, job.seed)
        hooks.log(f"{job.name}: test accuracy {result.accuracy:.4f}")
        return result

    @abstractmethod
    def fit(self, params: DistillParams, data: EmbeddedSplit, seed: int) -> TrainingResult:
        """One seed of this baseline, with ``params``' settings."""


class LogisticRegression(QDLLMBaseline):
    id = "logreg"
    label = "logistic regression"
    search_space: ClassVar[dict[str, Dimension]] = {"logreg_c": Float(1e-2, 1e3, log=True)}

    def fit(self, params: DistillParams, data: EmbeddedSplit, seed: int) -> TrainingResult:
        return linear_baseline(self.id, data, seed, teacher=True, c=params.logreg_c)


class SizeMatchedMLP(QDLLMBaseline):
    """An MLP of the first student configuration's size; ``distilled``: with the student's loss."""

    id = "mlp"
    label = "MLP (QD-LLM size)"
    distilled = False
    search_space: ClassVar[dict[str, Dimension]] = {"lr": Float(1e-3, 0.1, log=True)}

    def fit(self, params: DistillParams, data: EmbeddedSplit, seed: int) -> TrainingResult:
        return mlp_baseline(
            self.id,
            "classical distilled MLP" if self.distilled else "MLP (labels only)",
            data,
            seed,
            target_params=self.size(data, params.qubits[0], params.blocks[0]),
            alpha=params.alpha[0] if self.distilled else 0.0,
            teacher=True,
            epochs=params.epochs,
            batch_size=params.batch_size,
            lr=params.lr,
            temperature=params.temperature,
        )


class DistilledMLP(SizeMatchedMLP):
    id = "mlp-distilled"
    label = "distilled MLP (QD-LLM size)"
    distilled = True
    search_space: ClassVar[dict[str, Dimension]] = {
        "lr": Float(1e-3, 0.1, log=True),
        "alpha": Float(0.0, 1.0),
        "temperature": Float(1.0, 8.0),
    }


BASELINES: tuple[QDLLMBaseline, ...] = (LogisticRegression(), SizeMatchedMLP(), DistilledMLP())


class QDLLMClassical(ClassicalStandin, QDLLM):
    """The QD-LLM student with a classical MLP of the circuit's size in its place, trained and
    tuned the same way: what the circuit adds over a network as small (the ablation)."""

    id = "qdllm-classical"
    label = "QD-LLM student, classical stand-in"
