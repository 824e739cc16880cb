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
from typing import Any, ClassVar, Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator
from qiskit import QuantumCircuit

from qcore.models.qdllm import QDLLMConfig, QDLLMStudent
from qcore.simulators.aer import fake_backend_qubits
from qcore.simulators.fake_devices import FAKE_DEVICES
from qcore.training import classification_metrics, evaluate, train

from ..artifacts import hash_json
from ..data import DataRequest
from ..embedded import EmbeddedSplit
from ..noise import NoiseSetting
from ..params import DataOptions, Options, RunOptions, experiment, items_between, one_of, refuse_unused
from ..results import TrainingResult, job_record
from ..search_space import Dimension, Float, Int
from ..store import cached_result, feature_ablation, model_predictions, store_result
from ..teacher import TeacherSpec
from .base import Budget, ClassicalStandin, FeatureMethod, Hooks, ModelJob, exact_training_seconds
from .classical import curves, linear_baseline, mlp_baseline

MAX_QUBITS = 20
# Each item of these list fields (a list sweeps) lies in its range: the schema and the validator.
RANGES = {"qubits": (2, MAX_QUBITS), "blocks": (1, 20), "alpha": (0, 1)}


class DistillFields(Options):
    """The distill flow's own parameters (between the data and the run groups in the form)."""

    train_size: int | None = Field(2000, ge=2, description="training examples (stratified subsample)")
    test_size: int | None = Field(None, ge=1, description="test examples (None: the whole test split)")
    split_seed: int = Field(0, description="seed of the split and subsampling")
    teacher: Literal["probe", "hf-classifier", "causal-lm"] = Field(
        "probe", description="teacher kind: probe (frozen MiniLM + logistic regression), hf-classifier or causal-lm"
    )
    teacher_model: str | None = Field(
        None, description="teacher model name or folder (default: the embedded all-MiniLM-L6-v2)"
    )
    teacher_batch_size: int = Field(64, ge=1, description="teacher inference batch size")
    teacher_shard_size: int = Field(
        4000, ge=1, description="texts per teacher shard: larger sets are split across the Dask workers"
    )
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="training seeds (one student each)")
    qubits: list[int] = Field(
        [11],
        min_length=1,
        description=f"student qubits, 2..{MAX_QUBITS} (a list sweeps)",
        json_schema_extra=items_between(*RANGES["qubits"]),
    )
    blocks: list[int] = Field(
        [2],
        min_length=1,
        description="QD-LLM ansatz blocks, 1..20 (a list sweeps)",
        json_schema_extra=items_between(*RANGES["blocks"]),
    )
    circuit: Literal["quantum", "classical"] = Field(
        "quantum", description="the circuit, or a classical MLP of as many parameters in its place (the ablation)"
    )
    alpha: list[float] = Field(
        [0.5],
        min_length=1,
        description="distillation weight α in [0, 1] (a list sweeps)",
        json_schema_extra=items_between(*RANGES["alpha"], integer=False),
    )
    temperature: float = Field(2.0, gt=0, description="distillation temperature T")
    logreg_c: float = Field(
        1.0, gt=0, le=1e4, description="the logistic-regression baseline's inverse L2 regularisation C"
    )
    epochs: int = Field(10, ge=1, le=1000, description="training epochs")
    batch_size: int = Field(32, ge=1, description="training batch size")
    lr: float = Field(
        0.01,
        gt=0,
        le=1,
        description="Adam learning rate (the classical layers', and the circuit's unless circuit_lr is given)",
    )
    circuit_lr: float | None = Field(
        None, gt=0, le=1, description="Adam learning rate of the circuit's angles (None: lr)"
    )
    backend: Literal["exact", "aer"] = Field(
        "exact", description="training simulator: exact (autograd) or aer (parameter shift, noise-aware)"
    )
    shots: int | None = Field(None, ge=1, description="aer training: shots per circuit (None: exact expectations)")
    noise: str | None = Field(
        None,
        description="aer training: IBM fake backend whose noise to train under",
        json_schema_extra=one_of(FAKE_DEVICES, optional=True),
    )
    eval_shots: int | None = Field(1024, ge=1, description="noisy evaluation: shots (None: skip)")
    eval_noise: str | None = Field(
        "fake_torino",
        description="noisy evaluation: IBM fake backend (None: skip)",
        json_schema_extra=one_of(FAKE_DEVICES, optional=True),
    )
    eval_samples: int = Field(200, ge=1, description="test examples in the shots evaluation")
    noise_samples: int = Field(
        200,
        ge=1,
        description="test examples in the device-noise evaluation (0.3-0.5 CPU s each at 11 qubits on fake_torino)",
    )


class DistillParams(RunOptions, DistillFields, DataOptions):
    """Parameters of the distill flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    experiment: str = experiment("qllm-distill")

    @field_validator("qubits", "blocks", "alpha")
    @classmethod
    def _in_range(cls, v: list[float], info: ValidationInfo) -> list[float]:
        lo, hi = RANGES[str(info.field_name)]
        bad = [x for x in v if not lo <= x <= hi]
        if bad:
            raise ValueError(f"{info.field_name} {bad} out of range; allowed {lo}..{hi}")
        return v

    @field_validator("noise", "eval_noise")
    @classmethod
    def _fake_backend(cls, v: str | None) -> str | None:
        if v is not None and v not in FAKE_DEVICES:
            raise ValueError(f"unknown fake backend {v!r}; allowed: {', '.join(FAKE_DEVICES)}")
        return v

    @model_validator(mode="after")
    def _all_apply(self) -> DistillParams:
        """Options the chosen backend or evaluations would ignore are refused, naming the switch."""
        if self.backend == "exact":
            refuse_unused(self, ("shots", "noise"), "they apply to aer training only; give backend=aer")
        if self.eval_noise is None:
            refuse_unused(self, ("noise_samples",), "the device-noise evaluation is off; give eval_noise")
        if self.eval_shots is None:
            refuse_unused(self, ("eval_samples",), "the shots evaluation is off; give eval_shots")
        return self

    @model_validator(mode="after")
    def _device_fits(self) -> DistillParams:
        for name in {self.noise, self.eval_noise} - {None}:
            size = fake_backend_qubits(str(name))
            if max(self.qubits) > size:
                raise ValueError(f"{name} has {size} qubits; a {max(self.qubits)}-qubit student does not fit")
        return self

    def noisy_evaluations(self) -> list[tuple[NoiseSetting, int]]:
        """The noisy evaluations of the first student, each with its number of test samples."""
        out = []
        if self.eval_shots:
            out.append(
                (
                    NoiseSetting(f"shots={self.eval_shots}", "shots", {"shots": self.eval_shots}, self.eval_shots),
                    self.eval_samples,
                )
            )
        if self.eval_noise:
            shots = self.eval_shots or 1024
            out.append(
                (
                    NoiseSetting(
                        f"{self.eval_noise}+shots={shots}", "device", {"noise": self.eval_noise, "shots": shots}, 0.0
                    ),
                    self.noise_samples,
                )
            )
        return out


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
    not_axes = (
        "seeds",
        "experiment",
        "dask_address",
        "teacher_batch_size",
        "teacher_shard_size",
        "eval_shots",
        "eval_noise",
        "eval_samples",
        "noise_samples",
    )

    search_space: ClassVar[dict[str, Dimension]] = {
        "lr": Float(1e-3, 0.1, log=True),
        "circuit_lr": Float(1e-3, 0.3, log=True),
        "alpha": Float(0.0, 1.0),
        "temperature": Float(1.0, 8.0),
        "blocks": Int(1, 4),
    }

    def data_request(self, params: DistillParams) -> DataRequest:
        return DataRequest(
            params.dataset,
            params.train_size,
            params.test_size,
            params.split_seed,
            params.text_column,
            params.label_column,
        )

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
