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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from qcore.federated.controller import RULES
from qcore.federated.client_models import build_model
from qcore.federated.partition import PartitionError
from qcore.models.pqc_head import MAX_ENCODERS
from tasks import compare as board
from tasks import federated as fed
from tasks import reporting, tracking
from tasks.data import DataError, Dataset, load_dataset
from tasks.finetune import fine_tune
from tasks.heads import split_validation, train_head
from tasks.settings import Settings
from tasks.teacher import TeacherOutput, TeacherOutputs, resolve_model
from tasks.train import Features, classical_baselines, train_student

from .distill import MAX_QUBITS as STUDENT_MAX_QUBITS
from .distill import DistillParams, prepare_distill_data, student_size
from .federated import FederatedParams, llm_losses, run_setting
from .head import MAX_QUBITS as HEAD_MAX_QUBITS
from .head import HeadParams
from .peft import PeftParams
from .peft import preflight as peft_preflight
from .runner import check_dask_address, dask_runner, mlflow_hint, run_from_cli

METHODS = {  # name (the --methods value) → leaderboard label
    "qdllm": "QD-LLM student",
    "pqc-head": "PQC head",
    "lora": "LoRA fine-tuning",
    "qpa": "QPA fine-tuning",
    "qtha": "QTHA fine-tuning",
    "llm-qfl": "LLM-QFL federated VQC",
    "logreg": "logistic regression",
    "mlp": "MLP (QD-LLM size)",
    "mlp-distilled": "distilled MLP (QD-LLM size)",
    "fed-logreg": "FedAvg logistic regression",
}
MethodName = Literal[tuple(METHODS)]  # type: ignore[valid-type]
FINETUNE = ("lora", "qpa", "qtha")
FEDERATED = ("llm-qfl", "fed-logreg")
BASELINE_KINDS = {"logistic regression": "logreg", "MLP (labels only)": "mlp", "classical distilled MLP": "mlp-distilled"}


class CompareParams(BaseModel):
    """Parameters of the compare flow (the CLI options, the Prefect UI form, prefect.yaml).

    The budget, and what it means to each method:
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

    model_config = ConfigDict(extra="forbid")

    dataset: str = Field("sst2", description="named set (sst2, subj, trec, trec-fine, ag_news) or a "
                                             "TSV/CSV/JSONL path or fsspec URL")
    text_column: str | None = Field(None, description="text column of a file data set")
    label_column: str | None = Field(None, description="label column of a file data set")
    train_size: int | None = Field(2000, ge=20, description="training examples every method learns from "
                                                           "(stratified subsample)")
    test_size: int | None = Field(None, ge=1, description="test examples every method is scored on "
                                                         "(None: the whole test split)")
    split_seed: int = Field(0, ge=0, description="seed of the split and subsampling")
    seeds: list[int] = Field([0, 1, 2], min_length=1, description="training seeds: every method trains once per seed")
    methods: list[MethodName] = Field(list(METHODS), min_length=1, description="methods on the leaderboard: "
                                      + ", ".join(METHODS))
    epochs: int = Field(10, ge=1, le=1000, description="budget: epochs of the QD-LLM student, the MLPs and the "
                                                       "PQC head (at most; it stops early)")
    batch_size: int = Field(32, ge=1, description="batch size of the QD-LLM student, the PQC head and the MLPs")
    finetune_steps: int = Field(100, ge=2, description="budget: training steps of LoRA, QPA and QTHA")
    finetune_batch_size: int = Field(16, ge=1, description="texts per fine-tuning step")
    max_length: int = Field(64, ge=8, description="tokens per text when fine-tuning")
    qubits: int = Field(11, ge=2, le=STUDENT_MAX_QUBITS, description="QD-LLM student qubits")
    blocks: int = Field(2, ge=1, le=20, description="QD-LLM ansatz blocks")
    head_qubits: int = Field(8, ge=2, le=HEAD_MAX_QUBITS, description="PQC head: module 2 qubits")
    head_encoders: int = Field(2, ge=0, le=MAX_ENCODERS, description="PQC head: amplitude-encoded encoders of module 1 "
                                                          "(0: a linear layer into module 2)")
    val_fraction: float = Field(0.15, gt=0, lt=1, description="PQC head: share of the training examples held "
                                                              "out for early stopping")
    clients: int = Field(5, ge=1, le=1000, description="federated clients (LLM-QFL and FedAvg)")
    rounds: int = Field(10, ge=1, le=1000, description="budget: federated rounds")
    controller: str = Field("adaptive", description="LLM-QFL controller: a step rule (" + ", ".join(RULES)
                                                    + ") or none (plain quantum FedAvg)")
    llm_steps: int = Field(20, ge=1, description="LLM-QFL: LoRA steps of each party's LLM fine-tune")
    experiment: str = Field("qllm-compare", min_length=1, description="MLflow experiment name")
    dask_address: str | None = Field(None, description="Dask scheduler address (default: a temporary LocalCluster)")

    @model_validator(mode="after")
    def _consistent(self) -> CompareParams:
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"methods {self.methods} repeat a method")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds {self.seeds} repeat a seed")
        if self.controller != "none" and self.controller not in RULES:
            raise ValueError(f"controller {self.controller!r} is unknown; allowed: none, {', '.join(RULES)}")
        if self.federated:
            try:  # clients against train_size, refused in the federated flow's words
                self.federated_params(self.seeds[0])
            except ValidationError as exc:
                raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        return self

    @property
    def finetune(self) -> list[str]:
        return [m for m in FINETUNE if m in self.methods]

    @property
    def federated(self) -> list[str]:
        return [m for m in FEDERATED if m in self.methods]

    # -- each method's own parameters, from the shared budget
    def distill_params(self) -> DistillParams:
        return DistillParams(dataset=self.dataset, text_column=self.text_column, label_column=self.label_column,
                             train_size=self.train_size, test_size=self.test_size, split_seed=self.split_seed,
                             seeds=self.seeds, qubits=[self.qubits], blocks=[self.blocks], epochs=self.epochs,
                             batch_size=self.batch_size, eval_shots=None, eval_noise=None)

    def head_params(self) -> HeadParams:
        return HeadParams(seeds=self.seeds, qubits=self.head_qubits, encoders=self.head_encoders, epochs=self.epochs,
                          batch_size=self.batch_size, noise_shots=[], noise_depolarizing=[], noise_devices=[])

    def peft_params(self, seed: int) -> PeftParams:
        return PeftParams(methods=self.finetune, dataset=self.dataset, train_size=self.train_size,
                          test_size=self.test_size, split_seed=self.split_seed, steps=self.finetune_steps,
                          batch_size=self.finetune_batch_size, max_length=self.max_length, seed=seed)

    def federated_params(self, seed: int) -> FederatedParams:
        return FederatedParams(dataset=[self.dataset], train_size=self.train_size, test_size=self.test_size,
                               split_seed=self.split_seed, clients=self.clients, rounds=self.rounds,
                               controller=[self.controller], baseline="logreg", llm_steps=self.llm_steps, seed=seed)

    def check_data(self) -> None:
        """Read and split the data set and check that every chosen method can use it (two
        classes or more, the fine-tuned model and its targets, a share for every client):
        bad input is refused here, before any server starts or anything is written."""
        data = load_dataset(self.dataset, train_size=self.train_size, test_size=self.test_size,
                            seed=self.split_seed, text_column=self.text_column, label_column=self.label_column)
        if (classes := len(np.unique(data.train_labels))) < 2:
            raise DataError(f"{self.dataset}: the training split holds {classes} class; a classifier needs two or more")
        if self.finetune:
            peft_preflight(self.peft_params(self.seeds[0]), data)
        if self.federated:
            fp = self.federated_params(self.seeds[0])
            for seed in self.seeds:
                try:
                    fed.plan_split(data.train_labels, "iid", fp.clients, fp.server_fraction, seed)
                except PartitionError as exc:
                    raise DataError(f"{self.dataset}: {exc}") from None
            if "llm-qfl" in self.federated and fp.uses_llm:
                resolve_model(fp.llm_model)


# --- the flow -----------------------------------------------------------------------------------

Pending = list[tuple[str, int, PrefectFuture[Any]]]  # (method, seed, future of the training's result)


def submit_trainings(params: CompareParams, data: Dataset, feats: Features, root: str) -> tuple[Pending, list[Any]]:
    """Every per-seed training but the federated ones, submitted to the Dask cluster at once:
    QD-LLM students, PQC heads and fine-tunes (one task each), and the classical baselines
    (one task per seed, rows picked by kind)."""
    pending: Pending = []
    if "qdllm" in params.methods:
        jobs = params.distill_params().jobs()
        pending += [("qdllm", j.seed, f) for j, f in zip(jobs, train_student.map(jobs, unmapped(feats), unmapped(root)))]
    if "pqc-head" in params.methods:
        head_data = split_validation(feats.train_x, feats.train_y, feats.test_x, feats.test_y,
                                     val_fraction=params.val_fraction, seed=params.split_seed,
                                     label_names=feats.label_names, key=feats.key, encoder=feats.teacher)
        jobs = params.head_params().jobs()
        pending += [("pqc-head", j.seed, f) for j, f in zip(jobs, train_head.map(jobs, unmapped(head_data),
                                                                                  unmapped(root)))]
    if params.finetune:
        jobs = [j for s in params.seeds for j in peft_preflight(params.peft_params(s), data).jobs]
        pending += [(j.method, j.seed, f) for j, f in zip(jobs, fine_tune.map(jobs, unmapped(data), unmapped(root)))]
    baselines = []
    if any(m in params.methods for m in BASELINE_KINDS.values()):
        dp = params.distill_params()
        baselines = classical_baselines.map(
            seed=params.seeds, data=unmapped(feats), target_params=unmapped(student_size(feats, params.qubits,
                                                                                         params.blocks)),
            epochs=unmapped(params.epochs), batch_size=unmapped(params.batch_size), lr=unmapped(dp.lr),
            temperature=unmapped(dp.temperature), alpha=unmapped(dp.alpha[0]))
    return pending, baselines


def gather(params: CompareParams, pending: Pending, baselines: list[Any]) -> list[dict[str, Any]]:
    """Per-seed rows of the submitted trainings, in the form :mod:`tasks.compare` pools."""
    rows = []
    for method, seed, future in pending:
        result = future.result()
        if method in FINETUNE:
            m = result["metrics"]
            rows.append(board.seed_row(method, seed, accuracy=m["accuracy"], trainable_params=m["trainable_params"],
                                       train_seconds=m["train_seconds"], cached=result["cached"]))
        else:
            rows.append(board.trained_row(method, seed, result))
    for future in baselines:
        rows += [board.trained_row(BASELINE_KINDS[r["kind"]], r["seed"], r) for r in future.result()
                 if BASELINE_KINDS[r["kind"]] in params.methods]
    return rows


def federated_rows(params: CompareParams, data: Dataset, feats: Features, root: str) -> list[dict[str, Any]]:
    """LLM-QFL and FedAvg logistic regression, one run per seed on the shared features (IID
    clients). The rounds run here and send each client's training to the cluster; LLM-QFL's
    training time counts its clients' seconds and the parties' LLM fine-tunes."""
    embeddings = TeacherOutputs(TeacherOutput(feats.train_teacher, feats.train_x),
                                TeacherOutput(feats.test_teacher, feats.test_x), feats.key)
    rows = []
    for seed in params.seeds:
        fp = params.federated_params(seed)
        spec = fp.model_spec(data.num_classes)
        setting = fed.build_setting(data, embeddings, "iid", fp.clients, spec, fp.server_fraction, seed)
        runs = []
        if "llm-qfl" in params.methods:
            llm = llm_losses(fp, [setting], root).get(setting.name, {})
            runs.append(("llm-qfl", run_setting(fp, setting, params.controller, spec, params.controller, llm, root),
                         sum(v["seconds"] for v in llm.values())))
        if "fed-logreg" in params.methods:
            runs.append(("fed-logreg", run_setting(fp, setting, "baseline-logreg", fp.baseline_spec(data.num_classes),
                                                   "none", {}, root), 0.0))
        for method, out, extra_seconds in runs:
            curve = fed.curves(out)
            if dropped := sum(len(r.failed) for r in out.result.records):
                get_run_logger().warning("%s seed %d: %d client trainings were dropped", method, seed, dropped)
            size = sum(p.numel() for p in build_model(out.model).parameters() if p.requires_grad)
            rows.append(board.seed_row(method, seed, accuracy=curve["accuracy"][-1], trainable_params=size,
                                       train_seconds=curve["client_seconds"][-1] + extra_seconds, cached=out.cached))
    return rows


@flow(name="compare", task_runner=dask_runner(), log_prints=True)
def compare(params: CompareParams = CompareParams()) -> dict[str, Any]:
    """Every method on one data set, budget and seed set: a leaderboard of accuracy against
    trainable parameters and training time."""
    check_dask_address(params.dask_address)
    settings = Settings()
    root = settings.artifact_root
    with tracking.parent_run(settings, params.experiment, "compare", params.model_dump(),
                             tags={"flow": "compare"}, system_metrics=True) as parent:
        data, feats = prepare_distill_data(params.distill_params(), root)
        tracking.set_tags(parent, {"data_hash": data.content_hash})
        rows = gather(params, *submit_trainings(params, data, feats, root))
        # Only now: a federated round waits on its clients with a deadline (the federated flow's
        # client timeout), which clients queued behind these trainings could miss.
        rows += federated_rows(params, data, feats, root) if params.federated else []
        table = board.leaderboard(rows, {m: METHODS[m] for m in params.methods})
        title = f"{data.name}: {len(feats.train_y)} training / {len(feats.test_y)} test examples, seeds {params.seeds}"
        figure = reporting.leaderboard_plot(table, title)
        board.log_leaderboard(parent, table, rows, figure)
        run_id = parent.info.run_id
    md = board.markdown(table)
    create_table_artifact(key="compare-leaderboard", table=table, description=f"leaderboard: {title}")
    create_markdown_artifact(key="compare-report", markdown=md + "\n\n" + reporting.figure_markdown(
        figure, "accuracy against trainable parameters and training time"))
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
