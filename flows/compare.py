"""Every method that applies to a classification data set, on one data set with one budget and
one seed set, as a leaderboard: accuracy against trainable parameters and training time.

    data → MiniLM features and the probe teacher's soft labels (cached, shared by every method)
    → QD-LLM students, PQC heads, LoRA/QPA/QTHA fine-tunes and classical baselines, one Prefect
      task per method and seed on the Dask cluster (each cached by content)
    → LLM-QFL federated runs and a FedAvg logistic regression, rounds on the same cluster (each
      finished run stored by content)
    → one MLflow parent run (system metrics while it trains) with a child per method, a Prefect
      table artifact, and ``leaderboard.png``

Every method reads the same split: the same ``train_size`` training examples (the PQC head
holds ``val_fraction`` of them out for early stopping, the federated server keeps 10 % and the
clients share the rest) and the same test examples.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from prefect import flow, get_run_logger, unmapped
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.futures import PrefectFuture
from pydantic import Field, ValidationError, model_validator

from lab import leaderboard as board
from lab import reporting, tracking
from lab.data import DataError, Dataset
from lab.embedded import EmbeddedSplit
from lab.methods import BASELINE_OF, LEADERBOARD, METHODS, FeatureMethod
from lab.methods import federated as fed
from lab.methods.peft import FinetuneMethod
from lab.methods.pqc_head import MAX_QUBITS as HEAD_MAX_QUBITS
from lab.methods.qdllm import MAX_QUBITS as STUDENT_MAX_QUBITS
from lab.methods.qdllm import QDLLM
from lab.params import DataOptions, Options, RunOptions, experiment
from lab.results import TrainingResult
from lab.runtime import Runtime
from lab.teacher import resolve_model
from qcore.federated.controller import RULES
from qcore.federated.partition import PartitionError
from qcore.models.pqc_head import MAX_ENCODERS
from tasks.federated import federated_run, llm_losses
from tasks.prepare import embedded_split
from tasks.train import baselines, train_task

from .runner import check_dask_address, dask_runner, mlflow_hint, run_from_cli

MethodName = Literal[tuple(LEADERBOARD)]  # type: ignore[valid-type]
SHARED = QDLLM()  # the shared split and features are the distill flow's, under the budget


class CompareFields(Options):
    """The budget and its methods (see :class:`CompareParams`)."""

    train_size: int | None = Field(
        2000, ge=20, description="training examples every method learns from (stratified subsample)"
    )
    test_size: int | None = Field(
        None, ge=1, description="test examples every method is scored on (None: the whole test split)"
    )
    split_seed: int = Field(0, ge=0, description="seed of the split and subsampling")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="training seeds: every method trains once per seed")
    methods: list[MethodName] = Field(  # type: ignore[valid-type]  # the registry's ids, as an enum in the form
        list(LEADERBOARD), min_length=1, description="methods on the leaderboard: " + ", ".join(LEADERBOARD)
    )
    epochs: int = Field(
        10,
        ge=1,
        le=1000,
        description="budget: epochs of the QD-LLM student, the MLPs and the PQC head (at most; it stops early)",
    )
    batch_size: int = Field(32, ge=1, description="batch size of the QD-LLM student, the PQC head and the MLPs")
    finetune_steps: int = Field(100, ge=2, description="budget: training steps of LoRA, QPA and QTHA")
    finetune_batch_size: int = Field(16, ge=1, description="texts per fine-tuning step")
    max_length: int = Field(64, ge=8, description="tokens per text when fine-tuning")
    qubits: int = Field(11, ge=2, le=STUDENT_MAX_QUBITS, description="QD-LLM student qubits")
    blocks: int = Field(2, ge=1, le=20, description="QD-LLM ansatz blocks")
    head_qubits: int = Field(8, ge=2, le=HEAD_MAX_QUBITS, description="PQC head: module 2 qubits")
    head_encoders: int = Field(
        2,
        ge=0,
        le=MAX_ENCODERS,
        description="PQC head: amplitude-encoded encoders of module 1 (0: a linear layer into module 2)",
    )
    val_fraction: float = Field(
        0.15, gt=0, lt=1, description="PQC head: share of the training examples held out for early stopping"
    )
    clients: int = Field(5, ge=1, le=1000, description="federated clients (LLM-QFL and FedAvg)")
    rounds: int = Field(10, ge=1, le=1000, description="budget: federated rounds")
    controller: str = Field(
        "adaptive",
        description="LLM-QFL controller: a step rule (" + ", ".join(RULES) + ") or none (plain quantum FedAvg)",
    )
    llm_steps: int = Field(20, ge=1, description="LLM-QFL: LoRA steps of each party's LLM fine-tune")


class CompareParams(RunOptions, CompareFields, DataOptions):
    """Parameters of the compare flow (the CLI options, the Prefect UI form, prefect.yaml).

    The budget, and what it means to each method (:meth:`lab.methods.Method.for_budget`):
    - ``train_size`` training examples for every method (see the module docstring);
    - ``epochs`` passes over them for the QD-LLM student, the MLPs and the PQC head (its
      maximum: it stops early on its validation hold-out);
    - ``finetune_steps`` AdamW steps of ``finetune_batch_size`` texts for LoRA, QPA and QTHA
      (a transformer step costs some 100x a student's epoch of a batch, so they get steps);
    - ``rounds`` federated rounds of ``clients`` clients for LLM-QFL and FedAvg (each client's
      local steps are set by the LLM-QFL controller, starting from the federated flow's 10);
    - every method keeps its own flow's learning rate and architecture defaults, but for the
      sizes below. Each method trains once per seed in ``seeds``.
    """

    experiment: str = experiment("qllm-compare")

    @model_validator(mode="after")
    def _consistent(self) -> CompareParams:
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {self.methods} repeat a method")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a seed")
        if self.controller != "none" and self.controller not in RULES:
            raise ValueError(f"controller {self.controller!r} is unknown; allowed: none, {', '.join(RULES)}")
        if self.of_kind(fed.FederatedMethod):
            try:  # clients against train_size, refused in the federated flow's words
                fed.LLMQFL().for_budget(self, self.seeds[:1])
            except ValidationError as exc:
                raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        return self

    def of_kind(self, kind: type) -> list[str]:
        """The chosen methods (registry ids) that are of ``kind``, in registry order."""
        return [m for m, method in METHODS.items() if m in self.methods and isinstance(method, kind)]

    @property
    def trained_baselines(self) -> list[str]:
        """The chosen baseline rows that another method trains (QD-LLM's logistic regression and MLPs)."""
        return [m for m in self.methods if m in BASELINE_OF]

    def check_data(self) -> None:
        """Read and split the data set and check that every chosen method can use it (two
        classes or more, the fine-tuned model and its targets, a share for every client):
        bad input is refused here, before any server starts or anything is written."""
        data = SHARED.data_request(SHARED.for_budget(self, self.seeds)[0]).load()
        if (classes := len(np.unique(data.train_labels))) < 2:
            raise DataError(f"{self.dataset}: the training split holds {classes} class; a classifier needs two or more")
        for m in self.of_kind(FinetuneMethod):
            METHODS[m].jobs(METHODS[m].for_budget(self, self.seeds[:1])[0], data)  # the adapter's preflight
        federated = self.of_kind(fed.FederatedMethod)
        for fp in fed.LLMQFL().for_budget(self, self.seeds) if federated else []:
            try:
                fed.plan_split(data.train_labels, "iid", fp.clients, fp.server_fraction, fp.seed)
            except PartitionError as exc:
                raise DataError(f"{self.dataset}: {exc}") from None
            if "llm-qfl" in federated and fp.uses_llm:
                resolve_model(fp.llm_model)


# --- the flow -----------------------------------------------------------------------------------

Pending = list[tuple[str, PrefectFuture[TrainingResult]]]  # (method id, future of the training's result)


def submit_trainings(
    params: CompareParams, data: Dataset, split: EmbeddedSplit, root: str
) -> tuple[Pending, list[Any]]:
    """Every per-seed training but the federated ones, submitted to the Dask cluster at once:
    each feature method on the shared split (in its own view, e.g. the PQC head's validation
    hold-out) and each adapter on the texts, one task per job; and the QD-LLM baselines, one
    task per seed."""
    pending: Pending = []
    for m in params.of_kind(FeatureMethod) + params.of_kind(FinetuneMethod):
        method = METHODS[m]
        for p in method.for_budget(params, params.seeds):
            own = method.split(p, split) if isinstance(method, FeatureMethod) else data
            jobs = method.jobs(p, own)
            pending += [(m, f) for f in train_task(m).map(unmapped(m), jobs, unmapped(own), unmapped(root))]
    classical: list[Any] = []
    if params.trained_baselines:
        shared = SHARED.for_budget(params, params.seeds)[0]
        classical = baselines.map(unmapped(SHARED.id), unmapped(shared), unmapped(split), params.seeds)
    return pending, classical


def gather(params: CompareParams, pending: Pending, classical: list[Any]) -> list[dict[str, Any]]:
    """Per-seed rows of the submitted trainings, in the form :mod:`lab.leaderboard` pools."""
    rows = [board.trained_row(f.result()) for _, f in pending]
    return rows + [board.trained_row(r) for f in classical for r in f.result() if r.method in params.methods]


def federated_rows(params: CompareParams, data: Dataset, split: EmbeddedSplit, root: str) -> list[dict[str, Any]]:
    """LLM-QFL and FedAvg logistic regression, one run per seed on the shared features (IID
    clients). The rounds run here and send each client's training to the cluster; LLM-QFL's
    training time counts its clients' seconds and the parties' LLM fine-tunes."""
    rows = []
    for m in params.of_kind(fed.FederatedMethod):
        method = METHODS[m]
        assert isinstance(method, fed.FederatedMethod)
        for fp in method.for_budget(params, params.seeds):
            fsplit = fed.build_split(
                data, split, "iid", fp.clients, fp.model_spec(data.num_classes), fp.server_fraction, fp.seed
            )
            llm = llm_losses(fp, [fsplit], root).get(fsplit.name, {}) if m == "llm-qfl" else {}
            for job in method.jobs(fp, fed.FederatedData(fsplit, llm)):
                out = federated_run(job, root)
                if dropped := sum(len(r.failed) for r in out.result.records):
                    get_run_logger().warning("%s seed %d: %d client trainings were dropped", m, fp.seed, dropped)
                rows.append(board.trained_row(method.summary(out, job)))
    return rows


@flow(name="compare", task_runner=dask_runner(), log_prints=True)
def compare(params: CompareParams = CompareParams()) -> dict[str, Any]:
    """Every method on one data set, budget and seed set: a leaderboard of accuracy against
    trainable parameters and training time."""
    check_dask_address(params.dask_address)
    runtime = Runtime()
    root = runtime.artifact_root
    with tracking.parent_run(
        runtime, params.experiment, "compare", params.model_dump(), tags={"flow": "compare"}, system_metrics=True
    ) as parent:
        data, split = embedded_split(SHARED, SHARED.for_budget(params, params.seeds)[0], root)
        tracking.set_tags(parent, {"data_hash": data.content_hash})
        rows = gather(params, *submit_trainings(params, data, split, root))
        # Only now: a federated round waits on its clients with a deadline (the federated flow's
        # client timeout), which clients queued behind these trainings could miss.
        rows += federated_rows(params, data, split, root)
        table = board.leaderboard(rows, {m: LEADERBOARD[m] for m in params.methods})
        title = f"{data.name}: {len(split.train_y)} training / {len(split.test_y)} test examples, seeds {params.seeds}"
        figure = reporting.leaderboard_plot(table, title)
        board.log_leaderboard(parent, table, rows, figure)
        run_id = parent.info.run_id
    md = board.markdown(table)
    create_table_artifact(key="compare-leaderboard", table=table, description=f"leaderboard: {title}")
    create_markdown_artifact(
        key="compare-report",
        markdown=md
        + "\n\n"
        + reporting.figure_markdown(figure, "accuracy against trainable parameters and training time"),
    )
    reporting.close(figure)
    return {"table": table, "rows": rows, "markdown": md, "mlflow_run_id": run_id}


def run_compare(params: CompareParams) -> dict[str, Any]:
    """Run the flow from the command line and print the leaderboard and where it is. The data
    and every method's preconditions are checked first, before any server starts."""
    params.check_data()
    result = run_from_cli(compare, params)
    print(result["markdown"])
    print(mlflow_hint(result["mlflow_run_id"], after=" (leaderboard.png among its artifacts)"))
    return result
