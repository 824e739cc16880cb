"""QD-LLM as a Prefect flow: data → teacher LLM → quantum students (Dask-parallel sweep) →
evaluation beside classical baselines and under noise → MLflow.

Paper: Quantum Knowledge Distillation for Large Language Models, arXiv 2505.13205.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, Literal

import numpy as np
from mlflow import ActiveRun
from prefect import flow, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator, ValidationInfo

from tasks import reporting, tracking
from tasks.prepare import prepare_data, teacher_outputs
from qcore.simulators.aer import fake_backend_names, fake_backend_qubits
from qcore.training import classification_metrics
from tasks.data import Dataset, load_dataset
from tasks.settings import Settings
from tasks.teacher import TeacherSpec
from tasks.train import (Features, StudentJob, classical_baselines, merge_noisy, noisy_evaluation,
                         train_student)

from .runner import check_dask_address, dask_runner, mlflow_hint, run_from_cli

MAX_QUBITS = 20


class DistillParams(BaseModel):
    """Parameters of the distill flow (the CLI options, the Prefect UI form, prefect.yaml)."""

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("sst2", description="named set (sst2, subj, trec, trec-fine, ag_news) or a "
                                             "TSV/CSV/JSONL path or fsspec URL")
    text_column: str | None = Field(None, description="text column of a file data set")
    label_column: str | None = Field(None, description="label column of a file data set")
    train_size: int | None = Field(2000, ge=2, description="training examples (stratified subsample)")
    test_size: int | None = Field(None, ge=1, description="test examples (None: the whole test split)")
    split_seed: int = Field(0, description="seed of the split and subsampling")
    teacher: Literal["probe", "hf-classifier", "causal-lm"] = Field(
        "probe", description="teacher kind: probe (frozen MiniLM + logistic regression), "
                             "hf-classifier or causal-lm")
    teacher_model: str | None = Field(None, description="teacher model name or folder "
                                                        "(default: the embedded all-MiniLM-L6-v2)")
    teacher_batch_size: int = Field(64, ge=1, description="teacher inference batch size")
    teacher_shard_size: int = Field(4000, ge=1, description="texts per teacher shard: larger sets are "
                                                            "split across the Dask workers")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="training seeds (one student each)")
    qubits: list[int] = Field([11], min_length=1, description=f"student qubits, 2..{MAX_QUBITS} (a list sweeps)")
    blocks: list[int] = Field([2], min_length=1, description="QD-LLM ansatz blocks, 1..20 (a list sweeps)")
    alpha: list[float] = Field([0.5], min_length=1, description="distillation weight α in [0, 1] (a list sweeps)")
    temperature: float = Field(2.0, gt=0, description="distillation temperature T")
    epochs: int = Field(10, ge=1, le=1000, description="training epochs")
    batch_size: int = Field(32, ge=1, description="training batch size")
    lr: float = Field(0.01, gt=0, le=1, description="Adam learning rate")
    backend: Literal["exact", "aer"] = Field("exact", description="training simulator: exact (autograd) "
                                                                 "or aer (parameter shift, noise-aware)")
    shots: int | None = Field(None, ge=1, description="aer training: shots per circuit (None: exact expectations)")
    noise: str | None = Field(None, description="aer training: IBM fake backend whose noise to train under")
    eval_shots: int | None = Field(1024, ge=1, description="noisy evaluation: shots (None: skip)")
    eval_noise: str | None = Field("fake_torino", description="noisy evaluation: IBM fake backend (None: skip)")
    eval_samples: int = Field(200, ge=1, description="test examples in the shots evaluation")
    noise_samples: int = Field(6, ge=1, description="test examples in the device-noise evaluation "
                                                   "(about 20 s each at 11 qubits on fake_torino)")
    experiment: str = Field("qllm-distill", min_length=1, description="MLflow experiment name")
    dask_address: str | None = Field(None, description="Dask scheduler address (default: a temporary LocalCluster)")

    @field_validator("qubits", "blocks", "alpha")
    @classmethod
    def _in_range(cls, v: list[float], info: ValidationInfo) -> list[float]:
        lo, hi = {"qubits": (2, MAX_QUBITS), "blocks": (1, 20), "alpha": (0, 1)}[info.field_name]
        bad = [x for x in v if not lo <= x <= hi]
        if bad:
            raise ValueError(f"{info.field_name} {bad} out of range; allowed {lo}..{hi}")
        return v

    @field_validator("noise", "eval_noise")
    @classmethod
    def _fake_backend(cls, v: str | None) -> str | None:
        if v is not None and v not in fake_backend_names():
            raise ValueError(f"unknown fake backend {v!r}; allowed: {', '.join(fake_backend_names())}")
        return v

    @model_validator(mode="after")
    def _device_fits(self) -> "DistillParams":
        for name in {self.noise, self.eval_noise} - {None}:
            size = fake_backend_qubits(name)
            if max(self.qubits) > size:
                raise ValueError(f"{name} has {size} qubits; a {max(self.qubits)}-qubit student does not fit")
        return self

    def check_data(self) -> None:
        """Read and split the data set: bad names, paths, columns or sizes fail here."""
        load_dataset(self.dataset, train_size=self.train_size, test_size=self.test_size, seed=self.split_seed,
                     text_column=self.text_column, label_column=self.label_column)

    def jobs(self) -> list[StudentJob]:
        options: dict[str, Any] = {}
        if self.backend == "aer":
            options = {k: v for k, v in (("shots", self.shots), ("noise", self.noise)) if v is not None}
        return [StudentJob(qubits=q, blocks=b, alpha=a, seed=s, temperature=self.temperature,
                           epochs=self.epochs, batch_size=self.batch_size, lr=self.lr,
                           backend=self.backend,
                           backend_options={**options, "simulator_seed": s} if options else options)
                for q, b, a, s in itertools.product(self.qubits, self.blocks, self.alpha, self.seeds)]


def prepare_distill_data(params: DistillParams, root: str) -> tuple[Dataset, Features]:
    """The split and the teacher's features and soft labels (cached, sharded over the workers)."""
    data = prepare_data(params.dataset, train_size=params.train_size, test_size=params.test_size,
                        seed=params.split_seed, text_column=params.text_column,
                        label_column=params.label_column)
    spec = TeacherSpec(kind=params.teacher, model=params.teacher_model,
                       batch_size=params.teacher_batch_size)
    teacher = teacher_outputs(data, spec, root, params.teacher_shard_size)
    return data, Features(teacher.train.features, np.asarray(data.train_labels), teacher.train.logits,
                          teacher.test.features, np.asarray(data.test_labels), teacher.test.logits,
                          tuple(data.label_names), teacher.key, dataclasses.asdict(spec))


def submit_baselines(params: DistillParams, feats: Features, seeds: list[int]) -> list[Any]:
    """Logistic regression and MLPs matched to the first student configuration, one task per seed."""
    target = student_size(feats, params.qubits[0], params.blocks[0])
    return classical_baselines.map(
        seed=seeds, data=unmapped(feats), target_params=unmapped(target),
        epochs=unmapped(params.epochs), batch_size=unmapped(params.batch_size), lr=unmapped(params.lr),
        temperature=unmapped(params.temperature), alpha=unmapped(params.alpha[0]))


def _teacher_row(feats: Features) -> dict[str, Any]:
    return {"name": "teacher", "kind": "teacher", "params": {},
            "metrics": classification_metrics(feats.test_teacher.argmax(-1), feats.test_y, feats.test_teacher)}


@flow(name="distill", task_runner=dask_runner(), log_prints=True)
def distill(params: DistillParams = DistillParams()) -> dict[str, Any]:
    """Distil a teacher LLM into quantum students and compare them with classical competitors."""
    check_dask_address(params.dask_address)
    settings = Settings()
    root = settings.artifact_root
    with tracking.parent_run(settings, params.experiment, "distill", params.model_dump(),
                             tags={"flow": "distill"}, system_metrics=True) as parent:
        data, feats = prepare_distill_data(params, root)
        tracking.set_tags(parent, {"data_hash": data.content_hash})
        jobs = params.jobs()
        students = train_student.map(jobs, unmapped(feats), unmapped(root))
        baselines = submit_baselines(params, feats, params.seeds)
        student_rows = [f.result() for f in students]
        settings_ = []
        if params.eval_shots:
            settings_.append((f"shots={params.eval_shots}", {"shots": params.eval_shots}, params.eval_samples))
        if params.eval_noise:
            shots = params.eval_shots or 1024
            settings_.append((f"{params.eval_noise}+shots={shots}", {"noise": params.eval_noise, "shots": shots},
                              params.noise_samples))
        first = student_rows[0]
        chunked = {}
        for label, opts, samples in settings_:
            n = min(samples, len(feats.test_y))
            step = max(1, -(-n // settings.dask_workers))  # one chunk per worker
            chunked[label] = [noisy_evaluation.submit(first["model_url"], feats.test_x, label, i,
                                                      min(i + step, n), 0, opts) for i in range(0, n, step)]
        baseline_rows = [r for f in baselines for r in f.result()]
        noisy_rows = [merge_noisy([f.result() for f in futures], feats.test_y) for futures in chunked.values()]

        rows = [_teacher_row(feats)] + baseline_rows + student_rows
        table = reporting.summarize(rows)
        md = reporting.markdown(table)
        _log_mlflow(parent, feats, student_rows, baseline_rows, noisy_rows, table)
        run_id = parent.info.run_id
    create_table_artifact(key="distill-results", table=table, description="QD-LLM: students and baselines")
    noisy_md = "\n".join(f"| {r['label']} | {r['samples']} | {r['accuracy']:.4f} | "
                         f"{r['exact_accuracy_same_samples']:.4f} | {r['agreement_with_exact']:.4f} |"
                         for r in noisy_rows)
    if noisy_rows:
        md += ("\n\nStudent " + first["name"] + " under noise (same test samples):\n\n"
               "| setting | samples | accuracy | exact accuracy | agreement with exact |\n|---|---|---|---|---|\n"
               + noisy_md)
    create_markdown_artifact(key="distill-report", markdown=md)
    return {"table": table, "noisy": noisy_rows, "markdown": md, "mlflow_run_id": run_id,
            "students": [{"name": r["name"], "cached": r.get("cached", False)} for r in student_rows]}


def student_size(feats: Features, qubits: int, blocks: int) -> int:
    """Total trainable parameters of the default student: the size the MLPs are matched to."""
    from qcore.models.qdllm import QDLLMConfig, QDLLMStudent

    cfg = QDLLMConfig(in_features=feats.train_x.shape[1], num_classes=len(feats.label_names),
                      qubits=qubits, blocks=blocks)
    return QDLLMStudent(cfg).parameter_counts()["total"]


def _log_mlflow(parent: ActiveRun, feats: Features, students: list[dict[str, Any]],
                baselines: list[dict[str, Any]], noisy: list[dict[str, Any]], table: list[dict[str, Any]]) -> None:
    """The table on the parent run; a child per student and per baseline (only this process writes)."""
    tracking.log_result_rows(parent, students + baselines, feats.test_y, feats.label_names, model_tag="qdllm")
    tracking.log_summary(table, {f"noisy.{tracking.slug(r['label'])}.accuracy": r["accuracy"] for r in noisy})
    tracking.log_table(parent, table, "results.json")
    if noisy:
        tracking.log_table(parent, noisy, "noisy.json")


def run_distill(params: DistillParams) -> dict[str, Any]:
    """Run the flow from the command line and print where the results are.

    The data is read and checked first (names, paths, columns, labels), so bad input is refused
    in a second, before any server starts or anything is written.
    """
    params.check_data()
    result = run_from_cli(distill, params)
    print(result["markdown"])
    print(mlflow_hint(result["mlflow_run_id"]))
    return result
